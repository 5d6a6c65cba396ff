"""`develop` with the local model: how often it completes a trivial change, out of N tries.

Starts its own embedded PostgreSQL, nats-server and local model server (the model `make install`
fetched, as `amelia up` runs it) and the events and agents services in this process. Each try
makes a fresh sample repository (`calc.py` with `add`, `test_calc.py` testing it, on `main`) and
asks `develop`, on `local:qwen2.5-coder-0.5b` with the built-in developer, to add `subtract(a, b)`
with its test. The plan is approved as soon as it is asked; at the final question the branch is
checked (the worktree's `calc.py` defines `subtract`, `test_calc.py` calls it, and the tests pass
there, more of them than before); a change that passes is landed, and the try counts only if it
then is in `main`. Anything else is discarded and reported with what went wrong. Tries run one
after another (the machine is shared), each with a deadline. The model samples at its default
temperature: with greedy decoding the tries would all be the same try.

    python -m bench.develop_local [--tries 5] [--deadline 900]
    BENCH_DEADLINE_SECONDS=5400 python -m bench develop_local

Not part of `make test`: a try takes minutes on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from amelia.v1 import agents_pb2, agents_pb2_grpc
from amelia_agents.worktree import git
from amelia_common.settings import DEFAULT_LOCAL_MODEL
from bench.local_model import local_mesh

MODEL = f"local:{DEFAULT_LOCAL_MODEL}"
REQUEST = (
    "Add a function subtract(a, b) to calc.py that returns a - b, and a test for it, "
    "test_subtract, in test_calc.py."
)
CALC = "def add(a, b):\n    return a + b\n"
TEST_CALC = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
TEST_COMMAND = f"{sys.executable} -B -m pytest -q -p no:cacheprovider"
DEADLINE_SECONDS = 900.0
MAX_TOKENS = 256
TERMINAL = (
    agents_pb2.RUN_STATUS_COMPLETED,
    agents_pb2.RUN_STATUS_FAILED,
    agents_pb2.RUN_STATUS_CANCELLED,
)


@dataclass
class Try:
    number: int
    ok: bool = False
    why: str = ""
    seconds: float = 0.0
    rounds: int = 0
    tools: str = ""
    run: str = ""


def sample_files(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "calc.py").write_text(CALC)
    (path / "test_calc.py").write_text(TEST_CALC)


async def sample_repository(path: Path) -> Path:
    """`calc.py` and its test, committed on `main` in a new repository at `path`."""
    await asyncio.to_thread(sample_files, path)
    await git(["init", "-q", "-b", "main"], path)
    await git(["add", "."], path)
    identity = ["-c", "user.name=b", "-c", "user.email=b@example.com"]
    await git([*identity, "commit", "-qm", "calc"], path)
    return path


def tests_pass(where: Path) -> tuple[bool, str]:
    done = subprocess.run(
        TEST_COMMAND.split(), cwd=where, capture_output=True, text=True, timeout=120
    )
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return done.returncode == 0, last


def check_branch(worktree: Path) -> str:
    """Why the change on the branch is not the one asked for ("" when it is)."""
    calc = (worktree / "calc.py").read_text() if (worktree / "calc.py").is_file() else ""
    tests = (worktree / "test_calc.py").read_text() if (worktree / "test_calc.py").is_file() else ""
    if "def subtract(" not in calc:
        return "calc.py has no subtract()"
    if "subtract(" not in tests.replace("def test_subtract(", ""):
        return "test_calc.py does not call subtract()"
    ok, summary = tests_pass(worktree)
    if not ok:
        return f"the tests fail on the branch: {summary}"
    passed = re.search(r"(\d+) passed", summary)
    if not passed or int(passed.group(1)) < 2:  # test_add was there before
        return f"the tests pass but no test was added: {summary}"
    return ""


def value(answer: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    json_format.ParseDict(answer, out)
    return out


async def drive(
    stub: agents_pb2_grpc.AgentServiceStub, repo: Path, attempt: Try, model: str = MODEL
) -> None:
    request = agents_pb2.CreateRunRequest(run=agents_pb2.Run(workflow="workflows/develop"))
    request.run.input.update(
        {
            "message": REQUEST,
            "repository": str(repo),
            "model": model,
            "developer": "agent",
            "test_command": TEST_COMMAND,
            "test_timeout": 120,
            # Two tokens a second on a busy two-core machine: short plans, room for the code.
            "system_prompt": "Be brief.",
            "max_tokens": MAX_TOKENS,
        }
    )
    run = (await stub.CreateRun(request)).run
    attempt.run = run.name
    answered: set[tuple[str, int]] = set()
    while True:
        run = (await stub.GetRun(agents_pb2.GetRunRequest(name=run.name))).run
        if run.status in TERMINAL:
            break
        if run.status == agents_pb2.RUN_STATUS_PAUSED:
            node = run.interrupt.node
            question = json_format.MessageToDict(run.interrupt).get("value", {})
            key = (node, len(answered))
            if node == "approve_plan" and key not in answered:
                answered.add(key)
                await stub.ResumeRun(
                    agents_pb2.ResumeRunRequest(name=run.name, answer=value("approve"))
                )
            elif node == "approve_diff":
                attempt.rounds = int(question.get("rounds", 0))
                worktree = await worktree_of(repo, str(question.get("branch", "")))
                attempt.why = check_branch(worktree) if worktree else "no worktree"
                decision = "discard" if attempt.why else "land into main"
                answered.add((node, len(answered)))
                await stub.ResumeRun(
                    agents_pb2.ResumeRunRequest(name=run.name, answer=value(decision))
                )
                if attempt.why:
                    return
        await asyncio.sleep(1.0)
    output = json_format.MessageToDict(run.output)
    if run.status != agents_pb2.RUN_STATUS_COMPLETED:
        attempt.why = f"the run ended {agents_pb2.RunStatus.Name(run.status)}: {run.error}"
        return
    if output.get("status") != "landed":
        attempt.why = attempt.why or f"not landed: {output.get('status')} {output.get('message')}"
        return
    calc = await git(["show", "main:calc.py"], repo)
    attempt.ok = "def subtract(" in calc
    attempt.why = "" if attempt.ok else "landed, but main has no subtract()"


async def worktree_of(repo: Path, branch: str) -> Path | None:
    for block in (await git(["worktree", "list", "--porcelain"], repo)).split("\n\n"):
        lines = dict(line.split(" ", 1) for line in block.splitlines() if " " in line)
        if lines.get("branch") == f"refs/heads/{branch}":
            return Path(lines["worktree"])
    return None


async def tools_used(stub: agents_pb2_grpc.AgentServiceStub, name: str) -> tuple[str, str]:
    """The developer's tool calls, in order (`read_file write_file run_tests`), and a
    transcript of them with their arguments and results (for `--show`)."""
    calls: list[str] = []
    transcript: list[str] = []
    async for reply in stub.StreamRun(agents_pb2.StreamRunRequest(name=name)):
        data = json_format.MessageToDict(reply.event.data)
        if reply.event.type == "run.tool.called":
            calls.append(str(data.get("tool", "?")))
            transcript.append(f"  > {data.get('tool')} {json.dumps(data.get('args'))[:400]}")
        elif reply.event.type == "run.tool.result":
            outcome = data.get("error") or data.get("result") or ""
            transcript.append(f"  < {str(outcome)[-400:]}")
    return " ".join(calls), "\n".join(transcript)


async def bench(
    root: Path, tries: int, deadline: float, show: bool = False, gguf: str = DEFAULT_LOCAL_MODEL
) -> list[Try]:
    allowed = root / "repos"
    allowed.mkdir()
    results: list[Try] = []
    async with local_mesh(
        root,
        "develop-local",
        LOCAL_MODEL=gguf,
        CODE_ALLOWED_ROOTS=[allowed],
        GIT_WORKTREE_DIR=root / "worktrees",
        CLAUDE_CODE_PATH="",
    ) as mesh:
        for number in range(1, tries + 1):
            attempt = Try(number)
            repo = await sample_repository(allowed / f"sample-{number}")
            started = time.perf_counter()
            try:
                await asyncio.wait_for(drive(mesh.stub, repo, attempt, f"local:{gguf}"), deadline)
            except TimeoutError:
                attempt.why = f"no result within {deadline:.0f}s"
            attempt.seconds = time.perf_counter() - started
            if attempt.run:
                with contextlib.suppress(grpc.aio.AioRpcError):  # ended already
                    await mesh.stub.CancelRun(agents_pb2.CancelRunRequest(name=attempt.run))
                try:
                    attempt.tools, transcript = await asyncio.wait_for(
                        tools_used(mesh.stub, attempt.run), 30
                    )
                except TimeoutError:
                    attempt.tools, transcript = "?", ""
            results.append(attempt)
            verdict = "ok" if attempt.ok else f"FAILED: {attempt.why}"
            print(
                f"try {number}: {verdict} ({attempt.seconds:.0f}s, {attempt.rounds} round(s); "
                f"tools: {attempt.tools or 'none'})",
                flush=True,
            )
            if show and attempt.run:
                print(transcript, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--deadline", type=float, default=DEADLINE_SECONDS, help="per try, s")
    parser.add_argument("--show", action="store_true", help="print each try's tool calls")
    parser.add_argument(
        "--model", default=DEFAULT_LOCAL_MODEL, help="LOCAL_MODEL: the default, or a .gguf's path"
    )
    args = parser.parse_args(sys.argv[1:] if __name__ == "__main__" else [])
    with tempfile.TemporaryDirectory(prefix="amelia-bench-develop-", dir="/tmp") as tmp:
        results = asyncio.run(bench(Path(tmp), args.tries, args.deadline, args.show, args.model))
    done = sum(r.ok for r in results)
    print(f"\ndevelop with local:{args.model}: {done} of {len(results)} tries completed the change")


if __name__ == "__main__":
    main()
