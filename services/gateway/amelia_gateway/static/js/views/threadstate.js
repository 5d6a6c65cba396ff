// A thread's state, as LangGraph Studio's state panel shows it: the latest checkpoint (or one
// picked from the history) — its values, next nodes, waiting questions, id, step, the run that
// wrote it and when — the history newest first ("Older…" pages on), and a form to edit the state
// between runs (UpdateThreadState: the next run continues from the new checkpoint; while a run
// is active the service refuses, and its google.rpc.Status message is shown). When the latest
// checkpoint has nodes to run, "Continue from here (no input)" starts a run without input on the
// thread's graph: those nodes run on the state as it is (LangGraph's invoke(None), Studio's
// edit-then-continue). Sending a message (views/threads.js) is another thing: a run from the
// graph's start.

import { conversationOf, flowOf, parseValues, questionsOf, sourceOf } from "../checkpoint.js";
import { errorNotice, formatTime, h, idOf, prettyJson, uuid } from "../dom.js";

const HISTORY_PAGE = 10;

const LATEST_HINT = "Written on the latest checkpoint as if the node below had written it: the values go through "
  + "the graph's reducers (a list such as messages is appended to, another key replaced), and the thread's next run "
  + "(a message sent above, or Continue from here) runs on the new checkpoint. Only between runs.";

function field(label, ...value) {
  return [h("dt", {}, label), h("dd", {}, ...value)];
}

export class ThreadStatePanel {
  constructor(ctx, thread) {
    this.ctx = ctx;
    this.thread = thread;
    this.byId = new Map(); // checkpoint id -> state, from every history page loaded
    this.history = []; // newest first
    this.token = "";
    this.pinned = ""; // a checkpoint picked from the history, or "" for the latest
    this.shown = null;
    this.nodes = []; // as_node choices: the workflow's nodes in its order, then others the history names
    this.target = "";
    this.lastRun = null; // the thread's latest run: a continuation runs on its target
    this.active = false;
    this.stopped = false;

    this.heading = h("h2", { id: "state-title" }, "State");
    this.latest = h("button", { type: "button", id: "state-latest", hidden: true, onclick: () => this.showLatest() }, "Show the latest");
    this.continueButton = h("button", { type: "button", class: "primary", id: "state-continue", hidden: true, onclick: () => this.continueThread() }, "Continue from here (no input)");
    this.continueError = h("div", { "aria-live": "polite", id: "continue-error" });
    this.note = h("p", { class: "hint", id: "state-note" }, "");
    this.error = h("div", { "aria-live": "polite" });
    this.body = h("div", { id: "state-body" }, h("p", { class: "empty" }, "Loading…"));
    this.stateCard = h("section", { class: "card state-card", id: "thread-state", "aria-labelledby": "state-title" },
      h("div", { class: "row state-head" }, this.heading, this.latest, this.continueButton), this.note, this.error,
      this.continueError, this.body);

    this.list = h("ol", { class: "history", id: "state-history", "aria-label": "Checkpoints, newest first" });
    this.older = h("button", { type: "button", id: "history-older", hidden: true, onclick: () => this.loadHistory(true) }, "Older…");
    this.historyError = h("div", { "aria-live": "polite" });
    this.historyCard = h("section", { class: "card", id: "thread-history", "aria-labelledby": "history-title" },
      h("h2", { id: "history-title" }, "History"),
      h("p", { class: "hint" }, "Every checkpoint of the thread, newest first: open one to see its state."),
      this.historyError, this.list, h("div", { class: "pager" }, this.older));

    this.values = h("textarea", { id: "edit-values", rows: 4, spellcheck: "false" }, "{}");
    this.asNode = h("select", { id: "edit-as-node" }, h("option", { value: "" }, "the node that wrote last"));
    this.editHint = h("p", { class: "hint", id: "edit-active", hidden: true });
    this.editError = h("div", { "aria-live": "polite", id: "edit-error" });
    this.save = h("button", { type: "submit", class: "primary", id: "edit-save" }, "Save state");
    this.editForm = h("form", { class: "card", id: "thread-edit", "aria-labelledby": "edit-title" },
      h("h2", { id: "edit-title" }, "Edit state"),
      this.editWhere = h("p", { class: "hint", id: "edit-where" }, LATEST_HINT),
      h("label", { for: "edit-values" }, "Values (a JSON object)"), this.values,
      h("label", { for: "edit-as-node" }, "As node"), this.asNode,
      this.editHint, this.editError, h("div", { class: "actions" }, this.save));
    this.editForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    // Side by side on a desktop: the state, and the history above the edit form.
    this.elements = [this.stateCard, h("div", { class: "thread-side" }, this.historyCard, this.editForm)];
  }

