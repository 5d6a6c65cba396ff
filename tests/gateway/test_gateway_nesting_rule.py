"""One documented rule for how deep a free-form JSON value may nest (QA s27b L5).

QA found two numbers: run input and thread/cron metadata stop at 24 levels, event data and
document metadata take what the gateway's 32-level body allows. Both follow one rule — a value is
taken as deep as every reply and event carrying it back can still be decoded — and the agents
service hands its values back wrapped deeper (thread state, history, `workflow.started`), the
events and rag services theirs no deeper than they came. docs/gateway.md now says so, with the
numbers; these tests hold the docs to the code and the code to the docs.
"""

from __future__ import annotations

import base64
import re
import uuid
from pathlib import Path
from typing import Any

from gateway_helpers import Mesh

from amelia_agents.convert import MAX_JSON_DEPTH
from amelia_gateway.json_input import MAX_DEPTH

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
# `{"event": {"data": …}}`, `{"source": {"metadata": …}}`: the value sits two levels in.
BODY_LEVELS_ABOVE_VALUE = 2


def _deep(levels: int) -> dict[str, Any]:
    """An object nested `levels` levels of objects deep (the outermost counting as 1)."""
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def _nesting_rows() -> dict[str, str]:
    """docs/gateway.md's nesting table: first cell → second cell."""
    text = DOC.read_text()
    start = text.index("**Nesting of free-form values**")
    rows: dict[str, str] = {}
    for line in text[start:].splitlines()[3:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1]
    return rows


def test_the_docs_give_the_nesting_limits_the_code_enforces() -> None:
    rows = _nesting_rows()
    events = next(v for k, v in rows.items() if "event's `data`" in k and "document" in k)
    agents = next(v for k, v in rows.items() if "run's `input`" in k)
    assert re.match(rf"{MAX_DEPTH - BODY_LEVELS_ABOVE_VALUE}\b", events), events
    assert f"body's {MAX_DEPTH}" in events, events
    assert re.match(rf"{MAX_JSON_DEPTH}\b", agents), agents
    assert f"nested {MAX_JSON_DEPTH + 1} levels deep" in agents, agents


async def test_event_data_and_document_metadata_nest_as_deep_as_the_body_allows(
    mesh: Mesh,
) -> None:
    """Taken at 30 levels and read back (the gateway decodes each gRPC reply), 31 refused."""
    levels = MAX_DEPTH - BODY_LEVELS_ABOVE_VALUE
    tag = uuid.uuid4().hex[:8]
    subject = f"runs/nesting-{tag}"
    event = {"type": "app.nesting", "subject": subject, "data": _deep(levels)}
    published = await mesh.http.post("/v1/events", json={"event": event})
    assert published.status_code == 200, published.text
    sequence = published.json()["event"]["sequence"]
    got = await mesh.http.get(f"/v1/events/{sequence}")
    assert got.status_code == 200, got.text
    assert got.json()["event"]["data"] == _deep(levels)
    listed = await mesh.http.get("/v1/events", params={"filter.subject": subject})
    assert [e["data"] for e in listed.json()["events"]] == [_deep(levels)]

    source = {"title": f"nesting-{tag}", "metadata": _deep(levels)}
    content = base64.b64encode(f"# Nesting {tag}\n\nThe canal is deep.\n".encode()).decode()
    ingested = await mesh.http.post("/v1/documents", json={"source": source, "content": content})
    assert ingested.status_code == 200, ingested.text
    name = ingested.json()["document"]["name"]
    document = await mesh.http.get(f"/v1/{name}")
    assert document.status_code == 200, document.text
    assert document.json()["document"]["metadata"] == _deep(levels)
    await mesh.http.delete(f"/v1/{name}")

    too_deep = {"type": "app.nesting", "subject": subject, "data": _deep(levels + 1)}
    refused = await mesh.http.post("/v1/events", json={"event": too_deep})
    assert refused.status_code == 400, refused.text
    assert f"at most {MAX_DEPTH} levels" in refused.json()["message"]


async def test_values_the_agents_service_hands_back_deeper_stop_at_24_levels(mesh: Mesh) -> None:
    taken = await mesh.http.post(
        "/v1/threads", json={"thread": {"metadata": _deep(MAX_JSON_DEPTH)}}
    )
    assert taken.status_code == 200, taken.text
    await mesh.http.delete(f"/v1/{taken.json()['thread']['name']}")
    deeper = _deep(MAX_JSON_DEPTH + 1)
    for path, body in (
        ("/v1/threads", {"thread": {"metadata": deeper}}),
        ("/v1/runs", {"run": {"workflow": "workflows/echo", "input": {"message": "x", **deeper}}}),
    ):
        refused = await mesh.http.post(path, json=body)
        assert refused.status_code == 400, (path, refused.text)
        message = refused.json()["message"]
        assert f"at most {MAX_JSON_DEPTH} are accepted" in message, message
