"""`amelia runs diff|land|discard`: what a coding run (`develop`, `code`) left on its branch, and
settling it, through GitService (served by the agents service).

A `develop` run paused on its final question is settled by answering it (the run then lands or
discards itself, and ends); any other run's branch through LandRun / DiscardRun.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import typer
from google.protobuf import json_format, struct_pb2
from rich.syntax import Syntax

from amelia.v1 import agents_pb2, agents_pb2_grpc, git_pb2, git_pb2_grpc
from amelia_cli.client import Column, call_rpc, channel_to, listing, resource, said
from amelia_cli.commands.agents import runs_app, status_name
from amelia_cli.consoles import console

if TYPE_CHECKING:
    # Only in the generated .pyi (see amelia_cli.client).
    from amelia.v1.agents_pb2_grpc import AgentServiceAsyncStub
    from amelia.v1.git_pb2_grpc import GitServiceAsyncStub

FINAL_QUESTION = "approve_diff"
SETTLE_TIMEOUT_SECONDS = 300.0
_CHANGE = {
    git_pb2.FILE_CHANGE_ADDED: "added",
    git_pb2.FILE_CHANGE_MODIFIED: "modified",
    git_pb2.FILE_CHANGE_DELETED: "deleted",
    git_pb2.FILE_CHANGE_RENAMED: "renamed",
}


@asynccontextmanager
async def stubs() -> AsyncIterator[tuple[AgentServiceAsyncStub, GitServiceAsyncStub]]:
    """(AgentService, GitService) stubs on one channel to the agents service."""
    async with channel_to("agents") as channel:
        # The plain Stub classes on an aio channel: the .pyi's AsyncStub types (aio callables).
        yield (
            cast("AgentServiceAsyncStub", agents_pb2_grpc.AgentServiceStub(channel)),
            cast("GitServiceAsyncStub", git_pb2_grpc.GitServiceStub(channel)),
        )


@runs_app.command("diff")
def diff_run(
    name: str = typer.Argument(..., help="The run (runs/<id> or <id>)."),
    stat: bool = typer.Option(False, "--stat", help="Only the files and line counts."),
) -> None:
    """Show a coding run's change: its branch against where it started, file by file."""

    async def go() -> git_pb2.GetRunDiffResponse:
        async with stubs() as (_, git):
            reply: git_pb2.GetRunDiffResponse = await git.GetRunDiff(
                git_pb2.GetRunDiffRequest(name=resource("runs", name))
            )
            return reply

    diff = call_rpc(go)
    b = diff.branch
    console.print(
        said(
            (b.branch, "bold"),
            f" in {diff.repository}: {b.base[:12]}..{diff.head[:12]}, "
            f"{len(diff.commits)} commit(s), lands into {b.target or '(no target)'}"
            + (f"\nworktree {b.worktree}" if b.worktree else ""),
        )
    )
    rows = [
        (
            f"{f.old_path} → {f.path}" if f.old_path else f.path,
            _CHANGE.get(f.change, "?"),
            "binary" if f.binary else str(f.additions),
            str(f.deletions),
        )
        for f in diff.files
    ]
    listing(console, (Column("file", wraps=True), Column("change"), Column("+"), Column("-")), rows)
    console.print(f"{len(diff.files)} file(s), +{diff.additions} -{diff.deletions}")
    if not stat:
        for f in diff.files:
            console.print(Syntax(f.patch, "diff", theme="ansi_dark", word_wrap=True))
            if f.truncated:
                console.print("[dim]… cut; see the branch with git[/dim]")


async def _answer(
    agents: AgentServiceAsyncStub, name: str, answer: dict[str, Any]
) -> agents_pb2.Run | None:
    """If the run is a `develop` paused on its final question: answer it, wait for the run to
    move on, and return it; otherwise None."""
    run = (await agents.GetRun(agents_pb2.GetRunRequest(name=name))).run
    if run.status != agents_pb2.RUN_STATUS_PAUSED or run.interrupt.node != FINAL_QUESTION:
        return None
    value = struct_pb2.Value()
    json_format.ParseDict(answer, value)
    await agents.ResumeRun(agents_pb2.ResumeRunRequest(name=name, answer=value))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT_SECONDS
    while loop.time() < deadline:
        await asyncio.sleep(0.3)
        run = (await agents.GetRun(agents_pb2.GetRunRequest(name=name))).run
        if run.status not in (agents_pb2.RUN_STATUS_QUEUED, agents_pb2.RUN_STATUS_RUNNING):
            break
    return run


def _settled(run: agents_pb2.Run) -> None:
    output = json_format.MessageToDict(run.output)
    message = output.get("message") or run.error or status_name(run.status)
    console.print(
        said(f"{run.name}: {output.get('status') or status_name(run.status)} — {message}")
    )
    if output.get("status") not in ("landed", "discarded"):
        raise typer.Exit(1)


@runs_app.command("land")
def land_run(
    name: str = typer.Argument(..., help="The run (runs/<id> or <id>)."),
    into: str = typer.Option("", "--into", help="Target branch (default: the run's target)."),
) -> None:
    """Merge a coding run's branch into a branch (fast-forward or merge commit), leaving your
    uncommitted work alone; a conflict names the files and changes nothing."""
    run_name = resource("runs", name)

    async def go() -> agents_pb2.Run | git_pb2.LandRunResponse:
        async with stubs() as (agents, git):
            answered = await _answer(agents, run_name, {"decision": "land", "into": into})
            if answered is not None:
                return answered
            reply: git_pb2.LandRunResponse = await git.LandRun(
                git_pb2.LandRunRequest(name=run_name, into=into)
            )
            return reply

    result = call_rpc(go)
    if isinstance(result, agents_pb2.Run):
        _settled(result)
        return
    how = "fast-forward" if result.fast_forward else "merge commit"
    console.print(
        said(
            f"{run_name}: landed into {result.into} ({how}, {result.commit[:12]}): "
            f"{', '.join(result.files)}"
            + (f"\n{result.updated_worktree} brought forward" if result.updated_worktree else "")
        )
    )


@runs_app.command("discard")
def discard_run(name: str = typer.Argument(..., help="The run (runs/<id> or <id>).")) -> None:
    """Remove a coding run's worktree and delete its branch."""
    run_name = resource("runs", name)

    async def go() -> agents_pb2.Run | git_pb2.DiscardRunResponse:
        async with stubs() as (agents, git):
            answered = await _answer(agents, run_name, {"decision": "discard"})
            if answered is not None:
                return answered
            reply: git_pb2.DiscardRunResponse = await git.DiscardRun(
                git_pb2.DiscardRunRequest(name=run_name)
            )
            return reply

    result = call_rpc(go)
    if isinstance(result, agents_pb2.Run):
        _settled(result)
        return
    console.print(
        said(
            f"{run_name}: deleted {result.branch} (was {result.commit[:12]}; "
            f"`git branch {result.branch} {result.commit}` brings it back)"
            + (f", removed {result.worktree}" if result.worktree else "")
        )
    )
