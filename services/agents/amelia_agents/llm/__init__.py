"""LLM providers behind one interface, chosen by the model string.

- `anthropic:<model>` (or a bare `claude-…` name) — Anthropic, official SDK, streaming.
- `openai:<model>[@<base_url>]` — any OpenAI-compatible server, official SDK, streaming.
- `local:<name>` / `local:/path/to/model.gguf` — the local llama.cpp server `amelia up` runs
  (no key; see `llm.local_provider`).
- `offline:<mode>` — deterministic replies for development and tests (see `llm.offline`).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from amelia_agents.llm import anthropic_provider, local_provider, openai_provider
from amelia_agents.llm.base import (
    ChatChunk,
    ChatMessage,
    ChatModel,
    ChatRequest,
    ChatResult,
    Counted,
    ModelError,
    ProviderConfigError,
    ToolCall,
    ToolSpec,
    TransientModelError,
    Usage,
)
from amelia_agents.llm.offline import OfflineModel
from amelia_agents.llm.reconnect import Patience
from amelia_common.settings import Settings

__all__ = [
    "ChatChunk",
    "ChatMessage",
    "ChatModel",
    "ChatRequest",
    "ChatResult",
    "Counted",
    "ModelError",
    "ModelSpec",
    "ProviderConfigError",
    "ToolCall",
    "ToolSpec",
    "TransientModelError",
    "Usage",
    "get_model",
    "parse_model",
]

PROVIDERS = ("anthropic", "openai", "local", "offline")
# The base URL begins at the first '@http://' or '@https://' (a URL may hold an '@' itself).
_OPENAI_BASE = re.compile(r"@(?=https?://)", re.IGNORECASE)


@dataclass(frozen=True)
class ModelSpec:
    provider: str
    model: str
    base_url: str = ""


def parse_model(model: str) -> ModelSpec:
    """Parse a model string; raises `ModelError` with the accepted forms when it is wrong."""
    model = model.strip()
    provider, sep, rest = model.partition(":")
    if not sep:
        if model.startswith("claude-"):
            return ModelSpec("anthropic", model)
        raise ModelError(
            f"model {model!r} names no provider: use 'anthropic:<model>', "
            "'openai:<model>@<base_url>', 'local:qwen2.5-coder-0.5b' or 'offline:echo'"
        )
    if provider not in PROVIDERS or not rest:
        raise ModelError(
            f"model {model!r}: provider must be one of {', '.join(PROVIDERS)} followed by a model, "
            "e.g. 'anthropic:claude-sonnet-4-5', 'openai:llama3.1@http://localhost:11434/v1', "
            "'local:qwen2.5-coder-0.5b', 'offline:echo'"
        )
    if provider == "openai":
        return _openai_spec(model, rest)
    if provider == "offline":
        OfflineModel(rest)  # validates the mode
    return ModelSpec(provider, rest)


def _openai_spec(model: str, rest: str) -> ModelSpec:
    """`<model>[@<base_url>]`: an '@' not followed by an http(s) URL is a mistyped server (it
    was taken as part of the model's name and sent to api.openai.com); a model whose name has
    an '@' is written with its server after it."""
    parts = _OPENAI_BASE.split(rest, maxsplit=1)
    name, base = parts[0], (parts[1] if len(parts) > 1 else "")
    if not base and "@" in name:
        raise ModelError(
            f"model {model!r}: what follows '@' must be the server's base URL, starting with "
            "http:// or https:// (e.g. 'openai:llama3.1@http://localhost:11434/v1'); a model "
            "whose name holds an '@' is written with its server's URL after it"
        )
    if base and not _is_base_url(base):
        raise ModelError(f"model {model!r}: {base!r} is not a server's base URL")
    if not name:
        raise ModelError(f"model {model!r} names no model before '@'")
    return ModelSpec("openai", name, base)


def _is_base_url(base: str) -> bool:
    """An http(s) URL with a host, a port in range and no spaces."""
    try:
        parsed = urlsplit(base)
        return bool(parsed.hostname) and (parsed.port or 0) >= 0 and not re.search(r"\s", base)
    except ValueError:  # a port out of range or not a number
        return False


# SDK clients hold connection pools; keep one per configuration and event loop.
_clients: dict[tuple[Any, ...], Any] = {}


def _cached(key: tuple[Any, ...], factory: Any) -> Any:
    full = (id(asyncio.get_running_loop()), *key)
    client = _clients.get(full)
    if client is None:
        client = _clients[full] = factory()
    return client


def get_model(model: str, settings: Settings) -> ChatModel:
    """The provider for `model`, ready to stream; raises `ProviderConfigError` when unusable."""
    spec = parse_model(model)
    if spec.provider == "offline":
        return OfflineModel(spec.model)
    patience = Patience(settings.LLM_RECONNECT_SECONDS, settings.LLM_RETRY_BACKOFF_SECONDS)
    if spec.provider == "anthropic":
        key = settings.ANTHROPIC_API_KEY.get_secret_value()
        base = settings.ANTHROPIC_BASE_URL
        client = _cached(
            ("anthropic", key, base), lambda: anthropic_provider.make_client(key, base)
        )
        return anthropic_provider.AnthropicModel(spec.model, client, patience)
    if spec.provider == "local":
        base = settings.local_model_url
        # Local servers need no key: none of the provider keys is sent there.
        idle = settings.LLM_STREAM_IDLE_SECONDS
        client = _cached(
            ("local", base, idle), lambda: openai_provider.make_client(base, "not-needed", idle)
        )
        return local_provider.LocalModel(
            spec.model, client, base, patience, settings.LOCAL_MODEL_SLOTS, settings.data_dir
        )
    base = spec.base_url or openai_provider.DEFAULT_BASE_URL
    key = openai_provider.api_key_for(
        base,
        settings.OPENAI_API_KEY.get_secret_value(),
        settings.OPENROUTER_API_KEY.get_secret_value(),
    )
    idle = settings.LLM_STREAM_IDLE_SECONDS
    client = _cached(
        ("openai", key, base, idle), lambda: openai_provider.make_client(base, key, idle)
    )
    return openai_provider.OpenAIModel(spec.model, client, patience)
