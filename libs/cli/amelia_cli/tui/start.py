"""Start a run: a workflow or an agent, and its input, one field per property of the workflow's
input schema (like the dashboard's form), typed on the keyboard.

The target is typed (`echo`, `plan`, `agents/greeter`) with completion from the workflows and
agents the gateway lists; Enter in any field starts the run, Escape closes the form.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Checkbox, Input, Label, Static, TextArea

from amelia_cli.tui.common import amelia, ask
from amelia_cli.tui.gateway import ApiError

MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}},
}


@dataclass
class Field:
    """One input property: its name, its schema and the widget that edits it."""

    name: str
    schema: dict[str, Any]
    required: bool

    @property
    def signature(self) -> str:
        """What decides its box: two fields with the same signature are edited alike."""
        kind = self.schema.get("type"), self.schema.get("enum"), self.required, self.is_text
        return f"{self.name}:{json.dumps(kind)}"

    @property
    def widget_id(self) -> str:
        return f"in-{self.name}"

    @property
    def is_text(self) -> bool:
        """A message or a prompt: several lines, edited in a text area."""
        return self.schema.get("type") == "string" and (
            self.name == "message" or self.name.endswith("prompt")
        )

    def widget(self) -> Input | Checkbox | TextArea:
        kind = self.schema.get("type")
        if kind == "boolean":
            return Checkbox(self.name, compact=True, id=self.widget_id)
        if self.is_text:
            return TextArea(
                placeholder=("required" if self.required else "optional")
                + " · Ctrl+S starts the run",
                soft_wrap=True,
                compact=True,
                show_line_numbers=False,
                tab_behavior="focus",
                id=self.widget_id,
                classes="text-field",
            )
        hint = {
            "integer": "a whole number",
            "number": "a number",
            "array": "comma-separated",
            "object": "JSON",
        }.get(str(kind), "")
        if "enum" in self.schema:
            hint = " | ".join(str(v) for v in self.schema["enum"])
        placeholder = ("required" if self.required else "optional") + (f" — {hint}" if hint else "")
        return Input(placeholder=placeholder, compact=True, id=self.widget_id)

    def read(self, widget: Input | Checkbox | TextArea) -> Any:
        """The value typed, or None when left empty; ValueError when it cannot be read."""
        if isinstance(widget, Checkbox):
            return widget.value
        if isinstance(widget, TextArea):
            return widget.text if widget.text.strip() else None
        text = widget.value.strip()
        if not text:
            return None
        kind = self.schema.get("type")
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
        if kind == "array":
            return [item.strip() for item in text.split(",") if item.strip()]
        if kind == "string" or "enum" in self.schema:
            return widget.value
        return json.loads(text)

    def fill(self, widget: Input | Checkbox | TextArea, value: Any) -> None:
        """Put `value` in the box, as `read` would read it back."""
        if isinstance(widget, Checkbox):
            widget.value = bool(value)
        elif isinstance(widget, TextArea):
            widget.load_text(str(value))
        elif self.schema.get("type") == "array" and isinstance(value, list):
            widget.value = ", ".join(str(item) for item in value)
        elif isinstance(value, str):
            widget.value = value
        else:
            widget.value = json.dumps(value, ensure_ascii=False)


def fields_of(schema: dict[str, Any]) -> list[Field]:
    """The schema's properties as fields, required ones first."""
    required = set(schema.get("required") or [])
    properties = schema.get("properties") or {"message": {"type": "string"}}
    fields = [Field(name, sub or {}, name in required) for name, sub in properties.items()]
    return sorted(fields, key=lambda field: not field.required)


class FormError(ValueError):
    """What is wrong with the form, and the box to fix it in."""

    def __init__(self, message: str, widget_id: str) -> None:
        super().__init__(message)
        self.widget_id = widget_id


