"""Fitting a prompt to the model's context window, so a long prompt is trimmed, not refused.

A local llama.cpp server has a small window per slot (LOCAL_MODEL_CONTEXT ÷ LOCAL_MODEL_SLOTS,
4096 tokens by default) and refuses a longer request with a 400 ("request (4366 tokens) exceeds
the available context size (4096 tokens)"): an agent with document context and the
`search_documents` tool hit it after minutes of work. So before a model call the prompt is
measured (at `FIT_CHARS_PER_TOKEN`, a pessimistic rule of thumb) against the model's window
(`context_tokens()` of the provider: llama.cpp's `/props` n_ctx per slot, a known figure for
Anthropic; unknown → not fitted) minus `max_tokens` kept for the reply, and what does not fit
is taken out in this order, least needed first:

1. retrieved passages, the lowest-ranked first (they are separate `context` blocks);
2. tool results, cut to what fits (the oldest first), saying how much was cut;
3. the oldest history, whole exchanges before the current user message.

The system prompt and the current message are never cut: if they alone do not fit, the call
fails saying so. A server that still refuses the prompt (its tokenizer counts more tokens than
the rule of thumb) says how many tokens it counted: `overflow()` reads that, and the runtime fits
again at the measured characters per token, once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from amelia_agents.llm.base import ChatMessage, ChatRequest, ModelError

# Fewer characters per token than the usual 4 of English prose: code, markup and non-English
# text tokenize denser, and a refused call costs a round trip.
FIT_CHARS_PER_TOKEN = 3.0
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
) -> tuple[ChatRequest, dict[str, Any] | None]:
    """The request (context blocks joined to its system prompt) fitted to `context_tokens`,
    and what was taken out (for the `run.context.fitted` event), or None when all of it fits.
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
            "the reply: shorten the system prompt or the message, or lower max_tokens"
        )
    note = {
        "context_tokens": context_tokens,
        "max_tokens": request.max_tokens,
        "estimated_prompt_tokens": int(before / chars_per_token),
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
