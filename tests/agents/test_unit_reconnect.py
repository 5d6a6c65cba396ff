"""llm.reconnect.resumed on its own: a reply cut mid-way and asked for again is passed on once,
whatever the new reply's chunking; a new reply that differs from what was shown fails the call;
a server that stays away fails it after the window, naming the server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from amelia_agents.llm import ChatChunk, ModelError, Usage
from amelia_agents.llm.reconnect import Patience, UnreachableModelError, resumed

SERVER = "local: the local model server at http://127.0.0.1:9/v1"
FAST = Patience(window=5, backoff=0.01)


def replies(*scripts: list[str | None]) -> Callable[[], AsyncIterator[ChatChunk]]:
    """Attempts that stream their script's texts; None is the connection dropping there."""
    remaining = list(scripts)

    async def attempt() -> AsyncIterator[ChatChunk]:
        for text in remaining.pop(0):
            if text is None:
                raise UnreachableModelError("local: cannot reach the server: Connection error.")
            yield ChatChunk(text=text)
        yield ChatChunk(usage=Usage(3, 4))

    return attempt


async def texts(attempt: Callable[[], AsyncIterator[ChatChunk]], patience: Patience = FAST) -> str:
    return "".join([c.text async for c in resumed(attempt, SERVER, patience)])


@pytest.mark.parametrize(
    "again",
    [
        ["Hello", " wor", "ld, sea."],  # the same chunks
        ["Hel", "lo world", ", sea."],  # cut elsewhere
        ["Hello world, sea."],  # in one piece
    ],
)
async def test_a_reply_cut_mid_way_is_passed_on_once(again: list[str | None]) -> None:
    attempt = replies(["Hello", " wor", None], [None], again)
    assert await texts(attempt) == "Hello world, sea."


async def test_a_new_reply_that_differs_from_what_was_shown_fails() -> None:
    for again in (["Goodbye"], ["Hel"]):  # different, or ends before what was shown
        with pytest.raises(ModelError) as caught:
            await texts(replies(["Hello", " wor", None], again))
        assert not isinstance(caught.value, UnreachableModelError)
        assert "differs from the 9 characters already streamed" in str(caught.value)


async def test_a_server_that_stays_away_fails_after_the_window_naming_it() -> None:
    with pytest.raises(ModelError) as caught:
        await texts(replies(*[[None]] * 100), Patience(window=0.2, backoff=0.01))
    assert not isinstance(caught.value, UnreachableModelError)  # the runtime does not retry it
    assert str(caught.value).startswith(f"{SERVER} did not answer for ")
    assert "LLM_RECONNECT_SECONDS=0.2" in str(caught.value)
