"""Fixed data for the snapshot tests: what the gateway returns and pushes (proto JSON), with ids,
times and durations chosen once, so every frame is the same on every machine and every day."""

from __future__ import annotations

from typing import Any

DAY = "2020-01-31T12:00"  # long past: frames show the date, never "today"


def run_name(n: int) -> str:
    return f"runs/0b9f1c2e-{n:04d}-4000-8000-00000000000{n}"


def at(second: int) -> str:
    return f"{DAY}:{second:02d}Z"


def run(
    n: int,
    target: str,
    status: str,
    *,
    seconds: str = "",
    tokens: int = 0,
    error: str = "",
    **extra: Any,
) -> dict[str, Any]:
    key = "agent" if target.startswith("agents/") else "workflow"
    value: dict[str, Any] = {
        "name": run_name(n),
        key: target if key == "agent" else f"workflows/{target}",
        "thread": f"threads/5a5a5a5a-{n:04d}-4000-8000-000000000000",
        "status": f"RUN_STATUS_{status.upper()}",
        "error": error,
        "createTime": at(n),
        "startTime": at(n) if status != "queued" else None,
        "duration": seconds,
        "usage": {"inputTokens": str(tokens * 3), "outputTokens": str(tokens)},
        "attempt": 1,
        "output": {},
        "input": {"message": "Add a dark theme"},
    }
    value.update(extra)
    return {k: v for k, v in value.items() if v is not None}


RUNS = [
    run(9, "plan", "paused", tokens=27),
    run(8, "echo", "running", tokens=120),
    run(7, "chat", "completed", seconds="2.480s", tokens=64),
    run(6, "agents/greeter", "completed", seconds="0.310s", tokens=7),
    run(5, "plan", "completed", seconds="14.020s", tokens=57),
    run(
        4,
        "chat",
        "failed",
        seconds="4.020s",
        error="local: the local model server at http://127.0.0.1:8081/v1 is not answering",
    ),
    run(3, "echo", "cancelled", seconds="1.500s", tokens=31, error="cancelled from the TUI"),
    run(2, "code", "queued"),
]


def event(
    sequence: int, kind: str, subject: str, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": f"e{sequence:06d}",
        "type": kind,
        "source": "amelia.agents",
        "subject": subject,
        "time": at(sequence % 60),
        "data": data or {},
        "sequence": str(sequence),
        "correlationId": subject,
    }


def tokens(start: int, subject: str, node: str, text: str) -> list[dict[str, Any]]:
    """`text` as word tokens, numbered from `start`."""
    words = [w + " " for w in text.split(" ")]
    words[-1] = words[-1].rstrip(" ")
    return [
        event(start + i, "run.token", subject, {"node": node, "text": word})
        for i, word in enumerate(words)
    ]


def streamed_node(
    subject: str, node: str, text: str, *, started: int, finished: int, seconds: float
) -> list[dict[str, Any]]:
    """A node that streamed `text`: its start (sequence `started`), its tokens, its end."""
    return [
        event(started, "run.node.started", subject, {"node": node}),
        *tokens(started + 1, subject, node, text),
        event(finished, "run.node.finished", subject, {"node": node, "duration_seconds": seconds}),
    ]


DESIGN = (
    "Request:\nAdd a dark theme to the settings page\n\nDesign:\n"
    "- a theme switch stored with the user's settings\n"
    "- CSS variables for every colour, one set per theme\n"
    "- contrast checked against WCAG AA"
)
QUESTION = (
    "Approve this design so the plan can be written? Answer 'approve' (optionally with "
    "feedback) or 'reject' with a reason."
)


