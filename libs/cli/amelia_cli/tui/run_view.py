"""One run, live: its events from the beginning (a `run` subscription: the gateway replays the
run, then follows it until it ends), tokens streaming into the output, nodes with their timings,
retrieved passages, the question of a paused run with approve / reject / a typed answer, cancel.

A gateway restart costs nothing: the socket subscribes again after the last sequence it
delivered, so every token is shown once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Input, Log, Static

from amelia_cli.tui.common import (
    ACTIVE,
    ConfirmScreen,
    LiveScreen,
    TabBar,
    TopBar,
    amelia,
    ask,
    short_id,
    shown_status,
    status_of,
    status_text,
    target_of,
    took,
    when,
)
from amelia_cli.tui.eventline import describe, passages_of, question_of, resumed_text
from amelia_cli.tui.gateway import ApiError
from amelia_cli.tui.passages import passage_text
from amelia_cli.tui.stream import StreamView

TERMINAL = {"run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled"}
NODE_MARK = {
    "pending": ("·", "dim"),
    "active": ("▶", "bold cyan"),
    "done": ("✓", "green"),
    "waiting": ("?", "bold yellow"),
    "error": ("✕", "bold red"),
    "stopped": ("■", "magenta"),
    # Never reached: skipped by a run that completed (a rejected plan's `planning`), not run by
    # one that failed or was cancelled; said in words, as the dashboard does.
    "skipped": ("–", "dim"),
    "notrun": ("–", "dim"),
}
NODE_WORDS = {"skipped": "skipped", "notrun": "not run"}
# How a run's nodes end with it: the one running or waiting, and the ones never reached.
ENDED_NODE = {"completed": "done", "failed": "error", "cancelled": "stopped"}
UNREACHED_NODE = {"completed": "skipped", "failed": "notrun", "cancelled": "notrun"}
APPROVE_WORDS = ("approve", "yes", "ok", "accept", "lgtm")
REJECT_WORDS = ("reject", "no", "deny", "decline")
QUESTION_KEYS = {"question", "message", "prompt", "text", "options", "choices"}
RETRY_SECONDS = 1.0


# The run's tabs: name → (title, key, the pane's id).
TABS = {
    "output": ("Output", "o", "run-output"),
    "activity": ("Activity", "v", "run-activity"),
    "passages": ("Passages", "p", "run-passages"),
    "result": ("Result", "j", "run-result-box"),
}
PANES = {tab: pane for tab, (_, _, pane) in TABS.items()}


def options_of(value: Any) -> list[Any]:
    if isinstance(value, dict):
        for key in ("options", "choices"):
            if isinstance(value.get(key), list):
                return list(value[key])
    return []


def tokens_used(usage: dict[str, Any]) -> str:
    """`12 in / 30 out` (proto JSON writes the counts as strings), or "" before any."""
    used_in, used_out = int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0)
    return f"{used_in} in / {used_out} out" if used_in or used_out else ""


def interrupted_used(usage: dict[str, Any]) -> str:
    """`11 in / 5 out`: of the run's tokens, the calls of nodes an interrupted attempt did not
    finish (they ran again, so the total is bigger than its nodes' — QA s26 H2); "" if none."""
    lost_in = int(usage.get("interruptedInputTokens") or 0)
    lost_out = int(usage.get("interruptedOutputTokens") or 0)
    return f"{lost_in} in / {lost_out} out" if lost_in or lost_out else ""


def tokens_facts(usage: dict[str, Any]) -> tuple[str, ...]:
    """The run's tokens as the head says them, longest first (it shows the first that fits):
    with the interrupted attempts' share, then without it (a line under the head says it)."""
    total, lost = tokens_used(usage), interrupted_used(usage)
    if not (total and lost):
        return (total,)
    return (f"{total}, of which {lost} in interrupted attempts", total)


def interrupted_line(usage: dict[str, Any]) -> str:
    """The line under a head with no room for the interrupted attempts' share."""
    total, lost = tokens_used(usage), interrupted_used(usage)
    return f"of its {total} tokens, {lost} in interrupted attempts" if total and lost else ""


def read_answer(text: str) -> Any:
    """A typed answer: JSON when it is JSON (`true`, `{"approved": false}`), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


WAITING = "waiting for tokens…"
WAITING_BEHIND = "waiting for the thread's run to end…"


def queued_behind_text(behind: str) -> str:
    """What a run waiting for its thread's run shows, in the CLI's and the dashboard's words."""
    return f"Queued behind {behind}: it starts once that run ends"


class RunScreen(LiveScreen):
    """`escape` goes back to the list; the run keeps going."""

    # Focused once composed (nested boxes may not exist yet in on_mount on a busy machine).
    AUTO_FOCUS = "#run-output"
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("a", "approve", "Approve"),
        Binding("r", "reject", "Reject"),
        Binding("i", "answer", "Answer"),
        Binding("c", "cancel", "Cancel"),
        Binding("d", "delete", "Delete"),
        # The tabs' titles show these keys.
        Binding("o", "tab('output')", "Output", show=False),
        Binding("v", "tab('activity')", "Activity", show=False),
        Binding("p", "tab('passages')", "Passages", show=False),
        Binding("j", "tab('result')", "Result (JSON)", show=False),
        Binding("e", "events", "Events"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.run_name = name
        self.run: dict[str, Any] = {}
        self.status = ""
        self.nodes: dict[str, list[str]] = {}  # node -> [state, duration]
        self.active_node = ""
        self.token_node = ""
        self.interrupt: dict[str, Any] | None = None
        self.passages: list[dict[str, Any]] = []
        self.ended = False
        self.events_seen = 0
        # Pick-ups after a worker stopped (run.resumed not by an answer): the dashboard's
        # "Retried N×". The run's `attempt` counts every pick-up, answers included.
        self.retries = 0
        # `r` asked for the reason the question requests: the answer box holds the rejection.
        self.rejecting = False
        # The run it waits behind while QUEUED on a busy thread (`run.queued`, `queuedBehind`).
        self.behind = ""

    def compose(self) -> ComposeResult:
        yield TopBar("Runs", f"run {short_id(self.run_name)}")
        yield Static("", id="run-head")
        # The interrupted attempts' share of the tokens, when the head has no room for it.
        yield Static("", id="run-interrupted", classes="hint")
        yield Static("", id="run-nodes")
        yield Static("", id="run-error", classes="error")
        # Wraps (the output's placeholder is one line): the names are whole at 80 columns.
        yield Static("", id="run-queued")
        with Vertical(id="question"):
            yield Static("", id="question-text")
            with VerticalScroll(id="question-details-box"):
                yield Static("", id="question-details")
            yield Static("", id="question-keys", classes="hint")
            # Not selected on focus: `r` opens it holding the rejection, the reason typed after.
            yield Input(
                placeholder="type an answer, Enter sends",
                compact=True,
                select_on_focus=False,
                id="answer",
            )
        with Horizontal(id="run-body"):
            # Tabs of our own: a bar and panes shown by a class. (Textual's TabbedContent
            # raised "No Tab with id" now and then on a busy machine, mounting its tabs.)
            with Vertical(id="run-main"):
                yield TabBar(TABS, id="run-tabbar")
                yield StreamView(WAITING, id="run-output", classes="pane -shown")
                yield Log(id="run-activity", max_lines=2000, classes="pane")
                yield VerticalScroll(id="run-passages", classes="pane")
                with VerticalScroll(id="run-result-box", classes="pane"):
                    yield Static("(when the run ends)", id="run-result")
            # From 120 columns on, the activity also shows beside the output.
            with Vertical(id="run-side"):
                yield Static("Activity", classes="side-title")
                yield Log(id="run-side-activity", max_lines=2000)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#question").display = False
        self.query_one("#run-error").display = False
        self.query_one("#run-queued").display = False
        self.query_one("#run-interrupted").display = False
        self._render_head()
        app = amelia(self)
        if app.live:
            self.run_worker(self._start(), group="load")

    @property
    def output(self) -> StreamView:
        return self.query_one("#run-output", StreamView)

    # -- loading ----------------------------------------------------------------------------

    async def _start(self) -> None:
        """Its events at once (tokens need nothing else), then the run (retried while the
        gateway is away) and its workflow's nodes, in the workflow's order."""
        app = amelia(self)
        # On a busy machine the boxes inside the tabs can be mounted after on_mount: events
        # are shown in them, so wait for the last one (Textual has no public event for it).
        while not self.query("#run-side-activity"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self.follow(
            run=self.run_name,
            since="beginning",
            on_event=self.apply,
            on_end=self._ended,
            on_error=self._stream_error,
        )
        await self._refresh_until_loaded()
        workflow = self.run.get("workflow")
        if workflow:
            try:
                found = {w["name"]: w for w in await ask(self, app.api.list_workflows())}
            except ApiError:
                found = {}
            order = list(found.get(workflow, {}).get("nodes", []))
            seen = self.nodes
            self.nodes = {node: seen.get(node, ["pending", ""]) for node in order}
            self.nodes.update((node, state) for node, state in seen.items() if node not in order)
            if self.status in ENDED_NODE:
                self._end_nodes(self.status)
            self._render_nodes()

    async def _refresh_run(self) -> bool:
        app = amelia(self)
        try:
            run = await ask(self, app.api.get_run(self.run_name))
        except ApiError as exc:
            self.notify(str(exc), severity="error", timeout=4)
            return exc.code == "NOT_FOUND"
        self.show_run(run)
        return True

    async def _refresh_until_loaded(self) -> None:
        while True:
            if await self._refresh_run():
                return
            await asyncio.sleep(RETRY_SECONDS)

    def _ended(self) -> None:
        self.ended = True
        self.run_worker(self._refresh_until_loaded(), group="load")

    def _stream_error(self, message: str, final: bool) -> None:
        self.notify(
            message if not final else f"the run's stream stopped: {message}",
            severity="error" if final else "warning",
            timeout=4,
        )

    # -- rendering --------------------------------------------------------------------------

    def show_run(self, run: dict[str, Any]) -> None:
        """The run as the gateway returns it (GetRun). Once its events are coming they say the
        status (this snapshot may be older than the last of them), unless the run has ended."""
        self.run = run
        if status_of(run) == "queued":
            self.behind = str(run.get("queuedBehind", ""))
        if not self.events_seen or not self.status or status_of(run) in TERMINAL.values():
            self.set_status(status_of(run))
        self._show_waiting()
        if self.status == "paused" and self.interrupt is None and run.get("interrupt"):
            self.show_question(run["interrupt"])
        error = self.query_one("#run-error", Static)
        error.display = bool(run.get("error"))
        error.update(f"{self.status}: {run.get('error', '')}")
        result = run.get("output")
        if result:
            self.query_one("#run-result", Static).update(
                json.dumps(result, indent=2, ensure_ascii=False)
            )
        self._render_head()

    def set_status(self, status: str) -> None:
        if status and status != self.status:
            self.status = status
            self._render_head()
            self.refresh_bindings()
            self._show_waiting()

    def _show_waiting(self) -> None:
        """Before its first token: what the run waits for (its thread's run, or tokens)."""
        queued = self.status == "queued" and bool(self.behind)
        line = self.query_one("#run-queued", Static)
        line.display = queued
        line.update(queued_behind_text(self.behind) if queued else "")
        text = WAITING_BEHIND if queued else WAITING
        if self.output.placeholder != text:
            self.output.placeholder = text
            self.output.refresh()

    def _render_head(self) -> None:
        """`id target status` and the facts that fit on one line, most telling first."""
        run = self.run
        head = Text.assemble(
            (f"{short_id(self.run_name)} ", "bold"),
            (target_of(run) or "…", "cyan"),
            "  ",
            status_text(shown_status(run, self.status) if self.status else "…"),
        )
        created, started = when(run.get("createTime")), when(run.get("startTime"))
        facts: list[tuple[str, tuple[str, ...]]] = [
            ("took", (took(run.get("duration")),)),
            ("tokens", tokens_facts(run.get("usage") or {})),
            ("retried", (f"{self.retries}×" if self.retries else "",)),
            ("created", (created,)),
            ("started", (started if started != created else "",)),
        ]
        room = self.size.width - 2 if self.size.width else 1000
        for label, values in facts:
            for value in values:
                fact = Text.assemble("  ", (label, "dim"), " ", value)
                if value and head.cell_len + fact.cell_len <= room:
                    head.append_text(fact)
                    break
        self.query_one("#run-head", Static).update(head)
        usage = run.get("usage") or {}
        line = (
            "" if f"of which {interrupted_used(usage)}" in head.plain else interrupted_line(usage)
        )
        below = self.query_one("#run-interrupted", Static)
        below.display = bool(line)
        below.update(line)

    def on_resize(self) -> None:
        self._render_head()

    def _render_nodes(self) -> None:
        line = Text()
        for node, (state, duration) in self.nodes.items():
            mark, style = NODE_MARK.get(state, ("·", ""))
            if line:
                line.append("  ")
            line.append(f"{mark} {node}", style=style)
            if state in NODE_WORDS:
                line.append(f" {NODE_WORDS[state]}", style="dim")
            elif duration and state != "waiting":
                line.append(f" {duration}", style="dim")
        self.query_one("#run-nodes", Static).update(line or Text("no nodes yet", style="dim"))

    def _end_nodes(self, status: str) -> None:
        """The run ended with `status`: its running or waiting node ended with it, the nodes
        it never reached are skipped (it completed) or not run."""
        for entry in self.nodes.values():
            if entry[0] in ("active", "waiting"):
                entry[0] = ENDED_NODE[status]
            elif entry[0] == "pending":
                entry[0] = UNREACHED_NODE[status]
        self._render_nodes()

    def set_node(self, node: str, state: str, duration: str = "") -> None:
        if not node:
            return
        entry = self.nodes.setdefault(node, ["pending", ""])
        entry[0] = state
        if duration:
            entry[1] = duration
        self._render_nodes()

    def show_question(self, interrupt: dict[str, Any] | None) -> None:
        self.interrupt = interrupt
        panel = self.query_one("#question")
        panel.display = interrupt is not None
        self.refresh_bindings()
        if interrupt is None:
            self.rejecting = False
            if self.focused is self.query_one("#answer"):
                self.output.focus()
            return
        value = interrupt.get("value")
        where = f" (node {interrupt['node']})" if interrupt.get("node") else ""
        self.query_one("#question-text", Static).update(
            Text.assemble(("? ", "bold yellow"), (question_of(value), "bold"), (where, "dim"))
        )
        details = Text()
        if isinstance(value, dict):
            for key, item in value.items():
                if key in QUESTION_KEYS:
                    continue
                body = (
                    item
                    if isinstance(item, str)
                    else json.dumps(item, indent=2, ensure_ascii=False)
                )
                details.append(f"{key.replace('_', ' ')}\n", style="bold dim")
                details.append(f"{body.strip()}\n")
        box = self.query_one("#question-details-box")
        box.display = bool(details)
        self.query_one("#question-details", Static).update(details)
        keys = Text()
        for key, action in (("a", "approve"), ("r", "reject")):
            option = self._option(action)
            if option is not None:
                said = "" if str(option).lower() == action else f" ({option})"
                keys.append_text(Text.assemble((key, "bold"), f" {action}{said}   "))
        keys.append_text(Text.assemble(("i", "bold"), " type an answer"))
        if self.rejecting:
            keys = Text.assemble(
                ("why? ", "bold"),
                "the reason after the rejection; ",
                ("Enter", "bold"),
                " sends it, ",
                ("Esc", "bold"),
                " cancels",
            )
        self.query_one("#question-keys", Static).update(keys)

    def _wants_reason(self) -> bool:
        """Whether the question asks for a reason (the plan's: "'reject' with a reason")."""
        value = (self.interrupt or {}).get("value")
        return "reason" in question_of(value).lower()

    def _option(self, which: str) -> Any:
        """The option that approves (or rejects): by its word, else the first (second) one."""
        options = options_of((self.interrupt or {}).get("value"))
        words = APPROVE_WORDS if which == "approve" else REJECT_WORDS
        for option in options:
            if isinstance(option, str) and option.strip().lower().startswith(words):
                return option
        index = 0 if which == "approve" else 1
        return options[index] if len(options) > index else None

    def add_passages(self, found: list[dict[str, Any]]) -> None:
        box = self.query_one("#run-passages", VerticalScroll)
        start = len(self.passages) + 1
        self.passages += found
        box.mount_all(
            Static(passage_text(start + i, hit), classes="passage") for i, hit in enumerate(found)
        )
        self.query_one(TabBar).counts = {"passages": len(self.passages)}

    # -- events -----------------------------------------------------------------------------

    def apply(self, event: dict[str, Any], sequence: int) -> None:
        """One event of the run, in sequence order (replayed or live)."""
        self.events_seen += 1
        kind = str(event.get("type", ""))
        data = event.get("data") or {}
        if kind == "run.token":
            if self.active_node != self.token_node:
                # Tokens of another node (plan: discovery, then design…) start a section.
                if self.output.chunks:
                    self.output.marker(self.active_node)
                self.token_node = self.active_node
            self.output.append(str(data.get("text", "")))
            return  # tokens are not activity
        if kind == "run.queued":
            self.behind = str(data.get("behind", ""))
            self.set_status("queued")
            self._show_waiting()
        elif kind in ("agent.started", "workflow.started"):
            self.set_status("running")
        elif kind == "run.node.started":
            self.active_node = str(data.get("node", ""))
            self.set_node(self.active_node, "active")
            if self.status not in TERMINAL.values():
                self.set_status("running")
        elif kind == "run.node.finished":
            state = (
                "error" if data.get("error") else "waiting" if data.get("interrupted") else "done"
            )
            self.set_node(str(data.get("node", "")), state, took(data.get("duration_seconds")))
        elif kind == "run.interrupted":
            self.set_status("paused")
            self.set_node(str(data.get("node", "")), "waiting")
            self.show_question({"node": data.get("node", ""), "value": data.get("value")})
        elif kind == "run.resumed":
            self.set_status("running")
            if data.get("reason") and data.get("reason") != "answer":
                # Picked up again after an interruption: an answer is not a retry.
                self.retries += 1
                self._render_head()
                running = (
                    self.active_node
                    if self.nodes.get(self.active_node, ("",))[0] == "active"
                    else ""
                )
                self.output.marker(resumed_text(data, running))
            self.show_question(None)
        elif kind == "run.retrieval":
            self.add_passages(passages_of(data))
        elif kind in TERMINAL:
            self.set_status(TERMINAL[kind])
            self.show_question(None)
            self._end_nodes(TERMINAL[kind])
        line = f"{sequence:>5} {kind:<19} {describe(event)}"
        self.query_one("#run-activity", Log).write_line(line)
        self.query_one("#run-side-activity", Log).write_line(line)

    # -- actions ----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        paused = self.interrupt is not None
        if action in ("approve", "reject"):
            return paused and self._option(action) is not None
        if action == "answer":
            return paused
        if action == "cancel":
            return self.status in ACTIVE or not self.status
        if action == "delete":
            return self.status in TERMINAL.values()
        return True

    def action_back(self) -> None:
        if self.focused is self.query_one("#answer"):
            if self.rejecting:  # the rejection is not sent
                self.rejecting = False
                self.query_one("#answer", Input).value = ""
                self.show_question(self.interrupt)
            self.output.focus()
            return
        self.dismiss()

    def action_tab(self, tab: str) -> None:
        for pane in self.query(".pane"):
            pane.set_class(pane.id == PANES[tab], "-shown")
        self.query_one(TabBar).active = tab
        self.query_one(f"#{PANES[tab]}").focus()

    def action_approve(self) -> None:
        self.send_answer(self._option("approve"))

    def action_reject(self) -> None:
        """Reject; when the question asks why, first ask for the reason (as `amelia run`'s
        typed answer gives it): the answer box opens with the rejection, the reason is typed
        after it, Enter sends, Esc cancels."""
        option = self._option("reject")
        if not (isinstance(option, str) and self._wants_reason()):
            self.send_answer(option)
            return
        self.rejecting = True
        self.show_question(self.interrupt)
        box = self.query_one("#answer", Input)
        box.value = f"{option}: "
        box.cursor_position = len(box.value)
        box.focus()

    def action_answer(self) -> None:
        self.query_one("#answer", Input).focus()

    @on(Input.Submitted, "#answer")
    def _typed(self, event: Input.Submitted) -> None:
        option = self._option("reject")
        if self.rejecting and event.value.strip().rstrip(":").strip() == str(option):
            # No reason typed: the rejection alone, as the dashboard and `amelia run` send it
            # (the reason is optional; the workflow keeps `reason: ''`). QA s26: refused here.
            self.send_answer(option)
            return
        if event.value.strip():
            self.send_answer(read_answer(event.value))

    def send_answer(self, answer: Any) -> None:
        if answer is None or self.interrupt is None:
            return
        # One request_id per answer sent: the service takes it once (see ResumeRunRequest).
        request_id = str(uuid.uuid4())
        self.run_worker(self._resume(answer, request_id), exclusive=True, group="answer")

    async def _resume(self, answer: Any, request_id: str) -> None:
        app = amelia(self)
        try:
            run = await ask(self, app.api.resume_run(self.run_name, answer, request_id))
        except ApiError as exc:
            self.notify(str(exc), severity="error")
            return
        self.query_one("#answer", Input).value = ""
        self.show_question(None)
        self.set_status(status_of(run))
        self.notify("answer sent; the run continues")

    def action_cancel(self) -> None:
        app = amelia(self)
        app.confirm_cancel(self.run_name)

    def action_delete(self) -> None:
        """Ask, then delete the ended run (its thread's state and its events stay) and go back."""

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(self._delete(), exclusive=True, group="delete")

        # One line in the dialog's 52 cells (its events stay in the event log too).
        question = f"Delete run {short_id(self.run_name)}? Its thread keeps its state."
        self.app.push_screen(ConfirmScreen(question), answered)

    async def _delete(self) -> None:
        app = amelia(self)
        try:
            await ask(self, app.api.delete_run(self.run_name))
        except ApiError as exc:
            self.notify(str(exc), severity="error")
            return
        app.notify(f"deleted {self.run_name}")
        self.dismiss()

    def action_events(self) -> None:
        app = amelia(self)
        app.show_events(subject=self.run_name, since="beginning")
