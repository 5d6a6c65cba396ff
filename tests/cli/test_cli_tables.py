"""What the CLI prints at 80 columns, from the values a real mesh gave (session 10's survey):
listings keep names and short values whole, a paused run's question reads as words, and a
wrong --status says which words are right."""

from __future__ import annotations

import io
import re

from rich.console import Console
from typer.testing import CliRunner

from amelia_cli.client import Column, folded, listing
from amelia_cli.commands.agents import AGENT_COLUMNS, RUN_COLUMNS, question_lines
from amelia_cli.commands.status import endpoints_table
from amelia_cli.commands.threads import HISTORY_COLUMNS
from amelia_cli.health import Probe, postgres_address, silent_detail
from amelia_cli.main import app

RUNS = [
    ("runs/a22e4bef-4415-48f2-932d-4ab84d269435", "workflows/plan", "paused", "12s ago", ""),
    (
        "runs/f698043b-a670-45f7-8ccf-dca38fddc519",
        "agents/researcher-with-a-rather-long-identifier-name",
        "failed",
        "45s ago",
        "openai: the server at http://127.0.0.1:9/v1 did not answer for 30s after 18 tries "
        "(LLM_RECONNECT_SECONDS=30): Connection error.",
    ),
    ("runs/fb64f05b-28fc-4fdd-b41c-c3f428d34a71", "agents/greeter", "completed", "47s ago", ""),
]
CHECKPOINT = "1f0c3a52-3b8e-4f7a-9f55-0d4b2e6c7a11"
AGENTS = [
    ("agents/greeter", "offline:echo", "Says hello back, word for word, for trying the mesh out"),
    ("agents/researcher-with-a-rather-long-identifier-name", "openai:gpt-4o-mini@http://h/v1", ""),
]


def _printed(columns: tuple[Column, ...], rows: list[tuple[str, ...]], width: int) -> list[str]:
    out = io.StringIO()
    listing(Console(file=out, width=width, color_system=None), columns, rows)
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    return lines


def test_runs_at_80_columns_name_targets_as_run_takes_them_never_cut_mid_word() -> None:
    """QA F7: `workflows/deve` / `lop`. Without room for the targets whole, each is named as
    `amelia run` takes it (as `crons ls` names them); one still too long folds after a `-`."""
    lines = _printed(RUN_COLUMNS, RUNS, 80)
    shown = "\n".join(lines)
    for name, target, status, created, _ in (RUNS[0], RUNS[2]):
        row = next(line for line in lines if name in line)
        short = target.partition("/")[2]
        assert re.search(rf"   {short}\s+{status}\s+{created}$", row.rstrip()), shown
    assert "error" not in lines[0], shown  # optional: left for `amelia runs show`
    # Before: the target column was cut to 5 cells ('workf' / 'lows/' / 'plan').
    assert all(len(line.split()) >= 4 for line in lines[2:] if line.startswith("runs/")), shown
    at = lines[0].index("target")
    first = next(i for i, line in enumerate(lines) if RUNS[1][0] in line)
    parts = [line[at:].split()[0] for line in lines[first:] if line[at:].strip()][:5]
    assert "".join(parts) == RUNS[1][1].partition("/")[2], shown
    assert all(part.endswith("-") for part in parts[:-1]), shown  # never inside a word

    develop = [
        ("runs/a3eccd03-5b1e-4c57-9f0d-2d8e4f6a7b90", "workflows/develop", status, "4s ago", "")
        for status in ("running", "completed")
    ]
    lines = _printed(RUN_COLUMNS, develop, 80)
    assert len(lines) == 4, "\n".join(lines)  # each run on one line
    assert re.search(r"   develop\s+running\s+4s ago$", lines[2].rstrip()), "\n".join(lines)


def test_a_folding_cell_breaks_after_a_separator_not_inside_a_word() -> None:
    """Every folding column (threads history's next nodes, a diff's paths, a model) breaks
    after a space, `/`, `-` or `_`; a part wider than the column alone is cut."""
    nodes = "approve_plan, write_code_and_tests, a_node_named_at_some_length"
    lines = _printed(HISTORY_COLUMNS, [(CHECKPOINT, "3", "loop", nodes, "now", "")], 80)
    at = lines[0].index("next")
    parts = [line[at:].split("   ")[0].strip() for line in lines[2:]]
    assert "".join(parts).replace(" ", "") == nodes.replace(" ", ""), "\n".join(lines)
    assert all(part[-1] in ",_" for part in parts[:-1]), "\n".join(lines)
    assert folded("src/amelia/a_very_long_module_name.py", 12) == [
        "src/amelia/",
        "a_very_long_",
        "module_",
        "name.py",
    ]
    assert folded("averyveryverylongword", 8) == ["averyver", "yverylon", "gword"]


