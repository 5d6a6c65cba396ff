"""The one interface every LLM provider implements, and the errors the run loop understands.

A provider turns a `ChatRequest` into an async stream of `ChatChunk`s (text deltas, then usage).
It raises `TransientModelError` for what may succeed on a retry (rate limits, overload, 5xx,
dropped connections) and `ModelError` for what will not (bad request, wrong key); the runtime
decides about retries, so the SDKs' own retries are switched off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


class ModelError(RuntimeError):
    """The model call failed for good; the message is shown as the run's error."""


class TransientModelError(ModelError):
    """The model call failed in a way a retry may fix (429, 5xx, 529 overloaded, network)."""


class ProviderConfigError(ModelError):
    """The provider cannot be used as configured, e.g. its API key is not set."""


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "user" | "assistant"
    content: str

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> ChatMessage:
        return cls(role=str(value.get("role", "user")), content=str(value.get("content", "")))


@dataclass(frozen=True)
class ChatRequest:
    messages: list[ChatMessage]
    system: str = ""
    temperature: float | None = None
    max_tokens: int = 1024


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens


@dataclass
class ChatChunk:
    """A text delta, or (once, at the end) the call's token usage."""

    text: str = ""
    usage: Usage | None = None


@dataclass
class ChatResult:
    text: str
    usage: Usage = field(default_factory=Usage)
    model: str = ""


class ChatModel(Protocol):
    """A model chosen by its model string; `stream` yields chunks as the model produces them."""

    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...
