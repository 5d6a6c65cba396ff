// Crons (scheduled runs, LangGraph Server's crons / Temporal's Schedules): the list, paged with
// the API's tokens and refreshed while the screen is open (a tick that fired shows without a
// reload), each cron as a card with its schedule, next run (or why none: paused, ended), its last
// ticks with the runs they made, what a tick does on a busy thread, with Pause/Resume, Trigger
// now (a link to the run it made) and Delete (confirmed inline); and a form to create one,
// showing the service's refusal next to the field it names.

import { errorNotice, formatTime, h, idOf, isolate, uuid } from "../dom.js";
import { poll } from "../poll.js";
import { retryOnOutage } from "../health.js";

const PAGE_SIZE = 20;
const POLL_MS = 5000;
const RECENT_SHOWN = 5; // of the 10 recent actions a cron keeps
const OUTCOMES = { CRON_OUTCOME_FIRED: "fired", CRON_OUTCOME_SKIPPED: "skipped", CRON_OUTCOME_FAILED: "failed" };
// What a tick does when the cron's thread still has a run (the runs' multitask strategies).
const STRATEGIES = [
  ["reject", "Skip the tick (reject)"],
  ["enqueue", "Run after it (enqueue)"],
  ["interrupt", "Stop it and run (interrupt)"],
  ["rollback", "Stop it, delete it and run (rollback)"],
];
const FIELDS = { workflow: "agent", multitask_strategy: "multitask", end_time: "end" };

