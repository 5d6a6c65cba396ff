// Runs: start a run of a workflow or an agent (the input form is built from the workflow's JSON
// Schema), create an agent, and browse past runs: paged, searched and filtered by the API's
// AIP-160 `filter` (text, workflow or agent, statuses, time range) and sorted, with the filters in
// the URL (`#/runs?q=…&status=FAILED,PAUSED&target=…&since=24h&order=longest`; clicking the
// Created, Duration or Tokens header sorts by it) so a link shares them.
// `#/runs?thread=<id>&target=<name>` opens the form ready to continue a thread. The list
// refreshes itself when a run starts, pauses or ends (a WebSocket subscription).

import {
  debounce, errorNotice, formatDuration, formatTime, h, idOf, isolate, loads, uuid,
} from "../dom.js";
import { STATUSES as RUN_STATUSES, shortStatus, statusBadge } from "../runstatus.js";
import { RUN_ORDERS, buildRunFilter, nextOrder, sortState, threadName } from "../filters.js";
import { agentsCard } from "./agents.js";
import { retryOnOutage } from "../health.js";

const PAGE_SIZE = 20;
const LIFECYCLE = [
  "run.completed", "run.failed", "run.cancelled", "run.interrupted", "run.resumed",
  "agent.started", "workflow.started",
];
const SINCE = [["", "Any time"], ["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"]];
const MESSAGE_SCHEMA = {
  type: "object",
  required: ["message"],
  properties: { message: { type: "string", minLength: 1 } },
};

/** LangGraph Server's multitask_strategy: what happens when the thread already has a run. The
 * start form's "More options" and a busy thread's Send (views/threads.js) offer it; `refuse`
 * adds the default, refusing the run. */
export function multitaskSelect(id, { refuse = true } = {}) {
  return h("select", { id }, ...[
    ...(refuse ? [["", "Refuse the run (the default)"]] : []),
    ["enqueue", "Queue it after the thread's runs"],
    ["interrupt", "Stop the thread's run, keep its state"],
    ["rollback", "Stop the thread's run and delete it"],
  ].map(([value, text]) => h("option", { value }, text)));
}

export function targetOf(run) {
  return run.workflow || run.agent || "";
}

/** One input control per schema property; returns {element, read() -> value|undefined}. */
function schemaField(name, schema, required) {
  const id = `in-${name}`;
  const label = h("label", { for: id }, name.replace(/_/g, " "),
    required ? h("span", { class: "field-hint" }, " (required)") : h("span", { class: "field-hint" }, " (optional)"));
  let control;
  let read;
  if (Array.isArray(schema.enum)) {
    control = h("select", { id }, ...(required ? [] : [h("option", { value: "" }, "—")]),
      ...schema.enum.map((value) => h("option", { value: JSON.stringify(value) }, String(value))));
    read = () => (control.value === "" ? undefined : JSON.parse(control.value));
  } else if (schema.type === "boolean") {
    control = h("input", { id, type: "checkbox" });
    read = () => control.checked;
  } else if (schema.type === "integer" || schema.type === "number") {
    control = h("input", { id, type: "number", step: schema.type === "integer" ? "1" : "any",
      min: schema.minimum ?? false, max: schema.maximum ?? false, required });
    read = () => (control.value === "" ? undefined : Number(control.value));
  } else if (schema.type === "array" && schema.items && schema.items.type === "string") {
    control = h("input", { id, type: "text", spellcheck: "false", placeholder: "comma-separated" });
    read = () => {
      const items = control.value.split(",").map((item) => item.trim()).filter(Boolean);
      return items.length ? items : undefined;
    };
  } else if (schema.type === "string" && (name === "message" || name.endsWith("prompt"))) {
    control = h("textarea", { id, rows: name === "message" ? 4 : 2, required, spellcheck: "true" });
    read = () => (control.value === "" ? undefined : control.value);
  } else if (schema.type === "string") {
    control = h("input", { id, type: "text", required, spellcheck: "false" });
    read = () => (control.value === "" ? undefined : control.value);
  } else {
    control = h("textarea", { id, rows: 2, placeholder: "JSON", spellcheck: "false" });
    read = () => (control.value.trim() === "" ? undefined : JSON.parse(control.value));
  }
  control.dataset.field = name;
  return { name, control, element: h("div", { class: "field" }, label, control), read };
}

/** What a control holds, to put back after the fields are built again. */
function controlValue(control) {
  return control.type === "checkbox" ? control.checked : control.value;
}

function setControlValue(control, value) {
  if (control.type === "checkbox") control.checked = Boolean(value);
  else control.value = value;
}

