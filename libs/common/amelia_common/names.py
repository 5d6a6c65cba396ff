"""Resource names whose id is a UUID (`threads/…`, `runs/…`, `crons/…`, `documents/…`).

A resource has one name (AIP-122). `uuid.UUID()` reads one id in many spellings (upper case,
no hyphens, `{…}`, `urn:uuid:…`), so a service that parsed names with it alone answered, and
deleted, one thread under several names. Every service and the gateway parse these names here:
the collection, a slash and the UUID as the mesh writes it (`str(uuid)`), nothing else.
"""

from __future__ import annotations

import re
import uuid

from amelia_common.errors import InvalidArgumentError

# `str(uuid.UUID(...))`: 8-4-4-4-12 lowercase hex digits.
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CANONICAL_FORM = "the uuid in its canonical form (8-4-4-4-12 lowercase hex digits)"


class BadNameError(InvalidArgumentError):
    """A resource name not of the form its collection takes (INVALID_ARGUMENT)."""


def uuid_name(name: str, collection: str, field: str = "") -> uuid.UUID:
    """The id of `name`, which must be `{collection}/{uuid}` spelt as the mesh writes it;
    otherwise `BadNameError` quoting it and showing the shape (`field`, when given, first:
    `parent: document name 'documents/X' must be ...`)."""
    prefix = f"{collection}/"
    value = name[len(prefix) :] if name.startswith(prefix) else ""
    if _CANONICAL.fullmatch(value):
        return uuid.UUID(value)
    where = f"{field}: " if field else ""
    raise BadNameError(
        f"{where}{collection.removesuffix('s')} name {name!r} must be '{collection}/<uuid>' "
        f"with {CANONICAL_FORM}"
    )


# The collections whose names carry a UUID: an event about one of them has its name as subject.
UUID_COLLECTIONS = frozenset({"threads", "runs", "crons", "documents"})


def misspelt_uuid(collection: str, value: str) -> str | None:
    """The canonical spelling of `value` when it is a UUID of a `UUID_COLLECTIONS` collection
    spelt otherwise (`4F1C…`, no hyphens): a name the mesh never writes. None otherwise."""
    if collection not in UUID_COLLECTIONS or _CANONICAL.fullmatch(value):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None
