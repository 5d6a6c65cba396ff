"""Typed errors every service raises, and the one place they become gRPC status codes.

Servicers raise these (or let a dependency's own exception escape); the shared interceptor in
`grpc_server` turns them into a status with a message a person understands. A dependency that
cannot be reached (PostgreSQL, NATS, the embedding model, another service) is UNAVAILABLE naming
it, never INTERNAL and never blamed on the wrong one.
"""

from __future__ import annotations

import errno
import math
import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from google.protobuf import struct_pb2


class AmeliaError(Exception):
    """An error with a gRPC status code and a message meant for the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(AmeliaError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(AmeliaError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(AmeliaError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(AmeliaError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDeniedError(AmeliaError):
    code = grpc.StatusCode.PERMISSION_DENIED


class OutOfRangeError(AmeliaError):
    """A position past the end of what exists (a resume point beyond the event log's end)."""

    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhaustedError(AmeliaError):
    """A limit of the mesh is reached (too many of something open at once): trying again at
    once meets the same limit; the message says what to release."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(AmeliaError):
    """`dependency` (e.g. "PostgreSQL", "NATS") cannot be reached; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE

    # More of the answer's ErrorInfo metadata beside `dependency` (a publish says which events
    # are stored, which may be and their ids: events' PublishEvents).
    metadata: dict[str, str] = {}

    def __init__(self, dependency: str, detail: str = "") -> None:
        message = f"{dependency} is unavailable" + (f": {detail}" if detail else "")
        super().__init__(f"{message}; try again shortly")
        self.dependency = dependency
        self.detail = detail


class StreamEndedError(AmeliaError):
    """UNAVAILABLE for an open stream ended by the service's side (it shuts down, its upstream
    went away): the message says after which event to resume, here or on another replica."""

    code = grpc.StatusCode.UNAVAILABLE


def struct_value(value: struct_pb2.Value) -> Any:
    """A Struct value as plain Python, without json_format (which raises on NaN and Infinity)."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {k: struct_value(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [struct_value(v) for v in value.list_value.values]
    if kind in (None, "null_value"):
        return None
    return getattr(value, kind)


def check_struct(struct: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """A request's Struct as plain Python; InvalidArgumentError (via `check_json`) if it holds NaN,
    Infinity or NUL. Use it wherever a Struct comes in, instead of json_format.MessageToDict."""
    problem = struct_problem(struct, field)
    if problem is not None:
        raise InvalidArgumentError(problem)
    return {k: struct_value(v) for k, v in struct.fields.items()}


def struct_problem(struct: struct_pb2.Struct, field: str) -> str | None:
    """Why `struct` cannot be JSON everywhere (NaN or Infinity, a NUL in a key or a string), or
    None: `check_json`'s rule, checked in one walk of the message (no Python copy of it)."""
    pending: list[struct_pb2.Struct | struct_pb2.ListValue] = [struct]
    while pending:
        container = pending.pop()
        items: Iterable[tuple[str, struct_pb2.Value]] = (
            container.fields.items()
            if isinstance(container, struct_pb2.Struct)
            else (("", value) for value in container.values)
        )
        for key, value in items:
            if "\x00" in key:
                return f"{field} must not contain NUL characters"
            kind = value.WhichOneof("kind")
            if kind == "string_value":
                if "\x00" in value.string_value:
                    return f"{field} must not contain NUL characters"
            elif kind == "number_value":
                if not math.isfinite(value.number_value):
                    return f"{field} must not contain NaN or Infinity"
            elif kind == "struct_value":
                pending.append(value.struct_value)
            elif kind == "list_value":
                pending.append(value.list_value)
    return None


def check_json(value: Any, field: str) -> None:
    """Raise InvalidArgumentError unless `value` can be stored and read back as JSON everywhere.

    JSON has no NaN or Infinity (readers in other languages reject them) and PostgreSQL text
    cannot hold NUL characters, so both are refused where data comes in.
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{field} must not contain NaN or Infinity")
    elif isinstance(value, str):
        if "\x00" in value:
            raise InvalidArgumentError(f"{field} must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json(key, field)
            check_json(item, field)
    elif isinstance(value, list | tuple):
        for item in value:
            check_json(item, field)


# ------------------------------------------------------------------------ echoed input, shortened
#
# Error messages quote what the caller sent ("run name 'runs/aaaa…' must be 'runs/<uuid>'"); a
# value of 8,000 characters made an 8 KB error that repeats it whole. Every error message goes
# through `shorten_echoes` on its way out: the services' gRPC statuses (grpc_server's error
# boundary) and every error body of the gateway (HTTP, NDJSON, WebSocket).

# A quoted value, or a run of text without spaces, longer than this is shortened...
ECHO_LIMIT = 160
# ... to its first this many characters, then "… (8000 characters)".
ECHO_KEPT = 64
_LONG_ECHO = re.compile(
    rf"'([^'\n]{{{ECHO_LIMIT + 1},}})'|\"([^\"\n]{{{ECHO_LIMIT + 1},}})\"|(\S{{{ECHO_LIMIT + 1},}})"
)


def _shortened(match: re.Match[str]) -> str:
    quoted, double, bare = match.groups()
    value = quoted or double or bare
    quote = "'" if quoted else '"' if double else ""
    return f"{quote}{value[:ECHO_KEPT]}…{quote} ({len(value)} characters)"


def quoted(value: str) -> str:
    """`value` as an error message quotes it, bounded before the message is built: whole
    (`repr`) up to ECHO_LIMIT characters, else its first ECHO_KEPT and its length, as
    `shorten_echoes` writes one (`'aaaa…' (8005 characters)`). For a value `shorten_echoes`
    cannot be relied on to find (a repr holding both quote characters and spaces)."""
    if len(value) <= ECHO_LIMIT:
        return repr(value)
    start = repr(value[:ECHO_KEPT])
    return f"{start[:-1]}…{start[-1]} ({len(value)} characters)"


def shorten_echoes(message: str) -> str:
    """`message` with every long value in it (a quoted one, or any text without spaces longer
    than ECHO_LIMIT characters) cut to its first ECHO_KEPT characters and its length:
    `run name 'runs/aaaaaaaa…' (8005 characters) must be 'runs/<uuid>'`."""
    if len(message) <= ECHO_LIMIT:
        return message
    return _LONG_ECHO.sub(_shortened, message)


def check_text(value: str, field: str, limit: int) -> None:
    """Raise InvalidArgumentError naming `field` and `limit` when `value` is longer than `limit`
    characters, or not storable text (NUL): every bounded text field of a request goes through
    here, before anything is stored (`agent.description is 600 characters; at most 512 are
    accepted`)."""
    if len(value) > limit:
        raise InvalidArgumentError(
            f"{field} is {len(value)} characters; at most {limit} are accepted"
        )
    check_json(value, field)


# A client's request id / idempotency key: the gateway's X-Request-Id header and the request_id
# of CreateRun, ForkRun and RerunRun are held to the same length (it is stored, and looked up).
MAX_REQUEST_ID_LENGTH = 128


def check_request_id(value: str, field: str = "request_id") -> None:
    """Raise InvalidArgumentError naming `field` and the limit when `value` is longer than
    MAX_REQUEST_ID_LENGTH characters, or not storable text (NUL)."""
    if len(value) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgumentError(
            f"{field} must be at most {MAX_REQUEST_ID_LENGTH} characters (got {len(value)})"
        )
    check_json(value, field)


# --------------------------------------------------------------------------- dependency failures
#
# Exceptions of the libraries we talk to our dependencies with, recognised by module name so that
# a process without SQLAlchemy or nats-py installed (the gateway) never imports them.

POSTGRES = "PostgreSQL"
NATS = "NATS"

_LIBRARY_DEPENDENCY = {
    "sqlalchemy": POSTGRES,
    "asyncpg": POSTGRES,
    "psycopg": POSTGRES,
    "psycopg_pool": POSTGRES,
    "nats": NATS,
}

# errno values that mean "the other side is not there (now)".
_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.ETIMEDOUT,
}


def _library(module: str) -> str:
    return module.partition(".")[0]


def _exception_class(module: str, name: str) -> type[BaseException] | None:
    """`module.name` if that module is already imported (never imports anything)."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _is(exc: BaseException, module: str, *names: str) -> bool:
    classes = [_exception_class(module, n) for n in names]
    return isinstance(exc, tuple(c for c in classes if c is not None))


def _postgres_outage(exc: BaseException) -> bool:
    library = _library(type(exc).__module__)
    if library == "sqlalchemy":
        if _is(exc, "sqlalchemy.exc", "OperationalError", "InterfaceError", "TimeoutError"):
            return True
        return _is(exc, "sqlalchemy.exc", "DBAPIError") and bool(
            getattr(exc, "connection_invalidated", False)
        )
    if library == "asyncpg":
        # A call on a connection that died under it (PostgreSQL stopping mid-transaction) is
        # asyncpg's InterfaceError "… connection is closed"; its other InterfaceErrors are
        # misuse (a bug), not an outage.
        closed = _is(exc, "asyncpg.exceptions", "InterfaceError") and (
            "connection is closed" in str(exc)
        )
        return closed or _is(
            exc,
            "asyncpg.exceptions",
            "PostgresConnectionError",
            "OperatorInterventionError",
            "TooManyConnectionsError",
            "ConnectionDoesNotExistError",
        )
    if library in ("psycopg", "psycopg_pool"):
        return _is(exc, "psycopg", "OperationalError") or _is(exc, "psycopg_pool", "PoolTimeout")
    return False


def _nats_outage(exc: BaseException) -> bool:
    if _library(type(exc).__module__) != "nats":
        return False
    return _is(
        exc,
        "nats.errors",
        "TimeoutError",
        "ConnectionClosedError",
        "NoServersError",
        "NoRespondersError",
        "ConnectionReconnectingError",
        "ConnectionDrainingError",
        "StaleConnectionError",
        "OutboundBufferLimitError",
        "FlushTimeoutError",
        "UnexpectedEOF",
    ) or _is(exc, "nats.js.errors", "ServiceUnavailableError", "NoStreamResponseError")


def _raised_in(exc: BaseException) -> str | None:
    """The dependency whose client library raised `exc` (innermost frame first), if any."""
    frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    for frame in reversed(frames):
        dependency = _LIBRARY_DEPENDENCY.get(_library(frame.f_globals.get("__name__", "")))
        if dependency is not None:
            return dependency
    return None


def _network_error(exc: BaseException) -> bool:
    """A refused, reset or unreachable connection (a bare timeout of our own code is not)."""
    return isinstance(exc, ConnectionError) or (
        isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it (explicitly or while handling), depth first, each once."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (current.__context__, current.__cause__):
            if linked is not None:
                pending.append(linked)


def _root(exc: BaseException) -> BaseException:
    """The first exception of `exc`'s chain: the one that started it all."""
    seen = {id(exc)}
    while (linked := exc.__cause__ or exc.__context__) is not None and id(linked) not in seen:
        seen.add(id(linked))
        exc = linked
    return exc


def _dependency(exc: BaseException) -> str | None:
    if _postgres_outage(exc):
        return POSTGRES
    if _nats_outage(exc):
        return NATS
    if isinstance(exc, OSError):
        # A socket error: name the library whose frames raised it, when it is one of ours.
        dependency = _raised_in(exc)
        if dependency is not None:
            return dependency
        if _network_error(exc):
            return "a network dependency"
    return None


def _summary(exc: BaseException) -> str:
    """One short line about an exception: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    first = text[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _connect_address(exc: BaseException) -> str:
    """Where a failed connection was going, when a driver's frames say it: asyncpg's `addr`
    (a socket path, or a (host, port) pair) in the innermost frame that has one; "" if none."""
    frames = [frame for frame, _ in traceback.walk_tb(exc.__traceback__)]
    for frame in reversed(frames):
        if _library(frame.f_globals.get("__name__", "")) not in _LIBRARY_DEPENDENCY:
            continue
        address = frame.f_locals.get("addr")
        if isinstance(address, str) and address:
            return address
        if isinstance(address, tuple) and len(address) >= 2:
            return f"{address[0]}:{address[1]}"
    return ""


def _detail(exc: BaseException) -> str:
    """What went wrong, briefly: a connection that could not be made, as a sentence naming where
    it went ("cannot connect to /run/pg/.s.PGSQL.5432 (No such file or directory: is it
    running?)", not a bare `FileNotFoundError: [Errno 2] …` while PostgreSQL restarts); else the
    driver's own error (SQLAlchemy keeps it as `orig`, with the SQL left out), else the
    exception, else the first one of its chain that says more."""
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS | {errno.ENOENT}:
        address = _connect_address(exc)
        if address:
            reason = os.strerror(exc.errno) if exc.errno else _summary(exc)
            return f"cannot connect to {address} ({reason}: is it running?)"
    if isinstance(exc, TimeoutError) and not str(exc).strip():
        # A driver's own timeout says nothing (asyncpg's connect to a frozen server).
        return "no answer in time (TimeoutError)"
    pool_wait = _pool_wait(exc)
    if pool_wait is not None:
        return pool_wait
    origin = getattr(exc, "orig", None)
    for candidate in (origin, exc, _root(exc)):
        if isinstance(candidate, BaseException) and str(candidate).strip():
            return _summary(candidate)
    return type(exc).__name__


# A pool's own words for a checkout that found no connection free in time: SQLAlchemy's
# "QueuePool limit of size 2 overflow 2 reached, connection timed out, timeout 2.00 (Background
# on this error at: https://sqlalche.me/e/21/3o7r)", psycopg_pool's "couldn't get a connection
# after 2.00 sec".
_SQLALCHEMY_POOL_WAIT = re.compile(r"limit of size (\d+) overflow (\d+) reached.*timeout ([\d.]+)")
_PSYCOPG_POOL_WAIT = re.compile(r"couldn't get a connection after ([\d.]+) sec")


def _pool_wait(exc: BaseException) -> str | None:
    """A pool's timeout said as what happened: every connection of the pool was in use (waiting
    on PostgreSQL, as a rule: a frozen or overloaded server) for the whole
    DATABASE_POOL_TIMEOUT_SECONDS. None for any other exception."""
    text = str(exc)
    if _is(exc, "sqlalchemy.exc", "TimeoutError"):
        found = _SQLALCHEMY_POOL_WAIT.search(text)
        if found:
            size, overflow, seconds = found.groups()
            return (
                f"no pooled connection came free in {float(seconds):g} s (all "
                f"{int(size) + int(overflow)} in use; DATABASE_POOL_TIMEOUT_SECONDS)"
            )
    if _is(exc, "psycopg_pool", "PoolTimeout"):
        found = _PSYCOPG_POOL_WAIT.search(text)
        if found:
            return (
                f"no pooled connection came free in {float(found.group(1)):g} s "
                "(DATABASE_POOL_TIMEOUT_SECONDS)"
            )
    return None


def dependency_unavailable(exc: BaseException) -> UnavailableError | None:
    """`UnavailableError` naming the dependency `exc` (or what caused it) shows to be unreachable.

    None when nothing in the exception's chain is a dependency outage: that is a bug, reported
    as INTERNAL by the caller.
    """
    for link in _chain(exc):
        if isinstance(link, UnavailableError):
            return link
        dependency = _dependency(link)
        if dependency is not None:
            return UnavailableError(dependency, _detail(link))
    return None


def as_amelia_error(exc: BaseException) -> AmeliaError | None:
    """The typed error `exc` stands for: itself, or a dependency outage; None for a bug."""
    if isinstance(exc, AmeliaError):
        return exc
    return dependency_unavailable(exc)