  /** The thread's latest run: its status says whether an edit can land now, its target names the nodes. */
  setLastRun(run, active) {
    this.lastRun = run && run.name ? run : null;
    this.active = Boolean(active);
    this.showContinue();
    this.editHint.hidden = !active;
    this.editHint.textContent = active
      ? `A run of this thread is ${String(run.status || "").replace("RUN_STATUS_", "").toLowerCase()}: the state can change only once it has ended.`
      : "";
    const target = run && run.workflow;
    if (target && target !== this.target) {
      this.target = target;
      this.loadNodes(target);
    }
  }

  async loadNodes(target) {
    try {
      const { workflows = [] } = await this.ctx.api.listWorkflows();
      const workflow = workflows.find((w) => w.name === target);
      if (!this.stopped && workflow) this.setNodes(workflow.nodes || [], true);
    } catch {
      // The history's nodes stand in (setNodes from the tasks seen).
    }
  }

  /** Offer `nodes` as as_node; the workflow's own (`first`) go before the others, in its order. */
  setNodes(nodes, first = false) {
    // LangGraph's own nodes (__start__) are not the workflow's.
    const named = nodes.filter((node) => node && !node.startsWith("__"));
    const merged = first ? [...new Set([...named, ...this.nodes])] : [...new Set([...this.nodes, ...named])];
    if (merged.join("\n") === this.nodes.join("\n")) return;
    this.nodes = merged;
    const chosen = this.asNode.value;
    this.asNode.replaceChildren(this.asNode.options[0], ...merged.map((node) => h("option", { value: node }, node)));
    this.asNode.value = chosen;
  }

  /** Reload the state shown (the latest unless a checkpoint is picked) and the history's first page. */
  async refresh() {
    await Promise.all([this.pinned ? null : this.loadLatest(), this.loadHistory(false)]);
  }

  async loadLatest() {
    try {
      const { state = {} } = await this.ctx.api.getThreadState(this.thread);
      if (this.stopped || this.pinned) return;
      this.error.replaceChildren();
      this.render(state);
    } catch (err) {
      if (!this.stopped) this.error.replaceChildren(errorNotice(err));
    }
  }

  async loadHistory(append) {
    try {
      const response = await this.ctx.api.listThreadHistory(this.thread, { pageSize: HISTORY_PAGE, pageToken: append ? this.token : "" });
      if (this.stopped) return;
      this.historyError.replaceChildren();
      const states = response.states || [];
      this.token = response.nextPageToken || "";
      this.older.hidden = !this.token;
      this.history = append ? [...this.history, ...states] : states;
      for (const state of states) {
        this.byId.set(state.checkpoint, state);
        this.setNodes((state.tasks || []).map((task) => task.node));
      }
      this.renderHistory();
    } catch (err) {
      if (!this.stopped) this.historyError.replaceChildren(errorNotice(err));
    }
  }

  renderHistory() {
    if (!this.history.length) {
      this.list.replaceChildren(h("li", { class: "empty" }, "No checkpoint yet: a run writes one per step."));
      return;
    }
    const shown = this.shown && this.shown.checkpoint;
    this.list.replaceChildren(...this.history.map((state) => h("li", {},
      h("button", {
        type: "button", class: "history-row", dataset: { checkpoint: state.checkpoint, step: String(state.step || 0) },
        "aria-current": state.checkpoint === shown ? "true" : null, onclick: () => this.pick(state),
      },
      h("span", { class: "history-step num" }, `step ${state.step || 0}`),
      h("span", { class: "history-source" }, sourceOf(state)),
      h("span", { class: "history-flow mono" }, flowOf(state, this.byId)),
      h("span", { class: "history-run mono" }, state.run ? `run ${idOf(state.run).slice(0, 8)}` : "no run"),
      h("span", { class: "history-time" }, formatTime(state.createTime))))));
  }

  pick(state) {
    this.pinned = state.checkpoint;
    this.render(state);
    this.stateCard.scrollIntoView({ block: "start" });
    this.heading.focus({ preventScroll: true });
  }

  showLatest() {
    this.pinned = "";
    this.loadLatest();
  }

  /** "Continue from here" only for the latest checkpoint with nodes to run, between runs. */
  showContinue() {
    const next = (this.shown && this.shown.next) || [];
    this.continueButton.hidden = Boolean(this.pinned) || !next.length || !this.lastRun || this.active;
    this.continueButton.title = this.continueButton.hidden ? "" : `A new run without a message: ${next.join(", ")} run on the state as it is`;
  }

