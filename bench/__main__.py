"""`make bench`: every benchmark, each printing its own table of figures measured side by side.

Each module in this folder with a `main()` is one benchmark; `python -m bench NAME...` runs some.
Those in ON_DEMAND run only when named: they take far longer than the rest.
Each runs in a process of its own with a deadline (`BENCH_DEADLINE_SECONDS`, default 1200): a
benchmark that has not finished by then (a stuck run, a server that never answers) is
interrupted, reported as failed, and the others still run. The exit status is non-zero when any
benchmark failed, so `make bench` never hangs and never hides a failure.

Each benchmark prints issue 15's rows it measures under a line `issue 15 rows (...)`; at the end
they are printed again together, each under its benchmark's name: the whole table in one place.
"""

from __future__ import annotations

import os
import pkgutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

DEADLINE_SECONDS = float(os.environ.get("BENCH_DEADLINE_SECONDS", "1200"))
# After the deadline: SIGINT (its `finally` blocks stop the servers it started), then SIGKILL.
CLEANUP_SECONDS = 30.0
# Not in a plain `make bench`: n tries of `develop` with the local model, minutes each (its own
# deadline is BENCH_DEADLINE_SECONDS=5400, see docs/develop.md).
ON_DEMAND = frozenset({"develop_local"})


def available() -> list[str]:
    """What a plain `make bench` runs."""
    here = Path(__file__).parent
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(here)])
        if not m.name.startswith("_") and m.name not in ON_DEMAND
    )


ISSUE_ROWS = "issue 15 rows"


def _echo(output: IO[str], rows: list[str]) -> None:
    """Print a benchmark's output as it comes, keeping its issue 15 rows (the indented lines
    after an `issue 15 rows` line)."""
    keeping = False
    for line in output:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith(ISSUE_ROWS):
            keeping = True
            rows.append(line.rstrip())
        elif keeping and line.startswith("  "):
            rows.append(line.rstrip())
        else:
            keeping = False


def run(name: str, deadline: float, rows: list[str] | None = None) -> str | None:
    """Run one benchmark; None when it succeeded, else why it failed. Its issue 15 rows are
    added to `rows`."""
    process = subprocess.Popen(
        [sys.executable, "-c", f"import bench.{name} as b; b.main()"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    reader = threading.Thread(
        target=_echo, args=(process.stdout, [] if rows is None else rows), daemon=True
    )
    reader.start()
    try:
        code = process.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=CLEANUP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        return f"no result within {deadline:g}s (BENCH_DEADLINE_SECONDS): interrupted"
    finally:
        reader.join(CLEANUP_SECONDS)  # the rest of its output (a child it left may hold the pipe)
    return None if code == 0 else f"exit status {code}"


def main(argv: list[str]) -> int:
    names = argv or available()
    failed = []
    table: list[str] = []
    for name in names:
        print(f"\n=== bench: {name} ===", flush=True)
        started = time.perf_counter()
        rows: list[str] = []
        problem = run(name, DEADLINE_SECONDS, rows)
        if problem is not None:
            failed.append(name)
            print(f"bench {name} failed: {problem}", flush=True)
        print(f"({name}: {time.perf_counter() - started:.1f}s)", flush=True)
        if rows:
            table += [f"[{name}]", *rows]
    if table:
        print("\n=== issue 15, every row measured above ===", *table, sep="\n", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
