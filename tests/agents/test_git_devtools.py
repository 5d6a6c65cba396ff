"""The built-in developer's tools stay inside their worktree: `..`, absolute paths, symlinks
(to a file, to a directory, dangling, in a loop) and `.git` are refused with a message the model
reads, and nothing outside is read or written. Inside, they list, read, write, edit, search and
run the test command (stopped at its timeout, with no mesh secret in its environment)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from amelia_agents.tools import Tool, ToolError
from amelia_agents.workflows.devtools import snapshot, workspace_tools


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text("def main():\n    return 1\n")
    (tmp_path / "secret.txt").write_text("outside\n")
    (tmp_path / "outside").mkdir()
    return root.resolve()


def tools(root: Path, **kwargs: object) -> dict[str, Tool]:
    return workspace_tools(root, **kwargs)  # type: ignore[arg-type]


async def refused(tool: Tool, args: dict[str, object]) -> str:
    with pytest.raises(ToolError) as info:
        await tool.run(args)
    return str(info.value)


async def test_paths_cannot_leave_the_worktree(tree: Path) -> None:
    outside = tree.parent
    (tree / "link-file").symlink_to(outside / "secret.txt")
    (tree / "link-dir").symlink_to(outside / "outside")
    (tree / "dangling").symlink_to(outside / "new.txt")
    (tree / "loop").symlink_to(tree / "loop")
    t = tools(tree)
    for path in ("../secret.txt", "src/../../secret.txt", "link-file", "link-dir/x.txt"):
        assert "outside the repository" in await refused(t["read_file"], {"path": path})
        for writer in ("write_file", "append_file"):
            assert "outside the repository" in await refused(
                t[writer], {"path": path, "content": "x"}
            )
    for writer in ("write_file", "append_file"):
        assert "outside the repository" in await refused(
            t[writer], {"path": "dangling", "content": "x"}
        )
    assert "absolute" in await refused(t["read_file"], {"path": str(outside / "secret.txt")})
    assert "cannot resolve" in await refused(t["read_file"], {"path": "loop"}) or (
        "not a file" in await refused(t["read_file"], {"path": "loop"})
    )
    assert "outside" in await refused(t["list_files"], {"path": ".."})
    assert "outside" in await refused(t["search"], {"pattern": "x", "path": "link-dir"})
    assert "outside" in await refused(
        t["edit_file"], {"path": "link-file", "old_text": "outside", "new_text": "pwned"}
    )
    for path in (".git/config", ".git/hooks/pre-commit", "src/../.git/HEAD"):
        assert ".git" in await refused(t["write_file"], {"path": path, "content": "x"})
        assert ".git" in await refused(t["append_file"], {"path": path, "content": "x"})
    # Nothing outside was read or changed.
    assert (outside / "secret.txt").read_text() == "outside\n"
    assert not (outside / "new.txt").exists() and not list((outside / "outside").iterdir())


async def test_tools_work_inside_the_worktree(tree: Path) -> None:
    t = tools(tree)
    assert "wrote" in await t["write_file"].run({"path": "pkg/new.py", "content": "X = 1\n"})
    assert (tree / "pkg" / "new.py").read_text() == "X = 1\n"
    assert "added" in await t["append_file"].run({"path": "pkg/new.py", "content": "Y = 2"})
    assert (tree / "pkg" / "new.py").read_text() == "X = 1\n\nY = 2\n"
    assert "is a directory" in await refused(t["append_file"], {"path": "pkg", "content": "x"})
    assert (await t["list_files"].run({})).split("\n") == ["pkg/new.py", "src/app.py"]
    assert await t["read_file"].run({"path": "src/app.py"}) == "def main():\n    return 1\n"
    await t["edit_file"].run({"path": "src/app.py", "old_text": "1", "new_text": "2"})
    assert (tree / "src" / "app.py").read_text().endswith("return 2\n")
    (tree / "src" / "dup.py").write_text("a\na\n")
    assert "2 times" in await refused(
        t["edit_file"], {"path": "src/dup.py", "old_text": "a", "new_text": "b"}
    )
    assert await t["search"].run({"pattern": "return [0-9]"}) == "src/app.py:2:    return 2"
    assert await t["search"].run({"pattern": "nowhere"}) == "no matches"
    assert "regular expression" in await refused(t["search"], {"pattern": "("})
    assert "run_tests" not in t  # no test command, no tool


async def test_the_test_command_runs_in_the_worktree_without_secrets_and_times_out(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMELIA_API_TOKEN", "s3cret")
    t = tools(tree, test_command="pwd; env; exit 3")
    result = await t["run_tests"].run({})
    assert result["exit_code"] == 3 and not result["passed"]
    assert result["output"].startswith(f"{tree}\n") and "s3cret" not in result["output"]
    assert "PATH=" in result["output"]

    pids: list[int] = []
    slow = tools(tree, test_command="sleep 60", test_timeout=0.5, on_process=pids.append)
    assert "longer than 0.5s" in await refused(slow["run_tests"], {})
    assert not living_members(pids[0])


def living_members(pgid: int) -> list[int]:
    """The processes of group `pgid` that are not zombies (a killed child of a killed shell
    waits for init to reap it)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


async def test_the_snapshot_shows_small_text_files_and_nothing_outside(tree: Path) -> None:
    outside = tree.parent
    (tree / "link-file").symlink_to(outside / "secret.txt")
    (tree / "blob.bin").write_bytes(b"\0\1\2")
    (tree / "big.txt").write_text("x" * 10_000)
    (tree / ".gitignore").write_text("ignored.txt\n")
    (tree / "ignored.txt").write_text("not listed\n")
    shown = await snapshot(tree, max_chars=2000)
    listed = shown.split("\n\n")[0].splitlines()[1:]
    assert listed == [".gitignore", "big.txt", "blob.bin", "link-file", "src/app.py"]
    assert "--- src/app.py\ndef main():\n    return 1\n" in shown
    assert "outside" not in shown and "--- link-file" not in shown
    assert "--- blob.bin" not in shown and "--- big.txt" not in shown
    assert len(shown) <= 2000
