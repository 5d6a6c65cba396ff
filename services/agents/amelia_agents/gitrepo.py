"""What coding runs leave in git, read and settled with git itself: a run's branch, its diff,
landing it into a target branch, discarding it. Shared by the `develop` workflow and GitService.

A run works on branch `amelia/<run uuid>` (in a worktree under GIT_WORKTREE_DIR). `develop`
records where it started and where it should land in the branch's own configuration
(`branch.amelia/<run>.ameliaBase`, `.ameliaTarget`), so the record lives and dies with the branch;
for branches without it (the `code` workflow's) the base is the merge base with the branch
checked out in the repository.

Landing never checks anything out in the user's working copy: a fast-forward or a merge commit
is computed with plumbing (`git merge-tree --write-tree`, `git commit-tree`) and only then is the
target moved — with `git update-ref` (compare-and-swap on its old value), or, when a working
tree has the target checked out, with `git merge --ff-only` there, which brings that checkout
along and keeps its uncommitted changes (git refuses, and nothing moves, when they would be
overwritten). A conflict changes nothing and names the files.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amelia_agents.worktree import CodeError, Worktree, git, git_run

BRANCH_PREFIX = "amelia/"
# A commit's identity when the repository has none configured (env vars still win).
IDENTITY = {
    "GIT_AUTHOR_NAME": "Amelia",
    "GIT_AUTHOR_EMAIL": "amelia@localhost",
    "GIT_COMMITTER_NAME": "Amelia",
    "GIT_COMMITTER_EMAIL": "amelia@localhost",
}
MAX_FILE_PATCH_CHARS = 256 * 1024
MAX_PATCH_CHARS = 2 * 1024 * 1024
SCAN_DEPTH = 3


class GitStateError(CodeError):
    """The repository is not in a state the operation needs (no branch, nothing to land, the
    target checked out with changes in the way); the message says which and what to do."""


class InvalidBranchNameError(CodeError):
    """A target branch name git would not accept."""


class LandConflictError(GitStateError):
    def __init__(self, into: str, branch: str, files: list[str]) -> None:
        super().__init__(
            f"{branch} conflicts with {into} in {', '.join(files)}; nothing was changed "
            f"(merge {into} into {branch} and resolve them, or discard the run)"
        )
        self.files = files


def run_branch(run_id: str) -> str:
    return BRANCH_PREFIX + run_id.removeprefix("runs/")


def identity_env() -> dict[str, str]:
    """IDENTITY, with the worker's own GIT_AUTHOR_*/GIT_COMMITTER_* taking precedence."""
    return {k: os.environ.get(k) or v for k, v in IDENTITY.items()}


async def toplevel(path: Path) -> Path:
    try:
        top = Path(await git(["rev-parse", "--show-toplevel"], path))
    except CodeError:
        raise GitStateError(f"{path} is not in a git repository") from None
    return await asyncio.to_thread(top.resolve)


async def current_branch(repository: Path) -> str:
    code, out, _ = await git_run(["symbolic-ref", "--short", "-q", "HEAD"], repository)
    return out.strip() if code == 0 else ""


async def commit_of(repository: Path, ref: str) -> str:
    """The commit `ref` names, or "" when it names none."""
    code, out, _ = await git_run(
        ["rev-parse", "--verify", "-q", "--end-of-options", f"{ref}^{{commit}}"], repository
    )
    return out.strip() if code == 0 else ""


async def is_ancestor(repository: Path, older: str, newer: str) -> bool:
    code, _, _ = await git_run(["merge-base", "--is-ancestor", older, newer], repository)
    return code == 0


async def record_branch(repository: Path, branch: str, base: str, target: str) -> None:
    await git(["config", f"branch.{branch}.ameliaBase", base], repository)
    await git(["config", f"branch.{branch}.ameliaTarget", target], repository)


async def _config(repository: Path, key: str) -> str:
    code, out, _ = await git_run(["config", "--get", key], repository)
    return out.strip() if code == 0 else ""


async def worktrees(repository: Path) -> dict[str, Path]:
    """Checked-out branches (`refs/heads/...`) -> the working tree that has each."""
    out = await git(["worktree", "list", "--porcelain"], repository)
    found: dict[str, Path] = {}
    path: Path | None = None
    for line in out.splitlines():
        if line.startswith("worktree "):
            path = Path(line.removeprefix("worktree "))
        elif line.startswith("branch ") and path is not None:
            found[line.removeprefix("branch ")] = path
    return found


@dataclass
class RunBranch:
    run: str
    branch: str
    base: str
    target: str
    worktree: str
    commits_ahead: int
    head: str


