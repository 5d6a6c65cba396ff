// One run, live: its events from sequence 0 (a `run` subscription: the gateway replays the run,
// then follows it until it ends), tokens streaming into the output, nodes lighting up in the
// workflow's graph, the steps' timeline (from the checkpoints), retrieved passages, the question
// of a paused run with an answer form, Cancel, Rerun, Fork (from a step), Delete (an ended run,
// asked first), and Replay (the stored events played back again with their original pacing).

import {
  compactJson, debounce, errorNotice, formatDuration, formatTime, h, idOf, prettyJson, uuid,
} from "../dom.js";
import { GraphView } from "../graph.js";
import { OutputView } from "../output.js";
import {
  ACTIVE_STATUSES, TERMINAL_STATUSES, statusBadge, statusLabel,
} from "../runstatus.js";
import { INTERRUPTED_TITLE, interruptedText, newRunState, reduce, runUsage } from "../runstate.js";
import { DIFF_QUESTION_KEYS, DiffView } from "./diff.js";
import { hitsOf, passage } from "./passages.js";
import { StepsView } from "./steps.js";

const MAX_ACTIVITY = 300;
const NODE_STATE_LABEL = {
  pending: "pending", active: "running", done: "done", error: "failed", waiting: "waiting", stopped: "stopped",
  skipped: "skipped", notrun: "not run",
};

function describe(event) {
  const data = event.data || {};
  switch (event.type) {
    case "run.node.started": return `node ${data.node} started`;
    case "run.node.finished":
      return `node ${data.node} ${data.error ? `failed: ${data.error}` : data.interrupted ? "paused" : "finished"}`
        + (data.duration_seconds !== undefined ? ` in ${formatDuration(data.duration_seconds)}` : "");
    case "run.interrupted": return `paused at ${data.node || "a node"}: ${compactJson(data.value, 120)}`;
    case "run.resumed": return `resumed (${data.reason || "answer"})`;
    case "run.retrieval": return `retrieved ${hitsOf(data).length} passage(s)`;
    // A subprocess's argv, or an agent's tool call with the model's JSON arguments (docs/agents.md).
    case "run.tool.called":
      return `tool ${data.tool} ${Array.isArray(data.args) ? data.args.join(" ") : compactJson(data.args, 120)}`;
    case "run.tool.output": return `${data.tool}: ${data.text}`;
    case "run.tool.result":
      if (data.exit_code !== undefined) return `tool ${data.tool} exited ${data.exit_code}`;
      if (data.error !== undefined) return `tool ${data.tool} failed: ${compactJson(data.error, 120)}`;
      return `tool ${data.tool} returned ${compactJson(data.result, 120)}`;
    case "run.retry": return `retrying: ${compactJson(data, 120)}`;
    // The service's own line (the server, what was cut and what to do), else its numbers.
    case "run.model.waiting": return data.message || `waiting for ${data.server || "the model server"}`;
    case "run.model.cut":
      return data.message || `model reply cut at max_tokens ${data.max_tokens} (finish_reason ${data.finish_reason || "length"})`;
    case "agent.started":
    case "workflow.started":
      if (data.forked_from) {
        return `${data.target || ""} started, forked from ${data.forked_from.run} at checkpoint ${data.forked_from.checkpoint}`;
      }
      return `${data.target || ""} started`;
    case "agent.completed":
    case "workflow.completed": return "finished";
    case "agent.failed":
    case "workflow.failed": return data.error || "failed";
    case "agent.cancelled":
    case "workflow.cancelled": return "stopped";
    case "run.completed": return "completed";
    case "run.failed": return `failed: ${data.error || ""}`;
    case "run.cancelled": return `cancelled${data.reason ? `: ${data.reason}` : ""}`;
    default: return compactJson(data, 140);
  }
}

/** The question of an interrupt, for people: a string, or an object's `question`/`message`. */
function questionText(value) {
  if (typeof value === "string") return value;
  if (value && typeof value === "object") {
    for (const key of ["question", "message", "prompt", "text"]) {
      if (typeof value[key] === "string") return value[key];
    }
  }
  return prettyJson(value);
}

const QUESTION_KEYS = new Set(["question", "message", "prompt", "text", "options", "choices"]);

