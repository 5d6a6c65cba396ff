"""`develop`: from a request to a landed branch, with a person's approval of the plan and of the
final diff.

    START ─► discovery ─► design ─► planning ─► approve_plan ─┬─ rejected ─► END
                                                 ▲            ├─ unclear ─┘(ask again)
                                                 └────────────┘
             approved ─► checkout ─► develop ─► review ─┬─ changes requested (≤ N rounds) ─► develop
                                                         └─ approved (or N reached) ─► approve_diff
             approve_diff ─► finish (land | discard | keep) ─► END      (unclear: ask again)

- discovery, design and planning are the `plan` workflow's steps; `approve_plan` pauses the run
  on the plan (answers as in `plan`: approve [feedback] / reject [reason]); the feedback goes
  to the developer.
- checkout makes a worktree of the repository (inside CODE_ALLOWED_ROOTS) on branch
  `amelia/<run>` from `base_ref` and records base and target branch with the branch (gitrepo).
- develop: the Claude Code CLI (CLAUDE_CODE_PATH found, `developer` auto or claude-code) or the
  built-in developer, a tool loop on the run's model (`models.developer`) with `devtools`
  confined to the worktree — for a `local:` model, too small for that loop, `small_developer`
  (additions drafted file by file, kept only when the tests pass). What it leaves is
  committed on the branch (`git.diff.ready`).
  A re-run (a worker died) first restores the worktree to the checkpointed commit.
- review: a model call (`models.reviewer`) on the plan and the diff: APPROVE or REQUEST CHANGES
  with comments; changes go back to the developer, at most `max_review_rounds` times.
- approve_diff pauses on the final diff (per file, with the patch); `land` [into <branch>] /
  `discard` / `keep` (or `{"decision": "land", "into": "main"}`). finish does it: a conflict or
  a blocked checkout completes the run with status `conflict` / `not_landed` and the branch
  kept, for `amelia runs land` later.
"""

from __future__ import annotations

import asyncio
import json
import operator
import re
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from amelia_agents import gitrepo, runtime
from amelia_agents.tools import ToolRoundsExceededError, tool_loop
from amelia_agents.workflows.builtin import MESSAGE_SCHEMA, MODEL_PROPERTIES
from amelia_agents.workflows.code import (
    REPOSITORY_PROPERTIES,
    ClaudeOutput,
    check_code,
    find_claude,
    prepare_worktree,
    run_claude,
)
from amelia_agents.workflows.devtools import snapshot, workspace_tools
from amelia_agents.workflows.plan import (
    ask,
    design,
    discovery,
    parse_answer,
    plan_to_state,
    planning,
    step_params,
)
from amelia_agents.workflows.registry import InvalidInputError, Workflow, register
from amelia_agents.workflows.small_developer import draft_and_verify
from amelia_agents.worktree import CodeError, Worktree, git
from amelia_common.settings import Settings

STEPS = ("discovery", "design", "planning", "developer", "reviewer")
DEVELOPERS = ["auto", "claude-code", "agent"]
DEFAULT_REVIEW_ROUNDS = 2
DEFAULT_TEST_TIMEOUT = 300
MAX_DEVELOPER_TOOL_ROUNDS = 40
MAX_REVIEW_PATCH_CHARS = 60_000
MAX_QUESTION_PATCH_CHARS = 48_000
# A local model is too small for the tool loop: small_developer drafts and verifies instead.
LOCAL_MODEL_PREFIX = "local:"

DEVELOPER_PROMPT = (
    "You are the Developer. Change the repository with your tools to carry out the plan. The "
    "repository's files are shown after the request, so you can change them at once: call "
    "write_file with a file's path (relative to the repository root) and its complete new "
    "content, or edit_file; read_file, list_files and search show what is not shown. A call "
    'looks like {"name": "write_file", "arguments": {"path": "app.py", "content": "..."}}. '
    "The only tools are list_files, read_file, write_file, edit_file, search and, when "
    "offered, run_tests: a function the request names is code to write into a file, not a "
    "tool to call. Make every change the request asks for. When you are done, reply with a "
    "short summary of what you changed, without calling a tool."
)
REVIEW_PROMPT = (
    "You are the Reviewer. Check the diff against the request and the plan: does it do what "
    "they ask, correctly, with tests where it matters? Start your reply with APPROVE or REQUEST "
    "CHANGES; after REQUEST CHANGES, list each change to make."
)
PLAN_QUESTION = (
    "Approve this plan so the developer can start? Answer 'approve' (optionally with feedback "
    "for the developer) or 'reject' with a reason."
)
LAND_QUESTION = (
    "Land this change? Answer 'land' (optionally 'land into <branch>'), 'discard' (removes the "
    "branch) or 'keep' (leaves the branch for later)."
)
# What a re-asked question's note names (`'perhaps' is not one of: …`), as each question says.
PLAN_ANSWERS = "approve [feedback], reject [reason]"
LAND_ANSWERS = "land [into <branch>], discard, keep"
LAND_WORDS = {"land", "merge"}
DISCARD_WORDS = {"discard", "drop"}
KEEP_WORDS = {"keep", "later"}


