"""`amelia threads …`: threads, their metadata, state and checkpoints, as LangGraph Server has
them (`create`, `update`, `copy`, `get_state`, `get_state_history`, `update_state`), from a
terminal 80 columns wide."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import typer
from google.protobuf import struct_pb2

from amelia.v1 import agents_pb2
from amelia_cli.client import Column, agents, ago, call_rpc, json_object, listing, resource, said
from amelia_cli.commands.agents import question_lines
from amelia_cli.consoles import console, err
from amelia_cli.help_text import App
from amelia_common.json_numbers import message_dict, message_text

if TYPE_CHECKING:
    from amelia.v1.agents_pb2_grpc import AgentServiceAsyncStub

threads_app = App(
    help="Threads: a conversation's metadata, state and history.", no_args_is_help=True
)

# A checkpoint id stays whole (36 characters, to copy into --checkpoint); the run that wrote
# the checkpoint is left for wider terminals (`threads state` names it).
HISTORY_COLUMNS = (
    Column("checkpoint"),
    Column("step"),
    Column("source"),
    Column("next", wraps=True),
    Column("saved"),
    Column("run", drop=1),
)
# The status stays at 80 columns; the first message goes first (it needs the width left).
THREAD_COLUMNS = (
    Column("name"),
    Column("status"),
    Column("runs"),
    Column("updated"),
    Column("preview", wraps=True, drop=1),
)

# The request fields each command fills from what the person typed, as the agents service
# names them in its messages → the flag or argument (`client.in_cli_words`).
STATE_FLAGS = {"checkpoint": "--checkpoint"}
HISTORY_FLAGS = {"before": "--before", "metadata_filter": "--metadata"}
UPDATE_FLAGS = {
    "values": "VALUES",
    "as_node": "--as-node",
    "checkpoint": "--checkpoint",
    "thread.metadata (merged)": "the merged metadata",
    "thread.metadata": "--metadata",
}
CREATE_FLAGS = {"thread_id": "--id", "if_exists": "--if-exists", "thread.metadata": "--metadata"}
LIST_FLAGS = {"order_by": "--sort", "status": "--status", "metadata_filter": "--metadata"}


def thread_status(status: agents_pb2.ThreadStatus.ValueType) -> str:
    """`THREAD_STATUS_BUSY` → `busy` (what `--status` takes)."""
    return agents_pb2.ThreadStatus.Name(status).removeprefix("THREAD_STATUS_").lower()


def _plain(message: Any) -> Any:
    return message_dict(message, preserving_proto_field_name=True)


def _metadata(pairs: list[str], option: str) -> dict[str, str]:
    """Repeated `key=value` options as a dict; a key given twice is refused (the gateway refuses
    `metadataFilter[k]` twice too), not settled silently by the last value."""
    wanted: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint=option)
        if key in wanted:
            raise typer.BadParameter(
                f"key {key!r} is given more than once ({wanted[key]!r}, then {value!r})",
                param_hint=option,
            )
        wanted[key] = value
    return wanted


def _written_by(state: agents_pb2.ThreadState) -> str:
    if state.run:
        return state.run
    source = _source(state)
    return "a state update (threads update)" if source == "update" else source or "-"


def _source(state: agents_pb2.ThreadState) -> str:
    """What saved the checkpoint: LangGraph's `input`, `loop`, `update` or `fork`."""
    return str(_plain(state.metadata).get("source", ""))


def show_state(state: agents_pb2.ThreadState) -> None:
    """The state as lines a person reads: where it is, what runs next, what it asks, values."""
    console.print(said(state.thread))
    if not state.checkpoint:
        console.print(said("no checkpoint yet: no run of this thread has started"))
        return
    fields = [
        ("checkpoint", state.checkpoint),
        ("parent", state.parent_checkpoint or "-"),
        ("step", f"{state.step}, saved {ago(state.create_time)}"),
        ("written by", _written_by(state)),
        ("next", ", ".join(state.next) or "- (the graph ended)"),
    ]
    for label, value in fields:
        console.print(said((f"{label:<11}", "bold"), value))
    for interrupt in state.interrupts:
        node = f"{interrupt.node or 'question'}: "
        for line in question_lines(_plain(interrupt.value), console.width - len(node)):
            console.print(said((node, "yellow"), line))
    for task in state.tasks:
        if task.error:
            console.print(said((f"{task.node} failed: ", "red"), task.error))
    console.print(said(("values", "bold")))
    console.print_json(json.dumps(_plain(state.values)))


