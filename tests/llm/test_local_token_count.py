"""The real local model's server counts a prompt's tokens (llama.cpp `/tokenize`), and a long
prompt fitted at that count fits its window as the server itself templates and counts it —
without the ~25 % of the window the old rule of thumb (3 characters a token) left unused. Only
`/tokenize` and `/apply-template`: nothing is generated, so the test is cheap; its bounds are
tolerant (the fit drops whole passages)."""

from __future__ import annotations

from pathlib import Path

import httpx

from amelia_agents.llm import ChatMessage, ChatRequest, get_model, window
from amelia_common.llama_server import EmbeddedLlama
from amelia_common.settings import DEFAULT_LOCAL_MODEL

DOCS = Path(__file__).resolve().parents[2] / "docs"
MODEL = f"local:{DEFAULT_LOCAL_MODEL}"


def _passages(size: int = 1500, count: int = 16) -> tuple[str, ...]:
    text = "\n\n".join(p.read_text() for p in sorted(DOCS.glob("*.md")))
    return tuple(text[i : i + size] for i in range(0, size * count, size))


async def test_a_long_prompt_fitted_at_the_servers_count_fits_its_window(
    infra: object, llama: EmbeddedLlama
) -> None:
    settings = infra.settings(LOCAL_MODEL_URL=llama.base_url)  # type: ignore[attr-defined]
    model = get_model(MODEL, settings)
    n_ctx = await model.context_tokens()
    assert n_ctx is not None

    prose = (DOCS.parent / "README.md").read_text()[:8000]
    counted = await model.count_tokens(prose)  # type: ignore[attr-defined]
    assert counted is not None and 2.5 < len(prose) / counted < 6, counted

    request = ChatRequest(
        messages=[ChatMessage(role="user", content="What do these pages say about runs?")],
        system="Answer from the passages below.",
        max_tokens=256,
    )
    passages = _passages()
    ratio, counted = await window.chars_per_token(model, request, passages, n_ctx)
    assert counted is not None  # 24,000 characters: counted by the server
    fitted, note = window.fit(request, passages, n_ctx, ratio, counted=counted)
    assert note is not None and note["counted_by_server"] and note["passages_dropped"] > 0

    root = llama.base_url.rstrip("/").removesuffix("/v1")
    async with httpx.AsyncClient(base_url=root, timeout=60) as http:
        messages = [{"role": "system", "content": fitted.system}] + [
            {"role": m.role, "content": m.content} for m in fitted.messages
        ]
        prompt = (await http.post("/apply-template", json={"messages": messages})).json()["prompt"]
        tokens = len((await http.post("/tokenize", json={"content": prompt})).json()["tokens"])
    room = n_ctx - request.max_tokens
    assert tokens <= room, (tokens, room)
    assert tokens >= 0.8 * room, (tokens, room)  # the old rule of thumb filled about 0.7
