"""The one check of a model string, for an agent's `model` and a run's `input.model` alike.

A string is parsed as a run would (an unknown provider is refused now, not at the first run),
and a `local:` model is held to what the mesh's own server can serve: a packaged model, or the
path of a GGUF file on this host (it must exist and start with GGUF's magic bytes). With
LOCAL_MODEL_URL the server is the user's own and serves names only it knows: the run asks it.
QA s27 finding 6: `local:/tmp/missing.gguf` and `local:/etc/passwd` were taken at CreateAgent
and CreateRun, and `local:nonexistent-model` at CreateRun, to fail on every run.

A `local:` model's max_tokens must leave room for a prompt in the context of one of the
server's slots (`LOCAL_MODEL_CONTEXT ÷ LOCAL_MODEL_SLOTS`, what `amelia up` starts it with):
more was taken, and every run failed (`check_max_tokens`).
"""

from __future__ import annotations

from pathlib import Path

from amelia_agents.llm import ModelError, local_provider, parse_model
from amelia_common.local_model import gguf_problem
from amelia_common.settings import PACKAGED_LOCAL_MODELS, Settings


def check_model(value: str, settings: Settings | None) -> None:
    """Raise ModelError saying why `value` cannot be used (the path, for a `local:` file);
    without `settings` only the string's form is checked."""
    spec = parse_model(value)
    if spec.provider != "local" or settings is None or settings.LOCAL_MODEL_URL:
        return
    if spec.model in PACKAGED_LOCAL_MODELS:
        return
    if not (spec.model.endswith(".gguf") or "/" in spec.model):  # a name, not a path
        raise ModelError(
            f"model {value!r}: the local model server serves "
            f"{local_provider.servable_names()}, not {spec.model!r}"
        )
    path = Path(local_provider.served_name(spec.model))
    problem = gguf_problem(path)
    if problem:
        raise ModelError(
            f"model {value!r}: {path}: {problem} (a 'local:' path names a GGUF file on the "
            "mesh's host)"
        )


def local_context_tokens(settings: Settings) -> int:
    """The context of one request to the local model server `amelia up` runs: llama.cpp
    shares LOCAL_MODEL_CONTEXT among its LOCAL_MODEL_SLOTS slots."""
    return settings.LOCAL_MODEL_CONTEXT // settings.LOCAL_MODEL_SLOTS


def check_max_tokens(model: str, max_tokens: int, settings: Settings) -> None:
    """Raise ModelError when a `local:` `model` cannot hold `max_tokens` and a prompt in its
    context, naming both numbers (with LOCAL_MODEL_URL the server's context is its own: the
    run's window check says it, `llm.window`)."""
    spec = parse_model(model)
    if spec.provider != "local" or settings.LOCAL_MODEL_URL:
        return
    context = local_context_tokens(settings)
    if max_tokens >= context:
        raise ModelError(
            f"max_tokens ({max_tokens}) must be less than the context of the local model "
            f"({context} tokens a request: LOCAL_MODEL_CONTEXT {settings.LOCAL_MODEL_CONTEXT} "
            f"÷ LOCAL_MODEL_SLOTS {settings.LOCAL_MODEL_SLOTS}), which holds the prompt and "
            "the reply: ask for fewer tokens, or raise LOCAL_MODEL_CONTEXT"
        )
