// Unit tests of the dashboard's pure modules (no browser): `node --test tests/dashboard/js/`.
import assert from "node:assert/strict";
import { test } from "node:test";

const STATIC = new URL("../../../services/gateway/amelia_gateway/static/js/", import.meta.url);
const filters = await import(new URL("filters.js", STATIC));
const { buildRunFilter, quoteFilter, threadName } = filters;
const { layout } = await import(new URL("graph.js", STATIC));
const { outcome, shortStatus } = await import(new URL("runstatus.js", STATIC));

test("the runs filter is one AIP-160 expression, each part ANDed", () => {
  assert.equal(buildRunFilter({}), "");
  assert.equal(
    buildRunFilter({ q: 'say "hi" \\o/', target: "workflows/echo", status: "FAILED,PAUSED", since: "1h", filter: "attempt > 1" }, 3600e3),
    '"say \\"hi\\" \\\\o/" AND workflow = "workflows/echo" AND (status = FAILED OR status = PAUSED)'
      + ' AND create_time > "1970-01-01T00:00:00.000Z" AND (attempt > 1)',
  );
  assert.equal(buildRunFilter({ target: "agents/helper", status: "COMPLETED" }), 'agent = "agents/helper" AND status = COMPLETED');
  assert.equal(buildRunFilter({ since: "forever" }), "");
  assert.equal(quoteFilter('a"b'), '"a\\"b"');
});

test("a thread pasted in any form becomes threads/<id>", () => {
  const id = "8b0a3c7e-1234-4abc-9def-0123456789ab";
  assert.equal(threadName(id), `threads/${id}`);
  assert.equal(threadName(` threads/${id} `), `threads/${id}`);
  assert.equal(threadName(`http://localhost:8000/#/threads/${id.toUpperCase()}`), `threads/${id}`);
  assert.equal(threadName("abc"), "threads/abc"); // the API says what is wrong with it
});

test("graph layers follow the longest path; loops do not add depth", () => {
  const edges = [
    { source: "__start__", target: "discovery" },
    { source: "discovery", target: "design" },
    { source: "design", target: "approval" },
    { source: "approval", target: "approval", conditional: true },
    { source: "approval", target: "planning", conditional: true },
    { source: "approval", target: "__end__", conditional: true },
    { source: "planning", target: "__end__" },
  ];
  const { layers, back } = layout(["discovery", "design", "approval", "planning"], edges);
  assert.deepEqual(layers, [["__start__"], ["discovery"], ["design"], ["approval"], ["planning"], ["__end__"]]);
  assert.deepEqual([...back], ["approval>approval"]);
  const branches = layout(["retrieve", "respond"], [
    { source: "__start__", target: "retrieve", conditional: true },
    { source: "__start__", target: "respond", conditional: true },
    { source: "retrieve", target: "respond" },
    { source: "respond", target: "__end__" },
  ]);
  assert.deepEqual(branches.layers, [["__start__"], ["retrieve"], ["respond"], ["__end__"]]);
  const loop = layout(["a", "b"], [
    { source: "__start__", target: "a" }, { source: "a", target: "b" },
    { source: "b", target: "a", conditional: true }, { source: "b", target: "__end__", conditional: true },
  ]);
  assert.deepEqual([...loop.back], ["b>a"]);
  assert.deepEqual(loop.layers.at(-1), ["__end__"]);
});

test("a completed rejection reads Rejected; other statuses read their word", () => {
  assert.deepEqual(outcome("RUN_STATUS_COMPLETED", { status: "rejected" }), { label: "Rejected", tone: "warn" });
  assert.deepEqual(outcome("RUN_STATUS_COMPLETED", { status: "approved" }), { label: "Completed", tone: "ok" });
  assert.deepEqual(outcome("RUN_STATUS_FAILED"), { label: "Failed", tone: "bad" });
  assert.deepEqual(outcome(""), { label: "Unknown", tone: "idle" });
  assert.equal(shortStatus("RUN_STATUS_PAUSED"), "PAUSED");
});

const { newRunState, reduce } = await import(new URL("runstate.js", STATIC));

function play(nodes, events) {
  const run = newRunState(nodes);
  const changes = events.map(([type, data]) => reduce(run, { type, data }));
  return { run, changes };
}

