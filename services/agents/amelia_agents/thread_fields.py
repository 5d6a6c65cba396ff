"""CreateThread's chosen id and `if_exists`, and UpdateThread's metadata merge (LangGraph
Server's `POST /threads` and `PATCH /threads/{thread_id}`): the checks and the arithmetic, so
the servicer only reads and writes."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from google.protobuf import struct_pb2

from amelia.v1 import agents_pb2
from amelia_agents import convert
from amelia_common.errors import InvalidArgumentError
from amelia_common.fieldmask import mask_paths
from amelia_common.names import CANONICAL_FORM, BadNameError, uuid_name

# LangGraph Server's `if_exists` values; empty is "raise".
RAISE, DO_NOTHING = "raise", "do_nothing"
IF_EXISTS = (RAISE, DO_NOTHING)
# The fields UpdateThread can change (the others are output only).
UPDATABLE = ("metadata",)
METADATA_LIMIT = convert.JSON_LIMITS["thread.metadata"]


def chosen_id(request: agents_pb2.CreateThreadRequest) -> uuid.UUID | None:
    """The id the client chose (`thread_id`, or `thread.name` as `threads/{uuid}`; both must
    agree), None to generate one. A UUID must be spelt canonically: the thread's name is
    `threads/{str(uuid)}`, and another spelling of one id would be a second name for it."""
    by_id = None
    if request.thread_id:
        try:
            by_id = uuid_name(f"threads/{request.thread_id}", "threads")
        except BadNameError:
            raise InvalidArgumentError(
                f"thread_id {request.thread_id!r} must be a UUID, {CANONICAL_FORM}"
            ) from None
    if not request.thread.name:
        return by_id
    by_name = uuid_name(request.thread.name, "threads", "thread.name")
    if by_id is not None and by_name != by_id:
        raise InvalidArgumentError(
            f"thread.name {request.thread.name!r} and thread_id {request.thread_id!r} name "
            "different threads: set one of them"
        )
    return by_name


def if_exists(value: str) -> str:
    """`if_exists` as given (empty: "raise"); INVALID_ARGUMENT naming the values there are."""
    if value in IF_EXISTS:
        return value
    if not value:
        return RAISE
    raise InvalidArgumentError(f"if_exists {value!r} must be one of: {', '.join(IF_EXISTS)}")


def update_mask(paths: Iterable[str]) -> list[str]:
    """UpdateThread's mask (`fieldmask.mask_paths`): `metadata`, also when empty."""
    return mask_paths(paths, UPDATABLE) or list(UPDATABLE)


def merged(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`old` with `patch`'s keys merged in (LangGraph's PATCH: `metadata || patch`), the keys
    `patch` sets to null removed (JSON Merge Patch, RFC 7396, at the top level);
    INVALID_ARGUMENT when the result is over the metadata's size limit."""
    result = {**old, **patch}
    result = {key: value for key, value in result.items() if value is not None}
    size = struct_pb2.Struct()
    size.update(result)
    convert.check_size(size.ByteSize(), "thread.metadata (merged)", METADATA_LIMIT)
    return result
