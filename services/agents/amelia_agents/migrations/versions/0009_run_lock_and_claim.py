"""runs: a worker's first look at a job takes the run's lock and claims the run in one statement

`runs_lock_and_claim` is what a worker's lock statement and its claim did in two round trips
(the lock's statement, then a pooled connection's UPDATE … RETURNING), on the lock's own
connection (`locks.RunLock.acquire(claim_as=…)`, session 18, docs/performance.md):

1. the run's advisory lock (a session lock, `pg_try_advisory_lock`); not taken: nothing more;
2. the wait for the CreateRun still recording the run (its transaction's recording lock, taken
   shared, at most `recorded_within`: a lock_timeout for that wait alone);
3. the thread's lock (a session lock too), its key from the job, else from the run's row;
4. only with both locks, the claim: `store._CLAIM`'s UPDATE (QUEUED/RUNNING → RUNNING, attempt
   and pick-ups + 1, the start time kept, the worker; never a run queued behind its thread's
   run) — else, or when it did not change the run, the run as it is.

A PL/pgSQL function because one SQL statement's snapshot is taken before its lock waits: a job
that arrives before CreateRun's commit would not see the run. In READ COMMITTED each statement
of a (VOLATILE) function takes a new snapshot, so the claim sees what the commit it waited for
wrote. **The claim is written twice** — here and in `store._CLAIM` (runstate.CLAIM): a change
of the claim's rules needs a migration replacing this function (tests/agents/test_agents_claim
compares the two).

**Its plan: the primary key, always.** The claim's statuses are a variable, not literals, and
its plans are generic (`plan_cache_mode`, for the function's calls): with the literal list, the
statement matched the predicates of the partial indexes on active runs
(`uq_runs_active_thread`), and its generic plan — PL/pgSQL caches one per session — scanned
all of such an index, the id a filter, when the table's statistics were stale: the UPDATE cost
166 µs with 300 runs in the table and 914 µs with 2,100 (their index entries left until a
vacuum), against a flat ~50 µs by the primary key (session 18, docs/performance.md).

Revision ID: agents_0009
Revises: agents_0008
"""

from alembic import op

revision = "agents_0009"
down_revision = "agents_0008"
branch_labels = None
depends_on = None

# The thread's key as `locks.thread_lock_key` computes it (the UUID's first 8 bytes, 63 bits).
_THREAD_KEY = (
    "(('x' || left(replace(thread_id::text, '-', ''), 16))::bit(64)::bigint & 9223372036854775807)"
)


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION runs_lock_and_claim(
            p_run_key bigint, p_thread_key bigint, p_run uuid, p_recorded_within text,
            p_recording_space integer, p_recording_key integer, p_now timestamptz,
            p_worker text,
            OUT run_held boolean, OUT thread_key bigint, OUT thread_held boolean,
            OUT claimed boolean, OUT run_row runs
        ) LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $$
        DECLARE
            prior_timeout text := current_setting('lock_timeout');
            claimable varchar[] := '{{QUEUED,RUNNING}}';
        BEGIN
            claimed := false;
            run_held := pg_try_advisory_lock(p_run_key);
            IF NOT run_held THEN
                RETURN;
            END IF;
            PERFORM set_config('lock_timeout', p_recorded_within, true);
            PERFORM pg_advisory_xact_lock_shared(p_recording_space, p_recording_key);
            PERFORM set_config('lock_timeout', prior_timeout, true);
            thread_key := coalesce(
                p_thread_key, (SELECT {_THREAD_KEY} FROM runs WHERE id = p_run)
            );
            IF thread_key IS NULL THEN
                RETURN;  -- no such run (never recorded, or its recording rolled back)
            END IF;
            thread_held := pg_try_advisory_lock(thread_key);
            IF NOT thread_held THEN
                RETURN;  -- another executor's: the run stays unclaimed
            END IF;
            UPDATE runs
               SET status = 'RUNNING', attempt = attempt + 1, pickups = pickups + 1,
                   start_time = coalesce(start_time, p_now), worker = p_worker
             WHERE id = p_run AND status = ANY(claimable) AND queued_behind IS NULL
            RETURNING * INTO run_row;
            claimed := FOUND;
            IF NOT claimed THEN
                SELECT * INTO run_row FROM runs WHERE id = p_run;
            END IF;
        END $$
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION runs_lock_and_claim(bigint, bigint, uuid, text, integer, integer, "
        "timestamptz, text)"
    )
