"""What a workflow node uses while it runs: model calls, events, subprocesses.

Nodes are plain LangGraph nodes. They reach the run through this module:

- `await chat(messages, model=..., system=...)` streams a model call: every text delta becomes a
  `run.token` event, transient errors are retried with exponential backoff (when nothing was
  streamed yet), and token usage is added to the run.
- `emit(type, data)` publishes any run event (`run.tool.called`, `run.retrieval`, ...).
- `await run_process(argv, ...)` runs a subprocess in its own process group, streams its output
  lines (stdout and stderr) as `run.tool.output` events, and kills the whole group on cancel or
  timeout.
- `record_usage(usage, model)` adds token usage a tool reports (e.g. Claude Code) to the run.
- `current()` is the run's `RunContext` (settings, run name, attempt, agent config).

Events travel through LangGraph's custom stream (`get_stream_writer`), so a graph built from
these nodes also runs under plain `graph.ainvoke` (the events are then simply dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from langgraph.config import get_config, get_stream_writer

from amelia_agents.llm import (
    ChatMessage,
    ChatModel,
    ChatRequest,
    ChatResult,
    Counted,
    ToolCall,
    ToolSpec,
    TransientModelError,
    Usage,
    get_model,
    window,
)
from amelia_common import telemetry
from amelia_common.settings import Settings, get_settings

# Custom-stream chunks carry this key so the run loop can tell them from anything else.
EVENT_KEY = "__amelia_event__"
USAGE_TYPE = "usage"

DEFAULT_TIMEOUT_SECONDS = 300.0
DEFAULT_RETRY_ATTEMPTS = 3


class NodeError(RuntimeError):
    """A node's failure whose message is the run's error as is (no exception type in front):
    for failures a user should read plainly, e.g. `claude code: timed out after 300s`."""


@dataclass
class RunContext:
    """The run a node belongs to. Outside a worker, a detached context with default settings."""

    settings: Settings
    run: str = ""
    attempt: int = 1
    agent: dict[str, Any] | None = None
    retry_attempts: int = DEFAULT_RETRY_ATTEMPTS
    usage: Usage = field(default_factory=Usage)
    # Where the run's usage is stored (the executor's `UsageWriter`), called directly: a model
    # call cut short by a cancel records its usage while the graph's stream is going away.
    store_usage: Callable[[Usage], None] | None = None


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "amelia_run_context", default=None
)


def current() -> RunContext:
    ctx = _current.get()
    if ctx is None:
        ctx = RunContext(settings=get_settings())
        _current.set(ctx)
    return ctx


def bind(ctx: RunContext) -> contextvars.Token[RunContext | None]:
    """Make `ctx` the current run for this task and the tasks it starts."""
    return _current.set(ctx)


def unbind(token: contextvars.Token[RunContext | None]) -> None:
    _current.reset(token)


def _node_name() -> str:
    try:
        metadata = get_config().get("metadata") or {}
    except RuntimeError:
        return ""
    return str(metadata.get("langgraph_node", ""))


def emit(event_type: str, data: Mapping[str, Any] | None = None) -> None:
    """Publish a run event (type like `run.tool.called`) from inside a node."""
    try:
        writer = get_stream_writer()
    except RuntimeError:  # not inside a graph
        return
    payload = dict(data or {})
    payload.setdefault("node", _node_name())
    writer({EVENT_KEY: event_type, "data": payload})


def record_usage(usage: Usage, model: str) -> None:
    """Add a call's token usage to the run (model calls do it; tools that call models too)."""
    ctx = current()
    ctx.usage.add(usage)
    if ctx.store_usage is not None:
        ctx.store_usage(usage)
    emit(
        USAGE_TYPE,
        {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens, "model": model},
    )


