"""Fake LLM servers for the agents and workflows tests: they speak the real streaming wire formats.

`FakeAnthropic` answers `POST /v1/messages` with Anthropic's Messages SSE stream
(message_start, content_block_*, message_delta, message_stop, pings); `FakeOpenAI` answers
`POST /v1/chat/completions` with OpenAI's chat.completion.chunk SSE stream ending in `[DONE]`.
Both pick a behaviour from the requested model name, record every request, and notice when a
client goes away mid-stream. `FakeOpenAI(llama=True)` also behaves as llama.cpp's server does:
`/props` and `/v1/models` (serving every name below) answer, and a request whose last message is
the assistant's is continued (assistant prefill): the stream carries only what follows it, and
a prompt longer than its slot's context (`LLAMA_N_CTX`, counted by `llama_prompt_tokens`) is
refused with llama.cpp's 400 `exceed_context_size_error`.

Model names (both servers):
- `tokens` — replies REPLY in word tokens.
- `transcript` (or `transcript-<anything>`) — replies with the conversation it was sent
  ("role: content" lines).
- `hold-<key>` — like `transcript`, but after its first token it waits until the test calls
  `release(<key>)` (to catch a worker in the middle of a model call).
- `flaky-<key>` — the first request for <key> fails (Anthropic 529 overloaded, OpenAI 503), the
  next succeeds.
- `down-<key>` — always fails with 529/503.
- `slow` — 200 tokens, 100 ms apart (to cancel mid-stream).
- `drift` — DRIFT_TOKENS tokens `w<i>-<tag> `, 50 ms apart, where <tag> is the server's own
  (a new one each time a server starts): like a restarted llama.cpp server whose reply differs
  from the one it was streaming when it died.
- `tool-calculator[-<key>]` — when the request offers tools and its last message is not a tool
  result: asks for `calculator` with `{"expression": "6*7"}` (Anthropic: a short text block
  first, then a `tool_use` block streamed as `input_json_delta`s, stop_reason `tool_use`;
  OpenAI: `delta.tool_calls` chunks, finish_reason `tool_calls`). Once it gets the tool result:
  replies `The tool said: <result text>.`
- `tool-error[-<key>]` — the same with `{"expression": "1/0"}` (the tool fails).
- `tool-forever[-<key>]` — asks for `calculator` every time (to hit the rounds limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPLY = "Hello from the fake model, streamed one token at a time."
DRIFT_TOKENS = 120
TOOL_PREAMBLE = "Let me check. "
TOOL_ARGS = {
    "tool-calculator": {"expression": "6*7"},
    "tool-error": {"expression": "1/0"},
    "tool-forever": {"expression": "1+1"},
}


def tokens_of(text: str) -> list[str]:
    return re.findall(r"\s*\S+\s*|\s+", text)


@dataclass
class FakeServer:
    requests: list[dict[str, Any]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    disconnects: int = 0
    streams_open: int = 0
    port: int = 0
    # Tells this server's `drift` replies from another's (a restarted one's).
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self) -> list[Route]:
        raise NotImplementedError

    async def start(self) -> None:
        # Port 0: the OS picks a free port at bind time (no race with other test runs).
        config = uvicorn.Config(
            Starlette(routes=self.routes()),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("fake LLM server exited at start")
            await asyncio.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 5)

    def gate(self, key: str) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())

    def release(self, key: str) -> None:
        self.gate(key).set()

    def models(self, prefix: str) -> list[str]:
        """The model names of the requests received so far that start with `prefix`."""
        return [r["body"]["model"] for r in self.requests if r["body"]["model"].startswith(prefix)]

    async def held(self, model: str, tokens: list[str]) -> AsyncIterator[str]:
        """The tokens, pausing after the first one while a `hold-<key>` gate is closed."""
        for i, token in enumerate(tokens):
            if i == 1 and model.startswith("hold-"):
                await self.gate(model.removeprefix("hold-")).wait()
            yield token

    def tool_call(
        self, model: str, body: dict[str, Any], messages: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """The calculator arguments a `tool-*` model asks for now, or None (answer in text)."""
        kind = next((k for k in TOOL_ARGS if model == k or model.startswith(f"{k}-")), None)
        if kind is None or not body.get("tools"):
            return None
        if kind != "tool-forever" and last_tool_result(messages) is not None:
            return None
        return TOOL_ARGS[kind]

    def plan(self, model: str, messages: list[dict[str, Any]]) -> tuple[str, list[str], float]:
        """(outcome, tokens, delay): outcome is 'ok' or 'fail'."""
        if model.startswith("tool-"):
            result = last_tool_result(messages)
            text = REPLY if result is None else f"The tool said: {result}."
            return "ok", tokens_of(text), 0.0
        if model.startswith("flaky-"):
            n = self.attempts[model] = self.attempts.get(model, 0) + 1
            if n == 1:
                return "fail", [], 0.0
        if model.startswith("down-"):
            return "fail", [], 0.0
        if model == "transcript" or model.startswith(("transcript-", "hold-")):
            text = "\n".join(f"{m['role']}: {_text(m['content'])}" for m in messages)
            return "ok", tokens_of(text), 0.0
        if model == "slow":
            return "ok", [f"t{i} " for i in range(200)], 0.1
        if model == "drift":
            return "ok", [f"w{i}-{self.tag} " for i in range(DRIFT_TOKENS)], 0.05
        return "ok", tokens_of(REPLY), 0.0

    async def _guarded(self, body: AsyncIterator[str]) -> AsyncIterator[str]:
        self.streams_open += 1
        finished = False
        try:
            async for chunk in body:
                yield chunk
            finished = True
        finally:
            self.streams_open -= 1
            if not finished:
                self.disconnects += 1


def openai_chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    """One `chat.completion.chunk` of OpenAI's streaming wire format, as an SSE `data:` line."""
    data = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(data)}\n\n"


