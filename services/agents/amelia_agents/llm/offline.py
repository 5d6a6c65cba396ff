"""The offline provider: deterministic replies with no network, for development and tests.

It is clearly not a model. Model strings:

- `offline:echo` — replies with the last user message.
- `offline:say:<text>` — always replies `<text>`.
- `offline:transcript` — replies with the whole conversation, one `role: content` line each
  (shows what the model was given, e.g. a thread's memory).
- `offline:fail:<message>` — fails with `<message>` (not retried).

Append `?delay_ms=N` to wait N milliseconds before each token (to watch streaming or cancel).
Replies are split into word tokens whose concatenation is the reply; usage counts words.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

from amelia_agents.llm.base import ChatChunk, ChatRequest, ModelError, Usage

_TOKEN = re.compile(r"\s*\S+\s*|\s+")
MODES = ("echo", "say", "transcript", "fail")


def tokenize(text: str) -> list[str]:
    """Word tokens (with their whitespace) whose concatenation is `text`."""
    return _TOKEN.findall(text)


class OfflineModel:
    """A deterministic stand-in for a model."""

    def __init__(self, spec: str) -> None:
        self.name = f"offline:{spec}"
        body, _, query = spec.partition("?")
        mode, _, arg = body.partition(":")
        if mode not in MODES:
            raise ModelError(
                f"unknown offline mode {mode!r}: use one of {', '.join(MODES)} "
                "(e.g. 'offline:echo', 'offline:say:hello')"
            )
        self.mode = mode
        self.arg = arg
        params = parse_qs(query)
        try:
            self.delay = int(params.get("delay_ms", ["0"])[0]) / 1000
        except ValueError as exc:
            raise ModelError(f"offline model {spec!r}: delay_ms must be an integer") from exc

    def reply(self, request: ChatRequest) -> str:
        if self.mode == "say":
            return self.arg
        if self.mode == "transcript":
            return "\n".join(f"{m.role}: {m.content}" for m in request.messages)
        if self.mode == "fail":
            raise ModelError(self.arg or "offline model failure")
        users = [m.content for m in request.messages if m.role == "user"]
        return users[-1] if users else ""

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        text = self.reply(request)
        tokens = tokenize(text)
        for token in tokens:
            if self.delay:
                await asyncio.sleep(self.delay)
            yield ChatChunk(text=token)
        prompt_words = len(request.system.split()) + sum(
            len(m.content.split()) for m in request.messages
        )
        yield ChatChunk(usage=Usage(input_tokens=prompt_words, output_tokens=len(tokens)))
