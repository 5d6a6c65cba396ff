"""Typed errors every service raises, and the one place they become gRPC status codes.

Servicers raise these (or let a dependency's own exception escape); the shared interceptor in
`grpc_server` turns them into a status with a message a person understands. A dependency that
cannot be reached (PostgreSQL, NATS, the embedding model, another service) is UNAVAILABLE naming
it, never INTERNAL and never blamed on the wrong one.
"""

from __future__ import annotations

import math
from typing import Any

import grpc


class AmeliaError(Exception):
    """An error with a gRPC status code and a message meant for the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AmeliaError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AmeliaError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AmeliaError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(AmeliaError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(AmeliaError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(AmeliaError):
    """`dependency` (e.g. "PostgreSQL", "NATS") cannot be reached; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, dependency: str, detail: str = "") -> None:
        message = f"{dependency} is unavailable" + (f": {detail}" if detail else "")
        super().__init__(f"{message}; try again shortly")
        self.dependency = dependency


def check_json(value: Any, field: str) -> None:
    """Raise InvalidArgument unless `value` can be stored and read back as JSON everywhere.

    JSON has no NaN or Infinity (readers in other languages reject them) and PostgreSQL text
    cannot hold NUL characters, so both are refused where data comes in.
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{field} must not contain NaN or Infinity")
    elif isinstance(value, str):
        if "\x00" in value:
            raise InvalidArgument(f"{field} must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json(key, field)
            check_json(item, field)
    elif isinstance(value, list | tuple):
        for item in value:
            check_json(item, field)
