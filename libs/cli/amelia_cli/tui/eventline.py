"""One event as one line a person reads, for `amelia events` and the TUI's event pane (and
the filter both take).

Both get events from the gateway as proto JSON, so one function says what an event means in a
few words, and one lays the line out to a width:

    12:00:01    41 run.node.finished   runs/0b9f1c2e  design finished in 0.31 s
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from amelia_common.json_numbers import whole_numbers

# A resource id long enough that its first 8 characters say which one (UUIDs, hex digests).
_LONG_ID = re.compile(r"^([0-9a-fA-F]{8})[0-9a-fA-F-]{8,}$")
# The longest event type, `run.webhook.delivered`: every row's subject starts in one column.
TYPE_WIDTH = 21
SUBJECT_SHORT_WIDTH = 14
TERMINAL_RUN_TYPES = ("run.completed", "run.failed", "run.cancelled")
# Data keys the line already shows (the subject) or that say nothing on their own.
_SAID_ELSEWHERE = {"run", "task", "attempt", "target"}


def compact(value: Any, limit: int = 200) -> str:
    """JSON on one line, cut to `limit` characters."""
    text = (
        value
        if isinstance(value, str)
        else json.dumps(whole_numbers(value), ensure_ascii=False, default=str)
    )
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def fit(text: str, width: int) -> str:
    """`text` cut to `width` characters with an ellipsis when it is longer."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


def seconds(value: Any) -> str:
    """`0.312` or a proto Duration `"0.312s"` as `0.31 s` / `2 min 5 s`."""
    if value in (None, ""):
        return ""
    try:
        total = float(str(value).removesuffix("s"))
    except ValueError:
        return str(value)
    if total < 60:
        return f"{total:.2f} s" if total < 10 else f"{total:.1f} s"
    minutes, rest = divmod(round(total), 60)
    return f"{minutes} min {rest} s"


def short_subject(subject: str) -> str:
    """`runs/0b9f1c2e-…` → `runs/0b9f1c2e`; other subjects as they are."""
    collection, _, ident = subject.partition("/")
    match = _LONG_ID.match(ident)
    return f"{collection}/{match.group(1)}" if match else subject


def local_time(value: str) -> str:
    """An RFC 3339 time as local `HH:MM:SS` (the date too when it is not today)."""
    if not value:
        return ""
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return value
    today = dt.datetime.now().astimezone().date()
    return when.strftime("%H:%M:%S" if when.date() == today else "%m-%d %H:%M:%S")


def passages_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The passages a `run.retrieval` event carries."""
    for key in ("passages", "hits"):
        found = data.get(key)
        if isinstance(found, list):
            return [p for p in found if isinstance(p, dict)]
    return []


def question_of(value: Any) -> str:
    """The question of a paused run: a string, or an object's `question`/`message`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("question", "message", "prompt", "text"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return compact(value)


def resumed_text(data: dict[str, Any], node: str = "", answered_here: bool = False) -> str:
    """A `run.resumed` event as what happened: an answer is not a retry, and a run picked up
    again after an interruption — its worker stopped, or stopped its pick-up because NATS or
    PostgreSQL did not answer (QA s25: "after its worker stopped" was said of a NATS freeze) —
    continues from its last checkpoint (`node`, the one it was in, runs again); only a run
    interrupted before its first checkpoint starts again."""
    reason = data.get("reason") or "answer"
    if reason == "answer":
        return f"resumed with {'your' if answered_here else 'the'} answer"
    if reason == "redelivered":
        again = f"; {node} runs again" if node else ""
        return (
            f"picked up again after an interruption — it continues from its last checkpoint{again}"
        )
    if reason == "start":
        return "picked up again after an interruption before its first checkpoint — it starts again"
    return f"resumed ({reason})"


def waiting_text(data: dict[str, Any]) -> str:
    """A `run.model.waiting` event: its one line (the server, why, how long it is waited for)."""
    message = data.get("message")
    if isinstance(message, str) and message:
        return message
    server = data.get("server") or "the model server"
    return f"{server} is unreachable ({data.get('error', '')}); trying again"


def cut_text(data: dict[str, Any]) -> str:
    """A `run.model.cut` event: the reply stopped at max_tokens, so the answer is not whole
    (the service's one line when it wrote one)."""
    message = data.get("message")
    if isinstance(message, str) and message:
        return message
    reason = data.get("finish_reason") or "length"
    return (
        f"model reply cut at max_tokens {whole_numbers(data.get('max_tokens', '?'))} "
        f"(finish_reason {reason}): the answer is not whole"
    )


