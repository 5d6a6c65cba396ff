"""One thread, as LangGraph Studio shows it: its current state (values, `next` nodes, the question
waiting), its conversation (the state's `messages`) and its history (checkpoints newest first,
branches marked), with the moves Studio has: answer the question, a new run on the thread,
continue it (a run without input), edit the state, branch from a picked checkpoint, open a run.

It reloads (debounced) when one of the thread's runs moves (a node finished, a pause, an end)
or a run starts, and after a reconnect: the socket's lifecycle events, as the lists do. What the
gateway refuses or cannot answer is said on the screen.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable
from typing import Any

from rich.console import Group
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Input, Static

from amelia_cli.tui.common import (
    ACTIVE,
    PagedScreen,
    RowTable,
    TabBar,
    TopBar,
    amelia,
    ask,
    cursor_key,
    first_pages,
    short_id,
    status_of,
    status_text,
    target_of,
    when,
)
from amelia_cli.tui.gateway import ApiError
from amelia_cli.tui.run_view import options_of, read_answer
from amelia_cli.tui.runs import LIFECYCLE
from amelia_cli.tui.start import StartRunScreen
from amelia_cli.tui.thread_edit import StateEditScreen
from amelia_cli.tui.thread_meta import MetadataEditScreen
from amelia_cli.tui.threadstate import (
    branches_of,
    conversation_of,
    conversation_text,
    flow_of,
    plural,
    questions_of,
    source_of,
    values_text,
)

HISTORY_PAGE = 50
RUNS_KEPT = 50  # the thread's newest runs, whose events are a reason to reload
# name → (title, key, the pane's id)
TABS = {
    "state": ("State", "s", "thread-state"),
    "messages": ("Messages", "m", "thread-messages"),
    "history": ("History", "h", "thread-history"),
}
HISTORY_COLUMNS = [
    ("mark", " "),
    ("step", "Step"),
    ("source", "Source"),
    ("flow", "Writes → next"),
    ("saved", "Saved"),
    ("run", "Run"),
    ("parent", "Parent"),
]
FORK_MARK = "⑂"  # a branch made from an older checkpoint (its parent is not the row below)
POINT_MARK = "◆"  # a checkpoint more than one checkpoint continues from


class ThreadScreen(PagedScreen):
    """`escape` goes back to the threads."""

    AUTO_FOCUS = "#thread-state"
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("a", "answer", "Answer"),
        Binding("r", "new_run", "Run"),
        Binding("c", "continue", "Continue"),
        Binding("e", "edit", "Edit state"),
        Binding("b", "branch", "Branch"),
        Binding("o", "open_run", "Open run"),
        # Not in the footer (it has no room left at 80 columns): the metadata line names them.
        Binding("y", "copy", "Copy thread", show=False),
        Binding("M", "metadata", "Edit metadata", show=False),
        Binding("l", "latest", "Latest"),
        Binding("plus", "more", "More"),
        # The tabs' titles show these keys.
        Binding("s", "tab('state')", "State", show=False),
        Binding("m", "tab('messages')", "Messages", show=False),
        Binding("h", "tab('history')", "History", show=False),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.thread = name
        self.runs: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {}  # the latest checkpoint
        self.metadata: dict[str, Any] = {}  # the thread's own (UpdateThread), not its state
        self.history: list[dict[str, Any]] = []
        self.heard: set[str] = set()  # runs whose events came since the last load began
        self.picked = ""  # a checkpoint picked from the history (Enter), shown instead
        self.tab = "state"
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield TopBar("Threads", f"thread {short_id(self.thread)}")
        yield Static("", id="thread-head")
        yield Static("", id="thread-error", classes="error")
        with Vertical(id="thread-question"):
            yield Static("", id="thread-question-text")
            yield Input(
                placeholder="your answer (JSON or text), Enter sends, Esc not now",
                compact=True,
                id="thread-answer",
            )
        with Horizontal(id="thread-body"):
            with Vertical(id="thread-main"):
                yield TabBar(TABS, id="thread-tabs")
                yield Static("", id="thread-note", classes="note")
                with VerticalScroll(id="thread-state", classes="pane -shown"):
                    yield Static("loading…", id="thread-state-text")
                with VerticalScroll(id="thread-messages", classes="pane"):
                    yield Static("", id="thread-messages-text")
                table = RowTable(id="thread-history", zebra_stripes=True, classes="pane")
                for key, label in HISTORY_COLUMNS:
                    table.add_column(label, key=key)
                yield table
            # From 120 columns on, the conversation also shows beside the state or history.
            with Vertical(id="thread-side"):
                yield Static("Messages", classes="side-title")
                with VerticalScroll():
                    yield Static("", id="thread-side-text")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#thread-error").display = False
        self.query_one("#thread-question").display = False
        self.query_one("#thread-answer").display = False
        self.query_one("#thread-note").display = False
        if self.live:
            self.follow(
                filter={"types": [*LIFECYCLE, "run.node.finished"], "subject": "runs/*"},
                since="now",
                on_event=self._event,
                on_subscribed=self.reload_soon,
            )
            self.reload_soon(0)

    # -- loading ----------------------------------------------------------------------------

    def _event(self, event: dict[str, Any], sequence: int) -> None:
        """One of the thread's runs moved, or a run started (it may be on this thread). Every
        run heard is remembered until the next load ends: a load reads the runs first, so a run
        it finds may have moved on while it read the state (see `load`)."""
        subject = str(event.get("subject", ""))
        self.heard.add(subject)
        started = event.get("type") in ("agent.started", "workflow.started")
        if started or any(run.get("name") == subject for run in self.runs):
            self.reload_soon()

    async def load(self, pages: int) -> None:
        api = amelia(self).api

        def page(token: str) -> Awaitable[dict[str, Any]]:
            return api.list_thread_history(self.thread, HISTORY_PAGE, token)

        self.heard = set()
        try:
            # Runs before state: a run's end is recorded after its last checkpoint, so a run
            # read as ended never sits beside the state it had before that checkpoint.
            runs = await ask(self, api.list_runs(thread=self.thread, page_size=RUNS_KEPT))
            state = await ask(self, api.get_thread_state(self.thread))
            history, token = await ask(self, first_pages(page, "states", pages))
            thread = await ask(self, api.get_thread(self.thread))
        except ApiError as exc:
            self.show_error(exc)
            return
        self.pages = pages
        self.metadata = dict(thread.get("metadata") or {})
        self.show_thread(state, runs, history, token)
        # A run this load found but the screen did not know yet moved while it was read (its
        # events were heard before it was listed): what was read of it may be out of date, and
        # no later event of it may come (its end was one of them). Read again.
        if any(run.get("name") in self.heard for run in runs):
            self.reload_soon()

    def show_error(self, exc: ApiError) -> None:
        if exc.code == "NOT_FOUND":
            self.say(f"not found: {exc} (deleted, or made on another mesh)")
        else:
            self.say(f"{exc} — shown as last loaded; it reloads when the gateway is back.")
        if not self.loaded:
            self.query_one("#thread-state-text", Static).update(Text("(not loaded)", style="dim"))

    def say(self, text: str) -> None:
        """What went wrong, above the tabs, until the thread is loaded again."""
        box = self.query_one("#thread-error", Static)
        box.update(Text(text))
        box.display = True

    def show_thread(
        self,
        state: dict[str, Any],
        runs: list[dict[str, Any]],
        history: list[dict[str, Any]],
        token: str = "",
    ) -> None:
        """Everything the screen shows, as the gateway gave it."""
        self.loaded = True
        self.state, self.runs, self.history, self.next_token = state, runs, history, token
        if self.picked and not any(s.get("checkpoint") == self.picked for s in history):
            self.picked = ""
        self.query_one("#thread-error").display = False
        self._render_head()
        self._render_question()
        self._render_state()
        self._render_messages()
        self._render_history()
        self.refresh_bindings()

    # -- what it shows ----------------------------------------------------------------------

    @property
    def latest_run(self) -> dict[str, Any]:
        return self.runs[0] if self.runs else {}

    @property
    def active(self) -> bool:
        return any(status_of(run) in ACTIVE for run in self.runs)

    @property
    def shown(self) -> dict[str, Any]:
        """The state shown: the picked checkpoint's, else the latest."""
        for state in self.history:
            if self.picked and state.get("checkpoint") == self.picked:
                return state
        return self.state

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {str(s.get("checkpoint")): s for s in self.history}

    def _render_head(self) -> None:
        head = Text.assemble((f"thread {short_id(self.thread)}", "bold"))
        run = self.latest_run
        if run:
            head.append_text(
                Text.assemble(
                    "  latest run ",
                    (short_id(str(run.get("name"))), "bold"),
                    " ",
                    (target_of(run), "cyan"),
                    " ",
                    status_text(status_of(run)),
                )
            )
            more = "+" if len(self.runs) >= RUNS_KEPT else ""
            head.append(f"  {plural(len(self.runs), 'run')}{more}")
        else:
            head.append("  no runs yet", style="dim")
        self.query_one("#thread-head", Static).update(head)

    def _pending(self) -> dict[str, Any] | None:
        """The question the thread waits on: the latest run paused on it."""
        run = self.latest_run
        if status_of(run) == "paused" and run.get("interrupt"):
            return dict(run["interrupt"])
        return None

    def _render_question(self) -> None:
        interrupt = self._pending()
        panel = self.query_one("#thread-question")
        panel.display = interrupt is not None
        if interrupt is None:
            self.query_one("#thread-answer").display = False
            return
        questions = questions_of({"interrupts": [interrupt]})
        node, question = questions[0]
        text = Text.assemble(("? ", "bold yellow"), (question, "bold"), (f" (node {node})", "dim"))
        options = options_of(interrupt.get("value"))
        keys = " | ".join(str(o) for o in options) if options else "JSON or text"
        text.append(f"\na answers it ({keys}) · o opens the run", style="dim")
        self.query_one("#thread-question-text", Static).update(text)

    def _render_state(self) -> None:
        state = self.shown
        text = Text()
        text.append(f"{'metadata':<11}", style="dim")
        text.append(json.dumps(self.metadata, ensure_ascii=False) if self.metadata else "-")
        text.append("  M edits it · y copies the thread\n", style="dim")
        if self.picked:
            text.append(
                f"Step {state.get('step') or 0}, picked from the history (not the latest): "
                "b branches from it, l shows the latest.\n",
                style="bold yellow",
            )
        if not state.get("checkpoint"):
            text.append("No state yet: the thread's first run writes it.", style="dim")
            self.query_one("#thread-state-text", Static).update(text)
            return
        nexts = ", ".join(state.get("next") or [])
        fields = [
            ("next", nexts or "nothing: the graph ended"),
            ("step", f"{state.get('step') or 0} ({source_of(state)})"),
            ("written", flow_of(state, self.by_id())),
            ("by", state.get("run") or ("a state edit" if source_of(state) == "edit" else "-")),
            ("saved", when(state.get("createTime"))),
            ("checkpoint", str(state.get("checkpoint"))),
        ]
        for label, value in fields:
            text.append(f"{label:<11}", style="dim")
            text.append(f"{value}\n", style="bold" if label == "next" else "")
        # The latest state's question is in the panel above, with how to answer it.
        asked = [] if not self.picked and self._pending() else questions_of(state)
        for node, question in asked:
            text.append("waiting    ", style="dim")
            text.append(f"{question} ", style="bold yellow")
            text.append(f"(node {node})\n", style="dim")
        for task in state.get("tasks") or []:
            if task.get("error"):
                text.append(f"{task.get('node')} failed: {task['error']}\n", style="red")
        self.query_one("#thread-state-text", Static).update(
            Group(text, values_text(dict(state.get("values") or {})))
        )

    def _render_messages(self) -> None:
        turns = conversation_of(dict(self.shown.get("values") or {}))
        if turns is None:
            shown = Text("This thread's state keeps no messages (s shows its values).", "dim")
        else:
            shown = conversation_text(turns)
        self.query_one("#thread-messages-text", Static).update(shown)
        self.query_one("#thread-side-text", Static).update(shown)
        tabs = self.query_one(TabBar)
        tabs.counts = {"messages": len(turns or []), "history": len(self.history)}

    def _render_history(self) -> None:
        table: DataTable[Any] = self.query_one("#thread-history", DataTable)
        # A cursor put on an older checkpoint stays on it (by id: new checkpoints push its row
        # down); on the newest one (where it starts) it stays on the newest, as at a log's end.
        # Kept by id there too, it sat below the steps a run had just added: Down Down then `b`
        # branched from an older step than the one counted from the top.
        keep = self.cursor_checkpoint() if table.cursor_row > 0 else ""
        by_id = self.by_id()
        branches = branches_of(self.history)
        table.clear()
        for state in self.history:
            checkpoint = str(state.get("checkpoint"))
            parent = by_id.get(str(state.get("parentCheckpoint") or ""))
            mark = FORK_MARK if checkpoint in branches.forks else ""
            mark += POINT_MARK if checkpoint in branches.points else ""
            picked = "bold reverse" if checkpoint == self.picked else ""
            table.add_row(
                Text(mark, style="bold magenta"),
                Text(str(state.get("step") or 0), style=picked),
                source_of(state),
                flow_of(state, by_id),
                when(state.get("createTime")),
                short_id(str(state.get("run") or "")) or "edit",
                f"step {parent.get('step') or 0}" if parent else "",
                key=checkpoint,
            )
        if keep in by_id:
            table.move_cursor(row=table.get_row_index(keep), animate=False)
        note = "Enter: its state · b: branch from it · o: its run"
        if branches.forks or branches.points:
            note += f" · {FORK_MARK} branch · {POINT_MARK} forked"
        if self.next_token:
            note += " · + older"
        self.query_one("#thread-note", Static).update(note)

    # -- moves ------------------------------------------------------------------------------

    def cursor_checkpoint(self) -> str:
        return cursor_key(self.query_one("#thread-history", DataTable))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "answer":
            return self._pending() is not None
        if action == "continue":
            return bool(self.state.get("next")) and bool(self.latest_run) and not self.active
        if action == "new_run":
            return bool(self.latest_run)
        if action == "branch":
            return self.tab == "history" or bool(self.picked)
        if action == "latest":
            return bool(self.picked)
        if action == "more":
            return bool(self.next_token) and self.tab == "history"
        if action == "open_run":
            return bool(self.latest_run)
        return True

    def action_tab(self, tab: str) -> None:
        self.tab = tab
        for pane in self.query(".pane"):
            pane.set_class(pane.id == TABS[tab][2], "-shown")
        self.query_one(TabBar).active = tab
        self.query_one("#thread-note").display = tab == "history"
        self.query_one(f"#{TABS[tab][2]}").focus()
        self.refresh_bindings()

    @on(DataTable.RowSelected, "#thread-history")
    def _picked(self, event: DataTable.RowSelected) -> None:
        """Enter on a checkpoint: its state is shown (State and Messages)."""
        checkpoint = str(event.row_key.value or "")
        self.picked = "" if checkpoint == str(self.state.get("checkpoint")) else checkpoint
        self._render_state()
        self._render_messages()
        self._render_history()
        self.action_tab("state")

    def action_latest(self) -> None:
        self.picked = ""
        self._render_state()
        self._render_messages()
        self._render_history()
        self.refresh_bindings()

    def action_back(self) -> None:
        answer = self.query_one("#thread-answer", Input)
        if self.focused is answer:
            answer.display = False
            self.query_one(f"#{TABS[self.tab][2]}").focus()
            return
        self.dismiss()

    def action_answer(self) -> None:
        answer = self.query_one("#thread-answer", Input)
        answer.display = True
        answer.focus()

    @on(Input.Submitted, "#thread-answer")
    def _typed(self, event: Input.Submitted) -> None:
        run = self.latest_run
        if event.value.strip() and run:
            answer = read_answer(event.value)
            # One request_id per answer sent: the service takes it once.
            self.run_worker(self._resume(str(run.get("name")), answer), group="answer")

    async def _resume(self, run: str, answer: Any) -> None:
        app = amelia(self)
        try:
            await ask(self, app.api.resume_run(run, answer, str(uuid.uuid4())))
        except ApiError as exc:
            self.say(f"not answered: {exc}")
            return
        box = self.query_one("#thread-answer", Input)
        box.value = ""
        box.display = False
        self.query_one(f"#{TABS[self.tab][2]}").focus()
        self.notify(f"answer sent; {short_id(run)} continues")
        self.reload_soon(0)

    def _target(self) -> dict[str, str]:
        run = self.latest_run
        return (
            {"agent": run["agent"]} if run.get("agent") else {"workflow": run.get("workflow", "")}
        )

    def action_new_run(self) -> None:
        """The start-a-run form on this thread's graph and this thread."""

        def started(name: str | None) -> None:
            if name:
                amelia(self).open_run(name)

        run = self.latest_run
        values = {k: v for k, v in (run.get("input") or {}).items() if k != "message"}
        form = StartRunScreen(target_of(run), thread=self.thread, values=values)
        self.app.push_screen(form, started)

    def action_continue(self) -> None:
        """A run without input: the latest checkpoint's next nodes run on its values."""
        spec = {**self._target(), "thread": self.thread}
        self.run_worker(self._create(spec), exclusive=True, group="continue")

    async def _create(self, spec: dict[str, Any]) -> None:
        app = amelia(self)
        try:
            run = await ask(self, app.api.create_run(spec, str(uuid.uuid4())))
        except ApiError as exc:
            self.say(f"not continued: {exc}")
            return
        app.open_run(str(run.get("name")))

    def action_edit(self) -> None:
        self._edit(self.state, branch=False)

    def action_branch(self) -> None:
        checkpoint = self.picked if self.tab != "history" else self.cursor_checkpoint()
        state = self.by_id().get(checkpoint)
        if state is None:
            return
        self._edit(state, branch=checkpoint != self.state.get("checkpoint"))

    def _edit(self, state: dict[str, Any], branch: bool) -> None:
        def saved(new: dict[str, Any] | None) -> None:
            if new:
                self.picked = ""
                self.notify(
                    f"saved: step {new.get('step') or 0}"
                    + (f", a branch from step {state.get('step') or 0}" if branch else "")
                )
                self.reload_soon(0)

        self.app.push_screen(StateEditScreen(self.thread, state, branch), saved)

    def action_copy(self) -> None:
        """A copy of the thread (metadata, state and history; no runs), opened over this one."""
        self.run_worker(self._copy(), exclusive=True, group="copy")

    async def _copy(self) -> None:
        app = amelia(self)
        try:
            copy = await ask(self, app.api.copy_thread(self.thread))
        except ApiError as exc:
            self.say(f"not copied: {exc}")
            return
        app.notify(
            f"copied to {short_id(str(copy.get('name')))}: this is the copy (Esc: the source)"
        )
        app.open_thread(str(copy.get("name")))

    def action_metadata(self) -> None:
        def saved(thread: dict[str, Any] | None) -> None:
            if thread:
                self.metadata = dict(thread.get("metadata") or {})
                self._render_state()
                self.notify("metadata saved")

        self.app.push_screen(MetadataEditScreen(self.thread, self.metadata), saved)

    def action_open_run(self) -> None:
        """The run of the checkpoint under the history's cursor (or picked), else the latest."""
        checkpoint = self.cursor_checkpoint() if self.tab == "history" else self.picked
        run = str(self.by_id().get(checkpoint, {}).get("run") or "")
        name = run or str(self.latest_run.get("name") or "")
        if name:
            amelia(self).open_run(name)
