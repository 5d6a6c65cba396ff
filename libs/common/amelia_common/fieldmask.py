"""Update masks (AIP-134, AIP-161): the field paths an Update request names, in either spelling.

A mask path is a proto field name (`system_prompt`, as gRPC clients and AIP-161 write it) or its
JSON name (`systemPrompt`, as grpc-gateway and protojson write a FieldMask in JSON, and as every
response names the field). Every Update RPC reads its mask here, so both spellings are taken
alike wherever a mask comes in (a query string, a body, a gRPC request) and an unknown path is
refused naming the fields there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from amelia_common.errors import InvalidArgumentError


def json_name(name: str) -> str:
    """A proto field name's lowerCamelCase JSON name, as protoc derives it: `end_time` →
    `endTime`."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def mask_paths(
    paths: Iterable[str], allowed: Sequence[str], field: str = "update_mask"
) -> list[str]:
    """The proto field names a mask's `paths` name (each may hold several, comma-separated; each
    in snake_case or lowerCamelCase), in order, each once; InvalidArgumentError naming the
    unknown ones and the `allowed` fields."""
    spellings = {spelling: name for name in allowed for spelling in (name, json_name(name))}
    found: list[str] = []
    unknown: list[str] = []
    for path in paths:
        for part in (p.strip() for p in path.split(",")):
            if not part:
                continue
            name = spellings.get(part)
            if name is None:
                unknown.append(part)
            elif name not in found:
                found.append(name)
    if unknown:
        raise InvalidArgumentError(
            f"{field} has unknown fields {unknown}; allowed: {', '.join(allowed)} "
            "(or their lowerCamelCase JSON names)"
        )
    return found
