"""OpenTelemetry traces and the `/metrics` endpoint, switched on once per process by `start`.

Tracing is on only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard variable, read by
the OTLP/HTTP exporter along with `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, …). Off,
nothing here installs anything: the OpenTelemetry API stays its no-op self, the helpers below
return at once, and no header, attribute or log field is added.

On, a request is one trace across processes:
- gRPC: clients inject W3C `traceparent` into call metadata and servers continue it
  (opentelemetry-instrumentation-grpc: the aio client patched process-wide, the server
  interceptor first in `GrpcService`);
- HTTP: the gateway's ASGI middleware (opentelemetry-instrumentation-asgi);
- the run queue: `nats_headers()` adds `traceparent` to a job's NATS headers where it is
  published, and `consumer_span(msg)` continues it in the worker that takes the job;
- LangGraph nodes (`traced_nodes`), model calls (`traced_chat`, GenAI semantic conventions) and
  RAG work (`span`) are spans of their own;
- an event published inside a trace carries its id (`trace_fields`) and gets a PRODUCER span
  (`producer_span`; a pipeline's events one span for all, `start_producer_span`), and every
  log line written inside a span carries `trace_id` and `span_id` (`logging.add_trace_ids`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from amelia_common import metrics
from amelia_common.logging import get_logger
from amelia_common.settings import Settings

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig

log = get_logger("amelia.telemetry")

ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
_tracer = trace.get_tracer("amelia")
_state: dict[str, Any] = {"tracing": False, "service": ""}


def tracing_enabled() -> bool:
    return bool(_state["tracing"])


def metrics_port(settings: Settings, service: str) -> tuple[int, str]:
    """The port a service's process serves `/metrics` on (0: none) and the setting naming it.
    The gateway serves them on its HTTP port instead."""
    setting = f"{service.split('-')[-1].upper()}_METRICS_PORT"
    return int(getattr(settings, setting, 0) or 0), setting


def start(settings: Settings, service: str) -> None:
    """Switch telemetry on for this process (once; call right after `configure_logging`, before
    any gRPC channel is made): traces when OTEL_EXPORTER_OTLP_ENDPOINT is set, `/metrics` on the
    service's metrics port."""
    port, setting = metrics_port(settings, service)
    metrics.serve(port, settings.bind_host, setting)
    if _state["tracing"] or not os.environ.get(ENDPOINT_VARIABLE, "").strip():
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or f"amelia-{service}"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    instrument_grpc_clients(True)
    _state.update(tracing=True, service=name, provider=provider)
    log.info("tracing on", endpoint=os.environ[ENDPOINT_VARIABLE], service_name=name)


def shutdown() -> None:
    """Export the spans still buffered and stop exporting (the provider also does it at exit)."""
    provider = _state.get("provider")
    if provider is not None:
        provider.shutdown()


# -- gRPC and HTTP -----------------------------------------------------------------------------


def server_interceptors() -> list[Any]:
    """The OpenTelemetry gRPC server interceptor when tracing is on (it goes first)."""
    if not _state["tracing"]:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(filter_=_traced_rpcs())]


def instrument_grpc_clients(on: bool) -> None:
    """Patch (or unpatch) grpc.aio's channel factories so every new channel injects the trace
    context and makes CLIENT spans (for the calls `_traced_rpcs` keeps)."""
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

    # A singleton: each construction resets its filter, so always pass ours.
    client = GrpcAioInstrumentorClient(filter_=_traced_rpcs())
    if on and not client.is_instrumented_by_opentelemetry:
        client.instrument()
    elif not on and client.is_instrumented_by_opentelemetry:
        client.uninstrument()


def _traced_rpcs() -> Any:
    """Which gRPC calls get spans: not the long-lived streams (Stream*, health Watch, reflection)
    — a span as long as a subscription says nothing, and wrapping each of its messages costs —
    nor health checks."""
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(
        filters.any_of(
            filters.method_prefix("Stream"),
            filters.health_check(),
            filters.service_prefix("grpc.reflection"),
        )
    )


def asgi_middleware() -> list[tuple[type[Any], dict[str, Any]]]:
    """The gateway's ASGI middleware (class, options): OpenTelemetry's when tracing is on."""
    if not _state["tracing"]:
        return []
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    # No span per ASGI send/receive: an NDJSON stream would make one per line.
    options = {"excluded_urls": "healthz,metrics", "exclude_spans": ["receive", "send"]}
    return [(OpenTelemetryMiddleware, options)]


# -- the run queue (NATS) ----------------------------------------------------------------------


def nats_headers() -> dict[str, str]:
    """W3C trace context (`traceparent`) of the current span for a NATS message; {} when off."""
    carrier: dict[str, str] = {}
    if _state["tracing"]:
        propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def consumer_span(
    name: str, headers: Mapping[str, str] | None, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A CONSUMER span continuing the trace whose context a NATS message's headers carry."""
    if not _state["tracing"]:
        yield trace.INVALID_SPAN
        return
    parent = propagate.extract(dict(headers or {}))
    with _tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=dict(attributes or {})
    ) as current:
        yield current


