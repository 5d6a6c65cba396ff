// Runs: start a run of a workflow or an agent (the input form is built from the workflow's JSON
// Schema), create an agent, and browse past runs (paged, filtered by status). The list refreshes
// itself when a run starts, pauses or ends (a WebSocket subscription to lifecycle events).

import {
  debounce, errorNotice, formatDuration, formatTime, h, idOf, statusBadge, uuid,
} from "../dom.js";

const PAGE_SIZE = 20;
const LIFECYCLE = [
  "run.completed", "run.failed", "run.cancelled", "run.interrupted", "run.resumed",
  "agent.started", "workflow.started",
];
const STATUSES = [
  ["", "Any status"],
  ["RUN_STATUS_QUEUED", "Queued"],
  ["RUN_STATUS_RUNNING", "Running"],
  ["RUN_STATUS_PAUSED", "Paused"],
  ["RUN_STATUS_COMPLETED", "Completed"],
  ["RUN_STATUS_FAILED", "Failed"],
  ["RUN_STATUS_CANCELLED", "Cancelled"],
];
const MESSAGE_SCHEMA = {
  type: "object",
  required: ["message"],
  properties: { message: { type: "string", minLength: 1 } },
};

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
  return { name, element: h("div", { class: "field" }, label, control), read };
}