class DevelopState(TypedDict, total=False):
    messages: Annotated[list[dict[str, Any]], operator.add]
    request: dict[str, Any]
    discovery: str
    design: str
    plan: str
    approval: dict[str, Any]  # the plan's (plan.parse_answer)
    # repository, path, branch, base, target, head (the branch's commit after the last round)
    worktree: dict[str, Any]
    round: int
    work: str  # the developer's last report
    diff: dict[str, Any]  # gitrepo.Diff.summary() of the branch now
    review: dict[str, Any]  # {"verdict": "approve" | "request_changes", "comments", "round"}
    reviews: list[dict[str, Any]]
    decision: dict[str, Any]  # the final answer: {"decision": land|discard|keep|unclear, "into"}
    outcome: dict[str, Any]  # what finish did


# answers -----------------------------------------------------------------------------------


def parse_verdict(text: str) -> dict[str, Any]:
    """The reviewer's reply as a verdict; an unclear one counts as an approval (the person
    still approves the diff), flagged `unclear`."""
    comments = text.strip()
    try:
        value = json.loads(comments)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("verdict"), str):
        head = value["verdict"].lower()
        comments = str(value.get("comments") or "")
    else:
        head = comments.lower()[:200]
    changes = re.search(r"request(?:s|ed|ing)?[\s_-]+changes|changes[\s_-]+requested", head)
    approve = re.search(r"\b(?:approve[sd]?|lgtm)\b", head)
    if changes and (approve is None or changes.start() < approve.start()):
        return {"verdict": "request_changes", "comments": comments}
    return {"verdict": "approve", "comments": comments, **({} if approve else {"unclear": True})}


def parse_landing(answer: Any) -> dict[str, Any]:
    """The answer to the final question: land (into a branch), discard, keep, or unclear."""
    into = ""
    words: Any = answer
    if isinstance(answer, dict):
        into = str(answer.get("into") or "")
        words = answer.get("decision") or answer.get("answer") or ""
    first = re.match(r"\s*([A-Za-z]+)", words) if isinstance(words, str) else None
    word = first.group(1).lower() if first else ""
    if word in KEEP_WORDS:
        decision = "keep"
    elif word in LAND_WORDS:
        decision = "land"
    elif word in DISCARD_WORDS:
        decision = "discard"
    else:
        parsed = parse_answer(answer)
        decision = {"approved": "land", "rejected": "discard"}.get(parsed["decision"], "unclear")
    if decision == "land" and not into and isinstance(words, str):
        match = re.search(r"\binto\s+(\S+)", words)
        into = match.group(1) if match else ""
    result: dict[str, Any] = {"decision": decision, "into": into}
    if decision == "unclear":
        result["answer"] = answer
    return result


# nodes -------------------------------------------------------------------------------------


def _tree(state: DevelopState) -> Worktree:
    w = state["worktree"]
    return Worktree(
        repository=Path(w["repository"]), path=Path(w["path"]), branch=w["branch"], base=w["base"]
    )


async def approve_plan(state: DevelopState) -> dict[str, Any]:
    question = {
        "question": PLAN_QUESTION,
        "plan": state.get("plan", ""),
        "options": ["approve", "reject"],
    }
    decision = parse_answer(ask(question, state.get("approval"), PLAN_ANSWERS))
    runtime.emit("workflow.progress", {"step": "approval", **decision})
    return {"approval": decision}


def after_plan_approval(state: DevelopState) -> str:
    decision = (state.get("approval") or {}).get("decision")
    return {"approved": "checkout", "rejected": END}.get(str(decision), "approve_plan")


async def checkout(state: DevelopState) -> dict[str, Any]:
    ctx = runtime.current()
    request = state.get("request", {})
    tree, _ = await prepare_worktree(request, ctx.settings, ctx.run)
    target = str(request.get("target_branch") or await gitrepo.current_branch(tree.repository))
    await tree.create()
    await gitrepo.record_branch(tree.repository, tree.branch, tree.base, target)
    runtime.emit(
        "workflow.progress",
        {"step": "worktree", "action": "created", "path": str(tree.path), "branch": tree.branch},
    )
    worktree = {
        "repository": str(tree.repository),
        "path": str(tree.path),
        "branch": tree.branch,
        "base": tree.base,
        "target": target,
        "head": tree.base,
    }
    return {"worktree": worktree, "round": 0}


