"""No head-of-line blocking: a worker loop whose job's thread another executor still holds (a
cancelled run unwinding) goes on with other jobs while that run waits. With ONE worker loop, a
run of another thread starts and completes while the first thread is held; the waiting run
starts once the thread is free, and runs once. Real `python -m amelia_agents.worker`
processes, the `test-stubborn` node as in `test_agents_thread_exclusive`."""

from __future__ import annotations

from pathlib import Path

from agents_helpers import S, Stub, create_run, wait_status
from test_agents_thread_exclusive import (  # (`api`: its agents service, the fixture)
    api,  # noqa: F401
    assert_ran_once_after,
    assert_waits,
    cancelled_then_next,
    lock_holder,
    staged,
    waited_on,
)

# What a loop logs when it gives a busy thread's job back after waiting for it itself.
GAVE_BACK = "run's thread still held by another executor; the run waits"


async def test_one_loop_runs_another_threads_run_while_a_run_waits_for_its_thread(
    api: Stub,  # noqa: F811 - the fixture imported above
    infra: object,
    tmp_path: Path,
) -> None:
    async with staged(infra, tmp_path, workers=1) as (scene, db):
        first, second, cancel = await cancelled_then_next(api, scene)
        holder = await lock_holder(db, first.name)
        waiter = await scene.start_worker()  # one loop: the second run's job goes to it
        await waited_on(db, holder)
        await assert_waits(api, scene.settings, db, first, second)

        # A run of another thread, whose node waits for its release file: it starts on the
        # same (only) free loop while the second run still waits for its thread.
        other = await create_run(api, workflow="workflows/test-stubborn", input=scene.request("r3"))
        await scene.marked("r3 work")
        # The loop did not first wait for the thread until it gave the job back (as before).
        assert GAVE_BACK not in waiter.log_text()
        assert "r1 unwound" not in scene.marks()
        await assert_waits(api, scene.settings, db, first, second)

        (tmp_path / "r3.release").touch()
        done = await wait_status(api, other.name, S.RUN_STATUS_COMPLETED, timeout=60)
        assert done.output["result"] == "released then" and done.attempt == 1
        assert "r1 unwound" not in scene.marks()
        await assert_waits(api, scene.settings, db, first, second)  # the thread still held

        (tmp_path / "r1.unwind").touch()
        await assert_ran_once_after(api, db, scene, first, second)
        marks = scene.marks()
        assert marks.index("r1 unwound") < marks.index("r2 work"), marks
        assert marks.index("r3 then") < marks.index("r2 work"), marks
        print(
            f"from the first run's node unwound to the second's node: {scene.gap() * 1000:.0f} ms"
        )
        await cancel