async def _fitted(
    provider: ChatModel, request: ChatRequest, context: tuple[str, ...], fitting: _Fitting
) -> ChatRequest:
    """The request fitted to the model's window (`llm.window`), saying what it took out in a
    `run.context.fitted` event; as is (context joined) when the window is unknown."""
    size = fitting.context_tokens or await provider.context_tokens()
    if size is None:
        return window.joined(request, context)
    # The server's own count when it gives one (llama.cpp), else the rule of thumb.
    ratio, counted = await window.chars_per_token(
        provider, request, context, size, fitting.chars_per_token
    )
    fitted, note = window.fit(request, context, size, ratio, counted=counted)
    if note is not None:
        emit("run.context.fitted", note)
    return fitted


@dataclass
class _Fitting:
    """How a call's prompt is fitted: the rule of thumb, until a server refusing the prompt
    says how many tokens it counted and what its window is (then once more, measured)."""

    chars_per_token: float = window.FIT_CHARS_PER_TOKEN
    context_tokens: int | None = None

    def measured(self, sent: ChatRequest, error: BaseException) -> bool:
        """Learn from `error` if it is a first refusal of `sent` as too long; whether it was."""
        found = None if self.context_tokens else window.overflow(error)
        if found is None:
            return False
        counted, self.context_tokens = found
        # A little under the measured ratio: the fitted prompt tokenizes a bit differently.
        self.chars_per_token = 0.9 * window.prompt_chars(sent) / max(counted, 1)
        return True


async def chat(
    messages: Sequence[Mapping[str, Any] | ChatMessage],
    *,
    model: str,
    system: str = "",
    temperature: float | None = None,
    max_tokens: int = 1024,
    retry_attempts: int | None = None,
    tools: Sequence[ToolSpec] = (),
    context: Sequence[str] = (),
) -> ChatResult:
    """Call `model` with streaming; returns the full reply (the concatenation of its tokens).

    With `tools`, the model may ask for tool calls instead of (or after) text: they are in
    `ChatResult.tool_calls`, for the caller to run (see `amelia_agents.tools.loop`).
    `context` are blocks for the end of the system prompt (retrieved passages, best first)
    that may be dropped, lowest first, to fit the prompt to the model's window (`llm.window`).
    """
    ctx = current()
    provider = get_model(model, ctx.settings)
    request = ChatRequest(
        messages=[
            m if isinstance(m, ChatMessage) else ChatMessage.from_dict(dict(m)) for m in messages
        ],
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        tools=tuple(tools),
    )
    retries = ctx.retry_attempts if retry_attempts is None else retry_attempts
    backoff = ctx.settings.LLM_RETRY_BACKOFF_SECONDS
    fitting = _Fitting()
    attempt = 0
    while True:
        parts: list[str] = []
        calls: list[ToolCall] = []
        usage: Usage | None = None
        call = replace(request, counted=Counted())
        try:
            call = await _fitted(provider, call, tuple(context), fitting)
            async for chunk in telemetry.traced_chat(provider, call):
                if chunk.event is not None:  # e.g. run.model.waiting (llm.reconnect)
                    emit(*chunk.event)
                if chunk.text:
                    parts.append(chunk.text)
                    emit("run.token", {"text": chunk.text})
                if chunk.tool_calls:
                    calls.extend(chunk.tool_calls)
                if chunk.usage is not None:
                    usage = chunk.usage
        except BaseException as exc:
            # Cut short (a cancel, an error): the tokens it consumed count all the same, as
            # the provider counted them (`Counted`: the server's figures, else an estimate).
            partial = call.counted.usage(call)
            if partial != Usage():
                record_usage(partial, provider.name)
            if not parts and fitting.measured(call, exc):
                continue  # refused as too long: fit it again, measured
            if not isinstance(exc, TransientModelError):
                raise
            # Tokens already shown cannot be taken back, so only a clean failure is retried.
            if parts or attempt >= retries:
                raise
            delay = backoff * (2**attempt)
            attempt += 1
            emit(
                "run.retry",
                {"error": str(exc), "retry": attempt, "of": retries, "delay_seconds": delay},
            )
            await asyncio.sleep(delay)
            continue
        if usage is None:  # a provider that sends no usage: what it counted
            usage = call.counted.usage(call)
        record_usage(usage, provider.name)
        return ChatResult(text="".join(parts), usage=usage, model=provider.name, tool_calls=calls)


