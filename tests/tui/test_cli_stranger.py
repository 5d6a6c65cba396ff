"""What a stranger's check of a fresh clone found in `amelia`, each as the user meets it: a second
`up` that left the running mesh unstoppable, commands that ignored moved ports, an ingest table
with no room for the file's name, server text eaten as markup, a retried run's answer shown
twice, a silent Ctrl-C, help with `<bool>` beside every flag, a tool call without its tool."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main
from cli_helpers import amelia
from rich.console import Console
from test_cli_output import ADDRESSES, cli_env, eventually
from tui_helpers import DEADLINE, TuiMesh
from typer.core import TyperCommand, TyperGroup

from amelia_cli.commands import agents as agents_cmd
from amelia_cli.main import app
from amelia_cli.supervisor import MeshStartError, Supervisor, read_state, state_file
from amelia_common.eventlog import make_event
from amelia_common.settings import Settings

AMELIA = [sys.executable, "-m", "amelia_cli"]
HOSTILE = "[bold]x[/] must match [a-z][a-z0-9-]{0,62}"

# A process that runs `amelia up`'s Supervisor and writes mesh.json as it does (no services: the
# refusal under test must happen before any would start), then stops as `amelia up` does on
# SIGTERM.
HOLDER = """
import asyncio, signal, sys
from amelia_cli.supervisor import Supervisor
from amelia_common.settings import get_settings

supervisor = Supervisor(get_settings(), services=(), log_to_files=False)
supervisor.write_state()
print("written", flush=True)
signal.sigwait({signal.SIGTERM})
asyncio.run(supervisor.stop(grace=1))
"""


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return os.environ | {
        "AMELIA_DATA_DIR": str(data_dir),
        "LOCAL_MODEL": "off",
        "COLUMNS": "80",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def amelia_process(env: dict[str, str], *args: str, columns: int = 80) -> tuple[int, str]:
    """`amelia …` as its own process (`amelia run` sets a Ctrl-C handler: main thread only),
    with what it printed on stdout and stderr."""
    done = subprocess.run(
        [*AMELIA, *args],
        env=os.environ | env | {"COLUMNS": str(columns)},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        stdin=subprocess.DEVNULL,  # not a terminal: `amelia run` stops at a question
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def running_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A process that holds `tmp_path/data` the way a running `amelia up` does."""
    data = tmp_path / "data"
    env = _env(
        data, DATABASE_URL="postgresql://nobody@127.0.0.1:1/x", NATS_URL="nats://127.0.0.1:1"
    )
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited: sigwait gets it
    try:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER], env=env, stdout=subprocess.PIPE, text=True
        )
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    assert holder.stdout is not None and holder.stdout.readline().strip() == "written"
    try:
        yield holder, data
    finally:
        holder.kill()
        holder.wait()


