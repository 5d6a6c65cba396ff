"""Memory that ended StreamEvents calls freed goes back to the system (`Reclaimer`).

QA s26 F4: 200 stalled calls took the events service from 95 to 663 MB, and it stayed at 663 MB
after the client left, with nothing of the calls alive. CPython hands every object over 512
bytes (every event's bytes) to glibc's malloc, and glibc keeps what is freed in its heaps for
reuse: it gives back by itself only the free top of the main heap, not the free pages below
blocks still in use, so the process's RSS stays at its high-water mark. `malloc_trim(0)`
(glibc) gives every free page of every heap back. Nothing is done on other C libraries.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import Callable

# How long after a call ended the memory is handed back: once for all the calls that end
# meanwhile (a client leaving ends all of its calls at once), and after gRPC let go of theirs.
RECLAIM_AFTER_SECONDS = 2.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None without glibc (musl, macOS)."""
    with contextlib.suppress(OSError, AttributeError):
        trim = ctypes.CDLL(None).malloc_trim
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
        return trim
    return None


_MALLOC_TRIM = _malloc_trim()


class Reclaimer:
    """Hands freed memory back to the system RECLAIM_AFTER_SECONDS after a call ended."""

    def __init__(self) -> None:
        self._due: asyncio.TimerHandle | None = None
        self.runs = 0  # times memory was handed back (tests read it)

    def call_ended(self) -> None:
        trim = _MALLOC_TRIM
        if trim is None or self._due is not None:
            return
        loop = asyncio.get_running_loop()
        self._due = loop.call_later(RECLAIM_AFTER_SECONDS, self._reclaim, loop, trim)

    def _reclaim(self, loop: asyncio.AbstractEventLoop, trim: Callable[[int], int]) -> None:
        self._due = None
        self.runs += 1
        # In a thread: it walks every heap (milliseconds for hundreds of MB), and the loop
        # keeps serving meanwhile.
        loop.run_in_executor(None, trim, 0)
