"""Fitting a prompt to the model's context window, so a long prompt is trimmed, not refused.

A local llama.cpp server has a small window per slot (LOCAL_MODEL_CONTEXT ÷ LOCAL_MODEL_SLOTS,
4096 tokens by default) and refuses a longer request with a 400 ("request (4366 tokens) exceeds
the available context size (4096 tokens)"): an agent with document context and the
`search_documents` tool hit it after minutes of work. So before a model call the prompt is
measured against the model's window (`context_tokens()` of the provider: llama.cpp's `/props`
n_ctx per slot, a known figure for Anthropic; unknown → not fitted) minus `max_tokens` kept for
the reply — in tokens as the server's own tokenizer counts them when it can say (llama.cpp's
`/tokenize`, `chars_per_token`), else at `FIT_CHARS_PER_TOKEN`, a rule of thumb calibrated on
the local model's tokenizer — and what does not fit is taken out in this order, least needed
first:

1. retrieved passages, the lowest-ranked first (they are separate `context` blocks);
2. tool results, cut to what fits (the oldest first), saying how much was cut;
3. the oldest history, whole exchanges before the current user message.

The system prompt and the current message are never cut: if they alone do not fit, the call
fails saying so. A server that still refuses the prompt (its tokenizer counts more tokens than
the rule of thumb) says how many tokens it counted: `overflow()` reads that, and the runtime fits
again at the measured characters per token, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from amelia_agents.llm.base import ChatMessage, ChatRequest, ModelError

# The rule of thumb, where the server cannot count: the local model's tokenizer (Qwen2.5, via
# llama.cpp's /tokenize) gave 4.0 characters per token at the median of 255 pieces of 2,000
# characters (Markdown docs 3.65, Python 4.30, JavaScript 3.83, the PostgreSQL manual's text 4.48,
# libffi's 4.14), 3.39 at the 10th percentile, 3.01 at the 5th, 1.98 at the least (a Markdown
# table of arrows and dashes). 3.4: about one prompt in ten counts more (a refusal then fits
# it again, measured); 3.0 until session 12 cut prompts ~25 % shorter than needed.
FIT_CHARS_PER_TOKEN = 3.4
# As dense as text gets on that tokenizer (hex digests 1.03, emoji 1.0; Chinese 1.74, Japanese
# 1.63): a prompt that fits at this many characters per token fits whatever it holds, so the
# server is not asked to count it (most chat calls: under ~3,700 characters in a 4,096 window).
DENSEST_CHARS_PER_TOKEN = 1.0
# A counted ratio is used a little under what was counted: what is cut out to fit (passages,
# old messages) need not tokenize like the whole prompt did.
COUNTED_MARGIN = 0.95
# How long the server may take to count before the rule of thumb is used instead.
COUNT_SECONDS = 5.0
# Tokens a chat template adds around each message (role markers), and around the whole prompt.
PER_MESSAGE_TOKENS = 8
RESERVED_TOKENS = 32
# llama.cpp's refusal, and OpenAI's ("maximum context length is 8192 tokens. However, your
# messages resulted in 9000 tokens").
_LLAMA = re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+) tokens\)")
_OPENAI = re.compile(r"maximum context length is (\d+) tokens.*?resulted in (\d+) tokens", re.S)


class PromptTooLongError(ModelError):
    """Even with every passage, tool result and earlier message taken out, the prompt does not
    fit the model's window with room for `max_tokens`."""


def overflow(error: BaseException) -> tuple[int, int] | None:
    """(prompt tokens counted, context size) when `error` is a server refusing a prompt as
    longer than its context, else None."""
    text = str(error)
    match = _LLAMA.search(text)
    if match:
        return int(match.group(1)), int(match.group(2))
    match = _OPENAI.search(text)
    if match:
        return int(match.group(2)), int(match.group(1))
    return None


def _message_chars(m: ChatMessage) -> int:
    return len(m.content) + sum(len(json.dumps(c.arguments)) + len(c.name) for c in m.tool_calls)


def prompt_chars(request: ChatRequest, context: tuple[str, ...] = ()) -> int:
    """The characters the model reads: system prompt, context blocks, messages, tool specs."""
    tools = sum(
        len(t.name) + len(t.description) + len(json.dumps(t.parameters)) for t in request.tools
    )
    return (
        len(request.system)
        + sum(len(block) + 2 for block in context)
        + sum(_message_chars(m) for m in request.messages)
        + tools
    )


def prompt_text(request: ChatRequest, context: tuple[str, ...] = ()) -> str:
    """What `prompt_chars` counts, as one text (for a tokenizer to count)."""
    parts = [request.system, *context]
    for m in request.messages:
        parts.append(m.content)
        parts += [c.name + json.dumps(c.arguments) for c in m.tool_calls]
    parts += [t.name + t.description + json.dumps(t.parameters) for t in request.tools]
    return "\n\n".join(parts)


