// The pure part of the run screen: a run's events, one at a time, change its state (status,
// each node's state, the node streaming tokens, tokens per LangGraph task, retries); `reduce`
// returns what changed, for the view to draw. No DOM here: unit-tested with `node --test`.

import { TERMINAL_EVENTS, TERMINAL_STATUSES } from "./runstatus.js";

/** A run's state before its first event; `nodes` are the workflow's, all pending. */
export function newRunState(nodes = []) {
  return {
    status: "",
    nodes: new Map(nodes.map((node) => [node, "pending"])), // node -> pending|active|done|error|waiting|stopped|skipped|notrun
    attempt: 0,
    activeNode: "", // the node that started last
    activeTask: "", // its LangGraph task id
    tokenNode: "", // the node the last tokens belonged to
    tokens: new Map(), // task id -> tokens it streamed
    nodeUsage: new Map(), // task id -> {input_tokens, output_tokens, models, cost_usd?} of its model calls
    pieces: 0, // tokens so far
    retries: 0, // pick-ups after a worker stopped (answering a question is not one)
    usage: null,
  };
}

/** A finished node's model usage (and cost, when the service knows its models' prices). */
function nodeUsageOf(data) {
  const usage = { input: Number(data.input_tokens || 0), output: Number(data.output_tokens || 0), models: data.models || [] };
  if (typeof data.cost_usd === "number") usage.cost = data.cost_usd;
  return usage;
}

/** Totals of the nodes' usage: tokens, and the cost when every node that used tokens has one. */
export function usageTotals(nodeUsage) {
  let input = 0;
  let output = 0;
  let cost = 0;
  let priced = true;
  for (const usage of nodeUsage.values()) {
    input += usage.input;
    output += usage.output;
    if (usage.cost === undefined) priced = false;
    else cost += usage.cost;
  }
  return { input, output, cost: priced && nodeUsage.size ? cost : undefined };
}

/**
 * A run's token usage, from GetRun's JSON (`inputTokens`, int64 as strings) or a run's end event
 * (`input_tokens`): `input`, `output`, and of them `interruptedInput`, `interruptedOutput` — the
 * calls of nodes an interrupted attempt did not finish (they ran again: no step counts them).
 */
export function runUsage(usage) {
  const count = (camel, snake) => Number((usage && (usage[camel] ?? usage[snake])) || 0);
  return {
    input: count("inputTokens", "input_tokens"),
    output: count("outputTokens", "output_tokens"),
    interruptedInput: count("interruptedInputTokens", "interrupted_input_tokens"),
    interruptedOutput: count("interruptedOutputTokens", "interrupted_output_tokens"),
  };
}

// What "in interrupted attempts" counts (docs/agents.md, "Token usage").
export const INTERRUPTED_TITLE = "Model calls of nodes an attempt did not finish before it was interrupted "
  + "(its worker stopped or froze, or NATS or PostgreSQL did not answer): those nodes ran again, "
  + "so the steps do not count these calls; the run's total does, as a bill does.";

/** What the run's interrupted attempts used ("375 in / 217 out"), or "" when none. */
export function interruptedText(usage) {
  const used = runUsage(usage);
  return used.interruptedInput + used.interruptedOutput
    ? `${used.interruptedInput} in / ${used.interruptedOutput} out` : "";
}

const ENDED_NODE = { "run.completed": "done", "run.failed": "error", "run.cancelled": "stopped" };
// A node the run never reached: skipped by a completed run (a rejected plan's `planning`), not
// run by one that failed or was cancelled (a queued run cancelled before it started: all).
const UNREACHED_NODE = { "run.completed": "skipped", "run.failed": "notrun", "run.cancelled": "notrun" };

/**
 * Applies `event` ({type, data}) to `run`. Returns the changes: `status` (the new one), `nodes`
 * ([node, state] pairs), `marker` (a labelled section starts), `text` (tokens), `interrupt`
 * (the question, or null when it is gone), `passages` (hits), `retried`, `stepDone` (a node
 * finished: the steps changed), `activity` (whether it belongs in the activity log).
 */
export function reduce(run, event) {
  const data = event.data || {};
  const change = { nodes: [], activity: true };
  const attempt = Number(data.attempt || 0);
  if (attempt > run.attempt) run.attempt = attempt;
  const status = (value) => {
    if (value && value !== run.status) {
      run.status = value;
      change.status = value;
    }
  };
  const node = (name, value) => {
    if (!name) return;
    run.nodes.set(name, value);
    change.nodes.push([name, value]);
  };
  switch (event.type) {
    case "run.token":
      change.activity = false;
      if (run.activeNode !== run.tokenNode) {
        // Each node's tokens start a labelled section; a graph of one node needs no label.
        if (run.activeNode && (run.nodes.size > 1 || run.pieces > 0)) change.marker = run.activeNode;
        run.tokenNode = run.activeNode;
      }
      if (run.activeTask) run.tokens.set(run.activeTask, (run.tokens.get(run.activeTask) || 0) + 1);
      run.pieces += 1;
      change.text = String(data.text ?? "");
      break;
    case "agent.started":
    case "workflow.started":
      status("RUN_STATUS_RUNNING");
      break;
    case "run.node.started":
      node(data.node, "active");
      run.activeNode = data.node || "";
      run.activeTask = data.task || "";
      if (!TERMINAL_STATUSES.has(run.status)) status("RUN_STATUS_RUNNING");
      break;
    case "run.node.finished":
      node(data.node, data.error ? "error" : data.interrupted ? "waiting" : "done");
      if (data.task && (data.input_tokens || data.output_tokens)) run.nodeUsage.set(data.task, nodeUsageOf(data));
      change.stepDone = true;
      break;
    case "run.interrupted":
      status("RUN_STATUS_PAUSED");
      node(data.node, "waiting");
      change.interrupt = { node: data.node, value: data.value };
      break;
    case "run.resumed":
      status("RUN_STATUS_RUNNING");
      if (data.reason && data.reason !== "answer") {
        // A worker stopped and another picked the run up: it continues from the last
        // checkpoint, so tokens of the interrupted node may come again.
        run.retries += 1;
        change.retried = true;
      }
      change.interrupt = null;
      break;
    case "run.retrieval":
      change.passages = true;
      break;
    default:
      if (TERMINAL_EVENTS[event.type]) {
        status(TERMINAL_EVENTS[event.type]);
        if (data.usage) run.usage = data.usage;
        change.interrupt = null;
        for (const [name, value] of run.nodes) {
          // A node running, or waiting for an answer, when the run ended ended with it.
          if (value === "active" || value === "waiting") node(name, ENDED_NODE[event.type]);
          else if (value === "pending") node(name, UNREACHED_NODE[event.type]);
        }
      }
  }
  return change;
}
