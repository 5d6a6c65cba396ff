"""Git worktrees for the `code` workflow: a fresh checkout per run, on its own branch, so a coding
agent never touches the user's working copy.

A worktree lives at `GIT_WORKTREE_DIR/<repo>-<run uuid>` on branch `amelia/<run uuid>`, made
from the base commit. Creating it again (a worker died and another picks the run up) first
removes what the earlier attempt left. Removing it deletes the branch too, unless the branch got
commits: those are kept (and reported), so removing a worktree never throws work away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from amelia_agents import runtime


class CodeError(runtime.NodeError):
    """The code workflow cannot go on; the message says why (it becomes the run's error)."""


def _git_env() -> dict[str, str]:
    # Never wait for a password prompt; messages in English so they read the same everywhere.
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


async def git(args: list[str], cwd: Path) -> str:
    """`git <args>` in `cwd`; its stdout, stripped. Failing: CodeError with git's message."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=str(cwd),
        env=_git_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        raise CodeError(f"git {args[0]} failed in {cwd}: {message}")
    return out.decode(errors="replace").strip()


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

    async def _discard(self) -> None:
        """Remove the worktree directory and git's record of it, whatever state they are in."""
        with contextlib.suppress(CodeError):
            await git(["worktree", "remove", "--force", "--force", str(self.path)], self.repository)
        if self.path.exists():
            await asyncio.to_thread(shutil.rmtree, self.path, True)
        with contextlib.suppress(CodeError):
            await git(["worktree", "prune"], self.repository)
