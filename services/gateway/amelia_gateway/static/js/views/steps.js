// A run's steps (ListRunSteps: each node execution from the checkpoints) as a timeline: one bar
// per step on the run's time axis, its state, duration and streamed tokens; open a step to see
// the state it started from and what it wrote, and fork the run from there (LangGraph time
// travel: ForkRun with an optional state update).

import { errorNotice, formatDuration, h, idOf, prettyJson, uuid } from "../dom.js";
import { INTERRUPTED_TITLE, interruptedText, usageTotals } from "../runstate.js";

const STEP_STATE = {
  RUN_STEP_STATE_PENDING: ["running", "active"],
  RUN_STEP_STATE_COMPLETED: ["done", "done"],
  RUN_STEP_STATE_FAILED: ["failed", "error"],
  RUN_STEP_STATE_INTERRUPTED: ["waiting", "waiting"],
  RUN_STEP_STATE_CANCELLED: ["cancelled", "stopped"],
};

/** USD, with enough digits to tell small costs apart ($0.0012, $1.25). */
export function formatCost(usd) {
  return `$${usd >= 1 ? usd.toFixed(2) : usd.toPrecision(2)}`;
}

function seconds(a, b) {
  return (Date.parse(b) - Date.parse(a)) / 1000;
}

export class StepsView {
  /** `canFork()` says whether the run has ended (a fork needs that). */
  constructor(ctx, runName, { canFork }) {
    this.ctx = ctx;
    this.runName = runName;
    this.canFork = canFork;
    this.list = h("ol", { class: "steps", id: "run-steps", "aria-label": "Steps" });
    this.totals = h("p", { class: "muted steps-totals", id: "steps-totals" }, "");
    this.error = h("div", { "aria-live": "polite" });
    this.element = h("section", { class: "card", "aria-labelledby": "steps-title", id: "steps-card" },
      h("h2", { id: "steps-title" }, "Steps"), this.totals, this.error, this.list);
    this.open = new Set(); // checkpoints of steps opened, kept open across reloads
    this.loading = null;
    this.again = false;
    this.tokens = new Map();
    this.nodeUsage = new Map();
    this.run = null; // the run (GetRun): its start, end and duration give the time axis
  }

  /**
   * Reload the steps; `tokens` maps a task id to the tokens it streamed, `nodeUsage` to its
   * model calls' usage and cost (runstate). A reload asked for while one is under way runs
   * after it (the run moved on meanwhile: its answer is older).
   */
  async load(tokens, nodeUsage = new Map()) {
    this.tokens = tokens;
    this.nodeUsage = nodeUsage;
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = (async () => {
      do {
        this.again = false;
        try {
          const { steps = [] } = await this.ctx.api.listRunSteps(this.runName, { pageSize: 1000 });
          this.error.replaceChildren();
          this.render(steps, this.tokens);
        } catch (error) {
          this.error.replaceChildren(errorNotice(error));
        }
      } while (this.again);
      this.loading = null;
    })();
    return this.loading;
  }