def test_runs_at_120_columns_show_the_error_in_words() -> None:
    lines = _printed(RUN_COLUMNS, RUNS, 120)
    assert "error" in lines[0]
    words = " ".join(line[90:] for line in lines).split()
    assert {"openai:", "server", "answer", "Connection", "error."} <= set(words), lines


def test_agents_at_80_columns_keep_the_model_whole_next_to_a_description() -> None:
    lines = _printed(AGENT_COLUMNS, AGENTS[:1], 80)
    assert re.match(r"agents/greeter\s+offline:echo\s+Says hello", lines[2]), lines
    # Next to a 52-character name: the name gives up its middle, the model keeps its cells
    # (before: 'offline:ec' / 'ho', then the description dropped).
    lines = _printed(AGENT_COLUMNS, AGENTS, 80)
    assert "description" in lines[0], lines
    assert re.match(r"agents/greeter\s+offline:echo\s+Says hello back,", lines[2]), lines
    long = next(line for line in lines if "…" in line)
    assert re.match(r"agents/researc\S*…\S*-name\s+openai:gpt-4o-mini@http://h/v1\s*$", long), lines


def test_one_long_agent_id_leaves_the_model_and_the_description() -> None:
    """QA s26: with one 63-character id `amelia agents ls` showed Model as `offline` / `:echo`
    and no Description; a 78-character one left no Model at all."""
    for length in (63, 78):
        name = "agents/a" + "b" * (length - 8)
        rows = [AGENTS[0], (name, "offline:echo", "A long one")]
        lines = _printed(AGENT_COLUMNS, rows, 80)
        assert lines[0].split() == ["name", "model", "description"], lines
        for line in lines[2:]:
            if line.startswith("agents/"):
                assert re.search(r"\s{3}offline:echo\s{3}\S", line), lines
        long = next(line for line in lines if line.startswith("agents/ab"))
        start, _, end = long.split()[0].partition("…")
        assert name.startswith(start) and name.endswith(end) and len(start) > 10, lines
        # Wide enough, nothing is cut.
        assert name in "\n".join(_printed(AGENT_COLUMNS, rows, 160))


def test_a_paused_runs_question_reads_as_words() -> None:
    value = {
        "question": "Approve this design so the plan can be written?",
        "design": "Request:\nAdd a --verbose flag\n\nDiscovery notes:\nnone",
        "options": ["approve", "reject"],
    }
    assert question_lines(value) == [
        "? Approve this design so the plan can be written?",
        "  design: Request:\n    Add a --verbose flag\n    \n    Discovery notes:\n    none",
        "  answers: approve | reject",
    ]
    assert question_lines("Proceed?") == ["? Proceed?"]
    assert question_lines({"n": 3}) == ["? the run waits for an answer", "  n: 3"]


def test_a_wrong_status_names_the_right_ones() -> None:
    result = CliRunner().invoke(app, ["runs", "ls", "--status", "weird"], env={"COLUMNS": "80"})
    assert result.exit_code == 2
    said = " ".join(result.output.replace("│", " ").split())
    assert "'weird' is not a run status; one of: queued, running, paused, completed" in said
    assert "RUN_STATUS" not in said


def test_a_short_subject_copied_from_an_80_column_line_is_refused_with_the_way_out() -> None:
    result = CliRunner().invoke(app, ["events", "-s", "runs/a22e4bef"], env={"COLUMNS": "80"})
    assert result.exit_code == 2
    said = " ".join(result.output.replace("│", " ").split())
    assert "runs/a22e4bef is the start of a name" in said and "amelia runs ls" in said


LOG = "/home/someone/projects/amelia/.amelia/llama/llama-server.log"
PROBES = [
    Probe("events", "grpc://127.0.0.1:50051", "UNREACHABLE"),
    Probe(
        "gateway", "http://127.0.0.1:8000", "FAILED", "killed by SIGKILL; 5 restarts; log: " + LOG
    ),
    Probe("nats", "-", "UNKNOWN", "mesh not running (no mesh state under /tmp/x, no answers)"),
    Probe("local-model", "http://127.0.0.1:8081/v1", "SERVING", f"qwen2.5, 2 slots, log: {LOG}"),
]


