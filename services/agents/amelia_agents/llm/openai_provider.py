"""OpenAI-compatible chat completions through the official `openai` SDK, streamed.

Works with OpenAI, OpenRouter, Ollama, vLLM and llama.cpp's server: the model string names the
server (`openai:<model>@<base_url>`). Keys: OpenRouter needs `OPENROUTER_API_KEY`, api.openai.com
needs `OPENAI_API_KEY`; other servers get `OPENAI_API_KEY` when it is set (local servers usually
need none).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import openai

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

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def translate_error(
    exc: Exception,
    label: str = "openai",
    where: str = "the server",
    restarting: frozenset[int] = frozenset(),
) -> ModelError:
    """An SDK exception as a `ModelError` starting with `label`, the provider as the user named
    it, and naming `where` the server is when it cannot be reached; a status in `restarting`
    means the server is starting (llama.cpp loading its model)."""
    if isinstance(exc, openai.APIConnectionError):
        return UnreachableModelError(f"{label}: cannot reach {where}: {exc}")
    if isinstance(exc, openai.APIStatusError):
        text = f"{label}: {exc.status_code}: {exc.message}"
        if exc.status_code in restarting:
            return UnreachableModelError(text)
        if transient_status(exc.status_code):
            return TransientModelError(text)
        return ModelError(text)
    return ModelError(f"{label}: {exc}")


def to_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Our messages as chat completions wants them: an assistant's tool calls are `tool_calls`
    (arguments as a JSON string), each tool result a `role: "tool"` message with its call id."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            # Chat completions has no error flag: the text says it (`error: …`).
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
        elif m.role == "assistant" and m.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    "content": m.content or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                        }
                        for c in m.tool_calls
                    ],
                }
            )
        else:
            out.append({"role": m.role, "content": m.content})
    return out


class OpenAIModel(SdkModel[openai.AsyncOpenAI]):
    provider = "openai"

    def __init__(
        self,
        model: str,
        client: openai.AsyncOpenAI,
        patience: Patience = Patience(),
        *,
        label: str = "openai",
        what: str = "the server",
        restarting: frozenset[int] = frozenset(),
    ) -> None:
        """`label` (the provider as the user named it) and `what` name the server in errors;
        statuses in `restarting` mean it is (re)starting and are waited for like a refusal."""
        super().__init__(model, client)
        self.patience = patience
        self.label = label
        self.where = f"{what} at {str(client.base_url).rstrip('/')}"
        self.restarting = restarting

    def stream(
        self, request: ChatRequest, options: Mapping[str, Any] | None = None
    ) -> AsyncIterator[ChatChunk]:
        """The reply, streamed, waiting for the server if it cannot be reached (see
        `llm.reconnect`); `options` as in `stream_once`."""
        server = f"{self.label}: {self.where}"
        return resumed(lambda: self.stream_once(request, options), server, self.patience)

    async def stream_once(
        self, request: ChatRequest, options: Mapping[str, Any] | None = None
    ) -> AsyncIterator[ChatChunk]:
        """The reply, streamed; `options` are more request fields for the server (e.g. a
        llama.cpp server's `response_format` with a JSON schema, see `local_provider`)."""
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend(to_messages(request.messages))
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.tools:
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        kwargs.update(options or {})
        usage = Usage()
        counted = request.counted
        # Streamed tool calls by index: [id, name, arguments as streamed so far]
        calls: dict[int, list[str]] = {}
        finish: str | None = None
        try:
            stream = await self.client.chat.completions.create(**kwargs)
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = Usage(
                            input_tokens=chunk.usage.prompt_tokens or 0,
                            output_tokens=chunk.usage.completion_tokens or 0,
                        )
                        counted.reported = usage
                    for choice in chunk.choices:
                        finish = choice.finish_reason or finish
                        if choice.delta is None:
                            continue
                        if choice.delta.content:
                            counted.deltas += 1
                            yield ChatChunk(text=choice.delta.content)
                        for delta in choice.delta.tool_calls or []:
                            counted.deltas += 1
                            call = calls.setdefault(delta.index, ["", "", ""])
                            call[0] = call[0] or (delta.id or "")
                            if delta.function is not None:
                                call[1] += delta.function.name or ""
                                call[2] += delta.function.arguments or ""
        except openai.APITimeoutError:
            idle = getattr(self.client.timeout, "read", None) or 0
            # No cause: `llm.reconnect` shows an error's cause (the SDK's "Request timed out."),
            # and names the server before it.
            raise UnreachableModelError(
                f"sent nothing for {idle:g}s (LLM_STREAM_IDLE_SECONDS)"
            ) from None
        except openai.OpenAIError as exc:
            raise translate_error(exc, self.label, self.where, self.restarting) from exc
        if finish == "length":
            yield cut_chunk(self.label, request.max_tokens)
        elif finish:
            yield ChatChunk(finish=finish)
        for chunk in self.ending(calls, usage):
            yield chunk


def api_key_for(base_url: str, openai_key: str, openrouter_key: str) -> str:
    """The key to send to `base_url`, or a `ProviderConfigError` naming the missing one."""
    host = (urlparse(base_url).hostname or "").lower()
    if host.endswith("openrouter.ai"):
        if not openrouter_key:
            raise ProviderConfigError(
                "OPENROUTER_API_KEY is not set: set it to use OpenRouter models"
            )
        return openrouter_key
    if host.endswith("api.openai.com"):
        if not openai_key:
            raise ProviderConfigError("OPENAI_API_KEY is not set: set it to use OpenAI models")
        return openai_key
    # Local servers (Ollama, vLLM, llama.cpp) accept any key; send the configured one if any.
    return openai_key or "not-needed"


# Connecting, and sending a request, takes at most this long (a server that accepts nothing).
CONNECT_SECONDS = 10.0
# The SDK's own default for a whole call, kept for sending the request.
WRITE_SECONDS = 600.0


def make_client(base_url: str, api_key: str, idle: float = 60.0) -> openai.AsyncOpenAI:
    """A client whose streamed call fails (`APITimeoutError`, then `UnreachableModelError`: the
    call waits for the server, `llm.reconnect`) when the server sends nothing for `idle`
    seconds (LLM_STREAM_IDLE_SECONDS), before its reply starts or between two chunks: a
    frozen server (SIGSTOP) otherwise stalls the run for the SDK's 600 s, unseen."""
    timeout = openai.Timeout(connect=CONNECT_SECONDS, read=idle, write=WRITE_SECONDS, pool=None)
    return openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)
