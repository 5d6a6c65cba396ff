"""A fake OpenAI-compatible embeddings endpoint (the edge of the world) for the rag tests.

It speaks the real wire format, so the service's real HTTP client is exercised; it can fail with
a status, and hold requests (a process is then arranged to be mid-embedding at a known point).
"""

from __future__ import annotations

import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


def bag_of_words(text: str, dimension: int) -> list[float]:
    vector = np.zeros(dimension)
    for word in text.lower().split():
        word = "".join(ch for ch in word if ch.isalnum())
        if word:
            vector[zlib.crc32(word.encode()) % dimension] += 1.0
    return vector.tolist()


class EmbeddingServer:
    """`POST /v1/embeddings` like OpenAI/Ollama/vLLM answer it; records every request."""

    def __init__(self, dimension: int = 384) -> None:
        self.dimension = dimension
        self.requests: list[dict[str, Any]] = []
        self.fail_with = 0  # an HTTP status to answer with instead
        # After this many answered embedding requests, the next ones wait for `release`.
        self.hold_after: int | None = None
        self.released = threading.Event()
        self.answered = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), **body}
                )
                if self.path != "/v1/embeddings":
                    self._send(404, {"error": {"message": "not found"}})
                elif (
                    outer.hold_after is not None
                    and outer.answered >= outer.hold_after
                    and not outer.released.wait(120)
                ):
                    self._send(503, {"error": {"message": "held"}})
                elif outer.fail_with:
                    self._send(outer.fail_with, {"error": {"message": "model is loading"}})
                else:
                    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    data = [
                        {
                            "object": "embedding",
                            "index": i,
                            "embedding": bag_of_words(t, outer.dimension),
                        }
                        for i, t in enumerate(inputs)
                    ]
                    data.reverse()  # clients must order by index, not by position
                    outer.answered += 1
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": data,
                            "model": body["model"],
                            "usage": {"prompt_tokens": 1, "total_tokens": 1},
                        },
                    )

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def openai_settings(infra: Any, url: str, **overrides: Any) -> Any:
    values = {
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_BASE_URL": url,
        "EMBEDDING_MODEL": "nomic-embed-text",
        "EMBEDDING_BATCH_SIZE": 4,
        "OPENAI_API_KEY": "sk-test-key",
        "EVENTS_PUBLISH_TIMEOUT_SECONDS": 2.0,
    }
    values.update(overrides)
    return infra.settings(**values)
