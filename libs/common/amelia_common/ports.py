"""Free TCP ports that stay free until their server binds them: the one way ports are picked.

Binding port 0 and closing the socket (what was done before) hands out a port from the kernel's
ephemeral range, where any outgoing connection, or another process binding port 0, may take it
before our server binds it (seen in CI: a port picked free, then "address already in use"). So:

- ports are picked below the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), which
  the kernel never gives to a connection or to a bind of port 0; only an explicit bind takes one;
- every process on this host that picks a port through here writes it, under a file lock, in
  one registry (a JSON file in the temp folder), and a port handed out is not handed out again
  for `HOLD_SECONDS`, however long its server takes to bind it, or when it is restarted on it;
- a port something listens on is skipped.

Single ports come from `SINGLE_RANGE`; a NATS cluster's blocks (client, route and monitoring
ports at fixed offsets) from `BLOCK_RANGE`, below it, so neither walks over the other. Both
avoid the default ports of the settings (4222, 8000, 8081, 9464-9467, 50051-50053).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HOLD_SECONDS = 3600.0
STRIDE = 10  # a replicated service's first 9 replicas fit after its port (MAX_REPLICAS is 8)
BLOCK_RANGE = (10000, 12000)  # first ports of blocks; their offsets reach up to 16000
BLOCK_STRIDE = 5  # a NATS cluster has up to 5 nodes
SINGLE_RANGE_LOW = 20000
EPHEMERAL_LOW_DEFAULT = 32768  # Linux's default (macOS starts at 49152)
REGISTRY = Path(tempfile.gettempdir()) / "amelia-ports.json"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (checked by binding it, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the servers we start: connections in TIME_WAIT don't make a port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_low() -> int:
    """The first port the kernel may give to an outgoing connection or a bind of port 0."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return EPHEMERAL_LOW_DEFAULT
    return low


def _open_registry() -> int:
    """The host's registry file, shared by all users; a user who may not write it (made by
    another with a stricter umask) keeps one of its own."""
    try:
        fd = os.open(REGISTRY, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        own = REGISTRY.with_name(f"{REGISTRY.stem}-{os.getuid()}.json")
        return os.open(own, os.O_RDWR | os.O_CREAT)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)
    return fd


@contextlib.contextmanager
def _registry() -> Iterator[dict[str, Any]]:
    """The registry, read and written back under an exclusive lock (held only meanwhile)."""
    fd = _open_registry()
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            state: dict[str, Any] = json.loads(f.read() or "{}")
        except ValueError:
            state = {}  # a torn file (a writer killed mid-write): start afresh
        now = time.time()
        given = {p: t for p, t in state.get("given", {}).items() if now - t < HOLD_SECONDS}
        state["given"] = given
        yield state
        f.seek(0)
        f.truncate()
        f.write(json.dumps(state))
        f.flush()


def _pick(
    state: dict[str, Any],
    cursor: str,
    span: tuple[int, int],
    stride: int,
    offsets: Sequence[int],
    host: str,
) -> int:
    """The first `first` on the stride in `span`, from the cursor on, whose ports (first + each
    offset) are listened on by nobody and were not handed out recently (if every one was, the
    one handed out longest ago); they are marked handed out."""
    given: dict[str, float] = state["given"]
    low, high = span
    slots = (high - low) // stride
    start = (int(state.get(cursor, low)) - low) // stride
    oldest: tuple[float, int] | None = None
    for step in range(slots):
        first = low + (start + step) % slots * stride
        wanted = [first + offset for offset in offsets]
        if not all(port_is_free(p, host) for p in wanted):
            continue
        last = max(given.get(str(p), 0.0) for p in wanted)
        if last == 0.0:
            break
        if oldest is None or last < oldest[0]:
            oldest = (last, first)
    else:
        if oldest is None:
            raise OSError(f"no free port between {low} and {high} on {host}")
        first = oldest[1]
    now = time.time()
    given.update({str(first + offset): now for offset in offsets})
    state[cursor] = first + stride
    return first


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on and that no other caller gets for HOLD_SECONDS; the
    ports after it up to the stride are left for replicas (`amelia up --replicas` puts them
    on the ports after their service's)."""
    with _registry() as state:
        # An ephemeral range lowered under ours (a tuned host) leaves only the registry's guard.
        high = max(ephemeral_low(), SINGLE_RANGE_LOW + 1000 * STRIDE)
        return _pick(state, "next", (SINGLE_RANGE_LOW, high), STRIDE, (0,), host)


def free_port_block(offsets: Sequence[int], host: str = "127.0.0.1") -> int:
    """A first port such that first + each of `offsets` is free (a NATS cluster's client,
    route and monitoring ports), all held as `free_port` holds one."""
    with _registry() as state:
        return _pick(state, "next_block", BLOCK_RANGE, BLOCK_STRIDE, offsets, host)