test("a run that ended before reaching a node: not run when it failed or was cancelled", () => {
  for (const end of ["run.cancelled", "run.failed"]) {
    // A queued run cancelled (or failed) before a worker took it: no node ever started.
    const queued = play(["discovery", "design"], [[end, {}]]);
    assert.deepEqual([...queued.run.nodes], [["discovery", "notrun"], ["design", "notrun"]], end);
    assert.deepEqual(queued.changes[0].nodes, [["discovery", "notrun"], ["design", "notrun"]]);
    // Stopped in the middle: the node running ended with it, the next one never ran.
    const midway = play(["discovery", "design"], [["run.node.started", { node: "discovery", task: "t1" }], [end, {}]]);
    assert.deepEqual([...midway.run.nodes], [["discovery", end === "run.failed" ? "error" : "stopped"], ["design", "notrun"]]);
  }
});

test("a plan rejected: nodes done, planning skipped, sections per node, the question gone", () => {
  const { run, changes } = play(["discovery", "design", "approval", "planning"], [
    ["workflow.started", {}],
    ["run.node.started", { node: "discovery", task: "t1" }],
    ["run.token", { text: "notes " }],
    ["run.token", { text: "more" }],
    ["run.node.finished", { node: "discovery", task: "t1" }],
    ["run.node.started", { node: "design", task: "t2" }],
    ["run.token", { text: "design" }],
    ["run.node.finished", { node: "design", task: "t2" }],
    ["run.node.started", { node: "approval", task: "t3" }],
    ["run.interrupted", { node: "approval", value: { question: "Approve?" } }],
    ["run.resumed", { reason: "answer", attempt: 2 }],
    ["run.node.finished", { node: "approval", task: "t3" }],
    ["run.completed", { usage: { input_tokens: 5, output_tokens: 3 } }],
  ]);
  assert.equal(run.status, "RUN_STATUS_COMPLETED");
  assert.deepEqual([...run.nodes], [["discovery", "done"], ["design", "done"], ["approval", "done"], ["planning", "skipped"]]);
  assert.deepEqual(changes.map((c) => c.marker).filter(Boolean), ["discovery", "design"]);
  assert.deepEqual([...run.tokens], [["t1", 2], ["t2", 1]]);
  assert.equal(run.retries, 0, "an answer is not a retry");
  assert.deepEqual(changes[9].interrupt, { node: "approval", value: { question: "Approve?" } });
  assert.equal(changes[10].interrupt, null);
  assert.equal(changes.filter((c) => c.stepDone).length, 3);
  assert.equal(changes.filter((c) => !c.activity).length, 3, "tokens are not activity");
  assert.deepEqual(run.usage, { input_tokens: 5, output_tokens: 3 });
});

test("a worker that stopped counts as a retry; a one-node graph needs no section label", () => {
  const { run, changes } = play(["echo"], [
    ["run.node.started", { node: "echo", task: "t1" }],
    ["run.token", { text: "a" }],
    ["run.resumed", { reason: "redelivered", attempt: 2 }],
    ["run.node.started", { node: "echo", task: "t1" }],
    ["run.token", { text: "a" }],
    ["run.failed", { error: "boom" }],
  ]);
  assert.equal(run.retries, 1);
  assert.equal(run.attempt, 2);
  assert.ok(changes[2].retried);
  assert.deepEqual(changes.map((c) => c.marker).filter(Boolean), []);
  assert.deepEqual([...run.nodes], [["echo", "error"]]);
  assert.equal(run.status, "RUN_STATUS_FAILED");
  // A node event after the end does not make the run "running" again.
  reduce(run, { type: "run.node.started", data: { node: "late" } });
  assert.equal(run.status, "RUN_STATUS_FAILED");
});

test("runs sort by clicking a column: descending first, then flipping", () => {
  const { RUN_ORDERS, nextOrder, sortState } = filters;
  assert.equal(RUN_ORDERS[nextOrder("duration", "")][1], "duration desc");
  assert.equal(RUN_ORDERS[nextOrder("duration", "longest")][1], "duration");
  assert.equal(RUN_ORDERS[nextOrder("duration", "shortest")][1], "duration desc");
  assert.equal(RUN_ORDERS[nextOrder("tokens", "oldest")][1], "usage.total_tokens desc");
  assert.equal(nextOrder("created", ""), "oldest");
  assert.equal(nextOrder("created", "oldest"), "");
  assert.equal(sortState("created", ""), "descending");
  assert.equal(sortState("tokens", "fewest-tokens"), "ascending");
  assert.equal(sortState("duration", "most-tokens"), "none");
});

