"""`POST /v1/documents` as an HTTP client meets it (QA s21): a raw upload named by RFC 6266's
`filename*` (how clients send a name that is not ASCII), and a JSON upload too large to go
inline, told what an HTTP client does instead."""

from __future__ import annotations

import base64
import urllib.parse
import uuid
from typing import Any

from gateway_helpers import Mesh

from amelia_common.settings import Settings


async def _raw(mesh: Mesh, disposition: str, content: bytes) -> dict:
    reply = await mesh.http.post(
        "/v1/documents",
        content=content,
        headers={"Content-Type": "application/octet-stream", "Content-Disposition": disposition},
    )
    body: dict = reply.json()
    body["status"] = reply.status_code
    return body


async def test_a_raw_upload_is_titled_by_filename_star_in_preference(mesh: Mesh) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"名前-{tag}.md"
    encoded = urllib.parse.quote(name.encode())
    content = f"# Lighthouse {tag}\n\nThe keeper climbs the stairs at dusk.\n".encode()

    alone = await _raw(mesh, f"attachment; filename*=UTF-8''{encoded}", content)
    assert alone["status"] == 200, alone
    assert alone["document"]["title"] == name

    # RFC 6266 §4.3: `filename*` wins over the ASCII fallback in `filename`, in either order.
    other = f"# Harbour {tag}\n\nBoats come in with the tide.\n".encode()
    both = await _raw(
        mesh, f"attachment; filename=\"fallback-{tag}.md\"; filename*=utf-8'en'{encoded}", other
    )
    assert both["status"] == 200, both
    assert both["document"]["title"] == name
    latin = await _raw(mesh, f"attachment; filename*=ISO-8859-1''caf%E9-{tag}.md", content)
    assert latin["status"] == 200 and latin["document"]["title"] == f"café-{tag}.md", latin

    plain = await _raw(mesh, f'attachment; filename="plain-{tag}.md"', content)
    assert plain["status"] == 200 and plain["document"]["title"] == f"plain-{tag}.md", plain

    # A `filename*` this server cannot read, with the ASCII fallback RFC 6266 has senders add
    # for that case: the fallback names it (QA: it was a 400).
    unread = f"# Pier {tag}\n\nGulls on the posts.\n".encode()
    fallback = await _raw(
        mesh, f"attachment; filename*=Shift_JIS''%96%BC.md; filename=\"pier-{tag}.md\"", unread
    )
    assert fallback["status"] == 200 and fallback["document"]["title"] == f"pier-{tag}.md"


async def test_a_filename_star_that_cannot_be_decoded_and_has_no_fallback_is_a_clear_400(
    mesh: Mesh,
) -> None:
    content = b"some text that is never stored"
    for disposition, words in (
        ("attachment; filename*=UTF-8''%FF%FE.md", "is not valid UTF-8 once percent-decoded"),
        ("attachment; filename*=%E5%90%8D.md", "is not an RFC 8187 value like UTF-8''"),
        ("attachment; filename*=Shift_JIS''%96%BC.md", "charset 'Shift_JIS': send it as UTF-8"),
        ("attachment; filename*=UTF-8''a b.md", "is not an RFC 8187 value"),
    ):
        reply = await _raw(mesh, disposition, content)
        assert reply["status"] == 400 and reply["code"] == 3, (disposition, reply)
        assert "Content-Disposition filename*" in reply["message"], reply
        assert words in reply["message"], (disposition, reply["message"])


async def test_json_content_over_the_inline_limit_is_told_to_upload_it_as_a_file(
    mesh: Mesh, infra: Any
) -> None:
    settings: Settings = infra.settings()
    limit = settings.MAX_INLINE_DOCUMENT_BYTES
    content = b"a" * (limit + 1)
    reply = await mesh.http.post(
        "/v1/documents",
        json={"source": {"title": "big.txt"}, "content": base64.b64encode(content).decode()},
    )
    assert reply.status_code == 400, reply.text
    message = reply.json()["message"]
    assert f"content is {limit + 1} bytes" in message, message
    assert "UploadDocument" not in message, "an HTTP client has no UploadDocument"
    assert "multipart/form-data (curl -F file=@" in message and "--data-binary @" in message


async def test_the_same_content_without_its_metadata_is_not_answered_unchanged(
    mesh: Mesh,
) -> None:
    """QA F6: the same bytes again without metadata clear the document's (the request's
    replace it, docs/rag.md) — the answer said `"unchanged": true`. Now `false`, the document
    as stored (metadata `{}`): refreshed, not indexed again."""
    tag = uuid.uuid4().hex[:8]
    content = base64.b64encode(f"# Tern {tag}\n\nTerns dive for sand eels.\n".encode()).decode()
    source: dict[str, Any] = {"filePath": f"/notes/tern-{tag}.md", "metadata": {"site": "spit"}}

    async def upload() -> dict[str, Any]:
        reply = await mesh.http.post("/v1/documents", json={"source": source, "content": content})
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    first = await upload()
    assert first["unchanged"] is False and first["document"]["metadata"] == {"site": "spit"}
    assert (await upload())["unchanged"] is True  # the same content and metadata
    del source["metadata"]
    cleared = await upload()
    assert cleared["unchanged"] is False, cleared
    assert cleared["document"]["metadata"] == {}, cleared
    assert cleared["document"]["name"] == first["document"]["name"]
    assert (await upload())["unchanged"] is True
    await mesh.http.delete(f"/v1/{first['document']['name']}")