def retry_text(data: dict[str, Any]) -> str:
    """A `run.retry` event: which try of how many, when, and the error that caused it."""
    delay = f" in {seconds(data.get('delay_seconds'))}" if data.get("delay_seconds") else ""
    count = (
        f" ({whole_numbers(data.get('retry'))} of {whole_numbers(data['of'])})"
        if "of" in data
        else ""
    )
    return f"trying again{count}{delay}: {compact(data.get('error', ''), 160)}"


def describe(event: dict[str, Any]) -> str:
    """What an event says, in a few words (its data, summarised by type)."""
    kind = str(event.get("type", ""))
    data = event.get("data") or {}
    if not isinstance(data, dict):
        return compact(data)
    node = str(data.get("node", ""))
    if kind == "run.token":
        return json.dumps(str(data.get("text", "")), ensure_ascii=False)
    if kind == "run.node.started":
        return f"{node} started"
    if kind == "run.node.finished":
        took = seconds(data.get("duration_seconds"))
        if data.get("error"):
            outcome = f"failed: {data['error']}"
        else:
            outcome = "paused" if data.get("interrupted") else "finished"
        return f"{node} {outcome}" + (f" in {took}" if took else "")
    if kind == "run.interrupted":
        return f"paused at {node or 'a node'}: {question_of(data.get('value'))}"
    if kind == "run.resumed":
        return resumed_text(data)
    if kind == "run.model.waiting":
        return waiting_text(data)
    if kind == "run.model.cut":
        return cut_text(data)
    if kind == "run.retry":
        return retry_text(data)
    if kind == "run.retrieval":
        found = passages_of(data)
        return f"{len(found)} passage{'' if len(found) == 1 else 's'} for {compact(data.get('query', ''), 60)}"
    if kind == "run.tool.called":
        return f"{data.get('tool', '')} {compact(data.get('args', data.get('arguments', '')), 80)}"
    if kind == "run.tool.result":
        return (
            f"{data.get('tool', '')} → {compact(data.get('result', data.get('exit_code', '')), 80)}"
        )
    if kind == "run.failed":
        return f"failed: {data.get('error', '')}"
    if kind == "run.cancelled":
        reason = data.get("reason")  # "cancelled" when none was given
        return "cancelled" + (f": {reason}" if reason and reason != "cancelled" else "")
    if kind == "run.completed":
        return "completed"
    if kind.endswith(".started") and data.get("target"):
        fork = data.get("forked_from")
        if isinstance(fork, dict):
            return f"{data['target']} started, forked from {fork.get('run')} at checkpoint {fork.get('checkpoint')}"
        return f"{data['target']} started"
    if kind.startswith("document.") and data.get("title"):
        rest = {k: v for k, v in data.items() if k in ("chunk_count", "done", "total", "error")}
        return f"{data['title']}" + (f" {compact(rest)}" if rest else "")
    rest = {k: v for k, v in data.items() if k not in _SAID_ELSEWHERE}
    if data.get("attempt", 1) != 1:
        rest["attempt"] = int(data["attempt"])
    return compact(rest) if rest else ""


def event_filter(types: list[str], subject: str) -> dict[str, Any]:
    """Type patterns as typed (repeated, comma- or space-separated) and a subject, as the
    EventFilter the gateway takes (`{}` for every event)."""
    patterns = [p for item in types for p in re.split(r"[,\s]+", item) if p]
    flt: dict[str, Any] = {}
    if patterns:
        flt["types"] = patterns
    if subject.strip():
        flt["subject"] = subject.strip()
    return flt


def event_line(event: dict[str, Any], width: int = 80) -> str:
    """`time  sequence type subject  summary`, at most `width` characters.

    Subjects are shown whole when that leaves the summary 30 characters, else shortened to
    their collection and the first 8 characters of their id.
    """
    sequence = str(event.get("sequence", ""))
    kind = str(event.get("type", ""))
    subject = str(event.get("subject", "")) or "-"
    head = f"{local_time(str(event.get('time', ''))):>8} {sequence:>5} {kind:<{TYPE_WIDTH}} "
    room = width - len(head)
    if len(subject) + 2 > room - 30:
        subject = f"{short_subject(subject):<{SUBJECT_SHORT_WIDTH}}"
    line = f"{head}{subject} {describe(event)}"
    return fit(line, width)
