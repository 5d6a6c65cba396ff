"""`develop` end to end on real git repositories, the real mesh and a scripted model speaking
OpenAI's streaming wire format (tool calls included): plan → approval → the built-in developer
editing files through its tools → the reviewer asking for one change → the developer making
it → approval of the final diff → landed into `main`, with the user's uncommitted work in their
checkout untouched. Then GitService: diff, merge-commit landing, a conflict, discard; a cancel
in the middle of the developer's test command; a SIGKILLed worker in the same place."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from agents_fake_llm import FakeServer, openai_chunk
from agents_helpers import (
    S,
    WorkerProcess,
    collect,
    create_run,
    data,
    rpc_error,
    running_agents,
    wait_status,
)
from google.protobuf import json_format, struct_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from workflows_helpers import CodeEnv, git, make_repository

from amelia.v1 import agents_pb2_grpc, events_pb2, events_pb2_grpc, git_pb2, git_pb2_grpc
from amelia_common.eventlog import event_data
from amelia_common.settings import DEFAULT_LOCAL_MODEL, Settings

LOCAL = DEFAULT_LOCAL_MODEL
GREETING_V1 = 'def greet(name):\n    return f"Hello, {name}!"\n'
GREETING_V2 = 'def greet(name):\n    """Say hello."""\n    return f"Hello, {name}!"\n'


# a scripted model --------------------------------------------------------------------------


@dataclass
class Reply:
    text: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


Script = Callable[[str, list[dict[str, Any]]], Reply]


class ScriptedOpenAI(FakeServer):
    """An OpenAI-compatible server whose replies a test scripts per model name: `script(system,
    messages)` -> text or tool calls, streamed as chat.completion.chunk SSE."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, Script] = {}

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.served, methods=["GET"]),
        ]

    async def served(self, _request: Request) -> Response:
        """As llama.cpp's server lists the one model it serves (for `local:` models)."""
        return JSONResponse({"object": "list", "data": [{"id": LOCAL, "object": "model"}]})

    def model(self, script: Script) -> str:
        name = f"scripted-{uuid.uuid4().hex[:8]}"
        self.scripts[name] = script
        return f"openai:{name}@{self.url}/v1"

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        messages = body["messages"]
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        reply = self.scripts[body["model"]](system, [m for m in messages if m["role"] != "system"])

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return openai_chunk(body["model"], delta, finish)

        async def stream() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            if reply.text:
                yield chunk({"content": reply.text})
            for i, (name, args) in enumerate(reply.calls):
                call = {
                    "index": i,
                    "id": f"call_{uuid.uuid4().hex[:8]}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)},
                }
                yield chunk({"tool_calls": [call]})
            yield chunk({}, "tool_calls" if reply.calls else "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(self._guarded(stream()), media_type="text/event-stream")


@pytest.fixture(scope="module")
async def scripted() -> AsyncIterator[ScriptedOpenAI]:
    server = ScriptedOpenAI()
    await server.start()
    yield server
    await server.stop()


def team(developer: list[list[Reply]], reviewer: Callable[[str], str]) -> Script:
    """Plan steps answer in one line; the developer's round r (2 after a review asked for
    changes) replies its r-th list in order, one reply per turn of its conversation (so a
    re-run replays the same turns); the reviewer answers `reviewer(prompt)`."""

    def script(system: str, messages: list[dict[str, Any]]) -> Reply:
        if "You are the Developer" in system:
            first = str(messages[0]["content"])
            replies = developer[1 if "reviewer asked for changes" in first else 0]
            turn = sum(1 for m in messages if m["role"] == "assistant")
            return replies[min(turn, len(replies) - 1)]
        if "You are the Reviewer" in system:
            return Reply(reviewer(str(messages[0]["content"])))
        return Reply("1. Add greet() in greet.py.")

    return script


def write_greeting(*then: Reply) -> list[Reply]:
    return [
        Reply("Looking around. ", [("list_files", {})]),
        Reply("", [("write_file", {"path": "greet.py", "content": GREETING_V1})]),
        *then,
        Reply("Added greet()."),
    ]


# the mesh ----------------------------------------------------------------------------------


@dataclass
class Mesh:
    agents: agents_pb2_grpc.AgentServiceStub
    git: git_pb2_grpc.GitServiceStub
    address: str

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`amelia <args>` pointed at this agents service."""
        env = {**os.environ, "AGENTS_ADDRESS": self.address, "NO_COLOR": "1", "COLUMNS": "200"}
        amelia = str(Path(sys.executable).with_name("amelia"))
        return await asyncio.to_thread(
            subprocess.run, [amelia, *args], env=env, capture_output=True, text=True, timeout=120
        )


@pytest.fixture(scope="module")
async def mesh(workflows_settings: Settings, scripted: ScriptedOpenAI) -> AsyncIterator[Mesh]:
    # `local:` models are served by the scripted server, as llama.cpp would serve them; a queue
    # of its own, so the session's other agents service (no such server) never takes its runs.
    settings = workflows_settings.model_copy(
        update={"LOCAL_MODEL_URL": f"{scripted.url}/v1", "RUNS_QUEUE_STREAM": "AMELIA_RUNS_DEVELOP"}
    )
    async with running_agents(settings) as running:
        address = f"127.0.0.1:{running.service.bound_port}"
        yield Mesh(running.stub, git_pb2_grpc.GitServiceStub(running.channel), address)


def answer(value: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    json_format.ParseDict(value, out)
    return out


async def resume(stub: Any, name: str, value: Any) -> None:
    await stub.ResumeRun(S.ResumeRunRequest(name=name, answer=answer(value)))


async def wait_question(stub: Any, name: str, node: str, timeout: float = 90) -> S.Run:
    """Wait until the run is paused on `node`'s question (or ended: returned as is)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = (await stub.GetRun(S.GetRunRequest(name=name))).run
        if run.status == S.RUN_STATUS_PAUSED and run.interrupt.node == node:
            return run
        if run.status in (S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED, S.RUN_STATUS_CANCELLED):
            return run
        assert asyncio.get_running_loop().time() < deadline, f"{name} never asked {node}: {run}"
        await asyncio.sleep(0.1)


def repository(code_env: CodeEnv) -> Path:
    return make_repository(code_env.allowed / f"repo-{uuid.uuid4().hex[:8]}")


def develop_input(repo: Path, model: str, **extra: Any) -> dict[str, Any]:
    return {
        "message": "Add greet()",
        "repository": str(repo),
        "model": model,
        "developer": "agent",
        **extra,
    }


async def develop_until_final_question(stub: Any, repo: Path, model: str, **extra: Any) -> S.Run:
    run = await create_run(
        stub,
        workflow="workflows/develop",
        input=develop_input(repo, model, **extra),
    )
    paused = await wait_question(stub, run.name, "approve_plan")
    assert paused.status == S.RUN_STATUS_PAUSED, paused
    await resume(stub, run.name, "approve")
    final = await wait_question(stub, run.name, "approve_diff")
    assert final.status == S.RUN_STATUS_PAUSED, final
    return final


def exists(path: str | Path) -> bool:
    return bool(path) and Path(path).exists()


def value_of(run: S.Run) -> dict[str, Any]:
    return json_format.MessageToDict(run.interrupt)["value"]


def output_of(run: S.Run) -> dict[str, Any]:
    return json_format.MessageToDict(run.output)


# tests -------------------------------------------------------------------------------------


async def test_review_asks_for_a_change_then_the_approved_diff_lands_in_main(
    mesh: Mesh, scripted: ScriptedOpenAI, code_env: CodeEnv
) -> None:
    repo = repository(code_env)
    # The user's checkout of main has work of their own: a change and a new file.
    (repo / "README.md").write_text("# test repository\nmy notes\n")
    (repo / "scratch.txt").write_text("mine\n")
    docstring = {
        "path": "greet.py",
        "old_text": "def greet(name):\n",
        "new_text": 'def greet(name):\n    """Say hello."""\n',
    }
    edit = Reply("", [("edit_file", docstring)])
    reviews: list[str] = []

    def reviewer(prompt: str) -> str:
        reviews.append(prompt)
        return "APPROVE" if '"""Say hello."""' in prompt else "REQUEST CHANGES: add a docstring."

    model = scripted.model(team([write_greeting(), [edit, Reply("Docstring added.")]], reviewer))
    final = await develop_until_final_question(mesh.agents, repo, model)

    question = value_of(final)
    assert question["options"] == ["land", "discard", "keep"]
    assert question["into"] == "main" and question["rounds"] == 2
    assert question["review"]["verdict"] == "approve"
    assert [f["path"] for f in question["diff"]["files"]] == ["greet.py"]
    assert '+    """Say hello."""' in question["diff"]["patch"]
    assert len(reviews) == 2 and "+" + GREETING_V1.splitlines()[0] in reviews[0]

    # The diff RPC shows exactly the change.
    diff = await mesh.git.GetRunDiff(git_pb2.GetRunDiffRequest(name=final.name))
    [file] = diff.files
    assert (file.path, file.change, file.additions, file.deletions) == (
        "greet.py",
        git_pb2.FILE_CHANGE_ADDED,
        3,
        0,
    )
    assert "".join(line[1:] + "\n" for line in file.patch.splitlines()[6:]) == GREETING_V2
    assert len(diff.commits) == 2 and diff.branch.target == "main"
    branch = diff.branch.branch
    assert exists(diff.branch.worktree)

    # Answering the question is the one way to settle a paused run.
    refused = await rpc_error(mesh.git.LandRun(git_pb2.LandRunRequest(name=final.name)))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "paused" in (refused.details() or "")

    # `amelia runs land` answers the run's question; the run lands its branch and ends.
    landing = await mesh.cli("runs", "land", final.name, "--into", "main")
    assert landing.returncode == 0, landing.stderr
    assert "landed" in landing.stdout
    done = await wait_status(mesh.agents, final.name, S.RUN_STATUS_COMPLETED, timeout=60)
    out = output_of(done)
    assert out["status"] == "landed" and out["into"] == "main" and out["fast_forward"]
    assert git(repo, "show", "main:greet.py") + "\n" == GREETING_V2
    # The checkout came along; the user's change and file are as they left them.
    assert (repo / "greet.py").read_text() == GREETING_V2
    assert (repo / "README.md").read_text().endswith("my notes\n")
    status = {line.strip() for line in git(repo, "status", "--porcelain").splitlines()}
    assert status == {"M README.md", "?? scratch.txt"}
    assert not git(repo, "branch", "--list", branch)
    assert not exists(diff.branch.worktree)

    events = await collect(mesh.agents, final.name)
    assert [d["round"] for d in data(events, "git.diff.ready")] == [1, 2]
    [landed] = data(events, "git.landed")
    assert landed["into"] == "main" and landed["files"] == ["greet.py"]
    tools = [d["tool"] for d in data(events, "run.tool.called")]
    assert tools[:2] == ["list_files", "write_file"] and "edit_file" in tools


async def git_events(address: str, run: str, event_type: str) -> list[dict[str, Any]]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await events_pb2_grpc.EventServiceStub(channel).ListEvents(
            events_pb2.ListEventsRequest(
                filter=events_pb2.EventFilter(types=[event_type], subject=run)
            )
        )
    return [event_data(e) for e in reply.events]


async def test_git_service_merges_refuses_a_conflict_and_discards(
    mesh: Mesh, scripted: ScriptedOpenAI, code_env: CodeEnv, events_address: str
) -> None:
    repo = repository(code_env)
    model = scripted.model(team([write_greeting()], lambda _: "LGTM, approve."))
    first = await develop_until_final_question(mesh.agents, repo, model)
    await resume(mesh.agents, first.name, "keep")
    second = await develop_until_final_question(mesh.agents, repo, model)
    await resume(mesh.agents, second.name, {"decision": "keep"})
    for run in (first, second):
        kept = await wait_status(mesh.agents, run.name, S.RUN_STATUS_COMPLETED, timeout=60)
        assert output_of(kept)["status"] == "kept"

    listed = await mesh.git.ListRepositories(git_pb2.ListRepositoriesRequest())
    [mine] = [r for r in listed.repositories if r.path == str(repo.resolve())]
    assert mine.current_branch == "main"
    assert sorted(b.run for b in mine.run_branches) == sorted([first.name, second.name])

    targets = {"-f": "INVALID_ARGUMENT", "a..b": "INVALID_ARGUMENT", "nope": "FAILED_PRECONDITION"}
    for into, code in targets.items():
        bad = await rpc_error(mesh.git.LandRun(git_pb2.LandRunRequest(name=first.name, into=into)))
        assert bad.code().name == code, (into, bad.details())

    # main moved on elsewhere: landing makes a merge commit.
    (repo / "other.txt").write_text("other\n")
    git(repo, "add", "other.txt")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "other")
    # A file of the user's in the way in their checkout of main: refused, nothing moved.
    (repo / "greet.py").write_text("my own\n")
    before = git(repo, "rev-parse", "main")
    blocked = await rpc_error(mesh.git.LandRun(git_pb2.LandRunRequest(name=first.name)))
    assert blocked.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "checked out" in (blocked.details() or "") and "greet.py" in (blocked.details() or "")
    assert git(repo, "rev-parse", "main") == before
    assert (repo / "greet.py").read_text() == "my own\n"
    (repo / "greet.py").unlink()
    landed = await mesh.git.LandRun(git_pb2.LandRunRequest(name=first.name, into="main"))
    assert not landed.fast_forward and landed.files == ["greet.py"]
    parents = git(repo, "log", "-1", "--format=%P", "main").split()
    assert len(parents) == 2 and landed.commit == git(repo, "rev-parse", "main")
    assert (repo / "greet.py").read_text() == GREETING_V1

    # The second run wrote greet.py too, from the old base: with different content it conflicts.
    (repo / "greet.py").write_text("def greet(name):\n    return 'hi ' + name\n")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "mine")
    before = git(repo, "rev-parse", "main")
    conflict = await rpc_error(mesh.git.LandRun(git_pb2.LandRunRequest(name=second.name)))
    assert conflict.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "greet.py" in (conflict.details() or "")
    assert git(repo, "rev-parse", "main") == before
    assert git(repo, "status", "--porcelain") == ""

    diff = await mesh.git.GetRunDiff(git_pb2.GetRunDiffRequest(name=second.name))
    worktree = diff.branch.worktree
    shown = await mesh.cli("runs", "diff", second.name, "--stat")
    assert shown.returncode == 0, shown.stderr
    assert "greet.py" in shown.stdout and "+2 -0" in shown.stdout
    discarded = await mesh.git.DiscardRun(git_pb2.DiscardRunRequest(name=second.name))
    assert discarded.branch == diff.branch.branch and discarded.commit == diff.head
    assert not exists(worktree) and not git(repo, "branch", "--list", discarded.branch)
    again = await rpc_error(mesh.git.DiscardRun(git_pb2.DiscardRunRequest(name=second.name)))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    # After the run's end: in the log under the run's subject.
    [event] = await git_events(events_address, second.name, "git.discarded")
    assert event["commit"] == diff.head and event["branch"] == discarded.branch
    [event] = await git_events(events_address, first.name, "git.landed")
    assert event["commit"] == landed.commit and not event["fast_forward"]
    # A client watching the run sees them: StreamRun of the finished run replays them after
    # its end, and one resuming after the end (the last event it saw) gets just those.
    for run, kind in ((first, "git.landed"), (second, "git.discarded")):
        replayed = await collect(mesh.agents, run.name)
        assert [e.type for e in replayed][-2:] == ["run.completed", kind]
        after_end = await collect(mesh.agents, run.name, after=replayed[-2].sequence)
        assert [e.type for e in after_end] == [kind]
        assert await collect(mesh.agents, run.name, after=replayed[-1].sequence) == []

    missing = await rpc_error(mesh.git.GetRunDiff(git_pb2.GetRunDiffRequest(name="runs/nope")))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = f"runs/{uuid.uuid4()}"
    gone = await rpc_error(mesh.git.GetRunDiff(git_pb2.GetRunDiffRequest(name=unknown)))
    assert gone.code() == grpc.StatusCode.NOT_FOUND


