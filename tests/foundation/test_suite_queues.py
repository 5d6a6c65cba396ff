"""The suite's own isolation: every test folder's settings name a run queue of that folder's, so
an agents service one folder starts on the session's NATS never takes another folder's runs
(tests/conftest.py: Infra.settings)."""

from __future__ import annotations

from typing import Any

from amelia_common.settings import Settings


def test_a_folders_settings_name_its_own_run_queue(infra: Any, settings: Settings) -> None:
    assert settings.RUNS_QUEUE_STREAM == "AMELIA_RUNS_foundation"
    assert infra.settings().RUNS_QUEUE_STREAM == "AMELIA_RUNS_foundation"
    # A test that needs a queue of its own still names it.
    assert infra.settings(RUNS_QUEUE_STREAM="MINE").RUNS_QUEUE_STREAM == "MINE"