def test_a_second_up_refuses_naming_the_running_one_and_leaves_it_stoppable(
    running_up: tuple[subprocess.Popen[str], Path],
) -> None:
    holder, data = running_up
    before = state_file(data).read_text()
    for detach in ([], ["--detach"]):
        second = subprocess.run(
            [*AMELIA, "up", *detach, "--timeout", "20"],
            env=_env(data),
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        assert second.returncode == 1, second
        said = " ".join(second.stderr.split())
        assert f"already running here (pid {holder.pid}" in said, second
        assert state_file(data).read_text() == before, "the refused `up` touched mesh.json"
    shown = subprocess.run(
        [*AMELIA, "down", "--timeout", "30"], env=_env(data), capture_output=True, text=True
    )
    assert shown.returncode == 0 and "stopped." in shown.stdout, shown
    assert holder.wait(timeout=30) == 0
    assert not state_file(data).exists(), "the supervisor that wrote mesh.json removes it"


def test_a_supervisor_that_never_started_leaves_another_ones_mesh_json(
    running_up: tuple[subprocess.Popen[str], Path],
) -> None:
    holder, data = running_up
    settings = Settings(AMELIA_DATA_DIR=data, LOCAL_MODEL="off")  # type: ignore[call-arg]
    second = Supervisor(settings, services=(), log_to_files=False)
    with pytest.raises(MeshStartError, match=f"pid {holder.pid}"):
        asyncio.run(second.start_infrastructure())
    asyncio.run(second.stop(grace=1))
    state = read_state(data)
    assert state is not None and state["pid"] == holder.pid


def _ports(mesh: TuiMesh) -> dict[str, str]:
    """The TUI mesh's services' ports, as `*_GRPC_PORT` settings."""
    return {
        key.replace("_ADDRESS", "_GRPC_PORT"): mesh.gateway.env[key].rsplit(":", 1)[1]
        for key in ADDRESSES
    }


async def test_every_command_finds_the_mesh_by_its_ports_or_its_mesh_json(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    """Moved ports (README's configuration table) without any `*_ADDRESS`; then nothing set at
    all but the mesh.json of a running `amelia up` that names them."""
    addressed = cli_env(tui_mesh, tmp_path / "none")
    env = {k: v for k, v in addressed.items() if k not in ADDRESSES}
    word = f"zq{uuid.uuid4().hex[:10]}"
    document = tmp_path / f"{word}.md"
    document.write_text(f"# Survey\n\nThe {word} rosette grows on the northern shore.\n")
    # Stored in this mesh for sure (its addresses): another mesh on the default ports (this
    # machine is shared) has never seen the word.
    code, shown = await asyncio.to_thread(amelia, addressed, "ingest", str(document))
    # The table wraps a long path inside its cell (the test's temp folder sets how long).
    first_cells = "".join(
        line.split("│")[1].strip() for line in shown.splitlines() if line.startswith("│")
    )
    assert code == 0 and f"{word}.md" in first_cells, shown
    moved = env | _ports(tui_mesh)
    code, found = await asyncio.to_thread(
        amelia, moved, "search", word, "--mode", "keyword", "-k", "1"
    )
    assert code == 0 and f"The {word} rosette" in found, found

    # mesh.json, written by `amelia up`'s own code (this process is the live pid it names).
    data = tmp_path / "up-data"
    ports = {k: int(v) for k, v in _ports(tui_mesh).items()}
    settings = tui_mesh.settings.model_copy(update={"AMELIA_DATA_DIR": data, **ports})
    Supervisor(settings, services=(), log_to_files=False).write_state()
    plain = env | {"AMELIA_DATA_DIR": str(data)}
    code, found = await asyncio.to_thread(
        amelia, plain, "search", word, "--mode", "keyword", "-k", "1"
    )
    assert code == 0 and f"The {word} rosette" in found, found
    for args in (("agents", "ls"), ("runs", "ls", "--limit", "1")):
        code, shown = await asyncio.to_thread(amelia, plain, *args)
        assert code == 0, (args, shown)
    state_file(data).unlink()


async def test_ingest_at_80_columns_keeps_the_file_name_and_puts_errors_under_the_table(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    binary = tmp_path / "a-binary-file-with-a-rather-long-name"
    binary.write_bytes(bytes(range(256)) * 64)
    code, shown = await asyncio.to_thread(amelia, env, "ingest", str(binary))
    assert code == 1, shown
    lines = [line for line in shown.splitlines() if line.strip()]
    assert lines[0].strip() == "1 file", shown
    assert max(len(line) for line in lines) <= 80, shown
    row = next(line for line in lines if "error" in line and "│" in line)
    assert re.search(r"│\s*error\s*│\s*0\s*│\s*\d+\.\d\d\s*│", row), shown
    assert "a-binary-file-with-a-rather-long-name" in "".join(
        line.split("│")[1].strip() for line in lines if line.startswith("│")
    ), shown
    below = " ".join(lines[lines.index(next(line for line in lines if line.startswith("└"))) + 1 :])
    assert "a-binary-file-with-a-rather-long-name:INVALID_ARGUMENT:" in "".join(below.split())


async def test_server_and_user_text_is_printed_literally(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    code, shown = await asyncio.to_thread(amelia, env, "agents", "create", "Bad_Name")
    assert code == 1 and "must match [a-z][a-z0-9-]{0,62}" in shown, shown

    agent = f"hostile-{uuid.uuid4().hex[:8]}"
    code, shown = await asyncio.to_thread(
        amelia, env, "agents", "create", agent, "--model", f"offline:fail:{HOSTILE}"
    )
    assert code == 0, shown
    code, shown = await asyncio.to_thread(amelia_process, env, "run", agent, "hello")
    assert code == 1 and HOSTILE in " ".join(shown.split()), shown

    echo = f"echo-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(amelia, env, "agents", "create", echo, "--model", "offline:echo")
    code, shown = await asyncio.to_thread(amelia_process, env, "run", echo, HOSTILE, columns=200)
    assert code == 0 and HOSTILE in shown, shown

    document = tmp_path / "hostile.md"
    document.write_text(f"# {HOSTILE}\n\n{HOSTILE} zqhostilezq\n")
    await asyncio.to_thread(amelia, env, "ingest", str(document))
    code, shown = await asyncio.to_thread(
        amelia, env, "search", "zqhostilezq", "--mode", "keyword", "-k", "1", columns=200
    )
    assert code == 0 and f"{HOSTILE} zqhostilezq" in shown, shown


def _shown(*events: tuple[str, dict[str, object]]) -> list[str]:
    """The lines `amelia run` prints for a run's events (data as the service writes it)."""
    console = Console(record=True, width=80, file=open(os.devnull, "w"))  # noqa: SIM115
    agents_cmd.console = console
    try:
        shown = agents_cmd.Shown()
        for kind, data in events:
            shown.event(make_event(kind, "runs/x", {"run": "runs/x", **data}, source="t"))
        shown.end()
    finally:
        agents_cmd.console = Console()
    return console.export_text().splitlines()


def test_a_run_picked_up_again_says_it_continues_from_its_checkpoint() -> None:
    """A worker killed in `design` (attempt 1's tokens stay in the log): the next pick-up is
    `run.resumed` reason `redelivered`, and the run continues at design, not from the start."""
    lines = _shown(
        ("run.node.started", {"attempt": 1, "node": "discovery"}),
        ("run.node.finished", {"attempt": 1, "node": "discovery"}),
        ("run.node.started", {"attempt": 1, "node": "design"}),
        *(("run.token", {"attempt": 1, "text": t}) for t in ("The design ", "is ")),
        ("run.resumed", {"attempt": 2, "reason": "redelivered"}),
        ("run.node.started", {"attempt": 2, "node": "design"}),
        ("run.token", {"attempt": 2, "text": "The design is whole."}),
    )
    text = "\n".join(lines)
    assert lines[2].startswith("The design is"), text
    assert "it continues from its last checkpoint; design runs again" in " ".join(
        " ".join(lines[3:5]).split()
    )
    assert "starts again" not in text and "retried" not in text, text
    assert lines[-1] == "The design is whole.", text


def test_a_run_whose_worker_stopped_before_any_checkpoint_says_it_starts_again() -> None:
    lines = _shown(("run.resumed", {"attempt": 2, "reason": "start"}))
    assert "before its first checkpoint — it starts again" in " ".join(" ".join(lines).split()), (
        lines
    )


def test_model_waits_and_retries_are_shown_in_words() -> None:
    message = (
        "local: the local model server at http://127.0.0.1:8081/v1 is unreachable (Connection "
        "error.); trying again for up to 30s (LLM_RECONNECT_SECONDS)"
    )
    waiting = {"attempt": 1, "node": "respond", "server": "http://127.0.0.1:8081/v1"}
    retry = {"attempt": 1, "error": "529 overloaded", "retry": 1, "of": 3, "delay_seconds": 0.5}
    lines = _shown(
        ("run.model.waiting", {**waiting, "error": "x", "seconds": 30, "message": message}),
        ("run.retry", retry),
        ("workflow.progress", {"attempt": 1, "step": "reading", "trace_id": "ab" * 16}),
    )
    assert " ".join(" ".join(lines).split()) == (
        f"· {message} · trying again (1 of 3) in 0.50 s: 529 overloaded · reading…"
    ), lines


async def paused_plan(env: dict[str, str]) -> str:
    """A `plan` run started with `amelia run` (not a terminal: it stops at the approval
    question), by name."""
    request = {"message": "Add a --verbose flag to a small CLI", "model": "offline:echo"}
    code, shown = await asyncio.to_thread(
        amelia_process, env, "run", "plan", "x", "--input", json.dumps(request)
    )
    assert code == 0 and "paused; answer with" in shown, shown
    return shown.split()[0]


async def test_a_questions_wrapped_lines_hang_under_their_field_at_80_columns(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    """QA F8: a plan's long item wrapped to column 0 (`  plan: 1. … is defined ` / `within the
    calc.py file.`), so numbered items blurred; now a field's wrapped lines hang 6 cells in,
    two deeper than its own lines, and the question's under its words."""
    env = cli_env(tui_mesh, tmp_path / "none")
    item = "1. Define add(a, b) in the calc.py file, returning the sum of both of its arguments"
    request = {"message": f"{item}\n2. Test it", "model": "offline:echo"}
    code, shown = await asyncio.to_thread(
        amelia_process, env, "run", "plan", "x", "--input", json.dumps(request)
    )
    assert code == 0 and "paused; answer with" in shown, shown
    lines = shown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("? "))
    end = next(i for i, line in enumerate(lines) if line.startswith("  answers: "))
    question = lines[start : end + 1]
    assert all(len(line) <= 80 for line in question), shown
    assert all(line.startswith(("? ", "  ")) for line in question if line), shown  # none at 0
    at = next(i for i, line in enumerate(question) if line.lstrip().startswith("1. Define"))
    assert question[at + 1].startswith("      ") and question[at + 1].strip(), shown  # hangs
    assert " ".join(" ".join(question[at : at + 2]).split()).endswith(item), shown
    assert any(line == "    2. Test it" for line in question), shown  # an item: 4 cells in


async def test_an_answer_is_not_a_retry(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    """The stranger's plan: paused, answered with `runs resume`, followed: `resumed with the
    answer`, no attempt marker (the answer is the run's second pick-up)."""
    env = cli_env(tui_mesh, tmp_path / "none")
    run_name = await paused_plan(env)
    code, answered = await asyncio.to_thread(amelia, env, "runs", "resume", run_name, "approve")
    assert code == 0, answered
    code, shown = await asyncio.to_thread(amelia_process, env, "runs", "show", run_name, "-f")
    assert code == 0 and "· resumed with the answer" in shown, shown
    assert "attempt" not in shown.replace('"attempt"', "") and "again" not in shown, shown
    assert '"RUN_STATUS_COMPLETED"' in shown, shown


async def test_agents_create_leaves_max_tokens_to_the_service(
    tui_mesh: TuiMesh, tmp_path: Path
) -> None:
    """No `--max-tokens`: a local model gets LOCAL_MODEL_MAX_TOKENS (1024), not 4096."""
    env = cli_env(tui_mesh, tmp_path / "none")
    small = tmp_path / "small.gguf"
    small.write_bytes(b"GGUF" + bytes(28))  # a `local:` path must name a GGUF file (QA s27)
    model = f"local:{small}"
    for agent, given in (
        (f"tok-{uuid.uuid4().hex[:8]}", ()),
        (f"tok-{uuid.uuid4().hex[:8]}", ("--max-tokens", "2000")),
    ):
        code, shown = await asyncio.to_thread(
            amelia, env, "agents", "create", agent, "--model", model, *given
        )
        assert code == 0, shown
        stored = (await tui_mesh.get(f"/v1/agents/{agent}"))["agent"]
        want = 2000 if given else tui_mesh.settings.LOCAL_MODEL_MAX_TOKENS
        assert stored["maxTokens"] == want, stored


def test_progress_names_its_counts_in_one_order() -> None:
    a = agents_cmd.progress_text({"step": "reading context", "passages": 5, "characters": 4327})
    b = agents_cmd.progress_text({"step": "reading context", "characters": 4327, "passages": 5})
    assert a == b == "reading context… (4,327 characters, 5 passages)"


async def test_run_names_the_tool_it_calls(tui_mesh: TuiMesh, tmp_path: Path) -> None:
    env = cli_env(tui_mesh, tmp_path / "none")
    agent = f"calc-{uuid.uuid4().hex[:8]}"
    model = 'offline:tool:calculator:{"expression": "6*7"}'
    code, shown = await asyncio.to_thread(
        amelia, env, "agents", "create", agent, "--model", model, "--tool", "calculator"
    )
    assert code == 0, shown
    code, shown = await asyncio.to_thread(amelia_process, env, "run", agent, "six times seven")
    assert code == 0 and "run.tool.called calculator" in shown, shown


async def slow_run_process(env: dict[str, str]) -> asyncio.subprocess.Process:
    """`amelia run` of a new agent that streams 200 words slowly, piped, in its own process."""
    agent = f"slow-{uuid.uuid4().hex[:8]}"
    code, shown = await asyncio.to_thread(
        amelia, env, "agents", "create", agent, "--model", "offline:echo?delay_ms=400"
    )
    assert code == 0, shown
    return await asyncio.create_subprocess_exec(
        *AMELIA,
        "run",
        agent,
        " ".join(["word"] * 200),
        env=os.environ | env | {"COLUMNS": "80"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize("when", ["at once", "after tokens"])
async def test_ctrl_c_on_run_says_it_cancelled_the_run(
    tui_mesh: TuiMesh, tmp_path: Path, when: str
) -> None:
    """Ctrl-C as soon as the run's name is out, or once its tokens stream (then the text it
    streamed is kept on the run, and said)."""
    env = cli_env(tui_mesh, tmp_path / "none")
    process = await slow_run_process(env)
    assert process.stdout is not None
    first = (await asyncio.wait_for(process.stdout.readline(), DEADLINE)).decode()
    run_name = first.split()[0]
    assert run_name.startswith("runs/"), first
    if when == "after tokens":
        seen = b""
        while b"word word" not in seen:
            seen += await asyncio.wait_for(process.stdout.read(1), DEADLINE)
    process.send_signal(signal.SIGINT)
    out, errors = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode == 130, (out, errors)
    text = out.decode()
    assert text.endswith("\n") and f"\ncancelled {run_name} (Ctrl-C)\n" in text, (text, errors)
    status: dict[str, str] = {}

    async def cancelled() -> bool:
        status.update((await tui_mesh.get(f"/v1/{run_name}"))["run"])
        return status.get("status") == "RUN_STATUS_CANCELLED"

    await eventually(cancelled, lambda: status)
    # What it streamed is kept on the run, and `amelia run` says so, as for a timeout (QA).
    said = " ".join(text.split())
    if when == "at once":
        assert "partial output" not in said, text
        return
    kept = (await tui_mesh.get(f"/v1/{run_name}"))["run"]["output"]["partial"]
    assert kept.startswith("word word"), kept
    assert f"partial output: the {len(kept)} characters streamed before it stopped" in said, text
    assert text.rstrip("\n").endswith(f"`amelia runs show {run_name}`)"), text


def _commands(command: TyperCommand | TyperGroup) -> Iterator[tuple[str, TyperCommand]]:
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            for path, leaf in _commands(sub):  # type: ignore[arg-type]
                yield f"{name} {path}".strip(), leaf
    else:
        yield "", command


def test_help_gives_every_option_a_line_and_no_flag_a_type() -> None:
    root = typer.main.get_command(app)
    missing = [
        f"amelia {path} {param.name}"
        for path, command in _commands(root)  # type: ignore[arg-type]
        for param in command.params
        if not getattr(param, "help", None)
    ]
    assert not missing, missing
    code, shown = amelia({}, "search", "--help")
    assert code == 0, shown
    assert "[default: 0]" not in shown and "<bool>" not in shown, shown
    code, shown = amelia({}, "runs", "show", "--help")
    assert "<bool>" not in shown, shown