async def run_branch_info(repository: Path, branch: str) -> RunBranch:
    """Where a run's branch stands; GitStateError when it does not exist."""
    head = await commit_of(repository, f"refs/heads/{branch}")
    if not head:
        raise GitStateError(
            f"there is no branch {branch} in {repository}: the run made none yet, or it was "
            "landed or discarded"
        )
    target = await _config(repository, f"branch.{branch}.ameliaTarget")
    base = await _config(repository, f"branch.{branch}.ameliaBase")
    if not base:
        target = target or await current_branch(repository)
        against = await commit_of(repository, f"refs/heads/{target}") if target else ""
        base = (await git(["merge-base", against, head], repository)) if against else head
    ahead = int(await git(["rev-list", "--count", f"{base}..{head}"], repository))
    tree = (await worktrees(repository)).get(f"refs/heads/{branch}")
    return RunBranch(
        run="runs/" + branch.removeprefix(BRANCH_PREFIX),
        branch=branch,
        base=base,
        target=target,
        worktree=str(tree) if tree else "",
        commits_ahead=ahead,
        head=head,
    )


# diffs -------------------------------------------------------------------------------------


@dataclass
class FileDiff:
    path: str
    old_path: str = ""
    change: str = "modified"  # added, modified, deleted, renamed
    additions: int = 0
    deletions: int = 0
    binary: bool = False
    patch: str = ""
    truncated: bool = False


@dataclass
class Commit:
    sha: str
    subject: str
    author: str
    time: int


@dataclass
class Diff:
    base: str
    head: str
    files: list[FileDiff] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)

    @property
    def additions(self) -> int:
        return sum(f.additions for f in self.files)

    @property
    def deletions(self) -> int:
        return sum(f.deletions for f in self.files)

    @property
    def patch(self) -> str:
        return "".join(f.patch for f in self.files)

    def summary(self) -> dict[str, Any]:
        """The diff without its patch text (for events and the run's state)."""
        return {
            "base": self.base,
            "head": self.head,
            "additions": self.additions,
            "deletions": self.deletions,
            "files": [
                {
                    "path": f.path,
                    "old_path": f.old_path,
                    "change": f.change,
                    "additions": f.additions,
                    "deletions": f.deletions,
                    "binary": f.binary,
                }
                for f in self.files
            ],
            "commits": len(self.commits),
        }


_CHANGES = {"A": "added", "M": "modified", "T": "modified", "D": "deleted", "R": "renamed"}


def _split_z(text: str) -> list[str]:
    return text.split("\0")[:-1] if text else []


def _files(name_status: str, numstat: str) -> list[FileDiff]:
    files: list[FileDiff] = []
    items = _split_z(name_status)
    i = 0
    while i < len(items):
        status = items[i]
        if status[:1] in ("R", "C"):
            files.append(FileDiff(path=items[i + 2], old_path=items[i + 1], change="renamed"))
            i += 3
        else:
            files.append(FileDiff(path=items[i + 1], change=_CHANGES.get(status[:1], "modified")))
            i += 2
    # numstat -z: "added\tdeleted\tpath\0", or "added\tdeleted\t\0old\0new\0" for a rename.
    stats = _split_z(numstat)
    j = 0
    for f in files:
        if j >= len(stats):
            break
        added, deleted, path = stats[j].split("\t", 2)
        j += 1 if path else 3
        f.binary = added == "-"
        f.additions = 0 if f.binary else int(added)
        f.deletions = 0 if f.binary else int(deleted)
    return files


def _patches(patch: str) -> list[str]:
    """The whole patch cut into its files' patches (a content line never starts with `diff`:
    it has a ' ', '+' or '-' in front)."""
    if not patch:
        return []
    parts = patch.removesuffix("\n").split("\ndiff --git ")
    return [parts[0] + "\n", *(f"diff --git {p}\n" for p in parts[1:])]


async def diff(repository: Path, base: str, head: str) -> Diff:
    """`base`..`head`: files (renames found), line counts, per-file patches, commits."""
    common = ["-M", "--no-color", "--no-ext-diff", "--no-textconv", base, head, "--"]
    name_status, numstat, patch, log = await asyncio.gather(
        git_run(["diff", "-z", "--name-status", *common], repository),
        git_run(["diff", "-z", "--numstat", *common], repository),
        git_run(["-c", "core.quotePath=false", "diff", *common], repository),
        git_run(
            ["log", "--reverse", "--format=%H%x00%s%x00%an <%ae>%x00%ct%x00", f"{base}..{head}"],
            repository,
        ),
    )
    for code, _, err in (name_status, numstat, patch, log):
        if code != 0:
            raise GitStateError(f"git diff failed in {repository}: {err.strip()}")
    result = Diff(base=base, head=head, files=_files(name_status[1], numstat[1]))
    budget = MAX_PATCH_CHARS
    for f, text in zip(result.files, _patches(patch[1]), strict=False):
        limit = min(MAX_FILE_PATCH_CHARS, budget)
        f.truncated = len(text) > limit
        f.patch = text[:limit]
        budget -= len(f.patch)
    fields = _split_z(log[1].replace("\n", ""))
    for k in range(0, len(fields) - 3, 4):
        sha, subject, author, time = fields[k : k + 4]
        result.commits.append(Commit(sha, subject, author, int(time or 0)))
    return result


async def run_diff(repository: Path, branch: str) -> tuple[RunBranch, Diff]:
    info = await run_branch_info(repository, branch)
    return info, await diff(repository, info.base, info.head)


# landing and discarding --------------------------------------------------------------------


