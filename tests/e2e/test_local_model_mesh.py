"""A fresh machine with no API key: `amelia up` serves the local model (llama.cpp, the model
`make install` fetched) as a supervised part of the mesh, and the default model answers for real.

One mesh, as a user starts it on a terminal, in this order: `amelia status` and the gateway's
`/v1/status` show the model server; `amelia run chat` answers a question the model knows; the
dashboard's default target (the first workflow, its message only) answers over HTTP; chat over
an ingested document answers from its passage with a citation, after a "reading context" line;
the model server, SIGKILLed, is started again and answers; Ctrl-C stops the services, then the
model server, then NATS, then PostgreSQL. Greedy sampling (LOCAL_MODEL_TEMPERATURE's default):
assertions accept any wording that holds the fact.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_helpers import (
    DEADLINE,
    amelia,
    ctrl_c_stop_order,
    make_mesh_env,
    mesh_pids,
    mesh_state,
    start,
    wait_for,
)

TERMINAL = ("RUN_STATUS_COMPLETED", "RUN_STATUS_FAILED", "RUN_STATUS_CANCELLED")

LIGHTHOUSE = """# The Kestrel Point lighthouse

## Keepers

The last keeper of Kestrel Point was Mara Olsen, who kept the light from 1961 until it was
automated in 1987. She logged every ship that passed in green ink.
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    env = make_mesh_env(tmp_path_factory, local_model=True)
    proc = start(env, own_session=True)
    yield env
    if proc.poll() is None:  # the Ctrl-C test did not run
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)


def status_line(env: dict[str, str], part: str) -> str:
    result = amelia(env, "status")
    return next((line for line in result.stdout.splitlines() if part in line), result.stdout)


def http(env: dict[str, str]) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{env['PORT']}", timeout=30)


