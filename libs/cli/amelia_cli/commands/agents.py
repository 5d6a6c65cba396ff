"""`amelia agents …`, `amelia run`, `amelia runs …`: the agents service from a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import typer
from google.protobuf import json_format, struct_pb2
from rich.cells import cell_len, chop_cells
from rich.status import Status
from rich.text import Text

from amelia.v1 import agents_pb2, events_pb2
from amelia_cli.client import (
    Column,
    agents,
    ago,
    call_rpc,
    err,
    folded,
    json_object,
    listing,
    resource,
    said,
    unprefixed,
)
from amelia_cli.consoles import console
from amelia_cli.help_text import App
from amelia_cli.tui.eventline import cut_text, resumed_text, retry_text, waiting_text
from amelia_common.eventlog import event_data
from amelia_common.grpc_client import reissue_while_unavailable
from amelia_common.json_numbers import message_text, whole_numbers

agents_app = App(help="Agents: prompt, model, tools, documents.", no_args_is_help=True)
runs_app = App(help="Runs of agents and workflows.", no_args_is_help=True)

if TYPE_CHECKING:
    from amelia.v1.agents_pb2_grpc import AgentServiceAsyncStub

RunReply = agents_pb2.CancelRunResponse | agents_pb2.ResumeRunResponse
TERMINAL = {"run.completed", "run.failed", "run.cancelled"}
# StreamRun's max_events_per_message: events that arrived together come in one message.
STREAM_BATCH = 256
# Seconds between looks at the queue while a followed run waits in it (and before the first).
QUEUED_EVERY = 3.0
# How long a cancel from the CLI waits for the run to keep the text it streamed (seconds).
PARTIAL_WAIT = 5.0


# Listings at 80 columns: a long name leaves little room, so text that `runs show` or a wider
# terminal gives whole goes first (before, rich cut every folding column to a few cells); then
# a run's target as `amelia run` takes it (`develop`, not `workflows/deve` / `lop`), as
# `crons ls` shows a cron's.
AGENT_COLUMNS = (
    Column("name", shortens=True),
    Column("model", wraps=True),
    Column("description", wraps=True, drop=1),
)
STEP_COLUMNS = (
    Column("step"),
    Column("node"),
    Column("state"),
    Column("checkpoint"),
    Column("error", wraps=True, drop=1),
)
RUN_COLUMNS = (
    Column("name"),
    Column("target", wraps=True, brief=unprefixed),
    Column("status"),
    Column("created"),
    Column("error", wraps=True, drop=1),
)


# The request fields each command fills from what the person typed, as the agents service
# names them in its messages → the flag or argument (`client.in_cli_words`).
AGENT_FLAGS = {
    "agent_id": "AGENT_ID",
    "agent.display_name": "AGENT_ID",
    "agent.system_prompt": "--prompt",
    "agent.description": "--description",
    "agent.model": "--model",
    "model": "--model",
    "agent.context_sources": "--context",
    "agent.tools": "--tool",
    "temperature": "--temperature",
    "max_tokens": "--max-tokens",
    "agent.timeout": "--timeout",
    "retry_attempts": "--retry-attempts",
}
RUN_FLAGS = {
    "run.multitask_strategy": "--multitask",
    "run.timeout": "--timeout",
    "run.webhook": "--webhook",
}
WAIT_FLAGS = {"timeout": "--timeout"}
RESUME_FLAGS = {"request_id": "--request-id", "answer": "ANSWER"}
RERUN_FLAGS = {"webhook": "--webhook"}
FORK_FLAGS = {"checkpoint": "CHECKPOINT", "values": "--values", "webhook": "--webhook"}


def status_name(status: agents_pb2.RunStatus.ValueType) -> str:
    return agents_pb2.RunStatus.Name(status).removeprefix("RUN_STATUS_").lower()


def run_status(run: agents_pb2.Run) -> str:
    """The run's status as the dashboard says it: a completed plan that was rejected (its
    output's `status`) is `rejected` (QA s26: the CLI said "completed")."""
    said = run.output.fields.get("status")
    if run.status == agents_pb2.RUN_STATUS_COMPLETED and said and said.string_value == "rejected":
        return "rejected"
    return status_name(run.status)


