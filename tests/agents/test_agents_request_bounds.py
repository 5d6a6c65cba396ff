"""Requests that used to reach PostgreSQL, NATS or Python's recursion limit and came back INTERNAL
(QA s27b): a CancelRun reason of megabytes (F1) or holding NUL (L1), a filter of 200 `NOT`s
(F2), a number beyond a column's range in a filter or a forged page token (F3). Each is now
INVALID_ARGUMENT naming the field and its bound, with nothing stored. Also AIP-160's `field:*`
(F8), metadata filters that compare numbers exactly (L14), and update masks in lowerCamelCase (F5).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import grpc
from agents_helpers import create_run, rpc_error, wait_status

from amelia.v1 import agents_pb2 as S
from amelia_common import paging

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def _names(agents: Any, filter: str) -> list[str]:
    response = await agents.ListRuns(S.ListRunsRequest(filter=filter, page_size=100))
    return [r.name for r in response.runs]


async def _refused(call: Any) -> str:
    error = await rpc_error(call)
    assert error.code() == INVALID, (error.code(), error.details())
    return error.details() or ""


async def test_a_cancel_reason_is_bounded_and_refuses_nul_before_anything_is_stored(
    agents: Any,
) -> None:
    run = await create_run(agents, workflow="workflows/test-ask", input={"question": "?"})
    await wait_status(agents, run.name, S.RUN_STATUS_PAUSED)
    for reason, says in (
        ("y" * 5_000_000, "reason is 5000000 characters; at most 1024 are accepted"),
        ("y" * 1025, "reason is 1025 characters; at most 1024 are accepted"),
        ("a\x00b", "reason must not contain NUL characters"),
    ):
        assert says in await _refused(
            agents.CancelRun(S.CancelRunRequest(name=run.name, reason=reason))
        )
        kept = (await agents.GetRun(S.GetRunRequest(name=run.name))).run
        assert (kept.status, kept.error) == (S.RUN_STATUS_PAUSED, "")  # nothing cancelled
    cancelled = await agents.CancelRun(S.CancelRunRequest(name=run.name, reason="é" * 1024))
    assert cancelled.run.status == S.RUN_STATUS_CANCELLED
    assert "é" * 1024 in cancelled.run.error


async def test_a_filter_nesting_nots_or_minuses_too_deep_is_refused(agents: Any) -> None:
    for deep in ("NOT " * 200 + "a", "-" * 1990 + "a", "NOT (" * 16 + "a" + ")" * 16):
        says = await _refused(agents.ListRuns(S.ListRunsRequest(filter=deep)))
        assert "filter: nested more than 32 levels deep" in says, says
    word = f"deep{uuid.uuid4().hex[:8]}"
    run = await create_run(agents, workflow="workflows/echo", input={"message": word})
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    # 31 negations (32 levels with the whole filter): an even number of NOTs is the word.
    assert await _names(agents, "NOT " * 30 + word) == [run.name]
    assert await _names(agents, "-" * 30 + word) == [run.name]
    assert await _names(agents, "NOT " * 31 + word) == await _names(agents, f"NOT {word}")


async def test_a_number_beyond_a_fields_range_is_refused_naming_the_range(agents: Any) -> None:
    int32 = "from -2147483648 to 2147483647"
    int64 = "from -9223372036854775808 to 9223372036854775807"
    for bad, says in (
        ("attempt > 2147483648", f"attempt holds whole numbers {int32}; 2147483648 is outside"),
        ("attempt = -9223372036854775809", f"attempt holds whole numbers {int32}"),
        (
            "usage.input_tokens = 99999999999999999999",
            f"usage.input_tokens holds whole numbers {int64}",
        ),
        (
            "usage.output_tokens < -9223372036854775809",
            f"usage.output_tokens holds whole numbers {int64}",
        ),
        ("input.n < 1e99999", "input.n 1e99999 is out of range"),
        ("input.n > 1e-99999", "input.n 1e-99999 is out of range"),
        ("output.n >= 1e99999999999999999999", "output.n 1e99999999999999999999 is out of range"),
        ("attempt = 1_0", "'1_0' is not a whole number"),
    ):
        assert says in await _refused(agents.ListRuns(S.ListRunsRequest(filter=bad))), bad
    tag = f"range{uuid.uuid4().hex[:8]}"
    run = await create_run(agents, workflow="workflows/echo", input={"message": tag, "n": 5})
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)
    mine = f'input.message = "{tag}"'
    # The ends of each range are values like any other.
    assert await _names(agents, f"{mine} attempt < 2147483647") == [run.name]
    assert await _names(agents, f"{mine} usage.input_tokens < 9223372036854775807") == [run.name]
    assert await _names(agents, f"{mine} input.n < 1e1000 input.n > 1e-1000") == [run.name]
    assert await _names(agents, f"{mine} input.n = 0e99999") == []
    # Equality with a number no run holds is simply false (it still compares as text).
    assert await _names(agents, f"{mine} input.n = 1e99999999999999999999") == []
    assert await _names(agents, f"{mine} input.n != 1e99999") == [run.name]


async def test_a_forged_page_token_with_a_sort_key_out_of_range_is_refused(agents: Any) -> None:
    epoch = datetime.fromtimestamp(0).astimezone()
    last = uuid.uuid4()
    for order_by, value in (
        ("usage.total_tokens", "99999999999999999999999"),
        ("usage.total_tokens desc", "-9223372036854775809"),
        ("duration", "1e400"),
        ("duration desc", "1e-99999"),
        ("duration", "NaN"),
    ):
        request = S.ListRunsRequest(order_by=order_by)
        key = order_by.removesuffix(" desc")
        request.page_token = paging.encode_keyset(
            epoch, f"{key}|{value}|{last}", paging.request_scope(request)
        )
        says = await _refused(agents.ListRuns(request))
        assert says == paging.BAD_TOKEN, (order_by, value, says)


async def test_has_a_field_is_aip160_presence_not_contains_a_star(agents: Any) -> None:
    tag = f"has{uuid.uuid4().hex[:8]}"
    echoed = await create_run(
        agents, workflow="workflows/echo", input={"message": tag, "tag": tag, "empty": None}
    )
    echoed = await wait_status(agents, echoed.name, S.RUN_STATUS_COMPLETED)
    starred = await create_run(
        agents, workflow="workflows/echo", input={"message": "a*", "tag": tag}
    )
    starred = await wait_status(agents, starred.name, S.RUN_STATUS_COMPLETED)
    raised = await create_run(
        agents, workflow="workflows/test-raise", input={"note": tag, "tag": tag}
    )
    raised = await wait_status(agents, raised.name, S.RUN_STATUS_FAILED)
    mine = f'input.tag = "{tag}"'

    everything = [raised.name, starred.name, echoed.name]
    assert await _names(agents, f"{mine} input:*") == everything
    assert await _names(agents, f"{mine} input.message:*") == [starred.name, echoed.name]
    assert await _names(agents, f"{mine} input.note:*") == [raised.name]
    assert await _names(agents, f"{mine} input.empty:*") == [echoed.name]  # there, holding null
    assert await _names(agents, f"{mine} -input.message:*") == [raised.name]
    assert await _names(agents, f"{mine} input.nested.deeper:*") == []
    assert await _names(agents, f"{mine} output:*") == [starred.name, echoed.name]
    assert await _names(agents, f"{mine} error:*") == [raised.name]
    assert await _names(agents, f"{mine} NOT error:*") == [starred.name, echoed.name]
    assert await _names(agents, f"{mine} end_time:* attempt:* status:*") == everything
    assert await _names(agents, f"{mine} agent:*") == []
    assert await _names(agents, f"{mine} workflow:*") == everything
    # A quoted "*" is still the text, as any other quoted value.
    assert await _names(agents, f'{mine} input.message:"*"') == [starred.name]
    assert "unknown field 'colour'" in await _refused(
        agents.ListRuns(S.ListRunsRequest(filter="colour:*"))
    )


async def test_metadata_filters_compare_numbers_only_when_written_as_numbers(agents: Any) -> None:
    team = f"team-{uuid.uuid4().hex[:8]}"
    request = S.CreateThreadRequest()
    request.thread.metadata.update({"team": team, "step": 2})
    thread = (await agents.CreateThread(request)).thread.name

    async def threads(step: str) -> list[str]:
        wanted = {"team": team, "step": step}
        reply = await agents.ListThreads(S.ListThreadsRequest(metadata_filter=wanted))
        return [t.name for t in reply.threads]

    assert await threads("2") == [thread]
    assert await threads("2.0") == [thread]
    assert await threads("2e0") == [thread]
    for not_two in (" 2", "2 ", "+2", "2_0", "٢", "0x2"):
        assert await threads(not_two) == [], repr(not_two)

    run = await create_run(agents, workflow="workflows/echo", input={"message": "steps"})
    await wait_status(agents, run.name, S.RUN_STATUS_COMPLETED)

    async def history(step: str) -> list[str]:
        reply = await agents.ListThreadHistory(
            S.ListThreadHistoryRequest(parent=run.thread, metadata_filter={"step": step})
        )
        return [s.checkpoint for s in reply.states]

    states = (await agents.ListThreadHistory(S.ListThreadHistoryRequest(parent=run.thread))).states
    last = states[0]
    assert last.step > 0
    at_step = [s.checkpoint for s in states if s.step == last.step]
    assert await history(str(last.step)) == at_step
    assert await history(f"{last.step}.0") == at_step
    for other in (f" {last.step}", f"{last.step} ", f"+{last.step}", f"0_{last.step}"):
        assert await history(other) == [], repr(other)


async def test_an_update_mask_takes_snake_case_and_lower_camel_case_paths(agents: Any) -> None:
    agent_id = f"mask-{uuid.uuid4().hex[:8]}"
    created = await agents.CreateAgent(
        S.CreateAgentRequest(agent_id=agent_id, agent=S.Agent(model="offline:echo"))
    )
    name = created.agent.name
    for mask, prompt, tokens in (
        (["systemPrompt"], "camel", None),
        (["system_prompt"], "snake", None),
        (["displayName,maxTokens", "systemPrompt"], "both", 11),
        (["max_tokens", "maxTokens", "system_prompt"], "twice", 12),
    ):
        change = S.Agent(
            name=name, system_prompt=prompt, display_name=prompt, max_tokens=tokens or 1
        )
        updated = (
            await agents.UpdateAgent(S.UpdateAgentRequest(agent=change, update_mask=mask))
        ).agent
        assert updated.system_prompt == prompt, mask
        if tokens:
            assert updated.max_tokens == tokens, mask
    assert updated.display_name == "both"  # the last mask did not name it
    for mask in (["SystemPrompt"], ["system_Prompt"], ["systemprompt"], ["colour"]):
        change = S.Agent(name=name, system_prompt="never")
        says = await _refused(
            agents.UpdateAgent(S.UpdateAgentRequest(agent=change, update_mask=mask))
        )
        assert f"update_mask has unknown fields {mask}; allowed: display_name" in says, says
    kept = (await agents.GetAgent(S.GetAgentRequest(name=name))).agent
    assert kept.system_prompt == "twice"