function targetOption(target) {
  if (target.name.startsWith("agents/")) {
    return h("option", { value: target.name }, `${isolate(target.displayName || idOf(target.name))} (${isolate(target.model || "default model")})`);
  }
  return h("option", { value: target.name }, `${idOf(target.name)} — ${isolate(target.description || "")}`);
}

/** The start form; returns {element, addAgent(agent), prefill({target, thread})}. */
function startForm(ctx, targets) {
  const target = h("select", { id: "run-target", required: true });
  const workflows = h("optgroup", { label: "Workflows" }, ...targets.workflows.map(targetOption));
  const agents = h("optgroup", { label: "Agents" }, ...targets.agents.map(targetOption));
  target.append(workflows, agents);
  agents.hidden = !targets.agents.length;
  const fieldsBox = h("div", { id: "run-fields" });
  const thread = h("input", { id: "run-thread", type: "text", placeholder: "threads/<id> (empty: a new thread)", spellcheck: "false" });
  const busy = multitaskSelect("run-multitask");
  const options = h("details", {}, h("summary", {}, "More options"),
    h("label", { for: "run-thread" }, "Thread ", h("span", { class: "field-hint" }, "runs in a thread share memory")), thread,
    h("label", { for: "run-multitask" }, "If the thread has a run"), busy);
  const submit = h("button", { type: "submit", class: "primary", id: "run-start" }, "Start run");
  const error = h("div", { "aria-live": "polite" });
  let fields = [];

  function schemaFor(name) {
    const workflow = targets.workflows.find((w) => w.name === name);
    return (workflow && workflow.inputSchema) || MESSAGE_SCHEMA;
  }

  function renderFields() {
    // What was typed stays when the fields are built again (another target, a new agent).
    const typed = new Map(fields.map((field) => [field.name, controlValue(field.control)]));
    const schema = schemaFor(target.value);
    const required = new Set(schema.required || []);
    const properties = Object.entries(schema.properties || { message: { type: "string" } });
    // Required fields first, then the rest; within each, `message` first, then by name: the
    // schema's key order is not kept through the API (a protobuf Struct is a map), and the form
    // came back in another order after the agents service restarted.
    const rank = (key) => (required.has(key) ? 0 : 2) + (key === "message" ? 0 : 1);
    properties.sort(([a], [b]) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
    fields = properties.map(([name, sub]) => schemaField(name, sub || {}, required.has(name)));
    for (const field of fields) if (typed.has(field.name)) setControlValue(field.control, typed.get(field.name));
    fieldsBox.replaceChildren(...fields.map((field) => field.element));
  }

  target.addEventListener("change", renderFields);
  renderFields();

  const form = h("form", { id: "start-run", class: "card", "aria-labelledby": "start-title" },
    h("h2", { id: "start-title" }, "Start a run"),
    h("label", { for: "run-target" }, "Workflow or agent"), target,
    fieldsBox, options, error,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.replaceChildren();
    const input = {};
    try {
      for (const field of fields) {
        const value = field.read();
        if (value !== undefined) input[field.name] = value;
      }
    } catch (err) {
      error.replaceChildren(errorNotice(new Error(`An input field is not valid JSON: ${err.message}`)));
      return;
    }
    const run = { input };
    if (target.value.startsWith("agents/")) run.agent = target.value;
    else run.workflow = target.value;
    if (thread.value.trim()) run.thread = threadName(thread.value);
    if (busy.value) run.multitaskStrategy = busy.value;
    submit.disabled = true;
    try {
      const response = await ctx.api.createRun(run, uuid());
      ctx.announce("Run started");
      ctx.navigate(`/runs/${idOf(response.run.name)}`);
    } catch (err) {
      error.replaceChildren(errorNotice(err));
    } finally {
      submit.disabled = false;
    }
  });
  return {
    element: form,
    addAgent(agent) {
      agents.append(targetOption(agent));
      agents.hidden = false;
      target.value = agent.name;
      renderFields();
    },
    updateAgent(agent) {
      const option = [...agents.children].find((o) => o.value === agent.name);
      if (!option) return;
      const selected = target.value === agent.name;
      option.replaceWith(targetOption(agent));
      if (selected) target.value = agent.name;
    },
    removeAgent(name) {
      const option = [...agents.children].find((o) => o.value === name);
      if (!option) return;
      const selected = target.value === name;
      option.remove();
      agents.hidden = !agents.children.length;
      if (selected) renderFields();
    },
    prefill({ target: name, thread: threadId }) {
      if (name && [...target.options].some((option) => option.value === name)) {
        target.value = name;
        renderFields();
      }
      if (threadId) {
        thread.value = threadName(threadId);
        options.open = true;
      }
      const first = fieldsBox.querySelector("textarea, input, select");
      if (first) first.focus();
    },
  };
}