def slow_tests(tmp: Path) -> str:
    """A test command that records its pid then sleeps, the first time only."""
    return (
        f"if [ -e {tmp}/ran ]; then echo passed; exit 0; fi; touch {tmp}/ran; "
        f"echo $$ > {tmp}/pid.tmp && mv {tmp}/pid.tmp {tmp}/pid; exec sleep 120"
    )


Process = tuple[int, str]  # pid and start time: a pid alone may be reused meanwhile


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from the state on (empty when there is no such process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


async def wait_pid(path: Path, timeout: float = 60) -> Process:
    deadline = asyncio.get_running_loop().time() + timeout
    while not exists(path):
        assert asyncio.get_running_loop().time() < deadline, "the test command never started"
        await asyncio.sleep(0.1)
    pid = int(await asyncio.to_thread(path.read_text))
    fields = stat_fields(pid)
    assert fields, "the test command ended already"
    return pid, fields[19]


def gone(process: Process) -> bool:
    """Ended: no such process, another one with its pid, or a zombie not reaped yet."""
    fields = stat_fields(process[0])
    return not fields or fields[19] != process[1] or fields[0] == "Z"


async def wait_gone(process: Process, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not gone(process):
        assert asyncio.get_running_loop().time() < deadline, f"process {process} still runs"
        await asyncio.sleep(0.1)


def run_tests_then_done() -> list[Reply]:
    return write_greeting(Reply("Testing. ", [("run_tests", {})]))


async def test_cancel_during_the_developers_tests_stops_them(
    mesh: Mesh, scripted: ScriptedOpenAI, code_env: CodeEnv, tmp_path: Path
) -> None:
    repo = repository(code_env)
    model = scripted.model(team([run_tests_then_done()], lambda _: "APPROVE"))
    run = await create_run(
        mesh.agents,
        workflow="workflows/develop",
        input=develop_input(repo, model, test_command=slow_tests(tmp_path)),
    )
    await wait_question(mesh.agents, run.name, "approve_plan")
    await resume(mesh.agents, run.name, "approve")
    pid = await wait_pid(tmp_path / "pid")
    await mesh.agents.CancelRun(S.CancelRunRequest(name=run.name, reason="changed my mind"))
    await wait_status(mesh.agents, run.name, S.RUN_STATUS_CANCELLED)
    await wait_gone(pid)
    # The branch stays (nothing committed yet) until discarded.
    discarded = await mesh.git.DiscardRun(git_pb2.DiscardRunRequest(name=run.name))
    assert discarded.worktree and not exists(discarded.worktree)


async def test_a_worker_killed_during_the_developer_resumes_from_its_checkpoint(
    durable_api: agents_pb2_grpc.AgentServiceStub,
    start_worker: Callable[..., WorkerProcess],
    scripted: ScriptedOpenAI,
    code_env: CodeEnv,
    tmp_path: Path,
) -> None:
    repo = repository(code_env)
    model = scripted.model(team([run_tests_then_done()], lambda _: "APPROVE"))
    first = start_worker("first")
    await first.ready(timeout=240)
    run = await create_run(
        durable_api,
        workflow="workflows/develop",
        input=develop_input(repo, model, test_command=slow_tests(tmp_path)),
    )
    await wait_question(durable_api, run.name, "approve_plan")
    await resume(durable_api, run.name, "approve")
    pid = await wait_pid(tmp_path / "pid")
    first.kill()
    assert not gone(pid), "the test command died with the worker"
    second = start_worker("second")
    await second.ready(timeout=240)
    final = await wait_question(durable_api, run.name, "approve_diff")
    assert final.status == S.RUN_STATUS_PAUSED and final.attempt >= 2
    # The next attempt killed what the dead worker left running, then did the round again.
    await wait_gone(pid)
    assert [f["path"] for f in value_of(final)["diff"]["files"]] == ["greet.py"]
    await resume(durable_api, run.name, "land into main")
    done = await wait_status(durable_api, run.name, S.RUN_STATUS_COMPLETED, timeout=60)
    assert output_of(done)["status"] == "landed"
    assert git(repo, "show", "main:greet.py") + "\n" == GREETING_V1


async def test_claude_code_develops_when_found_and_discard_removes_the_branch(
    mesh: Mesh, scripted: ScriptedOpenAI, code_env: CodeEnv
) -> None:
    """CLAUDE_CODE_PATH is the stand-in here: it runs in the worktree and changes nothing, so
    the (empty) diff goes to the person without a review round; `discard` removes it all."""
    repo = repository(code_env)
    model = scripted.model(team([[Reply("unused")]], lambda _: "APPROVE"))
    final = await develop_until_final_question(
        mesh.agents, repo, model, developer="auto", max_review_rounds=0
    )
    question = value_of(final)
    assert question["diff"]["files"] == [] and question["review"]["automatic"]
    await resume(mesh.agents, final.name, "discard")
    done = await wait_status(mesh.agents, final.name, S.RUN_STATUS_COMPLETED, timeout=60)
    assert output_of(done)["status"] == "discarded"
    assert not git(repo, "branch", "--list", "amelia/*")
    events = await collect(mesh.agents, final.name)
    [called] = [d for d in data(events, "run.tool.called") if d["tool"] == "claude-code"]
    assert called["cwd"].startswith(str(code_env.worktrees))
    assert "Approved plan:" in called["args"][-1]
    [discarded] = data(events, "git.discarded")
    assert discarded["branch"] == f"amelia/{final.name.removeprefix('runs/')}"


async def test_a_local_model_drafts_until_the_tests_pass_and_its_change_lands(
    mesh: Mesh, scripted: ScriptedOpenAI, code_env: CodeEnv
) -> None:
    """A `local:` model develops file by file (small_developer): its first draft fails the
    tests and is taken back, the second, drawn warmer, passes and is what lands."""
    repo = repository(code_env)
    (repo / "greet.py").write_text("def hello():\n    return 'hi'\n")
    git(repo, "add", "greet.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "hello")
    drafts = {
        "greet.py": ["def greet(name):\n    return name", GREETING_V1.strip()],
        "check_greet.py": ["from greet import greet\nassert greet('Ada') == 'Hello, Ada!'"] * 2,
    }
    temperatures: list[float] = []
    asked: list[str] = []
    prompts: list[str] = []

    def script(system: str, messages: list[dict[str, Any]]) -> Reply:
        if "Name the files" in system:
            return Reply("Files:\n- `greet.py`\n- check_greet.py\n- ../outside.py")
        if "add code to one file" in system:
            prompt = str(messages[-1]["content"])
            name = prompt.rsplit("at the end of ", 1)[1].rstrip(".")
            asked.append(name)
            prompts.append(prompt)
            temperatures.append(float(scripted.requests[-1]["body"].get("temperature", 0)))
            return Reply(f"```python\n{drafts[name][min(asked.count(name) - 1, 1)]}\n```")
        if "You are the Reviewer" in system:
            return Reply("APPROVE")
        return Reply("1. Add greet() and a check.")

    scripted.scripts[LOCAL] = script
    final = await develop_until_final_question(
        mesh.agents,
        repo,
        f"local:{LOCAL}",
        test_command=f"{sys.executable} -B check_greet.py",
        temperature=0,
    )
    question = value_of(final)
    assert question["review"]["verdict"] == "approve"
    assert sorted(f["path"] for f in question["diff"]["files"]) == ["check_greet.py", "greet.py"]
    # The first draft was drawn at the run's temperature, the second warmer.
    assert temperatures == [0, 0, 0.7, 0.7]
    # The redraw is shown what the failed draft added and how the tests failed.
    assert "the tests failed" not in prompts[0]
    assert "return name\n```\nand the tests failed" in prompts[2] and "AssertionError" in prompts[2]
    await resume(mesh.agents, final.name, "land into main")
    done = await wait_status(mesh.agents, final.name, S.RUN_STATUS_COMPLETED, timeout=60)
    assert output_of(done)["status"] == "landed"
    # What the user had stays; the passing draft is added after it, the failing one is gone.
    assert (
        git(repo, "show", "main:greet.py") + "\n"
        == f"def hello():\n    return 'hi'\n\n{GREETING_V1}"
    )
    assert "return name" not in git(repo, "show", "main:greet.py")
    events = await collect(mesh.agents, final.name)
    drafts_seen = [
        (d["draft"], d["passed"]) for d in data(events, "workflow.progress") if "draft" in d
    ]
    assert drafts_seen == [(1, False), (2, True)]
    appended = [
        d["args"]["path"] for d in data(events, "run.tool.called") if d["tool"] == "append_file"
    ]
    assert appended == ["greet.py", "check_greet.py"] * 2  # ../outside.py was never a candidate
