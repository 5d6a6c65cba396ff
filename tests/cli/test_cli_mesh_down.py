"""With the mesh down, every command says in one line which service it could not reach, at
which address, and what to do (QA L9: it printed gRPC's own "UNAVAILABLE: connections to all
backends failing; last error: UNKNOWN: ipv4:…"), and exits 1. The real `amelia` process, its
services pointed at ports where nothing listens, no `amelia up` for its data folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from amelia_cli.client import unreached
from amelia_common.embedded import free_port

# What gRPC says and a person need not read.
GRPC_WORDS = ("backends", "last error", "UNKNOWN", "ipv4:", "Failed to connect")


def amelia(tmp_path: Path, columns: int | None, *args: str) -> tuple[int, str, str, dict[str, str]]:
    """`amelia ARGS` with the agents and rag services where nothing listens: exit code,
    stdout, stderr, and those services' addresses. `columns` None: no width set, as a
    script that pipes the output runs it."""
    addresses = {service: f"127.0.0.1:{free_port()}" for service in ("agents", "rag", "gateway")}
    env = {
        **os.environ,
        "AGENTS_ADDRESS": addresses["agents"],
        "RAG_ADDRESS": addresses["rag"],
        "AMELIA_GATEWAY_URL": f"http://{addresses['gateway']}",
        "AMELIA_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": str(columns),
    }
    if columns is None:
        del env["COLUMNS"]
    done = subprocess.run(
        [sys.executable, "-m", "amelia_cli", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, done.stdout, done.stderr, addresses


@pytest.mark.parametrize(
    ("args", "service"),
    [
        (("runs", "ls"), "agents"),
        (("runs", "wait", "runs/00000000-0000-4000-8000-000000000000"), "agents"),
        (("threads", "ls"), "agents"),
        (("docs", "ls"), "rag"),
        (("search", "what is a run"), "rag"),
    ],
    ids=["runs-ls", "runs-wait", "threads-ls", "docs-ls", "search"],
)
def test_a_command_with_the_mesh_down_names_the_service_and_what_to_do(
    args: tuple[str, ...], service: str, tmp_path: Path
) -> None:
    code, out, errors, addresses = amelia(tmp_path, 200, *args)
    assert code == 1, (out, errors)
    assert out == ""
    assert errors == (
        f"UNAVAILABLE: the {service} service at {addresses[service]} is not answering "
        "(Connection refused) — is the mesh running? `amelia status` checks it, `amelia up` starts it\n"
    )


def test_a_command_through_the_gateway_says_it_the_same_way(tmp_path: Path) -> None:
    """`amelia events` speaks to the gateway (HTTP and its socket), not to a gRPC service."""
    code, out, errors, addresses = amelia(tmp_path, 200, "events")
    assert code == 1, (out, errors)
    assert errors == (
        f"UNAVAILABLE: the gateway at http://{addresses['gateway']} is not answering "
        "(All connection attempts failed) — is the mesh running? `amelia status` checks it, `amelia up` starts it\n"
    )


def test_at_80_columns_the_line_folds_between_words(tmp_path: Path) -> None:
    code, _, errors, addresses = amelia(tmp_path, 80, "runs", "ls")
    assert code == 1
    rows = errors.splitlines()
    assert all(len(row.rstrip()) <= 80 for row in rows), rows
    assert " ".join(row.strip() for row in rows) == (
        f"UNAVAILABLE: the agents service at {addresses['agents']} is not answering "
        "(Connection refused) — is the mesh running? `amelia status` checks it, `amelia up` starts it"
    )
    # The address and the command to type are each whole on one row; no gRPC jargon.
    assert any(addresses["agents"] in row for row in rows), rows
    assert any("`amelia up`" in row for row in rows), rows
    assert any("`amelia status`" in row for row in rows), rows
    assert not any(word in errors for word in GRPC_WORDS), errors


def test_piped_with_no_width_the_message_stays_one_line(tmp_path: Path) -> None:
    """A script reading stderr gets the whole message on one line (QA s19: Rich cut it at 80
    columns whenever stderr was not a terminal)."""
    code, _, errors, addresses = amelia(tmp_path, None, "runs", "ls")
    assert code == 1
    assert errors == (
        f"UNAVAILABLE: the agents service at {addresses['agents']} is not answering "
        "(Connection refused) — is the mesh running? `amelia status` checks it, `amelia up` starts it\n"
    )
    assert len(errors) > 80


def test_a_name_that_does_not_resolve_is_said_without_grpcs_brackets() -> None:
    resolver = (
        "errors resolving nosuchhost.invalid:50052: [field:hostname lookup error:address lookup "
        "failed for nosuchhost.invalid:50052: Domain name not found]"
    )
    failed = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), resolver
    )
    said = unreached(failed, "agents", "nosuchhost.invalid:50052")
    assert said.details() == (
        "the agents service at nosuchhost.invalid:50052 is not answering (Domain name not found)"
        " — is the mesh running? `amelia status` checks it, `amelia up` starts it"
    )


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "Delayed close due to in-progress write (ping timeout) (goaway sent)",
        ),
        (
            grpc.StatusCode.INTERNAL,
            "Delayed close due to in-progress write (ping timeout) (goaway sent)",
        ),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed"),
    ],
    ids=["unavailable-ping-timeout", "internal-ping-timeout", "socket-closed"],
)
async def test_a_broken_connection_is_said_in_words_naming_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: grpc.StatusCode, details: str
) -> None:
    """QA s26: gRPC's "Delayed close due to in-progress write (ping timeout) (goaway sent)"
    was printed as it came; it is said as what happened, naming the service."""
    from amelia_cli.client import channel_to
    from amelia_common.settings import get_settings

    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("AGENTS_ADDRESS", address)
    monkeypatch.setenv("AMELIA_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async with channel_to("agents"):
                raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    finally:
        get_settings.cache_clear()
    said = caught.value.details() or ""
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert said.startswith(f"the agents service at {address} is not answering ("), said
    for word in ("Delayed close", "goaway", "ping timeout", "in-progress", "Socket closed"):
        assert word not in said, said
    assert "connection" in said, said