function startForm(ctx, targets, onError) {
  const target = h("select", { id: "run-target", required: true });
  const workflows = h("optgroup", { label: "Workflows" });
  for (const workflow of targets.workflows) {
    workflows.append(h("option", { value: workflow.name }, `${idOf(workflow.name)} — ${workflow.description || ""}`));
  }
  const agents = h("optgroup", { label: "Agents" });
  for (const agent of targets.agents) {
    agents.append(h("option", { value: agent.name }, `${agent.displayName || idOf(agent.name)} (${agent.model || "default model"})`));
  }
  if (targets.workflows.length) target.append(workflows);
  if (targets.agents.length) target.append(agents);
  const fieldsBox = h("div", { id: "run-fields" });
  const thread = h("input", { id: "run-thread", type: "text", placeholder: "threads/… (empty: a new thread)", spellcheck: "false" });
  const submit = h("button", { type: "submit", class: "primary", id: "run-start" }, "Start run");
  const error = h("div", { "aria-live": "polite" });
  let fields = [];

  function schemaFor(name) {
    const workflow = targets.workflows.find((w) => w.name === name);
    return (workflow && workflow.inputSchema) || MESSAGE_SCHEMA;
  }

  function renderFields() {
    const schema = schemaFor(target.value);
    const required = new Set(schema.required || []);
    const properties = Object.entries(schema.properties || { message: { type: "string" } });
    // Required fields first, then the rest in schema order.
    properties.sort(([a], [b]) => Number(required.has(b)) - Number(required.has(a)));
    fields = properties.map(([name, sub]) => schemaField(name, sub || {}, required.has(name)));
    fieldsBox.replaceChildren(...fields.map((field) => field.element));
  }

  target.addEventListener("change", renderFields);
  renderFields();

  const form = h("form", { id: "start-run", class: "card", "aria-labelledby": "start-title" },
    h("h2", { id: "start-title" }, "Start a run"),
    h("label", { for: "run-target" }, "Workflow or agent"), target,
    fieldsBox,
    h("details", {}, h("summary", {}, "More options"),
      h("label", { for: "run-thread" }, "Thread ", h("span", { class: "field-hint" }, "runs in a thread share memory")), thread),
    error,
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
    if (thread.value.trim()) run.thread = thread.value.trim();
    submit.disabled = true;
    try {
      const response = await ctx.api.createRun(run, uuid());
      ctx.announce("Run started");
      ctx.navigate(`/runs/${idOf(response.run.name)}`);
    } catch (err) {
      error.replaceChildren(errorNotice(err));
      onError(err);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function agentForm(ctx, onCreated) {
  const name = h("input", { id: "agent-name", type: "text", required: true, spellcheck: "false" });
  const id = h("input", { id: "agent-id", type: "text", pattern: "[a-z][a-z0-9-]{0,62}", spellcheck: "false",
    placeholder: "generated when empty" });
  const model = h("input", { id: "agent-model", type: "text", value: "offline:echo", spellcheck: "false" });
  const prompt = h("textarea", { id: "agent-prompt", rows: 2 });
  const sources = h("input", { id: "agent-sources", type: "text", spellcheck: "false",
    placeholder: "documents/* or documents/<id>, comma-separated" });
  const error = h("div", { "aria-live": "polite" });
  const form = h("form", { id: "new-agent" },
    h("div", { class: "grid cols-2" },
      h("div", {}, h("label", { for: "agent-name" }, "Name"), name),
      h("div", {}, h("label", { for: "agent-id" }, "Id ", h("span", { class: "field-hint" }, "lowercase, digits, -")), id)),
    h("label", { for: "agent-model" }, "Model ", h("span", { class: "field-hint" },
      "anthropic:<model>, openai:<model>@<url>, offline:echo, offline:say:<text>")), model,
    h("label", { for: "agent-prompt" }, "System prompt"), prompt,
    h("label", { for: "agent-sources" }, "Documents it may draw on ", h("span", { class: "field-hint" }, "optional")), sources,
    error,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create agent")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.replaceChildren();
    try {
      const agent = { displayName: name.value, model: model.value, systemPrompt: prompt.value };
      const contextSources = sources.value.split(",").map((item) => item.trim()).filter(Boolean);
      if (contextSources.length) agent.contextSources = contextSources;
      const response = await ctx.api.createAgent(agent, id.value || undefined);
      ctx.announce(`Agent ${response.agent.displayName || response.agent.name} created`);
      onCreated();
    } catch (err) {
      error.replaceChildren(errorNotice(err));
    }
  });
  return h("details", { class: "card" }, h("summary", {}, h("strong", {}, "New agent")), form);
}

export function mount(main, ctx) {
  const formSlot = h("div", {}, h("p", { class: "empty" }, "Loading workflows and agents…"));
  const status = h("select", { id: "runs-status", "aria-label": "Filter by status" },
    ...STATUSES.map(([value, label]) => h("option", { value }, label)));
  const tableBody = h("tbody", {});
  const listError = h("div", { "aria-live": "polite" });
  const prev = h("button", { type: "button", disabled: true }, "Newer");
  const next = h("button", { type: "button", disabled: true }, "Older");
  const pageInfo = h("span", { class: "muted" }, "");
  main.append(
    h("h1", {}, "Runs"),
    h("div", { class: "split" },
      h("section", { "aria-labelledby": "runs-title" },
        h("div", { class: "card" },
          h("div", { class: "row" }, h("h2", { id: "runs-title", style: { margin: 0 } }, "Recent runs"),
            h("span", { class: "spacer" }), status),
          listError,
          h("table", { id: "runs-table" },
            h("thead", {}, h("tr", {},
              h("th", { scope: "col" }, "Run"), h("th", { scope: "col" }, "Target"),
              h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Created"),
              h("th", { scope: "col", class: "num" }, "Duration"), h("th", { scope: "col", class: "num" }, "Tokens"))),
            tableBody),
          h("div", { class: "pager" }, prev, next, pageInfo),
        )),
      h("div", {}, formSlot, h("div", { id: "agent-slot" })),
    ),
  );

  let stopped = false;
  let targets = "idle"; // "loading" | "loaded" | "failed": reload only after a failure
  const tokens = [""]; // page tokens of the pages seen, for "Newer"
  let page = 0;

  async function loadTargets() {
    if (targets === "loading" || targets === "loaded") return;
    targets = "loading";
    try {
      const [workflows, agents] = await Promise.all([ctx.api.listWorkflows(), ctx.api.listAgents()]);
      if (stopped) return;
      const found = { workflows: workflows.workflows || [], agents: agents.agents || [] };
      formSlot.replaceChildren(startForm(ctx, found, () => {}));
      targets = "loaded";
    } catch (error) {
      targets = "failed";
      if (!stopped) formSlot.replaceChildren(errorNotice(error));
    }
  }

  async function loadRuns() {
    const query = { pageSize: PAGE_SIZE, pageToken: tokens[page] };
    if (status.value) query.statuses = status.value;
    try {
      const response = await ctx.api.listRuns(query);
      if (stopped) return;
      listError.replaceChildren();
      const runs = response.runs || [];
      tokens[page + 1] = response.nextPageToken || "";
      next.disabled = !response.nextPageToken;
      prev.disabled = page === 0;
      pageInfo.textContent = `Page ${page + 1}`;
      if (!runs.length) {
        tableBody.replaceChildren(h("tr", {}, h("td", { colspan: "6", class: "empty" },
          page === 0 && !status.value ? "No runs yet: start one with the form." : "No runs here.")));
        return;
      }
      tableBody.replaceChildren(...runs.map((run) => h("tr", { dataset: { run: run.name } },
        h("td", {}, h("a", { href: `#/runs/${idOf(run.name)}`, class: "mono" }, idOf(run.name).slice(0, 8))),
        h("td", { class: "mono" }, targetOf(run)),
        h("td", {}, statusBadge(run.status)),
        h("td", {}, formatTime(run.createTime)),
        h("td", { class: "num" }, formatDuration(run.duration)),
        h("td", { class: "num" }, run.usage ? String(Number(run.usage.outputTokens || 0)) : ""),
      )));
    } catch (error) {
      if (!stopped) listError.replaceChildren(errorNotice(error));
    }
  }

  const refresh = debounce(() => { if (page === 0) loadRuns(); }, 300);
  status.addEventListener("change", () => { page = 0; tokens.length = 1; loadRuns(); });
  next.addEventListener("click", () => { page += 1; loadRuns(); });
  prev.addEventListener("click", () => { page = Math.max(0, page - 1); loadRuns(); });

  const agentSlot = main.querySelector("#agent-slot");
  agentSlot.append(agentForm(ctx, () => {
    targets = "failed"; // a new agent: load the list again
    loadTargets();
  }));

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
    subscription.close();
  };
}
