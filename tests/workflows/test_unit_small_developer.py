"""The small-model developer's parsing (workflows/small_developer.py) and the append tool's
joining (workflows/devtools.py), table-driven: what a 0.5B model writes around paths and code."""

from __future__ import annotations

from pathlib import Path

import pytest

from amelia_agents.workflows.devtools import appended
from amelia_agents.workflows.small_developer import code_in, named_files


@pytest.mark.parametrize(
    ("reply", "files"),
    [
        ("calc.py\ntest_calc.py", ["calc.py", "test_calc.py"]),
        ("- `calc.py`\n- ./tests/test_calc.py\n- calc.py", ["calc.py", "tests/test_calc.py"]),
        ("I will change calc.py, then README.md.", ["calc.py", "README.md"]),
        ("../outside.py\n/etc/passwd.txt\n.git/config.py", []),
        ("No files.", []),
    ],
)
def test_the_files_a_reply_names_stay_inside_the_worktree(
    tmp_path: Path, reply: str, files: list[str]
) -> None:
    assert named_files(reply, tmp_path.resolve()) == files


def test_at_most_five_files_are_taken(tmp_path: Path) -> None:
    reply = "\n".join(f"f{i}.py" for i in range(9))
    assert named_files(reply, tmp_path.resolve()) == [f"f{i}.py" for i in range(5)]


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("```python\ndef f():\n    pass\n```", "def f():\n    pass"),
        ("Here:\n```\nx = 1\n```\nand more ```y = 2```", "x = 1"),
        ("```python\ndef f():\n    pass", "def f():\n    pass"),  # cut short: no closing fence
        ("def f():\n    pass\n", "def f():\n    pass"),  # no fence at all
    ],
)
def test_the_code_of_a_reply(reply: str, code: str) -> None:
    assert code_in(reply) == code


@pytest.mark.parametrize(
    ("before", "content", "after"),
    [
        ("", "x = 1", "x = 1\n"),
        ("a = 0\n", "x = 1", "a = 0\n\nx = 1\n"),
        ("a = 0", "\n\nx = 1\n\n", "a = 0\n\nx = 1\n"),
        ("a = 0\n\n\n", "x = 1\n", "a = 0\n\nx = 1\n"),
    ],
)
def test_added_code_follows_what_the_file_holds(before: str, content: str, after: str) -> None:
    assert appended(before, content) == after
