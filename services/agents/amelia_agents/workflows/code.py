"""`code`: the seed's Claude Code agent. Runs the Claude Code CLI (`CLAUDE_CODE_PATH`) on the
request in a fresh git worktree of the repository, streaming what it prints.

    START ─► code ─► END

- The repository must lie inside one of `CODE_ALLOWED_ROOTS` (checked at CreateRun, so a
  path outside is INVALID_ARGUMENT before anything is queued; checked again by the worker with
  symlinks resolved). With no allowed roots the workflow refuses every repository.
- The CLI runs as `claude -p --output-format stream-json --verbose --permission-mode <mode>
  [--model <model>] -- <message>` in `GIT_WORKTREE_DIR/<repo>-<run uuid>` (branch
  `amelia/<run uuid>`, from `base_ref`, default HEAD), in its own process group.
- Every stdout/stderr line is a `run.tool.output` event (`tool: claude-code`, `stream`). Claude
  Code's stream-json lines are understood: assistant text becomes `run.token` events, its tool
  uses `run.tool.called` events, and the final `result` gives the run's message and token
  usage. Any other stdout line is passed on as a `run.token` too.
- `CLAUDE_CODE_TIMEOUT` limits the CLI; on timeout or CancelRun the CLI and every process it
  started are killed (SIGTERM, then SIGKILL). A non-zero exit fails the run with its last
  stderr lines.
- Afterwards the worktree is removed, or kept when `keep_worktree` is true (whatever the run's
  outcome); the output names the worktree, its branch, the files changed and the commits made.
- A worker that dies mid-run cannot kill the CLI: the next attempt does (see `worktree`), then
  starts again in a fresh worktree.
"""

from __future__ import annotations

import asyncio
import json
import operator
import shutil
import uuid
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import StateGraph

from amelia_agents import runtime
from amelia_agents.llm import Usage
from amelia_agents.workflows.builtin import MESSAGE_SCHEMA, message_to_state
from amelia_agents.workflows.registry import InvalidInputError, Workflow, linear_graph, register
from amelia_agents.worktree import CodeError, Worktree, git
from amelia_common.settings import Settings

TOOL = "claude-code"
PERMISSION_MODES = ["default", "acceptEdits", "bypassPermissions", "plan"]
# Input of a workflow that works in a repository (`code`, `develop`; `check_code` checks it):
# which repository, the revision its branch starts from, how Claude Code may act there.
REPOSITORY_PROPERTIES: dict[str, Any] = {
    "repository": {"type": "string", "minLength": 1},
    "base_ref": {"type": "string", "minLength": 1},
    "permission_mode": {"type": "string", "enum": PERMISSION_MODES},
}
STDERR_TAIL_LINES = 10


class CodeState(TypedDict, total=False):
    messages: Annotated[list[dict[str, Any]], operator.add]
    request: dict[str, Any]
    result: dict[str, Any]


