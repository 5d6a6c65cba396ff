"""gRPC server reflection that serves the protos' comments.

grpcurl's `describe` prints what reflection serves, and the comments of protos/amelia/v1 are the
API's documentation at the terminal. grpcio-reflection serves `CopyToProto` of the process's
descriptors, which never carry comments (source_code_info), and its symbol lookup finds
services and messages but not methods or fields (`describe amelia.v1.AgentService.WaitRun`:
"Symbol not found"). This servicer answers from the FileDescriptorSet `make protos` writes next
to the generated code (`amelia/v1/descriptors.binpb`, protoc `--include_source_info`), and
from the process's descriptors for the files it does not hold (grpc.health.v1, the reflection
service itself, google.protobuf's, google.rpc's error details), with every symbol the reflection
protocol names: messages, enums and their values, fields, oneofs, services and methods,
extensions.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import AsyncIterator, Iterable, Iterator

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVICE_NAME = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
# Written by `make protos` into the generated package (checked fresh by `make check-protos`).
DESCRIPTOR_SET = "descriptors.binpb"
DESCRIPTOR_PACKAGE = "amelia.v1"


def documented_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The FileDescriptorProtos of protos/amelia/v1, with their comments."""
    data = importlib.resources.files(DESCRIPTOR_PACKAGE).joinpath(DESCRIPTOR_SET).read_bytes()
    return list(descriptor_pb2.FileDescriptorSet.FromString(data).file)


def _join(scope: str, name: str) -> str:
    return f"{scope}.{name}" if scope else name


def _enum_symbols(enum: descriptor_pb2.EnumDescriptorProto, scope: str) -> Iterator[str]:
    name = _join(scope, enum.name)
    yield name
    for value in enum.value:
        # Protobuf scopes an enum's values as its siblings; grpcurl (jhump/protoreflect) names
        # them inside the enum. Both find the file.
        yield _join(scope, value.name)
        yield _join(name, value.name)


def _message_symbols(message: descriptor_pb2.DescriptorProto, scope: str) -> Iterator[str]:
    name = _join(scope, message.name)
    yield name
    yield from (_join(name, field.name) for field in (*message.field, *message.extension))
    yield from (_join(name, oneof.name) for oneof in message.oneof_decl)
    for nested in message.nested_type:
        yield from _message_symbols(nested, name)
    for enum in message.enum_type:
        yield from _enum_symbols(enum, name)


def file_symbols(file: descriptor_pb2.FileDescriptorProto) -> Iterator[str]:
    """Every fully-qualified name a file declares."""
    for message in file.message_type:
        yield from _message_symbols(message, file.package)
    for enum in file.enum_type:
        yield from _enum_symbols(enum, file.package)
    for extension in file.extension:
        yield _join(file.package, extension.name)
    for service in file.service:
        name = _join(file.package, service.name)
        yield name
        for method in service.method:
            yield _join(name, method.name)