@agents_app.command("create")
def create(
    agent_id: str = typer.Argument(..., help="Id, e.g. researcher."),
    system_prompt: str = typer.Option(
        "You are a helpful assistant.", "--prompt", help="System prompt."
    ),
    model: str = typer.Option(
        "",
        help=(
            "anthropic:<model>, openai:<model>@<base_url>, local:qwen2.5-coder-0.5b (or "
            "local:/path/to/model.gguf) or offline:echo. Default: DEFAULT_MODEL."
        ),
    ),
    description: str = typer.Option("", help="What it is for."),
    context_source: list[str] = typer.Option(
        [], "--context", help="documents/<id> or documents/*."
    ),
    tool: list[str] = typer.Option(
        [], "--tool", help="Built-in tool it may call: calculator, current_time, search_documents."
    ),
    temperature: float | None = typer.Option(
        None, help="Default: DEFAULT_TEMPERATURE (0 for the local model, else 0.7)."
    ),
    max_tokens: int | None = typer.Option(
        None,
        help=(
            "Most tokens the model may write per answer. Default: DEFAULT_MAX_TOKENS "
            "(LOCAL_MODEL_MAX_TOKENS for a local: model)."
        ),
    ),
    timeout: int = typer.Option(300, help="Seconds a run may take (1 to 604800: 7 days)."),
    retry_attempts: int = typer.Option(3, help="Times a failed model call is tried again."),
) -> None:
    """Define an agent."""
    agent = agents_pb2.Agent(
        display_name=agent_id,
        description=description,
        system_prompt=system_prompt,
        model=model,
        max_tokens=max_tokens or 0,  # 0: the service's default for its model
        retry_attempts=retry_attempts,
        context_sources=context_source,
        tools=tool,
    )
    if temperature is not None:  # else the service's default for its model
        agent.temperature = temperature
    agent.timeout.FromSeconds(timeout)

    async def go() -> agents_pb2.CreateAgentResponse:
        async with agents() as stub:
            reply: agents_pb2.CreateAgentResponse = await stub.CreateAgent(
                agents_pb2.CreateAgentRequest(agent=agent, agent_id=agent_id)
            )
            return reply

    console.print(said(f"created {call_rpc(go, AGENT_FLAGS).agent.name}"))


@agents_app.command("ls")
def ls_agents() -> None:
    """List agents."""

    async def go() -> agents_pb2.ListAgentsResponse:
        async with agents() as stub:
            reply: agents_pb2.ListAgentsResponse = await stub.ListAgents(
                agents_pb2.ListAgentsRequest(page_size=1000)
            )
            return reply

    rows = [(a.name, a.model, a.description) for a in call_rpc(go).agents]
    listing(console, AGENT_COLUMNS, rows, empty="no agents")


@agents_app.command("rm")
def rm_agents(names: list[str] = typer.Argument(..., help="Agent ids or agents/<id>.")) -> None:
    """Delete agents."""

    async def go() -> None:
        async with agents() as stub:
            for name in names:
                await stub.DeleteAgent(agents_pb2.DeleteAgentRequest(name=resource("agents", name)))
                console.print(said(f"deleted {resource('agents', name)}"))

    call_rpc(go)


async def _target(stub: object, target: str) -> agents_pb2.Run:
    """An agent id or a workflow name (a workflow wins when both exist)."""
    if target.startswith("workflows/"):
        return agents_pb2.Run(workflow=target)
    if target.startswith("agents/"):
        return agents_pb2.Run(agent=target)
    workflows = await stub.ListWorkflows(agents_pb2.ListWorkflowsRequest())  # type: ignore[attr-defined]
    if f"workflows/{target}" in {w.name for w in workflows.workflows}:
        return agents_pb2.Run(workflow=f"workflows/{target}")
    return agents_pb2.Run(agent=f"agents/{target}")


# What every run event carries besides its own data (the trace id when tracing is on): not
# worth repeating on each line.
_EVENT_CONTEXT = frozenset({"step", "run", "node", "attempt", "trace_id"})


def progress_text(data: dict[str, Any]) -> str:
    """A `workflow.progress` event in words: its step, then what it counts or names in one
    order (by name, whatever order the event's data came in), e.g.
    `reading context… (2,431 characters, 3 passages)`."""
    details = []
    for key, value in sorted(data.items()):
        if key in _EVENT_CONTEXT or value in ("", None):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            noun = key.removesuffix("s") if value == 1 else key
            details.append(
                f"{value:,.0f} {noun}" if float(value).is_integer() else f"{value} {key}"
            )
        elif isinstance(value, str):
            details.append(f"{key} {value}")
    text = f"{data.get('step') or 'working'}…"
    return f"{text} ({', '.join(details)})" if details else text