# -- events published -------------------------------------------------------------------------


def _in_trace() -> bool:
    return bool(_state["tracing"]) and trace.get_current_span().get_span_context().is_valid


@contextlib.contextmanager
def producer_span(name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
    """A PRODUCER span for a message sent inside the current trace (none outside a trace: an
    event published by a background task would otherwise start a trace of its own)."""
    if not _in_trace():
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        name, kind=SpanKind.PRODUCER, attributes=dict(attributes)
    ) as current:
        yield current


def start_producer_span(name: str, attributes: Mapping[str, Any]) -> Span:
    """A PRODUCER span the caller ends (`span.end()`), not made current: for messages written
    over a while and acknowledged later (a run's events through a pipeline)."""
    if not _in_trace():
        return trace.INVALID_SPAN
    return _tracer.start_span(name, kind=SpanKind.PRODUCER, attributes=dict(attributes))


# -- spans of our own --------------------------------------------------------------------------


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """An INTERNAL span (no-op when tracing is off); exceptions are recorded on it."""
    if not _state["tracing"]:
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def trace_fields() -> dict[str, str]:
    """`{"trace_id": …}` of the current span for an event's data; {} when off or outside one."""
    if not _state["tracing"]:
        return {}
    ctx = trace.get_current_span().get_span_context()
    return {"trace_id": format(ctx.trace_id, "032x")} if ctx.is_valid else {}


def traced_nodes(builder: Any) -> Any:
    """A LangGraph `StateGraph` whose every node runs inside a span `node <name>` (so the model
    calls and searches a node makes are its children). Unchanged when tracing is off."""
    if not _state["tracing"]:
        return builder
    import dataclasses

    from langgraph._internal._runnable import RunnableCallable

    for name, spec in list(builder.nodes.items()):
        builder.nodes[name] = dataclasses.replace(
            spec, runnable=RunnableCallable(None, _node_runner(name, spec.runnable), name=name)
        )
    return builder


def _node_runner(name: str, inner: Any) -> Any:
    # LangGraph passes the node's config to a parameter annotated `RunnableConfig` (by name).
    async def run(state: Any, config: RunnableConfig) -> Any:
        with _tracer.start_as_current_span(
            f"node {name}",
            attributes={"langgraph.node": name},
            record_exception=False,
            set_status_on_exception=False,
        ) as current:
            try:
                return await inner.ainvoke(state, config)
            except Exception as exc:
                # A LangGraph interrupt (the run pauses for an answer) is no failure.
                if type(exc).__name__ == "GraphInterrupt":
                    current.set_attribute("langgraph.interrupted", True)
                else:
                    current.record_exception(exc)
                    current.set_status(Status(StatusCode.ERROR, str(exc)))
                raise

    return run


async def traced_chat(provider: Any, request: Any) -> AsyncIterator[Any]:
    """`provider.stream(request)`, counted (`amelia_llm_*`) and, when tracing, in a CLIENT span
    with the GenAI semantic conventions: provider, model, tokens in and out, time to first
    chunk."""
    kind = provider_kind(provider)
    metrics.LLM_REQUESTS.labels(kind).inc()
    model = str(getattr(provider, "name", ""))
    started = time.perf_counter()
    first = True
    usage: Any = None
    with contextlib.ExitStack() as stack:
        current: Span = trace.INVALID_SPAN
        if _state["tracing"]:
            current = stack.enter_context(
                _tracer.start_as_current_span(
                    f"chat {model}",
                    kind=SpanKind.CLIENT,
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": kind,
                        "gen_ai.request.model": model,
                        "gen_ai.request.max_tokens": int(getattr(request, "max_tokens", 0) or 0),
                    },
                )
            )
        try:
            async for chunk in provider.stream(request):
                if first and (chunk.text or chunk.tool_calls):
                    first = False
                    waited = time.perf_counter() - started
                    metrics.LLM_FIRST_TOKEN.labels(kind).observe(waited)
                    current.set_attribute("gen_ai.response.time_to_first_chunk", waited)
                if chunk.usage is not None:
                    usage = chunk.usage
                yield chunk
        except Exception as exc:
            metrics.LLM_ERRORS.labels(kind).inc()
            current.set_status(Status(StatusCode.ERROR, str(exc)))
            current.set_attribute("error.type", type(exc).__name__)
            raise
        finally:
            if usage is not None:
                metrics.LLM_TOKENS.labels(kind, "input").inc(usage.input_tokens)
                metrics.LLM_TOKENS.labels(kind, "output").inc(usage.output_tokens)
                current.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
                current.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            current.set_attribute("gen_ai.response.model", model)


def provider_kind(provider: Any) -> str:
    """`anthropic`, `openai`, `local`, `offline`: a provider's module name, bounded labels."""
    module = type(provider).__module__.rsplit(".", 1)[-1]
    return module.removesuffix("_provider") or "unknown"
