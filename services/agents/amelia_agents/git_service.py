"""GitService over gRPC: the branches coding runs leave, their diffs, landing and discarding.

A run is found in the store; its repository is its input's `repository`, checked against
CODE_ALLOWED_ROOTS again (the roots may have changed since it was created); its branch is
`amelia/<run uuid>` (see `gitrepo`). Landing or discarding an active run is refused: a paused
`develop` run is settled by answering its question. Both publish `git.landed` / `git.discarded`
on the run's subject, as the workflow does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

from amelia.v1 import git_pb2, git_pb2_grpc
from amelia_agents import convert, gitrepo
from amelia_agents.lifecycle import RunEvents
from amelia_agents.models import RunRow, RunState
from amelia_agents.store import Store
from amelia_agents.workflows.code import allowed_repository
from amelia_agents.worktree import CodeError
from amelia_common.errors import FailedPreconditionError, InvalidArgumentError
from amelia_common.settings import Settings

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]
M = TypeVar("M", bound=Message)

_CHANGES = {
    "added": git_pb2.FILE_CHANGE_ADDED,
    "modified": git_pb2.FILE_CHANGE_MODIFIED,
    "deleted": git_pb2.FILE_CHANGE_DELETED,
    "renamed": git_pb2.FILE_CHANGE_RENAMED,
}


@contextlib.contextmanager
def _refused_by_git() -> Iterator[None]:
    """What git refuses (a conflict, a missing branch, not a repository) as FAILED_PRECONDITION,
    its message kept."""
    try:
        yield
    except CodeError as exc:
        raise FailedPreconditionError(str(exc)) from None


def _message(message_type: type[M], source: Any, **overrides: Any) -> M:
    """A `message_type` with the fields of the dataclass `source` that it declares (the same
    names, meaning the same), then `overrides`."""
    declared = message_type.DESCRIPTOR.fields_by_name
    values = {f.name: getattr(source, f.name) for f in dataclasses.fields(source)}
    return message_type(**{k: v for k, v in values.items() if k in declared} | overrides)


def _branch_proto(info: gitrepo.RunBranch) -> git_pb2.RunBranch:
    return _message(git_pb2.RunBranch, info)


class GitServicer(git_pb2_grpc.GitServiceServicer):
    def __init__(self, settings: Settings, store: Store, events: RunEvents) -> None:
        self.settings = settings
        self.store = store
        self.events = events
        # One land or discard at a time per repository (in this process; git's compare-and-swap
        # ref updates guard the rest).
        self._locks: dict[Path, asyncio.Lock] = {}

    async def _run(self, name: str) -> tuple[RunRow, Path, str]:
        """The run, its repository's top level and its branch name."""
        run_id = convert.run_id(name)
        row = convert.found(await self.store.get_run(run_id), convert.run_name(run_id))
        repository = (row.input or {}).get("repository")
        if not repository:
            raise FailedPreconditionError(
                f"runs/{run_id} ({row.workflow or 'an agent run'}) works in no git repository"
            )
        try:
            path = allowed_repository(repository, self.settings)
        except ValueError as exc:
            raise FailedPreconditionError(str(exc)) from None
        with _refused_by_git():
            top = await gitrepo.toplevel(path)
        return row, top, gitrepo.run_branch(str(run_id))

    @contextlib.asynccontextmanager
    async def _settled_branch(
        self, name: str, action: str
    ) -> AsyncIterator[tuple[RunRow, Path, str]]:
        """The ended run `name`, its repository and its branch, the repository locked while
        `action` (land, discard) works on it; what git refuses is FAILED_PRECONDITION."""
        row, repository, branch = await self._run(name)
        self._settled(row, action)
        async with self._locks.setdefault(repository, asyncio.Lock()):
            with _refused_by_git():
                yield row, repository, branch

    def _settled(self, row: RunRow, action: str) -> None:
        if row.status in (RunState.QUEUED.value, RunState.RUNNING.value):
            raise FailedPreconditionError(
                f"runs/{row.id} is {row.status.lower()}: {action} it once it has ended"
            )
        if row.status == RunState.PAUSED.value:
            raise FailedPreconditionError(
                f"runs/{row.id} is paused on a question; answer it (`amelia runs resume "
                f"runs/{row.id} land|discard|keep`), or cancel it, before you {action} it here"
            )

    async def ListRepositories(
        self, request: git_pb2.ListRepositoriesRequest, context: Ctx
    ) -> git_pb2.ListRepositoriesResponse:
        roots = list(self.settings.CODE_ALLOWED_ROOTS)
        found = await asyncio.to_thread(
            gitrepo.find_repositories, roots, self.settings.worktree_dir
        )
        reply = git_pb2.ListRepositoriesResponse()
        for path in found:
            try:
                branches = await gitrepo.run_branches(path)
                current = await gitrepo.current_branch(path)
            except CodeError:
                continue  # not readable as a repository (half made, permissions): skip it
            reply.repositories.append(
                git_pb2.Repository(
                    path=str(path),
                    current_branch=current,
                    run_branches=[_branch_proto(b) for b in branches],
                )
            )
        return reply

    async def GetRunDiff(
        self, request: git_pb2.GetRunDiffRequest, context: Ctx
    ) -> git_pb2.GetRunDiffResponse:
        _, repository, branch = await self._run(request.name)
        with _refused_by_git():
            info, diff = await gitrepo.run_diff(repository, branch)
        reply = git_pb2.GetRunDiffResponse(
            branch=_branch_proto(info),
            repository=str(repository),
            head=info.head,
            additions=diff.additions,
            deletions=diff.deletions,
        )
        for f in diff.files:
            change = _CHANGES.get(f.change, git_pb2.FILE_CHANGE_UNSPECIFIED)
            reply.files.append(_message(git_pb2.FileDiff, f, change=change))
        for c in diff.commits:
            commit = reply.commits.add(sha=c.sha, subject=c.subject, author=c.author)
            commit.commit_time.FromSeconds(c.time)
        return reply

    async def LandRun(
        self, request: git_pb2.LandRunRequest, context: Ctx
    ) -> git_pb2.LandRunResponse:
        async with self._settled_branch(request.name, "land") as (row, repository, branch):
            try:
                info = await gitrepo.run_branch_info(repository, branch)
                into = request.into or info.target
                message = f"Land {branch} ({row.workflow or 'run'} runs/{row.id})"
                landed = await gitrepo.land_run(repository, branch, into, message)
            except gitrepo.InvalidBranchNameError as exc:
                raise InvalidArgumentError(f"into: {exc}") from None
        await self.events.publish(
            self.events.event(row, "git.landed", landed.event(repository, branch))
        )
        return _message(git_pb2.LandRunResponse, landed)

    async def DiscardRun(
        self, request: git_pb2.DiscardRunRequest, context: Ctx
    ) -> git_pb2.DiscardRunResponse:
        async with self._settled_branch(request.name, "discard") as (row, repository, branch):
            worktree, commit = await gitrepo.discard(repository, branch)
        data = gitrepo.discarded_event(repository, branch, worktree, commit)
        await self.events.publish(self.events.event(row, "git.discarded", data))
        return git_pb2.DiscardRunResponse(branch=branch, worktree=worktree, commit=commit)