function agentForm(ctx, onCreated) {
  const name = h("input", { id: "agent-name", type: "text", required: true, spellcheck: "false" });
  // Chrome compiles `pattern` with the `v` flag, where a bare `-` in a class is an error.
  const id = h("input", { id: "agent-id", type: "text", pattern: "[a-z][a-z0-9\\-]{0,62}", spellcheck: "false",
    placeholder: "generated when empty", title: "lowercase letters, digits and -, starting with a letter" });
  const model = h("input", { id: "agent-model", type: "text", value: "offline:echo", spellcheck: "false" });
  const prompt = h("textarea", { id: "agent-prompt", rows: 2 });
  const sources = h("input", { id: "agent-sources", type: "text", spellcheck: "false",
    placeholder: "documents/* or documents/<id>, comma-separated" });
  const message = h("div", { "aria-live": "polite", id: "agent-message" });
  const form = h("form", { id: "new-agent" },
    h("div", { class: "grid cols-2" },
      h("div", {}, h("label", { for: "agent-name" }, "Name"), name),
      h("div", {}, h("label", { for: "agent-id" }, "Id ", h("span", { class: "field-hint" }, "lowercase, digits, -")), id)),
    h("label", { for: "agent-model" }, "Model ", h("span", { class: "field-hint" },
      "anthropic:<model>, openai:<model>@<url>, offline:echo, offline:say:<text>")), model,
    h("label", { for: "agent-prompt" }, "System prompt"), prompt,
    h("label", { for: "agent-sources" }, "Documents it may draw on ", h("span", { class: "field-hint" }, "optional")), sources,
    message,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create agent")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.replaceChildren();
    try {
      const agent = { displayName: name.value, model: model.value, systemPrompt: prompt.value };
      const contextSources = sources.value.split(",").map((item) => item.trim()).filter(Boolean);
      if (contextSources.length) agent.contextSources = contextSources;
      const response = await ctx.api.createAgent(agent, id.value || undefined);
      const created = response.agent;
      const label = created.displayName || idOf(created.name);
      message.replaceChildren(h("p", { class: "notice ok break", role: "status" },
        "Agent “", h("bdi", {}, label), `” (${created.name}) created and selected in “Start a run”.`));
      ctx.announce(`Agent ${label} created`);
      form.reset();
      onCreated(created);
    } catch (err) {
      message.replaceChildren(errorNotice(err));
    }
  });
  return h("details", { class: "card", id: "agent-card" }, h("summary", {}, h("strong", {}, "New agent")), form);
}

/** Input plus output tokens (what the Tokens column sorts by), each in the tooltip. */
function tokensCell(usage) {
  const input = Number((usage && usage.inputTokens) || 0);
  const output = Number((usage && usage.outputTokens) || 0);
  return h("td", { class: "num wide-only", title: `${input} in, ${output} out` }, usage ? String(input + output) : "");
}

