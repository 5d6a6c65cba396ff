"""Background indexing: embeddings are computed after the upload has been answered.

An ingest stores the document (`indexing`) with its chunks and returns; this loop, running in
every rag process, claims such documents one lease at a time (so with several replicas one of
them indexes each document), embeds the chunks still without an embedding in batches, saves
each batch (so a process killed half-way loses at most one batch: whoever claims the document
next carries on from there) with its `document.progress` event, and finally marks the document
`ready` in the transaction that writes `document.indexed` into the event outbox (store.py).

A lease lasts `lease_seconds` and is renewed while the work goes on; a process that dies stops
renewing it, and any process (itself, restarted) takes the document over once it has run out.
A document whose indexing was interrupted or failed `max_attempts` times in a row without
progress is marked `failed` with the reason, published as `document.failed`, so nothing stays
`indexing` forever. A saved batch is progress: it resets the count to the claim in hand (like a
heartbeating activity), so a big document interrupted now and then while it advances is carried
on to the end, and one that stops advancing is still given up. Ingesting a `failed` document's
same content again resumes it with the embeddings already saved (ingest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid

from amelia.v1 import events_pb2
from amelia_common.logging import get_logger
from amelia_rag.chunking import context_text
from amelia_rag.embeddings import Embedder
from amelia_rag.models import DocumentRow, change_event, document_event
from amelia_rag.store import DocumentStore, Tell

log = get_logger("amelia.rag.indexer")


LEASE_SECONDS = 30.0
POLL_SECONDS = 2.0
MAX_ATTEMPTS = 3
RETRY_SECONDS = 2.0
# Documents indexed at once by one process: their chunks share encode calls (fuller batches).
WORKERS = 4


class Indexer:
    """Claims `indexing` documents and embeds their chunks; see the module docstring."""

    def __init__(
        self,
        store: DocumentStore,
        embedder: Embedder,
        *,
        batch_size: int,
        lease_seconds: float = LEASE_SECONDS,
        poll_seconds: float = POLL_SECONDS,
        max_attempts: int = MAX_ATTEMPTS,
        workers: int = WORKERS,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.max_attempts = max_attempts
        self.workers = workers
        self.owner = f"{socket.gethostname()}:{uuid.uuid4()}"
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"amelia-rag-indexer-{i}")
            for i in range(self.workers)
        ]

    def wake(self) -> None:
        """A document was stored: look now rather than at the next poll."""
        self._wakeup.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                row = await self.store.claim(self.owner, self.lease_seconds)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - PostgreSQL down: try again later
                failures += 1
                log.warning("cannot claim documents to index", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(min(30.0, self.poll_seconds * 2**failures))
                continue
            if row is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_seconds):
                        await self._wakeup.wait()
                self._wakeup.clear()
                continue
            self._wakeup.set()  # there may be more: let another worker look too
            await self.index(row)

    async def index(self, row: DocumentRow) -> None:
        """Embed what is left of one claimed document, then mark it ready (or failed)."""
        document_id, content_hash = row.id, row.content_hash
        if row.index_attempts > self.max_attempts:
            await self._give_up(
                row,
                f"indexing was interrupted {row.index_attempts - 1} times in a row without "
                f"progress (the rag process stopped or lost its database); ingest the document "
                f"again to resume it",
            )
            return
        heartbeat = asyncio.create_task(self._renew(row))
        started = time.perf_counter()
        attempts = row.index_attempts  # in a row without progress, this claim included
        try:
            total = row.chunk_count
            done = total - await self.store.count_pending(document_id)
            while True:
                pending = await self.store.pending(document_id, self.batch_size)
                if not pending:
                    break
                texts = [
                    context_text(row.title, p.heading_path, p.page, p.content) for p in pending
                ]
                vectors = await self.embedder.embed(texts)
                after = done + len(pending)
                kept = await self.store.save_vectors(
                    document_id,
                    self.owner,
                    content_hash,
                    [p.id for p in pending],
                    vectors,
                    self.lease_seconds,
                    _progress(after, total) if after < total else None,
                )
                if not kept:
                    log.info("document changed while indexing", document=str(document_id))
                    return
                attempts = 1  # save_vectors reset the count: this batch was progress
                done = after

            def indexed(ready: DocumentRow) -> events_pb2.Event:
                duration_ms = round((time.perf_counter() - started) * 1000, 1)
                return change_event(
                    "document.indexed",
                    ready.id,
                    document_event(ready, chunk_count=ready.chunk_count, duration_ms=duration_ms),
                )

            finished = await self.store.finish(document_id, self.owner, content_hash, indexed)
            if finished is not None:
                log.info(
                    "document indexed",
                    document=str(document_id),
                    chunks=finished.chunk_count,
                    seconds=round(time.perf_counter() - started, 3),
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever went wrong is recorded on the document
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("indexing failed", document=str(document_id), error=reason)
            if attempts >= self.max_attempts:
                await self._give_up(row, f"indexing failed: {reason}")
            else:
                with contextlib.suppress(Exception):
                    await self.store.release(
                        document_id, self.owner, content_hash, RETRY_SECONDS * attempts
                    )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _renew(self, row: DocumentRow) -> None:
        """Keep the lease while a long batch is being embedded."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            with contextlib.suppress(Exception):
                await self.store.renew(row.id, self.owner, row.content_hash, self.lease_seconds)

    async def _give_up(self, row: DocumentRow, reason: str) -> None:
        def failed(gone: DocumentRow) -> events_pb2.Event:
            return change_event(
                "document.failed", gone.id, {"title": gone.title, "error": gone.index_error}
            )

        try:
            if await self.store.fail(row.id, self.owner, row.content_hash, reason, failed):
                log.warning("indexing given up", document=str(row.id), error=reason)
        except Exception as exc:  # noqa: BLE001 - the lease runs out and it is tried again
            log.warning("cannot mark the document failed", document=str(row.id), error=str(exc))


def _progress(done: int, total: int) -> Tell:
    """`document.progress` after a batch: `done` of `total` chunks embedded."""

    def tell(row: DocumentRow) -> events_pb2.Event:
        return change_event(
            "document.progress", row.id, {"stage": "embedding", "done": done, "total": total}
        )

    return tell
