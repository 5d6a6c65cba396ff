"""A local model server's files and process are its own (QA s27 finding 1).

The README's standalone server (`python -m amelia_common.llama_server`) run next to `amelia up`
shared the mesh's pid file and log: a failed start (a truncated GGUF) killed the mesh's server on
exit, and a working one overwrote the pid file then deleted it, so the supervisor took its
still-serving server for gone, failed 5 times on "port in use" (by that very server) and gave up.

Most tests use a stand-in for the mesh's server (a process whose command line is the server of
its port's pid file, listening nowhere) and the real standalone command failing on a file
llama.cpp cannot load; one runs a real standalone server next to the session's real one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from amelia_cli.supervisor import ServerUnit
from amelia_common.embedded import free_port, process_alive
from amelia_common.llama_server import EmbeddedLlama, healthy


def stand_in(pid_file: Path) -> subprocess.Popen[bytes]:
    """A process whose command line is the server of `pid_file` (as `EmbeddedLlama.command`
    writes it), recorded there the way the real server records itself once loaded."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(600)",
            "amelia_common.llama_server",
            "serve",
            "--pid-file",
            str(pid_file.absolute()),
        ]
    )
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{process.pid}\n")
    return process


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def truncated_gguf(folder: Path) -> Path:
    """A file with GGUF's magic that llama.cpp fails to load (the QA used the model's first 5 MB)."""
    broken = folder / "truncated.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00 cut short")
    return broken


def standalone(
    data_dir: Path, model: Path | str, port: int, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m amelia_common.llama_server` as the README runs it, on `data_dir`."""
    env = {
        **os.environ,
        "AMELIA_DATA_DIR": str(data_dir),
        "LOCAL_MODEL": str(model),
        "LOCAL_MODEL_PORT": str(port),
        "LOCAL_MODEL_URL": "",
    }
    return subprocess.run(
        [sys.executable, "-m", "amelia_common.llama_server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_failed_standalone_start_on_another_port_leaves_the_meshs_server_alone(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "data"
    mesh_server = EmbeddedLlama(data, free_port(), tmp_path / "m.gguf", "m")
    mesh = stand_in(mesh_server.pid_file)
    processes.append(mesh)
    failed = standalone(data, truncated_gguf(tmp_path), free_port())
    assert failed.returncode == 1, failed.stderr
    assert "exited with code 1" in failed.stderr, failed.stderr
    assert mesh.poll() is None, "the standalone server's exit killed the mesh's server"
    assert mesh_server.pid_file.read_text().split()[0] == str(mesh.pid)
    assert mesh_server.pid() == mesh.pid


def test_a_standalone_server_on_the_meshs_port_is_refused_and_touches_nothing(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    data, port = tmp_path / "data", free_port()
    mesh_server = EmbeddedLlama(data, port, tmp_path / "m.gguf", "m")
    mesh = stand_in(mesh_server.pid_file)
    processes.append(mesh)
    refused = standalone(data, truncated_gguf(tmp_path), port)
    assert refused.returncode == 1
    message = " ".join(refused.stderr.split())
    assert f"already runs on port {port} (pid {mesh.pid}" in message, message
    assert "LOCAL_MODEL_PORT" in message, message
    assert mesh.poll() is None
    assert mesh_server.pid_file.read_text().split()[0] == str(mesh.pid)


def test_stop_never_signals_a_pid_file_naming_another_program(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """A pid file left by a server killed -9, its pid since taken by another program."""
    server = EmbeddedLlama(tmp_path, free_port(), tmp_path / "m.gguf", "m")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    processes.append(other)
    server.folder.mkdir(parents=True)
    server.pid_file.write_text(f"{other.pid}\n")
    assert server.pid() is None
    server.stop()
    assert other.poll() is None, "stop() killed a process it never started"
    assert server.pid_file.exists()  # not its file to remove: that program is alive


def test_an_adopted_server_stays_known_when_its_pid_file_is_removed(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """`amelia up` restarted after a crash adopts the server of its port; removing the pid file
    (as an older standalone server did) must not make the supervisor take it for gone."""
    server = EmbeddedLlama(tmp_path, free_port(), tmp_path / "m.gguf", "m")
    running = stand_in(server.pid_file)
    processes.append(running)
    unit = ServerUnit("local-model", server.log_file, server=server)
    assert server.pid() == running.pid
    server.pid_file.unlink()
    assert server.pid() == running.pid and unit.exited() is None
    server.stop()  # what it adopted, it stops on the way out
    assert running.wait(timeout=30) == -signal.SIGTERM
    assert server.pid() is None and unit.exited() == "the server process is gone"


def test_a_working_standalone_server_leaves_the_supervised_one_known(
    llama: EmbeddedLlama, tmp_path: Path
) -> None:
    """The QA's second step, with real servers: the session's is the mesh's (same data dir);
    a standalone one serves on another port, then is stopped with SIGTERM (Ctrl-C)."""
    before = llama.pid()
    assert before is not None
    unit = ServerUnit("local-model", llama.log_file, server=llama)
    env = {
        **os.environ,
        "AMELIA_DATA_DIR": str(llama.root),
        "LOCAL_MODEL": str(llama.model),
        "LOCAL_MODEL_PORT": str(free_port()),
        "LOCAL_MODEL_URL": "",
    }
    other = subprocess.Popen(
        [sys.executable, "-m", "amelia_common.llama_server"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert other.stdout is not None
        said = ""
        while "local model server: http://" not in said:  # printed once its model is loaded
            line = other.stdout.readline()
            assert line, f"the standalone server stopped: {said}"
            said += line
        other.send_signal(signal.SIGTERM)
        assert other.wait(timeout=60) == 0, other.stdout.read()
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert llama.pid() == before and unit.exited() is None
    assert llama.pid_file.read_text().split()[0] == str(before)
    assert process_alive(before) and healthy(llama.url)
