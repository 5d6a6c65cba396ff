// Agents on the Runs screen: the list, with Edit (display name, model, system prompt, documents:
// UpdateAgent with an update mask) and Delete. Runs already queued keep the agent as it was
// (they hold a snapshot), so editing or deleting never changes them.

import { errorNotice, h, idOf } from "../dom.js";

const MASK = ["display_name", "model", "system_prompt", "context_sources"];

/** The card; `onChange({updated | deleted})` tells the start form. Returns {element, load()}. */
export function agentsCard(ctx, onChange) {
  const list = h("ul", { class: "agents", id: "agents-list" });
  const error = h("div", { "aria-live": "polite" });
  const element = h("details", { class: "card", id: "agents-card" },
    h("summary", {}, h("strong", {}, "Agents")), error, list);

  function editForm(agent, row) {
    const field = (id, label, value, textarea = false) => {
      const control = h(textarea ? "textarea" : "input", { id, type: textarea ? undefined : "text", spellcheck: "false",
        rows: textarea ? 3 : undefined });
      control.value = value || "";
      return [h("label", { for: id }, label), control];
    };
    const base = `edit-${idOf(agent.name)}`;
    const [nameLabel, name] = field(`${base}-name`, "Name", agent.displayName);
    const [modelLabel, model] = field(`${base}-model`, "Model", agent.model);
    const [promptLabel, prompt] = field(`${base}-prompt`, "System prompt", agent.systemPrompt, true);
    const [sourcesLabel, sources] = field(`${base}-sources`, "Documents it may draw on", (agent.contextSources || []).join(", "));
    const message = h("div", { "aria-live": "polite" });
    const form = h("form", { class: "agent-edit" }, nameLabel, name, modelLabel, model, promptLabel, prompt,
      sourcesLabel, sources, message,
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Save"),
        h("button", { type: "button", onclick: () => form.remove() }, "Close")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      message.replaceChildren();
      const changed = {
        name: agent.name,
        displayName: name.value,
        model: model.value,
        systemPrompt: prompt.value,
        contextSources: sources.value.split(",").map((item) => item.trim()).filter(Boolean),
      };
      try {
        const response = await ctx.api.updateAgent(changed, MASK);
        message.replaceChildren(h("p", { class: "notice ok", role: "status" }, "Saved."));
        ctx.announce(`Agent ${response.agent.displayName || idOf(response.agent.name)} saved`);
        onChange({ updated: response.agent });
        row.querySelector(".agent-label").replaceChildren(...label(response.agent));
      } catch (err) {
        message.replaceChildren(errorNotice(err));
      }
    });
    return form;
  }

  /** Its name (a <bdi>: a U+202E in it must not flip the model after it) and model. */
  function label(agent) {
    return [h("bdi", {}, agent.displayName || idOf(agent.name)), ` · ${agent.model || "default model"}`];
  }

  function row(agent) {
    const item = h("li", { class: "agent", dataset: { agent: agent.name } });
    const edit = h("button", { type: "button", class: "small", "aria-label": `Edit ${agent.displayName || agent.name}` }, "Edit");
    const remove = h("button", { type: "button", class: "small ghost", "aria-label": `Delete ${agent.displayName || agent.name}` }, "Delete");
    edit.addEventListener("click", () => {
      if (!item.querySelector("form")) item.append(editForm(agent, item));
      item.querySelector("input").focus();
    });
    remove.addEventListener("click", async () => {
      if (!window.confirm(`Delete the agent “${agent.displayName || agent.name}”? Its runs stay.`)) return;
      try {
        await ctx.api.deleteAgent(agent.name);
        item.remove();
        ctx.announce("Agent deleted");
        onChange({ deleted: agent.name });
      } catch (err) {
        error.replaceChildren(errorNotice(err));
      }
    });
    item.append(h("div", { class: "row" }, h("span", { class: "agent-label grow break" }, label(agent)),
      h("span", { class: "mono muted" }, agent.name), edit, remove));
    return item;
  }

  async function load() {
    try {
      const { agents = [] } = await ctx.api.listAgents();
      error.replaceChildren();
      list.replaceChildren(...(agents.length ? agents.map(row) : [h("li", { class: "empty" }, "No agents yet.")]));
    } catch (err) {
      error.replaceChildren(errorNotice(err));
    }
  }
  element.addEventListener("toggle", () => { if (element.open) load(); });
  return { element, load };
}