@threads_app.command("state")
def state_cmd(
    thread: str = typer.Argument(..., help="The thread (threads/<id> or <id>)."),
    checkpoint: str = typer.Option(
        "", help="One of its checkpoints (`amelia threads history`); default: the latest."
    ),
    as_json: bool = typer.Option(False, "--json", help="The whole state as JSON."),
) -> None:
    """A thread's state: its values, the nodes that run next, a question waiting."""
    request = agents_pb2.GetThreadStateRequest(
        thread=resource("threads", thread), checkpoint=checkpoint
    )

    async def go() -> agents_pb2.ThreadState:
        async with agents() as stub:
            reply: agents_pb2.GetThreadStateResponse = await stub.GetThreadState(request)
            return reply.state

    state = call_rpc(go, STATE_FLAGS)
    if as_json:
        console.print_json(message_text(state))
    else:
        show_state(state)


@threads_app.command("history")
def history_cmd(
    thread: str = typer.Argument(..., help="The thread (threads/<id> or <id>)."),
    limit: int = typer.Option(20, min=1, help="At most this many checkpoints."),
    where: list[str] = typer.Option(
        [], "--metadata", help="Only checkpoints whose metadata has key=value (e.g. source=update)."
    ),
    before: str = typer.Option("", help="Only checkpoints before this one."),
) -> None:
    """A thread's checkpoints, newest first: what each step saved, for `threads state`."""
    wanted = _metadata(where, "--metadata")

    more = False

    async def go() -> list[agents_pb2.ThreadState]:
        nonlocal more
        states: list[agents_pb2.ThreadState] = []
        token = ""
        async with agents() as stub:
            while len(states) < limit:
                reply = await stub.ListThreadHistory(
                    agents_pb2.ListThreadHistoryRequest(
                        parent=resource("threads", thread),
                        page_size=min(limit - len(states), 1000),
                        page_token=token,
                        metadata_filter=wanted,
                        before=before,
                    )
                )
                states += reply.states
                token = reply.next_page_token
                if not token:
                    break
        more = bool(token)
        return states

    rows = [
        (
            s.checkpoint,
            str(s.step),
            _source(s),
            ", ".join(s.next) or "-",
            ago(s.create_time),
            s.run,
        )
        for s in call_rpc(go, HISTORY_FLAGS)
    ]
    listing(console, HISTORY_COLUMNS, rows, empty="no checkpoints")
    if more:  # cut at --limit: say so, and how to see the rest
        err.print(
            said(
                f"the newest {limit} shown; older ones: --limit N, or --before {rows[-1][0]}",
            ),
            style="dim",
        )


def show_thread(thread: agents_pb2.Thread) -> None:
    """A thread as `threads create|update|copy` leave it: its name alone on the first line (to
    copy, or to read in a script), then its metadata."""
    console.print(said(thread.name), soft_wrap=True)
    console.print(said(("metadata", "bold")))
    console.print_json(json.dumps(_plain(thread.metadata)))


def _thread_call(
    call: Callable[[AgentServiceAsyncStub], Awaitable[Any]], flags: dict[str, str]
) -> agents_pb2.Thread:
    """Make `call` (CreateThread, UpdateThread, CopyThread: replies that carry the thread) and
    return the thread; an error names the command's `flags`."""

    async def go() -> agents_pb2.Thread:
        async with agents() as stub:
            thread: agents_pb2.Thread = (await call(stub)).thread
            return thread

    return call_rpc(go, flags)


@threads_app.command("create")
def create_cmd(
    thread_id: str = typer.Option(
        "", "--id", help="Its id, a UUID of your choosing (a retry then makes no second thread)."
    ),
    if_exists: str = typer.Option(
        "",
        "--if-exists",
        help="When --id names a thread there is: raise (an error, the default) or do_nothing "
        "(that thread, unchanged).",
    ),
    metadata: list[str] = typer.Option([], "--metadata", help="key=value (repeatable)."),
) -> None:
    """Start a thread (LangGraph Server's threads create): its name, then its metadata."""
    request = agents_pb2.CreateThreadRequest(
        thread_id=thread_id.removeprefix("threads/"), if_exists=if_exists
    )
    request.thread.metadata.update(_metadata(metadata, "--metadata"))
    show_thread(_thread_call(lambda stub: stub.CreateThread(request), CREATE_FLAGS))