def developer_prompt(state: DevelopState, round_: int) -> str:
    request = state.get("request", {})
    prompt = f"Request:\n{request.get('message', '')}\n\nApproved plan:\n{state.get('plan', '')}"
    feedback = (state.get("approval") or {}).get("feedback")
    if feedback:
        prompt += f"\n\nThe person who approved the plan added:\n{feedback}"
    if round_ > 1:
        files = ", ".join(f["path"] for f in (state.get("diff") or {}).get("files", []))
        review = (state.get("review") or {}).get("comments", "")
        prompt += (
            f"\n\nYour earlier changes are in the repository already (files: {files or 'none'})."
            f"\nThe reviewer asked for changes:\n{review}\n\nMake them."
        )
    return prompt


async def _run_developer(state: DevelopState, tree: Worktree, prompt: str) -> str:
    request = state.get("request", {})
    choice = str(request.get("developer") or "auto")
    cli = find_claude(runtime.current().settings) if choice != "agent" else None
    if choice == "claude-code" and cli is None:
        raise CodeError(
            "develop: developer 'claude-code' asked for, but CLAUDE_CODE_PATH "
            f"{runtime.current().settings.CLAUDE_CODE_PATH!r} was not found"
        )
    if cli is not None:
        output = ClaudeOutput()
        claude_request = {"message": prompt, "permission_mode": request.get("permission_mode")}
        result = await run_claude(cli, claude_request, tree.path, tree, output)
        output.check(result.returncode)
        return output.message
    tools = workspace_tools(
        await _resolved(tree.path),
        test_command=str(request.get("test_command") or ""),
        test_timeout=float(request.get("test_timeout") or DEFAULT_TEST_TIMEOUT),
        on_process=tree.record_process,
    )
    params = step_params(request, "developer", DEVELOPER_PROMPT)
    if str(params["model"]).startswith(LOCAL_MODEL_PREFIX):
        head = str(state["worktree"]["head"])
        return await draft_and_verify(
            await _resolved(tree.path),
            prompt,
            tools,
            step_params(request, "developer", ""),  # small_developer adds its own instructions
            lambda: tree.restore(head),
        )
    files = await snapshot(await _resolved(tree.path))
    try:
        reply = await tool_loop(
            [{"role": "user", "content": f"{prompt}\n\n{files}"}],
            tools,
            max_rounds=MAX_DEVELOPER_TOOL_ROUNDS,
            **params,
        )
    except ToolRoundsExceededError as exc:
        # What it did so far is still reviewed; the reviewer (or the person) decides.
        runtime.emit("workflow.progress", {"step": "developer", "stopped": str(exc)})
        return f"(stopped: {exc})"
    return reply.text


async def _resolved(path: Path) -> Path:
    return await asyncio.to_thread(path.resolve)


async def _commit(tree: Worktree, message: str) -> str:
    """Commit whatever the developer left in the worktree; the branch's new tip."""
    await git(["add", "-A"], tree.path)
    staged = await git(["diff", "--cached", "--name-only"], tree.path)
    if staged:
        await git(["commit", "-q", "--no-verify", "-m", message], tree.path, gitrepo.identity_env())
    return await git(["rev-parse", "HEAD"], tree.path)


async def develop(state: DevelopState) -> dict[str, Any]:
    tree = _tree(state)
    worktree = state["worktree"]
    await tree.restore(worktree["head"])
    round_ = int(state.get("round") or 0) + 1
    runtime.emit("workflow.progress", {"step": "developer", "round": round_})
    try:
        report = await _run_developer(state, tree, developer_prompt(state, round_))
    finally:
        tree.forget_process()
    subject = f"amelia: {state.get('request', {}).get('message', '')}".splitlines()[0][:72]
    head = await _commit(tree, f"{subject}\n\nRound {round_} of {tree.branch}.")
    summary = (await gitrepo.diff(tree.repository, tree.base, head)).summary()
    runtime.emit(
        "git.diff.ready",
        {"branch": tree.branch, "repository": str(tree.repository), "round": round_, **summary},
    )
    return {
        "round": round_,
        "work": report,
        "worktree": {**worktree, "head": head},
        "diff": summary,
    }


