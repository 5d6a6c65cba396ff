"""A thread's checkpoints (GetThreadState / ListThreadHistory's `ThreadState`) in words, for the
Threads screens: who wrote a checkpoint, where the history branches, the conversation kept in
`messages`, and values a person reads. Pure (no widgets), as the dashboard's checkpoint.js.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.text import Text

from amelia_cli.tui.eventline import question_of

SOURCE_WORDS = {"input": "input", "loop": "node", "update": "edit", "fork": "fork"}
ROLE_STYLE = {
    "user": "bold cyan",
    "human": "bold cyan",
    "assistant": "bold green",
    "ai": "bold green",
}


def source_of(state: dict[str, Any]) -> str:
    """LangGraph's `metadata.source` in a word: input, node (a node ran), edit, fork."""
    source = str((state.get("metadata") or {}).get("source") or "")
    return SOURCE_WORDS.get(source, source or "?")


def writers_of(state: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[str]:
    """The nodes that wrote `state`: its parent's tasks that finished (their update is set);
    [] when the parent is not loaded."""
    parent = by_id.get(str(state.get("parentCheckpoint") or ""))
    if parent is None:
        return []
    return [
        str(task.get("node", ""))
        for task in parent.get("tasks") or []
        if task.get("update") is not None
    ]


def flow_of(state: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    """`draft → approve`: who wrote the checkpoint (when known) and what runs next."""
    writers = writers_of(state, by_id) or (["edit"] if source_of(state) == "edit" else [])
    after = ", ".join(state.get("next") or []) or "end"
    return f"{', '.join(writers)} → {after}" if writers else f"→ {after}"


@dataclass
class Branches:
    """Where a history (newest first) is not a straight line: `forks` are checkpoints whose
    parent is not the checkpoint listed just below them (a branch made from an older one), and
    `points` are checkpoints that more than one checkpoint continues from."""

    forks: set[str]
    points: set[str]


def branches_of(history: list[dict[str, Any]]) -> Branches:
    children: dict[str, int] = {}
    forks: set[str] = set()
    for index, state in enumerate(history):
        parent = str(state.get("parentCheckpoint") or "")
        if not parent:
            continue
        children[parent] = children.get(parent, 0) + 1
        below = history[index + 1] if index + 1 < len(history) else None
        if below is not None and below.get("checkpoint") != parent:
            forks.add(str(state.get("checkpoint")))
    return Branches(forks, {checkpoint for checkpoint, n in children.items() if n > 1})


def conversation_of(values: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The state's `messages` as (role, text), or None when it keeps none (or they are not
    role/content messages). Content given as parts keeps their text."""
    messages = values.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    if not all(isinstance(m, dict) and ("role" in m or "type" in m) for m in messages):
        return None
    return [(str(m.get("role") or m.get("type")), _text(m.get("content"))) for m in messages]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part["text"])
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else json.dumps(part, ensure_ascii=False)
            for part in content
        )
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def conversation_text(turns: list[tuple[str, str]]) -> Text:
    text = Text()
    for role, body in turns:
        if text:
            text.append("\n")
        text.append(f"{role}\n", style=ROLE_STYLE.get(role, "bold"))
        text.append(f"{body.strip()}\n")
    return text


def values_text(values: dict[str, Any]) -> Group:
    """Each key in bold, its value under it: text as text, anything else as indented JSON; a
    conversation is counted (the Messages tab shows it). A line too long for the screen wraps
    under its own indentation (QA s26: a JSON value's continuation lines began at the left
    edge)."""
    if not values:
        return Group(Text("(no values)", style="dim"))
    parts: list[RenderableType] = []
    for key, value in values.items():
        head = Text(f"{key}", style="bold")
        if key == "messages" and conversation_of(values) is not None:
            head.append(f"  {plural(len(value), 'message')} (m shows them)", style="dim")
            parts.append(head)
            continue
        if isinstance(value, str) and value.strip():
            parts += [head, *_indented(value)]
        elif value is None or isinstance(value, str | bool | int | float) or value in ([], {}):
            head.append(f"  {json.dumps(value, ensure_ascii=False)}")
            parts.append(head)
        else:
            parts += [head, *_indented(json.dumps(value, indent=2, ensure_ascii=False))]
    return Group(*parts)


def _indented(body: str) -> list[RenderableType]:
    """`body`'s lines two cells in, each wrapping under its own indentation."""
    lines: list[RenderableType] = []
    for line in body.strip("\n").splitlines():
        text = line.lstrip(" ")
        lines.append(Padding(Text(text), (0, 0, 0, 2 + len(line) - len(text))))
    return lines


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def questions_of(state: dict[str, Any]) -> list[tuple[str, str]]:
    """The questions waiting at a checkpoint: (node, question)."""
    return [
        (str(i.get("node") or "question"), question_of(i.get("value")))
        for i in state.get("interrupts") or []
    ]
