"""The offline provider: deterministic replies with no network, for development and tests.

It is clearly not a model. Model strings:

- `offline:echo` — replies with the last user message.
- `offline:say:<text>` — always replies `<text>`.
- `offline:transcript` — replies with the whole conversation, one `role: content` line each
  (shows what the model was given, e.g. a thread's memory).
- `offline:fail:<message>` — fails with `<message>` (not retried).
- `offline:tool:<name>:<json-args>` — scripted tool use: asks for tool `<name>` with the JSON
  object `<json-args>` (e.g. `offline:tool:calculator:{"expression": "6*7"}`); once the tool's
  result comes back, replies with the result's text. The tool must be among the request's tools.

Append `?delay_ms=N` to wait N milliseconds before each token (to watch streaming or cancel).
Replies are split into word tokens whose concatenation is the reply; usage counts words.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

from amelia_agents.llm.base import ChatChunk, ChatRequest, ModelError, ToolCall, Usage

_TOKEN = re.compile(r"\s*\S+\s*|\s+")
_QUERY = re.compile(r"[a-z_]+=[^&\s]*(&[a-z_]+=[^&\s]*)*")
MODES = ("echo", "say", "transcript", "fail", "tool")


def tokenize(text: str) -> list[str]:
    """Word tokens (with their whitespace) whose concatenation is `text`."""
    return _TOKEN.findall(text)


class OfflineModel:
    """A deterministic stand-in for a model."""

    async def context_tokens(self) -> int | None:
        """No window: the stand-in reads any prompt."""
        return None

    def __init__(self, spec: str) -> None:
        self.name = f"offline:{spec}"
        # `?delay_ms=N` ends the spec; a `?` elsewhere (e.g. in a tool's JSON arguments) is text.
        body, sep, query = spec.rpartition("?")
        if not sep or not _QUERY.fullmatch(query):
            body, query = spec, ""
        mode, _, arg = body.partition(":")
        if mode not in MODES:
            raise ModelError(
                f"unknown offline mode {mode!r}: use one of {', '.join(MODES)} "
                "(e.g. 'offline:echo', 'offline:say:hello')"
            )
        self.mode = mode
        self.arg = arg
        self.tool_call: ToolCall | None = None
        if mode == "tool":
            self.tool_call = _scripted_call(spec, arg)
        params = parse_qs(query)
        try:
            self.delay = int(params.get("delay_ms", ["0"])[0]) / 1000
        except ValueError as exc:
            raise ModelError(f"offline model {spec!r}: delay_ms must be an integer") from exc

    def reply(self, request: ChatRequest) -> str:
        if self.mode == "tool":
            last = request.messages[-1] if request.messages else None
            return last.content if last is not None and last.role == "tool" else ""
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
            request.counted.deltas += 1
            yield ChatChunk(text=token)
        call = self.tool_call
        if call is not None and not (request.messages and request.messages[-1].role == "tool"):
            if call.name not in {t.name for t in request.tools}:
                offered = ", ".join(t.name for t in request.tools) or "none"
                raise ModelError(
                    f"{self.name}: tool {call.name!r} is not offered to the model "
                    f"(tools: {offered}); give the agent that tool"
                )
            yield ChatChunk(tool_calls=[call])
        prompt_words = len(request.system.split()) + sum(
            len(m.content.split()) for m in request.messages
        )
        yield ChatChunk(usage=Usage(input_tokens=prompt_words, output_tokens=len(tokens)))


def _scripted_call(spec: str, arg: str) -> ToolCall:
    name, _, raw = arg.partition(":")
    if not name:
        raise ModelError(
            f"offline model {spec!r}: use 'offline:tool:<name>:<json-args>', "
            'e.g. \'offline:tool:calculator:{"expression": "6*7"}\''
        )
    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ModelError(f"offline model {spec!r}: the arguments are not JSON ({exc})") from exc
    if not isinstance(arguments, dict):
        raise ModelError(f"offline model {spec!r}: the arguments must be a JSON object")
    return ToolCall(id="offline-call-1", name=name, arguments=arguments)
