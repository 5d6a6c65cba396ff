"""`/openapi.json`: an OpenAPI 3 document generated from the same route table the gateway serves.

Schemas come from the proto descriptors with proto JSON's rules (lowerCamelCase names, 64-bit
integers as strings, enums as names, Timestamp as RFC 3339 text, Struct as any JSON object), and
descriptions from the proto comments (`proto_docs.json`, regenerated with
`python -m amelia_gateway.openapi --write-docs`), so the document cannot drift from what is served.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from amelia_gateway.requests import MAX_CLIENT_TIMEOUT, NDJSON
from amelia_gateway.routes import ROUTES, Rule
from amelia_gateway.transcode import (
    STRING_WKT,
    WRAPPER_WKT,
    enum_type,
    is_map,
    is_repeated,
    msg_type,
    query_settable,
)

DOCS_FILE = Path(__file__).with_name("proto_docs.json")

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
}
_INT32_RANGE = {"minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32_RANGE = {"minimum": 0, "maximum": 2**32 - 1}

_WKT: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,9})?s$",
        "example": "30s",
    },
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "google.rpc.Status: the gRPC code (number), a message and details.",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "gRPC status code"},
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"@type": {"type": "string"}},
                "additionalProperties": True,
            },
        },
    },
    "required": ["code", "message"],
}


@cache
def proto_docs() -> dict[str, str]:
    """Comments from the .proto files, by full name (`amelia.v1.Run.status`)."""
    if DOCS_FILE.exists():
        docs: dict[str, str] = json.loads(DOCS_FILE.read_text())
        return docs
    return {}


def _doc(name: str) -> dict[str, str]:
    text = proto_docs().get(name, "")
    return {"description": text} if text else {}


def schema_name(descriptor: Descriptor | EnumDescriptor) -> str:
    return descriptor.full_name.removeprefix("amelia.v1.")


class SchemaBuilder:
    """Component schemas for every message reachable from the routes."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, descriptor: Descriptor) -> dict[str, Any]:
        if descriptor.full_name in _WKT:
            return dict(_WKT[descriptor.full_name])
        if descriptor.full_name in WRAPPER_WKT:
            inner = self.field(descriptor.fields_by_name["value"], with_doc=False)
            return {**inner, "nullable": True}
        name = schema_name(descriptor)
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursion
            self.schemas[name] = self.message(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def enum(self, descriptor: EnumDescriptor) -> dict[str, Any]:
        name = schema_name(descriptor)
        if name not in self.schemas:
            self.schemas[name] = {
                "type": "string",
                "enum": [v.name for v in descriptor.values],
                **_doc(descriptor.full_name),
            }
        return {"$ref": f"#/components/schemas/{name}"}

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.ref(msg_type(field))
        if field.type == FieldDescriptor.TYPE_ENUM:
            return self.enum(enum_type(field))
        schema = dict(_SCALARS[field.type])
        if schema.get("format") == "int32":
            schema.update(_INT32_RANGE)
        elif field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
            schema.update(_UINT32_RANGE)
        return schema

    def field(self, field: FieldDescriptor, *, with_doc: bool = True) -> dict[str, Any]:
        if is_map(field):
            value = msg_type(field).fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.single(value)}
        elif is_repeated(field):
            schema = {"type": "array", "items": self.single(field)}
        else:
            schema = self.single(field)
        doc = _doc(field.full_name) if with_doc else {}
        # A message field outside a oneof is written null when unset (transcode.to_json).
        nullable = (
            {"nullable": True}
            if field.type == FieldDescriptor.TYPE_MESSAGE
            and not is_repeated(field)
            and field.containing_oneof is None
            else {}
        )
        if (doc or nullable) and "$ref" in schema:
            # OpenAPI 3.0 ignores siblings of $ref; wrap to keep the field's description.
            return {"allOf": [schema], **nullable, **doc}
        return {**schema, **nullable, **doc}

    def message(self, descriptor: Descriptor) -> dict[str, Any]:
        properties = {f.json_name: self.field(f) for f in descriptor.fields}
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
            **_doc(descriptor.full_name),
        }
        oneofs = [o for o in descriptor.oneofs if not o.name.startswith("_")]
        if oneofs:
            notes = "; ".join(
                f"at most one of {', '.join(f.json_name for f in o.fields)}" for o in oneofs
            )
            schema["description"] = (schema.get("description", "") + f" ({notes})").strip()
        return schema