/** What else the question carries (the design to approve, a note…), as labelled blocks. */
function questionDetails(value, skip = new Set()) {
  if (!value || typeof value !== "object" || Array.isArray(value)) return [];
  const questionKey = ["question", "message", "prompt", "text"].find((key) => typeof value[key] === "string");
  if (!questionKey) return [];
  return Object.entries(value)
    .filter(([key]) => !QUESTION_KEYS.has(key) && !skip.has(key))
    .map(([key, item]) => h("div", { class: "question-detail", dataset: { key } },
      h("h3", {}, key.replace(/_/g, " ")),
      h("pre", { tabindex: "0" }, typeof item === "string" ? item : prettyJson(item))));
}

function optionsOf(value) {
  if (value && typeof value === "object") {
    for (const key of ["options", "choices"]) if (Array.isArray(value[key])) return value[key];
  }
  return [];
}

export function mount(main, ctx, [runId]) {
  const name = `runs/${runId}`;
  // The run's state from its events (`reduce`, runstate.js) and what only this screen keeps.
  const state = {
    ...newRunState(),
    run: null,
    events: [], // {sequence, type, time, data} as received, for Replay
    ended: false,
    replaying: false,
    interrupt: null, // the question shown
  };

  // -- layout ---------------------------------------------------------------------------------
  const badgeSlot = h("span", { id: "run-status" }, statusBadge(""));
  const cancelButton = h("button", { type: "button", class: "danger", id: "run-cancel", disabled: true }, "Cancel run");
  // One tap on a phone must not end a long run: Cancel asks inline first (as the TUI asks y/n).
  const cancelYes = h("button", { type: "button", class: "danger", id: "run-cancel-yes" }, "Yes, cancel it");
  const cancelNo = h("button", { type: "button", id: "run-cancel-no" }, "No, keep it");
  const cancelConfirm = h("span", { class: "cancel-confirm", id: "run-cancel-confirm", role: "group",
    "aria-label": "Confirm cancelling", hidden: true }, h("span", {}, "Cancel this run?"), cancelYes, cancelNo);
  // An ended run can be deleted (DeleteRun); it asks inline first, as Cancel does.
  const deleteButton = h("button", { type: "button", class: "danger", id: "run-delete", hidden: true }, "Delete run");
  const deleteYes = h("button", { type: "button", class: "danger", id: "run-delete-yes" }, "Yes, delete it");
  const deleteNo = h("button", { type: "button", id: "run-delete-no" }, "No, keep it");
  const deleteConfirm = h("span", { class: "cancel-confirm", id: "run-delete-confirm", role: "group",
    "aria-label": "Confirm deleting", hidden: true },
  h("span", {}, "Delete this run? Its thread's state and its events stay."), deleteYes, deleteNo);
  const rerunButton = h("button", { type: "button", id: "run-rerun", disabled: true, title: "A new run with the same input" }, "Rerun");
  // Opens the run's thread, whose form sends a message: a new run on the thread's state.
  const continueLink = h("a", { class: "button", id: "run-continue", href: "#/threads",
    title: "Open this run's thread to send a message: a new run on the thread's state" }, "New run on this thread");
  const replayButton = h("button", { type: "button", id: "run-replay", disabled: true }, "Replay");
  const speed = h("select", { id: "replay-speed", "aria-label": "Replay speed" },
    h("option", { value: "1" }, "1×"), h("option", { value: "4" }, "4×"),
    h("option", { value: "20", selected: true }, "20×"), h("option", { value: "0" }, "Instant"));
  const meta = h("div", { class: "run-meta", id: "run-meta" });
  const targetLabel = h("span", { class: "mono muted", id: "run-target" }, "");
  const notices = h("div", { "aria-live": "polite", id: "run-notices" });
  // Why a run failed, was cancelled or rejected: at the top, before anything else about it.
  const problemSlot = h("div", { id: "run-problem" });
  const nodesList = h("ol", { class: "nodes", id: "run-nodes", "aria-label": "Workflow nodes" });
  const output = new OutputView({ label: "Run output", placeholder: "Waiting for tokens…" });
  output.element.id = "run-output";
  const interruptSlot = h("div", { id: "interrupt-slot" });
  const passages = h("ol", { class: "passages", id: "run-passages" });
  const passagesCard = h("section", { class: "card", "aria-labelledby": "passages-title", hidden: true },
    h("h2", { id: "passages-title" }, "Retrieved passages"), passages);
  const activity = h("ol", { class: "activity", id: "run-activity", "aria-label": "Run activity" });
  const resultSlot = h("div", { id: "run-result" });
  const graphCard = h("section", { class: "card graph-card", "aria-labelledby": "graph-title", hidden: true },
    h("h2", { id: "graph-title" }, "Graph"));
  let graph = null;
  const steps = new StepsView(ctx, name, { canFork: () => TERMINAL_STATUSES.has(state.run && state.run.status) });
  const reloadSteps = debounce(() => steps.load(state.tokens, state.nodeUsage), 400);
  // A develop run's change, with Land / Discard (views/diff.js).
  const diffView = new DiffView(ctx, name, { onSettled: () => followAfterEnd() });

  main.append(
    h("a", { href: "#/runs", class: "back" }, "← Runs"),
    h("div", { class: "run-head" },
      h("h1", {}, `Run ${runId.slice(0, 8)}`), badgeSlot,
      targetLabel,
      h("span", { class: "spacer" }),
      h("div", { class: "replay-bar" }, speed, replayButton), rerunButton, continueLink, cancelButton, cancelConfirm,
      deleteButton, deleteConfirm),
    problemSlot,
    meta,
    notices,
    interruptSlot,
    diffView.slot,
    h("div", { class: "split" },
      h("div", {},
        h("section", { "aria-labelledby": "nodes-title" },
          h("h2", { id: "nodes-title", class: "visually-hidden" }, "Nodes"), nodesList),
        h("section", { "aria-labelledby": "output-title" },
          h("h2", { id: "output-title", class: "visually-hidden" }, "Output"), output.element),
        // Steps grow as nodes finish, the result comes last: nothing above them moves.
        steps.element,
        resultSlot),
      h("div", {},
        h("section", { class: "card", "aria-labelledby": "activity-title" },
          h("h2", { id: "activity-title" }, "Activity"), activity),
        graphCard,
        passagesCard),
    ),
  );

  // -- rendering ------------------------------------------------------------------------------

  function setStatus(status) {
    if (!status || status === state.status) return;
    const previous = state.status;
    state.status = status;
    statusChanged(previous);
  }

  function statusChanged(previous) {
    const status = state.status;
    renderBadge();
    updateCancel();
    if (ACTIVE_STATUSES.has(status) && !state.replaying && output.isEmpty()) {
      // A run created with a multitask strategy may wait behind its thread's run first.
      const behind = state.run && state.run.queuedBehind;
      output.say(status !== "RUN_STATUS_QUEUED" ? "Waiting for tokens…"
        : behind ? `Queued behind ${behind}: it starts once that run ends…`
          : "Queued: waiting for a worker to pick the run up…");
    }
    if (previous && !state.replaying) ctx.announce(`Run ${statusLabel(status, outputOf()).toLowerCase()}`);
  }

  /** The run's output, once the badge may show it (not mid-replay). */
  function outputOf() {
    return state.run && !state.replaying && TERMINAL_STATUSES.has(state.status) ? state.run.output : null;
  }

  function renderBadge() {
    badgeSlot.replaceChildren(statusBadge(state.status, outputOf()));
  }

  function updateCancel() {
    // During a replay the badge shows the replayed status; Cancel follows the real run.
    const real = state.replaying ? state.run && state.run.status : state.status;
    cancelButton.disabled = !ACTIVE_STATUSES.has(real);
    if (cancelButton.disabled) askCancel(false);
    cancelButton.classList.toggle("ended", TERMINAL_STATUSES.has(real));
    rerunButton.disabled = !state.run;
    // Delete follows the stored run (not a replay's status): only an ended run can go.
    const ended = Boolean(state.run && TERMINAL_STATUSES.has(state.run.status));
    if (!ended) askDelete(false);
    deleteButton.hidden = !ended || !deleteConfirm.hidden;
  }

  function renderMeta() {
    const run = state.run || {};
    const usage = runUsage(state.usage || run.usage);
    const used = usage.input + usage.output;
    // Items that appear late come last, so they never push the others around.
    const items = [
      ["Created", formatTime(run.createTime)],
      ["Thread", run.thread ? h("a", { href: `#/threads/${idOf(run.thread)}`, class: "mono", id: "run-thread-link" }, idOf(run.thread)) : ""],
      ["Started", formatTime(run.startTime)],
      ["Ended", formatTime(run.endTime)],
      ["Duration", formatDuration(run.duration)],
      ["Model tokens", used ? tokensShown(`${usage.input} in / ${usage.output} out`, interruptedText(state.usage || run.usage)) : ""],
      // Pick-ups after an interruption (a worker stopped, or NATS or PostgreSQL did not answer);
      // answering a question is not a retry.
      ["Retried", state.retries ? `${state.retries}× (interrupted; continued from its checkpoint)` : ""],
    ].filter(([, value]) => value);
    meta.replaceChildren(...items.map(([label, value]) => h("span", {}, `${label} `, typeof value === "string" ? h("b", {}, value) : value)));
    targetLabel.textContent = run.workflow || run.agent || "";
    if (run.thread) continueLink.href = `#/threads/${idOf(run.thread)}`;
  }

  /** The run's tokens, and — why they exceed its steps' (QA s26 H2) — the share of the calls
   * of nodes an interrupted attempt did not finish (they ran again). */
  function tokensShown(total, interrupted) {
    if (!interrupted) return total;
    return h("span", { id: "run-tokens", title: INTERRUPTED_TITLE },
      h("b", {}, total), ", of which ", h("b", {}, interrupted), " in interrupted attempts");
  }

  function renderNodes() {
    nodesList.replaceChildren(...[...state.nodes].map(([node, nodeState]) =>
      h("li", { class: "node", dataset: { node, state: nodeState } },
        h("span", {}, node), h("span", { class: "state" }, NODE_STATE_LABEL[nodeState] || nodeState))));
    if (graph) for (const [node, nodeState] of state.nodes) graph.setState(node, nodeState);
  }

  /** Draws a node's state (`reduce` has recorded it in `state.nodes`). */
  function drawNode(node, nodeState) {
    if (graph) graph.setState(node, nodeState);
    const el = nodesList.querySelector(`[data-node="${CSS.escape(node)}"]`);
    if (!el) {
      renderNodes();
      return;
    }
    el.dataset.state = nodeState;
    el.querySelector(".state").textContent = NODE_STATE_LABEL[nodeState] || nodeState;
  }

  function addActivity(event, sequence) {
    activity.append(h("li", { dataset: { type: event.type } },
      h("span", { class: "seq" }, `#${sequence}`),
      h("span", {}, h("strong", {}, event.type), " ", describe(event))));
    while (activity.childElementCount > MAX_ACTIVITY) activity.firstElementChild.remove();
    activity.scrollTop = activity.scrollHeight;
  }

  function showInterrupt(interrupt) {
    // A run known to have ended asks nothing: its events replayed show old questions.
    if (interrupt && state.run && TERMINAL_STATUSES.has(state.run.status)) interrupt = null;
    state.interrupt = interrupt;
    if (!interrupt) {
      interruptSlot.replaceChildren();
      return;
    }
    const value = interrupt.value;
    const diffPart = state.replaying ? null : diffView.forQuestion(interrupt);
    const options = diffPart ? [] : optionsOf(value);
    // Required even next to choices: an empty "Send answer" would answer "" (a choice button
    // answers without the form).
    const answer = h("textarea", { id: "answer", rows: 3, required: true });
    const asJson = h("input", { type: "checkbox", id: "answer-json" });
    const error = h("div", { "aria-live": "polite" });
    const send = h("button", { type: "submit", class: "primary", id: "answer-send" }, "Send answer");
    const form = h("form", { id: "answer-form" });
    async function submit(value) {
      send.disabled = true;
      error.replaceChildren();
      try {
        const response = await ctx.api.resumeRun(name, value);
        if (response.run) setStatus(response.run.status);
        interruptSlot.replaceChildren(h("p", { class: "notice" }, "Answer sent; the run continues."));
        ctx.announce("Answer sent");
      } catch (err) {
        error.replaceChildren(errorNotice(err));
        send.disabled = false;
      }
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      let value = answer.value;
      if (asJson.checked) {
        try {
          value = JSON.parse(answer.value);
        } catch (err) {
          error.replaceChildren(errorNotice(new Error(`The answer is not valid JSON: ${err.message}`)));
          return;
        }
      }
      submit(value);
    });
    form.append(
      options.length ? h("div", { class: "row", role: "group", "aria-label": "Choices" },
        ...options.map((option) => h("button", { type: "button", onclick: () => submit(option) },
          typeof option === "string" ? option : compactJson(option, 40)))) : null,
      h("label", { for: "answer" }, options.length ? "Or answer in your own words" : "Your answer"),
      answer,
      h("label", { class: "check" }, asJson, "Send as JSON"),
      error,
      h("div", { class: "actions" }, send),
    );
    interruptSlot.replaceChildren(h("section", { class: "card interrupt", role: "region", "aria-labelledby": "interrupt-title" },
      h("h2", { id: "interrupt-title" }, `The run is waiting for an answer${interrupt.node ? ` (node ${interrupt.node})` : ""}`),
      h("p", { class: "question", id: "question" }, questionText(value)),
      ...questionDetails(value, diffPart ? DIFF_QUESTION_KEYS : undefined),
      diffPart,
      form));
    if (!state.replaying) {
      ctx.announce("The run is paused and waiting for your answer");
    }
  }

  function showResult() {
    const run = state.run;
    if (!run) return;
    const problems = [];
    if (run.status === "RUN_STATUS_FAILED" || run.status === "RUN_STATUS_CANCELLED") {
      const failed = run.status === "RUN_STATUS_FAILED";
      problems.push(h("p", { class: `notice ${failed ? "error" : "warn"}`, id: "run-error", role: failed ? "alert" : null },
        h("strong", {}, statusLabel(run.status)), run.error ? `: ${run.error}` : failed ? ": no reason was recorded." : "."));
    }
    if (run.output && run.output.status === "rejected") {
      problems.push(h("p", { class: "notice warn", id: "run-rejected" },
        `Rejected${run.output.reason ? `: ${run.output.reason}` : ""}. The run completed without a plan.`));
    }
    // Stopped mid-answer (out of time, cancelled): what it streamed is kept on the run.
    const partial = typeof run.output?.partial === "string" ? run.output.partial : "";
    if (partial && (run.status === "RUN_STATUS_FAILED" || run.status === "RUN_STATUS_CANCELLED")) {
      // Its tokens are no longer in the log (expired): the kept text fills the box instead.
      if (state.ended && !state.replaying && output.isEmpty()) output.append(partial);
      const chars = `${partial.length} character${partial.length === 1 ? "" : "s"}`;
      problems.push(h("p", { class: "notice", id: "run-partial" }, h("strong", {}, "Partial output"),
        `: the ${chars} below streamed before the run stopped; they are kept on the run (output.partial).`));
    }
    problemSlot.replaceChildren(...problems);
    // A finished run that wrote nothing: say so in one line instead of an empty box.
    if (state.ended && !state.replaying && output.isEmpty()) {
      output.settleEmpty(problems.length ? "No output: the run ended before writing any." : "No output.");
    }
    const parts = [];
    if (run.output && Object.keys(run.output).length) {
      parts.push(h("details", { class: "card", id: "run-output-json" },
        h("summary", {}, h("strong", {}, "Result (JSON)")), h("pre", {}, prettyJson(run.output))));
    }
    resultSlot.replaceChildren(...parts);
  }

  // -- events ---------------------------------------------------------------------------------

  function apply(event, sequence) {
    const previous = state.status;
    const change = reduce(state, event);
    if (change.marker) output.marker(change.marker);
    if (change.text !== undefined) output.append(change.text);
    for (const [node, nodeState] of change.nodes) drawNode(node, nodeState);
    if (change.status) statusChanged(previous);
    if (change.retried) {
      renderMeta();
      output.marker(`Attempt ${state.attempt || "?"}: a worker picked the run up again and continues from its last checkpoint`);
    }
    if (change.interrupt) showInterrupt(change.interrupt);
    else if (change.interrupt === null && state.interrupt) showInterrupt(null);
    if (change.passages) {
      passagesCard.hidden = false;
      for (const hit of hitsOf(event.data)) passages.append(passage(hit));
    }
    if (change.stepDone && !state.replaying) reloadSteps();
    if (change.activity) addActivity(event, sequence);
  }

  function onEvent(event, sequence) {
    state.events.push({ sequence, type: event.type, time: event.time, data: event.data });
    if (!state.replaying) apply(event, sequence);
  }

  async function refreshRun({ retry = false } = {}) {
    try {
      const response = await ctx.api.getRun(name);
      if (stopped) return null;
      if (retry) notices.replaceChildren();
      state.run = response.run;
      steps.run = state.run;
      if (!state.replaying) setStatus(state.run.status);
      renderBadge();
      renderMeta();
      updateCancel();
      if (!state.replaying) reloadSteps();
      if (TERMINAL_STATUSES.has(state.run.status)) showResult();
      if (!state.replaying) diffView.show(state.run);
      if (state.run.status === "RUN_STATUS_PAUSED" && !state.interrupt && state.run.interrupt && !state.replaying) {
        showInterrupt(state.run.interrupt);
      }
      return state.run;
    } catch (error) {
      notices.replaceChildren(errorNotice(error));
      // The gateway or the agents service is down (restarting?): try again shortly.
      if (retry && !stopped && (error.httpStatus === 0 || error.httpStatus >= 500)) {
        await new Promise((resolve) => setTimeout(resolve, 2000));
        return stopped ? null : refreshRun({ retry });
      }
      return null;
    }
  }

  // -- replay ---------------------------------------------------------------------------------

  let replayTimer = 0;
  function resetView() {
    output.reset();
    Object.assign(state, newRunState([...state.nodes.keys()]));
    renderNodes();
    passages.replaceChildren();
    passagesCard.hidden = true;
    activity.replaceChildren();
    interruptSlot.replaceChildren();
    state.interrupt = null;
    badgeSlot.replaceChildren(statusBadge(""));
  }

  function finishReplay() {
    clearTimeout(replayTimer);
    state.replaying = false;
    replayButton.textContent = "Replay";
    replayButton.disabled = false;
    output.status("");
    updateCancel();
    if (state.run) {
      setStatus(state.run.status);
      if (state.run.status === "RUN_STATUS_PAUSED" && state.run.interrupt && !state.interrupt) showInterrupt(state.run.interrupt);
    }
    output.flush();
    if (state.run && TERMINAL_STATUSES.has(state.run.status)) showResult();
    ctx.announce("Replay finished");
  }

  function replay() {
    if (state.replaying) {
      // "Skip": play the rest at once.
      clearTimeout(replayTimer);
      while (replayIndex < state.events.length) {
        const event = state.events[replayIndex++];
        apply(event, event.sequence);
      }
      finishReplay();
      return;
    }
    state.replaying = true;
    replayButton.textContent = "Skip to end";
    resetView();
    updateCancel();
    output.status(`Replaying ${state.events.length} recorded events${Number(speed.value) ? ` at ${speed.value}×` : ""}`);
    replayIndex = 0;
    const factor = Number(speed.value);
    ctx.announce("Replaying the run");
    const step = () => {
      if (stopped) return;
      // Apply every event due now; wait for the next one's original gap (capped at 1 s).
      do {
        const event = state.events[replayIndex++];
        apply(event, event.sequence);
        if (replayIndex >= state.events.length) {
          finishReplay();
          return;
        }
        const gap = factor ? gapMs(state.events[replayIndex - 1], state.events[replayIndex]) / factor : 0;
        if (gap >= 4) {
          replayTimer = setTimeout(step, gap);
          return;
        }
      } while (factor === 0 || replayIndex % 200 !== 0);
      replayTimer = setTimeout(step, 0);
    };
    if (state.events.length) step();
    else finishReplay();
  }
  let replayIndex = 0;

  function gapMs(a, b) {
    const gap = Date.parse(b.time) - Date.parse(a.time);
    return Number.isFinite(gap) ? Math.min(Math.max(gap, 0), 1000) : 0;
  }

  // -- actions --------------------------------------------------------------------------------

  function askCancel(asking) {
    cancelConfirm.hidden = !asking;
    cancelButton.hidden = asking;
    if (asking) cancelNo.focus();
  }
  cancelButton.addEventListener("click", () => askCancel(true));
  cancelNo.addEventListener("click", () => {
    askCancel(false);
    cancelButton.focus();
  });
  cancelYes.addEventListener("click", async () => {
    askCancel(false);
    cancelButton.disabled = true;
    try {
      const response = await ctx.api.cancelRun(name, "cancelled from the dashboard");
      if (response.run) {
        state.run = response.run;
        setStatus(response.run.status);
        renderMeta();
      }
    } catch (error) {
      notices.replaceChildren(errorNotice(error));
      cancelButton.disabled = !ACTIVE_STATUSES.has(state.status);
    }
  });
  function askDelete(asking) {
    deleteConfirm.hidden = !asking;
    deleteButton.hidden = asking;
    if (asking) deleteNo.focus();
  }
  deleteButton.addEventListener("click", () => askDelete(true));
  deleteNo.addEventListener("click", () => {
    askDelete(false);
    deleteButton.focus();
  });
  deleteYes.addEventListener("click", async () => {
    deleteYes.disabled = true;
    // Nothing more is read of the run (its steps, its stream's end): it is about to be gone.
    reloadSteps.cancel();
    if (subscription) subscription.close();
    try {
      await ctx.api.deleteRun(name);
      ctx.announce("Run deleted");
      // Where the run was: its thread (whose state it wrote stays), else the runs list.
      const thread = state.run && state.run.thread;
      ctx.navigate(thread ? `/threads/${idOf(thread)}` : "/runs");
    } catch (error) {
      askDelete(false);
      notices.replaceChildren(errorNotice(error));
      followAfterEnd();
    } finally {
      deleteYes.disabled = false;
    }
  });
  replayButton.addEventListener("click", replay);
  rerunButton.addEventListener("click", async () => {
    rerunButton.disabled = true;
    try {
      const response = await ctx.api.rerunRun(name, uuid());
      ctx.announce("Run started again");
      ctx.navigate(`/runs/${idOf(response.run.name)}`);
    } catch (error) {
      notices.replaceChildren(errorNotice(error));
      rerunButton.disabled = false;
    }
  });

  /** What the run's log got after its end (git.landed, git.discarded): StreamRun from the last
   * event seen replays it and ends. */
  function followAfterEnd() {
    const last = state.events.length ? state.events[state.events.length - 1].sequence : 0;
    if (subscription) subscription.close();
    subscription = ctx.socket.subscribe({ run: name, since: last }, { onEvent });
  }

  // -- start ----------------------------------------------------------------------------------

  let stopped = false;
  let subscription = null;

  (async () => {
    const run = await refreshRun({ retry: true });
    if (stopped || !run) return;
    if (run.workflow) {
      try {
        const { workflows = [] } = await ctx.api.listWorkflows();
        const workflow = workflows.find((w) => w.name === run.workflow);
        for (const node of (workflow && workflow.nodes) || []) if (!state.nodes.has(node)) state.nodes.set(node, "pending");
        if (workflow && (workflow.edges || []).length) {
          graph = new GraphView(workflow);
          graphCard.append(graph.element);
          graphCard.hidden = false;
        }
        renderNodes();
      } catch {
        // Nodes appear as they start.
      }
    }
    if (stopped) return;
    subscription = ctx.socket.subscribe({ run: name, since: "beginning" }, {
      onEvent,
      onEnd() {
        state.ended = true;
        replayButton.disabled = false;
        refreshRun({ retry: true });
      },
      onError(message, final) {
        if (final) {
          notices.replaceChildren(h("p", { class: "notice error", role: "alert" }, `The run's stream stopped: ${message}`));
        } else {
          // Passing trouble (an upstream restarting) shows in the toolbar: nothing moves.
          output.status(message);
        }
      },
      onSubscribed() {
        if (!state.replaying) output.status("");
      },
    });
  })();

  return () => {
    stopped = true;
    reloadSteps.cancel();
    clearTimeout(replayTimer);
    if (subscription) subscription.close();
  };
}