def allowed_repository(value: Any, settings: Settings) -> Path:
    """The repository path, resolved, if it lies inside CODE_ALLOWED_ROOTS; else ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("input.repository must be the absolute path of a git repository")
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f"input.repository {value!r} must be an absolute path")
    roots = [Path(root).expanduser().resolve() for root in settings.CODE_ALLOWED_ROOTS]
    if not roots:
        raise ValueError(
            "the code workflow may not touch any repository: CODE_ALLOWED_ROOTS is empty; set it "
            "to the directories (comma-separated) whose repositories it may work in"
        )
    resolved = path.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise ValueError(
            f"input.repository {value!r} is outside the allowed roots "
            f"({', '.join(map(str, roots))}); see CODE_ALLOWED_ROOTS"
        )
    return resolved


def check_code(value: dict[str, Any], settings: Settings) -> None:
    try:
        allowed_repository(value.get("repository"), settings)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc
    base_ref = value.get("base_ref", "")
    if isinstance(base_ref, str) and (
        base_ref.startswith("-") or any(c.isspace() for c in base_ref)
    ):
        raise InvalidInputError(f"input.base_ref {base_ref!r} is not a git revision")


class ClaudeOutput:
    """Reads Claude Code's output line by line (stream-json, or plain text from other CLIs)."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.result: str | None = None
        self.is_error = False
        self.cost_usd: float | None = None
        self.stderr: list[str] = []

    @property
    def message(self) -> str:
        return self.result if self.result is not None else "".join(self.text)

    def check(self, returncode: int) -> None:
        """CodeError when the CLI failed: a non-zero exit (with its last stderr lines) or an
        error result."""
        if returncode != 0:
            tail = "\n".join(self.stderr) or self.message.strip()[-2000:]
            raise CodeError(f"claude code exited with status {returncode}: {tail}".strip())
        if self.is_error:
            raise CodeError(f"claude code reported an error: {self.message}")

    def on_line(self, stream: str, line: str) -> None:
        if stream == "stderr":
            self.stderr = [*self.stderr[-(STDERR_TAIL_LINES - 1) :], line.rstrip("\n")]
            return
        event: Any = None
        if line.lstrip().startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
        if isinstance(event, dict) and isinstance(event.get("type"), str):
            self._event(event)
        else:
            self._token(line)

    def _token(self, text: str) -> None:
        if text:
            self.text.append(text)
            runtime.emit("run.token", {"text": text})

    def _event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "assistant":
            content = (event.get("message") or {}).get("content") or []
            for block in content if isinstance(content, list) else []:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text" and block.get("text"):
                    text = str(block["text"])
                    self._token(text if text.endswith("\n") else text + "\n")
                elif block.get("type") == "tool_use":
                    runtime.emit(
                        "run.tool.called",
                        {"tool": f"{TOOL}:{block.get('name', '')}", "args": block.get("input")},
                    )
        elif kind == "result":
            if isinstance(event.get("result"), str):
                self.result = event["result"]
            self.is_error = bool(event.get("is_error"))
            cost = event.get("total_cost_usd", event.get("cost_usd"))
            if isinstance(cost, (int, float)):
                self.cost_usd = float(cost)
            usage = event.get("usage") or {}
            if isinstance(usage, dict):
                runtime.record_usage(
                    Usage(
                        input_tokens=int(usage.get("input_tokens") or 0),
                        output_tokens=int(usage.get("output_tokens") or 0),
                    ),
                    TOOL,
                )


def claude_argv(cli: str, request: dict[str, Any]) -> list[str]:
    argv = [cli, "-p", "--output-format", "stream-json", "--verbose"]
    argv += ["--permission-mode", str(request.get("permission_mode") or "acceptEdits")]
    if request.get("model"):
        argv += ["--model", str(request["model"])]
    # `--`: a message starting with '-' is the prompt, not an option.
    return [*argv, "--", str(request["message"])]


# Besides `runtime.inherited_env()`: Claude Code's own variables (its key, base URL, model,
# configuration directory, Bedrock/Vertex switches, telemetry opt-outs) and the names listed in
# CODE_ENV_PASSTHROUGH. Nothing else of the worker's environment reaches the CLI.
CLAUDE_ENV_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "DISABLE_")


def claude_env(settings: Settings) -> dict[str, str]:
    """The CLI's environment: only what it needs (docs/agents.md), never the mesh's secrets."""
    passthrough = [name.strip() for name in settings.CODE_ENV_PASSTHROUGH.split(",")]
    env = runtime.inherited_env(also=[n for n in passthrough if n], prefixes=CLAUDE_ENV_PREFIXES)
    key = settings.ANTHROPIC_API_KEY.get_secret_value()
    if key:
        env.setdefault("ANTHROPIC_API_KEY", key)
    if settings.ANTHROPIC_BASE_URL:
        env.setdefault("ANTHROPIC_BASE_URL", settings.ANTHROPIC_BASE_URL)
    return env


def _resolved(path: str) -> Path:
    return Path(path).resolve()


async def prepare_worktree(
    request: dict[str, Any], settings: Settings, run: str
) -> tuple[Worktree, Path]:
    """The worktree to make (not made yet) and the directory the CLI runs in."""
    try:
        repository = allowed_repository(request.get("repository"), settings)
    except ValueError as exc:
        raise CodeError(str(exc)) from None
    if not repository.is_dir():
        raise CodeError(f"repository {repository} does not exist or is not a directory")
    try:
        top = _resolved(await git(["rev-parse", "--show-toplevel"], repository))
    except CodeError:
        raise CodeError(f"{repository} is not in a git repository") from None
    base_ref = str(request.get("base_ref") or "HEAD")
    try:
        base = await git(
            ["rev-parse", "--verify", "--end-of-options", f"{base_ref}^{{commit}}"], top
        )
    except CodeError:
        raise CodeError(
            f"base_ref {base_ref!r} is not a commit of {top} (an empty repository has none)"
        ) from None
    run_id = run.removeprefix("runs/") or uuid.uuid4().hex
    tree = Worktree(
        repository=top,
        path=settings.worktree_dir / f"{top.name}-{run_id}",
        branch=f"amelia/{run_id}",
        base=base,
    )
    return tree, tree.path / repository.relative_to(top)


