"""Building the rag service: embedder, PostgreSQL (migrated), NATS, the servicer, health."""

from __future__ import annotations

from pathlib import Path

from amelia.v1 import rag_pb2, rag_pb2_grpc
from amelia_common.db import (
    create_engine,
    db_health,
    run_migrations,
    session_factory,
    wait_for_database,
)
from amelia_common.eventlog import EventLog
from amelia_common.eventlog.outbox import Outbox
from amelia_common.grpc_server import GrpcService
from amelia_common.logging import get_logger
from amelia_common.nats_client import connect_nats, nats_health
from amelia_common.settings import Settings
from amelia_rag.embeddings import Embedder, EmbeddingConfigError, check_dimension, create_embedder
from amelia_rag.indexer import Indexer
from amelia_rag.ingest import Ingestor
from amelia_rag.search import MERGE_CHUNKS, Searcher
from amelia_rag.servicer import RagServicer
from amelia_rag.store import DocumentStore

log = get_logger("amelia.rag")

SERVICE_NAME = rag_pb2.DESCRIPTOR.services_by_name["RagService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_rag"
EVENT_SOURCE = "amelia.rag"  # like amelia.events and amelia.agents
OUTBOX_TABLE = "rag_event_outbox"  # migration rag_0003


class StartupError(RuntimeError):
    """The service cannot start as configured; the message says what to change."""


async def build_service(settings: Settings, *, embedder: Embedder | None = None) -> GrpcService:
    """The rag service, ready to `start()`.

    `embedder` lets a caller (tests, the bench) share one loaded model; the service then does
    not close it. Without it, the provider named by EMBEDDING_PROVIDER is created here.
    """
    owned = embedder is None
    try:
        if embedder is None:
            embedder = await create_embedder(settings)
        else:
            check_dimension(embedder, settings)
    except EmbeddingConfigError as exc:
        raise StartupError(str(exc)) from exc
    shutdown = []
    if owned:
        shutdown.append(embedder.aclose)
    try:
        engine = create_engine(settings)
        shutdown.append(engine.dispose)
        await wait_for_database(engine)
        await run_migrations(
            engine,
            MIGRATIONS,
            VERSION_TABLE,
            {"embedding_dimension": settings.EMBEDDING_DIMENSION},
        )
        store = DocumentStore(engine, session_factory(engine))
        stored = await store.vector_dimension()
        if stored != settings.EMBEDDING_DIMENSION:
            raise StartupError(
                f"the chunks table holds {stored}-dimension vectors but EMBEDDING_DIMENSION is "
                f"{settings.EMBEDDING_DIMENSION}: go back to a {stored}-dimension model, or "
                f"drop the rag tables (documents, chunks, alembic_version_rag) and re-ingest"
            )
        sent_back = await store.reembed_other_models(
            embedder.signature, f":{settings.EMBEDDING_MODEL}:{embedder.dimension}"
        )
        if sent_back:
            log.warning(
                "documents embedded by another model are embedded again",
                documents=sent_back,
                model=embedder.signature,
            )
        nc = await connect_nats(settings, "amelia-rag")
        shutdown.append(nc.close)
        events = EventLog(nc, settings, source=EVENT_SOURCE)
        await events.ensure_stream()
        store.outbox = Outbox(store.sessions, events, OUTBOX_TABLE)
    except BaseException:
        for hook in reversed(shutdown):
            await hook()
        raise

    ingestor = Ingestor(settings, store, embedder)
    indexer = Indexer(store, embedder, batch_size=settings.EMBEDDING_BATCH_SIZE * 4)
    ingestor.stored = indexer.wake
    indexer.start()
    store.outbox.start()  # events a failed publish or a dead process left in the outbox
    # Stop indexing and the outbox before the embedder, the database and NATS go (hooks run
    # in reverse).
    shutdown.append(store.outbox.stop)
    shutdown.append(indexer.stop)
    # Overlapping passages of one section merge up to two passages' length.
    searcher = Searcher(store.sessions, embedder, merge_chars=MERGE_CHUNKS * settings.CHUNK_SIZE)
    servicer = RagServicer(settings, store, ingestor, searcher)
    service = GrpcService(
        name="rag",
        settings=settings,
        port=settings.RAG_GRPC_PORT,
        service_names=[SERVICE_NAME],
        register=lambda server: rag_pb2_grpc.add_RagServiceServicer_to_server(servicer, server),
        dependencies={"postgres": db_health(engine), "nats": nats_health(nc)},
        on_shutdown=list(shutdown),
    )
    return service