def chat(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    ran = amelia(env, "run", "chat", *args, timeout=DEADLINE)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "completed" in ran.stdout, ran.stdout
    return ran


def test_up_without_the_model_says_how_to_get_it(mesh_env: dict[str, str], tmp_path: Path) -> None:
    """Nothing is started: the message names the missing file and the three ways out."""
    env = mesh_env | {
        "LOCAL_MODEL": "qwen2.5-coder-0.5b",
        "LOCAL_MODEL_DIR": str(tmp_path / "no-models-here"),
        "ANTHROPIC_API_KEY": "",
        "OPENAI_API_KEY": "",
    }
    failed = amelia(env, "up", timeout=120)
    output = " ".join((failed.stdout + failed.stderr).split())  # rich wraps long lines
    assert failed.returncode == 1, output
    assert "no-models-here" in output and "make install" in output, output
    assert "LOCAL_MODEL=off" in output, output
    assert not (Path(env["AMELIA_DATA_DIR"]) / "run" / "mesh.json").exists()
    assert not (Path(env["AMELIA_DATA_DIR"]) / "postgres").exists()


def test_status_shows_the_model_server_it_supervises(mesh: dict[str, str]) -> None:
    line = status_line(mesh, "local-model")
    assert "SERVING" in line and "qwen2.5-coder-0.5b" in line and "1 thread" in line, line
    unit = mesh_state(mesh)["units"]["local-model"]
    assert unit["state"] == "RUNNING" and unit["log"].endswith("llama-server.log")
    assert f"pid {unit['pid']}" in line
    with http(mesh) as client:
        model = client.get("/v1/status").json()["localModel"]
    assert model["status"] == "SERVING" and model["model"] == "qwen2.5-coder-0.5b"
    assert model["url"] == f"http://127.0.0.1:{mesh['LOCAL_MODEL_PORT']}/v1"
    assert (model["embedded"], model["threads"], model["pid"]) == (True, 1, unit["pid"])


def test_run_chat_answers_with_the_real_model(mesh: dict[str, str]) -> None:
    ran = chat(mesh, "What is the capital of Australia?")
    assert "canberra" in ran.stdout.lower(), ran.stdout


def test_the_dashboards_default_target_answers(mesh: dict[str, str]) -> None:
    """What the dashboard's start form sends when only the message is typed: its first target."""
    with http(mesh) as client:
        first = client.get("/v1/workflows").json()["workflows"][0]
        assert "message" in first["inputSchema"]["required"]
        question = "What is the capital of France? Answer in one word."
        created = client.post(
            "/v1/runs", json={"run": {"workflow": first["name"], "input": {"message": question}}}
        )
        assert created.status_code == 200, created.text
        run_id = created.json()["run"]["name"].split("/")[-1]
        run = wait_for(
            lambda: (
                (r := client.get(f"/v1/runs/{run_id}").json()["run"])["status"] in TERMINAL and r
            ),
            "the run to end",
        )
    assert run["status"] == "RUN_STATUS_COMPLETED", run
    assert "paris" in json.dumps(run["output"]).lower(), run["output"]
    assert int(run["usage"]["outputTokens"]) > 0


def test_chat_over_a_document_answers_from_its_passage(
    mesh: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "kestrel.md").write_text(LIGHTHOUSE)
    ingested = amelia(mesh, "ingest", str(tmp_path / "kestrel.md"), timeout=180)
    assert ingested.returncode == 0, ingested.stdout + ingested.stderr
    listed = amelia(mesh, "docs", "ls").stdout
    document = re.search(r"documents/[0-9a-f-]{36}", listed)
    assert document is not None, listed
    wait_for(  # embedded in the background
        lambda: "Mara Olsen" in amelia(mesh, "search", "last keeper of Kestrel Point").stdout,
        "the document to be searchable",
    )
    question = "Who was the last keeper of Kestrel Point?"
    spec = {"message": question, "context_sources": [document.group(0)]}
    ran = chat(mesh, question, "--input", json.dumps(spec))
    # Before the first token, what the model is reading (the run's ids are left out).
    reading = next((line for line in ran.stdout.splitlines() if "reading context" in line), "")
    counts = re.fullmatch(r"· reading context… \((.*)\)", reading)
    assert counts is not None, ran.stdout
    shown = sorted(re.sub(r"\d[\d,]*", "N", counts.group(1)).split(", "))
    assert shown == ["N characters", "N passage"], reading
    answer = ran.stdout.lower()
    assert "olsen" in answer or "mara" in answer, ran.stdout
    assert "[1]" in ran.stdout, ran.stdout


def test_a_killed_model_server_is_started_again(mesh: dict[str, str]) -> None:
    before = mesh_pids(mesh)
    os.kill(before["local-model"], signal.SIGKILL)
    wait_for(
        lambda: (
            mesh_pids(mesh).get("local-model") not in (None, before["local-model"])
            and "SERVING" in status_line(mesh, "local-model")
        ),
        "the model server to be back",
    )
    unit = mesh_state(mesh)["units"]["local-model"]
    assert unit["restarts"] >= 1 and unit["last_exit"] == "the server process is gone"
    others = {name: pid for name, pid in mesh_pids(mesh).items() if name != "local-model"}
    assert others == {name: pid for name, pid in before.items() if name != "local-model"}
    ran = chat(mesh, "What is the capital of Australia?")
    assert "canberra" in ran.stdout.lower(), ran.stdout


def test_ctrl_c_stops_services_then_the_model_then_nats_then_postgres(
    mesh: dict[str, str],
) -> None:
    pids = mesh_pids(mesh)
    services = [name for name in pids if name not in ("local-model", "nats", "postgres")]
    assert {"local-model", "nats", "postgres", "agents"} <= set(pids)
    gone_at = ctrl_c_stop_order(mesh, ["postgres", "nats", "local-model", *services])
    last_service = max(gone_at[name] for name in services)
    assert last_service <= gone_at["local-model"] <= gone_at["nats"] <= gone_at["postgres"]
    folder = Path(mesh["AMELIA_DATA_DIR"]) / "llama" / mesh["LOCAL_MODEL_PORT"]
    assert not (folder / "llama-server.pid").exists()
