// A thread's own moves, as LangGraph Studio has them: "Copy thread" (CopyThread: a new thread
// with the same metadata, state and history and no runs; the page opens the copy) and its
// metadata, shown and edited (UpdateThread: the keys given are merged in, a key left out of the
// edited object is sent as null, which removes it). What the gateway refuses is said under them.

import { errorNotice, h, idOf, prettyJson } from "../dom.js";

/** The edited metadata: a JSON object ({} removes every key), else an Error saying what it is. */
export function parseMetadata(text) {
  let value;
  try {
    value = JSON.parse(text.trim() || "{}");
  } catch (error) {
    return new Error(`The metadata is not valid JSON: ${error.message}`);
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    return new Error("The metadata must be a JSON object, such as {\"team\": \"herons\"}.");
  }
  return value;
}

/** UpdateThread's merge patch that turns `old` into `wanted`: changed keys, removed ones null. */
export function metadataPatch(old, wanted) {
  const patch = {};
  for (const [key, value] of Object.entries(wanted)) {
    if (JSON.stringify(old[key]) !== JSON.stringify(value)) patch[key] = value;
  }
  for (const key of Object.keys(old)) if (!(key in wanted)) patch[key] = null;
  return patch;
}

export class ThreadMetaPanel {
  constructor(ctx, thread) {
    this.ctx = ctx;
    this.thread = thread;
    this.metadata = {};
    this.stopped = false;

    this.copyButton = h("button", { type: "button", id: "thread-copy", title: "A new thread with this one's metadata, state and history, and no runs",
      onclick: () => this.copy() }, "Copy thread");
    this.shown = h("code", { class: "break", id: "thread-metadata-values" }, "…");
    this.editButton = h("button", { type: "button", id: "thread-metadata-edit", onclick: () => this.openForm(true) }, "Edit metadata");
    this.text = h("textarea", { id: "thread-metadata-text", rows: 3, spellcheck: "false" }, "{}");
    this.error = h("div", { "aria-live": "polite", id: "thread-meta-error" });
    this.save = h("button", { type: "submit", class: "primary", id: "thread-metadata-save" }, "Save metadata");
    this.form = h("form", { id: "thread-metadata-form", class: "card", hidden: true, "aria-labelledby": "metadata-title" },
      h("h2", { id: "metadata-title" }, "Edit metadata"),
      h("p", { class: "hint" }, "A JSON object: a key changed or added is set, a key taken out is removed, the others stay. "
        + "Metadata is the thread's own (the threads list filters on it); the state is below."),
      h("label", { for: "thread-metadata-text" }, "Metadata"), this.text,
      h("div", { class: "actions" }, this.save,
        h("button", { type: "button", id: "thread-metadata-cancel", onclick: () => this.openForm(false) }, "Cancel")));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.line = h("div", { class: "row thread-meta", id: "thread-metadata" },
      h("span", { class: "muted" }, "Metadata"), this.shown, this.editButton, this.copyButton);
    this.elements = [this.line, this.error, this.form];
  }

  async load() {
    try {
      const { thread = {} } = await this.ctx.api.getThread(this.thread);
      if (!this.stopped) this.render(thread);
    } catch {
      // The conversation above says why the thread cannot be read; the line says it is unknown.
      if (!this.stopped) this.shown.textContent = "(not loaded)";
    }
  }

  render(thread) {
    this.metadata = thread.metadata || {};
    const keys = Object.keys(this.metadata);
    this.shown.textContent = keys.length ? JSON.stringify(this.metadata) : "none";
    this.shown.classList.toggle("muted", !keys.length);
  }

  openForm(open) {
    this.form.hidden = !open;
    this.error.replaceChildren();
    if (open) {
      this.text.value = prettyJson(this.metadata);
      this.text.focus();
    } else {
      this.editButton.focus();
    }
  }

  async submit() {
    this.error.replaceChildren();
    const wanted = parseMetadata(this.text.value);
    if (wanted instanceof Error) {
      this.error.replaceChildren(errorNotice(wanted));
      return;
    }
    this.save.disabled = true;
    try {
      const { thread = {} } = await this.ctx.api.updateThread(this.thread, metadataPatch(this.metadata, wanted));
      if (this.stopped) return;
      this.render(thread);
      this.openForm(false);
      this.ctx.announce("Metadata saved");
    } catch (err) {
      if (!this.stopped) this.error.replaceChildren(errorNotice(err));
    } finally {
      this.save.disabled = false;
    }
  }

  async copy() {
    this.error.replaceChildren();
    this.copyButton.disabled = true;
    try {
      const { thread = {} } = await this.ctx.api.copyThread(this.thread);
      if (this.stopped) return;
      this.ctx.announce("Thread copied: this is the copy");
      this.ctx.navigate(`/threads/${idOf(thread.name)}`);
    } catch (err) {
      if (!this.stopped) this.error.replaceChildren(errorNotice(err));
    } finally {
      this.copyButton.disabled = false;
    }
  }

  stop() {
    this.stopped = true;
  }
}
