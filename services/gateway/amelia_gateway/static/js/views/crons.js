// Crons (scheduled runs, LangGraph Server's crons / Temporal's Schedules): the list, paged with
// the API's tokens, each cron as a card with its schedule, next and last run and what became of
// its ticks, with Pause/Resume, Trigger now (a link to the run it made) and Delete (confirmed
// inline); and a form to create one, showing the service's refusal next to the field it names.

import { errorNotice, formatTime, h, idOf, uuid } from "../dom.js";

const PAGE_SIZE = 20;

/** The form field an INVALID_ARGUMENT / NOT_FOUND message names (`cron.schedule '…' must…`). */
function fieldOf(message) {
  const named = /\bcron\.(schedule|timezone|input|thread|agent|workflow)\b/.exec(message);
  if (named) return named[1] === "workflow" ? "agent" : named[1];
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

function kv(rows) {
  return h("dl", { class: "kv" }, ...rows.flatMap(([term, value, key]) => [h("dt", {}, term), h("dd", { dataset: { field: key } }, value)]));
}

function cronCard(ctx, cron, onRemoved) {
  const card = h("li", { class: "card cron", dataset: { cron: cron.name } });
  const message = h("div", { "aria-live": "polite", class: "cron-message" });

  function draw(current) {
    cron = current;
    const thread = cron.thread
      ? h("a", { href: `#/threads/${idOf(cron.thread)}`, class: "mono break" }, idOf(cron.thread))
      : "new thread each run";
    const last = cron.lastRun && cron.lastRun.run
      ? [runLink(cron.lastRun.run), " ", formatTime(cron.lastRun.scheduleTime)]
      : "none yet";
    const next = cron.paused ? "paused" : cron.nextRunTime ? formatTime(cron.nextRunTime) : "none (the schedule has ended)";
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
      ctx.announce(response.cron.paused ? "Cron paused" : "Cron resumed");
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
        cron.paused ? [" ", h("span", { class: "badge warn" }, "Paused")] : null),
      kv([
        ["Runs", h("span", { class: "mono break" }, idOf(targetOf(cron))), "target"],
        ["Thread", thread, "thread"],
        ["Next run", next, "next"],
        ["Last run", last, "last"],
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
    field("input", "Input (JSON)", input),
    general,
    h("div", { class: "actions" }, submit));

  async function loadTargets() {
    try {
      const [workflows, agents] = await Promise.all([ctx.api.listWorkflows(), ctx.api.listAgents()]);
      target.replaceChildren(
        h("optgroup", { label: "Agents" }, ...(agents.agents || []).map((a) => h("option", { value: a.name }, a.displayName || idOf(a.name)))),
        h("optgroup", { label: "Workflows" }, ...(workflows.workflows || []).map((w) => h("option", { value: w.name }, idOf(w.name)))));
    } catch (err) {
      general.replaceChildren(errorNotice(err));
    }
  }

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
  return form;
}

export function mount(main, ctx) {
  const list = h("ul", { class: "grid cols-2 crons", id: "crons-list", "aria-label": "Crons", style: { listStyle: "none", padding: "0" } });
  const error = h("div", { "aria-live": "polite" });
  const more = h("button", { type: "button", hidden: true, id: "crons-more" }, "More");
  const empty = h("p", { class: "empty", id: "crons-empty", hidden: true },
    "No crons yet. Create one with the form below, with ", h("code", {}, "amelia crons create"), " or ", h("code", {}, "POST /v1/crons"), ".");
  let token = "";
  let stopped = false;

  function showEmpty() {
    empty.hidden = list.children.length > 0;
  }

  async function load(append = false) {
    try {
      const response = await ctx.api.listCrons({ pageSize: PAGE_SIZE, pageToken: append ? token : "" });
      if (stopped) return;
      error.replaceChildren();
      token = response.nextPageToken || "";
      more.hidden = !token;
      // A cron created here is shown at once, at the top: a later page must not list it again.
      const shown = new Set([...list.children].map((card) => card.dataset.cron));
      const crons = (response.crons || []).filter((cron) => !append || !shown.has(cron.name));
      const cards = crons.map((cron) => cronCard(ctx, cron, showEmpty));
      if (append) list.append(...cards);
      else list.replaceChildren(...cards);
      showEmpty();
    } catch (err) {
      if (!stopped) error.replaceChildren(errorNotice(err));
    }
  }

  const form = createForm(ctx, (cron) => {
    list.prepend(cronCard(ctx, cron, showEmpty));
    showEmpty();
  });
  more.addEventListener("click", () => load(true));
  main.append(h("h1", {}, "Crons"),
    h("p", { class: "hint" }, "Runs of an agent or workflow on a schedule. A tick whose thread still has a run is skipped; Trigger now starts one at once, paused or not."),
    error, empty, list, h("div", { class: "pager" }, more), form);
  load();
  return () => { stopped = true; };
}