  render(steps, tokens) {
    if (!steps.length) {
      this.list.replaceChildren(h("li", { class: "empty" }, "No step has run yet."));
      this.totals.textContent = "";
      return;
    }
    // The time axis is the run's (it includes waiting for a worker or an answer); a step still
    // open when the run ended ran until the run's end.
    const run = this.run || {};
    const ended = Boolean(run.endTime);
    const earliest = (a, b) => (a && (!b || Date.parse(a) < Date.parse(b)) ? a : b);
    const latest = (a, b) => (a && (!b || Date.parse(a) > Date.parse(b)) ? a : b);
    const start = earliest(run.startTime, steps[0].startTime);
    const endOf = (step) => step.endTime || (ended ? run.endTime : null);
    const end = steps.map((s) => endOf(s) || s.startTime).reduce(latest, run.endTime);
    const span = Math.max(seconds(start, end), 0.001);
    let streamed = 0;
    this.list.replaceChildren(...steps.map((step) => {
      const [word, tone] = STEP_STATE[step.state] || ["?", "pending"];
      const took = endOf(step) ? Math.max(seconds(step.startTime, endOf(step)), 0) : null;
      const count = tokens.get(step.task) || 0;
      streamed += count;
      const usage = this.nodeUsage.get(step.task);
      const left = (seconds(start, step.startTime) / span) * 100;
      const width = took === null ? 100 - left : Math.max((took / span) * 100, 0.8);
      const details = h("details", { class: "step", dataset: { node: step.node, state: tone, checkpoint: step.checkpoint } },
        h("summary", {},
          h("span", { class: "step-node mono" }, step.node),
          h("span", { class: "step-state" }, word),
          h("span", { class: "bar-track", "aria-hidden": "true" },
            h("span", { class: "bar", style: { left: `${left}%`, width: `${Math.min(width, 100 - left)}%` } })),
          h("span", { class: "step-time num" }, took === null ? "" : formatDuration(took)),
          h("span", { class: "step-tokens num", title: usage ? `${usage.input} in, ${usage.output} out (${usage.models.join(", ")})` : null },
            usage ? `${usage.input + usage.output} tok` : count ? `${count} tok` : ""),
          h("span", { class: "step-cost num" }, usage && usage.cost !== undefined ? formatCost(usage.cost) : "")),
      );
      details.open = this.open.has(step.checkpoint);
      details.addEventListener("toggle", () => {
        if (details.open) {
          this.open.add(step.checkpoint);
          if (!details.querySelector(".step-body")) details.append(this.body(step));
        } else {
          this.open.delete(step.checkpoint);
        }
      });
      if (details.open) details.append(this.body(step));
      return h("li", {}, details);
    }));
    const used = usageTotals(this.nodeUsage);
    this.totals.textContent = `${steps.length} step${steps.length === 1 ? "" : "s"}${this.timing(steps)}`
      + (used.input + used.output ? ` · ${used.input} tokens in, ${used.output} out` : streamed ? ` · ${streamed} tokens streamed` : "")
      + (used.cost !== undefined ? ` · ${formatCost(used.cost)}` : "");
    // The run's total also counts the calls of nodes an interrupted attempt ran, then ran again.
    const interrupted = interruptedText(this.run && this.run.usage);
    this.totals.title = interrupted ? INTERRUPTED_TITLE : "";
    if (interrupted) this.totals.textContent += ` · not in these steps: ${interrupted} in interrupted attempts`;
  }

  /** " · the run took 30 s", and the steps' own time when it differs enough to mean something
   * (the rest was waiting for a worker or an answer). */
  timing(steps) {
    const run = this.run || {};
    const duration = parseFloat(String(run.duration ?? ""));
    if (!run.endTime || !Number.isFinite(duration)) return run.startTime ? " so far" : "";
    let text = ` · the run took ${formatDuration(duration)}`;
    const working = steps.reduce((sum, s) => sum + (s.endTime ? Math.max(seconds(s.startTime, s.endTime), 0) : 0), 0);
    const allEnded = steps.every((s) => s.endTime);
    if (steps.length > 1 && allEnded && duration - working >= Math.max(1, duration * 0.2)) {
      text += `, ${formatDuration(working)} of it in its steps`;
    }
    return text;
  }

  body(step) {
    const parts = [
      step.error ? h("p", { class: "notice error" }, step.error) : null,
      h("h3", {}, "State before the step"), h("pre", { class: "json", tabindex: "0" }, prettyJson(step.input || {})),
      h("h3", {}, "What it wrote"),
      h("pre", { class: "json", tabindex: "0" }, step.update === undefined || step.update === null ? "(nothing yet)" : prettyJson(step.update)),
    ];
    for (const interrupt of step.interrupts || []) {
      parts.push(h("h3", {}, "Question"), h("pre", { class: "json" }, prettyJson(interrupt.value)));
    }
    if (this.canFork()) parts.push(this.forkForm(step));
    return h("div", { class: "step-body" }, ...parts);
  }

  forkForm(step) {
    const values = h("textarea", { rows: 3, class: "fork-values", spellcheck: "false", "aria-label": `State update for the fork from ${step.node}` }, "{}");
    const error = h("div", { "aria-live": "polite" });
    const button = h("button", { type: "submit", class: "fork-button" }, `Fork from ${step.node}`);
    const form = h("form", { class: "fork" },
      h("label", {}, "Fork: run again from this step, with this state update (JSON; {} for none)"), values, error,
      h("div", { class: "actions" }, button));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.replaceChildren();
      let update;
      try {
        update = JSON.parse(values.value || "{}");
        if (!update || typeof update !== "object" || Array.isArray(update)) throw new Error("it must be a JSON object");
      } catch (err) {
        error.replaceChildren(errorNotice(new Error(`The state update is not valid: ${err.message}`)));
        return;
      }
      button.disabled = true;
      try {
        const response = await this.ctx.api.forkRun(this.runName, step.checkpoint, update, uuid());
        this.ctx.announce("Forked run started");
        this.ctx.navigate(`/runs/${idOf(response.run.name)}`);
      } catch (err) {
        error.replaceChildren(errorNotice(err));
        button.disabled = false;
      }
    });
    return form;
  }
}
