"""Fuzz every unary RPC of events, agents and rag with random well-formed requests (and the
server streams StreamEvents and StreamRun, up to the moment they are open).

Requests are generated from the message descriptors (hypothesis): any text (NUL, very long,
names that look right), lone surrogates (sent as the invalid UTF-8 a non-Python client can
send), integers at their type's extremes, NaN and infinite doubles, nested Structs, Timestamps
and Durations far out of range, unknown enum values. Whatever comes in, a service answers a
status that says whose fault it is — never INTERNAL or UNKNOWN, never UNAVAILABLE while its
dependencies are up, never a hang — and stays SERVING.

The services run on their own PostgreSQL and NATS (`mesh_helpers`), so what the fuzzer stores
never reaches other tests. Examples are derandomized (the same on every run, so the suite is
stable); set AMELIA_FUZZ_RANDOM=1 to explore new ones, AMELIA_FUZZ_EXAMPLES to run more.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mesh_helpers import SERVING, Mesh

from amelia.v1 import agents_pb2, events_pb2, rag_pb2

EXAMPLES = int(os.environ.get("AMELIA_FUZZ_EXAMPLES", "30"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not os.environ.get("AMELIA_FUZZ_RANDOM"),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# Statuses that mean "the service broke" rather than "the request was wrong".
BROKEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNAVAILABLE,  # every dependency is up: blaming one is a lie
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a hang
}
CALL_TIMEOUT = 60.0


def methods(*, streaming: bool) -> list[tuple[str, MethodDescriptor]]:
    """(service, method) of every unary RPC, or of every server-streaming one."""
    out = []
    for module, name, service in (
        (events_pb2, "events", "EventService"),
        (agents_pb2, "agents", "AgentService"),
        (rag_pb2, "rag", "RagService"),
    ):
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            if not method.client_streaming and method.server_streaming == streaming:
                out.append((name, method))
    return out


METHODS = methods(streaming=False)
STREAMS = methods(streaming=True)

# --------------------------------------------------------------------------- request strategies

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, high, -1, 0, 1, 2**31 - 1, 2**53, 2**63 - 1) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(0, 100), st.integers(low, high))


# Text that reaches past the first check: names of the mesh's resources, patterns, limits.
PLAUSIBLE = [
    "",
    " ",
    "x\x00y",
    "\x00",
    "a" * 300,
    "é" * 5000,
    "runs/" + str(uuid.UUID(int=1)),
    "threads/" + str(uuid.UUID(int=2)),
    "documents/" + str(uuid.UUID(int=3)),
    "agents/fuzz",
    "agents/" + "a" * 70,
    "workflows/echo",
    "workflows/chat",
    "events/1",
    "events/18446744073709551615",
    "run.*",
    "runs/*",
    "offline:echo",
    "anthropic:claude",
    "openai:gpt@http://127.0.0.1:1",
    "calculator",
    "*",
    ">",
    "a..b",
    "../../etc/passwd",
    '{"a": NaN}',
]


def text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(PLAUSIBLE),
        st.text(max_size=20),
        st.text(st.characters(codec="utf-8"), max_size=200),
    )


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**60), 2**60).map(float),
        text(),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(text(), inner, max_size=4)
        ),
        max_leaves=12,
    )


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _value(value: Any) -> struct_pb2.Value:
    return _struct({"v": value}).fields["v"]


def _time_like(cls: Any) -> st.SearchStrategy[Message]:
    return st.builds(
        cls,
        seconds=st.one_of(
            st.integers(-62135596800, 253402300799),  # valid Timestamps
            integers(-(2**63), 2**63 - 1),
        ),
        nanos=integers(-(2**31), 2**31 - 1),
    )


def message_strategy(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    name = descriptor.full_name
    if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return _time_like(cls)
    if name == "google.protobuf.Struct":
        return st.dictionaries(text(), json_values(), max_size=5).map(_struct)
    if name == "google.protobuf.Value":
        return json_values().map(_value)
    if name == "google.protobuf.FieldMask":
        return st.lists(text(), max_size=4).map(lambda paths: cls(paths=paths))
    if depth > 3:
        return st.just(cls())
    fields = {f.name: field_strategy(f, depth) for f in descriptor.fields}
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: build(cls, values))


def scalar_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(field.message_type, depth + 1)
    if kind == FieldDescriptor.TYPE_STRING:
        return text()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=300),
            st.sampled_from([b"# Title\n\nSome text to index.", b"%PDF-1.4 broken", b"\x00" * 64]),
        )
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), integers(-(2**31), 2**31 - 1))
    low, high = _INT_RANGES[kind]
    return integers(low, high)


def field_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = (
            field.message_type.fields_by_name["key"],
            field.message_type.fields_by_name["value"],
        )
        return st.dictionaries(
            scalar_strategy(key, depth), scalar_strategy(value, depth), max_size=3
        )
    if field.is_repeated:
        return st.lists(scalar_strategy(field, depth), max_size=4)
    return scalar_strategy(field, depth)


def build(cls: Callable[[], Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            if field.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


# A lone surrogate: what a client in another language can put in a string field. Python's
# protobuf refuses to encode one, so the request is encoded with a marker that is then swapped.
_MARKER = "\x01\x02\x03"
_SURROGATE = "\ud800".encode("utf-8", "surrogatepass")


def with_surrogate(request: Message) -> bytes | None:
    strings = [
        f
        for f in request.DESCRIPTOR.fields
        if f.type == FieldDescriptor.TYPE_STRING and not f.is_repeated
    ]
    if not strings:
        return None
    marked = type(request)()
    marked.CopyFrom(request)
    setattr(marked, strings[0].name, f"a{_MARKER}b")
    return marked.SerializeToString().replace(_MARKER.encode(), _SURROGATE, 1)


# --------------------------------------------------------------------------- the services


@pytest.fixture(scope="module", autouse=True)
async def fuzz_agent(mesh: Mesh) -> None:
    """An agent that exists, so `agents/fuzz` in generated requests reaches past NOT_FOUND."""
    try:
        await mesh.agents.CreateAgent(
            agents_pb2.CreateAgentRequest(
                agent_id="fuzz", agent=agents_pb2.Agent(model="offline:echo")
            )
        )
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.ALREADY_EXISTS, exc.details()


async def call(mesh: Mesh, service: str, method: MethodDescriptor, payload: bytes) -> Any:
    """Send raw request bytes; (status, details). A stream counts as OK once it is open (its
    headers came without a status): it is then cancelled."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    channel = mesh.channels[service]
    try:
        if not method.server_streaming:
            await channel.unary_unary(path)(payload, timeout=CALL_TIMEOUT)
            return grpc.StatusCode.OK, ""
        stream = channel.unary_stream(path)(payload, timeout=CALL_TIMEOUT)
        await stream.initial_metadata()
        if not stream.done():
            stream.cancel()
            return grpc.StatusCode.OK, ""
        return await stream.code(), await stream.details()
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