class Shown:
    """What a followed run has printed so far: the node it is in (a run picked up again after its
    worker stopped runs that node again and streams its answer again), whether this terminal
    sent the answer it resumed with, and whether the last thing printed was a token (what
    follows the tokens starts on a new line)."""

    def __init__(self) -> None:
        self.node = ""
        self.answered = False
        self.mid_line = False
        self.streamed = False  # any token text at all (a cancel then keeps it on the run)
        # On a terminal the tokens wrap at word boundaries (QA s26: the terminal broke "coul" /
        # "d" at its edge): the cells on the current line, and the word not printed yet (it
        # may go on in the next token).
        self.column = 0
        self.word = ""

    def line(self, text: str | Text, style: str = "dim") -> None:
        """`text` on a line of its own, literally (server text is not console markup)."""
        self._flush()
        if self.mid_line:
            console.print()
        console.print(text if isinstance(text, Text) else Text(text, style=style))
        self.mid_line = False
        self.column = 0

    def end(self) -> None:
        """Close the line the tokens left open."""
        self._flush()
        if self.mid_line:
            console.print()
        self.mid_line = False
        self.column = 0

    def token(self, text: str) -> None:
        """A token's text: as it is into a pipe; on a terminal, a word that would cross the
        edge starts the next line (a word longer than a line is cut)."""
        if not text:
            return
        self.streamed = True
        if not console.is_terminal:
            console.print(text, end="", soft_wrap=True, highlight=False, markup=False)
            self.mid_line = not text.endswith("\n")
            return
        self.word += text.replace("\t", "    ").replace("\r", "")
        while True:
            cut = min(
                (i for i in (self.word.find(" "), self.word.find("\n")) if i >= 0), default=-1
            )
            if cut < 0:
                break
            word, separator, self.word = self.word[:cut], self.word[cut], self.word[cut + 1 :]
            self._put(word)
            if separator == "\n":
                self._write("\n")
                self.column = 0
            elif self.column < console.width:
                self._write(" ")
                self.column += 1
        self.mid_line = self.column > 0 or bool(self.word)

    def _flush(self) -> None:
        if self.word:
            word, self.word = self.word, ""
            self._put(word)

    def _put(self, word: str) -> None:
        width = max(console.width, 1)
        if self.column and self.column + cell_len(word) > width:
            self._write("\n")
            self.column = 0
        while cell_len(word) > width:  # (on a line of its own by now)
            head = chop_cells(word, width)[0]
            self._write(head + "\n")
            word = word[len(head) :]
        if word:
            self._write(word)
            self.column += cell_len(word)

    @staticmethod
    def _write(text: str) -> None:
        console.print(text, end="", soft_wrap=True, highlight=False, markup=False)

    def event(self, event: events_pb2.Event) -> None:
        # A Struct's numbers are doubles: a question's `"rounds": 1` is said 1, not 1.0, as
        # `threads state`, `runs show` and the gateway's JSON say it.
        data = whole_numbers(event_data(event))
        if event.type == "run.resumed":
            reason = data.get("reason") or "answer"
            said_how = resumed_text(data, self.node, answered_here=self.answered)
            self.line(f"· {said_how}", "dim" if reason == "answer" else "yellow")
            self.answered = False
        elif event.type == "run.model.waiting":
            self.line(f"· {waiting_text(data)}", "yellow")
        elif event.type == "run.model.cut":
            self.line(f"· {cut_text(data)}", "yellow")
        elif event.type == "run.retry":
            self.line(f"· {retry_text(data)}", "yellow")
        elif event.type == "run.node.finished" and data.get("node") == self.node:
            self.node = ""
        elif event.type == "run.token":
            self.token(str(data.get("text", "")))
        elif event.type == "run.tool.called":
            self.line(f"· {event.type} {data.get('tool') or ''} (in {data.get('node') or '?'})")
        elif event.type in ("run.node.started", "run.retrieval"):
            if event.type == "run.node.started":
                self.node = str(data.get("node") or "")
            self.line(f"· {event.type} {data.get('node') or ''}")
        elif event.type == "workflow.progress":
            self.line(f"· {progress_text(data)}")
        elif event.type == "run.interrupted":
            for line in question_lines(data.get("value", data), console.width):
                self.line(line, "yellow")


# A question's wrapped lines hang under its words (after `? `); a field's two cells in from
# its own lines (at 4), so a plan's `2.` stands apart from the words of `1.` that wrapped.
QUESTION_HANG = 2
FIELD_HANG = 6


def _hanging(line: str, hang: int, width: int | None) -> str:
    """`line` wrapped to `width` cells (none: as it is), the lines after its first indented
    `hang` cells (rich would start them at column 0)."""
    if width is None:
        return line
    first, *rest = folded(line, max(width - hang, 1))
    return "\n".join([first, *(" " * hang + part for part in rest)])


def question_lines(value: Any, width: int | None = None) -> list[str]:
    """A paused run's question as a person reads it: the question, what it carries (a plan's
    design: text as text, not a JSON string with `\\n` in it) and the answers it takes; with
    `width`, each wrapped to it with a hanging indent."""
    if not isinstance(value, dict):
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return [_hanging(f"? {text}", QUESTION_HANG, width)]
    question = value.get("question") or "the run waits for an answer"
    lines = [_hanging(f"? {question}", QUESTION_HANG, width)]
    for key, item in value.items():
        if key not in ("question", "options"):
            first, *rest = (
                item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
            ).split("\n")
            field = [f"  {key}: {first}", *(f"    {line}" for line in rest)]
            lines.append("\n".join(_hanging(line, FIELD_HANG, width) for line in field))
    options = value.get("options")
    if isinstance(options, list) and options:
        answers = "  answers: " + " | ".join(str(option) for option in options)
        lines.append(_hanging(answers, FIELD_HANG, width))
    return lines


def created_line(created: agents_pb2.Run) -> None:
    """`runs/<id> in threads/<id>`: on one line even when piped (rich's width is then 80 and
    the two names are 90 characters), so both can be copied whole."""
    console.print(Text(f"{created.name} in {created.thread}", style="dim"), soft_wrap=True)


def resume_request(
    run_name: str, answer: struct_pb2.Value, request_id: str = ""
) -> agents_pb2.ResumeRunRequest:
    """One answer the user gave, with its own request_id (`request_id`, else a new one): the
    service takes it once, however often the same request is sent (a retry after a lost reply
    gets the run back, not an error)."""
    return agents_pb2.ResumeRunRequest(
        name=run_name, answer=answer, request_id=request_id or str(uuid.uuid4())
    )


async def resume_until_taken(
    stub: object, request: agents_pb2.ResumeRunRequest, attempts: int = 30
) -> None:
    """Send an answer until the agents service takes it. It carries its request_id, so sending
    it again after a reply that never came is safe; an answer lost to an unreachable service
    would otherwise leave the run paused and `amelia run` waiting on nothing."""
    for attempt in range(1, attempts + 1):
        try:
            await stub.ResumeRun(request)  # type: ignore[attr-defined]
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts:
                raise
            await asyncio.sleep(1.0)


