"""`amelia status` run from another folder names only log files that exist: the embedded local
model's log is the running mesh's (`data_dir` of its mesh.json), never `<cwd>/.amelia/llama/…`
(QA: `cd /tmp/x && amelia status` printed `[1] /tmp/x/.amelia/llama/llama-server.log`)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from amelia_cli.main import app
from amelia_common.embedded import free_port
from amelia_common.running_mesh import state_file
from amelia_common.settings import get_settings

ANSI = re.compile(r"\x1b\[[0-9;]*m")
PORTS = ("EVENTS_GRPC_PORT", "AGENTS_GRPC_PORT", "RAG_GRPC_PORT", "PORT")


def status_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, with_log: bool
) -> tuple[str, Path, Path]:
    """A mesh.json under `mesh/.amelia` whose supervisor is alive (this process), an embedded
    local model that does not answer, services on ports where nothing listens; `amelia status`
    typed in `elsewhere`, pointed at the mesh by AMELIA_DATA_DIR."""
    data_dir = tmp_path / "mesh" / ".amelia"
    model_port = free_port()
    state = {
        "pid": os.getpid(),
        "data_dir": str(data_dir),
        "database_url": "",
        "nats_url": "",
        "local_model": {"url": f"http://127.0.0.1:{model_port}/v1", "embedded": True, "off": ""},
        "ports": {name: free_port() for name in PORTS},
        "addresses": {},
        "services": {},
        "units": {},
    }
    state_file(data_dir).parent.mkdir(parents=True)
    state_file(data_dir).write_text(json.dumps(state))
    log = data_dir / "llama" / str(model_port) / "llama-server.log"
    if with_log:
        log.parent.mkdir(parents=True)
        log.write_text("llama server log\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("AMELIA_DATA_DIR", str(data_dir))
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("DATABASE_URL", "NATS_URL", "EVENTS_ADDRESS", "AGENTS_ADDRESS", "RAG_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["status"])
    finally:
        get_settings.cache_clear()
    return ANSI.sub("", result.output), log, elsewhere


def test_the_local_models_log_is_the_meshs_not_the_current_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, log, elsewhere = status_elsewhere(tmp_path, monkeypatch, with_log=True)
    assert str(log) in output, output
    assert str(elsewhere) not in output


def test_a_log_that_does_not_exist_is_not_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, _, elsewhere = status_elsewhere(tmp_path, monkeypatch, with_log=False)
    assert "local-model" in output
    assert "llama-server.log" not in output and str(elsewhere) not in output, output