@pytest.mark.parametrize(
    ("service", "method"), METHODS + STREAMS, ids=[m.name for _, m in METHODS + STREAMS]
)
@FUZZ_SETTINGS
@given(data=st.data())
async def test_random_requests_never_break_a_service(
    mesh: Mesh, service: str, method: MethodDescriptor, data: st.DataObject
) -> None:
    request = data.draw(message_strategy(method.input_type), label="request")
    payload = request.SerializeToString()
    if data.draw(st.integers(0, 9), label="surrogate") == 0:
        payload = with_surrogate(request) or payload
    code, details = await call(mesh, service, method, payload)
    assert code not in BROKEN, f"{method.full_name}({request}) -> {code.name}: {details}"


async def test_every_service_is_healthy_after_the_fuzzing(mesh: Mesh) -> None:
    for service in mesh.services:
        assert await mesh.health(service) == SERVING
    await mesh.events.ListEvents(events_pb2.ListEventsRequest(page_size=1))
    await mesh.agents.ListAgents(agents_pb2.ListAgentsRequest())
    await mesh.rag.ListDocuments(rag_pb2.ListDocumentsRequest())


async def test_an_undecodable_upload_frame_is_invalid_argument(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    """A client-stream frame gRPC cannot decode: INVALID_ARGUMENT, not UNKNOWN with an ERROR
    traceback in the service's log."""
    upload = mesh.channels["rag"].stream_unary("/amelia.v1.RagService/UploadDocument")
    source = rag_pb2.UploadDocumentRequest(source=rag_pb2.DocumentSource(title="frames"))

    async def frames() -> AsyncIterator[bytes]:
        yield source.SerializeToString()
        yield b"\x12\xff\xff\xff\xff\x0f"  # `content` with a length past the frame's end

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(frames(), timeout=CALL_TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "UploadDocumentRequest" in (err.value.details() or "")
    assert not [r for r in caplog.records if r.levelno >= 40]
