// Threads: the list (most recently active first, with each thread's first message, status —
// idle, busy, interrupted, error, filtered by `#/threads?status=busy` — and run count), and one thread as a conversation — each run's message and reply, in order — with a
// form to send a message (a new run on the thread: the graph starts again from its start, on the
// thread's state, so it shares the thread's memory), then its state, history, edit form and
// "Continue from here (no input)" (views/threadstate.js), read after the runs. A running run's turn streams its tokens
// (the run page's stream: ws.js, runstate.js, output.js); Send on a busy thread asks what to do
// with the run that has not ended (the start form's multitask strategies: enqueue, interrupt,
// rollback), as LangGraph Studio's double-texting. Under the thread's name, its metadata (edited
// in place) and "Copy thread" (views/threadmeta.js).

import { compactJson, debounce, errorNotice, formatTime, h, idOf, loads, uuid } from "../dom.js";
import { questionsOf } from "../checkpoint.js";
import { OutputView } from "../output.js";
import { ACTIVE_STATUSES, shortStatus, statusBadge } from "../runstatus.js";
import { newRunState, reduce } from "../runstate.js";
import { multitaskSelect } from "./runs.js";
import { ThreadStatePanel } from "./threadstate.js";
import { ThreadMetaPanel } from "./threadmeta.js";
import { retryOnOutage } from "../health.js";

const PAGE_SIZE = 25;
// Events that change a thread's status: a run starts, waits behind another, pauses, resumes or ends.
const LIFECYCLE = ["agent.started", "workflow.started", "run.queued", "run.interrupted", "run.resumed",
  "run.completed", "run.failed", "run.cancelled"];

function messageOf(value) {
  if (!value || typeof value !== "object") return value === undefined || value === null ? "" : String(value);
  for (const key of ["message", "question", "plan", "design", "result"]) {
    if (typeof value[key] === "string" && value[key]) return value[key];
  }
  return Object.keys(value).length ? compactJson(value, 600) : "";
}

/** A run started without input (the State panel's "Continue from here"): no message to show. */
function hasNoInput(run) {
  return !run.input || (typeof run.input === "object" && !Object.keys(run.input).length);
}

/** The user's side of a run's turn: its message, or that it was continued without one. */
function userTurn(run) {
  if (hasNoInput(run)) {
    return h("li", { class: "turn user no-input", dataset: { run: run.name } }, h("span", { class: "who" }, "Continued"),
      h("div", { class: "text muted" }, "continued (no input): the graph's next nodes ran on the thread's state"));
  }
  return h("li", { class: "turn user", dataset: { run: run.name } }, h("span", { class: "who" }, "Message"),
    longText(messageOf(run.input)));
}

function replyOf(run) {
  if (run.output && run.output.status === "rejected") return `Rejected: ${run.output.reason || ""}`;
  const text = messageOf(run.output);
  if (text) return text;
  if (run.error) return run.error;
  return "";
}

/** A turn's text; a long one scrolls inside its turn (and takes the keyboard focus to). */
function longText(text) {
  return h("div", { class: "text", tabindex: text.length > 1500 ? "0" : null }, text);
}

// A thread's status (ListThreads, LangGraph Server's): the word the API's `status` filter takes,
// its label and its badge's tone (as the run statuses it stands for).
export const THREAD_STATUSES = [
  ["THREAD_STATUS_IDLE", "idle", "Idle", "ok"],
  ["THREAD_STATUS_BUSY", "busy", "Busy", "info"],
  ["THREAD_STATUS_INTERRUPTED", "interrupted", "Interrupted", "warn"],
  ["THREAD_STATUS_ERROR", "error", "Error", "bad"],
];

function threadBadge(thread) {
  const found = THREAD_STATUSES.find(([name]) => name === thread.status);
  const [, word, label, tone] = found || ["", "", "Unknown", "idle"];
  const latest = thread.latestRun;
  const title = latest ? `latest run ${idOf(latest.name).slice(0, 8)}: ${shortStatus(latest.status).toLowerCase()}` : "no runs yet";
  return h("span", { class: `badge ${tone}`, "data-thread-status": word, title }, label);
}

