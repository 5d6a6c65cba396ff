"""Embedded PostgreSQL and NATS: real servers, data that survives a restart, clear port errors."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import nats
import pytest

from amelia_common.db import libpq_url
from amelia_common.embedded import (
    EmbeddedNats,
    EmbeddedStartError,
    ensure_infrastructure,
    free_port,
)
from amelia_common.settings import Settings


async def test_postgres_has_pgvector_and_nats_has_jetstream(settings: Settings) -> None:
    conn = await asyncpg.connect(libpq_url(settings.DATABASE_URL))
    try:
        distance = await conn.fetchval("SELECT '[1,0]'::vector <=> '[0,1]'::vector")
    finally:
        await conn.close()
    assert distance == pytest.approx(1.0)
    nc = await nats.connect(settings.NATS_URL)
    try:
        info = await nc.jetstream().account_info()
    finally:
        await nc.close()
    assert info.limits is not None


async def test_jetstream_data_survives_a_nats_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, free_port())
    url = server.start()
    try:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        await js.publish("keep.a", b"hello")
        await nc.close()
        server.stop()
        server.start()
        nc = await nats.connect(url)
        msg = await nc.jetstream().get_msg("KEEP", 1)
        await nc.close()
        assert msg.data == b"hello"
    finally:
        server.stop()


def test_a_taken_nats_port_is_reported_not_retried(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(EmbeddedStartError, match=f"port {port} is in use.*NATS_URL"):
            EmbeddedNats(tmp_path, port).start(timeout=5)


def test_external_urls_start_nothing(settings: Settings) -> None:
    infra = ensure_infrastructure(settings)
    assert infra.postgres is None and infra.nats is None
    assert infra.settings.DATABASE_URL == settings.DATABASE_URL
