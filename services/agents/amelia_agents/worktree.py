"""Git worktrees for the `code` workflow: a fresh checkout per run, on its own branch, so a coding
agent never touches the user's working copy.

A worktree lives at `GIT_WORKTREE_DIR/<repo>-<run uuid>` on branch `amelia/<run uuid>`, made
from the base commit. Creating it again (a worker died and another picks the run up) first
removes what the earlier attempt left, including its CLI if it still runs: a SIGKILLed worker
cannot kill its CLI's process group, so the group is recorded next to the worktree
(`<worktree>.pgid`, Linux) and killed by the next attempt. Removing a worktree deletes the branch
too, unless the branch got commits: those are kept (and reported), so removing a worktree never
throws work away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from amelia_agents import runtime


def _start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, from /proc), None if unknown or gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def kill_left_group(pgid: int, start: int) -> bool:
    """SIGKILL the process group an earlier attempt's CLI led (leader `pgid`, started at
    `start`). Linux does not reuse a pid still in use as a group id, so if the leader is gone
    the group's members are still the CLI's; if a process with that pid lives but started at
    another time, the pid was reused and nothing is killed."""
    leader = _start_time(pgid)
    if leader is not None and leader != start:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class CodeError(runtime.NodeError):
    """The code workflow cannot go on; the message says why (it becomes the run's error)."""


def _git_env() -> dict[str, str]:
    # Never wait for a password prompt; messages in English so they read the same everywhere.
    # (The repository's hooks run with this environment: none of the mesh's secrets.)
    return {**runtime.inherited_env(), "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


async def git_run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """`git <args>` in `cwd`: (exit status, stdout, stderr), whatever the status. `env` adds
    variables (a commit's identity) to the environment git always gets."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=str(cwd),
        env={**_git_env(), **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def git(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """`git <args>` in `cwd`; its stdout, stripped. Failing: CodeError with git's message."""
    code, out, err = await git_run(args, cwd, env)
    if code != 0:
        raise CodeError(f"git {args[0]} failed in {cwd}: {err.strip() or out.strip()}")
    return out.strip()


@dataclass
class Worktree:
    repository: Path  # the repository's top level
    path: Path
    branch: str
    base: str  # the commit it starts from

    async def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._discard()
        await git(
            ["worktree", "add", "-B", self.branch, str(self.path), self.base], self.repository
        )

    async def changes(self) -> tuple[list[str], list[str]]:
        """(files changed but not committed, commits made on the branch), as git shows them."""
        status = await git(["status", "--porcelain", "--untracked-files=all"], self.path)
        log = await git(["log", "--format=%h %s", f"{self.base}..HEAD"], self.path)
        files = [line[3:] for line in status.splitlines() if len(line) > 3]
        return files, log.splitlines()

    async def remove(self) -> bool:
        """Remove the worktree; returns whether its branch was kept (it has commits)."""
        try:
            commits = await git(
                ["rev-list", "--count", f"{self.base}..{self.branch}"], self.repository
            )
        except CodeError:
            commits = "0"
        await self._discard()
        if commits != "0":
            return True
        with contextlib.suppress(CodeError):
            await git(["branch", "-D", self.branch], self.repository)
        return False

    async def delete(self) -> None:
        """Remove the worktree (if any) and delete the branch, commits or not."""
        await self._discard()
        with contextlib.suppress(CodeError):
            await git(["branch", "-D", self.branch], self.repository)

    async def restore(self, head: str) -> None:
        """Bring the worktree back to commit `head` of its branch, as a run's checkpoint left
        it: made again if it is gone, an earlier attempt's CLI or test command stopped, and
        whatever that attempt changed or committed afterwards thrown away."""
        await asyncio.to_thread(self._stop_left_process)
        if not (self.path / ".git").exists():
            await self._discard()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            await git(["worktree", "add", "-B", self.branch, str(self.path), head], self.repository)
            return
        await git(["reset", "-q", "--hard", head], self.path)
        await git(["clean", "-q", "-d", "-f", "-f"], self.path)

    @property
    def pgid_file(self) -> Path:
        return self.path.with_name(self.path.name + ".pgid")

    def record_process(self, pid: int) -> None:
        """Note the CLI's process group (its pid: it leads its own session) and start time."""
        start = _start_time(pid)
        if start is not None:
            self.pgid_file.write_text(f"{pid} {start}\n")

    def forget_process(self) -> None:
        """The CLI is over (its group was killed with it): nothing left to stop later."""
        self.pgid_file.unlink(missing_ok=True)

    def _stop_left_process(self) -> None:
        try:
            pgid, start = (int(v) for v in self.pgid_file.read_text().split())
        except (OSError, ValueError):
            return
        kill_left_group(pgid, start)
        self.pgid_file.unlink(missing_ok=True)

    async def _discard(self) -> None:
        """Remove the worktree directory and git's record of it, whatever state they are in,
        after stopping a CLI an earlier attempt left running in it."""
        await asyncio.to_thread(self._stop_left_process)
        try:
            await git(["worktree", "remove", "--force", "--force", str(self.path)], self.repository)
            return
        except CodeError:
            pass  # not a worktree (any more), or half made: clean up by hand
        if self.path.exists():
            await asyncio.to_thread(shutil.rmtree, self.path, True)
        with contextlib.suppress(CodeError):
            await git(["worktree", "prune"], self.repository)
