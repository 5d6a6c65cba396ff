"""`code`: a stand-in for the Claude Code CLI (CLAUDE_CODE_PATH) in a fresh git worktree of a
test repository; its output as run events; timeout and cancel kill it and its children; the
worktree removed or kept; repositories outside CODE_ALLOWED_ROOTS refused. Also ListWorkflows."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest
from agents_helpers import (
    S,
    WorkerProcess,
    collect,
    create_run,
    data,
    rpc_error,
    tokens,
    types,
    wait_status,
)
from google.protobuf import json_format
from workflows_helpers import CLAUDE_CODE_TIMEOUT, CodeEnv, git, make_repository

from amelia.v1 import agents_pb2_grpc
from amelia_common.embedded import process_alive

Stub: TypeAlias = agents_pb2_grpc.AgentServiceStub


@pytest.fixture
def repository(code_env: CodeEnv) -> Path:
    return make_repository(code_env.allowed / f"repo-{uuid.uuid4().hex[:8]}").resolve()


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def worktrees(code_env: CodeEnv, repository: Path) -> list[Path]:
    if not code_env.worktrees.exists():
        return []
    # Worktrees, and the `.pgid` notes of CLIs still to stop next to them.
    return sorted(code_env.worktrees.glob(f"{repository.name}-*"))


async def code_run(stub: Stub, repository: Path, spec: dict[str, Any], **fields: Any) -> S.Run:
    return await create_run(
        stub,
        workflow="workflows/code",
        input={"message": json.dumps(spec), "repository": str(repository), **fields},
    )


async def test_the_cli_runs_in_a_fresh_worktree_and_its_output_streams(
    agents: Stub, code_env: CodeEnv, repository: Path, tmp_path: Path
) -> None:
    record = tmp_path / "record.json"
    run = await code_run(agents, repository, {"record": str(record), "write": "hello.txt"})
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    output = json_format.MessageToDict(done.output)

    # It ran in a worktree of the repository, not in the user's working copy.
    seen = json.loads(record.read_text())
    worktree = Path(seen["cwd"])
    assert worktree.parent == code_env.worktrees.resolve()
    assert worktree.name == f"{repository.name}-{run.name.removeprefix('runs/')}"
    assert output["worktree"] == str(worktree)
    assert not (repository / "hello.txt").exists()
    assert git(repository, "status", "--porcelain") == ""
    assert seen["argv"][:3] == ["-p", "--output-format", "stream-json"]
    assert seen["argv"][-2:] == ["--", json.dumps({"record": str(record), "write": "hello.txt"})]
    assert "--permission-mode" in seen["argv"]
    assert seen["api_key"] == "sk-ant-test-key"

    # Removed afterwards (not asked to keep it); the branch had no commits, so it went too.
    assert not exists(worktree)
    assert output["kept"] is False and output["branch"] == ""
    assert "amelia/" not in git(repository, "branch", "--list")
    assert "hello.txt" not in git(repository, "worktree", "list")
    assert output["changed_files"] == ["hello.txt"]
    assert output["commits"] == []
    assert output["message"] == "Wrote hello.txt."
    assert output["exit_code"] == 0
    assert output["cost_usd"] == 0.0125
    assert (done.usage.input_tokens, done.usage.output_tokens) == (120, 30)

    events = await collect(agents, run.name)
    called = [d for d in data(events, "run.tool.called") if d["tool"] == "claude-code"]
    assert len(called) == 1 and called[0]["cwd"] == str(worktree)
    lines = [(d["stream"], d["text"]) for d in data(events, "run.tool.output")]
    assert ("stdout", "stand-in: starting\n") in lines
    assert ("stderr", "stand-in: a note on stderr\n") in lines
    assert any(text.startswith('{"type": "result"') for _, text in lines)
    [result] = data(events, "run.tool.result")
    assert result["exit_code"] == 0
    # Plain lines and the assistant's text are tokens; its tool use is a tool call.
    assert tokens(events) == ["stand-in: starting\n", "I will write hello.txt.\n"]
    assert any(d["tool"] == "claude-code:Write" for d in data(events, "run.tool.called"))
    progress = [(d["action"], d["path"]) for d in data(events, "workflow.progress")]
    assert progress == [("created", str(worktree)), ("removed", str(worktree))]


async def test_the_cli_and_git_hooks_see_none_of_the_workers_secrets(
    agents: Stub, repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "AMELIA_API_TOKEN": "amelia-token-never-passed",
        "OPENAI_API_KEY": "sk-openai-never-passed",
        "OPENROUTER_API_KEY": "sk-or-never-passed",
        "DATABASE_URL": "postgresql://amelia:password-never-passed@db/amelia",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-never-passed",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AMELIA_TEST_PASSTHROUGH", "listed in CODE_ENV_PASSTHROUGH")
    hook_env = tmp_path / "hook-env.json"
    hook = repository / ".git" / "hooks" / "post-checkout"
    hook.write_text(
        f"#!{sys.executable}\nimport json, os\njson.dump(dict(os.environ), open({str(hook_env)!r}, 'w'))\n"
    )
    hook.chmod(0o755)
    record = tmp_path / "record.json"
    run = await code_run(agents, repository, {"record": str(record)})
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    cli_env = json.loads(record.read_text())["env"]
    git_env = json.loads(hook_env.read_text())
    for env in (cli_env, git_env):
        assert not set(secrets) & set(env)
        assert not set(secrets.values()) & set(env.values())
        assert env["PATH"].endswith(os.environ["PATH"])  # git puts its own first
    assert cli_env["ANTHROPIC_API_KEY"] == "sk-ant-test-key"
    assert cli_env["AMELIA_TEST_PASSTHROUGH"] == "listed in CODE_ENV_PASSTHROUGH"
    assert "ANTHROPIC_API_KEY" not in git_env


async def test_the_worktree_is_kept_when_asked(
    agents: Stub, code_env: CodeEnv, repository: Path
) -> None:
    run = await code_run(
        agents, repository, {"write": "notes.md", "commit": True}, keep_worktree=True
    )
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    output = json_format.MessageToDict(done.output)
    worktree = Path(output["worktree"])
    assert output["kept"] is True
    assert (worktree / "notes.md").read_text() == "hello from the stand-in\n"
    branch = output["branch"]
    assert branch == f"amelia/{run.name.removeprefix('runs/')}"
    assert git(worktree, "branch", "--show-current") == branch
    assert output["commits"] and output["commits"][0].endswith("stand-in commit")
    assert output["changed_files"] == []
    assert str(worktree) in git(repository, "worktree", "list")
    git(repository, "worktree", "remove", "--force", str(worktree))


async def test_a_base_ref_starts_the_worktree_there(
    agents: Stub, repository: Path, tmp_path: Path
) -> None:
    first = git(repository, "rev-parse", "HEAD")
    (repository / "later.txt").write_text("later\n")
    git(repository, "add", "later.txt")
    git(repository, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "2")
    record = tmp_path / "record.json"
    run = await code_run(agents, repository, {"record": str(record)}, base_ref=first[:10])
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["base"] == first
    assert "later.txt" not in git(repository, "show", "--name-only", "--format=", first)


async def test_a_subdirectory_of_a_repository_is_where_the_cli_starts(
    agents: Stub, repository: Path, tmp_path: Path
) -> None:
    (repository / "docs").mkdir()
    record = tmp_path / "record.json"
    run = await code_run(agents, repository / "docs", {"record": str(record), "write": "a.md"})
    done = await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    assert done.output["repository"] == str(repository)
    cwd = Path(json.loads(record.read_text())["cwd"])
    assert cwd == Path(done.output["worktree"]) / "docs"
    assert done.output["changed_files"] == ["docs/a.md"]


def exists(path: Path) -> bool:
    return path.exists()


def read_pids(pidfile: Path) -> list[int]:
    return [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []


async def _started(agents: Stub, run: S.Run, pidfile: Path) -> list[int]:
    """The stand-in's pid and its child's, once it is working."""
    deadline = asyncio.get_running_loop().time() + 90
    while asyncio.get_running_loop().time() < deadline:
        pids = read_pids(pidfile)
        if pids:
            assert len(pids) == 2 and all(process_alive(p) for p in pids)
            return pids
        status = (await agents.GetRun(S.GetRunRequest(name=run.name))).run
        assert status.status in (S.RUN_STATUS_QUEUED, S.RUN_STATUS_RUNNING), status
        await asyncio.sleep(0.05)
    raise AssertionError("the stand-in never started")


async def _gone(pids: list[int], paths: list[Path]) -> None:
    for _ in range(200):
        if not any(process_alive(p) for p in pids) and not any(exists(p) for p in paths):
            return
        await asyncio.sleep(0.05)
    assert not [p for p in pids if process_alive(p)], "the CLI or its child survived"
    assert not [p for p in paths if exists(p)], "the worktree was not removed"


async def test_cancel_kills_the_cli_and_its_children_and_removes_the_worktree(
    agents: Stub, code_env: CodeEnv, repository: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    run = await code_run(agents, repository, {"pidfile": str(pidfile)})
    pids = await _started(agents, run, pidfile)
    [worktree, pgid_note] = worktrees(code_env, repository)
    assert pgid_note.name == f"{worktree.name}.pgid"
    cancelled = (await agents.CancelRun(S.CancelRunRequest(name=run.name))).run
    assert cancelled.status == S.RUN_STATUS_CANCELLED
    await _gone(pids, [worktree, pgid_note])
    events = await collect(agents, run.name)
    assert types(events)[-1] == "run.cancelled"
    assert any("stand-in: working" in d["text"] for d in data(events, "run.tool.output"))
    assert "amelia/" not in git(repository, "branch", "--list")


async def test_a_cli_left_by_a_killed_worker_is_killed_by_the_next_attempt(
    durable_api: Stub,
    start_worker: Callable[..., WorkerProcess],
    code_env: CodeEnv,
    repository: Path,
    tmp_path: Path,
) -> None:
    """A SIGKILLed worker cannot stop its CLI; the worker that takes the run over does, then
    runs it again in a fresh worktree."""
    pidfile = tmp_path / "pids"
    # Both workers are up before the run starts, and the CLI has time enough (the suite's short
    # CLAUDE_CODE_TIMEOUT is for the timeout test): whatever the machine's load, the CLI is
    # still running when its worker is killed.
    workers = [start_worker(name, CLAUDE_CODE_TIMEOUT="300") for name in ("worker1", "worker2")]
    for worker in workers:
        await worker.ready()
    run = await code_run(
        durable_api, repository, {"pidfile": str(pidfile), "once": True, "write": "x.txt"}
    )
    pids = await _started(durable_api, run, pidfile)
    [worktree, _] = worktrees(code_env, repository)
    [owner] = [w for w in workers if w.proc.pid == parent_of(pids[0])]
    owner.kill()
    assert all(process_alive(p) for p in pids), "the scenario needs the CLI orphaned"
    done = await wait_status(durable_api, run.name, S.RUN_STATUS_COMPLETED, timeout=90)
    assert done.attempt == 2
    await _gone(pids, [worktree])
    assert done.output["changed_files"] == ["x.txt"]
    assert worktrees(code_env, repository) == []


async def test_the_timeout_kills_the_cli_and_its_children(
    agents: Stub, code_env: CodeEnv, repository: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    run = await code_run(agents, repository, {"pidfile": str(pidfile)}, keep_worktree=True)
    pids = await _started(agents, run, pidfile)
    failed = await wait_status(agents, run.name, S.RUN_STATUS_FAILED, timeout=30)
    assert failed.error == (
        f"claude code: timed out after {CLAUDE_CODE_TIMEOUT}s (CLAUDE_CODE_TIMEOUT); it and the "
        "processes it started were killed"
    )
    await _gone(pids, [])
    # Kept as asked, whatever the outcome: what the CLI did can be looked at.
    [worktree] = worktrees(code_env, repository)  # (the CLI is gone: no .pgid note)
    assert exists(worktree)
    git(repository, "worktree", "remove", "--force", str(worktree))


async def test_a_failing_cli_fails_the_run_with_its_stderr(
    agents: Stub, code_env: CodeEnv, repository: Path
) -> None:
    run = await code_run(agents, repository, {"exit": 3})
    failed = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    assert failed.error.startswith("claude code exited with status 3:")
    assert "fatal: the stand-in gave up" in failed.error
    assert worktrees(code_env, repository) == []


async def test_a_repository_outside_the_allowed_roots_is_refused(
    agents: Stub, code_env: CodeEnv
) -> None:
    outside = make_repository(code_env.outside / f"repo-{uuid.uuid4().hex[:8]}")
    for path in (str(outside), f"{code_env.allowed}/../outside/{outside.name}", "relative/repo"):
        error = await rpc_error(
            create_run(
                agents,
                workflow="workflows/code",
                input={"message": "fix it", "repository": path},
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, path
        assert "input.repository" in (error.details() or "")
    error = await rpc_error(
        create_run(agents, workflow="workflows/code", input={"message": "fix it"})
    )
    assert error.details() == "input.repository is required"
    # A symlink inside the allowed roots that points outside is refused too.
    link = code_env.allowed / f"link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(outside)
    error = await rpc_error(
        create_run(
            agents, workflow="workflows/code", input={"message": "fix it", "repository": str(link)}
        )
    )
    assert "outside the allowed roots" in (error.details() or "")


async def test_a_directory_that_is_not_a_repository_fails_clearly(
    agents: Stub, code_env: CodeEnv
) -> None:
    plain = code_env.allowed / f"plain-{uuid.uuid4().hex[:8]}"
    plain.mkdir()
    run = await code_run(agents, plain, {})
    failed = await wait_status(agents, run.name, S.RUN_STATUS_FAILED)
    assert failed.error == f"{plain.resolve()} is not in a git repository"


async def test_list_workflows_describes_each_workflow(agents: Stub) -> None:
    reply = await agents.ListWorkflows(S.ListWorkflowsRequest())
    listed = {w.name: w for w in reply.workflows}
    assert {"workflows/chat", "workflows/plan", "workflows/code", "workflows/echo"} <= set(listed)
    expected = {
        "chat": (["retrieve", "respond"], ["message"], "context_sources"),
        "plan": (["discovery", "design", "approval", "planning"], ["message"], "models"),
        "code": (["code"], ["message", "repository"], "keep_worktree"),
    }
    for name, (nodes, required, field) in expected.items():
        workflow = listed[f"workflows/{name}"]
        assert list(workflow.nodes) == nodes
        assert workflow.description
        schema = json_format.MessageToDict(workflow.input_schema)
        assert schema["required"] == required
        assert field in schema["properties"]
