"""No log line holds a secret: the API token and the LLM providers' keys are redacted wherever
they appear, in our lines and in the libraries' (uvicorn, websockets), in every service.

The first test feeds the shared logging set-up the forms a secret takes on its way to a log; the
second runs the whole mesh with a token and DEBUG logging, uses the token over HTTP, WebSocket
and gRPC, and greps every log the mesh wrote.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import grpc
import httpx
import pytest
import structlog
import websockets
from e2e_mesh import amelia

from amelia.v1 import agents_pb2, agents_pb2_grpc, events_pb2, events_pb2_grpc
from amelia_common.logging import REDACTED, configure_logging, get_logger
from amelia_common.settings import Settings

# A token with characters that every encoding changes, for the logging set-up alone; the mesh
# gets a realistic one (a WebSocket subprotocol can only carry a plain token).
ODD_TOKEN = 'tok/en "odd" +chars&9f8e'
TOKEN = "e2e-Tok_4pL9xQ2vR7sK1mN8"
ANTHROPIC_KEY = "sk-ant-e2e-0123456789abcdef"
OPENAI_KEY = "sk-openai-e2e-fedcba9876543210"
SECRETS = (ODD_TOKEN, TOKEN, ANTHROPIC_KEY, OPENAI_KEY)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


def leaks(text: str) -> list[str]:
    """Lines holding a secret in any form we know it to take."""
    forms = {f for s in SECRETS for f in (s, quote(s), quote(s, safe=""), quote_plus(s))}
    forms |= {json.dumps(f)[1:-1] for f in forms}
    return [line for line in text.splitlines() if any(f in line for f in forms)]


class Headers:
    """Stands in for a library's header object: its repr shows the values."""

    def __init__(self, **values: str) -> None:
        self.values = values

    def __repr__(self) -> str:
        return f"Headers({self.values!r})"


def test_every_line_is_redacted_whatever_logs_it(
    capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    settings = Settings(
        _env_file=None,
        AMELIA_API_TOKEN=ODD_TOKEN,
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        OPENAI_API_KEY=OPENAI_KEY,
        LOG_LEVEL="DEBUG",
        LOG_FORMAT="json",
    )
    configure_logging(settings, "redaction-test")
    log = get_logger("amelia.test")
    log.info("dashboard", url=f"http://127.0.0.1:8000/?token={quote(ODD_TOKEN)}")
    log.debug(
        "call", metadata=[("authorization", f"Bearer {ODD_TOKEN}")], nested={"k": [OPENAI_KEY]}
    )
    log.info("form", body=f"token={quote_plus(ODD_TOKEN)}&key={quote(ANTHROPIC_KEY, safe='')}")
    logging.getLogger("websockets.server").debug("< Authorization: Bearer %s", ODD_TOKEN)
    logging.getLogger("websockets.server").debug("< %r", Headers(protocol=f"bearer.{ODD_TOKEN}"))
    logging.getLogger("uvicorn.error").info("%s", {"x-api-key": ANTHROPIC_KEY})
    try:
        raise ValueError(f"the provider refused key {OPENAI_KEY}")
    except ValueError:
        log.exception("call failed")
        logging.getLogger("grpc").exception("stdlib too")

    written = capsys.readouterr().err
    lines = written.splitlines()
    assert len(lines) == 8, written
    assert not leaks(written), leaks(written)
    assert all(REDACTED in line for line in lines), written
    records = [json.loads(line) for line in lines]  # still one JSON object per line
    assert records[0]["url"] == f"http://127.0.0.1:8000/?token={REDACTED}"
    assert "Traceback" in records[-1]["exception"]


def test_no_log_of_a_running_mesh_holds_a_secret(mesh_env: dict[str, str]) -> None:
    env = mesh_env | {
        "AMELIA_API_TOKEN": TOKEN,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "OPENAI_API_KEY": OPENAI_KEY,
        "LOG_LEVEL": "DEBUG",
    }
    data = Path(env["AMELIA_DATA_DIR"])
    started = amelia(env, "up", "--detach", timeout=300)  # its output goes to amelia-up.log
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        assert not leaks(started.stdout + started.stderr)  # not a terminal: the link has no token
        use_the_token_everywhere(env)
        listed = amelia(env, "agents", "ls")  # the CLI sends the token too
        assert listed.returncode == 0 and "agents/keeper" in listed.stdout, listed.stderr
    finally:
        stopped = amelia(env, "down", timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    logs = [
        *(data / "logs").iterdir(),
        data / "nats" / "nats-server.log",
        data / "postgres" / "log",
    ]
    assert {"amelia-up.log", "gateway.log", "agents.log"} <= {p.name for p in logs}
    gateway = (data / "logs" / "gateway.log").read_text()
    assert '"level": "debug"' in gateway  # DEBUG was on
    for path in logs:
        found = leaks(path.read_text(errors="replace"))
        assert not found, f"{path}: {found[:3]}"


def use_the_token_everywhere(env: dict[str, str]) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    base = f"http://127.0.0.1:{env['PORT']}"
    with httpx.Client(base_url=base, timeout=60) as http:
        assert http.get("/v1/events", headers=bearer).status_code == 200
        assert http.get("/v1/status", headers={"X-API-Key": TOKEN}).status_code == 200
        assert http.get("/", params={"token": TOKEN}).status_code == 200  # the dashboard link
        assert http.get("/v1/agents", headers={"Authorization": "Bearer wrong"}).status_code == 401

    async def websocket() -> None:
        url = f"ws://127.0.0.1:{env['PORT']}/ws"
        for options in (
            {"additional_headers": bearer},
            {"subprotocols": ["amelia.v1", f"bearer.{TOKEN}"]},
        ):
            async with websockets.connect(url, open_timeout=60, **options) as ws:
                subscribe = {"type": "subscribe", "id": "s1", "since": "beginning"}
                await ws.send(json.dumps(subscribe))
                await asyncio.wait_for(ws.recv(), timeout=60)

    asyncio.run(websocket())

    metadata = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(env["AGENTS_ADDRESS"]) as channel:
        agents_pb2_grpc.AgentServiceStub(channel).CreateAgent(
            agents_pb2.CreateAgentRequest(
                agent_id="keeper", agent=agents_pb2.Agent(model="offline:echo")
            ),
            metadata=metadata,
            timeout=60,
        )
    with grpc.insecure_channel(env["EVENTS_ADDRESS"]) as channel:
        events_pb2_grpc.EventServiceStub(channel).ListEvents(
            events_pb2.ListEventsRequest(page_size=5), metadata=metadata, timeout=60
        )
    ran = amelia(env, "run", "keeper", f"please repeat {TOKEN}", timeout=180)
    assert ran.returncode == 0, ran.stdout + ran.stderr
