"""The built-in developer's tools: files of one worktree, and its test command.

Every path a model gives is relative to the worktree's root and is resolved (`..` and symlinks
followed) before use; a path that then lies outside the root, or inside git's own `.git`, is
refused with an error the model reads. Writes open the resolved path with O_NOFOLLOW. The test
command runs like the `code` workflow's CLI: in its own process group, with only the inherited
environment (no mesh secrets), streamed as `run.tool.output`, killed on timeout or cancel, and
recorded next to the worktree so the next attempt kills it if the worker dies meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amelia_agents import runtime
from amelia_agents.tools import Tool, ToolError
from amelia_agents.worktree import git_run

MAX_READ_BYTES = 512 * 1024
MAX_LISTED = 1000
MAX_MATCHES = 200
MAX_TEST_OUTPUT = 12 * 1024
# The repository shown to the developer up front (file list and small files), in characters.
MAX_SNAPSHOT_CHARS = 6000


def confine(root: Path, value: Any, *, name: str = "path") -> Path:
    """`value` (a path relative to `root`) resolved, if it stays inside `root` and out of
    `.git`; ToolError otherwise. `root` must be resolved already."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ToolError(f"argument {name!r} must be a path relative to the repository root")
    relative = Path(value)
    if relative.is_absolute():
        raise ToolError(f"{value!r} is absolute: paths are relative to the repository root")
    try:
        full = (root / relative).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ToolError(f"cannot resolve {value!r}: {exc}") from None
    if full != root and not full.is_relative_to(root):
        raise ToolError(f"{value!r} is outside the repository; paths must stay inside it")
    if ".git" in full.relative_to(root).parts or ".git" in relative.parts:
        raise ToolError(f"{value!r} is inside .git, which the developer may not touch")
    return full


def _text(args: dict[str, Any], name: str, *, empty_ok: bool = False) -> str:
    value = args.get(name)
    if not isinstance(value, str) or (not empty_ok and not value):
        raise ToolError(f"argument {name!r} must be a{'' if empty_ok else ' non-empty'} string")
    return value


def _read(path: Path, shown: str) -> str:
    if not path.is_file():
        raise ToolError(f"{shown!r} is not a file")
    if path.stat().st_size > MAX_READ_BYTES:
        raise ToolError(f"{shown!r} is larger than {MAX_READ_BYTES} bytes")
    return path.read_text(errors="replace")


def _write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(content)


def appended(before: str, content: str) -> str:
    """`content` added after `before`: one blank line between them, a newline at the end."""
    body = content.strip("\n") + "\n"
    return before.rstrip("\n") + "\n\n" + body if before.strip() else body


async def snapshot(root: Path, max_chars: int = MAX_SNAPSHOT_CHARS) -> str:
    """The worktree's files as the developer first sees them: the list (tracked and new, not
    ignored) and the content of the small text files, smallest first, within `max_chars`.
    A small model often cannot go on after reading a file (see llm/local_provider.py: it gets
    one round of tools), so it must be able to write its change straight away."""
    code, out, _ = await git_run(
        ["ls-files", "-z", "--cached", "--others", "--exclude-standard"], root
    )
    files = sorted({f for f in out.split("\0") if f}) if code == 0 else []
    listed = files[:MAX_LISTED]
    parts = ["Files in the repository:", *listed]
    if len(files) > len(listed):
        parts.append(f"… {len(files) - len(listed)} more")
    budget = max_chars - sum(len(p) + 1 for p in parts)

    def sized(name: str) -> tuple[int, str]:
        path = root / name
        try:
            confine(root, name)
        except ToolError:  # a symlink out of the worktree: not shown
            return (-1, name)
        return (path.stat().st_size if path.is_file() and not path.is_symlink() else -1, name)

    for size, name in sorted(await asyncio.to_thread(lambda: [sized(f) for f in listed])):
        if size < 0 or size > budget:
            continue
        data = await asyncio.to_thread((root / name).read_bytes)
        if b"\0" in data:
            continue
        block = f"\n--- {name}\n{data.decode(errors='replace')}"
        if len(block) > budget:
            continue
        parts.append(block)
        budget -= len(block)
    return "\n".join(parts)