def _api_key(request: Request) -> str:
    """The key the SDK sent: `x-api-key`, or (newer SDKs) `Authorization: Bearer`."""
    bearer = request.headers.get("authorization", "")
    return request.headers.get("x-api-key", "") or bearer.removeprefix("Bearer ").strip()


def last_tool_result(messages: list[dict[str, Any]]) -> str | None:
    """The text of the tool result the conversation ends with, in either wire format
    (Anthropic: a user message of `tool_result` blocks; OpenAI: a `role: "tool"` message)."""
    if not messages:
        return None
    last = messages[-1]
    if last["role"] == "tool":
        return _text(last["content"])
    content = last.get("content")
    if last["role"] == "user" and isinstance(content, list):
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:
            return "".join(_text(b.get("content", "")) for b in results)
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


class FakeAnthropic(FakeServer):
    def routes(self) -> list[Route]:
        return [Route("/v1/messages", self.messages, methods=["POST"])]

    async def messages(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if not _api_key(request):
            return JSONResponse(
                {
                    "type": "error",
                    "error": {"type": "authentication_error", "message": "no API key sent"},
                },
                status_code=401,
            )
        outcome, tokens, delay = self.plan(body["model"], body["messages"])
        if outcome == "fail":
            return JSONResponse(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                status_code=529,
            )
        model = body["model"]
        call = self.tool_call(model, body, body["messages"])
        if call is not None:
            tokens = tokens_of(TOOL_PREAMBLE)

        async def stream() -> AsyncIterator[str]:
            def sse(event: str, **fields: Any) -> str:
                """One server-sent event; Anthropic repeats its name as the data's `type`."""
                return f"event: {event}\ndata: {json.dumps({'type': event, **fields})}\n\n"

            def delta(index: int, **fields: Any) -> str:
                return sse("content_block_delta", index=index, delta=fields)

            yield sse(
                "message_start",
                message={
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 25, "output_tokens": 1},
                },
            )
            yield sse("content_block_start", index=0, content_block={"type": "text", "text": ""})
            yield sse("ping")
            async for token in self.held(model, tokens):
                if delay:
                    await asyncio.sleep(delay)
                yield delta(0, type="text_delta", text=token)
            yield sse("content_block_stop", index=0)
            if call is not None:
                yield sse(
                    "content_block_start",
                    index=1,
                    content_block={
                        "type": "tool_use",
                        "id": f"toolu_fake_{len(self.requests)}",
                        "name": "calculator",
                        "input": {},
                    },
                )
                raw = json.dumps(call)
                for piece in ("", raw[:5], raw[5:14], raw[14:]):
                    yield delta(1, type="input_json_delta", partial_json=piece)
                yield sse("content_block_stop", index=1)
            yield sse(
                "message_delta",
                delta={
                    "stop_reason": "end_turn" if call is None else "tool_use",
                    "stop_sequence": None,
                },
                usage={"output_tokens": len(tokens)},
            )
            yield sse("message_stop")

        return StreamingResponse(self._guarded(stream()), media_type="text/event-stream")


# The model names FakeOpenAI(llama=True) lists at /v1/models.
LLAMA_MODELS = ("tokens", "transcript", "transcript-dense", "slow", "drift")
# The context of one slot `/props` reports, which a llama server enforces: a longer prompt is
# refused with llama.cpp's 400. Its prompt tokens: 3.5 characters each (a `-dense` model: 1, a
# tokenizer far denser than any rule of thumb), plus 8 per message.
LLAMA_N_CTX = 4096


def llama_prompt_tokens(body: dict[str, Any]) -> int:
    chars = sum(len(_text(m.get("content") or "")) for m in body["messages"])
    per = 1.0 if body["model"].endswith("-dense") else 3.5
    return int(chars / per) + 8 * len(body["messages"])