async def _asks_now(stub: object, event: events_pb2.Event) -> bool:
    """Whether the run still waits on this question: a replay (`runs show -f`) passes questions
    answered since (the run has moved on to a later pick-up or ended) without stopping there."""
    reply = await stub.GetRun(agents_pb2.GetRunRequest(name=event.subject))  # type: ignore[attr-defined]
    run: agents_pb2.Run = reply.run
    attempt = event_data(event).get("attempt")
    return run.status == agents_pb2.RUN_STATUS_PAUSED and attempt in (None, run.attempt)


class _Typed:
    """Lines typed at the terminal, read by a daemon thread: a question answered elsewhere leaves
    its read pending (a blocked `input` cannot be cancelled; a daemon thread does not hold the
    process open), and a line typed after that question moved on is not sent to a later one."""

    def __init__(self) -> None:
        self.pending: asyncio.Future[str] | None = None

    def line(self) -> asyncio.Future[str]:
        """The next line typed for the question asked now."""
        if self.pending is not None and self.pending.done():
            self.pending = None  # typed for a question that was answered elsewhere
        if self.pending is None:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[str] = loop.create_future()

            def read() -> None:
                text = sys.stdin.readline()
                if text:
                    loop.call_soon_threadsafe(_settle, future, text.rstrip("\n"), None)
                else:
                    loop.call_soon_threadsafe(_settle, future, "", EOFError())

            threading.Thread(target=read, daemon=True).start()
            self.pending = future
        return self.pending

    def taken(self) -> None:
        self.pending = None


