"""Waiting out a model server that went away, and resuming a reply it was streaming.

A model server that cannot be reached (connection refused or reset, a stream cut in the middle,
the local llama.cpp server answering 503 while it loads its model again) is usually being
restarted: `amelia up` restarts a killed local server ~8 s later. So the call is tried again,
with backoff from `LLM_RETRY_BACKOFF_SECONDS` doubling up to `MAX_DELAY_SECONDS`, until the
server has not answered for `LLM_RECONNECT_SECONDS`; then it fails for good naming the server
and its URL (a `ModelError`, not transient: the runtime's own retries would only wait again).
When a wait starts, a `run.model.waiting` event (`WAITING`) says so: the user sees why nothing
moves instead of up to `LLM_RECONNECT_SECONDS` of silence.

A reply cut in the middle is not streamed twice. Two ways:

- continued (when the caller gives a `continuation` and the server can, e.g. llama.cpp): the
  text already streamed is sent back as the start of the assistant's reply and the server writes
  what follows; nothing must match, whatever the restarted server would answer from scratch;
- asked for again (any other server, e.g. OpenAI's API, which has no such prefill): the new
  reply must start with the text already streamed (the same request at temperature 0 usually
  gives the same reply), and only what follows is passed on. A new reply that differs from the
  text already shown cannot be stitched to it, and the call fails saying where they part:
  tokens a user has read are not taken back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from amelia_agents.llm.base import ChatChunk, ModelError, TransientModelError
from amelia_common.logging import get_logger

log = get_logger("amelia.agents.llm")

# The longest wait between two tries, so a server back after a restart is seen within ~2 s.
MAX_DELAY_SECONDS = 2.0
# The run event published when a model server stops answering and the call starts waiting:
# data `server` (provider and URL), `reason` ("unreachable"; "slot" is `llm.slots`'), `error`,
# `seconds` (the most it waits), `message` (one line).
WAITING = "run.model.waiting"
# How many characters either side of where two replies part the error and the log show.
CONTEXT_CHARS = 20

# Given the text already streamed: the chunks of what follows it, or None when the server
# cannot continue a reply (then it is asked for again and compared).
Continuation = Callable[[str], Awaitable[AsyncIterator[ChatChunk] | None]]


class UnreachableModelError(TransientModelError):
    """The model server did not answer: refused, reset, cut mid-reply, or (local) loading."""


@dataclass(frozen=True)
class Patience:
    """How long a model server may stay unreachable (seconds), and the first wait between
    tries (doubling up to MAX_DELAY_SECONDS)."""

    window: float = 30.0
    backoff: float = 0.5


class _Resume:
    """The text already streamed, matched against the start of a new reply."""

    def __init__(self, server: str, shown: str) -> None:
        self.server = server
        self.shown = shown
        self.left = shown

    def text(self, text: str) -> str:
        """The part of a new reply's `text` not streamed yet ('' while it repeats the old)."""
        if not self.left:
            return text
        if self.left.startswith(text):
            self.left = self.left[len(text) :]
            return ""
        if text.startswith(self.left):
            text, self.left = text[len(self.left) :], ""
            return text
        raise self.differs(text)

    def differs(self, text: str = "") -> ModelError:
        """The error (and a log line) saying where the new reply, `text` after what matched so
        far, parts from the text already streamed ('' when it ended early)."""
        matched = len(self.shown) - len(self.left)
        common = 0
        while common < min(len(text), len(self.left)) and text[common] == self.left[common]:
            common += 1
        at = matched + common
        new = self.shown[:matched] + text
        start = max(0, at - CONTEXT_CHARS)
        was, now = self.shown[start : at + CONTEXT_CHARS], new[start : at + CONTEXT_CHARS]
        log.warning(
            "a reply asked for again differs from the text already streamed",
            server=self.server,
            streamed_chars=len(self.shown),
            offset=at,
            streamed=was,
            new=now if at < len(new) else now + "<end>",
        )
        return ModelError(
            f"{self.server} was unreachable in the middle of a reply, and the reply it gave when "
            f"asked again differs from the {len(self.shown)} characters already streamed at "
            f"character {at} ({was!r} became {now!r}{' and ended' if at >= len(new) else ''}): "
            "they cannot be joined"
        )


def _waiting(server: str, error: Exception, patience: Patience) -> ChatChunk:
    error_text = str(error.__cause__ or error)
    return ChatChunk(
        event=(
            WAITING,
            {
                "server": server,
                "reason": "unreachable",
                "error": error_text,
                "seconds": patience.window,
                "message": (
                    f"{server} is unreachable ({error_text}); trying again for up to "
                    f"{patience.window:g}s (LLM_RECONNECT_SECONDS)"
                ),
            },
        )
    )


async def resumed(
    attempt: Callable[[], AsyncIterator[ChatChunk]],
    server: str,
    patience: Patience,
    hint: str = "",
    continuation: Continuation | None = None,
) -> AsyncIterator[ChatChunk]:
    """The chunks of `attempt()`, tried again while it raises `UnreachableModelError` (see the
    module). `server` names it in errors, e.g. 'local: the local model server at <url>'; `hint`
    (what to do about it) ends the error when it stays away. `continuation`, asked once text was
    cut, continues it if the server can (it may raise `UnreachableModelError` too)."""
    shown: list[str] = []
    ended = False  # a tool call or the usage was passed on: nothing can be resumed after it
    since: float | None = None  # when the server stopped answering
    delay = patience.backoff
    tries = 0
    while True:
        resume = _Resume(server, "".join(shown))
        try:
            rest = None
            if resume.shown and continuation is not None:
                rest = await continuation(resume.shown)
            continuing = rest is not None
            async for chunk in rest if rest is not None else attempt():
                if chunk.text:
                    text = chunk.text if continuing else resume.text(chunk.text)
                    if not text:
                        continue
                    chunk = ChatChunk(text=text)
                    shown.append(text)
                elif resume.left and not continuing:
                    raise resume.differs()  # the new reply ended (or called a tool) early
                else:
                    ended = True
                since, delay = None, patience.backoff
                yield chunk
            return
        except UnreachableModelError as exc:
            now = time.monotonic()
            starts = since is None  # a new wait: the user is told once
            since = now if since is None else since
            waited = now - since
            if ended or waited >= patience.window:
                raise ModelError(
                    f"{server} did not answer for {waited:.0f}s after {tries + 1} tries "
                    f"(LLM_RECONNECT_SECONDS={patience.window:g}): {exc.__cause__ or exc}"
                    + (f"; {hint}" if hint else "")
                ) from exc
            if starts:
                yield _waiting(server, exc, patience)
            tries += 1
            pause = min(delay, patience.window - waited)
            log.warning(
                "model server unreachable, trying again",
                server=server,
                error=str(exc),
                streamed_chars=sum(map(len, shown)),
                retry=tries,
                delay_seconds=round(pause, 3),
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, MAX_DELAY_SECONDS)