@dataclass
class FakeOpenAI(FakeServer):
    llama: bool = False
    # With llama: llama.cpp's `/tokenize`, counting this many characters a token (0: no route,
    # as an older server); `tokenized` counts the texts it was asked to count.
    tokenize_chars_per_token: float = 0.0
    tokenized: int = 0

    def routes(self) -> list[Route]:
        routes = [Route("/v1/chat/completions", self.completions, methods=["POST"])]
        if self.llama:
            routes += [Route("/props", self.props), Route("/v1/models", self.list_models)]
        if self.llama and self.tokenize_chars_per_token:
            routes.append(Route("/tokenize", self.tokenize, methods=["POST"]))
        return routes

    async def tokenize(self, request: Request) -> Response:
        self.tokenized += 1
        text = (await request.json())["content"]
        return JSONResponse({"tokens": list(range(int(len(text) / self.tokenize_chars_per_token)))})

    async def props(self, request: Request) -> Response:
        return JSONResponse(
            {"default_generation_settings": {"n_ctx": LLAMA_N_CTX}, "total_slots": 2}
        )

    async def list_models(self, request: Request) -> Response:
        data: list[dict[str, Any]] = [
            {"id": m, "object": "model", "owned_by": "fake"} for m in LLAMA_MODELS[1:]
        ]
        # As llama-server lists its model: the file it loaded, the name it was given an alias.
        first = {"id": f"/models/{LLAMA_MODELS[0]}.gguf", "aliases": [LLAMA_MODELS[0]]}
        data.insert(0, {**first, "object": "model", "owned_by": "llamacpp"})
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if self.llama and llama_prompt_tokens(body) >= LLAMA_N_CTX:
            counted = llama_prompt_tokens(body)
            message = (
                f"request ({counted} tokens) exceeds the available context size "
                f"({LLAMA_N_CTX} tokens), try increasing it"
            )
            error = {
                "code": 400,
                "message": message,
                "type": "exceed_context_size_error",
                "n_prompt_tokens": counted,
                "n_ctx": LLAMA_N_CTX,
            }
            return JSONResponse({"error": error}, status_code=400)
        messages = [m for m in body["messages"] if m["role"] != "system"]
        prefill = ""
        if self.llama and messages and messages[-1]["role"] == "assistant":
            prefill = _text(messages.pop()["content"])
        outcome, tokens, delay = self.plan(body["model"], messages)
        if prefill:  # continue after the reply's tokens it was given (whoever wrote them)
            tokens = tokens[len(tokens_of(prefill)) :]
        if outcome == "fail":
            return JSONResponse(
                {"error": {"message": "server busy", "type": "server_error"}}, status_code=503
            )
        model = body["model"]
        call = self.tool_call(model, body, messages)
        if call is not None:
            tokens = []

        async def stream() -> AsyncIterator[str]:
            def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
                return openai_chunk(model, delta, finish)

            if call is not None:
                yield chunk({"role": "assistant", "content": None})
                raw = json.dumps(call)
                yield chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": f"call_fake_{len(self.requests)}",
                                "type": "function",
                                "function": {"name": "calculator", "arguments": ""},
                            }
                        ]
                    }
                )
                for piece in (raw[:5], raw[5:14], raw[14:]):
                    yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                yield chunk({}, "tool_calls")
            else:
                yield chunk({"role": "assistant", "content": ""})
                async for token in self.held(model, tokens):
                    if delay:
                        await asyncio.sleep(delay)
                    yield chunk({"content": token})
                yield chunk({}, "stop")
            usage = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": 11,
                    "completion_tokens": len(tokens),
                    "total_tokens": 11 + len(tokens),
                },
            }
            yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(self._guarded(stream()), media_type="text/event-stream")


# Session fixtures: a conftest imports them (`from agents_fake_llm import fake_anthropic, ...`)
# and gets servers of its own.


@pytest.fixture(scope="session")
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


TESTS = str(Path(__file__).resolve().parent)
# A FakeOpenAI in a process of its own, on a given port, so that a test can SIGKILL it like a
# crashed llama.cpp server and start it again on the same port.
_SERVE = """
import sys
import uvicorn
from starlette.applications import Starlette
sys.path.insert(0, sys.argv[2])
from agents_fake_llm import FakeOpenAI
app = Starlette(routes=FakeOpenAI(llama=sys.argv[3] == "llama").routes())
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="off")
"""


async def start_fake_openai(port: int, llama: bool = False) -> asyncio.subprocess.Process:
    """`FakeOpenAI(llama=llama)` serving on `port` in a child process, once it accepts."""
    kind = "llama" if llama else "openai"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVE, str(port), TESTS, kind
    )
    async with asyncio.timeout(30):
        while True:
            assert process.returncode is None, "the fake OpenAI server exited at start"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return process


async def kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL (if still running) and reap."""
    if process.returncode is None:
        process.kill()
    await process.wait()
