"""No log line holds a secret: the API token and the LLM providers' keys are redacted wherever
they appear, in our lines and in the libraries' (uvicorn, websockets), in every service.

Here the shared logging set-up is fed the forms a secret takes on its way to a log; the whole
mesh, with a token and DEBUG logging, is searched in `test_supervision.py`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest
import structlog
from e2e_mesh import leaks

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