def test_status_keeps_addresses_and_log_paths_whole_at_80_columns() -> None:
    for width in (80, 200):
        out = io.StringIO()
        Console(file=out, width=width, color_system=None).print(endpoints_table(PROBES))
        lines = out.getvalue().splitlines()
        assert max(len(line) for line in lines) <= width, "\n".join(lines)
        row = next(line for line in lines if "local-model" in line)
        assert "http://127.0.0.1:8081/v1" in row, "\n".join(lines)  # was '…8081/' and 'v1'
        assert "killed by SIGKILL" in next(line for line in lines if "gateway" in line)
        assert f"[1] {LOG}" in lines and f"[2] {LOG}" in lines, "\n".join(lines)


SOCKET = "/home/someone/projects/amelia/.amelia/postgres"
REPLICAS = [
    Probe("events", "grpc://127.0.0.1:50051", "SERVING"),
    Probe("events-2", "grpc://127.0.0.1:50054", "SERVING"),
    Probe("agents", "grpc://127.0.0.1:50053", "SERVING"),
    Probe("agents-2", "grpc://127.0.0.1:50056", "NO_ANSWER", silent_detail()),
    Probe("nats", "nats://127.0.0.1:4222, nats://127.0.0.1:4223", "SERVING", "JetStream: 2"),
    Probe(
        "postgres",
        *postgres_address(f"postgresql://amelia@/amelia?host={SOCKET}")[:1],
        "SERVING",
        f"pgvector 0.8.5; socket: {SOCKET}",
    ),
    Probe("local-model", "http://127.0.0.1:8081/v1", "NOT_SERVING", f"qwen2.5, log: {LOG}"),
]


def test_status_of_replicas_keeps_each_host_and_port_whole_at_80_columns() -> None:
    """`amelia up --replicas 2` with a frozen agents replica: `grpc://127.0.0.1:500` / `56`
    no more; a cluster's NATS servers a line each; the embedded PostgreSQL's socket folder
    under the table; the frozen replica said in words."""
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(endpoints_table(REPLICAS))
    shown = out.getvalue()
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= 80, shown
    for probe in REPLICAS:
        for address in probe.address.split(", "):
            assert f"│ {address} " in shown, shown
    assert "│ agents-2    │ grpc://127.0.0.1:50056 " in shown, shown
    frozen = lines.index(next(line for line in lines if "agents-2" in line))
    said = " ".join(line.split("│")[4].strip() for line in lines[frozen : frozen + 3])
    assert said == "no answer within 2 s (frozen or overloaded?)", shown
    assert f"[1] {SOCKET}" in lines, shown


def test_postgres_is_named_without_credentials_or_its_socket_path() -> None:
    assert postgres_address("postgresql://amelia:secret@db.example:5432/amelia") == (
        "db.example:5432/amelia",
        "",
    )
    assert postgres_address(f"postgresql://amelia@/amelia?host={SOCKET}") == (
        "amelia (socket)",
        SOCKET,
    )


def test_json_that_is_not_an_object_is_refused_saying_what_it_is() -> None:
    # Before any call to the mesh: none runs here.
    for args, hint in (
        (["runs", "fork", "runs/r", "c", "--values", "[1]"], "--values"),
        (["threads", "update", "threads/t", "3"], "VALUES"),
        (["run", "workflows/chat", "--input", "null"], "--input"),
        (["run", "workflows/chat", "--input", "{nope"], "--input"),
    ):
        result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
        assert result.exit_code == 2, (args, result.output)
        said = " ".join(result.output.replace("│", " ").split())
        assert hint in said, (args, said)
        assert ("must be a JSON object ({...}), not" in said) or ("not JSON:" in said), said
        assert "attribute" not in said and "Traceback" not in said, said


def test_a_limit_below_one_is_refused() -> None:
    for command in (["threads", "ls"], ["runs", "ls"], ["docs", "ls"], ["crons", "ls"]):
        result = CliRunner().invoke(app, [*command, "--limit", "0"], env={"COLUMNS": "80"})
        assert result.exit_code == 2, (command, result.output)
        assert "--limit" in result.output