def paused_plan() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A plan waiting for approval: its run and its events so far."""
    name = run_name(9)
    events = [
        event(101, "workflow.started", name, {"target": "plan", "attempt": 1}),
        *streamed_node(
            name,
            "discovery",
            "Goal: a dark theme. Users: everyone at night.",
            started=102,
            finished=112,
            seconds=0.41,
        ),
        *streamed_node(name, "design", DESIGN, started=113, finished=160, seconds=0.87),
        event(161, "run.node.started", name, {"node": "approval"}),
        event(
            162,
            "run.node.finished",
            name,
            {"node": "approval", "duration_seconds": 0.02, "interrupted": True},
        ),
        event(
            163,
            "run.interrupted",
            name,
            {
                "node": "approval",
                "value": {"question": QUESTION, "design": DESIGN, "options": ["approve", "reject"]},
            },
        ),
    ]
    return RUNS[0], events


PASSAGES = [
    {
        "document": "documents/7e7e7e7e-0001-4000-8000-000000000001",
        "document_title": "zebras.md",
        "heading_path": ["Zebra migration"],
        "start_offset": 0,
        "end_offset": 192,
        "score": 0.912,
        "content": "Every year the zebras of the Serengeti walk north to the Masai Mara, "
        "following the rains and the fresh grass. The herds cross the Mara river, where "
        "crocodiles wait for them.",
    },
    {
        "document": "documents/7e7e7e7e-0001-4000-8000-000000000001",
        "document_title": "zebras.md",
        "heading_path": ["Zebra migration", "Stripes"],
        "start_offset": 194,
        "end_offset": 277,
        "score": 0.644,
        "content": "No two zebras have the same stripes; the pattern confuses biting flies.",
    },
]


def completed_chat() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A chat run that retrieved passages and answered."""
    name = run_name(7)
    answer = "According to [1], the herds cross the Mara river, where crocodiles wait."
    events = [
        event(201, "workflow.started", name, {"target": "chat", "attempt": 1}),
        event(202, "run.node.started", name, {"node": "retrieve"}),
        event(
            203,
            "run.retrieval",
            name,
            {"query": "Which river do the zebras cross?", "passages": PASSAGES},
        ),
        event(204, "run.node.finished", name, {"node": "retrieve", "duration_seconds": 0.12}),
        *streamed_node(name, "respond", answer, started=205, finished=230, seconds=2.3),
        event(231, "workflow.completed", name, {"output": {"message": answer}}),
        event(232, "run.completed", name, {}),
    ]
    return {**RUNS[2], "output": {"message": answer}}, events


EVENTS = [
    event(301, "workflow.started", run_name(8), {"target": "echo", "attempt": 1}),
    event(302, "run.node.started", run_name(8), {"node": "echo"}),
    event(303, "run.token", run_name(8), {"text": "hello "}),
    event(
        304,
        "document.uploaded",
        "documents/7e7e7e7e-0001-4000-8000-000000000001",
        {"title": "zebras.md"},
    ),
    event(
        305,
        "document.progress",
        "documents/7e7e7e7e-0001-4000-8000-000000000001",
        {"done": 1, "total": 2},
    ),
    event(
        306,
        "document.indexed",
        "documents/7e7e7e7e-0001-4000-8000-000000000001",
        {"title": "zebras.md"},
    ),
    event(307, "run.node.finished", run_name(8), {"node": "echo", "duration_seconds": 0.52}),
    event(308, "workflow.completed", run_name(8), {"output": {"message": "hello"}}),
    event(309, "run.completed", run_name(8), {}),
    event(310, "run.interrupted", run_name(9), {"node": "approval", "value": QUESTION}),
    event(311, "run.failed", run_name(4), {"error": "local model server is not answering"}),
    event(312, "system.warning", "", {"message": "NATS reconnected"}),
]

DOCUMENTS = [
    {
        "name": "documents/7e7e7e7e-0001-4000-8000-000000000001",
        "title": "zebras.md",
        "type": "DOCUMENT_TYPE_MARKDOWN",
        "chunkCount": 2,
        "sizeBytes": "278",
        "updateTime": at(10),
    },
    {
        "name": "documents/7e7e7e7e-0002-4000-8000-000000000002",
        "title": "postgresql-15-manual.pdf",
        "type": "DOCUMENT_TYPE_PDF",
        "chunkCount": 4120,
        "sizeBytes": "12873402",
        "updateTime": at(20),
    },
]

HITS = [
    {
        "document": p["document"],
        "documentTitle": p["document_title"],
        "headingPath": p["heading_path"],
        "startOffset": p["start_offset"],
        "endOffset": p["end_offset"],
        "score": p["score"],
        "content": p["content"],
    }
    for p in PASSAGES
]