async def review(state: DevelopState) -> dict[str, Any]:
    request = state.get("request", {})
    round_ = int(state.get("round") or 0)
    worktree = state["worktree"]
    if not (state.get("diff") or {}).get("files"):
        verdict: dict[str, Any] = {
            "verdict": "request_changes",
            "comments": (
                "The branch has no changes: make the change the plan describes by writing the "
                "files with write_file (or edit_file)."
            ),
            "automatic": True,
        }
    else:
        changes = await gitrepo.diff(
            Path(worktree["repository"]), worktree["base"], worktree["head"]
        )
        patch = changes.patch
        if len(patch) > MAX_REVIEW_PATCH_CHARS:
            patch = patch[:MAX_REVIEW_PATCH_CHARS] + "\n[… the rest of the diff was cut]\n"
        prompt = (
            f"Request:\n{request.get('message', '')}\n\nPlan:\n{state.get('plan', '')}\n\n"
            f"The developer's report:\n{state.get('work', '')}\n\nDiff:\n```diff\n{patch}```"
        )
        params = step_params(request, "reviewer", REVIEW_PROMPT)
        reply = await runtime.chat([{"role": "user", "content": prompt}], **params)
        verdict = parse_verdict(reply.text)
    verdict["round"] = round_
    runtime.emit(
        "workflow.progress", {"step": "review", "round": round_, "verdict": verdict["verdict"]}
    )
    return {"review": verdict, "reviews": [*(state.get("reviews") or []), verdict]}


def after_review(state: DevelopState) -> str:
    request = state.get("request", {})
    limit = int(request.get("max_review_rounds", DEFAULT_REVIEW_ROUNDS))
    wants_changes = (state.get("review") or {}).get("verdict") == "request_changes"
    return "develop" if wants_changes and int(state.get("round") or 0) <= limit else "approve_diff"


async def approve_diff(state: DevelopState) -> dict[str, Any]:
    worktree = state["worktree"]
    changes = await gitrepo.diff(Path(worktree["repository"]), worktree["base"], worktree["head"])
    patch = changes.patch
    cut = len(patch) > MAX_QUESTION_PATCH_CHARS
    question = {
        "question": LAND_QUESTION,
        "repository": worktree["repository"],
        "branch": worktree["branch"],
        "into": worktree["target"],
        "diff": {**changes.summary(), "patch": patch[:MAX_QUESTION_PATCH_CHARS], "truncated": cut},
        "review": state.get("review") or {},
        "rounds": state.get("round", 0),
        "options": ["land", "discard", "keep"],
    }
    decision = parse_landing(ask(question, state.get("decision"), LAND_ANSWERS))
    runtime.emit("workflow.progress", {"step": "approval", **decision})
    return {"decision": decision}


def after_diff_approval(state: DevelopState) -> str:
    return (
        "approve_diff" if (state.get("decision") or {}).get("decision") == "unclear" else "finish"
    )


async def _land(state: DevelopState, into: str) -> dict[str, Any]:
    worktree = state["worktree"]
    repository, branch, head = Path(worktree["repository"]), worktree["branch"], worktree["head"]
    message = f"Land {branch}: {state.get('request', {}).get('message', '')}".splitlines()[0][:200]
    try:
        landed = await gitrepo.land_run(repository, branch, into, message)
    except gitrepo.LandConflictError as exc:
        return {"status": "conflict", "files": exc.files, "message": str(exc)}
    except gitrepo.GitStateError as exc:
        # Landed by an earlier attempt that died before its checkpoint: the branch is gone and
        # the target has its tip.
        target = await gitrepo.commit_of(repository, f"refs/heads/{into}")
        gone = not await gitrepo.commit_of(repository, f"refs/heads/{branch}")
        if gone and target and await gitrepo.is_ancestor(repository, head, target):
            return {
                "status": "landed",
                "into": into,
                "commit": target,
                "message": f"Landed in {into}.",
            }
        return {"status": "not_landed", "message": str(exc)}
    runtime.emit("git.landed", landed.event(repository, branch))
    return {
        "status": "landed",
        "into": landed.into,
        "commit": landed.commit,
        "fast_forward": landed.fast_forward,
        "files": landed.files,
        "message": f"Landed {branch} in {landed.into} ({landed.commit[:12]}).",
    }


async def finish(state: DevelopState) -> dict[str, Any]:
    worktree = state["worktree"]
    decision = state.get("decision") or {}
    repository, branch = Path(worktree["repository"]), worktree["branch"]
    if decision.get("decision") == "land":
        outcome = await _land(state, str(decision.get("into") or worktree["target"]))
    elif decision.get("decision") == "discard":
        try:
            removed, commit = await gitrepo.discard(repository, branch)
        except gitrepo.GitStateError:  # discarded by an earlier attempt
            removed, commit = "", worktree["head"]
        runtime.emit("git.discarded", gitrepo.discarded_event(repository, branch, removed, commit))
        outcome = {"status": "discarded", "commit": commit, "message": f"Discarded {branch}."}
    else:
        outcome = {
            "status": "kept",
            "message": f"Kept {branch} (worktree {worktree['path']}): `amelia runs land` or "
            "`amelia runs discard` settles it.",
        }
    runtime.emit("workflow.progress", {"step": "finish", "status": outcome["status"]})
    return {"outcome": outcome}


