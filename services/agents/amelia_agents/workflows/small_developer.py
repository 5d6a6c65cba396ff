"""The built-in developer for a model too small for the tool loop (`local:` models): it drafts
additions file by file, and with a test command keeps only a draft the tests pass.

What the default local model (qwen2.5-coder-0.5b) did as the tool-loop developer, asked to add
`subtract` and its test (bench/develop_local.py, 5 of 5 tries failed): with write_file it
rewrote calc.py whole and dropped `add`; offered several tools it called each once, in the
order listed; shown pytest's failure of an assertion it wrote (`subtract(2, 3) == 5`), it wrote
the same assertion again. What it does well is write the new code for one file when shown that
file. So this developer, in one round:

1. asks which files to add code to or create (paths, one per line; any path outside the
   worktree is refused by the tools' `confine`, as for every tool);
2. asks, file by file, for the code to add at its end (one fenced block), and adds it with the
   `append_file` tool (`run.tool.called` / `run.tool.result` as in the tool loop);
3. with a test command, runs the tests (`run_tests`): a draft they fail is taken back (the
   worktree restored to the round's commit) and drawn again, shown what it added and how the
   tests failed, at a temperature of at least `REDRAW_TEMPERATURE`, at most `MAX_DRAFTS` drafts.
   (The 1.5B model's first drafts added `test_subtract` without importing `subtract`.)
   No draft passing leaves the round's commit as it was, and the report says so: a small model
   never leaves code on the branch that breaks the tests. Without a test command the first
   draft stays.

It can only add code: changing existing lines needs a model able to use the tool loop.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from amelia_agents import runtime
from amelia_agents.llm import ChatMessage, ToolCall
from amelia_agents.tools import Tool, ToolError
from amelia_agents.tools.loop import run_tool_call
from amelia_agents.workflows.devtools import confine

MAX_DRAFTS = 4
MAX_FILES = 5
REDRAW_TEMPERATURE = 0.7
MAX_FILE_CHARS = 6000
MAX_FAILURE_CHARS = 1500
FILES_PROMPT = (
    "You are the Developer. Name the files you will add code to, or create, to carry out the "
    "request: their paths relative to the repository root, one per line, nothing else."
)
CODE_PROMPT = (
    "You are the Developer. You add code to one file of a repository to carry out a request. "
    "Reply with only the code to add at the end of the file, in one fenced code block. Keep it "
    "short: only what the request asks for."
)
_FENCED = re.compile(r"```[^\n`]*\n(.*?)(?:```|$)", re.DOTALL)
_PATH = re.compile(r"[\w./-]+\.\w+")


def named_files(reply: str, root: Path, limit: int = MAX_FILES) -> list[str]:
    """The paths a reply names, in order, once each: words that look like a file's path
    (`dir/name.ext`) and stay inside `root` (resolved)."""
    found: list[str] = []
    for word in _PATH.findall(reply.replace("`", " ")):
        shown = word[2:] if word.startswith("./") else word
        try:
            confine(root, shown)
        except ToolError:
            continue
        if shown not in found:
            found.append(shown)
    return found[:limit]


def code_in(reply: str) -> str:
    """The code of a reply: its first fenced block's content, else the reply itself."""
    match = _FENCED.search(reply)
    return (match.group(1) if match else reply).strip("\n")


def _shown(root: Path, name: str) -> str:
    """A file as the prompt shows it: its name, then its content (none if it is not there)."""
    path = root / name
    try:
        text = path.read_text(errors="replace") if path.is_file() else ""
    except OSError:
        text = ""
    return f"--- {name}\n{text[:MAX_FILE_CHARS]}"


async def draft_and_verify(
    root: Path,
    task: str,
    tools: Mapping[str, Tool],
    params: dict[str, Any],
    restore: Callable[[], Awaitable[None]],
) -> str:
    """One round of the small-model developer in the worktree at `root` (resolved) for `task`
    (the request, the plan, the reviewer's comments); `restore` takes the worktree back to the
    round's commit. Returns the developer's report."""
    listing = await tools["list_files"].run({})  # no events: not a call the model made
    reply = await runtime.chat(
        [{"role": "user", "content": f"{task}\n\nFiles in the repository:\n{listing}"}],
        **{**params, "system": f"{params['system']}\n\n{FILES_PROMPT}".strip()},
    )
    files = named_files(reply.text, root)
    if not files:
        return f"(no file named to change: {reply.text.strip()[:200]!r})"
    system = f"{params['system']}\n\n{CODE_PROMPT}".strip()
    added: dict[str, str] = {}
    failure = ""
    for draft in range(1, MAX_DRAFTS + 1):
        temperature = params["temperature"]
        if draft > 1:
            temperature = max(temperature, REDRAW_TEMPERATURE)
        for name in files:
            # Read again for each file: it sees what this draft added to the files before it.
            shown = await asyncio.to_thread(lambda: {f: _shown(root, f) for f in files})
            others = "\n".join(text for other, text in shown.items() if other != name)
            prompt = (
                f"{task}\n\n{others}\n{shown[name]} (the file you add to)\n\n"
                f"{_feedback(name, added, failure)}Write the code to add at the end of {name}."
            )
            answer = await runtime.chat(
                [{"role": "user", "content": prompt}],
                **{**params, "system": system, "temperature": temperature},
            )
            added[name] = code_in(answer.text)
            if added[name].strip():
                arguments = {"path": name, "content": added[name]}
                await run_tool_call(
                    ToolCall(f"draft-{draft}-{name}", "append_file", arguments), tools
                )
        if "run_tests" not in tools:
            return f"added code to {', '.join(files)} (no test command to check it)"
        result = await run_tool_call(ToolCall(f"draft-{draft}-tests", "run_tests", {}), tools)
        passed, failure = _outcome(result)
        runtime.emit("workflow.progress", {"step": "developer", "draft": draft, "passed": passed})
        if passed:
            return f"added code to {', '.join(files)}; the tests pass (draft {draft})"
        await restore()
    return f"no draft of {MAX_DRAFTS} passed the tests; nothing was changed. Last run:\n{failure}"


def _feedback(name: str, added: Mapping[str, str], failure: str) -> str:
    """What the last draft added to `name` and how the tests failed (nothing for a first draft).
    A model that forgot an import sees the NameError and adds it."""
    if not failure:
        return ""
    return (
        f"Your last draft added to {name}:\n```\n{added.get(name, '')}\n```\n"
        f"and the tests failed:\n{failure}\n\n"
    )


def _outcome(result: ChatMessage) -> tuple[bool, str]:
    """Whether a `run_tests` result says the tests passed, and the end of their output."""
    try:
        value = json.loads(result.content)
        return value["passed"] is True, str(value.get("output", ""))[-MAX_FAILURE_CHARS:]
    except (ValueError, KeyError, TypeError):  # an error result, or output cut to fit
        passed = not result.is_error and '"passed": true' in result.content
        return passed, result.content[-MAX_FAILURE_CHARS:]
