"""`local:` models: the llama.cpp server `amelia up` runs (see `amelia_common.llama_server`).

`local:qwen2.5-coder-0.5b` (the model `make install` fetched) or `local:/path/to/model.gguf`
talk to the server at `LOCAL_MODEL_URL` (default `http://127.0.0.1:LOCAL_MODEL_PORT/v1`) through
the OpenAI provider: same SDK, streaming, usage; cancelling a run closes the stream and llama.cpp
stops generating and frees the slot. The model named must be the one the server serves
(`LOCAL_MODEL`): one server loads one GGUF, and answering with another model than the one asked
for would be a silent lie, so a mismatch fails saying how to serve the one asked for.

Tools, for models too small for the tool protocol. A 0.5B model writes its tool call as bare
JSON (`{"name": "calculator", "arguments": {...}}`, sometimes in a code fence or a tag) instead
of inside `<tool_call>` tags, so llama.cpp does not see a call; it calls the function a request
asks it to write (`{"name": "subtract", "arguments": {"a": 5, "b": 3}}`); and shown a tool
result, it calls the tool again instead of answering. So, when tools are offered:

- the reply is constrained by a JSON schema (llama.cpp's `response_format`, turned into a
  grammar as it samples): one call of an offered tool with arguments its parameters accept, or
  `{"answer": "…"}`. The tools are described in the system prompt instead of sent as `tools`
  (llama.cpp ignores the schema when tools are sent). The reply is held until it ends: a call
  becomes a tool call, an answer its text;
- the results of calls found that way go back to the model as text in the system prompt ("Tool
  results: …"), and the tools are not offered again: the model answers from the results. Such a
  model gets one round of tools.

A reply cut by a server restart is continued, not asked for again (`llm.reconnect`): llama.cpp
treats a request's final assistant message as the start of its reply ("assistant prefill", on
by default; the stream then carries only what follows). Asked again instead, a restarted server
may answer differently even at temperature 0 (a reply computed on a prompt cache reused from an
earlier request can differ from one computed fresh), and the two could not be joined. A server
at LOCAL_MODEL_URL that is not llama.cpp (no `/props`) is asked again and compared.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai

from amelia_agents.llm import slots
from amelia_agents.llm.base import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ModelError,
    ProviderConfigError,
    ToolCall,
    ToolSpec,
    TransientModelError,
    cut_chunk,
)
from amelia_agents.llm.openai_provider import OpenAIModel
from amelia_agents.llm.reconnect import Patience, UnreachableModelError, resumed
from amelia_common.llama_server import supervisor_hint
from amelia_common.local_model import gguf_problem
from amelia_common.settings import PACKAGED_LOCAL_MODELS

# Ids of the calls found in a reply's text; their results go back as text.
CONTENT_CALL_PREFIX = "content-call-"
# The key of a reply that answers instead of calling a tool (see `reply_schema`).
ANSWER_KEY = "answer"
START_HINT = (
    "'amelia up' starts it (LOCAL_MODEL), or set LOCAL_MODEL_URL to a running llama.cpp server"
)
# Statuses of a llama.cpp server that is (re)starting: 503 while it loads its model.
LOADING = frozenset({502, 503, 504})
# The longest a call waits for `/slots` to answer before it goes ahead without it (`llm.slots`).
SLOTS_ASK_SECONDS = 2.0
_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", re.DOTALL)
_CUT_ANSWER = re.compile(r'^\s*\{\s*"answer"\s*:\s*"(.*)$', re.DOTALL)
_TAG = re.compile(r"^<([A-Za-z_][\w-]*)>\s*(.*?)\s*</\1>$", re.DOTALL)


def served_name(model: str) -> str:
    """The name a `local:` model is served under: a path as an absolute path, else as is."""
    if model.endswith(".gguf") or "/" in model:
        return str(Path(model).expanduser().resolve())
    return model


def servable(model: str) -> bool:
    """Whether `amelia up` can serve the `local:` model named `model`: a packaged model (it
    fetches and verifies it) or the path of a GGUF file there is, what LOCAL_MODEL accepts."""
    if model in PACKAGED_LOCAL_MODELS:
        return True
    is_path = model.endswith(".gguf") or "/" in model
    return is_path and not gguf_problem(Path(served_name(model)))


def servable_names() -> str:
    """The `local:` names `servable` accepts, for an error message."""
    names = ", ".join(f"'local:{name}'" for name in PACKAGED_LOCAL_MODELS)
    return f"{names} or 'local:/path/to/model.gguf'"


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

    def __init__(
        self,
        model: str,
        client: openai.AsyncOpenAI,
        base_url: str,
        patience: Patience = Patience(),
        slots: int = 2,
        data_dir: Path | None = None,
    ) -> None:
        """`slots`: the requests the server generates at once (LOCAL_MODEL_SLOTS), unless its
        `/props` says (`llm.slots`); `data_dir`: the mesh's, whose `amelia up` says what to do
        when its server does not answer (`hint`)."""
        self.name = f"local:{model}"
        self.model = served_name(model)
        self.client = client
        self.base_url = base_url
        self.patience = patience
        self.slots = slots
        self.data_dir = data_dir
        # Errors say `local:` as the user wrote it; a 503 is llama.cpp loading its model.
        self.inner = OpenAIModel(
            self.model, client, label="local", what="the local model server", restarting=LOADING
        )
        self._fetched: tuple[dict[str, Any] | None] | None = None  # `/props`, once fetched

    async def _check_served(self) -> None:
        try:
            page = await self.client.models.list()
        except openai.APIConnectionError as exc:
            raise UnreachableModelError(
                f"local: the local model server at {self.base_url} is not answering ({exc}); "
                f"{self.hint()}"
            ) from exc
        except openai.APIStatusError as exc:
            error = UnreachableModelError if exc.status_code in LOADING else TransientModelError
            raise error(f"local: {self.base_url}: {exc}") from exc
        except openai.OpenAIError as exc:
            raise TransientModelError(f"local: {self.base_url}: {exc}") from exc
        names = dict.fromkeys(
            name for m in page.data for name in [m.id, *(getattr(m, "aliases", None) or [])]
        )
        # A model's name before the file it was loaded from (llama.cpp's id is the GGUF's path,
        # its alias the name LOCAL_MODEL gave): the advice names what a person would type.
        served = sorted(names, key=lambda name: "/" in name)
        if self.model not in served:
            ask = f"ask for local:{served[0]}" if served else "ask for a model it serves"
            # Only a name LOCAL_MODEL accepts can be served by setting it.
            if servable(self.model):
                ask = f"set LOCAL_MODEL={self.model} and restart 'amelia up' to serve it, or {ask}"
            raise ProviderConfigError(
                f"local: the local model server at {self.base_url} serves "
                f"{', '.join(map(repr, served)) or 'no model'}, not {self.model!r}: {ask}"
            )

    def hint(self) -> str:
        """What to do when the server does not answer: what the `amelia up` running its server
        says (it gave up restarting it: run `amelia up` again), else how to start one."""
        said = supervisor_hint(self.data_dir, self.base_url) if self.data_dir else ""
        return said or START_HINT

    async def _props(self) -> dict[str, Any] | None:
        """llama.cpp's `/props` (None from a server that is not llama.cpp), fetched once."""
        if self._fetched is None:
            root = self.base_url.rstrip("/").removesuffix("/v1")
            try:
                props = await self.client.get(f"{root}/props", cast_to=object)
            except openai.APIConnectionError as exc:
                raise UnreachableModelError(
                    f"local: cannot reach {root}: {exc}; {self.hint()}"
                ) from exc
            except openai.APIStatusError as exc:
                if exc.status_code in LOADING:
                    raise UnreachableModelError(f"local: {root}: {exc}") from exc
                props = None
            except openai.OpenAIError:
                props = None
            self._fetched = (props,) if isinstance(props, dict) else (None,)
        return self._fetched[0]

    async def _server_prefills(self) -> bool:
        """Whether the server continues a request's final assistant message: llama.cpp (its
        `/props` answers) does unless started with --no-prefill-assistant, which `amelia up`
        never passes."""
        props = await self._props()
        return props is not None and "default_generation_settings" in props

    async def context_tokens(self) -> int | None:
        """The context of one slot (a request's window): llama.cpp's `/props`
        `default_generation_settings.n_ctx`; None from another server."""
        settings = (await self._props() or {}).get("default_generation_settings") or {}
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None

    async def count_tokens(self, text: str) -> int | None:
        """How many tokens the server's own tokenizer makes of `text` (llama.cpp's
        `/tokenize`); None from another server, or when it cannot say (see `llm.window`)."""
        if await self._props() is None:
            return None
        root = self.base_url.rstrip("/").removesuffix("/v1")
        try:
            counted = await self.client.post(
                f"{root}/tokenize", body={"content": text}, cast_to=object
            )
        except openai.OpenAIError:
            return None
        tokens = counted.get("tokens") if isinstance(counted, dict) else None
        return len(tokens) if isinstance(tokens, list) else None

    async def _continuation(
        self, request: ChatRequest, shown: str
    ) -> AsyncIterator[ChatChunk] | None:
        """What follows `shown`, the start of the reply already streamed, or None when the
        server cannot continue it (or tools were offered: that reply is held, never cut)."""
        if request.tools or not await self._server_prefills():
            return None
        return self.stream_once(request, shown)

    async def _slot_count(self) -> int:
        """The server's slots: its `/props` `total_slots`, else LOCAL_MODEL_SLOTS (a server
        not answering yet is waited for by the call itself, `llm.reconnect`)."""
        try:
            total = (await self._props() or {}).get("total_slots")
        except UnreachableModelError:
            total = None
        return total if isinstance(total, int) and total > 0 else self.slots

    async def server_slots(self) -> slots.ServerSlots | None:
        """llama.cpp's `/slots`: every client's requests in the server's slots (`llm.slots`);
        None when it does not answer now (restarting, slow)."""
        root = self.base_url.rstrip("/").removesuffix("/v1")
        client = self.client.with_options(timeout=SLOTS_ASK_SECONDS, max_retries=0)
        try:
            listed = await client.get(f"{root}/slots", cast_to=object)
        except openai.APIStatusError as exc:
            if exc.status_code in LOADING:
                return None
            raise slots.NoSlotsEndpointError(f"{root}/slots: {exc}") from exc
        except openai.OpenAIError:
            return None
        return slots.ServerSlots.parse(listed)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """The reply, streamed once a slot of the server is free (`llm.slots`); a server
        restarting meanwhile is waited for and the reply continued (`llm.reconnect`)."""
        server = f"local: the local model server at {self.base_url}"
        reply = resumed(
            lambda: self.stream_once(request),
            server,
            self.patience,
            self.hint(),
            lambda shown: self._continuation(request, shown),
        )
        gate = slots.gate(self.base_url, await self._slot_count())
        async for chunk in slots.in_slot(server, gate, reply, self.server_slots):
            yield chunk

    async def stream_once(self, request: ChatRequest, shown: str = "") -> AsyncIterator[ChatChunk]:
        """The reply, or with `shown` (the start of it already streamed) what follows it."""
        await self._check_served()
        request = fold_tool_results(request)
        if not request.tools:
            async for chunk in self.inner.stream_once(prefilled(request, shown)):
                yield chunk
            return
        constrained = replace(
            request,
            tools=(),
            system="\n\n".join(filter(None, [request.system, tools_prompt(request.tools)])),
        )
        options = {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "tool_call_or_answer",
                    "schema": reply_schema(request.tools),
                },
            }
        }
        held: list[str] = []
        cut = False
        async for chunk in self.inner.stream_once(constrained, options):
            if chunk.text:
                held.append(chunk.text)
            elif chunk.finish == "length":
                cut = True  # told below: a cut tool call fails the call
            else:
                yield chunk  # usage (the server parsed no call: no tools were sent)
        reply = constrained_reply("".join(held))
        if cut:
            reply = cut_tool_call(self.name, "".join(held), request.max_tokens, reply) or reply
            yield cut_chunk("local", request.max_tokens)
        yield reply


