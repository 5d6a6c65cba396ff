"""`local:` models: the llama.cpp server `amelia up` runs (see `amelia_common.llama_server`).

`local:qwen2.5-coder-0.5b` (the model `make install` fetched) or `local:/path/to/model.gguf`
talk to the server at `LOCAL_MODEL_URL` (default `http://127.0.0.1:LOCAL_MODEL_PORT/v1`) through
the OpenAI provider: same SDK, streaming, usage; cancelling a run closes the stream and llama.cpp
stops generating and frees the slot. The model named must be the one the server serves
(`LOCAL_MODEL`): one server loads one GGUF, and answering with another model than the one asked
for would be a silent lie, so a mismatch fails saying how to serve the one asked for.

Tools, for models too small for the tool protocol. A 0.5B model writes its tool call as bare
JSON (`{"name": "calculator", "arguments": {...}}`, sometimes in a code fence or a tag) instead
of inside `<tool_call>` tags, so llama.cpp does not see a call; and shown a tool result, it
calls the tool again instead of answering. So, when tools are offered:

- a reply that starts like JSON (`{`, a fence or a tag) is held back until it ends; if it is one
  or more `{"name", "arguments"}` objects it becomes tool calls, otherwise it is streamed as text.
  Any other reply streams as it comes. Calls llama.cpp parsed itself pass through untouched;
- the results of calls found that way go back to the model as text in the system prompt ("Tool
  results: …"), and the tools are not offered again: the model answers from the results. Such a
  model gets one round of tools; a model that speaks the protocol keeps the usual loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai

from amelia_agents.llm.base import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ProviderConfigError,
    ToolCall,
    TransientModelError,
)
from amelia_agents.llm.openai_provider import OpenAIModel

# Ids of the calls found in a reply's text; their results go back as text.
CONTENT_CALL_PREFIX = "content-call-"
# A reply starting with one of these may be a tool call written as text.
_MAYBE_CALL = ("{", "`", "<")
_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", re.DOTALL)
_TAG = re.compile(r"^<([A-Za-z_][\w-]*)>\s*(.*?)\s*</\1>$", re.DOTALL)


def served_name(model: str) -> str:
    """The name a `local:` model is served under: a path as an absolute path, else as is."""
    if model.endswith(".gguf") or "/" in model:
        return str(Path(model).expanduser().resolve())
    return model


def _unwrap(text: str) -> str:
    """The text inside one code fence or one outer tag (`<tool_call>…</tool_call>`), if any."""
    text = text.strip()
    for pattern in (_FENCE, _TAG):
        match = pattern.match(text)
        if match:
            text = match.group(match.lastindex or 1).strip()
    return text


def _objects(text: str) -> list[Any] | None:
    """The JSON values `text` consists of (one after the other), or None if it holds anything
    else. A missing closing brace or two at the very end (small models drop them) is added."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position == len(text):
            return values
        rest = text[position:]
        for closing in ("", "}", "}}"):
            try:
                value, end = decoder.raw_decode(rest + closing)
            except ValueError:
                continue
            if end > len(rest):  # the added braces were needed: this is the end
                values.append(value)
                return values
            values.append(value)
            position += end
            break
        else:
            return None


def tool_calls_in(text: str) -> list[ToolCall]:
    """The tool calls a reply consists of when written as text, or [] when it is an answer."""
    values = _objects(_unwrap(text))
    if not values:
        return []
    calls: list[ToolCall] = []
    for value in values:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return []
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                arguments = {"_invalid_json": arguments}
        if not isinstance(arguments, dict):
            arguments = {"_invalid_json": json.dumps(arguments)}
        calls.append(
            ToolCall(
                id=f"{CONTENT_CALL_PREFIX}{len(calls) + 1}",
                name=value["name"],
                arguments=arguments,
            )
        )
    return calls


