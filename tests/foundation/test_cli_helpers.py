"""Small pieces of the `amelia` command a user sees directly."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import typer

from amelia_cli.commands.docs import expand
from amelia_cli.main import dashboard_url, loopback_warning
from amelia_cli.supervisor import RestartPolicy, write_atomically
from amelia_common.settings import Settings


def test_dashboard_url_signs_the_browser_in_only_when_a_token_is_set() -> None:
    plain = Settings(_env_file=None, PORT=8123)  # type: ignore[call-arg]
    assert dashboard_url(plain) == "http://127.0.0.1:8123/"
    secured = Settings(_env_file=None, PORT=8123, AMELIA_API_TOKEN="a b&c")  # type: ignore[call-arg]
    assert dashboard_url(secured) == "http://127.0.0.1:8123/?token=a%20b%26c"


def test_ingest_expands_folders_and_globs_but_skips_hidden_and_binary_files(tmp_path: Path) -> None:
    (tmp_path / "guide.md").write_text("# Guide")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("print(1)")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config.md").write_text("hidden")
    found = {p.name for p in expand([str(tmp_path)])}
    assert found == {"guide.md", "app.py"}
    assert [p.name for p in expand([str(tmp_path / "*.png")])] == ["photo.png"]  # named: taken
    with pytest.raises(typer.BadParameter, match="no such file"):
        expand([str(tmp_path / "missing.md")])


def test_dashboard_link_without_the_token_for_anything_but_a_terminal() -> None:
    secured = Settings(_env_file=None, PORT=8123, AMELIA_API_TOKEN="secret")  # type: ignore[call-arg]
    assert dashboard_url(secured, with_token=False) == "http://127.0.0.1:8123/"


def test_loopback_only_is_said_when_host_asks_for_more_without_a_token() -> None:
    open_host = Settings(_env_file=None, HOST="0.0.0.0")  # type: ignore[call-arg]
    warning = loopback_warning(open_host)
    assert warning is not None and "127.0.0.1 only" in warning and "AMELIA_API_TOKEN" in warning
    secured = Settings(_env_file=None, HOST="0.0.0.0", AMELIA_API_TOKEN="t")  # type: ignore[call-arg]
    assert loopback_warning(secured) is None
    assert loopback_warning(Settings(_env_file=None)) is None  # type: ignore[call-arg]


def test_restarts_back_off_then_give_up_within_the_window() -> None:
    policy = RestartPolicy(burst=5, window=60, first_delay=1, max_delay=30)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 8, None]
    assert RestartPolicy(burst=10, max_delay=30).delay(9) == 30


def test_the_mesh_state_is_never_seen_half_written(tmp_path: Path) -> None:
    """A reader hammering the file while it is replaced 300 times sees whole documents only."""
    path = tmp_path / "run" / "mesh.json"
    documents = [json.dumps({"pid": i, "padding": "x" * (i % 7) * 20_000}) for i in range(300)]
    write_atomically(path, documents[0])
    torn: list[int] = []
    reads = 0
    done = threading.Event()

    def read() -> None:
        nonlocal reads
        while not done.is_set():
            text = path.read_text()
            reads += 1
            try:
                json.loads(text)
            except ValueError:
                torn.append(len(text))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for document in documents:
            write_atomically(path, document)
    finally:
        done.set()
        reader.join()
    assert reads > 0 and torn == []
    assert json.loads(path.read_text())["pid"] == 299
    assert [p.name for p in path.parent.iterdir()] == ["mesh.json"]  # no temporary left behind
