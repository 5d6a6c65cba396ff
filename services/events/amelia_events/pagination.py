"""ListEvents page tokens: the next position in the log, bound to the filter that made it.

A token is opaque to clients (base64 of `v1:<after-sequence>:<filter fingerprint>`): it resumes
a listing after the last event of the previous page, and is refused when reused with another
filter, because positions only mean something for the filter they were computed with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from amelia_common.eventlog import InvalidEventError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# What `fingerprint` gives: a token holding anything else was not made here (QA s26: a token cut
# short was told it "was issued for a different filter").
_FINGERPRINT = re.compile("[0-9a-f]{16}")


def fingerprint(filters: list[str]) -> str:
    return hashlib.sha256("\n".join(filters).encode()).hexdigest()[:16]


def encode_token(after_sequence: int, filters: list[str]) -> str:
    raw = f"v1:{after_sequence}:{fingerprint(filters)}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, filters: list[str]) -> int:
    """The sequence a page token resumes after; raises InvalidEventError when it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, sequence, print_ = raw.split(":")
        after = int(sequence)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidEventError(
            "page_token is not a token returned by ListEvents (pass next_page_token unchanged)"
        ) from None
    if version != "v1" or after < 0 or not _FINGERPRINT.fullmatch(print_):
        raise InvalidEventError("page_token is not a token returned by ListEvents")
    if print_ != fingerprint(filters):
        raise InvalidEventError(
            "page_token was issued for a different filter; use the same filter for every page"
        )
    return after
