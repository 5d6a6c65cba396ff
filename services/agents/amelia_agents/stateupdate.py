"""A state update checked and written one way, whoever sends it: UpdateThreadState's `values`
and ForkRun's (LangGraph's `update_state`, the second on an earlier checkpoint).

LangGraph drops a key the state does not have without a word, and stores `messages` of any
shape; the next run's model then fails on them, on every run of the thread, until someone forks
from an older checkpoint (QA s20: ForkRun took `{"messages": ["hi"]}` that UpdateThreadState
refused). So an update's keys, node and messages are checked first, and what LangGraph's
reducers still refuse is INVALID_ARGUMENT too, never INTERNAL.
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.errors import InvalidUpdateError
from langgraph.graph import START
from langgraph.pregel import Pregel

from amelia_common.errors import InvalidArgumentError, quoted

# Set on an update's checkpoint: the node it was written as, when one was named. LangGraph
# keeps no trace of it, and a fork from the step it starts must write its own update as the
# same node (`steps.fork_point`): what LangGraph would infer there is another node.
AS_NODE_KEY = "amelia_as_node"
# A state's chat messages as the workflows' input steps and nodes write them.
MESSAGE_ROLES = ("user", "assistant", "system", "tool")


def check_update(graph: Pregel[Any], values: dict[str, Any], as_node: str) -> None:
    """INVALID_ARGUMENT naming the problem: a key the state does not have, or a node the graph
    does not have (LangGraph would drop the first silently), or messages no model could read."""
    nodes = [n for n in graph.nodes if n != START]
    if as_node and as_node != START and as_node not in nodes:
        raise InvalidArgumentError(  # `quoted`: a cut to 80 characters gave no length
            f"as_node {quoted(as_node)} is not a node of the thread's graph; its nodes: "
            f"{', '.join(nodes)}"
        )
    _check_messages(values.get("messages"))
    keys = list(getattr(getattr(graph, "builder", None), "channels", None) or values)
    unknown = [key for key in values if key not in keys]
    if unknown:
        raise InvalidArgumentError(
            f"values has {', '.join(quoted(k) for k in unknown)}, not a key of the thread's "
            f"state; its keys: {', '.join(keys)}"
        )


def _check_messages(messages: Any) -> None:
    """INVALID_ARGUMENT for `values.messages` that the next run's model could not read: each
    a {role, content} object, role one of MESSAGE_ROLES, content text (other keys pass)."""
    if messages is None:
        return
    if not isinstance(messages, list):
        raise InvalidArgumentError("values.messages must be a list of {role, content} objects")
    for i, message in enumerate(messages):
        where = f"values.messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidArgumentError(f"{where} must be an object with role and content")
        if message.get("role") not in MESSAGE_ROLES:
            raise InvalidArgumentError(
                f"{where}.role must be one of {', '.join(MESSAGE_ROLES)}, "
                f"not {json.dumps(message.get('role'))[:80]}"
            )
        if not isinstance(message.get("content"), str):
            raise InvalidArgumentError(f"{where}.content must be text")


async def write_update(
    graph: Pregel[Any], config: RunnableConfig, values: dict[str, Any], as_node: str
) -> RunnableConfig:
    """`check_update`, then LangGraph's `aupdate_state`: the new checkpoint's config. What the
    reducers refuse is INVALID_ARGUMENT saying why."""
    check_update(graph, values, as_node)
    if as_node:
        config = {
            **config,
            "metadata": {**dict(config.get("metadata") or {}), AS_NODE_KEY: as_node},
        }
    try:
        return await graph.aupdate_state(config, values, as_node=as_node or None)
    except InvalidUpdateError as exc:
        raise InvalidArgumentError(_update_problem(str(exc))) from None
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"values do not fit the thread's state ({exc}); see GetThreadState for its values"
        ) from None


def _update_problem(text: str) -> str:
    if "Ambiguous update" in text or "as_node" in text:
        return (
            "as_node is required here: no single node wrote the thread's latest state "
            f"(LangGraph: {text})"
        )
    return f"cannot update the thread's state: {text}"