# The worker's environment variables a run's subprocess inherits (docs/agents.md): what a
# shell, git, Node and a CLI need to run, find their configuration and reach the network through
# a proxy — never the mesh's own secrets (AMELIA_API_TOKEN, DATABASE_URL, NATS_URL, the model
# providers' keys), which a subprocess has no business reading.
INHERITED_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TERM",
        "TZ",
        "TMPDIR",
        "NO_COLOR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "NODE_EXTRA_CA_CERTS",
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    }
)
INHERITED_ENV_PREFIXES = ("LC_", "XDG_")


def inherited_env(also: Sequence[str] = (), prefixes: Sequence[str] = ()) -> dict[str, str]:
    """The worker's environment as a run's subprocess may see it: the INHERITED_ENV names (and
    those starting with INHERITED_ENV_PREFIXES), plus the names in `also` and those starting
    with `prefixes`."""
    names = INHERITED_ENV | set(also)
    starts = (*INHERITED_ENV_PREFIXES, *prefixes)
    return {k: v for k, v in os.environ.items() if k in names or k.startswith(starts)}


@dataclass
class ProcessResult:
    returncode: int
    output: str


# A line longer than this is still read whole (and given whole to `on_line`), but its
# `run.tool.output` event carries only its start: events must stay well under NATS's payload limit.
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_EVENT_TEXT = 16 * 1024

LineHandler = Callable[[str, str], None]


async def _kill_group(proc: asyncio.subprocess.Process, grace: float = 0.5) -> None:
    """SIGTERM the process group, SIGKILL it after `grace`, then reap."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(proc.wait())
            if sig == signal.SIGTERM:
                # The leader is gone; make sure its children are too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return
        except TimeoutError:
            continue


def _event_text(line: str) -> str:
    if len(line) <= MAX_EVENT_TEXT:
        return line
    return f"{line[:MAX_EVENT_TEXT]}… [{len(line) - MAX_EVENT_TEXT} more characters]\n"


async def run_process(
    argv: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    tool: str = "process",
    on_line: LineHandler | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ProcessResult:
    """Run `argv`, streaming its output lines as `run.tool.output` events.

    Each event says which `stream` (stdout or stderr) the line came from; `on_line(stream,
    line)` sees every line too (a node parsing a tool's output, e.g. JSON lines, uses it);
    `on_start(pid)` gets the process id (= its process group id) as soon as it runs.
    The process gets its own session (process group), so cancelling the run, or `timeout`,
    kills it and every child it started. A timeout raises `TimeoutError`. Without `env` it
    inherits only `inherited_env()`.
    """
    emit("run.tool.called", {"tool": tool, "args": list(argv), "cwd": str(cwd or "")})
    if on_start is not None:
        # The command waits (a shell reading one line) until `on_start` has noted its process:
        # a worker killed in between would otherwise leave it running unnoted. If this process
        # dies first, the shell reads end-of-file and never starts the command.
        argv = ["sh", "-c", 'read -r _ && exec "$@"', "sh", *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd) if cwd else None,
        env=dict(env) if env is not None else inherited_env(),
        stdin=asyncio.subprocess.PIPE if on_start is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        limit=MAX_LINE_BYTES,
    )
    if on_start is not None:
        on_start(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()  # the command reads end-of-file, as from /dev/null
    lines: list[str] = []

    async def pump(reader: asyncio.StreamReader | None, stream: str) -> None:
        assert reader is not None
        async for raw in reader:
            line = raw.decode(errors="replace")
            lines.append(line)
            emit("run.tool.output", {"tool": tool, "stream": stream, "text": _event_text(line)})
            if on_line is not None:
                on_line(stream, line)

    async def pump_all() -> None:
        await asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
        await proc.wait()

    try:
        async with asyncio.timeout(timeout):
            await pump_all()
    except BaseException:
        await _kill_group(proc)
        raise
    # The leader exited; children it left in the group go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    result = ProcessResult(returncode=proc.returncode or 0, output="".join(lines))
    emit("run.tool.result", {"tool": tool, "exit_code": result.returncode})
    return result