test("a run's node usage: tokens per task from run.node.finished, cost only when every node has one", async () => {
  const { newRunState, reduce, usageTotals } = await import(new URL("runstate.js", STATIC));
  const run = newRunState(["a", "b"]);
  reduce(run, { type: "run.node.finished", data: { node: "a", task: "t1", input_tokens: 10, output_tokens: 5, models: ["offline:echo"], cost_usd: 0.02 } });
  reduce(run, { type: "run.node.finished", data: { node: "b", task: "t2" } }); // no model call
  assert.deepEqual(run.nodeUsage.get("t1"), { input: 10, output: 5, models: ["offline:echo"], cost: 0.02 });
  assert.equal(run.nodeUsage.has("t2"), false);
  assert.deepEqual(usageTotals(run.nodeUsage), { input: 10, output: 5, cost: 0.02 });
  reduce(run, { type: "run.node.finished", data: { node: "a", task: "t3", input_tokens: 1, output_tokens: 1, models: ["openai:x"] } });
  assert.deepEqual(usageTotals(run.nodeUsage), { input: 11, output: 6, cost: undefined });
  assert.deepEqual(usageTotals(new Map()), { input: 0, output: 0, cost: undefined });
});

test("a run's usage from GetRun's JSON or its end event, and the interrupted attempts' share", async () => {
  const { interruptedText, runUsage } = await import(new URL("runstate.js", STATIC));
  // GetRun's JSON: int64 as strings, camelCase; the share left out when 0.
  assert.deepEqual(runUsage({ inputTokens: "675", outputTokens: "517", interruptedInputTokens: "375", interruptedOutputTokens: "217" }),
    { input: 675, output: 517, interruptedInput: 375, interruptedOutput: 217 });
  assert.equal(interruptedText({ inputTokens: "300", outputTokens: "300" }), "");
  // The run's end event: snake_case numbers.
  assert.equal(interruptedText({ input_tokens: 44, output_tokens: 20, interrupted_input_tokens: 11, interrupted_output_tokens: 5 }), "11 in / 5 out");
  assert.deepEqual(runUsage(null), { input: 0, output: 0, interruptedInput: 0, interruptedOutput: 0 });
});

test("the steps card gives the run's duration; the steps' own time only when the rest was waiting", async () => {
  const { StepsView } = await import(new URL("views/steps.js", STATIC));
  const timing = (run, steps) => StepsView.prototype.timing.call({ run }, steps);
  const at = (s) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();
  const step = (start, end) => ({ startTime: at(start), endTime: end === undefined ? undefined : at(end) });
  const ended = { startTime: at(0), endTime: at(30), duration: "30s" };
  // A timeout: one step whose checkpoints are 1 ms apart, a run of 30 s.
  assert.equal(timing(ended, [step(0)]), " · the run took 30.0 s");
  // Three steps taking 2 s in all, 28 s waiting for an answer.
  assert.equal(timing(ended, [step(0, 1), step(1, 1.5), step(29.5, 30)]), " · the run took 30.0 s, 2.00 s of it in its steps");
  // Steps that fill the run: nothing to add.
  assert.equal(timing(ended, [step(0, 15), step(15, 30)]), " · the run took 30.0 s");
  assert.equal(timing({ startTime: at(0) }, [step(0)]), " so far");
  assert.equal(timing(null, [step(0)]), "");
});

test("a run cancelled while it waits for an answer: the waiting node reads stopped, the next not run, the question is gone", async () => {
  const { newRunState, reduce } = await import(new URL("runstate.js", STATIC));
  const run = newRunState(["draft", "approve", "finish"]);
  reduce(run, { type: "run.node.started", data: { node: "draft", task: "t1" } });
  reduce(run, { type: "run.node.finished", data: { node: "draft", task: "t1" } });
  reduce(run, { type: "run.node.started", data: { node: "approve", task: "t2" } });
  reduce(run, { type: "run.interrupted", data: { node: "approve", value: "Ship it?" } });
  assert.equal(run.nodes.get("approve"), "waiting");
  const change = reduce(run, { type: "run.cancelled", data: { reason: "no" } });
  assert.deepEqual(Object.fromEntries(run.nodes), { draft: "done", approve: "stopped", finish: "notrun" });
  assert.equal(change.interrupt, null);
});

test("of two loads, the older answering last is dropped: the newer one's answer stays shown", async () => {
  const { loads } = await import(new URL("dom.js", STATIC));
  const current = loads();
  const shown = [];
  const answers = new Map();
  async function load(filter) {
    const latest = current();
    const answer = await new Promise((resolve) => answers.set(filter, resolve));
    if (latest()) shown.push(answer);
  }
  const idle = load("idle");
  const busy = load("busy"); // the filter changed while the first list was on its way
  answers.get("busy")("the busy threads");
  await busy;
  answers.get("idle")("the idle threads");
  await idle;
  assert.deepEqual(shown, ["the busy threads"]);
  // A load that is the latest is shown, whatever came before.
  await Promise.all([load("all"), Promise.resolve().then(() => answers.get("all")("every thread"))]);
  assert.deepEqual(shown, ["the busy threads", "every thread"]);
});