def workspace_tools(
    root: Path,
    *,
    test_command: str = "",
    test_timeout: float = 300.0,
    on_process: Callable[[int], None] | None = None,
) -> dict[str, Tool]:
    """The developer's tools over the worktree at `root` (resolved)."""

    async def list_files(args: dict[str, Any]) -> Any:
        where = confine(root, args.get("path") or ".")
        code, out, err = await git_run(
            ["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", str(where)],
            root,
        )
        if code != 0:
            raise ToolError(err.strip())
        files = sorted({f for f in out.split("\0") if f})
        more = len(files) - MAX_LISTED
        return "\n".join(files[:MAX_LISTED]) + (f"\n… {more} more" if more > 0 else "")

    async def read_file(args: dict[str, Any]) -> Any:
        shown = _text(args, "path")
        return await asyncio.to_thread(_read, confine(root, shown), shown)

    def file_to_write(args: dict[str, Any]) -> tuple[str, Path]:
        """The `path` argument as given and resolved inside the worktree: not a directory."""
        shown = _text(args, "path")
        path = confine(root, shown)
        if path == root or path.is_dir():
            raise ToolError(f"{shown!r} is a directory")
        return shown, path

    async def write_file(args: dict[str, Any]) -> Any:
        shown, path = file_to_write(args)
        content = _text(args, "content", empty_ok=True)
        await asyncio.to_thread(_write, path, content)
        return f"wrote {len(content.encode())} bytes to {shown}"

    async def append_file(args: dict[str, Any]) -> Any:
        shown, path = file_to_write(args)
        content = _text(args, "content")
        before = await asyncio.to_thread(_read, path, shown) if path.exists() else ""
        await asyncio.to_thread(_write, path, appended(before, content))
        return f"added {len(content.encode())} bytes at the end of {shown}"

    async def edit_file(args: dict[str, Any]) -> Any:
        shown = _text(args, "path")
        old = _text(args, "old_text")
        new = _text(args, "new_text", empty_ok=True)
        path = confine(root, shown)
        text = await asyncio.to_thread(_read, path, shown)
        count = text.count(old)
        if count != 1:
            where = "does not occur" if count == 0 else f"occurs {count} times"
            raise ToolError(f"old_text {where} in {shown}; it must occur exactly once")
        await asyncio.to_thread(_write, path, text.replace(old, new, 1))
        return f"edited {shown}"

    async def search(args: dict[str, Any]) -> Any:
        pattern = _text(args, "pattern")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ToolError(f"not a regular expression: {exc}") from None
        where = confine(root, args.get("path") or ".")
        code, out, err = await git_run(
            ["grep", "-n", "-I", "--untracked", "-E", "-e", pattern, "--", str(where)], root
        )
        if code == 1:
            return "no matches"
        if code != 0:
            raise ToolError(err.strip())
        lines = out.splitlines()
        more = len(lines) - MAX_MATCHES
        return "\n".join(lines[:MAX_MATCHES]) + (f"\n… {more} more" if more > 0 else "")

    async def run_tests(_args: dict[str, Any]) -> Any:
        try:
            result = await runtime.run_process(
                ["sh", "-c", test_command],
                cwd=root,
                timeout=test_timeout,
                tool="run_tests",
                on_start=on_process,
            )
        except TimeoutError:
            raise ToolError(
                f"the tests took longer than {test_timeout:g}s and were stopped"
            ) from None
        output = result.output[-MAX_TEST_OUTPUT:]
        return {"exit_code": result.returncode, "passed": result.returncode == 0, "output": output}

    path_arg = {"type": "string", "description": "Relative to the repository root."}
    path_and_content = {
        "type": "object",
        "properties": {"path": path_arg, "content": {"type": "string"}},
        "required": ["path", "content"],
    }
    tools = [
        Tool(
            "list_files",
            "Lists the repository's files (tracked and new, not ignored) under a directory.",
            {"type": "object", "properties": {"path": path_arg}},
            list_files,
        ),
        Tool(
            "read_file",
            "Returns a file's content.",
            {"type": "object", "properties": {"path": path_arg}, "required": ["path"]},
            read_file,
        ),
        Tool(
            "write_file",
            "Creates or replaces a file with the given content (directories are made).",
            path_and_content,
            write_file,
        ),
        Tool(
            "append_file",
            "Adds content at the end of a file (made if missing); what the file holds stays.",
            path_and_content,
            append_file,
        ),
        Tool(
            "edit_file",
            "Replaces old_text, which must occur exactly once in the file, with new_text.",
            {
                "type": "object",
                "properties": {
                    "path": path_arg,
                    "old_text": {"type": "string"},
                    "new_text": {"type": "string"},
                },
                "required": ["path", "old_text", "new_text"],
            },
            edit_file,
        ),
        Tool(
            "search",
            "Finds lines matching an extended regular expression; returns path:line:text.",
            {
                "type": "object",
                "properties": {"pattern": {"type": "string"}, "path": path_arg},
                "required": ["pattern"],
            },
            search,
        ),
    ]
    if test_command:
        tools.append(
            Tool(
                "run_tests",
                f"Runs the repository's tests (`{test_command}`); returns the exit code and "
                "the end of the output.",
                {"type": "object", "properties": {}},
                run_tests,
                timeout=test_timeout + 10,
            )
        )
    return {t.name: t for t in tools}