def _extensions(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[descriptor_pb2.FieldDescriptorProto]:
    yield from file.extension
    stack = list(file.message_type)
    while stack:
        message = stack.pop()
        yield from message.extension
        stack.extend(message.nested_type)


class Catalog:
    """The files a server's services need (each with its dependencies), by name and by symbol."""

    def __init__(
        self,
        service_names: Iterable[str],
        documented: Iterable[descriptor_pb2.FileDescriptorProto],
        pool: descriptor_pool.DescriptorPool | None = None,
    ) -> None:
        self._pool = pool or descriptor_pool.Default()
        self._documented = {file.name: file for file in documented}
        self._documented_symbols = {
            symbol: file.name for file in self._documented.values() for symbol in file_symbols(file)
        }
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self._serialized: dict[str, bytes] = {}
        self.symbols: dict[str, str] = {}
        # (extended message, field number) -> file declaring the extension.
        self._extensions: dict[tuple[str, int], str] = {}
        for service in service_names:
            self._add(self._file_of(service))

    def _file_of(self, symbol: str) -> str:
        if symbol in self._documented_symbols:
            return self._documented_symbols[symbol]
        return str(self._pool.FindFileContainingSymbol(symbol).name)

    def file_of(self, symbol: str) -> str | None:
        """The file declaring `symbol`: one of the services' files, else any the process
        loaded, as grpcio-reflection answers (grpcurl resolves the google.rpc details of an
        error status this way)."""
        if symbol not in self.symbols:
            try:
                self._add(self._file_of(symbol))
            except KeyError:
                return None
        return self.symbols.get(symbol)

    def has_file(self, name: str) -> bool:
        """Whether the file is known (one the process loaded is added)."""
        try:
            self._add(name)
        except KeyError:
            return False
        return True

    def _add(self, name: str) -> None:
        if name in self._files:
            return
        file = self._documented.get(name)
        if file is None:
            file = descriptor_pb2.FileDescriptorProto()
            self._pool.FindFileByName(name).CopyToProto(file)
        self._files[name] = file
        self._serialized[name] = file.SerializeToString()
        for symbol in file_symbols(file):
            self.symbols.setdefault(symbol, name)
        for extension in _extensions(file):
            self._extensions[(extension.extendee.lstrip("."), extension.number)] = name
        for dependency in file.dependency:
            self._add(dependency)

    def closure(self, name: str) -> list[bytes]:
        """A file then all it depends on, serialized (reflection sends them together)."""
        seen: list[str] = []
        stack = [name]
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.append(current)
                stack.extend(self._files[current].dependency)
        return [self._serialized[file] for file in seen]

    def extension_file(self, message: str, number: int) -> str | None:
        return self._extensions.get((message, number))

    def extension_numbers(self, message: str) -> list[int]:
        return sorted(number for (base, number) in self._extensions if base == message)


def _error(
    request: reflection_pb2.ServerReflectionRequest, code: grpc.StatusCode, message: str
) -> reflection_pb2.ServerReflectionResponse:
    return reflection_pb2.ServerReflectionResponse(
        error_response=reflection_pb2.ErrorResponse(
            error_code=code.value[0], error_message=message
        ),
        original_request=request,
    )


class ReflectionServicer(reflection_pb2_grpc.ServerReflectionServicer):
    """grpc.reflection.v1alpha.ServerReflection over a `Catalog`."""

    def __init__(self, service_names: Iterable[str], catalog: Catalog) -> None:
        self._service_names = sorted(service_names)
        self._catalog = catalog

    def answer(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        catalog = self._catalog
        asked = request.WhichOneof("message_request")
        name = ""
        if asked == "list_services":
            return reflection_pb2.ServerReflectionResponse(
                list_services_response=reflection_pb2.ListServiceResponse(
                    service=[reflection_pb2.ServiceResponse(name=s) for s in self._service_names]
                ),
                original_request=request,
            )
        if asked == "file_by_filename":
            name = request.file_by_filename if catalog.has_file(request.file_by_filename) else ""
            missing = f"no file {request.file_by_filename!r}"
        elif asked == "file_containing_symbol":
            name = catalog.file_of(request.file_containing_symbol) or ""
            missing = f"no symbol {request.file_containing_symbol!r}"
        elif asked == "file_containing_extension":
            ext = request.file_containing_extension
            name = catalog.extension_file(ext.containing_type, ext.extension_number) or ""
            missing = f"no extension {ext.extension_number} of {ext.containing_type!r}"
        elif asked == "all_extension_numbers_of_type":
            base = request.all_extension_numbers_of_type
            if catalog.file_of(base) is None:
                return _error(request, grpc.StatusCode.NOT_FOUND, f"no type {base!r}")
            return reflection_pb2.ServerReflectionResponse(
                all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                    base_type_name=base, extension_number=catalog.extension_numbers(base)
                ),
                original_request=request,
            )
        else:
            return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "no request set")
        if not name:
            return _error(request, grpc.StatusCode.NOT_FOUND, missing)
        return reflection_pb2.ServerReflectionResponse(
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=catalog.closure(name)
            ),
            original_request=request,
        )

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterator[reflection_pb2.ServerReflectionRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for request in request_iterator:
            yield self.answer(request)


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection for `service_names` (and itself) on `server`, with the comments."""
    names = [*service_names, SERVICE_NAME]
    servicer = ReflectionServicer(names, Catalog(names, documented_files()))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