def find_claude(settings: Settings) -> str | None:
    """The Claude Code CLI's path (CLAUDE_CODE_PATH, looked up on PATH), None if not there."""
    return shutil.which(settings.CLAUDE_CODE_PATH) if settings.CLAUDE_CODE_PATH else None


async def run_claude(
    cli: str, request: dict[str, Any], cwd: Path, tree: Worktree, output: ClaudeOutput
) -> runtime.ProcessResult:
    """Run the CLI on `request["message"]` in `cwd` (inside `tree`), within CLAUDE_CODE_TIMEOUT."""
    settings = runtime.current().settings
    try:
        return await runtime.run_process(
            claude_argv(cli, request),
            cwd=cwd,
            env=claude_env(settings),
            timeout=settings.CLAUDE_CODE_TIMEOUT,
            tool=TOOL,
            on_line=output.on_line,
            on_start=tree.record_process,
        )
    except TimeoutError:
        raise CodeError(
            f"claude code: timed out after {settings.CLAUDE_CODE_TIMEOUT}s "
            "(CLAUDE_CODE_TIMEOUT); it and the processes it started were killed"
        ) from None


async def code(state: CodeState) -> dict[str, Any]:
    ctx = runtime.current()
    settings = ctx.settings
    request = state.get("request", {})
    cli = find_claude(settings)
    if cli is None:
        raise CodeError(
            f"claude code: {settings.CLAUDE_CODE_PATH!r} (CLAUDE_CODE_PATH) was not found or is "
            "not executable; install Claude Code or set CLAUDE_CODE_PATH"
        )
    tree, cwd = await prepare_worktree(request, settings, ctx.run)
    await tree.create()
    runtime.emit(
        "workflow.progress",
        {"step": "worktree", "action": "created", "path": str(tree.path), "branch": tree.branch},
    )
    keep = bool(request.get("keep_worktree"))
    output = ClaudeOutput()
    files: list[str] = []
    commits: list[str] = []
    try:
        # A subdirectory without tracked files is not checked out; the CLI still starts there.
        await asyncio.to_thread(cwd.mkdir, parents=True, exist_ok=True)
        result = await run_claude(cli, request, cwd, tree, output)
        files, commits = await tree.changes()
    finally:
        # Also on failure, timeout and cancel; shielded so a second cancel cannot leave it half
        # done.
        if keep:
            tree.forget_process()
        branch_kept = True if keep else await asyncio.shield(tree.remove())
        runtime.emit(
            "workflow.progress",
            {
                "step": "worktree",
                "action": "kept" if keep else "removed",
                "path": str(tree.path),
                "branch": tree.branch if branch_kept else "",
            },
        )
    output.check(result.returncode)
    summary: dict[str, Any] = {
        "message": output.message,
        "exit_code": result.returncode,
        "repository": str(tree.repository),
        "base": tree.base,
        "worktree": str(tree.path),
        "kept": keep,
        "branch": tree.branch if branch_kept else "",
        "changed_files": files,
        "commits": commits,
    }
    if output.cost_usd is not None:
        summary["cost_usd"] = output.cost_usd
    return {
        "result": summary,
        "messages": [{"role": "assistant", "content": output.message}],
    }


def build_code(_agent: dict[str, Any] | None) -> StateGraph[Any, Any, Any, Any]:
    return linear_graph(CodeState, ("code", code))


register(
    Workflow(
        name="code",
        description=(
            "Runs Claude Code (CLAUDE_CODE_PATH) on the message in a fresh git worktree of the "
            "repository (inside CODE_ALLOWED_ROOTS), streaming its output; the worktree is "
            "removed afterwards unless keep_worktree is true."
        ),
        nodes=["code"],
        build=build_code,
        to_state=lambda value: {**message_to_state(value), "result": {}},
        to_output=lambda state: dict(state.get("result") or {}),
        input_schema={
            **MESSAGE_SCHEMA,
            "required": ["message", "repository"],
            "properties": {
                **MESSAGE_SCHEMA["properties"],
                **REPOSITORY_PROPERTIES,
                "keep_worktree": {"type": "boolean"},
                "model": {"type": "string", "minLength": 1},
            },
        },
        default_timeout=3600.0,
        check=check_code,
    )
)
