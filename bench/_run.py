"""How a benchmark's `main()` runs it: in a fresh folder under /tmp (short, since Unix socket
paths of the embedded servers are length-limited), removed afterwards, with the time it took."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path


def run_in_temp_dir(bench: Callable[[Path], Coroutine[object, object, None]], name: str) -> None:
    """`asyncio.run(bench(root))` with `root` a new folder `/tmp/bench-<name>-…`."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-", dir="/tmp") as root:
        asyncio.run(bench(Path(root)))
    print(f"\n(bench took {time.perf_counter() - started:.1f}s)")
