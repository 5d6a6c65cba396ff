"""The workflow registry: what a run can execute, by name.

A workflow is a LangGraph `StateGraph` plus the glue a durable run needs: how the run's input
becomes the graph's input, how the final state becomes the run's output, the input's JSON
schema (shown by ListWorkflows and checked by CreateRun), and a default timeout. Built-in
workflows register on import of `amelia_agents.workflows`; plugins listed in
`AGENT_WORKFLOW_MODULES` register themselves the same way:

    register(Workflow(name="summarize", description="...", nodes=["read", "summarize"],
                      input_schema={...}, build=build_graph, to_state=..., to_output=...))

`build(agent)` gets the run's agent configuration (a dict, or None for a workflow run) and
returns an uncompiled `StateGraph`; the worker compiles it with the PostgreSQL checkpointer.
Graphs must keep their state JSON-serializable (plain dicts, lists, strings, numbers).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from langgraph.graph import END, START, StateGraph

from amelia_agents.llm import ModelError
from amelia_agents.model_check import check_max_tokens, check_model
from amelia_common.settings import Settings

AGENT_WORKFLOW = "agent"

_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-")


class InvalidInputError(ValueError):
    """A run input that does not fit the workflow's schema; the message says why."""


@dataclass(frozen=True)
class Workflow:
    name: str
    description: str
    nodes: list[str]
    build: Callable[[dict[str, Any] | None], StateGraph[Any, Any, Any, Any]]
    to_state: Callable[[dict[str, Any]], dict[str, Any]]
    to_output: Callable[[dict[str, Any]], dict[str, Any]]
    input_schema: dict[str, Any] = field(default_factory=dict)
    default_timeout: float = 300.0
    # Hidden workflows (the agent graph) run but are not listed.
    hidden: bool = False
    # Checks the schema cannot express (a path inside CODE_ALLOWED_ROOTS, a resource name):
    # raises InvalidInputError, so CreateRun refuses the run before it is queued.
    check: Callable[[dict[str, Any], Settings], None] | None = None

    def validate_input(
        self, value: dict[str, Any], settings: Settings | None = None, *, agent: bool = False
    ) -> None:
        """Raise InvalidInputError for an input the workflow cannot run. `agent`: the run has
        an agent, whose model and max_tokens its calls use (the input's are not read)."""
        validate(value, self.input_schema, settings=settings)
        max_tokens = value.get("max_tokens")
        if settings is not None and not agent and isinstance(max_tokens, (int, float)):
            try:  # the model's context must hold them (`model_check`)
                model = str(value.get("model") or settings.DEFAULT_MODEL)
                check_max_tokens(model, int(max_tokens), settings)
            except ModelError as exc:
                raise InvalidInputError(f"input.max_tokens: {exc}") from None
        if self.check is not None and settings is not None:
            self.check(value, settings)


_registry: dict[str, Workflow] = {}


def register(workflow: Workflow, *, replace: bool = False) -> Workflow:
    if (
        not workflow.name
        or workflow.name[0] not in "abcdefghijklmnopqrstuvwxyz"
        or not set(workflow.name) <= _NAME_OK
    ):
        raise ValueError(f"workflow name {workflow.name!r} must be lowercase words with '-'")
    if workflow.name in _registry and not replace:
        raise ValueError(f"workflow {workflow.name!r} is already registered")
    _registry[workflow.name] = workflow
    return workflow


def get(name: str) -> Workflow | None:
    return _registry.get(name)


def listed() -> list[Workflow]:
    return sorted((w for w in _registry.values() if not w.hidden), key=lambda w: w.name)


def linear_graph(
    state: type[Any], *steps: tuple[str, Callable[..., Any]]
) -> StateGraph[Any, Any, Any, Any]:
    """An uncompiled graph running `steps` (name, node) one after the other:
    START ─► first ─► … ─► last ─► END. Most workflows are this shape."""
    graph = StateGraph(state)
    previous = START
    for name, node in steps:
        graph.add_node(name, node)
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph


def names() -> list[str]:
    return [w.name for w in listed()]


def load_plugins(modules: Iterable[str]) -> None:
    """Import plugin modules; each registers its workflows on import."""
    for module in modules:
        importlib.import_module(module)


# A small JSON Schema subset (type, required, properties, additionalProperties: false, items,
# enum, minLength, minimum, maximum, format "model"): enough to give a clear INVALID_ARGUMENT
# before a run is queued.
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


# A string naming a model as an agent's `model` does ('offline:echo', 'openai:m@http://h/v1'):
# refused at CreateRun by the same check (`model_check`), not on the worker.
MODEL_FORMAT = "model"


def validate(
    value: Any, schema: dict[str, Any], path: str = "input", settings: Settings | None = None
) -> None:
    """InvalidInputError naming the first part of `value` that does not fit `schema`; a
    "model" string is checked as an agent's model is (`settings`: also what the mesh can
    serve, e.g. that a `local:` path is a GGUF file)."""
    kind = schema.get("type")
    if kind:
        kinds = kind if isinstance(kind, list) else [kind]
        ok = any(
            isinstance(value, _TYPES[k])
            and not (k in ("integer", "number") and isinstance(value, bool))
            for k in kinds
        )
        # JSON (and protobuf Struct) numbers are floats; accept whole floats as integers.
        if not ok and "integer" in kinds and isinstance(value, float) and value.is_integer():
            ok = True
        if not ok:
            raise InvalidInputError(f"{path} must be {' or '.join(kinds)}")
    if "enum" in schema and value not in schema["enum"]:
        raise InvalidInputError(f"{path} must be one of {schema['enum']}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        raise InvalidInputError(f"{path} must not be empty")
    if isinstance(value, str) and schema.get("format") == MODEL_FORMAT:
        try:
            check_model(value, settings)
        except ModelError as exc:
            raise InvalidInputError(f"{path}: {exc}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise InvalidInputError(f"{path} must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise InvalidInputError(f"{path} must be at most {schema['maximum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise InvalidInputError(f"{path}.{key} is required")
        known = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            for key in value:
                if key not in known:
                    raise InvalidInputError(f"{path} takes only {', '.join(known)}; not {key!r}")
        for key, sub in known.items():
            if key in value:
                validate(value[key], sub, f"{path}.{key}", settings)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(item, schema["items"], f"{path}[{i}]", settings)