WORKFLOWS = {
    "workflows/chat": {
        "name": "workflows/chat",
        "inputSchema": {
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": {"type": "string"},
                "model": {"type": "string"},
                "context_sources": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
    "workflows/echo": {"name": "workflows/echo"},
    "workflows/plan": {"name": "workflows/plan"},
}
AGENTS = {"agents/greeter": {"name": "agents/greeter"}}


# -- threads ---------------------------------------------------------------------------------

THREAD = "threads/5a5a0007-0000-4000-8000-000000000000"


def thread(n: int, runs: int, preview: str, status: str, latest: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": f"threads/5a5a{n:04d}-0000-4000-8000-000000000000",
        "runCount": runs,
        "createTime": at(n),
        "updateTime": at(n + 20),
        "preview": preview,
        "status": f"THREAD_STATUS_{status.upper()}",
        "latestRun": {"name": latest["name"], "status": latest["status"]},
    }


THREADS = [
    thread(9, 1, "Add a dark theme", "interrupted", RUNS[0]),
    thread(8, 1, "line 1 of the echo", "busy", RUNS[1]),
    thread(7, 2, "What is a good name for a cat that likes to sit on keyboards?", "idle", RUNS[2]),
    thread(6, 1, "Hello", "error", RUNS[5]),
]
CAT = "What is a good name for a cat that likes to sit on keyboards?"
DOG = "And one for a dog that chews cables?"
HAMSTER = "A name for a hamster?"


def checkpoint(
    n: int,
    step: int,
    source: str,
    next_nodes: list[str],
    parent: int | None,
    messages: list[dict[str, str]],
    run_n: int | None = None,
    wrote: str = "",
) -> dict[str, Any]:
    """A ThreadState of the chat thread: checkpoint `n`, its parent, what its task wrote."""
    return {
        "thread": THREAD,
        "checkpoint": f"1f1ef047-{n:04d}-6000-8000-000000000000",
        "parentCheckpoint": ""
        if parent is None
        else f"1f1ef047-{parent:04d}-6000-8000-000000000000",
        "values": {
            "messages": messages,
            "context": [],
            "request": {"message": messages[-1]["content"]},
        },
        "next": next_nodes,
        "tasks": [{"node": node, "update": None} for node in next_nodes],
        "metadata": {"source": source, "step": step},
        "step": step,
        "run": run_name(run_n) if run_n else "",
        "createTime": at(n),
    }


def _turns(*texts: str) -> list[dict[str, str]]:
    turns = []
    for text in texts:
        turns += [{"role": "user", "content": text}, {"role": "assistant", "content": text}]
    return turns


# Newest first: the first run (checkpoints 1-3), the second (4-6), then an edit branching from
# checkpoint 3 (the first run's end).
THREAD_HISTORY = [
    checkpoint(7, 2, "update", [], 3, [*_turns(CAT), {"role": "user", "content": HAMSTER}]),
    checkpoint(6, 4, "loop", [], 5, _turns(CAT, DOG), 10),
    checkpoint(5, 3, "loop", ["respond"], 4, [*_turns(CAT), {"role": "user", "content": DOG}], 10),
    checkpoint(4, 2, "input", ["__start__"], 3, _turns(CAT), 10),
    checkpoint(3, 1, "loop", [], 2, _turns(CAT), 7),
    checkpoint(2, 0, "loop", ["respond"], 1, [{"role": "user", "content": CAT}], 7),
    checkpoint(1, -1, "input", ["__start__"], None, [{"role": "user", "content": CAT}], 7),
]
# What each checkpoint's task wrote (its child's writer): respond after 2 and 5, __start__ after 1, 4.
for _state in THREAD_HISTORY:
    for _task in _state["tasks"]:
        _task["update"] = {"written": True}
THREAD_RUNS = [
    run(10, "chat", "completed", seconds="0.410s", tokens=12, thread=THREAD),
    run(7, "chat", "completed", seconds="2.480s", tokens=64, thread=THREAD),
]