function listView(main, ctx) {
  // "Loading…" until the first answer: an empty table read as "no threads" while the agents
  // service hung.
  const body = h("tbody", {}, h("tr", {}, h("td", { colspan: "4", class: "empty" }, "Loading threads…")));
  const error = h("div", { "aria-live": "polite" });
  const more = h("button", { type: "button", hidden: true }, "More");
  const wanted = ctx.query().get("status") || "";
  const status = h("select", { id: "threads-status" },
    h("option", { value: "" }, "Any status"),
    ...THREAD_STATUSES.map(([, word, label]) => h("option", { value: word }, label)));
  status.value = THREAD_STATUSES.some(([, word]) => word === wanted) ? wanted : "";
  main.append(h("h1", {}, "Threads"),
    h("section", { class: "card" },
      h("p", { class: "hint" }, "Runs in a thread share memory (the conversation so far). Open one to read it and send it a message."),
      h("form", { id: "threads-filters", class: "filters", role: "search" }, h("div", { class: "row" }, h("label", { for: "threads-status" }, "Status"), status)),
      error,
      h("div", { class: "table-wrap" }, h("table", { id: "threads-table" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "First message"), h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col", class: "num" }, "Runs"), h("th", { scope: "col", class: "when" }, "Last active"))),
        body)),
      h("div", { class: "pager" }, more)));
  let token = "";
  let stopped = false;
  const threadLoads = loads();
  let shown = 1;  // pages shown: a live reload keeps what More added
  async function load(append = false) {
    const latest = threadLoads();
    try {
      const query = { orderBy: "update_time desc", pageSize: PAGE_SIZE * (append ? 1 : shown), pageToken: append ? token : "" };
      if (status.value) query.status = status.value;
      const response = await ctx.api.listThreads(query);
      if (stopped || !latest()) return;
      error.replaceChildren();
      retry.ok();
      token = response.nextPageToken || "";
      more.hidden = !token;
      const rows = (response.threads || []).map((thread) => h("tr", { dataset: { thread: thread.name } },
        h("td", { class: "preview" }, h("a", { href: `#/threads/${idOf(thread.name)}`, dir: "auto" }, thread.preview || `(no message) ${idOf(thread.name)}`)),
        h("td", {}, threadBadge(thread)),
        h("td", { class: "num" }, String(thread.runCount || 0)),
        h("td", { class: "when" }, formatTime(thread.updateTime))));
      if (append) {
        shown += 1;
        body.append(...rows);
      } else if (rows.length) body.replaceChildren(...rows);
      else {
        const none = status.value ? `No ${status.value} threads.` : "No threads yet: every run starts one.";
        body.replaceChildren(h("tr", {}, h("td", { colspan: "4", class: "empty" }, none)));
      }
    } catch (err) {
      if (!stopped && latest()) error.replaceChildren(errorNotice(err, append ? "" : retry.failed(err)));
    }
  }
  const retry = retryOnOutage(() => load());
  status.addEventListener("change", () => {
    // The filter lives in the URL (a link shares the list); the same screen keeps its place.
    window.history.replaceState(null, "", `#/threads${status.value ? `?status=${status.value}` : ""}`);
    shown = 1;
    load();
  });
  more.addEventListener("click", () => load(true));
  // A run that starts, pauses or ends changes its thread's status: the list follows.
  const refresh = debounce(() => load(), 500);
  const subscription = ctx.socket.subscribe(
    { filter: { types: LIFECYCLE, subject: "runs/*" }, since: "now" },
    { onEvent: refresh });
  load();
  return () => {
    stopped = true;
    refresh.cancel();
    retry.stop();
    subscription.close();
  };
}

const PAGE = 200;

/** A paused run's turn: the question it waits on, and where to answer it (the run's page). */
function waitingQuestion(run) {
  const [question] = questionsOf({ interrupts: [run.interrupt] });
  return h("div", { class: "waiting" },
    h("p", {}, h("strong", {}, "Waiting for an answer: "), question),
    h("a", { href: `#/runs/${idOf(run.name)}`, class: "answer-link" }, "Answer it on the run's page →"));
}

