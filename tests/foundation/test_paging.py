"""Page sizes and keyset page tokens of every List RPC, table-driven, in-process."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from amelia_common import paging
from amelia_common.errors import InvalidArgumentError


@pytest.mark.parametrize(
    ("requested", "expected"), [(0, 50), (1, 1), (50, 50), (999, 999), (5000, 1000)]
)
def test_page_size_defaults_and_caps(requested: int, expected: int) -> None:
    assert paging.page_size(requested, default=50) == expected


def test_a_negative_page_size_names_the_rule() -> None:
    with pytest.raises(InvalidArgumentError, match="page_size must be 0"):
        paging.page_size(-1, default=50)


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 12, 1, 14, 0, 0, 123456, tzinfo=UTC),
        datetime(1999, 1, 1, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_a_keyset_token_gives_back_its_row(when: datetime) -> None:
    token = paging.encode_keyset(when, "3f1c-row")
    assert "=" not in token and paging.decode_keyset(token) == (when, "3f1c-row")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "%%%",
        _b64(b"{}"),
        _b64(b'["2026-12-01T00:00:00+00:00"]'),
        _b64(b'["yesterday", "id"]'),
        _b64(b'["2026-12-01T00:00:00", "id"]'),  # no zone: not one we made
        _b64(b'["2026-12-01T00:00:00+00:00", 7]'),
        _b64(b"\xff\xfe"),
    ],
)
def test_a_token_not_made_here_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgumentError, match="next_page_token"):
        paging.decode_keyset(token)


def test_a_token_is_bound_to_its_requests_other_parameters() -> None:
    from amelia.v1 import agents_pb2

    def scope(**fields: object) -> str:
        return paging.request_scope(agents_pb2.ListRunsRequest(**fields))  # type: ignore[arg-type]

    when = datetime(2026, 12, 1, tzinfo=UTC)
    made = scope(order_by="duration", filter="input.n > 2", page_size=2)
    token = paging.encode_keyset(when, "row", made)
    # The page fields and spaces in order_by are not part of it.
    same = scope(order_by=" duration ", filter="input.n > 2", page_size=9, page_token=token)
    assert paging.decode_keyset(token, same) == (when, "row")
    for other in (scope(filter="input.n > 2"), scope(order_by="duration"), ""):
        with pytest.raises(InvalidArgumentError) as info:
            paging.decode_keyset(token, other)
        assert info.value.message == paging.DIFFERENT_REQUEST


def test_a_token_of_another_list_is_refused_naming_both() -> None:
    # With no parameters, every List request serializes to nothing: the scope names the list.
    from amelia.v1 import agents_pb2

    when = datetime(2026, 12, 1, tzinfo=UTC)
    agents = paging.request_scope(agents_pb2.ListAgentsRequest())
    threads = paging.request_scope(agents_pb2.ListThreadsRequest())
    token = paging.encode_keyset(when, "agent-id", agents)
    with pytest.raises(InvalidArgumentError) as info:
        paging.decode_keyset(token, threads)
    assert info.value.message == (
        "page_token was made for ListAgents, not ListThreads: pass a previous ListThreads"
        " response's next_page_token"
    )