/** The form field an INVALID_ARGUMENT / NOT_FOUND message names (`cron.schedule '…' must…`). */
function fieldOf(message) {
  const named = /\bcron\.(schedule|timezone|input|thread|agent|workflow|multitask_strategy|end_time|webhook)\b/.exec(message);
  if (named) return FIELDS[named[1]] || named[1];
  if (/\bthreads\//.test(message)) return "thread";
  if (/\b(agents|workflows)\//.test(message)) return "agent";
  return "";
}

function targetOf(cron) {
  return cron.agent || cron.workflow || "";
}

function runLink(run, text) {
  return h("a", { href: `#/runs/${idOf(run)}`, class: "mono" }, text || idOf(run).slice(0, 8));
}

/** The cron's latest ticks, newest first: when, what became of it, its run (or why none). */
function recentList(cron) {
  const actions = (cron.recentActions || []).slice(0, RECENT_SHOWN);
  if (!actions.length) return "none yet";
  return h("ol", { class: "cron-recent" }, ...actions.map((action) => {
    const outcome = OUTCOMES[action.outcome] || "?";
    const detail = action.run ? [runLink(action.run), action.reason ? ` ${action.reason}` : ""] : action.reason || "";
    return h("li", { dataset: { outcome } }, formatTime(action.scheduleTime), " ",
      h("span", { class: `badge ${outcome === "fired" ? "ok" : outcome === "failed" ? "bad" : "warn"}` },
        action.triggered ? `${outcome} (trigger)` : outcome), " ", detail);
  }));
}

function strategyText(cron) {
  const found = STRATEGIES.find(([value]) => value === (cron.multitaskStrategy || "reject"));
  return found ? found[1] : cron.multitaskStrategy;
}

function kv(rows) {
  return h("dl", { class: "kv" }, ...rows.flatMap(([term, value, key]) => [h("dt", {}, term), h("dd", { dataset: { field: key } }, value)]));
}

function cronCard(ctx, cron, onRemoved) {
  const card = h("li", { class: "card cron", dataset: { cron: cron.name } });
  const message = h("div", { "aria-live": "polite", class: "cron-message" });
  let drawn = "";

  function draw(current) {
    cron = current;
    drawn = JSON.stringify(current);
    const thread = cron.thread
      ? h("a", { href: `#/threads/${idOf(cron.thread)}`, class: "mono break" }, idOf(cron.thread))
      : "new thread each run";
    const last = cron.lastRun && cron.lastRun.run
      ? [runLink(cron.lastRun.run), " ", formatTime(cron.lastRun.scheduleTime)]
      : "none yet";
    const next = cron.ended ? "none (the schedule has ended)" : cron.paused ? "paused" : cron.nextRunTime ? formatTime(cron.nextRunTime) : "none";
    const pause = h("button", { type: "button", class: "small", dataset: { action: "pause" } }, cron.paused ? "Resume" : "Pause");
    const trigger = h("button", { type: "button", class: "small", dataset: { action: "trigger" } }, "Trigger now");
    const remove = h("button", { type: "button", class: "small danger", dataset: { action: "delete" } }, "Delete");
    const yes = h("button", { type: "button", class: "small danger", dataset: { action: "delete-yes" } }, "Yes, delete it");
    const no = h("button", { type: "button", class: "small", dataset: { action: "delete-no" } }, "No, keep it");
    const confirm = h("span", { class: "cancel-confirm", role: "group", "aria-label": "Confirm deleting", hidden: true },
      h("span", {}, "Delete this cron? Its runs stay."), yes, no);
    pause.addEventListener("click", () => act(async () => {
      const response = await ctx.api.updateCron({ name: cron.name, paused: !cron.paused }, ["paused"]);
      draw(response.cron);
      const done = response.cron.paused ? "Cron paused" : "Cron resumed";
      if (response.cron.ended) { // the flag changed; the cron stays ended until its end is moved
        message.replaceChildren(h("p", { class: "notice", role: "status" },
          `${done}. It has ended: no tick fires until its end is moved.`));
      }
      ctx.announce(done);
    }));
    trigger.addEventListener("click", () => act(async () => {
      const response = await ctx.api.triggerCron(cron.name, uuid());
      draw(response.cron);
      message.replaceChildren(h("p", { class: "notice ok", role: "status" }, "Started run ",
        runLink(response.run.name, idOf(response.run.name)), "."));
      ctx.announce("Run started");
    }));
    remove.addEventListener("click", () => {
      confirm.hidden = false;
      remove.hidden = true;
      no.focus();
    });
    no.addEventListener("click", () => {
      confirm.hidden = true;
      remove.hidden = false;
      remove.focus();
    });
    yes.addEventListener("click", () => act(async () => {
      await ctx.api.deleteCron(cron.name);
      card.remove();
      ctx.announce("Cron deleted");
      onRemoved();
    }));
    const counts = `${cron.firedCount || 0} fired · ${cron.skippedCount || 0} skipped · ${cron.failedCount || 0} failed`;
    card.replaceChildren(
      h("h2", { class: "mono break" }, `${cron.schedule} `, h("span", { class: "muted" }, cron.timezone || "UTC"),
        // Both when a cron is paused after its end: the flag matters again once the end is moved.
        cron.ended ? [" ", h("span", { class: "badge info" }, "Ended")] : null,
        cron.paused ? [" ", h("span", { class: "badge warn" }, "Paused")] : null),
      kv([
        ["Runs", h("span", { class: "mono break" }, idOf(targetOf(cron))), "target"],
        ["Thread", thread, "thread"],
        ...(cron.thread ? [["If busy", strategyText(cron), "multitask"]] : []),
        ["Next run", next, "next"],
        ...(cron.endTime ? [["Ends", formatTime(cron.endTime), "end"]] : []),
        ...(cron.webhook ? [["Webhook", h("span", { class: "mono break" }, cron.webhook), "webhook"]] : []),
        ["Last run", last, "last"],
        ["Last ticks", recentList(cron), "recent"],
        ["Ticks", counts, "counts"],
        ["Cron", h("span", { class: "mono break" }, idOf(cron.name)), "name"],
      ]),
      h("div", { class: "actions" }, pause, trigger, remove, confirm),
      message);
  }

  async function act(work) {
    message.replaceChildren();
    for (const button of card.querySelectorAll("button")) button.disabled = true;
    try {
      await work();
    } catch (err) {
      message.replaceChildren(errorNotice(err));
      for (const button of card.querySelectorAll("button")) button.disabled = false;
    }
  }

  /** A newer copy of the cron from the list's refresh: drawn unless the user is mid-action
   * (deleting, or a request under way); the focused button keeps the focus. */
  card.refresh = (current) => {
    if (JSON.stringify(current) === drawn) return;
    const asking = card.querySelector(".cancel-confirm:not([hidden])");
    if (asking || card.querySelector("button:disabled")) return;
    const focused = card.contains(document.activeElement) ? document.activeElement.dataset.action : "";
    draw(current);
    if (focused) card.querySelector(`button[data-action="${focused}"]`)?.focus();
  };
  draw(cron);
  return card;
}

function createForm(ctx, onCreated) {
  const fields = {};
  const errors = {};
  const field = (key, label, control, hint) => {
    control.id = `cron-${key}`;
    fields[key] = control;
    errors[key] = h("div", { id: `cron-${key}-error`, "aria-live": "polite" });
    control.setAttribute("aria-describedby", `cron-${key}-error`);
    return [h("label", { for: control.id }, label, hint ? [" ", h("span", { class: "field-hint" }, hint)] : null), control, errors[key]];
  };
  const target = h("select", { required: true }, h("option", { value: "" }, "Loading…"));
  const input = h("textarea", { rows: 3, spellcheck: "false" });
  input.value = '{"message": "Good morning: what is new?"}';
  const general = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary", id: "cron-create" }, "Create cron");
  const form = h("form", { class: "card", id: "cron-form", "aria-labelledby": "cron-form-title", novalidate: true },
    h("h2", { id: "cron-form-title" }, "New cron"),
    field("agent", "Agent or workflow", target),
    field("schedule", "Schedule", h("input", { type: "text", spellcheck: "false", placeholder: "*/15 * * * *" }),
      "minute hour day-of-month month day-of-week"),
    field("timezone", "Time zone", h("input", { type: "text", spellcheck: "false", placeholder: "UTC" }), "IANA, e.g. Europe/Paris; empty: UTC"),
    field("thread", "Thread", h("input", { type: "text", spellcheck: "false", placeholder: "threads/…" }), "optional; empty: a new thread each run"),
    field("multitask", "If the thread is busy", h("select", {}, ...STRATEGIES.map(([value, text]) => h("option", { value }, text))),
      "what a tick does while the thread still has a run"),
    field("end", "Ends", h("input", { type: "datetime-local" }), "optional, your local time: no run at or after it"),
    field("input", "Input (JSON)", input),
    field("webhook", "Webhook", h("input", { type: "text", inputmode: "url", spellcheck: "false", placeholder: "https://…" }),
      "optional: each run is POSTed to it when it ends"),
    general,
    h("div", { class: "actions" }, submit));

  // The select says "Loading…" until the agents and workflows are read; an outage (the agents
  // service restarting) is retried until they are (it stayed "Loading…" until a reload).
  async function loadTargets() {
    try {
      const [workflows, agents] = await Promise.all([ctx.api.listWorkflows(), ctx.api.listAgents()]);
      if (stopped) return;
      retry.ok();
      errors.agent.replaceChildren();
      target.replaceChildren(
        h("optgroup", { label: "Agents" }, ...(agents.agents || []).map((a) => h("option", { value: a.name }, isolate(a.displayName || idOf(a.name))))),
        h("optgroup", { label: "Workflows" }, ...(workflows.workflows || []).map((w) => h("option", { value: w.name }, idOf(w.name)))));
    } catch (err) {
      if (!stopped) errors.agent.replaceChildren(errorNotice(err, retry.failed(err)));
    }
  }
  let stopped = false;
  const retry = retryOnOutage(loadTargets);

  function showError(key, err) {
    (errors[key] || general).replaceChildren(errorNotice(err));
    if (fields[key]) fields[key].setAttribute("aria-invalid", "true");
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const key of Object.keys(errors)) {
      errors[key].replaceChildren();
      fields[key].removeAttribute("aria-invalid");
    }
    general.replaceChildren();
    const cron = { schedule: fields.schedule.value.trim(), timezone: fields.timezone.value.trim() };
    const chosen = target.value;
    if (chosen.startsWith("agents/")) cron.agent = chosen;
    else cron.workflow = chosen;
    const thread = fields.thread.value.trim();
    if (thread) cron.thread = thread.startsWith("threads/") ? thread : `threads/${thread}`;
    cron.multitaskStrategy = fields.multitask.value;
    const webhook = fields.webhook.value.trim();
    if (webhook) cron.webhook = webhook;
    if (fields.end.value) {
      const end = new Date(fields.end.value);
      if (Number.isNaN(end.getTime())) {
        showError("end", new Error("Not a date and time"));
        fields.end.focus();
        return;
      }
      cron.endTime = end.toISOString();
    }
    try {
      cron.input = input.value.trim() ? JSON.parse(input.value) : {};
    } catch (err) {
      showError("input", new Error(`Not JSON: ${err.message}`));
      input.focus();
      return;
    }
    submit.disabled = true;
    try {
      const response = await ctx.api.createCron(cron);
      ctx.announce("Cron created");
      onCreated(response.cron);
    } catch (err) {
      const key = fieldOf(err.message || "");
      showError(key, err);
      if (fields[key]) fields[key].focus();
    } finally {
      submit.disabled = false;
    }
  });
  loadTargets();
  return { element: form, stop() { stopped = true; retry.stop(); } };
}