def prefilled(request: ChatRequest, shown: str) -> ChatRequest:
    """The request with `shown` as the start of the assistant's reply (its final message),
    joined to a final assistant message it already ends with (llama.cpp continues that one)."""
    if not shown:
        return request
    messages = list(request.messages)
    if messages and messages[-1].role == "assistant" and not messages[-1].tool_calls:
        shown = messages.pop().content + shown
    return replace(request, messages=[*messages, ChatMessage(role="assistant", content=shown)])


def _strict(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A tool's parameters schema with no property beyond its own (so the grammar ends the
    object instead of letting the model invent arguments)."""
    schema = {"type": "object", "properties": {}, **parameters}
    return {**schema, "additionalProperties": False}


def reply_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """The JSON schema of a reply when `tools` are offered: one call of one of them, with
    arguments its parameters accept, or an answer."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": _strict(t.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    answer = {
        "type": "object",
        "properties": {ANSWER_KEY: {"type": "string"}},
        "required": [ANSWER_KEY],
        "additionalProperties": False,
    }
    return {"anyOf": [*calls, answer]}


def tools_prompt(tools: Sequence[ToolSpec]) -> str:
    """The tools as the system prompt describes them to a model they are not sent to."""
    lines = ["You can call these tools:"]
    for t in tools:
        arguments = json.dumps(t.parameters.get("properties", {}), ensure_ascii=False)
        lines.append(f"- {t.name}: {t.description} Arguments: {arguments}")
    lines.append(
        'Reply with one JSON object: {"name": "<tool>", "arguments": {…}} to call a tool, or '
        f'{{"{ANSWER_KEY}": "<your reply>"}} to reply without one.'
    )
    return "\n".join(lines)


def cut_tool_call(name: str, text: str, max_tokens: int, reply: ChatChunk) -> ChatChunk | None:
    """For `text`, a constrained reply cut at `max_tokens` that is neither an answer nor a call:
    the start of the answer it was writing, else raise — a tool call's start
    (`{"name": "calculator",`) is no answer to give the user (QA s27: a tools agent completed
    with that fragment as its answer). None when `reply` stands."""
    try:
        whole = isinstance(json.loads(text), dict)
    except ValueError:
        whole = False
    if reply.tool_calls or whole:
        return None
    answer = _CUT_ANSWER.match(text)
    if answer:  # an answer cut: its text so far
        return ChatChunk(text=_string_start(answer.group(1)))
    raise ModelError(
        f"{name}: max_tokens ({max_tokens}) cut the reply in the middle of a tool call "
        f"({text[:80]!r}): no answer to give; give the agent more max_tokens"
    )


def _string_start(body: str) -> str:
    """The text of a JSON string cut before its closing quote (`body` follows the opening one)."""
    for end in range(len(body), -1, -1):  # a cut escape (`\u00`) is dropped
        try:
            value = json.loads(f'"{body[:end]}"')
        except ValueError:
            continue
        return str(value)
    return ""


def constrained_reply(text: str) -> ChatChunk:
    """A reply written to `reply_schema`: its tool call, or its answer's text (the text as it
    is when it is neither, e.g. cut short by max_tokens)."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get(ANSWER_KEY), str) and len(value) == 1:
        return ChatChunk(text=value[ANSWER_KEY])
    calls = tool_calls_in(text)
    return ChatChunk(tool_calls=calls) if calls else ChatChunk(text=text)