def fold_tool_results(request: ChatRequest) -> ChatRequest:
    """The request with the exchanges of calls found in text (`CONTENT_CALL_PREFIX`) moved into
    the system prompt as "Tool results", and no tools offered; unchanged if there are none."""
    folded: dict[str, ChatMessage] = {}
    calls: dict[str, ToolCall] = {}
    kept: list[ChatMessage] = []
    for m in request.messages:
        if m.role == "assistant" and any(
            c.id.startswith(CONTENT_CALL_PREFIX) for c in m.tool_calls
        ):
            calls.update((c.id, c) for c in m.tool_calls)
            if m.content.strip():
                kept.append(ChatMessage(role="assistant", content=m.content))
        elif m.role == "tool" and m.tool_call_id in calls:
            folded[m.tool_call_id] = m
        else:
            kept.append(m)
    if not folded:
        return request
    lines = ["Tool results:"]
    for call_id, result in folded.items():
        call = calls[call_id]
        outcome = "failed" if result.is_error else "returned"
        lines.append(
            f"{call.name}({json.dumps(call.arguments, ensure_ascii=False)}) {outcome} "
            f"{result.content}"
        )
    # Told only to answer "with them", an agent told to use its calculator had the 0.5B model
    # redo 37*12+5 itself and write 459 beside a result of 449; told the results are right, it
    # stated them (8/8: four system prompts, two questions, greedy).
    lines.append(
        "These results are correct. Answer the user's question by stating the result; "
        "do not work it out again."
    )
    system = "\n\n".join(filter(None, [request.system, "\n".join(lines)]))
    return replace(request, messages=kept, system=system, tools=())


class LocalModel:
    """A model served by the local llama.cpp server, with the small-model tool handling above."""

    def __init__(self, model: str, client: openai.AsyncOpenAI, base_url: str) -> None:
        self.name = f"local:{model}"
        self.model = served_name(model)
        self.client = client
        self.base_url = base_url
        self.inner = OpenAIModel(self.model, client)

    async def _check_served(self) -> None:
        try:
            page = await self.client.models.list()
        except openai.APIConnectionError as exc:
            raise TransientModelError(
                f"local: the local model server at {self.base_url} is not answering ({exc}); "
                "'amelia up' starts it (LOCAL_MODEL), or set LOCAL_MODEL_URL to a running "
                "llama.cpp server"
            ) from exc
        except openai.OpenAIError as exc:
            raise TransientModelError(f"local: {self.base_url}: {exc}") from exc
        served = list(
            dict.fromkeys(
                name for m in page.data for name in [m.id, *(getattr(m, "aliases", None) or [])]
            )
        )
        if self.model not in served:
            raise ProviderConfigError(
                f"local: the local model server at {self.base_url} serves "
                f"{', '.join(map(repr, served)) or 'no model'}, not {self.model!r}: set "
                f"LOCAL_MODEL={self.model} and restart 'amelia up' to serve it, or ask for "
                f"local:{served[0] if served else '<model>'}"
            )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        await self._check_served()
        request = fold_tool_results(request)
        if not request.tools:
            async for chunk in self.inner.stream(request):
                yield chunk
            return
        held: list[str] = []  # a reply that may be a tool call written as text
        streaming = False
        async for chunk in self.inner.stream(request):
            if chunk.text and not streaming:
                held.append(chunk.text)
                start = "".join(held).lstrip()
                if start and not start.startswith(_MAYBE_CALL):
                    streaming = True
                    yield ChatChunk(text="".join(held))
                    held = []
                continue
            if held:  # the text ended: it was a tool call, or an answer that looked like one
                for out in _text_or_calls("".join(held)):
                    yield out
                held = []
            yield chunk
        if held:
            for out in _text_or_calls("".join(held)):
                yield out


def _text_or_calls(text: str) -> Sequence[ChatChunk]:
    calls = tool_calls_in(text)
    return [ChatChunk(tool_calls=calls)] if calls else [ChatChunk(text=text)]