class StartRunScreen(ModalScreen[str | None]):
    """Dismissed with the new run's name, or None."""

    AUTO_FOCUS = "#start-target"
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("ctrl+s", "start", "Start"),
    ]

    def __init__(
        self, target: str = "", thread: str = "", values: dict[str, Any] | None = None
    ) -> None:
        """`target`, `thread` and input `values` (the thread's last run's, but its message)
        fill the form: a new run on a thread, as the dashboard's form continues one."""
        super().__init__()
        self.initial_target = target
        self.initial_thread = thread
        self.initial_values = dict(values or {})
        self.workflows: dict[str, dict[str, Any]] = {}
        self.agents: dict[str, dict[str, Any]] = {}
        self.fields: list[Field] = []
        # One idempotency key per form: a retry after a lost reply returns the same run.
        self.request_id = str(uuid.uuid4())

    def compose(self) -> ComposeResult:
        with Vertical(id="start-dialog"):
            yield Label("[b]Start a run[/b]")
            with Horizontal(classes="field"):
                yield Label("target", classes="field-label")
                yield Input(
                    value=self.initial_target,
                    placeholder="workflow (chat, plan, echo…) or agents/<id>",
                    compact=True,
                    id="start-target",
                )
            yield Static("loading workflows and agents…", id="start-targets", classes="hint")
            yield VerticalScroll(id="start-fields", can_focus=False)
            with Horizontal(classes="field"):
                yield Label("thread", classes="field-label")
                yield Input(
                    value=self.initial_thread,
                    placeholder="optional — threads/<id>",
                    compact=True,
                    id="start-thread",
                )
            yield Static("", id="start-error", classes="error")
            with Horizontal(id="start-buttons"):
                yield Button("Start  ctrl+s", variant="primary", id="start-run", compact=True)
                yield Button("Close  esc", id="start-close", compact=True)

    def on_mount(self) -> None:
        app = amelia(self)
        if app.live:
            self.run_worker(self._load_targets(), exclusive=True)

    async def _load_targets(self) -> None:
        app = amelia(self)
        try:
            self.workflows = {w["name"]: w for w in await ask(self, app.api.list_workflows())}
            self.agents = {a["name"]: a for a in await ask(self, app.api.list_agents())}
        except ApiError as exc:
            self.query_one("#start-targets", Static).update(f"[red]{exc}[/red]")
            return
        await self.show_targets()

    async def show_targets(self) -> None:
        names = [n.removeprefix("workflows/") for n in self.workflows] + list(self.agents)
        self.query_one("#start-target", Input).suggester = SuggestFromList(
            names, case_sensitive=False
        )
        self.query_one("#start-targets", Static).update(
            "[dim]" + ", ".join(names) + " — → completes[/dim]" if names else "nothing to run"
        )
        await self._render_fields()

    def resolve(self, text: str) -> dict[str, str]:
        """The run's target fields for what was typed, or {} when it names nothing known."""
        text = text.strip()
        if text in self.agents:
            return {"agent": text}
        if f"agents/{text}" in self.agents and f"workflows/{text}" not in self.workflows:
            return {"agent": f"agents/{text}"}
        name = text if text.startswith("workflows/") else f"workflows/{text}"
        return {"workflow": name} if name in self.workflows else {}

    async def _render_fields(self) -> None:
        """One row per input property of the target. Rows a new target shares with the last
        one (same name, same kind of box) stay, with what was typed in them and the focus, so
        typing `plan` and Tab at once still lands in its message."""
        target = self.resolve(self.query_one("#start-target", Input).value)
        workflow = self.workflows.get(target.get("workflow", ""), {})
        fields = fields_of(workflow.get("inputSchema") or MESSAGE_SCHEMA)
        if [f.signature for f in fields] == [f.signature for f in self.fields]:
            return
        box = self.query_one("#start-fields", VerticalScroll)
        rows = {row.name: row for row in box.query_children(Horizontal)}
        before = {f.name: f.signature for f in self.fields}
        kept = {f.name for f in fields if before.get(f.name) == f.signature}
        await box.remove_children([row for name, row in rows.items() if name not in kept])
        previous: Horizontal | None = None
        for field in fields:
            row = rows.get(field.name) if field.name in kept else None
            if row is None:
                row = Horizontal(
                    Label(field.name.replace("_", " "), classes="field-label"),
                    field.widget(),
                    name=field.name,
                    classes="field text" if field.is_text else "field",
                )
                if previous is not None:
                    await box.mount(row, after=previous)
                else:
                    await box.mount(row, before=0) if box.children else await box.mount(row)
            previous = row
        self.fields = fields
        if self.initial_values:
            self._fill_initial(box)

    def _fill_initial(self, box: VerticalScroll) -> None:
        """The values given once, then the focus on the first box left empty (the message)."""
        values, self.initial_values = self.initial_values, {}
        empty = None
        for field in self.fields:
            widget = box.query_one(f"#{field.widget_id}")
            assert isinstance(widget, Input | Checkbox | TextArea)
            if field.name in values and values[field.name] is not None:
                field.fill(widget, values[field.name])
            elif empty is None:
                empty = widget
        if empty is not None:
            empty.focus()

    @on(Input.Changed, "#start-target")
    async def _target_changed(self) -> None:
        if self.workflows or self.agents:
            await self._render_fields()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_start()

    @on(Button.Pressed, "#start-run")
    def _start_pressed(self) -> None:
        self.action_start()

    @on(Button.Pressed, "#start-close")
    def action_close(self) -> None:
        self.dismiss(None)

    def run_spec(self) -> dict[str, Any]:
        """The run to create from the form; FormError says what is wrong, and where."""
        typed = self.query_one("#start-target", Input).value.strip()
        target = self.resolve(typed)
        if not target:
            raise FormError(
                f"no workflow or agent named {typed!r}" if typed else "type a workflow or agent",
                "start-target",
            )
        run_input: dict[str, Any] = {}
        for field in self.fields:
            widget = self.query_one(f"#{field.widget_id}")
            assert isinstance(widget, Input | Checkbox | TextArea)
            try:
                value = field.read(widget)
            except ValueError as exc:
                raise FormError(f"{field.name}: {exc}", field.widget_id) from None
            if value is None:
                if field.required:
                    raise FormError(f"{field.name} is required", field.widget_id)
                continue
            run_input[field.name] = value
        spec: dict[str, Any] = {**target, "input": run_input}
        thread = self.query_one("#start-thread", Input).value.strip()
        if thread:
            spec["thread"] = thread if thread.startswith("threads/") else f"threads/{thread}"
        return spec

    def action_start(self) -> None:
        error = self.query_one("#start-error", Static)
        try:
            spec = self.run_spec()
        except FormError as exc:
            error.update(str(exc))
            self.query_one(f"#{exc.widget_id}").focus()
            return
        error.update("")
        self.run_worker(self._create(spec), exclusive=True, group="create")

    async def _create(self, spec: dict[str, Any]) -> None:
        app = amelia(self)
        try:
            run = await ask(self, app.api.create_run(spec, request_id=self.request_id))
        except ApiError as exc:
            self.query_one("#start-error", Static).update(str(exc))
            return
        self.dismiss(str(run.get("name", "")))
