"""The one interface every LLM provider implements, and the errors the run loop understands.

A provider turns a `ChatRequest` into an async stream of `ChatChunk`s (text deltas, then the
tool calls the model asked for if any, then usage). Tools travel provider-neutral: `ToolSpec`s in
the request, `ToolCall`s on an assistant message, `role="tool"` messages with the results; each
provider translates them to its own wire format.
It raises `TransientModelError` for what may succeed on a retry (rate limits, overload, 5xx,
dropped connections) and `ModelError` for what will not (bad request, wrong key); the runtime
decides about retries, so the SDKs' own retries are switched off.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar


class ModelError(RuntimeError):
    """The model call failed for good; the message is shown as the run's error."""


class TransientModelError(ModelError):
    """The model call failed in a way a retry may fix (429, 5xx, 529 overloaded, network)."""


class ProviderConfigError(ModelError):
    """The provider cannot be used as configured, e.g. its API key is not set."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: its name, what it does, and its JSON-Schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """The model asking for a tool: the provider's call id, the tool's name, its arguments."""

    id: str
    name: str
    arguments: dict[str, Any]


def parse_arguments(raw: str) -> dict[str, Any]:
    """A tool call's streamed JSON arguments as a dict. What is not a JSON object is kept as
    `{"_invalid_json": raw}` for the tool to reject (the model then sees why), rather than
    failing the model call."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"_invalid_json": raw}
    return value if isinstance(value, dict) else {"_invalid_json": raw}


def streamed_tool_calls(streamed: dict[int, list[str]]) -> list[ToolCall]:
    """The tool calls a model streamed in pieces, by index `[id, name, arguments' JSON]`, in
    order; a call whose server sent no id gets `call_<index>`."""
    return [
        ToolCall(id=cid or f"call_{index}", name=name, arguments=parse_arguments(raw))
        for index, (cid, name, raw) in sorted(streamed.items())
    ]


def transient_status(status: int) -> bool:
    """An HTTP status a retry may fix: a timeout, a conflict, a rate limit, any 5xx."""
    return status in (408, 409, 429) or status >= 500


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "user" | "assistant" | "tool"
    content: str
    # On an assistant message: the tools it asked for (after its text, if any).
    tool_calls: tuple[ToolCall, ...] = ()
    # On a tool message: the call it answers, and whether the tool failed.
    tool_call_id: str = ""
    is_error: bool = False

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> ChatMessage:
        return cls(role=str(value.get("role", "user")), content=str(value.get("content", "")))


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens


# Characters per prompt token when the server said nothing: the usual rule of thumb for English
# text with BPE tokenizers (OpenAI's, Llama's, Qwen's).
CHARS_PER_TOKEN = 4


@dataclass
class Counted:
    """What a provider has seen of one call so far, for a call cut short (a cancel, an error)
    before its final usage chunk: the usage the server last reported mid-stream (Anthropic's
    `message_start`), and the text and tool-call deltas streamed (one token each, about)."""

    reported: Usage | None = None
    deltas: int = 0

    def usage(self, request: ChatRequest) -> Usage:
        """The call's usage so far: the server's, its output raised to the deltas streamed
        since; else an estimate — the deltas, and the prompt at CHARS_PER_TOKEN — once the
        server started answering (before that, nothing: it may not have read the prompt)."""
        if self.reported is not None:
            return Usage(self.reported.input_tokens, max(self.reported.output_tokens, self.deltas))
        if not self.deltas:
            return Usage()
        prompt = len(request.system) + sum(
            len(m.content) + sum(len(json.dumps(c.arguments)) for c in m.tool_calls)
            for m in request.messages
        )
        return Usage(-(-prompt // CHARS_PER_TOKEN), self.deltas)


@dataclass(frozen=True)
class ChatRequest:
    messages: list[ChatMessage]
    system: str = ""
    temperature: float | None = None
    max_tokens: int = 1024
    tools: tuple[ToolSpec, ...] = ()
    # Filled in by the provider as the reply streams (a request `replace`d keeps it).
    counted: Counted = field(default_factory=Counted, compare=False, repr=False)


@dataclass
class ChatChunk:
    """A text delta, the complete tool calls the model asked for (once, after the text), or
    (once, at the end) the call's token usage; or `event`, a run event (type, data) telling the
    user how the call is going (e.g. `run.model.waiting`, `run.model.cut`), for the runtime to
    publish; `finish` (once, at the end) why the reply ended."""

    text: str = ""
    usage: Usage | None = None
    tool_calls: list[ToolCall] | None = None
    event: tuple[str, dict[str, Any]] | None = None
    # Why the reply ended, as the server said (OpenAI's `finish_reason`: "stop", "length", …).
    finish: str | None = None


# The run event of a reply the server cut at the request's max_tokens (`finish_reason`
# "length"): the answer the run gives is not whole.
CUT = "run.model.cut"


def cut_chunk(label: str, max_tokens: int) -> ChatChunk:
    """The chunk saying a reply was cut at `max_tokens` (the `CUT` event)."""
    message = (
        f"{label}: the reply was cut at max_tokens ({max_tokens}): the answer is not whole; "
        "give the agent more max_tokens"
    )
    data = {"finish_reason": "length", "max_tokens": max_tokens, "message": message}
    return ChatChunk(finish="length", event=(CUT, data))


@dataclass
class ChatResult:
    text: str
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


class ChatModel(Protocol):
    """A model chosen by its model string; `stream` yields chunks as the model produces them."""

    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...

    async def context_tokens(self) -> int | None:
        """The tokens one request may hold (prompt and reply), or None when unknown."""
        ...


Client = TypeVar("Client")


class SdkModel(Generic[Client]):
    """A model served through its provider's SDK client, named `<provider>:<model>`."""

    provider: ClassVar[str]

    def __init__(self, model: str, client: Client) -> None:
        self.name = f"{self.provider}:{model}"
        self.model = model
        self.client = client

    async def context_tokens(self) -> int | None:
        """Unknown unless the provider knows it (see `llm.window`)."""
        return None

    @staticmethod
    def ending(calls: dict[int, list[str]], usage: Usage) -> list[ChatChunk]:
        """The chunks a stream ends with: the tool calls streamed (if any), then the usage."""
        chunks = [ChatChunk(tool_calls=streamed_tool_calls(calls))] if calls else []
        return [*chunks, ChatChunk(usage=usage)]
