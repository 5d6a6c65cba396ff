"""A loop an agents process runs in the background (the run reconciler, the cron scheduler): its
work every interval; an exception is logged once when an outage begins, and the loop goes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from amelia_agents.outages import infrastructure_outage


class Periodic:
    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[], Awaitable[object]],
        log: Any,
        failing: str,
        *,
        wait_first: bool = False,
    ) -> None:
        """`work` every `interval` seconds (after a first wait when `wait_first`); `failing`
        is the warning `log` gets when it starts to fail."""
        self.name = name
        self.interval = interval
        self.work = work
        self.log = log
        self.failing = failing
        self.wait_first = wait_first
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        failing = False
        if self.wait_first:
            await asyncio.sleep(self.interval)
        while True:
            try:
                await self.work()
            except Exception as exc:  # noqa: BLE001 - look again next time
                if not failing:
                    self.log.warning(
                        self.failing,
                        dependency=infrastructure_outage(exc),
                        error=str(exc) or repr(exc),
                    )
                failing = True
            else:
                failing = False
            await asyncio.sleep(self.interval)