def _query_parameters(
    builder: SchemaBuilder, rule: Rule, *, beside_body: bool = False
) -> list[dict[str, Any]]:
    """The query parameters of a route: every settable field, or with `beside_body` only the
    top-level ones that are not messages (transcode.check_query_beside_body)."""
    bound = set(rule.bind)
    parameters: list[dict[str, Any]] = []

    def walk(descriptor: Descriptor, prefix: str, proto_prefix: str, depth: int) -> None:
        for field in descriptor.fields:
            proto_path = proto_prefix + field.name
            if proto_path in bound:
                continue
            name = prefix + field.json_name
            if beside_body and field.type == FieldDescriptor.TYPE_MESSAGE:
                continue
            if is_map(field):
                value = msg_type(field).fields_by_name["value"]
                if query_settable(value):
                    parameters.append(
                        {
                            "name": name,
                            "in": "query",
                            "style": "deepObject",
                            "explode": True,
                            "schema": {
                                "type": "object",
                                "additionalProperties": builder.single(value),
                            },
                            **_doc(field.full_name),
                        }
                    )
                continue
            message_leaf = (
                field.type == FieldDescriptor.TYPE_MESSAGE
                and msg_type(field).full_name not in STRING_WKT | WRAPPER_WKT
            )
            if message_leaf:
                if not is_repeated(field) and depth < 3:
                    walk(msg_type(field), name + ".", proto_path + ".", depth + 1)
                continue
            if not query_settable(field):
                continue
            schema = builder.field(field, with_doc=False)
            parameter: dict[str, Any] = {
                "name": name,
                "in": "query",
                "schema": schema,
                **_doc(field.full_name),
            }
            if is_repeated(field):
                parameter.update(style="form", explode=True)
            parameters.append(parameter)

    walk(rule.input, "", "", 0)
    return parameters


def _responses(schema: dict[str, Any], streaming: bool) -> dict[str, Any]:
    error = {"$ref": "#/components/responses/Error"}
    if streaming:
        ok = {
            "description": 'Newline-delimited JSON: one `{"result": …}` line per message; '
            'a failure after the stream started is a last `{"error": Status}` line.',
            "content": {
                NDJSON: {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "result": schema,
                            "error": {"$ref": "#/components/schemas/Status"},
                        },
                    }
                }
            },
        }
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": schema}}}
    return {
        "200": ok,
        "400": error,
        "401": error,
        "404": error,
        "413": error,
        "415": error,
        "503": error,
        "504": error,
        "default": error,
    }


def _operation(builder: SchemaBuilder, rule: Rule) -> dict[str, Any]:
    method = rule.descriptor
    operation: dict[str, Any] = {
        "operationId": rule.operation_id,
        "tags": [rule.service],
        "summary": f"{rule.service}.{rule.rpc}"
        + (" (server streaming, NDJSON)" if rule.server_streaming else ""),
        **_doc(method.full_name),
        "parameters": [
            {
                "name": variable,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.~-]+$"},
                "description": "Sets "
                + ", ".join(f"`{k}` = `{v}`" for k, v in rule.bind.items() if variable in v),
            }
            for variable in rule.variables
        ],
        "responses": _responses(builder.ref(rule.output), rule.server_streaming),
    }
    if rule.body:
        content: dict[str, Any] = {"application/json": {"schema": builder.ref(rule.input)}}
        if rule.uploads:
            content["multipart/form-data"] = {
                "schema": {
                    "type": "object",
                    "description": "Streamed to RagService.UploadDocument: form fields "
                    "(DocumentSource JSON in `source`, or its fields by name) before the file.",
                    "properties": {
                        "source": {"type": "string", "description": "DocumentSource as JSON"},
                        "file": {"type": "string", "format": "binary"},
                    },
                    "required": ["file"],
                }
            }
            content["application/octet-stream"] = {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "The document (any non-JSON Content-Type): DocumentSource "
                    "fields in the query string, the file name from Content-Disposition "
                    "(`filename*=UTF-8''…` preferred over `filename`, RFC 6266).",
                }
            }
        operation["requestBody"] = {"required": True, "content": content}
        if rule.body != "*":
            operation["parameters"] += _query_parameters(builder, rule, beside_body=True)
    else:
        operation["parameters"] += _query_parameters(builder, rule)
    operation["parameters"].append({"$ref": "#/components/parameters/RequestTimeout"})
    return operation


