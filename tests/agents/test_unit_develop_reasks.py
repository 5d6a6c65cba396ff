"""`develop`'s two questions asked again after an answer they do not take: each note names the
question's own answers (QA F10: approve_diff said `'perhaps' is neither an approval nor a
rejection` while it takes land / discard / keep). The workflow's own graph, in process, on
LangGraph's in-memory checkpointer and a real git repository."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from amelia_agents.workflows.develop import build_develop


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _repository(root: Path) -> dict[str, Any]:
    """A repository with a branch one commit ahead of main, as develop's checkout leaves it."""
    repo = root / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# r\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")
    base = _git(repo, "rev-parse", "HEAD")
    _git(repo, "checkout", "-q", "-b", "amelia/run")
    (repo / "greet.py").write_text("def greet():\n    return 'hi'\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "greet")
    head = _git(repo, "rev-parse", "HEAD")
    return {
        "repository": str(repo),
        "path": str(repo),
        "branch": "amelia/run",
        "base": base,
        "target": "main",
        "head": head,
    }


async def _note_after(answer: str, values: dict[str, Any], as_node: str) -> tuple[str, str]:
    """The node that asks after `as_node` wrote `values`, and its note once `answer` came."""
    graph = build_develop(None).compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": str(uuid.uuid4())}}
    await graph.aupdate_state(config, values, as_node=as_node)
    await graph.ainvoke(None, config)
    await graph.ainvoke(Command(resume=answer), config)
    state = await graph.aget_state(config)
    [task] = state.tasks
    [asked] = task.interrupts
    return task.name, str(asked.value.get("note"))


async def test_the_plans_question_asked_again_names_approve_and_reject() -> None:
    node, note = await _note_after("perhaps", {"plan": "1. Add greet()."}, "planning")
    assert node == "approve_plan"
    assert note == (
        "'perhaps' is not one of: approve [feedback], reject [reason]; please answer again."
    )


async def test_the_diffs_question_asked_again_names_land_discard_and_keep(
    tmp_path: Path,
) -> None:
    values = {
        "worktree": _repository(tmp_path),
        "review": {"verdict": "approve", "comments": "APPROVE"},
        "round": 1,
    }
    node, note = await _note_after("perhaps", values, "review")
    assert node == "approve_diff"
    assert note == (
        "'perhaps' is not one of: land [into <branch>], discard, keep; please answer again."
    )