  /** A run without input on the thread's graph: the latest checkpoint's next nodes run. */
  async continueThread() {
    this.continueError.replaceChildren();
    const target = this.lastRun.workflow || this.lastRun.agent;
    const run = { thread: this.thread };
    if (target.startsWith("agents/")) run.agent = target;
    else run.workflow = target;
    this.continueButton.disabled = true;
    try {
      const response = await this.ctx.api.createRun(run, uuid());
      this.ctx.announce("Run started: the thread continues from its latest checkpoint, without input");
      this.ctx.navigate(`/runs/${idOf(response.run.name)}`);
    } catch (err) {
      if (!this.stopped) this.continueError.replaceChildren(errorNotice(err));
    } finally {
      this.continueButton.disabled = false;
    }
  }

  render(state) {
    this.shown = state;
    this.showContinue();
    const latest = !this.pinned;
    this.heading.textContent = latest ? "State" : `State at step ${state.step || 0}`;
    this.heading.tabIndex = -1;
    this.latest.hidden = latest;
    this.note.textContent = latest ? "The thread's latest checkpoint." : "A checkpoint from the history (not the latest).";
    // Save writes on the checkpoint shown: a picked older one makes a branch from it (as the CLI's
    // `threads update --checkpoint`), and the thread's next run continues from that branch.
    this.save.textContent = latest ? "Save state" : `Save as a branch from step ${state.step || 0}`;
    this.editWhere.textContent = latest ? LATEST_HINT
      : `Written on the checkpoint shown (step ${state.step || 0}, not the latest): a branch from it. The values go `
        + "through the graph's reducers; the thread's next run continues from the new checkpoint, and the later "
        + "checkpoints stay in the history. Only between runs.";
    if (!state.checkpoint) {
      this.body.replaceChildren(h("p", { class: "empty" }, "No state yet: the thread's first run writes it."));
      this.renderHistory();
      return;
    }
    const next = state.next || [];
    const questions = questionsOf(state);
    const values = state.values || {};
    const conversation = conversationOf(values);
    const parts = [
      h("dl", { class: "kv state-kv" },
        field("Next", next.length ? h("span", { class: "mono", id: "state-next" }, next.join(", ")) : h("span", { id: "state-next" }, "nothing: the graph ended")),
        questions.length ? field("Waiting for an answer", h("ul", { class: "state-questions", id: "state-questions" }, ...questions.map((q) => h("li", {}, q)))) : [],
        field("Step", h("span", { id: "state-step" }, `${state.step || 0} (${sourceOf(state)})`)),
        field("Written by", state.run
          ? h("a", { href: `#/runs/${idOf(state.run)}`, class: "mono", id: "state-run" }, idOf(state.run))
          : h("span", { id: "state-run" }, sourceOf(state) === "edit" ? "a state edit" : "no run")),
        field("Saved", h("span", { id: "state-time" }, formatTime(state.createTime))),
        field("Checkpoint", h("span", { class: "mono break", id: "state-checkpoint" }, state.checkpoint))),
      conversation ? h("h3", {}, "Messages") : null,
      conversation ? h("ol", { class: "state-messages", id: "state-messages", "aria-label": "Messages in the state" },
        ...conversation.map(({ role, text }) => h("li", { dataset: { role } }, h("span", { class: "who" }, role), h("div", { class: "text" }, text)))) : null,
      h("h3", {}, "Values"),
      h("pre", { class: "json state-values", id: "state-values", tabindex: "0" }, prettyJson(values)),
    ];
    this.body.replaceChildren(...parts.filter(Boolean));
    this.renderHistory();
  }

  async submit() {
    this.editError.replaceChildren();
    const values = parseValues(this.values.value);
    if (values instanceof Error) {
      this.editError.replaceChildren(errorNotice(values));
      return;
    }
    this.save.disabled = true;
    try {
      const { state = {} } = await this.ctx.api.updateThreadState(this.thread, values, this.asNode.value, this.pinned);
      if (this.stopped) return;
      this.pinned = "";
      this.render(state);
      this.ctx.announce(`State saved: step ${state.step || 0}`);
      await this.loadHistory(false);
    } catch (err) {
      if (!this.stopped) this.editError.replaceChildren(errorNotice(err));
    } finally {
      this.save.disabled = false;
    }
  }

  stop() {
    this.stopped = true;
  }
}