def build_document(server_url: str = "") -> dict[str, Any]:
    """The OpenAPI document for every route in the table."""
    builder = SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    for rule in ROUTES:
        paths.setdefault(rule.template, {})[rule.method.lower()] = _operation(builder, rule)
    builder.schemas["Status"] = STATUS_SCHEMA
    paths["/healthz"] = {
        "get": {
            "operationId": "Gateway_Healthz",
            "tags": ["Gateway"],
            "summary": "Liveness of the gateway process",
            "security": [],
            "responses": {
                "200": {"description": "The gateway is up"},
                "503": {"description": "The gateway is shutting down"},
            },
        }
    }
    paths["/v1/status"] = {
        "get": {
            "operationId": "Gateway_Status",
            "tags": ["Gateway"],
            "summary": "Health of every service, NATS, PostgreSQL and the gateway's counts",
            "responses": {
                "200": {
                    "description": "Status of the mesh",
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "additionalProperties": True}
                        }
                    },
                },
                "401": {"$ref": "#/components/responses/Error"},
            },
        }
    }
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "Amelia gateway",
            "version": "1.0.0",
            "description": "HTTP/JSON for the Amelia mesh's RPCs (proto JSON bodies, "
            "grpc-gateway status mapping, google.rpc.Status errors). Live events: the "
            "WebSocket at `/ws`, see docs/gateway.md.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "responses": {
                "Error": {
                    "description": "An error: google.rpc.Status JSON",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Status"}}
                    },
                }
            },
            "parameters": {
                "RequestTimeout": {
                    "name": "X-Request-Timeout",
                    "in": "header",
                    "required": False,
                    "description": "Deadline in seconds passed to the service (or send "
                    "`grpc-timeout`); default GATEWAY_TIMEOUT_SECONDS. More than "
                    f"{MAX_CLIENT_TIMEOUT:g} seconds is a 400, not cut to it.",
                    # OpenAPI 3.0: exclusiveMinimum is a flag on `minimum` (3.1 makes it a number).
                    "schema": {
                        "type": "number",
                        "exclusiveMinimum": True,
                        "minimum": 0,
                        "maximum": MAX_CLIENT_TIMEOUT,
                    },
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def write_docs(proto_root: Path, out: Path = DOCS_FILE) -> None:
    """Extract the comments of protos/amelia/v1/*.proto into `proto_docs.json` (needs grpc_tools)."""
    import tempfile

    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    files = sorted(
        str(p.relative_to(proto_root)) for p in (proto_root / "amelia/v1").glob("*.proto")
    )
    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "set.pb"
        code = protoc.main(
            [
                "protoc",
                f"-I{proto_root}",
                f"-I{include}",
                "--include_source_info",
                f"--descriptor_set_out={target}",
                *files,
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed with {code}")
        fds = descriptor_pb2.FileDescriptorSet.FromString(target.read_bytes())
    docs: dict[str, str] = {}
    for fd in fds.file:
        docs.update(_file_comments(fd))
    out.write_text(json.dumps(dict(sorted(docs.items())), indent=1, ensure_ascii=False) + "\n")


def _file_comments(fd: Any) -> dict[str, str]:
    """Leading comments by full name, from a FileDescriptorProto's source info."""
    comments = {
        tuple(loc.path): " ".join(loc.leading_comments.split())
        for loc in fd.source_code_info.location
        if loc.leading_comments.strip()
    }
    package = fd.package
    docs: dict[str, str] = {}

    def put(path: tuple[int, ...], name: str) -> None:
        if path in comments:
            docs[name] = comments[path]

    def message(msg: Any, path: tuple[int, ...], prefix: str) -> None:
        name = f"{prefix}.{msg.name}"
        put(path, name)
        for i, field in enumerate(msg.field):
            put((*path, 2, i), f"{name}.{field.name}")
        for i, nested in enumerate(msg.nested_type):
            message(nested, (*path, 3, i), name)
        for i, enum in enumerate(msg.enum_type):
            put((*path, 4, i), f"{name}.{enum.name}")

    for i, msg in enumerate(fd.message_type):
        message(msg, (4, i), package)
    for i, enum in enumerate(fd.enum_type):
        put((5, i), f"{package}.{enum.name}")
    for i, service in enumerate(fd.service):
        put((6, i), f"{package}.{service.name}")
        for j, rpc in enumerate(service.method):
            put((6, i, 2, j), f"{package}.{service.name}.{rpc.name}")
    return docs


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-docs"]:
        root = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("protos")
        write_docs(root)
        print(f"wrote {DOCS_FILE}")
    else:
        print(json.dumps(build_document(), indent=2))
