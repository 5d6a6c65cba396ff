"""A resource whose id is a UUID has one name (AIP-122): `threads/`, `runs/`, `crons/` and
`documents/` followed by the UUID as the mesh writes it, 8-4-4-4-12 lowercase hex digits. QA L2:
`threads/urn:uuid:<uuid>`, `threads/{<uuid>}`, upper case and no hyphens were read as the same
thread by GetThread and DeleteThread (which deleted it). Every other spelling is now
INVALID_ARGUMENT showing the shape, over gRPC from each service and as an HTTP 400 google.rpc.Status
from the gateway, and the resource is still there afterwards."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest
from gateway_helpers import Mesh

from amelia.v1 import agents_pb2, agents_pb2_grpc, crons_pb2, crons_pb2_grpc, rag_pb2, rag_pb2_grpc
from amelia_common.grpc_client import aio_channel
from amelia_common.settings import Settings

YEARLY = "0 0 1 1 *"


def spellings(name: str) -> list[str]:
    """Other spellings of `name` that `uuid.UUID()` reads as the same id, and the bare id."""
    collection, uid = name.split("/")
    return [
        f"{collection}/{uid.upper()}",
        f"{collection}/{uid.replace('-', '')}",
        f"{collection}/{{{uid}}}",
        f"{collection}/urn:uuid:{uid}",
        uid,
    ]


def refusal(collection: str, name: str, field: str = "") -> str:
    return (
        f"{field + ': ' if field else ''}{collection[:-1]} name {name!r} must be "
        f"'{collection}/<uuid>' with the uuid in its canonical form (8-4-4-4-12 lowercase hex digits)"
    )


async def refused(call: Any) -> str:
    """The details of `call`'s INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    return caught.value.details() or ""


def settings_of(infra: object) -> Settings:
    settings: Settings = infra.settings()  # type: ignore[attr-defined]
    return settings


async def made(http: httpx.AsyncClient, path: str, body: dict[str, Any], key: str) -> str:
    reply = await http.post(path, json=body)
    assert reply.status_code == 200, reply.text
    name: str = reply.json()[key]["name"]
    return name


async def test_threads_runs_crons_and_documents_answer_only_to_their_one_name(
    mesh: Mesh, infra: object
) -> None:
    http = mesh.http
    thread = await made(http, "/v1/threads", {"thread": {}}, "thread")
    agent_id = f"names-{uuid.uuid4().hex[:8]}"
    agent = await made(
        http, f"/v1/agents?agentId={agent_id}", {"agent": {"model": "offline:echo"}}, "agent"
    )
    run = await made(http, "/v1/runs", {"run": {"agent": agent, "input": {"message": "hi"}}}, "run")
    cron_body = {"cron": {"agent": agent, "schedule": YEARLY, "input": {"message": "hi"}}}
    cron = await made(http, "/v1/crons", cron_body, "cron")
    source = {"title": "names.txt"}
    content = base64.b64encode(b"Names have one spelling.").decode()
    document = await made(http, "/v1/documents", {"source": source, "content": content}, "document")
    settings = settings_of(infra)
    async with (
        aio_channel(f"127.0.0.1:{mesh.agents.bound_port}", settings) as to_agents,
        aio_channel(f"127.0.0.1:{mesh.rag.bound_port}", settings) as to_rag,
    ):
        agents = agents_pb2_grpc.AgentServiceStub(to_agents)
        crons = crons_pb2_grpc.CronServiceStub(to_agents)
        rag = rag_pb2_grpc.RagServiceStub(to_rag)

        def run_on(other: str) -> Any:
            on_it = agents_pb2.Run(agent=agent, thread=other)
            on_it.input.update({"message": "hi"})
            return agents.CreateRun(agents_pb2.CreateRunRequest(run=on_it))

        # (the resource, the field its message names or "", the call given another spelling)
        calls: list[tuple[str, str, Callable[[str], Any]]] = [
            (thread, "", lambda n: agents.GetThread(agents_pb2.GetThreadRequest(name=n))),
            (thread, "", lambda n: agents.DeleteThread(agents_pb2.DeleteThreadRequest(name=n))),
            (thread, "", lambda n: agents.ListRuns(agents_pb2.ListRunsRequest(thread=n))),
            (
                thread,
                "filter",
                lambda n: agents.ListRuns(agents_pb2.ListRunsRequest(filter=f'thread = "{n}"')),
            ),
            (thread, "", run_on),
            (run, "", lambda n: agents.GetRun(agents_pb2.GetRunRequest(name=n))),
            (run, "", lambda n: agents.CancelRun(agents_pb2.CancelRunRequest(name=n))),
            (cron, "", lambda n: crons.GetCron(crons_pb2.GetCronRequest(name=n))),
            (cron, "", lambda n: crons.DeleteCron(crons_pb2.DeleteCronRequest(name=n))),
            (document, "", lambda n: rag.GetDocument(rag_pb2.GetDocumentRequest(name=n))),
            (document, "", lambda n: rag.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=n))),
            (document, "parent", lambda n: rag.ListChunks(rag_pb2.ListChunksRequest(parent=n))),
            (
                document,
                "documents",
                lambda n: rag.Search(rag_pb2.SearchRequest(query="q", documents=[n])),
            ),
        ]
        for name, field, call in calls:
            collection = name.split("/")[0]
            for other in spellings(name):
                assert await refused(call(other)) == refusal(collection, other, field)
        # Each is still there, under its one name.
        await agents.GetThread(agents_pb2.GetThreadRequest(name=thread))
        await agents.GetRun(agents_pb2.GetRunRequest(name=run))
        await crons.DeleteCron(crons_pb2.DeleteCronRequest(name=cron))
        await rag.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=document))


async def test_the_gateway_answers_another_spelling_with_a_400_and_deletes_nothing(
    mesh: Mesh,
) -> None:
    http = mesh.http
    thread = await made(http, "/v1/threads", {"thread": {}}, "thread")
    uid = thread.removeprefix("threads/")
    # With a control character after it too: Python's urlsplit drops tabs, CRs and LFs
    # (WHATWG), so routing by Starlette's `request.url.path` found the thread under them.
    others = (uid.upper(), uid.replace("-", ""), f"{{{uid}}}", f"{uid}\n", f"{uid}\r", f"{uid}\t")
    for other in others:
        for method in ("GET", "DELETE"):
            reply = await http.request(method, f"/v1/threads/{quote(other)}")
            assert reply.status_code == 400, reply.text
            status = reply.json()  # google.rpc.Status
            assert (status["code"], status["message"]) == (
                3,
                refusal("threads", f"threads/{other}"),
            )
            assert status["details"][0]["@type"].endswith("google.rpc.RequestInfo")
    # `:` ends a path variable (a custom verb follows it): no route takes this path at all.
    urn = await http.delete(f"/v1/threads/urn:uuid:{uid}")
    assert urn.status_code == 404, urn.text
    still = await http.get(f"/v1/{thread}")
    assert still.status_code == 200 and still.json()["thread"]["name"] == thread
