"""The route table: one line per HTTP route, naming the RPC it calls.

Everything else (the request and response types, which fields come from the query string, the
OpenAPI document, whether the answer is one JSON object or a newline-delimited stream) is derived
from the proto descriptors, so exposing a new RPC over HTTP is one line here.

Templates are AIP/grpc-gateway style: `{run}` is a path variable (one path segment, no `/` or
`:`), `:cancel` a custom verb; `bind` says which request field a variable fills and how
(`{"name": "runs/{run}"}` turns `/v1/runs/abc` into `name = "runs/abc"`). `body="*"` means the JSON
body is the whole request message; `body="agent"` (grpc-gateway's annotation for a request that
carries a resource) means the body is for that field: it is still sent as the request message
(`{"agent": {…}}`), and the request's other top-level fields (`agentId`) may come from the query
string instead (`transcode.check_query_beside_body`). Routes without a body take their fields from
the query string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from google.protobuf.descriptor import Descriptor, MethodDescriptor

from amelia_gateway import upstream

# WaitRun's longest wait (amelia_agents.waiting.MAX_WAIT_SECONDS) and a margin for its answer.
MAX_WAIT_SECONDS = 600.0
WAIT_DEADLINE_SECONDS = MAX_WAIT_SECONDS + 30.0
_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True)
class Rule:
    """One HTTP route -> one RPC."""

    method: str
    template: str
    service: str
    rpc: str
    body: str = ""
    bind: dict[str, str] = field(default_factory=dict)
    # Extra request content types (besides JSON) this route accepts; see uploads.py.
    uploads: bool = False
    # The OpenAPI operation's name when a second route calls the same RPC (ids are unique).
    operation: str = ""
    # The upstream call's deadline when the client sends none, if not GATEWAY_TIMEOUT_SECONDS:
    # a call that waits on purpose (WaitRun) may take longer than the gateway's usual answer.
    deadline: float = 0.0
    # A unary call that waits (WaitRun): sent again, with the time left, when the replica
    # serving it dies or the service restarts (grpc_client.reissue_while_unavailable).
    waits: bool = False
    # A stream resumable after the last sequence it sent (StreamRun): reopened there when the
    # service drops it, so the HTTP client reads one stream without a gap or a repeat.
    resumes: bool = False
    # A stream whose first message names a run (CreateAndStreamRun), continued by StreamRun of
    # that run after the last sequence sent when the service drops it.
    resumes_as_run: bool = False
    # A stream whose service sends its headers as soon as it opened it (StreamEvents: once its
    # consumer exists), however long that takes: the gateway waits for them (or the error) before
    # it commits to 200, so a stream that cannot open gets its HTTP status, not a 200 whose
    # first line is the error (QA F6a).
    headers_when_open: bool = False

    @cached_property
    def descriptor(self) -> MethodDescriptor:
        return upstream.method(self.service, self.rpc)

    @property
    def input(self) -> Descriptor:
        return self.descriptor.input_type

    @property
    def output(self) -> Descriptor:
        return self.descriptor.output_type

    @property
    def server_streaming(self) -> bool:
        return bool(self.descriptor.server_streaming)

    @property
    def variables(self) -> list[str]:
        return _VARIABLE.findall(self.template)

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        regex = ""
        position = 0
        for match in _VARIABLE.finditer(self.template):
            regex += re.escape(self.template[position : match.start()])
            regex += f"(?P<{match.group(1)}>[^/:]+)"
            position = match.end()
        regex += re.escape(self.template[position:])
        return re.compile(f"^{regex}$")

    def bound_fields(self, variables: dict[str, str]) -> dict[str, str]:
        """Request fields set from the path: `{"name": "runs/abc"}`."""
        return {name: value.format(**variables) for name, value in self.bind.items()}

    @property
    def operation_id(self) -> str:
        return f"{self.service}_{self.operation or self.rpc}"


def _resource(
    collection: str, variable: str, service: str, *, get: str, delete: str = ""
) -> list[Rule]:
    bind = {"name": f"{collection}/{{{variable}}}"}
    rules = [Rule("GET", f"/v1/{collection}/{{{variable}}}", service, get, bind=bind)]
    if delete:
        rules.append(Rule("DELETE", f"/v1/{collection}/{{{variable}}}", service, delete, bind=bind))
    return rules


ROUTES: tuple[Rule, ...] = (
    # EventService
    Rule("POST", "/v1/events", "EventService", "PublishEvent", body="*"),
    Rule("POST", "/v1/events:batchPublish", "EventService", "PublishEvents", body="*"),
    Rule("GET", "/v1/events", "EventService", "ListEvents"),
    Rule("GET", "/v1/events:stream", "EventService", "StreamEvents", headers_when_open=True),
    *_resource("events", "event", "EventService", get="GetEvent"),
    # AgentService: agents
    Rule("POST", "/v1/agents", "AgentService", "CreateAgent", body="agent"),
    Rule("GET", "/v1/agents", "AgentService", "ListAgents"),
    *_resource("agents", "agent", "AgentService", get="GetAgent", delete="DeleteAgent"),
    Rule(
        "PATCH",
        "/v1/agents/{agent}",
        "AgentService",
        "UpdateAgent",
        body="agent",
        bind={"agent.name": "agents/{agent}"},
    ),
    # AgentService: threads
    Rule("POST", "/v1/threads", "AgentService", "CreateThread", body="thread"),
    Rule("GET", "/v1/threads", "AgentService", "ListThreads"),
    Rule(
        "POST",
        "/v1/threads:search",
        "AgentService",
        "ListThreads",
        body="*",
        operation="SearchThreads",
    ),
    Rule("GET", "/v1/threads:count", "AgentService", "CountThreads"),
    Rule(
        "POST",
        "/v1/threads:count",
        "AgentService",
        "CountThreads",
        body="*",
        operation="CountThreadsSearch",
    ),
    *_resource("threads", "thread", "AgentService", get="GetThread", delete="DeleteThread"),
    Rule(
        "PATCH",
        "/v1/threads/{thread}",
        "AgentService",
        "UpdateThread",
        body="thread",
        bind={"thread.name": "threads/{thread}"},
    ),
    Rule(
        "POST",
        "/v1/threads/{thread}:copy",
        "AgentService",
        "CopyThread",
        body="*",
        bind={"name": "threads/{thread}"},
    ),
    # AgentService: a thread's state and history (LangGraph Server's /threads/{id}/state)
    Rule(
        "GET",
        "/v1/threads/{thread}/state",
        "AgentService",
        "GetThreadState",
        bind={"thread": "threads/{thread}"},
    ),
    Rule(
        "GET",
        "/v1/threads/{thread}/state/{checkpoint}",
        "AgentService",
        "GetThreadState",
        bind={"thread": "threads/{thread}", "checkpoint": "{checkpoint}"},
        operation="GetThreadStateAtCheckpoint",
    ),
    Rule(
        "POST",
        "/v1/threads/{thread}/state",
        "AgentService",
        "UpdateThreadState",
        body="*",
        bind={"thread": "threads/{thread}"},
    ),
    Rule(
        "GET",
        "/v1/threads/{thread}/history",
        "AgentService",
        "ListThreadHistory",
        bind={"parent": "threads/{thread}"},
    ),
    Rule(
        "POST",
        "/v1/threads/{thread}/history",
        "AgentService",
        "ListThreadHistory",
        body="*",
        bind={"parent": "threads/{thread}"},
        operation="SearchThreadHistory",
    ),
    # AgentService: workflows and runs
    Rule("GET", "/v1/workflows", "AgentService", "ListWorkflows"),
    Rule("POST", "/v1/runs", "AgentService", "CreateRun", body="run"),
    Rule(
        "POST",
        "/v1/runs:stream",
        "AgentService",
        "CreateAndStreamRun",
        body="run",
        resumes=True,
        resumes_as_run=True,
    ),
    Rule("GET", "/v1/runs", "AgentService", "ListRuns"),
    Rule("GET", "/v1/queue", "AgentService", "GetRunQueue"),
    *_resource("runs", "run", "AgentService", get="GetRun", delete="DeleteRun"),
    Rule(
        "POST",
        "/v1/runs/{run}:cancel",
        "AgentService",
        "CancelRun",
        body="*",
        bind={"name": "runs/{run}"},
    ),
    Rule(
        "POST",
        "/v1/runs/{run}:resume",
        "AgentService",
        "ResumeRun",
        body="*",
        bind={"name": "runs/{run}"},
    ),
    Rule(
        "GET",
        "/v1/runs/{run}:stream",
        "AgentService",
        "StreamRun",
        bind={"name": "runs/{run}"},
        resumes=True,
    ),
    Rule(
        "POST",
        "/v1/runs/{run}:wait",
        "AgentService",
        "WaitRun",
        body="*",
        bind={"name": "runs/{run}"},
        # WaitRun answers by its own timeout (at most 600 s): the call may last that long.
        deadline=WAIT_DEADLINE_SECONDS,
        waits=True,
    ),
    # GitService (served by the agents service): what develop/code runs leave in git
    Rule("GET", "/v1/repositories", "GitService", "ListRepositories"),
    Rule("GET", "/v1/runs/{run}/diff", "GitService", "GetRunDiff", bind={"name": "runs/{run}"}),
    Rule(
        "POST",
        "/v1/runs/{run}:land",
        "GitService",
        "LandRun",
        body="*",
        bind={"name": "runs/{run}"},
    ),
    Rule(
        "POST",
        "/v1/runs/{run}:discard",
        "GitService",
        "DiscardRun",
        body="*",
        bind={"name": "runs/{run}"},
    ),
    Rule(
        "GET", "/v1/runs/{run}/steps", "AgentService", "ListRunSteps", bind={"parent": "runs/{run}"}
    ),
    Rule(
        "POST",
        "/v1/runs/{run}:rerun",
        "AgentService",
        "RerunRun",
        body="*",
        bind={"name": "runs/{run}"},
    ),
    Rule(
        "POST",
        "/v1/runs/{run}:fork",
        "AgentService",
        "ForkRun",
        body="*",
        bind={"name": "runs/{run}"},
    ),
    # CronService (served by the agents service): runs on a schedule, LangGraph Server's crons
    Rule("POST", "/v1/crons", "CronService", "CreateCron", body="cron"),
    Rule(
        "POST",
        "/v1/threads/{thread}/crons",
        "CronService",
        "CreateCron",
        body="cron",
        bind={"cron.thread": "threads/{thread}"},
        operation="CreateThreadCron",
    ),
    Rule("GET", "/v1/crons", "CronService", "ListCrons"),
    Rule("POST", "/v1/crons:search", "CronService", "ListCrons", body="*", operation="SearchCrons"),
    *_resource("crons", "cron", "CronService", get="GetCron", delete="DeleteCron"),
    Rule(
        "PATCH",
        "/v1/crons/{cron}",
        "CronService",
        "UpdateCron",
        body="cron",
        bind={"cron.name": "crons/{cron}"},
    ),
    Rule(
        "POST",
        "/v1/crons/{cron}:trigger",
        "CronService",
        "TriggerCron",
        body="*",
        bind={"name": "crons/{cron}"},
    ),
    # RagService
    Rule("POST", "/v1/documents", "RagService", "IngestDocument", body="*", uploads=True),
    Rule("GET", "/v1/documents", "RagService", "ListDocuments"),
    *_resource("documents", "document", "RagService", get="GetDocument", delete="DeleteDocument"),
    Rule(
        "GET",
        "/v1/documents/{document}/chunks",
        "RagService",
        "ListChunks",
        bind={"parent": "documents/{document}"},
    ),
    Rule("POST", "/v1/search", "RagService", "Search", body="*"),
)


@dataclass
class Match:
    rule: Rule
    variables: dict[str, str]


class RouteTable:
    """Finds the rule for a method and path, and the methods a path takes (for 405s)."""

    def __init__(self, rules: tuple[Rule, ...] = ROUTES) -> None:
        self.rules = rules
        seen: set[tuple[str, str]] = set()
        for rule in rules:
            key = (rule.method, rule.template)
            if key in seen:
                raise ValueError(f"duplicate route {rule.method} {rule.template}")
            seen.add(key)
            for name, value in rule.bind.items():
                for variable in _VARIABLE.findall(value):
                    if variable not in rule.variables:
                        raise ValueError(f"{rule.template}: {name} uses unknown {{{variable}}}")
            _ = rule.descriptor  # fail at start-up, not at the first request

    def match(self, method: str, path: str) -> Match | None:
        """The rule for `method` on `path`, with its path variables, or None."""
        for rule in self.rules:
            if rule.method == method and (found := rule.pattern.match(path)) is not None:
                return Match(rule, found.groupdict())
        return None

    def methods(self, path: str) -> tuple[str, ...]:
        """The methods `path` takes, in table order (empty: no such path)."""
        return tuple(r.method for r in self.rules if r.pattern.match(path) is not None)

    @property
    def all_methods(self) -> list[str]:
        return sorted({r.method for r in self.rules})

    def covered_rpcs(self) -> set[tuple[str, str]]:
        return {(rule.service, rule.rpc) for rule in self.rules}