/** The filter bar; its state lives in the URL's query. */
function filterBar(params, targets, onChange) {
  const text = h("input", { id: "runs-q", type: "search", placeholder: "Search input, output, errors", value: params.get("q") || "",
    "aria-label": "Search runs", spellcheck: "false" });
  // Not "Workflow or agent": the start form's select has that name (two controls, one name).
  const target = h("select", { id: "runs-target", "aria-label": "Show runs of" },
    h("option", { value: "" }, "Any workflow or agent"));
  const since = h("select", { id: "runs-since", "aria-label": "Created" },
    ...SINCE.map(([value, label]) => h("option", { value }, label)));
  since.value = params.get("since") || "";
  const order = h("select", { id: "runs-order", "aria-label": "Order" },
    ...Object.entries(RUN_ORDERS).map(([value, [label]]) => h("option", { value }, label)));
  order.value = params.get("order") in RUN_ORDERS ? params.get("order") : "";
  const chosen = new Set((params.get("status") || "").split(",").filter(Boolean));
  const statusBoxes = RUN_STATUSES.map(([name, label]) => {
    const box = h("input", { type: "checkbox", value: shortStatus(name), checked: chosen.has(shortStatus(name)) });
    return h("label", { class: "check chip" }, box, label);
  });
  const advanced = h("input", { id: "runs-filter", type: "text", value: params.get("filter") || "", spellcheck: "false",
    placeholder: 'e.g. usage.output_tokens > 100 AND error:"timeout"', "aria-describedby": "runs-filter-hint" });
  const element = h("form", { id: "runs-filters", class: "filters", role: "search" },
    h("div", { class: "row" }, text, target, since, order),
    h("div", { class: "row", role: "group", "aria-label": "Statuses" }, ...statusBoxes),
    h("details", { open: Boolean(params.get("filter")) }, h("summary", {}, "Filter expression"),
      h("label", { for: "runs-filter", class: "visually-hidden" }, "Filter expression"), advanced,
      h("p", { class: "hint", id: "runs-filter-hint" }, "AIP-160, combined with the above by AND: fields status, workflow, agent, ",
        "thread, create_time, start_time, end_time, usage.input_tokens, usage.output_tokens, attempt, error, input, output, ",
        h("code", {}, "input.<key>"), "; ",
        h("code", {}, "= != < <= > >= :"), ", AND, OR, NOT, parentheses.")),
  );

  function setTargets(found) {
    const wanted = params.get("target") || target.value;
    target.replaceChildren(h("option", { value: "" }, "Any workflow or agent"),
      ...found.workflows.map((w) => h("option", { value: w.name }, idOf(w.name))),
      ...found.agents.map((a) => h("option", { value: a.name }, `agent ${isolate(a.displayName || idOf(a.name))}`)));
    if (wanted && ![...target.options].some((option) => option.value === wanted)) {
      target.append(h("option", { value: wanted }, wanted));
    }
    target.value = wanted;
  }
  setTargets(targets);

  function read() {
    const statuses = statusBoxes.map((label) => label.querySelector("input")).filter((box) => box.checked).map((box) => box.value);
    return { q: text.value.trim(), target: target.value, status: statuses.join(","), since: since.value,
      order: order.value, filter: advanced.value.trim() };
  }
  const changed = debounce(() => onChange(read()), 350);
  element.addEventListener("input", changed);
  element.addEventListener("change", changed);
  element.addEventListener("submit", (event) => {
    event.preventDefault();
    changed.cancel();
    onChange(read());
  });
  /** Sort by another order (a column header was clicked): as if chosen in the select. */
  function sortBy(value) {
    order.value = value;
    order.dispatchEvent(new Event("change", { bubbles: true }));
  }
  return { element, read, setTargets, sortBy, cancel: changed.cancel };
}

