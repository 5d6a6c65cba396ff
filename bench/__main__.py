"""`make bench`: every benchmark, each printing its own table of figures measured side by side.

Each module in this folder with a `main()` is one benchmark; `python -m bench NAME...` runs some.
Those in ON_DEMAND run only when named: they take far longer than the rest.
Each runs in a process of its own with a deadline (`BENCH_DEADLINE_SECONDS`, default 1200): a
benchmark that has not finished by then (a stuck run, a server that never answers) is
interrupted, reported as failed, and the others still run. The exit status is non-zero when any
benchmark failed, so `make bench` never hangs and never hides a failure.
"""

from __future__ import annotations

import os
import pkgutil
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def run(name: str, deadline: float) -> str | None:
    """Run one benchmark; None when it succeeded, else why it failed."""
    process = subprocess.Popen(
        [sys.executable, "-c", f"import bench.{name} as b; b.main()"],
        start_new_session=True,
    )
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
    return None if code == 0 else f"exit status {code}"


def main(argv: list[str]) -> int:
    names = argv or available()
    failed = []
    for name in names:
        print(f"\n=== bench: {name} ===", flush=True)
        started = time.perf_counter()
        problem = run(name, DEADLINE_SECONDS)
        if problem is not None:
            failed.append(name)
            print(f"bench {name} failed: {problem}", flush=True)
        print(f"({name}: {time.perf_counter() - started:.1f}s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
