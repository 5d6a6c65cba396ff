"""The CLI's repeated `key=value` options (`--metadata` of `threads ls`, `threads history`,
`crons create` and `crons update`): a key given twice is a usage error naming the key and both
values, before any call to a service (QA L5: `--metadata team=bulk --metadata team=qa` searched
for team=qa alone)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from amelia_cli.main import app

TWICE = ["--metadata", "team=bulk", "--metadata", "n=1", "--metadata", "team=qa"]


@pytest.mark.parametrize(
    "command",
    [
        ["threads", "ls"],
        ["threads", "history", "threads/5f0c3a52-3b8e-4f7a-9f55-0d4b2e6c7a11"],
        ["crons", "create", "fast", "* * * * *", "-m", "hi"],
        ["crons", "update", "crons/5f0c3a52-3b8e-4f7a-9f55-0d4b2e6c7a11"],
    ],
)
def test_a_key_given_twice_is_refused_naming_it(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, *TWICE], env={"COLUMNS": "80"}, terminal_width=80)
    said = " ".join(re.sub(r"[│╭╮╰╯─]|\x1b\[[0-9;]*m", " ", result.output).split())
    assert result.exit_code == 2, result.output
    assert (
        "Invalid value for --metadata: key 'team' is given more than once ('bulk', then 'qa')"
        in said
    ), said


def test_a_pair_without_an_equals_sign_is_still_refused() -> None:
    result = CliRunner().invoke(app, ["threads", "ls", "--metadata", "team"], terminal_width=80)
    assert result.exit_code == 2, result.output
    assert "'team' is not key=value" in result.output
