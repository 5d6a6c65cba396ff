"""One way for a test to run one of our services as a process of its own: `python -m <module>`
in its own process group (a kill takes whatever it started too), its output in a log file,
waited for by what it logs or by a probe, frozen (SIGSTOP), killed (SIGKILL) or stopped (SIGTERM,
then SIGKILL after a grace period)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

import psutil

TAIL = 3000  # characters of the log a failed wait shows


def python_path(paths: Iterable[Path]) -> str:
    """PYTHONPATH with `paths` first (test plugins a service imports), then the inherited one."""
    return os.pathsep.join([*(str(p) for p in paths), os.environ.get("PYTHONPATH", "")])


def connected(pid: int, port: int) -> bool:
    """Whether process `pid` has a TCP connection open to `port` on this host."""
    return any(
        c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        for c in psutil.Process(pid).net_connections("tcp")
    )


async def until_connected(pid: int, port: int, timeout: float = 60) -> None:
    """Until process `pid` (a client) has reached the service on `port`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not connected(pid, port):
        assert asyncio.get_running_loop().time() < deadline, f"{pid} never connected to {port}"
        await asyncio.sleep(0.05)


class ServiceProcess:
    """`python -m module` with exactly `env`, logging to `log`."""

    def __init__(self, module: str, env: Mapping[str, str], log: Path) -> None:
        self.module = module
        self.log = log
        self._file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self) -> str:
        return self.log_text()[-TAIL:]

    async def wait_until(
        self, probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 120
    ) -> None:
        """Poll `probe` until it holds; fails at once, with the log, if the process exits."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not await probe():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.module} exited: {self.log_tail()}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.module}: never {what}: {self.log_tail()}")
            await asyncio.sleep(0.1)

    async def wait_log(self, text: str, after: str = "", timeout: float = 60) -> None:
        """Wait until the log says `text` (after the first `after`, if given)."""

        async def logged() -> bool:
            log = self.log_text()
            return text in log[log.find(after) if after in log else len(log) :]

        await self.wait_until(logged, f"logged {text!r}", timeout)

    def freeze(self) -> None:
        """SIGSTOP: calls sent to it now wait, in flight, until it is killed."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    async def stop(self, grace: float = 30) -> int:
        """SIGTERM, SIGKILL if still running after `grace` seconds (generous: a loaded machine
        takes a while to shut a service down cleanly); the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self._file.close()
        return self.proc.wait(10)