export function mount(main, ctx) {
  const list = h("ul", { class: "grid cols-2 crons", id: "crons-list", "aria-label": "Crons", style: { listStyle: "none", padding: "0" } });
  const error = h("div", { "aria-live": "polite" });
  const more = h("button", { type: "button", hidden: true, id: "crons-more" }, "More");
  const empty = h("p", { class: "empty", id: "crons-empty", hidden: true },
    "No crons yet. Create one with the form below, with ", h("code", {}, "amelia crons create"), " or ", h("code", {}, "POST /v1/crons"), ".");
  let token = "";
  let stopped = false;
  let queue = Promise.resolve(); // More and the refresh, one at a time: neither undoes the other
  const createdHere = new Set(); // shown at the top, where the form put them

  function showEmpty() {
    empty.hidden = list.children.length > 0;
  }

  function serially(work) {
    queue = queue.then(work, work);
    return queue;
  }

  function cardFor(cron, cards) {
    const card = cards.get(cron.name);
    if (!card) return cronCard(ctx, cron, showEmpty);
    card.refresh(cron);
    return card;
  }

  /** The next page (More), or, from the top, as many crons as are shown (the first load and each
   * refresh): cards kept (a message, a confirmation in progress), updated, added, removed. */
  async function load(append = false, signal = undefined) {
    const pageSize = append ? PAGE_SIZE : Math.min(1000, Math.max(PAGE_SIZE, list.children.length));
    const response = await ctx.api.listCrons({ pageSize, pageToken: append ? token : "" });
    if (stopped || signal?.aborted) return;
    error.replaceChildren();
    token = response.nextPageToken || "";
    more.hidden = !token;
    const cards = new Map([...list.children].map((card) => [card.dataset.cron, card]));
    const crons = (response.crons || []).filter((cron) => !append || !cards.has(cron.name));
    if (append) {
      list.append(...crons.map((cron) => cronCard(ctx, cron, showEmpty)));
    } else {
      const listed = crons.filter((cron) => !createdHere.has(cron.name)).map((cron) => cardFor(cron, cards));
      const mine = [];
      for (const name of createdHere) {
        const found = crons.find((cron) => cron.name === name);
        if (!found && !token) createdHere.delete(name); // every cron was listed: it is gone
        else if (cards.has(name)) mine.push(cards.get(name));
        if (found && cards.has(name)) cards.get(name).refresh(found);
      }
      list.replaceChildren(...mine, ...listed);
    }
    showEmpty();
  }

  const form = createForm(ctx, (cron) => {
    createdHere.add(cron.name);
    list.prepend(cronCard(ctx, cron, showEmpty));
    showEmpty();
  });
  more.addEventListener("click", () => serially(() => load(true)).catch((err) => {
    if (!stopped) error.replaceChildren(errorNotice(err));
  }));
  main.append(h("h1", {}, "Crons"),
    h("p", { class: "hint" }, "Runs of an agent or workflow on a schedule. A tick whose thread still has a run is skipped, waits or stops that run, as the cron's \u201cif busy\u201d says; Trigger now starts one at once, paused or not. The list refreshes itself."),
    error, empty, list, h("div", { class: "pager" }, more), form.element);
  const stopPolling = poll(POLL_MS, (signal) => serially(() => load(false, signal)), (err) => {
    if (!stopped) error.replaceChildren(errorNotice(err));
  });
  return () => {
    stopped = true;
    stopPolling();
    form.stop();
  };
}
