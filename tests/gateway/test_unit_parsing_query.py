"""`transcode.query_to_dict` in process: a URL's query pairs as the proto-JSON dict of a request
message, or INVALID_ARGUMENT naming the parameter and what is wrong with it. The HTTP tests go
through a running gateway; these cover each rule once, without one."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor

from amelia.v1 import agents_pb2, rag_pb2
from amelia_gateway.errors import GatewayError
from amelia_gateway.transcode import query_to_dict

RUNS = agents_pb2.ListRunsRequest.DESCRIPTOR
DOCUMENTS = rag_pb2.ListDocumentsRequest.DESCRIPTOR
UPDATE = agents_pb2.UpdateAgentRequest.DESCRIPTOR

ACCEPTED: list[tuple[str, Descriptor, list[tuple[str, str]], dict[str, Any]]] = [
    ("nothing", RUNS, [], {}),
    ("proto name", RUNS, [("page_size", "5")], {"page_size": "5"}),
    ("JSON name", RUNS, [("pageSize", "5")], {"page_size": "5"}),
    ("negative integer", RUNS, [("page_size", "-1")], {"page_size": "-1"}),
    (
        "repeated enum by name and number",
        RUNS,
        [("statuses", "RUN_STATUS_FAILED"), ("statuses", "2")],
        {"statuses": ["RUN_STATUS_FAILED", 2]},
    ),
    (
        "timestamp as its string",
        RUNS,
        [("createdAfter", "2026-01-01T00:00:00Z")],
        {"created_after": "2026-01-01T00:00:00Z"},
    ),
    (
        "map entries",
        DOCUMENTS,
        [("metadata_filter[team]", "blue"), ("metadata_filter[x]", "y")],
        {"metadata_filter": {"team": "blue", "x": "y"}},
    ),
    (
        "nested fields",
        UPDATE,
        [("agent.temperature", "0.5"), ("agent.maxTokens", "10"), ("agent.timeout", "3s")],
        {"agent": {"temperature": "0.5", "max_tokens": "10", "timeout": "3s"}},
    ),
    (
        "repeated string",
        UPDATE,
        [("update_mask", "a"), ("update_mask", "b")],
        {"update_mask": ["a", "b"]},
    ),
]


@pytest.mark.parametrize(
    ("descriptor", "items", "expected"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_query_pairs_become_the_requests_fields(
    descriptor: Descriptor, items: list[tuple[str, str]], expected: dict[str, Any]
) -> None:
    assert query_to_dict(descriptor, items, set()) == expected


REFUSED: list[tuple[Descriptor, list[tuple[str, str]], set[str], str]] = [
    (RUNS, [("nope", "1")], set(), "unknown query parameter 'nope'"),
    (RUNS, [("page_size", "x")], set(), "'page_size': must be an integer from -2147483648"),
    (RUNS, [("pageSize", "lots")], set(), "'pageSize': must be an integer from -2147483648"),
    (RUNS, [("statuses", "BOGUS")], set(), "'BOGUS' is not one of RUN_STATUS_UNSPECIFIED"),
    (RUNS, [("page_size", "1"), ("page_size", "2")], set(), "'page_size' is given more than once"),
    (RUNS, [("page_size[a]", "1")], set(), "'page_size' is not a map"),
    (UPDATE, [("agent.name", "x")], {"agent.name"}, "'agent.name' is set by the path"),
    (UPDATE, [("agent", "x")], set(), "cannot be set in the query string; send it in a JSON body"),
    (UPDATE, [("agent.create_time.seconds", "1")], set(), "unknown query parameter"),
    (UPDATE, [("agent.tools.x", "1")], set(), "unknown query parameter 'agent.tools.x'"),
    (UPDATE, [("agent.nope", "1")], set(), "unknown query parameter 'agent.nope'"),
    (DOCUMENTS, [("metadata_filter", "x")], set(), "use metadata_filter[key]=value"),
    # A map key given twice is refused as a field given twice is (QA L5: the last one won).
    (
        DOCUMENTS,
        [("metadataFilter[team]", "bulk"), ("metadataFilter[team]", "qa")],
        set(),
        "query parameter 'metadataFilter[team]' is given more than once",
    ),
    (
        DOCUMENTS,
        [("metadata_filter[team]", "bulk"), ("metadataFilter[x]", "qa")],
        set(),
        # One field under its two names, even for other entries (QA s27 F6: as in a body).
        "query parameters 'metadata_filter[team]' and 'metadataFilter[x]' name the same field",
    ),
]


@pytest.mark.parametrize(
    ("descriptor", "items", "bound", "message"), REFUSED, ids=[case[3] for case in REFUSED]
)
def test_a_bad_query_parameter_is_invalid_argument_naming_it(
    descriptor: Descriptor, items: list[tuple[str, str]], bound: set[str], message: str
) -> None:
    with pytest.raises(GatewayError) as refused:
        query_to_dict(descriptor, items, bound)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.http_status == 400
    assert message in refused.value.message