# the workflow ------------------------------------------------------------------------------


def build_develop(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    graph = StateGraph(DevelopState)
    for name, node in (
        ("discovery", discovery),
        ("design", design),
        ("planning", planning),
        ("approve_plan", approve_plan),
        ("checkout", checkout),
        ("develop", develop),
        ("review", review),
        ("approve_diff", approve_diff),
        ("finish", finish),
    ):
        graph.add_node(name, node)
    graph.add_edge(START, "discovery")
    graph.add_edge("discovery", "design")
    graph.add_edge("design", "planning")
    graph.add_edge("planning", "approve_plan")
    graph.add_conditional_edges(
        "approve_plan", after_plan_approval, ["checkout", "approve_plan", END]
    )
    graph.add_edge("checkout", "develop")
    graph.add_edge("develop", "review")
    graph.add_conditional_edges("review", after_review, ["develop", "approve_diff"])
    graph.add_conditional_edges("approve_diff", after_diff_approval, ["approve_diff", "finish"])
    graph.add_edge("finish", END)
    return graph


def develop_to_state(value: dict[str, Any]) -> dict[str, Any]:
    # Every field is reset: a thread's earlier run must not leak into this one. The planning
    # steps' fields are plan's.
    return {
        **plan_to_state(value),
        "worktree": {},
        "round": 0,
        "work": "",
        "diff": {},
        "review": {},
        "reviews": [],
        "decision": {},
        "outcome": {},
    }


def develop_output(state: dict[str, Any]) -> dict[str, Any]:
    approval = state.get("approval") or {}
    if approval.get("decision") == "rejected":
        reason = approval.get("reason", "")
        return {
            "status": "rejected",
            "reason": reason,
            "message": f"Plan rejected: {reason}" if reason else "Plan rejected.",
            "plan": state.get("plan", ""),
        }
    worktree = state.get("worktree") or {}
    return {
        **(state.get("outcome") or {}),
        "plan": state.get("plan", ""),
        "repository": worktree.get("repository", ""),
        "branch": worktree.get("branch", ""),
        "base": worktree.get("base", ""),
        "head": worktree.get("head", ""),
        "rounds": state.get("round", 0),
        "reviews": state.get("reviews") or [],
        "diff": state.get("diff") or {},
    }


def check_develop(value: dict[str, Any], settings: Settings) -> None:
    check_code(value, settings)
    target = value.get("target_branch", "")
    if isinstance(target, str) and (target.startswith("-") or any(c.isspace() for c in target)):
        raise InvalidInputError(f"input.target_branch {target!r} is not a branch name")


register(
    Workflow(
        name="develop",
        description=(
            "Plans the change (discovery, design, plan), waits for your approval, has a "
            "developer (Claude Code, or a built-in tool-using agent) make it on a branch in a "
            "worktree of the repository, a reviewer check the diff (changes go back to the "
            "developer, at most max_review_rounds times), then waits for your approval of the "
            "final diff to land it into the target branch, discard it or keep it."
        ),
        nodes=[
            "discovery",
            "design",
            "planning",
            "approve_plan",
            "checkout",
            "develop",
            "review",
            "approve_diff",
            "finish",
        ],
        build=build_develop,
        to_state=develop_to_state,
        to_output=develop_output,
        input_schema={
            **MESSAGE_SCHEMA,
            "required": ["message", "repository"],
            "properties": {
                **MESSAGE_SCHEMA["properties"],
                **MODEL_PROPERTIES,
                **REPOSITORY_PROPERTIES,
                "target_branch": {"type": "string", "minLength": 1},
                "test_command": {"type": "string"},
                "test_timeout": {"type": "integer", "minimum": 1, "maximum": 3600},
                "max_review_rounds": {"type": "integer", "minimum": 0, "maximum": 10},
                "developer": {"type": "string", "enum": DEVELOPERS},
                "models": {
                    "type": "object",
                    "description": "A model per step, overriding `model`.",
                    "properties": {step: MODEL_PROPERTIES["model"] for step in STEPS},
                    "additionalProperties": False,
                },
            },
        },
        default_timeout=7200.0,
        check=check_develop,
    )
)
