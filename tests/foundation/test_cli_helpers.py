"""Small pieces of the `amelia` command a user sees directly."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from amelia_cli.commands.docs import expand
from amelia_cli.main import dashboard_url
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
