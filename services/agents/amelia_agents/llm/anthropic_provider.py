"""Anthropic's Messages API through the official `anthropic` SDK, streamed.

`ANTHROPIC_API_KEY` is required; `ANTHROPIC_BASE_URL` points the SDK elsewhere (a proxy, or a
local fake server in tests). The SDK's own retries are off: the runtime retries transient errors
with its own backoff so the run's events show each retry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import anthropic

from amelia_agents.llm.base import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ModelError,
    ProviderConfigError,
    SdkModel,
    TransientModelError,
    Usage,
    cut_chunk,
    transient_status,
)
from amelia_agents.llm.reconnect import Patience, UnreachableModelError, resumed

_TRANSIENT_TYPES = {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}


# The context window of the Claude models (Anthropic's model overview: 200k for all of them).
CONTEXT_TOKENS = 200_000


def translate_error(exc: Exception) -> ModelError:
    """An SDK exception as a `ModelError` whose message a person understands."""
    if isinstance(exc, anthropic.APIConnectionError):
        return UnreachableModelError(f"anthropic: cannot reach the API: {exc}")
    if isinstance(exc, anthropic.APIStatusError):
        body: Any = exc.body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        kind = error.get("type", "") if isinstance(error, dict) else ""
        message = error.get("message", "") if isinstance(error, dict) else ""
        text = f"anthropic: {exc.status_code} {kind or 'error'}: {message or exc.message}"
        if transient_status(exc.status_code) or kind in _TRANSIENT_TYPES:
            return TransientModelError(text)
        return ModelError(text)
    return ModelError(f"anthropic: {exc}")


def to_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Our messages in the Messages API's shape: an assistant's tool calls are `tool_use` blocks
    after its text, and tool results are `tool_result` blocks of one user message (consecutive
    results go together, as the API wants every result of a turn in the next user message)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id,
                "content": m.content,
                "is_error": m.is_error,
            }
            last = out[-1] if out else None
            if (
                last is not None
                and last["role"] == "user"
                and isinstance(last["content"], list)
                and all(b.get("type") == "tool_result" for b in last["content"])
            ):
                last["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif m.role == "assistant" and m.tool_calls:
            blocks: list[dict[str, Any]] = []
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            blocks.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in m.tool_calls
            )
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


class AnthropicModel(SdkModel[anthropic.AsyncAnthropic]):
    provider = "anthropic"

    def __init__(
        self, model: str, client: anthropic.AsyncAnthropic, patience: Patience = Patience()
    ) -> None:
        super().__init__(model, client)
        self.patience = patience
        self.server = f"anthropic: the API at {str(client.base_url).rstrip('/')}"

    async def context_tokens(self) -> int | None:
        """Every current Claude model reads 200k tokens (its documented window)."""
        return CONTEXT_TOKENS

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """The reply, streamed, waiting for the API if it cannot be reached (`llm.reconnect`)."""
        return resumed(lambda: self.stream_once(request), self.server, self.patience)

    async def stream_once(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": to_messages(request.messages),
            "stream": True,
        }
        if request.system:
            kwargs["system"] = request.system
        if request.tools:
            kwargs["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in request.tools
            ]
        # The Messages API this SDK speaks has no sampling temperature: it is not sent.
        usage = Usage()
        # tool_use blocks by content index: [id, name, the input's JSON as streamed so far]
        calls: dict[int, list[str]] = {}
        stop: str | None = None
        try:
            stream = await self.client.messages.create(**kwargs)
            async with stream:
                async for event in stream:
                    if event.type == "message_start":
                        usage.input_tokens = event.message.usage.input_tokens or 0
                        usage.output_tokens = event.message.usage.output_tokens or 0
                        request.counted.reported = usage
                    elif (
                        event.type == "content_block_start"
                        and event.content_block.type == "tool_use"
                    ):
                        block = event.content_block
                        calls[event.index] = [block.id, block.name, ""]
                    elif event.type == "content_block_delta":
                        request.counted.deltas += 1
                        if event.delta.type == "text_delta":
                            yield ChatChunk(text=event.delta.text)
                        elif event.delta.type == "input_json_delta" and event.index in calls:
                            calls[event.index][2] += event.delta.partial_json
                    elif event.type == "message_delta":
                        stop = getattr(event.delta, "stop_reason", None) or stop
                        if event.usage is not None:
                            out = event.usage.output_tokens
                            usage.output_tokens = out or usage.output_tokens
        except anthropic.AnthropicError as exc:
            raise translate_error(exc) from exc
        if stop == "max_tokens":  # as OpenAI's finish_reason "length"
            yield cut_chunk(self.provider, request.max_tokens)
        for chunk in self.ending(calls, usage):
            yield chunk


def make_client(api_key: str, base_url: str) -> anthropic.AsyncAnthropic:
    if not api_key:
        raise ProviderConfigError(
            "ANTHROPIC_API_KEY is not set: set it (sk-ant-…) to use 'anthropic:' models, "
            "or pick another model (e.g. 'offline:echo'). A run or agent naming no model gets "
            "Claude only when no provider key is set and LOCAL_MODEL is 'off': set "
            "LOCAL_MODEL (the local model) or DEFAULT_MODEL to use another"
        )
    return anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url or None, max_retries=0)
