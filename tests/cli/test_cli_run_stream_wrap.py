"""`amelia run` on a terminal wraps the streamed tokens at word boundaries (QA s26: at the
terminal's edge a word broke in two, "coul" / "d"); into a pipe the text is as the model wrote
it. The run's `run.token` events fed to what prints them (`Shown.event`), tokens cut anywhere,
as a model streams them."""

from __future__ import annotations

import io
import random

import pytest
from google.protobuf import struct_pb2
from rich.console import Console

import amelia_cli.commands.agents as agents_command
from amelia.v1 import events_pb2

TEXT = (
    "It could be that the answer couldn't be found in the documents you gave me; "
    "supercalifragilisticexpialidocious-and-then-some is one word.\n"
    "A new paragraph follows, and it also wraps where a space is, not inside a word."
)


def token(text: str) -> events_pb2.Event:
    data = struct_pb2.Struct()
    data.update({"text": text, "node": "respond"})
    return events_pb2.Event(type="run.token", subject="runs/x", data=data)


def streamed(width: int, terminal: bool, seed: int) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=terminal, color_system=None)
    shown = agents_command.Shown()
    chance = random.Random(seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(agents_command, "console", console)
        at = 0
        while at < len(TEXT):
            size = chance.randint(1, 7)
            shown.event(token(TEXT[at : at + size]))
            at += size
        shown.line("runs/x: completed")
    return out.getvalue()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("width", [40, 80])
def test_tokens_wrap_at_word_boundaries_on_a_terminal(width: int, seed: int) -> None:
    lines = streamed(width, True, seed).splitlines()
    assert lines[-1] == "runs/x: completed"
    body = lines[:-1]
    assert all(len(line) <= width for line in body), body
    # Every word whole on one line (the one longer than a line in pieces), none lost.
    words = TEXT.split()
    long = max(words, key=len)
    for line in body:
        for word in line.split():
            assert word in words or (len(long) > width and word in long), (word, body)
    assert "".join("".join(body).split()) == "".join(words)


def test_into_a_pipe_the_text_is_as_written() -> None:
    assert streamed(40, False, 0) == TEXT + "\nruns/x: completed\n"