def _settle(future: asyncio.Future[str], text: str, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(text)


async def _answer_here(stub: object, run_name: str, text: str, shown: Shown) -> None:
    """Send the typed answer; one that lost the race to an answer from elsewhere (the run moved
    on: FAILED_PRECONDITION) is said, and the run is followed on."""
    value = struct_pb2.Value()
    value.string_value = text
    try:
        await resume_until_taken(stub, resume_request(run_name, value))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        shown.line(
            "· not sent: the run moved on without it (answered elsewhere or ended)", "yellow"
        )
        return
    shown.answered = True


def queued_text(queue: agents_pb2.GetRunQueueResponse) -> str:
    """The line a run waiting in the queue shows: how many other runs are queued (GetRunQueue
    counts them all, this one included, not only those ahead of it) and how many run now."""
    others = max(queue.queued_runs - 1, 0)
    running = len(queue.in_flight)
    return (
        f"queued: {others} other run{'' if others == 1 else 's'} queued, {running} running;"
        " waiting for a worker"
    )


def _run_timeout(value: int) -> int:
    """`--timeout` of `amelia run`: 1 to 604800 seconds, or not given (0: the default). Said in
    its help in those words (typer's `[x>=0]` and `[default: 0]` contradicted them); a negative
    one is refused here, as `min=0` did."""
    if value < 0:  # (one too large is refused by the service, in the flag's words)
        raise typer.BadParameter(f"{value} is not within 1 to 604800 seconds (7 days)")
    return value


def queued_behind_text(behind: str, strategy: str = "") -> str:
    """A run waiting for its thread's run: behind it (enqueue), or while it is being stopped
    (interrupt, rollback; QA s26: "it starts once that run ends" of a run being interrupted)."""
    if strategy == "interrupt":
        return f"interrupting {behind} (its state kept): this run starts once it has stopped"
    if strategy == "rollback":
        return (
            f"stopping {behind} (it is deleted with its checkpoints): this run starts once it "
            "has stopped"
        )
    return f"queued behind {behind}: it starts once that run ends"


async def _say_queued(
    stub: object, run_name: str, created: agents_pb2.Run | None = None, every: float = QUEUED_EVERY
) -> None:
    """While the run waits in the queue (it streams nothing then), say so: a line that changes
    at most every `every` seconds, on a terminal one that goes away once the run starts. A run
    `created` queued behind a thread's run says so at once, from CreateRun's reply (a wait
    shorter than `every` was not said). Only said; the queue unread (the agents service busy)
    is not this command's failure."""
    said = ""
    live: Status | None = None
    run = created if created is not None and created.queued_behind else None
    try:
        with contextlib.suppress(grpc.aio.AioRpcError):
            while True:
                if run is None:
                    await asyncio.sleep(every)
                    run = (await stub.GetRun(agents_pb2.GetRunRequest(name=run_name))).run  # type: ignore[attr-defined]
                if run.status != agents_pb2.RUN_STATUS_QUEUED:
                    return
                if run.queued_behind:  # (multitask enqueue, interrupt, rollback)
                    text = queued_behind_text(run.queued_behind, run.multitask_strategy)
                else:
                    queue = await stub.GetRunQueue(agents_pb2.GetRunQueueRequest(), timeout=5)  # type: ignore[attr-defined]
                    text = queued_text(queue)
                run = None
                if text == said:
                    continue
                said = text
                if not console.is_terminal:
                    console.print(Text(text, style="dim"), soft_wrap=True)
                elif live is None:
                    live = console.status(Text(text, style="dim"))
                    live.start()
                else:
                    live.update(Text(text, style="dim"))
    finally:
        if live is not None:
            live.stop()


async def _stop(task: asyncio.Task[None]) -> None:
    """Stop `task` and wait until it has (its line is gone before anything else is printed)."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task})


async def _follow(
    stub: object,
    run_name: str,
    shown: Shown | None = None,
    created: agents_pb2.Run | None = None,
    opened: AsyncIterator[Any] | None = None,
) -> agents_pb2.Run:
    """Stream a run's events to the terminal until it ends; `opened`: the run's stream already
    open (CreateAndStreamRun's, past its first message), read before any StreamRun.

    On a terminal, a paused run's question is asked and answered here, while the stream is still
    read: an answer given elsewhere (another client, the TUI) is said and the run followed on.
    Otherwise following stops at the question (answer it with `amelia runs resume`). A dropped
    stream is resumed from the last sequence seen, so no token is shown twice or lost.
    """
    after = 0
    interactive = sys.stdin.isatty()
    retries = 0
    shown = shown or Shown()
    typed = _Typed()
    paused = False
    queued = asyncio.create_task(_say_queued(stub, run_name, created))
    while True:
        last_type = ""
        asking = False
        replies = (
            opened
            or stub.StreamRun(  # type: ignore[attr-defined]
                agents_pb2.StreamRunRequest(
                    name=run_name, after_sequence=after, max_events_per_message=STREAM_BATCH
                )
            ).__aiter__()
        )
        opened = None
        try:
            while True:
                following = asyncio.ensure_future(anext(replies))
                try:
                    if asking:
                        line = typed.line()
                        await asyncio.wait({following, line}, return_when=asyncio.FIRST_COMPLETED)
                        if line.done():
                            typed.taken()
                            asking = False
                            await _answer_here(stub, run_name, line.result(), shown)
                    reply = await following
                except StopAsyncIteration:
                    break
                finally:
                    following.cancel()
                retries = 0
                for event in reply.events or (reply.event,):
                    after = event.sequence
                    last_type = event.type
                    if event.type != "run.queued":  # (it waits behind its thread's run)
                        await _stop(queued)
                    if asking:  # the run moved on while the question was asked here
                        asking = False
                        shown.mid_line = True  # the `> ` prompt's line
                        if event.type == "run.resumed" and event_data(event).get("reason") in (
                            None,
                            "",
                            "answer",
                        ):
                            shown.line("· answered elsewhere", "yellow")
                            continue
                    shown.event(event)
                    if event.type == "run.interrupted" and await _asks_now(stub, event):
                        if not interactive:
                            paused = True
                            break
                        shown.end()
                        console.print("> ", end="", highlight=False, markup=False)
                        asking = True
                if paused:
                    break
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or retries >= 30:
                raise
            retries += 1
            await asyncio.sleep(1.0)
            continue
        if last_type in TERMINAL or paused or not last_type:
            break
    await _stop(queued)
    shown.end()
    reply = await stub.GetRun(agents_pb2.GetRunRequest(name=run_name))  # type: ignore[attr-defined]
    run: agents_pb2.Run = reply.run
    return run


def run(
    target: str = typer.Argument(..., help="Agent id or workflow name (chat, plan, code, …)."),
    text: str = typer.Argument("", help="The input message (none with --continue)."),
    thread: str = typer.Option("", help="Thread to run on (threads/<id>): its memory."),
    go_on: bool = typer.Option(
        False,
        "--continue",
        help="No input: run the --thread's pending nodes (its state's `next`, e.g. after "
        "`amelia threads update`) from its latest checkpoint.",
    ),
    input_json: str = typer.Option("", "--input", help="Full input as JSON instead of TEXT."),
    repo: str = typer.Option(
        "",
        "--repo",
        help="Repository for the code and develop workflows (default: the current directory).",
    ),
    context: list[str] = typer.Option(
        [],
        "--context",
        help="Documents chat answers from, cited (documents/<id> or documents/*; repeatable).",
    ),
    timeout: int = typer.Option(
        0,
        "--timeout",
        metavar="SECONDS",
        show_default=False,
        callback=_run_timeout,
        help="Seconds this run may take, 1 to 604800 (7 days); default: the agent's, else the "
        "workflow's (300 for chat).",
    ),
    multitask: str = typer.Option(
        "",
        "--multitask",
        help="If the --thread has a run: reject (the default: an error), enqueue (start after "
        "it), interrupt (stop it, keep its state) or rollback (stop and delete it).",
    ),
    webhook: str = typer.Option(
        "",
        "--webhook",
        help="An http(s) URL POSTed with the run as JSON when it pauses on a question and when it"
        " ends (retried; at least once).",
    ),
) -> None:
    """Start a run and stream its tokens; Ctrl-C cancels it."""
    repository = os.path.abspath(repo or ".")
    if go_on and (not thread or text or input_json or context or repo):
        raise typer.BadParameter(
            "--continue takes a --thread and no input", param_hint="--continue"
        )
    if not go_on and not text and not input_json:
        raise typer.BadParameter("the input message is missing (or --input, or --continue)")
    parsed_input = json_object(input_json, "--input") if input_json else {}

    async def go() -> agents_pb2.Run:
        async with agents() as stub:
            spec = await _target(stub, target)
            if thread:
                spec.thread = resource("threads", thread)
            if not go_on:  # (an absent input continues the thread; {} starts afresh)
                run_input: dict[str, Any] = parsed_input if input_json else {"message": text}
                in_git = spec.workflow in ("workflows/code", "workflows/develop")
                if repo or (in_git and "repository" not in run_input):
                    run_input["repository"] = repository
                if context:
                    run_input["context_sources"] = [resource("documents", c) for c in context]
                spec.input.update(run_input)
                spec.input.SetInParent()
            if timeout:
                spec.timeout.FromSeconds(timeout)
            spec.multitask_strategy = multitask
            spec.webhook = webhook
            # Ctrl-C from here on cancels the run: one while it is being created waits for its
            # name (then cancels it); a second one stops waiting.
            interrupted = asyncio.Event()
            main = asyncio.current_task()
            following: list[asyncio.Task[agents_pb2.Run]] = []
            shown = Shown()

            def on_ctrl_c() -> None:
                if following:
                    following[0].cancel()
                elif interrupted.is_set() and main is not None:
                    main.cancel()
                interrupted.set()

            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_ctrl_c)
            # Created and streamed in one call (the run first): no second call before the
            # first token.
            request = agents_pb2.CreateAndStreamRunRequest(
                run=spec, max_events_per_message=STREAM_BATCH
            )
            stream = stub.CreateAndStreamRun(request).__aiter__()
            try:
                first = await anext(stream)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND or "/" in target or not spec.agent:
                    raise
                flows = await stub.ListWorkflows(agents_pb2.ListWorkflowsRequest())
                names = ", ".join(w.name.removeprefix("workflows/") for w in flows.workflows)
                err.print(
                    said(
                        ("NOT_FOUND:", "red"),
                        f" {target!r} is neither a workflow ({names}) nor an agent"
                        " (`amelia agents ls`).",
                    )
                )
                raise typer.Exit(1) from exc
            except asyncio.CancelledError:
                console.print()
                console.print(
                    Text("Ctrl-C before the run was created (`amelia runs ls` shows if it was)")
                )
                raise typer.Exit(130) from None
            created = first.run
            created_line(created)
            follow = asyncio.create_task(_follow(stub, created.name, shown, created, stream))
            following.append(follow)
            if interrupted.is_set():
                follow.cancel()
            try:
                return await follow
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                # The stream cancelled under it may end as either.
                if not interrupted.is_set():
                    raise
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.CancelRun(
                        agents_pb2.CancelRunRequest(
                            name=created.name, reason="cancelled from the CLI"
                        )
                    )
                # After `^C` (and maybe half a line of tokens): a line of its own.
                console.print()
                console.print(Text(f"cancelled {created.name} (Ctrl-C)", style="yellow"))
                if shown.streamed:
                    following.clear()  # a second Ctrl-C stops waiting for the partial text
                    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                        await _say_partial(stub, created.name)
                raise typer.Exit(130) from None

    # --context's documents go in the input (where --input may have put them instead).
    context_flag = {"input.context_sources": "--context"} if context else {}
    final = call_rpc(go, RUN_FLAGS | context_flag)
    status = run_status(final)
    # A cancelled run's error is its reason: "cancelled" itself when none was given.
    told = f" — {final.error}" if final.error and final.error != status else ""
    console.print(Text(f"{final.name}: {status}{told}", style="dim"), soft_wrap=True)
    partial_line(final)
    if final.status == agents_pb2.RUN_STATUS_PAUSED:
        console.print(
            Text(f"paused; answer with `amelia runs resume {final.name} ANSWER`", style="yellow")
        )
    elif final.status != agents_pb2.RUN_STATUS_COMPLETED:
        raise typer.Exit(1)


async def _say_partial(stub: object, run_name: str) -> None:
    """After a cancel, say what the run kept of its answer: its worker stores the streamed text
    as `output.partial` once it has stopped the graph, shortly after CancelRun returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PARTIAL_WAIT
    while True:
        reply = await stub.GetRun(agents_pb2.GetRunRequest(name=run_name))  # type: ignore[attr-defined]
        if reply.run.status != agents_pb2.RUN_STATUS_CANCELLED:
            return  # it ended otherwise before the cancel (`amelia runs show` says how)
        if "partial" in reply.run.output.fields:
            partial_line(reply.run)
            return
        if loop.time() >= deadline:
            break
        await asyncio.sleep(0.2)
    console.print(
        Text(
            f"partial output: not on the run yet; `amelia runs show {run_name}` shows it once "
            "its worker has stopped (output.partial)",
            style="yellow",
        ),
        soft_wrap=True,
    )


def partial_line(run: agents_pb2.Run) -> None:
    """Say that a run stopped mid-answer (out of time, cancelled) kept what it streamed."""
    kept = run.output.fields.get("partial")
    if kept is None or run.status not in (
        agents_pb2.RUN_STATUS_FAILED,
        agents_pb2.RUN_STATUS_CANCELLED,
    ):
        return
    size = len(kept.string_value)
    console.print(
        Text(
            f"partial output: the {size} character{'' if size == 1 else 's'} streamed before it "
            f"stopped are kept on the run (output.partial; `amelia runs show {run.name}`)",
            style="yellow",
        ),
        soft_wrap=True,
    )


@runs_app.command("ls")
def ls_runs(
    status: list[str] = typer.Option(
        [], help="queued, running, paused, completed, failed, cancelled."
    ),
    agent: str = typer.Option("", help="Only this agent's runs (agents/<id> or <id>)."),
    thread: str = typer.Option("", help="Only this thread's runs (threads/<id> or <id>)."),
    limit: int = typer.Option(50, min=1, help="At most this many."),
) -> None:
    """List runs, newest first."""
    choices = [status_name(s) for s in agents_pb2.RunStatus.values() if s]
    unknown = [s for s in status if s.lower() not in choices]
    if unknown:
        raise typer.BadParameter(
            f"{unknown[0]!r} is not a run status; one of: {', '.join(choices)}",
            param_hint="--status",
        )
    statuses = [agents_pb2.RunStatus.Value(f"RUN_STATUS_{s.upper()}") for s in status]

    async def go() -> agents_pb2.ListRunsResponse:
        async with agents() as stub:
            reply: agents_pb2.ListRunsResponse = await stub.ListRuns(
                agents_pb2.ListRunsRequest(
                    page_size=limit,
                    statuses=statuses,
                    agent=resource("agents", agent) if agent else "",
                    thread=resource("threads", thread) if thread else "",
                )
            )
            return reply

    rows = [
        (r.name, r.agent or r.workflow, run_status(r), ago(r.create_time), r.error)
        for r in call_rpc(go).runs
    ]
    listing(console, RUN_COLUMNS, rows, empty="no runs")


@runs_app.command("show")
def show_run(
    name: str = typer.Argument(..., help="The run (runs/<id> or <id>)."),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Replay its events, then follow it live."
    ),
) -> None:
    """Show a run (and, with --follow, its events)."""

    async def go() -> agents_pb2.Run:
        async with agents() as stub:
            if follow:
                return await _follow(stub, resource("runs", name))
            reply = await stub.GetRun(agents_pb2.GetRunRequest(name=resource("runs", name)))
            run: agents_pb2.Run = reply.run
            return run

    console.print_json(message_text(call_rpc(go)))


@runs_app.command("wait")
def wait_run(
    name: str = typer.Argument(..., help="The run (runs/<id> or <id>)."),
    timeout: float = typer.Option(
        600, "--timeout", min=0.001, max=600, help="Seconds to wait at most (up to 600)."
    ),
) -> None:
    """Wait until a run ends or pauses on a question, then show it (exit 1 unless it completed
    or paused; DEADLINE_EXCEEDED if it is still going after --timeout, the run untouched). The
    wait goes on across a restart of the agents service, or on another replica, until --timeout."""

    async def go() -> agents_pb2.Run:
        # One wait however often it is sent: the service counts the timeout (and says how
        # long it waited) from its start_time.
        request = agents_pb2.WaitRunRequest(name=resource("runs", name))
        request.timeout.FromNanoseconds(int(timeout * 1e9))
        request.start_time.GetCurrentTime()
        async with agents() as stub:

            async def wait(left: float) -> agents_pb2.WaitRunResponse:
                # The call's deadline a little after the wait's: the service answers first,
                # in words.
                return await stub.WaitRun(request, timeout=left + 30)

            reply = await reissue_while_unavailable(wait, timeout, "agents")
            run: agents_pb2.Run = reply.run
            return run

    final = call_rpc(go, WAIT_FLAGS)
    console.print_json(message_text(final))
    if final.status not in (agents_pb2.RUN_STATUS_COMPLETED, agents_pb2.RUN_STATUS_PAUSED):
        raise typer.Exit(1)


def _say_status(
    name: str,
    call: Callable[[AgentServiceAsyncStub], Awaitable[RunReply]],
    flags: dict[str, str] | None = None,
) -> None:
    """Make `call` (CancelRun, ResumeRun: replies that carry the run) and print the run's
    status after it; an error names the command's `flags`."""

    async def go() -> RunReply:
        async with agents() as stub:
            return await call(stub)

    console.print(said(f"{name}: {run_status(call_rpc(go, flags).run)}"))


@runs_app.command("cancel")
def cancel_run(
    name: str = typer.Argument(..., help="The run (runs/<id> or <id>)."),
    reason: str = typer.Option("", help="Why, kept with the run."),
) -> None:
    """Cancel a queued, running or paused run."""
    request = agents_pb2.CancelRunRequest(name=resource("runs", name), reason=reason)
    _say_status(name, lambda stub: stub.CancelRun(request))


@runs_app.command("resume")
def resume_run(
    name: str = typer.Argument(..., help="The run (runs/<id> or <id>)."),
    answer: str = typer.Argument(..., help="The answer: JSON, or plain text."),
    request_id: str = typer.Option(
        "",
        "--request-id",
        help="Your id for this answer (e.g. a uuid; default: a new one each time). Sent again "
        "with the same answer after a lost reply or a timeout, it gets the run back instead "
        "of 'already answered': the run takes an answer once.",
    ),
) -> None:
    """Answer a paused run's question (JSON or plain text)."""
    value = struct_pb2.Value()
    try:
        json_format.Parse(answer, value)
    except json_format.ParseError:
        value.string_value = answer
    request = resume_request(resource("runs", name), value, request_id)
    _say_status(name, lambda stub: stub.ResumeRun(request), RESUME_FLAGS)


def _delete_run(name: str) -> None:
    """Delete an ended run (its thread's checkpoints and its events stay)."""

    async def go() -> None:
        async with agents() as stub:
            await stub.DeleteRun(agents_pb2.DeleteRunRequest(name=resource("runs", name)))

    call_rpc(go)
    console.print(said(f"deleted {resource('runs', name)}"))


@runs_app.command("rm")
def rm_run(name: str = typer.Argument(..., help="The run (runs/<id> or <id>).")) -> None:
    """Delete an ended run (completed, failed or cancelled); its thread's state and its events
    stay. A run still going is refused: cancel it first."""
    _delete_run(name)


@runs_app.command("delete", hidden=True)
def delete_run(name: str = typer.Argument(..., help="The run (runs/<id> or <id>).")) -> None:
    """`runs rm`, by the name LangGraph's SDK gives it."""
    _delete_run(name)


def _new_run(
    follow: bool,
    call: Callable[[AgentServiceAsyncStub], Awaitable[Any]],
    flags: dict[str, str],
) -> None:
    """Make `call` (RerunRun, ForkRun: replies that carry a new, queued run), print the new run
    and, with `follow`, stream it as `amelia run` does; an error names the command's `flags`."""

    async def go() -> agents_pb2.Run:
        async with agents() as stub:
            created: agents_pb2.Run = (await call(stub)).run
            created_line(created)
            return await _follow(stub, created.name, created=created) if follow else created

    final = call_rpc(go, flags)
    console.print(said(f"{final.name}: {run_status(final)}"))


# A rerun's or fork's own webhook: the source run's is not carried over.
REPEAT_WEBHOOK = (
    "POST the new run to this http(s) URL when it pauses and when it ends (the source's is not"
    " kept)."
)


@runs_app.command("rerun")
def rerun_run(
    name: str = typer.Argument(..., help="The run (runs/<id> or <id>)."),
    thread: str = typer.Option("", help="Thread to run in (threads/<id>); default: a new one."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream the new run."),
    webhook: str = typer.Option("", "--webhook", help=REPEAT_WEBHOOK),
) -> None:
    """Run a run's target again with the same input, as a new run."""
    request = agents_pb2.RerunRunRequest(
        name=resource("runs", name),
        thread=resource("threads", thread) if thread else "",
        webhook=webhook,
    )
    _new_run(follow, lambda stub: stub.RerunRun(request), RERUN_FLAGS)


@runs_app.command("steps")
def steps_run(name: str = typer.Argument(..., help="The run (runs/<id> or <id>).")) -> None:
    """A run's steps in the order they ran, each with the checkpoint `runs fork` takes."""

    async def go() -> tuple[list[agents_pb2.RunStep], agents_pb2.Run | None]:
        steps: list[agents_pb2.RunStep] = []
        token = ""
        async with agents() as stub:
            while True:
                reply = await stub.ListRunSteps(
                    agents_pb2.ListRunStepsRequest(
                        parent=resource("runs", name), page_size=1000, page_token=token
                    )
                )
                steps += reply.steps
                token = reply.next_page_token
                if not token:
                    break
            if steps:
                return steps, None
            # None: why, from where the run is.
            found = await stub.GetRun(agents_pb2.GetRunRequest(name=resource("runs", name)))
            return steps, found.run

    steps, run = call_rpc(go)
    if run is not None:
        console.print(said(no_steps_text(run)))
        return
    states = agents_pb2.RunStepState
    rows = [
        (
            str(s.step),
            s.node,
            states.Name(s.state).removeprefix("RUN_STEP_STATE_").lower(),
            s.checkpoint,
            s.error,
        )
        for s in steps
    ]
    listing(console, STEP_COLUMNS, rows)


def no_steps_text(run: agents_pb2.Run) -> str:
    """Why a run lists no steps, from where it is: a step is recorded with the checkpoint saved
    before its node runs, so a run not started yet has none, and one stopped before its first
    node never will (`threads state` says `no checkpoint yet` the same way)."""
    status = status_name(run.status)
    if run.status == agents_pb2.RUN_STATUS_QUEUED:
        waits = f"behind {run.queued_behind}" if run.queued_behind else "for a worker"
        return f"no steps recorded yet: the run is queued {waits}; a step is recorded as it starts"
    if run.status in (agents_pb2.RUN_STATUS_RUNNING, agents_pb2.RUN_STATUS_PAUSED):
        return f"no steps recorded yet: the run is {status} and has not saved its first step"
    why = f" ({run.error})" if run.error and run.error != status else ""
    return f"no steps recorded: the run ended ({status}) before its first step ran{why}"


@runs_app.command("fork")
def fork_run(
    name: str = typer.Argument(..., help="The run (runs/<id> or <id>)."),
    checkpoint: str = typer.Argument(..., help="A step's checkpoint (`amelia runs steps`)."),
    values: str = typer.Option(
        "", help="A state update as JSON, applied before the step runs again."
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream the new run."),
    webhook: str = typer.Option("", "--webhook", help=REPEAT_WEBHOOK),
) -> None:
    """Run a run again from one of its steps (its checkpoint), as a new run in its thread."""
    request = agents_pb2.ForkRunRequest(
        name=resource("runs", name), checkpoint=checkpoint, webhook=webhook
    )
    if values:
        request.values.update(json_object(values, "--values"))
    _new_run(follow, lambda stub: stub.ForkRun(request), FORK_FLAGS)