@threads_app.command("copy")
def copy_cmd(thread: str = typer.Argument(..., help="The thread (threads/<id> or <id>).")) -> None:
    """Copy a thread, its metadata, state and history (no runs): prints the copy's name."""
    request = agents_pb2.CopyThreadRequest(name=resource("threads", thread))
    console.print(said(_thread_call(lambda stub: stub.CopyThread(request), {}).name))


def _metadata_patch(pairs: list[str], unset: list[str]) -> struct_pb2.Struct:
    """`--metadata k=v` and `--unset k` as UpdateThread's merge: each key set, or null
    (removed); a key both set and removed is refused."""
    patch = struct_pb2.Struct()
    patch.update(_metadata(pairs, "--metadata"))
    for key in unset:
        if key in patch.fields:
            raise typer.BadParameter(
                f"key {key!r} is also set with --metadata", param_hint="--unset"
            )
        patch.fields[key].null_value = struct_pb2.NULL_VALUE
    return patch


@threads_app.command("update")
def update_cmd(
    thread: str = typer.Argument(..., help="The thread (threads/<id> or <id>)."),
    values: str = typer.Argument(
        "",
        help="A state update as a JSON object of the state's keys (see `threads state`), e.g."
        ' \'{"messages": [{"role": "user", "content": "Use Postgres."}]}\'.',
        show_default=False,
    ),
    as_node: str = typer.Option(
        "", "--as-node", help="Write VALUES as this node (default: LangGraph's)."
    ),
    checkpoint: str = typer.Option(
        "", help="Update the state from this checkpoint; default: the latest."
    ),
    metadata: list[str] = typer.Option(
        [], "--metadata", help="Set the thread's metadata key=value (repeatable), not its state."
    ),
    unset: list[str] = typer.Option([], "--unset", help="Remove this metadata key (repeatable)."),
) -> None:
    """Write VALUES into a thread's state as if a node had (its next run starts from them), or
    change its metadata (--metadata, --unset), the other keys kept."""
    if bool(values) == bool(metadata or unset):
        raise typer.BadParameter(
            "give VALUES (a state update) or --metadata/--unset (the thread's metadata), "
            "one at a time",
            param_hint="VALUES",
        )
    if values:
        _update_state(thread, values, as_node, checkpoint)
        return
    if as_node or checkpoint:
        raise typer.BadParameter(
            "goes with VALUES (a state update), not with --metadata/--unset",
            param_hint="--as-node" if as_node else "--checkpoint",
        )
    request = agents_pb2.UpdateThreadRequest(
        thread=agents_pb2.Thread(
            name=resource("threads", thread), metadata=_metadata_patch(metadata, unset)
        )
    )
    show_thread(_thread_call(lambda stub: stub.UpdateThread(request), UPDATE_FLAGS))


def _update_state(thread: str, values: str, as_node: str, checkpoint: str) -> None:
    request = agents_pb2.UpdateThreadStateRequest(
        thread=resource("threads", thread), as_node=as_node, checkpoint=checkpoint
    )
    request.values.update(json_object(values, "VALUES"))

    async def go() -> agents_pb2.ThreadState:
        async with agents() as stub:
            reply: agents_pb2.UpdateThreadStateResponse = await stub.UpdateThreadState(request)
            return reply.state

    show_state(call_rpc(go, UPDATE_FLAGS))


@threads_app.command("ls")
def ls_threads(
    where: list[str] = typer.Option(
        [], "--metadata", help="Only threads whose metadata has key=value."
    ),
    status: str = typer.Option(
        "", "--status", help="Only threads that are idle, busy, interrupted or error."
    ),
    sort: str = typer.Option(
        "update_time desc",
        "--sort",
        help="update_time desc (most recently active first), update_time, create_time desc "
        "(newest first) or create_time (oldest first).",
    ),
    limit: int = typer.Option(50, min=1, help="At most this many."),
) -> None:
    """List threads, most recently active first, with their status (LangGraph Server's)."""
    request = agents_pb2.ListThreadsRequest(
        page_size=limit,
        order_by=sort,
        metadata_filter=_metadata(where, "--metadata"),
        status=status,
    )

    async def go() -> agents_pb2.ListThreadsResponse:
        async with agents() as stub:
            reply: agents_pb2.ListThreadsResponse = await stub.ListThreads(request)
            return reply

    rows = [
        (t.name, thread_status(t.status), str(t.run_count), ago(t.update_time), t.preview)
        for t in call_rpc(go, LIST_FLAGS).threads
    ]
    listing(console, THREAD_COLUMNS, rows, empty="no threads")
