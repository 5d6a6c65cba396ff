"""`plan.parse_answer` in process: a person's answer to the plan workflow's approval question
(a word and a note, true/false, or an object) as a decision. The plan tests go through a
running mesh; these cover each form of answer once, without one."""

from __future__ import annotations

from typing import Any

import pytest

from amelia_agents.workflows.plan import parse_answer


def approved(feedback: str = "") -> dict[str, Any]:
    return {"decision": "approved", "reason": "", "feedback": feedback}


def rejected(reason: str = "") -> dict[str, Any]:
    return {"decision": "rejected", "reason": reason, "feedback": ""}


ANSWERS: list[tuple[Any, dict[str, Any]]] = [
    (True, approved()),
    (False, rejected()),
    ("approve", approved()),
    ("  ok", approved()),
    ("LGTM!", approved()),
    ("Yes, ship it", approved("ship it")),
    ("okay.  but add tests", approved("but add tests")),
    ("go—now", approved("now")),
    ("no - too risky", rejected("too risky")),
    ("reject: wrong scope", rejected("wrong scope")),
    ("Stop", rejected()),
    ({"approved": True, "comment": "nice"}, approved("nice")),
    ({"approved": False, "reason": "no budget"}, rejected("no budget")),
    ({"decision": "approve", "feedback": "f"}, approved("f")),
    ({"answer": "reject because x"}, rejected("because x")),
    ({"decision": "yes", "reason": "the note wins"}, approved("the note wins")),
]


@pytest.mark.parametrize(("answer", "decision"), ANSWERS, ids=[repr(a) for a, _ in ANSWERS])
def test_an_answer_is_a_decision(answer: Any, decision: dict[str, Any]) -> None:
    assert parse_answer(answer) == decision


UNCLEAR: list[Any] = [
    "maybe",
    "",
    "yesterday",  # a word that starts like "yes" is not "yes"
    "nothing to add",
    42,
    None,
    ["yes"],
    {},
    {"decision": "hmm"},
    {"approved": "yes"},  # not a boolean, and no decision word
]


@pytest.mark.parametrize("answer", UNCLEAR, ids=[repr(a) for a in UNCLEAR])
def test_an_answer_that_is_neither_is_unclear_and_kept(answer: Any) -> None:
    """Unclear answers keep what was said, so the question can be asked again with it."""
    assert parse_answer(answer) == {"decision": "unclear", "answer": answer}