/** A queued or running run's reply: its events from the start (a `run` subscription, as the run
 * page's), reduced by runstate.js, its tokens written into an OutputView as they stream. */
class LiveReply {
  constructor(ctx, run) {
    this.state = newRunState();
    this.output = new OutputView({ label: "Reply so far", placeholder: "Waiting for tokens…" });
    this.output.element.classList.add("live-reply");
    this.subscription = ctx.socket.subscribe({ run: run.name, since: "beginning" }, {
      onEvent: (event) => {
        const change = reduce(this.state, event);
        if (change.marker) this.output.marker(change.marker);
        if (change.text !== undefined) this.output.append(change.text);
      },
    });
  }

  close() {
    this.subscription.close();
  }
}

const STREAMING = new Set(["RUN_STATUS_QUEUED", "RUN_STATUS_RUNNING"]);

function threadView(main, ctx, threadId) {
  const name = `threads/${threadId}`;
  const conversation = h("ol", { class: "conversation", id: "thread-conversation", "aria-label": "Conversation" },
    h("li", { class: "empty" }, "Loading the thread's runs…"));
  const error = h("div", { id: "thread-error", "aria-live": "polite" });
  const message = h("textarea", { id: "thread-message", rows: 3, required: true });
  // Disabled until the thread's runs are read: what Send would run is not known before.
  const send = h("button", { type: "submit", class: "primary", id: "thread-send", disabled: true }, "Send");
  // Shown while a run of the thread has not ended: what Send does with it (double-texting).
  const strategy = multitaskSelect("thread-multitask", { refuse: false });
  const busyText = h("span", { id: "thread-busy-text" }, "");
  const busy = h("div", { id: "thread-busy", class: "busy-choice", hidden: true },
    h("label", { for: "thread-multitask" }, busyText), strategy);
  const targetText = h("span", { class: "mono muted", id: "thread-target" }, "…");
  const formError = h("div", { "aria-live": "polite" });
  const form = h("form", { id: "thread-continue", class: "card", "aria-labelledby": "continue-title" },
    h("h2", { id: "continue-title" }, "Send a message"),
    h("p", { class: "hint" }, "A new run on this thread, of ", targetText, ", with this message and the last run's other inputs. "
      + "The graph starts again from its start, on the thread's latest state (State, below — an edit or a branch there is "
      + "what it sees): the conversation so far carries over. To run only the nodes a checkpoint has left to run, without "
      + "a message, use Continue from here (no input) in State."),
    h("label", { for: "thread-message" }, "Message"), message, busy, formError,
    h("div", { class: "actions" }, send));
  // A long thread: the newest runs are shown (at most PAGE), and the form is one click away.
  const older = h("p", { class: "hint", id: "thread-older", hidden: true });
  const jump = h("button", { type: "button", id: "thread-jump", hidden: true, onclick: () => {
    form.scrollIntoView({ block: "end" });
    message.focus({ preventScroll: true });
  } }, "Latest reply and send a message ↓");
  const meta = new ThreadMetaPanel(ctx, name);
  main.append(
    h("a", { href: "#/threads", class: "back" }, "← Threads"),
    h("h1", {}, "Thread"),
    h("p", { class: "mono break", id: "thread-name" }, name),
    ...meta.elements,
    error, jump, older, conversation, form);
  const panel = new ThreadStatePanel(ctx, name);
  main.append(h("div", { class: "thread-state" }, ...panel.elements));

  let stopped = false;
  const runLoads = loads();
  let last = null;
  let loaded = false; // the runs were read once: Send knows its target
  let sending = false;
  const live = new Map(); // run name -> LiveReply, kept across reloads while the run streams
  /** The reply turn's body: the question a paused run waits on, a live stream, or the reply. */
  function replyBody(run) {
    if (run.status === "RUN_STATUS_PAUSED" && run.interrupt) return waitingQuestion(run);
    if (!STREAMING.has(run.status)) return longText(replyOf(run) || "…");
    if (!live.has(run.name)) live.set(run.name, new LiveReply(ctx, run));
    return live.get(run.name).output.element;
  }
  async function load() {
    const latest = runLoads();
    try {
      // Newest first, so a thread longer than a page shows its latest runs and continues
      // from its last one; read oldest first.
      const response = await ctx.api.listRuns({ filter: `thread = "${name}"`, orderBy: "create_time desc", pageSize: PAGE });
      if (stopped || !latest()) return;
      error.replaceChildren();
      retry.ok();
      loaded = true;
      send.disabled = sending;
      const runs = (response.runs || []).reverse();
      older.hidden = !response.nextPageToken;
      older.replaceChildren(`The latest ${runs.length} runs of this thread; older ones are in `,
        h("a", { href: `#/runs?filter=${encodeURIComponent(`thread = "${name}"`)}&order=oldest` }, "the runs list"), ".");
      jump.hidden = runs.length < 4;
      last = runs[runs.length - 1] || null;
      targetText.textContent = last ? idOf(last.workflow || last.agent) : "chat";
      const active = Boolean(last && ACTIVE_STATUSES.has(last.status));
      busy.hidden = !active;
      busyText.textContent = active ? `Run ${idOf(last.name).slice(0, 8)} of this thread is ${shortStatus(last.status).toLowerCase()}. Send:` : "";
      panel.setLastRun(last || {}, active);
      // Streams of runs that have ended (or left the page) stop; their turn shows the reply.
      for (const [runName, reply] of live) {
        if (!runs.some((run) => run.name === runName && STREAMING.has(run.status))) {
          reply.close();
          live.delete(runName);
        }
      }
      conversation.replaceChildren(...runs.flatMap((run) => [
        userTurn(run),
        h("li", { class: "turn reply", dataset: { run: run.name } },
          h("span", { class: "who" }, h("a", { href: `#/runs/${idOf(run.name)}`, class: "mono" }, idOf(run.name).slice(0, 8)), " ",
            statusBadge(run.status, run.output)),
          replyBody(run)),
      ]));
      if (!runs.length) conversation.replaceChildren(h("li", { class: "empty" }, "No runs in this thread yet."));
    } catch (err) {
      if (stopped || !latest()) return;
      const then = retry.failed(err);
      error.replaceChildren(errorNotice(err, then));
      if (!loaded && !then) conversation.replaceChildren(h("li", { class: "empty" }, "The thread's runs could not be read."));
      // Not a thread's name (an id pasted in upper case…): nothing to send a message to.
      if (err.code === "INVALID_ARGUMENT") form.hidden = true;
    }
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.replaceChildren();
    // The last run's other inputs (model, documents…) carry over; only the message is new.
    const run = { input: { ...((last && last.input) || {}), message: message.value }, thread: name };
    const target = last ? last.workflow || last.agent : "workflows/chat";
    if (target.startsWith("agents/")) run.agent = target;
    else run.workflow = target;
    if (!busy.hidden) run.multitaskStrategy = strategy.value;
    if (!loaded) return;
    send.disabled = true;
    sending = true;
    try {
      const response = await ctx.api.createRun(run, uuid());
      ctx.announce("Run started");
      ctx.navigate(`/runs/${idOf(response.run.name)}`);
    } catch (err) {
      formError.replaceChildren(errorNotice(err));
      send.disabled = false;
    } finally {
      sending = false;
    }
  });
  /** The runs, then the state (as the TUI's thread screen): a run's end is stored only after its
   * last checkpoint, so a run read as ended is never shown beside the state from before that
   * checkpoint, as it was when both were read at once and the run ended in between. */
  async function reload() {
    await load();
    await Promise.all([panel.refresh(), meta.load()]);
  }
  const retry = retryOnOutage(reload);
  const refresh = debounce(reload, 300);
  // A run starts, waits, pauses, resumes or ends: the turns and Send follow.
  const subscription = ctx.socket.subscribe(
    { filter: { types: LIFECYCLE, subject: "runs/*" }, since: "now" },
    { onEvent: refresh });
  reload();
  return () => {
    stopped = true;
    panel.stop();
    meta.stop();
    retry.stop();
    refresh.cancel();
    subscription.close();
    for (const reply of live.values()) reply.close();
  };
}

export function mount(main, ctx, [threadId]) {
  return threadId ? threadView(main, ctx, threadId) : listView(main, ctx);
}