@dataclass
class Landed:
    into: str
    commit: str
    fast_forward: bool
    files: list[str]
    updated_worktree: str

    def event(self, repository: Path, branch: str) -> dict[str, Any]:
        """The `git.landed` event's data."""
        return {
            "branch": branch,
            "repository": str(repository),
            "into": self.into,
            "commit": self.commit,
            "fast_forward": self.fast_forward,
            "files": self.files,
        }


def discarded_event(repository: Path, branch: str, worktree: str, commit: str) -> dict[str, Any]:
    """The `git.discarded` event's data."""
    return {"branch": branch, "repository": str(repository), "worktree": worktree, "commit": commit}


async def land(repository: Path, branch: str, into: str, message: str) -> Landed:
    """Merge `branch` into branch `into` (see the module docstring); the run's worktree and
    branch stay (see `land_run`)."""
    if not into:
        raise GitStateError("no target branch: name one (LandRun.into, --into)")
    if into.startswith("-") or "\0" in into:
        raise InvalidBranchNameError(f"{into!r} is not a branch name")
    code, _, _ = await git_run(["check-ref-format", "--branch", into], repository)
    if code != 0:
        raise InvalidBranchNameError(f"{into!r} is not a branch name")
    old = await commit_of(repository, f"refs/heads/{into}")
    if not old:
        raise GitStateError(f"there is no branch {into} in {repository} to land into")
    head = await commit_of(repository, f"refs/heads/{branch}")
    if not head:
        raise GitStateError(f"there is no branch {branch} in {repository} to land")
    if await is_ancestor(repository, head, old):
        raise GitStateError(f"{into} already has everything {branch} has: nothing to land")
    if await is_ancestor(repository, old, head):
        new, fast_forward = head, True
    else:
        code, out, err = await git_run(
            ["merge-tree", "--write-tree", "--name-only", "--no-messages", old, head], repository
        )
        if code == 1:
            files = list(dict.fromkeys(line for line in out.splitlines()[1:] if line))
            raise LandConflictError(into, branch, files)
        if code != 0:
            raise GitStateError(f"git merge-tree failed in {repository}: {err.strip()}")
        tree = out.splitlines()[0]
        new = await git(
            ["commit-tree", tree, "-p", old, "-p", head, "-m", message],
            repository,
            env=identity_env(),
        )
        fast_forward = False
    files = (await git(["diff", "--name-only", "-z", old, new], repository)).split("\0")
    checkout = (await worktrees(repository)).get(f"refs/heads/{into}")
    if checkout is not None:
        code, out, err = await git_run(["merge", "--ff-only", "-q", new], checkout)
        if code != 0:
            raise GitStateError(
                f"{into} is checked out in {checkout} and git would not bring that checkout "
                f"forward: {(err or out).strip()}; nothing was changed (commit or stash those "
                "changes, or land into another branch)"
            )
    else:
        await git(
            ["update-ref", "-m", f"amelia: land {branch}", f"refs/heads/{into}", new, old],
            repository,
        )
    return Landed(
        into=into,
        commit=new,
        fast_forward=fast_forward,
        files=[f for f in files if f],
        updated_worktree=str(checkout) if checkout is not None else "",
    )


async def discard(repository: Path, branch: str) -> tuple[str, str]:
    """Remove the branch's worktree and delete the branch: (worktree removed, its tip)."""
    head = await commit_of(repository, f"refs/heads/{branch}")
    if not head:
        raise GitStateError(
            f"there is no branch {branch} in {repository}: it was landed or discarded already"
        )
    path = (await worktrees(repository)).get(f"refs/heads/{branch}")
    if path is None:
        await git(["branch", "-D", branch], repository)
    else:
        await Worktree(repository=repository, path=path, branch=branch, base=head).delete()
    return (str(path) if path else "", head)


async def land_run(repository: Path, branch: str, into: str, message: str) -> Landed:
    """Land the run's branch, then remove its worktree and branch (all of it is in `into`)."""
    landed = await land(repository, branch, into, message)
    await discard(repository, branch)
    return landed


# repositories ------------------------------------------------------------------------------


def find_repositories(roots: list[Path], skip: Path | None = None) -> list[Path]:
    """Git repositories (a `.git` directory) at most SCAN_DEPTH levels under `roots`; a
    repository's own subdirectories are not searched, nor `skip` (the worktrees)."""
    found: list[Path] = []

    def walk(path: Path, depth: int) -> None:
        if skip is not None and path == skip:
            return
        if (path / ".git").is_dir():
            found.append(path)
            return
        if depth >= SCAN_DEPTH:
            return
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return
        for child in children:
            if not child.name.startswith("."):
                walk(child, depth + 1)

    for root in roots:
        walk(root.expanduser().resolve(), 0)
    return sorted(dict.fromkeys(found))


async def run_branches(repository: Path) -> list[RunBranch]:
    out = await git(
        ["for-each-ref", "--format=%(refname:short)", f"refs/heads/{BRANCH_PREFIX}"], repository
    )
    return [await run_branch_info(repository, name) for name in out.splitlines() if name]
