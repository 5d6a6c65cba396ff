"""No log line holds a secret: the API token and the LLM providers' keys are redacted wherever
they appear, in our lines and in the libraries' (uvicorn, websockets), in every service.

Here the shared logging set-up is fed the forms a secret takes on its way to a log; the whole
mesh, with a token and DEBUG logging, is searched in `test_supervision.py`.
"""

from __future__ import annotations

import json
import logging
import logging.config
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy
import structlog
import uvicorn.config
from e2e_helpers import leaks

from amelia_common.logging import REDACTED, configure_logging, get_logger
from amelia_common.settings import Settings

# Characters that every encoding changes: each form the token takes must go.
ODD_TOKEN = 'tok/en "odd" +chars&9f8e'
ANTHROPIC_KEY = "sk-ant-unit-0123456789abcdef"
OPENAI_KEY = "sk-openai-unit-fedcba9876543210"
SECRETS = (ODD_TOKEN, ANTHROPIC_KEY, OPENAI_KEY)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


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
    assert not leaks(written, SECRETS), leaks(written, SECRETS)
    assert all(REDACTED in line for line in lines), written
    records = [json.loads(line) for line in lines]  # still one JSON object per line
    assert records[0]["url"] == f"http://127.0.0.1:8000/?token={REDACTED}"
    assert "Traceback" in records[-1]["exception"]


def test_a_wrong_or_old_token_is_redacted_where_credentials_travel(
    capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    """A client sending a token the mesh does not know (a typo, last month's): whatever stands
    in a credential's place is redacted, in our lines and in the libraries'; the rest stays."""
    old = "old-Tok_9f8e7d6c5b4a"
    settings = Settings(
        _env_file=None, AMELIA_API_TOKEN="the-current-token", LOG_LEVEL="DEBUG", LOG_FORMAT="json"
    )
    configure_logging(settings, "redaction-test")
    websockets_log = logging.getLogger("websockets.server")
    websockets_log.debug("< Authorization: Bearer %s", old)
    websockets_log.debug("< Sec-WebSocket-Protocol: amelia.v1, bearer.%s", old)
    websockets_log.debug("< %r", Headers(authorization=f"Basic {old}"))
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /?token=%s&x=1 HTTP/1.1" 401', old)
    logging.getLogger("uvicorn.error").debug("%r", [(b"x-api-key", old.encode())])
    get_logger("amelia.test").info(
        "call", metadata=[("authorization", f"Bearer {old}")], url=f"/v1/runs?access_token={old}"
    )
    logging.getLogger("amelia.test").info("page_token=abc max_tokens=5 tokens: 12")

    written = capsys.readouterr().err
    lines = written.splitlines()
    assert len(lines) == 7, written
    assert old not in written and old[:8] not in written, written
    assert all(REDACTED in line for line in lines[:-1]), written
    records = [json.loads(line) for line in lines]
    assert records[0]["event"] == f"< Authorization: Bearer {REDACTED}"
    assert records[1]["event"] == f"< Sec-WebSocket-Protocol: amelia.v1, bearer.{REDACTED}"
    assert f"?token={REDACTED}&x=1 HTTP/1.1" in records[3]["event"]
    assert records[5]["url"] == f"/v1/runs?access_token={REDACTED}"
    assert records[6]["event"] == "page_token=abc max_tokens=5 tokens: 12"  # not credentials


def test_a_library_that_set_up_its_own_logging_first_is_redacted_too(
    capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    """uvicorn run with its default log config (as the tests' fake LLM servers do) gives its
    loggers their own handler, no propagation and a level: configured after it, every line
    still goes through the one redacting handler, at LOG_LEVEL."""
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    settings = Settings(
        _env_file=None, AMELIA_API_TOKEN=ODD_TOKEN, LOG_LEVEL="DEBUG", LOG_FORMAT="json"
    )
    configure_logging(settings, "redaction-test")
    logging.getLogger("uvicorn.error").info("%s", {"x-api-key": ODD_TOKEN})
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /?token=%s HTTP/1.1" 200', "x")

    written = capsys.readouterr().err
    records = [json.loads(line) for line in written.splitlines()]
    assert [r["logger"] for r in records] == ["uvicorn.error", "uvicorn.access"], written
    assert not leaks(written, [ODD_TOKEN]) and all(REDACTED in r["event"] for r in records)


def test_sql_statements_are_not_logged_at_info(
    capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    """SQLAlchemy quietens itself at import; the set-up that routes every library's lines to the
    root must not undo it, or an idle mesh writes each pool's BEGIN/SELECT/ROLLBACK at INFO."""
    engine = sqlalchemy.create_engine("sqlite://")
    configure_logging(Settings(_env_file=None, LOG_LEVEL="INFO"), "sql-log-test")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT 41 + 1"))
    engine.dispose()
    assert "SELECT 41 + 1" not in capsys.readouterr().err
