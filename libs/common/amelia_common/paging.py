"""Paging every List RPC follows (AIP-158): the page-size rule (0 means the default, larger values
are capped, a negative one is the caller's mistake) and opaque keyset page tokens, each bound to
the request's other parameters (`request_scope`): a token reused with another order_by or filter
is refused saying so, not taken for a position it does not mean."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime

from google.protobuf.message import Message

from amelia_common.errors import InvalidArgumentError

BAD_TOKEN = (
    "page_token is not one this service returned: pass a previous response's next_page_token"
)
DIFFERENT_REQUEST = (
    "page_token was made for a request with other parameters (another parent, filter or"
    " order_by): repeat the request's other parameters with it"
)
# A List request's fields that may change from page to page; every other one is the scope.
PAGE_FIELDS = ("page_token", "page_size")


def page_size(requested: int, default: int, maximum: int = 1000) -> int:
    """The page size to use; `InvalidArgumentError` with a message for the caller when negative."""
    if requested < 0:
        raise InvalidArgumentError(
            f"page_size must be 0 (the default, {default}) or positive; got {requested}"
        )
    return min(requested or default, maximum)


def request_scope(request: Message) -> str:
    """A short fingerprint of a List request's parameters but its page (`PAGE_FIELDS`): its page
    tokens carry it, so one used with other parameters is told so (AIP-158)."""
    rest = type(request)()
    rest.CopyFrom(request)
    for name in PAGE_FIELDS:
        if name in rest.DESCRIPTOR.fields_by_name:
            rest.ClearField(name)
    if "order_by" in rest.DESCRIPTOR.fields_by_name:  # spaces do not matter in it (AIP-132)
        rest.order_by = " ".join(rest.order_by.split())  # type: ignore[attr-defined]
    fingerprint = hashlib.sha256(rest.SerializeToString(deterministic=True)).hexdigest()[:12]
    # The list's name too: two lists' requests with no parameters serialize alike.
    return f"{list_name(request)}:{fingerprint}"


def list_name(request: Message) -> str:
    """The List RPC a request is for, as a person calls it: ListThreadsRequest → ListThreads."""
    return request.DESCRIPTOR.name.removesuffix("Request")


def encode_keyset(time: datetime, row_id: str, scope: str = "") -> str:
    """An opaque page token holding the keyset `(time, id)` of a page's last row, and the
    `request_scope` of the request it answers."""
    raw = json.dumps([time.isoformat(), row_id, scope] if scope else [time.isoformat(), row_id])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_keyset(token: str, scope: str = "") -> tuple[datetime, str]:
    """The `(time, id)` an `encode_keyset` token holds; `errors.InvalidArgumentError` for anything
    else (a token of another list, edited, truncated or made up), or for a token made for a
    request of another `scope`."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        when, row_id, *made_for = json.loads(raw)
        time = datetime.fromisoformat(when)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidArgumentError(BAD_TOKEN) from exc
    if time.tzinfo is None or not isinstance(row_id, str) or len(made_for) > 1:
        raise InvalidArgumentError(BAD_TOKEN)
    made = (made_for or [""])[0]
    if made != scope:
        made_list, this_list = made.partition(":")[0], scope.partition(":")[0]
        if ":" in made and ":" in scope and made_list != this_list:
            raise InvalidArgumentError(
                f"page_token was made for {made_list}, not {this_list}: pass a previous "
                f"{this_list} response's next_page_token"
            )
        raise InvalidArgumentError(DIFFERENT_REQUEST)
    return time, row_id