async def chars_per_token(
    model: object,
    request: ChatRequest,
    context: tuple[str, ...],
    context_tokens: int,
    fallback: float = FIT_CHARS_PER_TOKEN,
) -> tuple[float, int | None]:
    """The characters per token to fit this prompt at, and the tokens the server counted in it
    (None when it did not count): its own count when the model's server can give one and the
    prompt could be near the window; else `fallback` (the rule of thumb, or a ratio measured
    from a refusal)."""
    chars = prompt_chars(request, context)
    room = context_tokens - request.max_tokens - RESERVED_TOKENS
    room -= PER_MESSAGE_TOKENS * (len(request.messages) + 1)
    # A model whose server counts with its own tokenizer has `count_tokens` (the local one).
    counter = getattr(model, "count_tokens", None)
    if counter is None or chars <= room * DENSEST_CHARS_PER_TOKEN:
        return fallback, None
    counted = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(COUNT_SECONDS):
            counted = await counter(prompt_text(request, context))
    if not isinstance(counted, int) or counted <= 0:
        return fallback, None
    return COUNTED_MARGIN * chars / counted, counted


def joined(request: ChatRequest, context: tuple[str, ...]) -> ChatRequest:
    """The request with the context blocks appended to its system prompt."""
    if not context:
        return request
    return replace(request, system="\n\n".join(filter(None, [request.system, *context])))


@dataclass
class _Fit:
    request: ChatRequest
    context: tuple[str, ...]
    budget: int  # characters

    def over(self) -> int:
        return prompt_chars(self.request, self.context) - self.budget


def fit(
    request: ChatRequest,
    context: tuple[str, ...],
    context_tokens: int,
    chars_per_token: float = FIT_CHARS_PER_TOKEN,
    *,
    counted: int | None = None,
) -> tuple[ChatRequest, dict[str, Any] | None]:
    """The request (context blocks joined to its system prompt) fitted to `context_tokens`,
    and what was taken out (for the `run.context.fitted` event), or None when all of it fits.
    `counted`: the prompt's tokens as the server counted them (`chars_per_token`), if it did.
    `PromptTooLongError` when the system prompt and current message alone do not fit."""
    messages = request.messages
    tokens = context_tokens - request.max_tokens - RESERVED_TOKENS
    tokens -= PER_MESSAGE_TOKENS * (len(messages) + 1)
    state = _Fit(request, context, int(tokens * chars_per_token))
    before = prompt_chars(request, context)
    if state.over() <= 0:
        return joined(request, context), None
    passages = len(context)
    while state.context and state.over() > 0:
        state.context = state.context[:-1]
    cut = _cut_tool_results(state)
    dropped = _drop_history(state)
    if state.over() > 0:
        raise PromptTooLongError(
            f"the prompt (about {int(prompt_chars(state.request) / chars_per_token)} tokens "
            f"without passages, tool results or earlier messages) does not fit the model's "
            f"context of {context_tokens} tokens with max_tokens {request.max_tokens} kept for "
            "the reply: shorten the system prompt or the message, or lower max_tokens (the "
            "agent's: `amelia agents create --max-tokens N` or UpdateAgent; a run without an "
            "agent: its input.max_tokens)"
        )
    note = {
        "context_tokens": context_tokens,
        "max_tokens": request.max_tokens,
        "estimated_prompt_tokens": counted or int(before / chars_per_token),
        "counted_by_server": counted is not None,
        "fitted_prompt_tokens": int(prompt_chars(state.request, state.context) / chars_per_token),
        "passages_dropped": passages - len(state.context),
        "tool_results_cut": cut,
        "messages_dropped": dropped,
    }
    return joined(state.request, state.context), note


def _cut_tool_results(state: _Fit) -> int:
    """Cut tool results, the oldest first, by as much as the prompt is over; how many."""
    messages = list(state.request.messages)
    cut = 0
    for i, m in enumerate(messages):
        over = state.over()
        if over <= 0:
            break
        if m.role != "tool" or not m.content:
            continue
        keep = max(0, len(m.content) - over - 60)
        removed = len(m.content) - keep
        text = f"{m.content[:keep]}… [{removed} characters cut to fit the model's context]"
        messages[i] = replace(m, content=text)
        state.request = replace(state.request, messages=messages.copy())
        cut += 1
    return cut


def _drop_history(state: _Fit) -> int:
    """Drop the oldest exchanges (each from a user message to the next), never the current
    one (from the last user message on); how many messages."""
    messages = list(state.request.messages)
    starts = [i for i, m in enumerate(messages) if m.role == "user"]
    dropped = 0
    for start in starts[1:]:
        if state.over() <= 0:
            break
        dropped = start
        state.request = replace(state.request, messages=messages[start:])
    return dropped
