"""The door of `llm.slots` (one call of a process asks the model server's `/slots` at a time) is
opened again however a call ends — also when the call's stream fails before it ever waited, so
the task keeping the door is cancelled before it started (its own `finally` would never run:
every later call of the process would wait at the door for ever)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from amelia_agents.llm import slots
from amelia_agents.llm.base import ChatChunk


async def _one_free_slot() -> slots.ServerSlots:
    """The server's `/slots`: one slot, free."""
    return slots.ServerSlots(total=1, busy=frozenset())


async def _fails_at_once() -> AsyncIterator[ChatChunk]:
    raise ConnectionError("refused before any await")
    yield ChatChunk()  # pragma: no cover - makes this an async generator


async def _replies() -> AsyncIterator[ChatChunk]:
    await asyncio.sleep(0)
    yield ChatChunk(text="hello")


async def test_a_call_failing_at_once_leaves_the_door_open() -> None:
    gate = slots.SlotGate(size=2)
    with pytest.raises(ConnectionError):
        async for _ in slots.in_slot("test", gate, _fails_at_once(), _one_free_slot):
            pass
    async with asyncio.timeout(10):
        chunks = [c async for c in slots.in_slot("test", gate, _replies(), _one_free_slot)]
    assert [c.text for c in chunks] == ["hello"]
    async with asyncio.timeout(10), gate.door:  # opened as the second call's opener ends
        pass
    assert gate.busy == 0
