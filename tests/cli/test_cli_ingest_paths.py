"""`amelia ingest` says what is true of a path it will not read (QA s21 F7: /dev/zero, a FIFO
and a glob that matched nothing were each "no such file or folder"), never reading one that
could block or never end, and names files by what a terminal can show."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from amelia_cli.commands.docs import escaped, expand
from amelia_cli.main import app


def _refused(*args: str) -> str:
    """`amelia ingest ARGS`, refused before any service is asked: its words on one line."""
    result = CliRunner().invoke(app, ["ingest", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    return " ".join(result.output.replace("│", " ").split())


def test_a_device_is_not_a_regular_file() -> None:
    assert "/dev/zero: not a regular file (a character device)" in _refused("/dev/zero")


def test_a_fifo_is_not_a_regular_file_and_is_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    assert f"{fifo}: not a regular file (a FIFO)" in _refused(str(fifo))


def test_a_glob_that_matched_nothing_says_so(tmp_path: Path) -> None:
    pattern = f"{tmp_path}/**/*.nomatch"
    assert f"{pattern}: the pattern matched no files" in _refused(pattern)
    assert f"{tmp_path}/gone.md: no such file or folder" in _refused(f"{tmp_path}/gone.md")
    (tmp_path / "dangling.md").symlink_to(tmp_path / "nowhere")
    assert "dangling.md: a symbolic link to nothing" in _refused(str(tmp_path / "dangling.md"))


def test_a_name_with_glob_characters_that_is_there_is_taken_as_it_is(tmp_path: Path) -> None:
    named = tmp_path / "notes[1].md"
    named.write_text("# Notes\n\nfirst\n")
    assert expand([str(named)]) == [named.resolve()]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("a\nb.md", "a%0Ab.md"),
        ("tab\there\x7f.txt", "tab%09here%7F.txt"),
        (os.fsdecode(b"caf\xe9.md"), "caf%E9.md"),  # Latin-1 bytes: not UTF-8
        ("ünïcødé 名前 (copy).txt", "ünïcødé 名前 (copy).txt"),
        ("50%.md", "50%.md"),
    ],
)
def test_a_name_is_shown_with_its_control_characters_and_stray_bytes_escaped(
    name: str, shown: str
) -> None:
    assert escaped(name) == shown


def test_ingest_into_an_unreachable_rag_service_starts_with_its_error_not_a_blank_line(
    tmp_path: Path,
) -> None:
    """Piped (not a terminal), no progress bar is drawn: rich left a blank line where it stood
    (QA s24), before the one line that says the service is not answering."""
    from amelia_common.embedded import free_port

    note = tmp_path / "note.md"
    note.write_text("# Note\n\nsome words\n")
    env = {"COLUMNS": "80", "RAG_ADDRESS": f"127.0.0.1:{free_port()}"}
    result = CliRunner().invoke(app, ["ingest", str(note)], env=env)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("UNAVAILABLE: the rag service at 127.0.0.1:"), result.output
