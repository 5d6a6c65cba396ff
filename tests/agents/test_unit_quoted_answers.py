"""How the agents service quotes what a client sent (QA s27b L10).

- An `as_node` of 3,000,000 characters was quoted cut to 80 characters with no length, while
  every other error says "… (3000000 characters)" (`amelia_common.errors.shorten_echoes`, which
  only sees values longer than it keeps): now `amelia_common.errors.quoted` writes it that way.
- The plan workflow's question asked again after an unclear answer showed the answer as Python's
  repr of what the Struct held: `{"deep": [[[[1]]]]}` came back as `{'deep': [[[[1.0]]]]} is
  neither an approval…`. Now it is the JSON the client sent, and a long answer is cut as errors
  cut one (the note rides in the question every reader of the run gets again).

The graphs are the workflows' own, in process, on LangGraph's in-memory checkpointer (as
test_unit_develop_reasks); the answer is given as ResumeRun hands it over, numbers as doubles.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from amelia_agents.stateupdate import check_update
from amelia_agents.steps import checkpoint_id
from amelia_agents.workflows.plan import build_plan
from amelia_common.errors import InvalidArgumentError, quoted, shorten_echoes


async def _note_after(answer: Any) -> str:
    """The plan's approval question's note once `answer` came and was not understood."""
    graph = build_plan(None).compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": str(uuid.uuid4())}}
    values = {"request": {"message": "Add a dark theme"}, "design": "Use CSS variables."}
    await graph.aupdate_state(config, values, as_node="design")
    await graph.ainvoke(None, config)
    await graph.ainvoke(Command(resume=answer), config)
    state = await graph.aget_state(config)
    [task] = state.tasks
    [asked] = task.interrupts
    return str(asked.value.get("note"))


async def test_an_unclear_answer_is_quoted_as_the_json_it_was_sent_as() -> None:
    note = await _note_after({"deep": [[[[1.0]]]], "ratio": 0.5})
    assert note == (
        '{"deep": [[[[1]]]], "ratio": 0.5} is neither an approval nor a rejection; '
        "please answer again."
    )
    assert await _note_after("hmm, maybe") == (
        "'hmm, maybe' is neither an approval nor a rejection; please answer again."
    )


async def test_a_long_unclear_answer_is_quoted_by_its_start_and_length() -> None:
    long_text = await _note_after("maybe " * 100_000)
    assert long_text.startswith("'maybe maybe")
    assert "…' (600000 characters) is neither an approval" in long_text
    assert len(long_text) < 300
    long_json = await _note_after({"items": list(range(100_000))})
    assert long_json.startswith('{"items": [0, 1, 2')
    assert "characters of JSON) is neither an approval" in long_json
    assert len(long_json) < 300


def test_a_huge_as_node_is_quoted_with_its_length() -> None:
    graph = build_plan(None).compile(checkpointer=InMemorySaver())
    with pytest.raises(InvalidArgumentError) as refused:
        check_update(graph, {}, "x" * 3_000_000)
    message = shorten_echoes(refused.value.message)  # as it leaves the service
    assert message.startswith("as_node 'xxxx")
    assert "…' (3000000 characters) is not a node of the thread's graph" in message
    assert len(message) < 300
    short = "nope"
    with pytest.raises(InvalidArgumentError, match="as_node 'nope' is not a node"):
        check_update(graph, {}, short)


def test_a_long_state_key_and_checkpoint_id_are_quoted_with_their_length() -> None:
    graph = build_plan(None).compile(checkpointer=InMemorySaver())
    with pytest.raises(InvalidArgumentError) as refused:
        check_update(graph, {"k" * 5000: 1}, "")
    assert "…' (5000 characters), not a key of the thread's state" in refused.value.message
    with pytest.raises(InvalidArgumentError) as bad_id:
        checkpoint_id("c" * 5000, "checkpoint")
    assert "…' (5000 characters) is not a checkpoint id" in bad_id.value.message


def test_quoted_writes_a_long_value_as_shorten_echoes_does() -> None:
    assert quoted("short") == "'short'"
    assert quoted("it's") == '"it\'s"'
    value = "a" * 8005
    assert quoted(value) == shorten_echoes(repr(value))
    both = "'\" " * 1000  # both quote characters and spaces: shorten_echoes cannot find it
    assert quoted(both).endswith("(3000 characters)") and len(quoted(both)) < 200