export function mount(main, ctx) {
  const params = ctx.query();
  const formSlot = h("div", {}, h("p", { class: "empty" }, "Loading workflows and agents…"));
  const tableBody = h("tbody", {}, h("tr", {}, h("td", { colspan: "6", class: "empty" }, "Loading runs…")));
  const listError = h("div", { "aria-live": "polite" });
  const prev = h("button", { type: "button", disabled: true }, "Newer");
  const next = h("button", { type: "button", disabled: true }, "Older");
  const pageInfo = h("span", { class: "muted" }, "");
  const bar = filterBar(params, { workflows: [], agents: [] }, (values) => {
    const query = new URLSearchParams(Object.entries(values).filter(([, value]) => value));
    const text = query.toString();
    window.history.replaceState(null, "", `#/runs${text ? `?${text}` : ""}`);
    page = 0;
    tokens.length = 1;
    filters.length = 1;
    loadRuns();
  });
  function sortHeader(column, label, className) {
    const button = h("button", { type: "button", class: "sort", dataset: { sort: column } }, label);
    button.addEventListener("click", () => bar.sortBy(nextOrder(column, bar.read().order)));
    return h("th", { scope: "col", class: className, "aria-sort": sortState(column, bar.read().order) }, button);
  }

  function showSort() {
    const current = bar.read().order;
    for (const button of main.querySelectorAll("#runs-table th button.sort")) {
      button.parentElement.setAttribute("aria-sort", sortState(button.dataset.sort, current));
    }
  }

  main.append(
    h("h1", {}, "Runs"),
    h("div", { class: "split" },
      h("section", { "aria-labelledby": "runs-title" },
        h("div", { class: "card" },
          h("h2", { id: "runs-title" }, "Recent runs"),
          bar.element,
          listError,
          h("div", { class: "table-wrap" },
            h("table", { id: "runs-table" },
              h("thead", {}, h("tr", {},
                h("th", { scope: "col" }, "Run"), h("th", { scope: "col" }, "Target"),
                h("th", { scope: "col" }, "Status"), sortHeader("created", "Created", "wide-only"),
                sortHeader("duration", "Duration", "num wide-only"), sortHeader("tokens", "Tokens", "num wide-only"))),
              tableBody)),
          h("div", { class: "pager" }, prev, next, pageInfo),
        )),
      // First on a narrow screen (one column): below 20 runs it was ~1500 px down on a phone.
      h("div", { class: "start-column" }, formSlot, h("div", { id: "agent-slot" })),
    ),
  );

  let stopped = false;
  const runLoads = loads();
  let targets = "idle"; // "loading" | "loaded" | "failed": reload only after a failure
  let form = null;
  const tokens = [""]; // page tokens of the pages seen, for "Newer"
  let page = 0;
  // The filter each token was made with: the page it opens repeats it (a token is bound to its
  // request's filter; a "since" filter's time is computed afresh only for the first page).
  const filters = [""];

  async function loadTargets() {
    if (targets === "loading" || targets === "loaded") return;
    targets = "loading";
    try {
      const [workflows, agents] = await Promise.all([ctx.api.listWorkflows(), ctx.api.listAgents()]);
      if (stopped) return;
      const found = { workflows: workflows.workflows || [], agents: agents.agents || [] };
      form = startForm(ctx, found);
      formSlot.replaceChildren(form.element);
      bar.setTargets(found);
      if (params.get("thread") || params.get("new")) form.prefill({ target: params.get("new"), thread: params.get("thread") });
      targets = "loaded";
      targetsRetry.ok();
    } catch (error) {
      targets = "failed";
      if (stopped) return;
      const then = targetsRetry.failed(error);
      // The form waits for its targets; it says so, and comes by itself once they load.
      formSlot.replaceChildren(errorNotice(error, then), then ? h("p", { class: "empty" }, "Loading workflows and agents…") : null);
    }
  }
  const targetsRetry = retryOnOutage(loadTargets);

  async function loadRuns() {
    const latest = runLoads();
    const query = { pageSize: PAGE_SIZE, pageToken: tokens[page] };
    const values = bar.read();
    const at = page;
    const filter = at === 0 ? buildRunFilter(values) : filters[at];
    if (filter) query.filter = filter;
    if (values.order) query.orderBy = RUN_ORDERS[values.order][1];
    showSort();
    try {
      const response = await ctx.api.listRuns(query);
      if (stopped || !latest()) return;
      listError.replaceChildren();
      runsRetry.ok();
      const runs = response.runs || [];
      tokens[at + 1] = response.nextPageToken || "";
      filters[at + 1] = filter;
      next.disabled = !response.nextPageToken;
      prev.disabled = page === 0;
      pageInfo.textContent = `Page ${page + 1}`;
      if (!runs.length) {
        tableBody.replaceChildren(h("tr", {}, h("td", { colspan: "6", class: "empty" },
          page === 0 && !filter ? "No runs yet: start one with the form." : "No run matches.")));
        return;
      }
      tableBody.replaceChildren(...runs.map((run) => h("tr", { dataset: { run: run.name } },
        h("td", {}, h("a", { href: `#/runs/${idOf(run.name)}`, class: "mono" }, idOf(run.name).slice(0, 8))),
        // A long agent id (63 characters) is cut with an ellipsis; the whole one is its title.
        h("td", { class: "mono target", title: idOf(targetOf(run)), dir: "auto" }, idOf(targetOf(run))),
        h("td", {}, statusBadge(run.status, run.output)),
        h("td", { class: "wide-only" }, formatTime(run.createTime)),
        h("td", { class: "num wide-only" }, formatDuration(run.duration)),
        tokensCell(run.usage),
      )));
    } catch (error) {
      if (stopped || !latest()) return;
      listError.replaceChildren(errorNotice(error, runsRetry.failed(error)));
    }
  }
  const runsRetry = retryOnOutage(() => loadRuns());

  const refresh = debounce(() => { if (page === 0) loadRuns(); }, 300);
  next.addEventListener("click", () => { page += 1; loadRuns(); });
  prev.addEventListener("click", () => { page = Math.max(0, page - 1); loadRuns(); });

  const agentSlot = main.querySelector("#agent-slot");
  const agentsList = agentsCard(ctx, ({ updated, deleted }) => {
    if (!form) return;
    if (updated) form.updateAgent(updated);
    if (deleted) form.removeAgent(deleted);
  });
  agentSlot.append(agentForm(ctx, (agent) => {
    if (form) form.addAgent(agent);
    agentsList.load();
  }), agentsList.element);

  const subscription = ctx.socket.subscribe(
    { filter: { types: LIFECYCLE, subject: "runs/*" }, since: "now" },
    {
      onEvent: refresh,
      // Also after a reconnect: catch up on what changed, and load the form if it failed.
      onSubscribed() {
        refresh();
        if (targets === "failed") loadTargets();
      },
    },
  );

  loadTargets();
  loadRuns();
  return () => {
    stopped = true;
    refresh.cancel();
    bar.cancel();
    targetsRetry.stop();
    runsRetry.stop();
    subscription.close();
  };
}
