// Events: the live event log, filtered by type patterns and subject (a WebSocket subscription),
// from now, from the beginning, or after a sequence. Rows are written once per frame and at
// most MAX_ROWS stay in the DOM, so a flood of tokens cannot freeze the page.

import { compactJson, formatTime, h, perFrame, prettyJson } from "../dom.js";

const MAX_ROWS = 500;
const STORE_KEY = "amelia.eventsFilter";

function loadFilter() {
  try {
    return JSON.parse(window.sessionStorage.getItem(STORE_KEY) || "null") || {};
  } catch {
    return {};
  }
}

function saveFilter(filter) {
  try {
    window.sessionStorage.setItem(STORE_KEY, JSON.stringify(filter));
  } catch {
    // not important
  }
}

function tone(type) {
  if (/failed|cancelled|error|warning/.test(type)) return "bad";
  if (/completed|indexed/.test(type)) return "ok";
  if (type.startsWith("run.")) return "run";
  return "";
}

function row(event, sequence) {
  const type = event.type || "";
  const details = h("details", { class: "feed-row", dataset: { sequence: String(sequence), type } },
    h("summary", {},
      h("span", { class: "seq" }, `#${sequence}`),
      h("span", {}, formatTime(event.time)),
      h("span", { class: `etype ${tone(type)}` }, type),
      h("span", { class: "subject" }, event.subject || "—"),
      h("span", { class: "muted" }, compactJson(event.data || {}, 200)),
    ));
  // The full JSON is built only when someone opens the row.
  details.addEventListener("toggle", () => {
    if (details.open && !details.querySelector("pre")) {
      details.append(h("pre", {}, prettyJson(event)));
    }
  });
  return details;
}

export function mount(main, ctx) {
  const saved = loadFilter();
  const types = h("input", { id: "ev-types", type: "text", placeholder: "run.*, document.*", value: saved.types || "",
    "aria-describedby": "ev-types-hint", spellcheck: "false" });
  const subject = h("input", { id: "ev-subject", type: "text", placeholder: "runs/* or runs/<id>", value: saved.subject || "", spellcheck: "false" });
  const since = h("select", { id: "ev-since" },
    h("option", { value: "now" }, "Live, from now"),
    h("option", { value: "beginning" }, "From the beginning"),
    h("option", { value: "after" }, "After sequence…"));
  since.value = saved.since || "now";
  const after = h("input", { id: "ev-after", type: "number", min: "0", step: "1", value: saved.after || "0",
    "aria-label": "After sequence", disabled: since.value !== "after" });
  since.addEventListener("change", () => { after.disabled = since.value !== "after"; });
  const hideTokens = h("input", { id: "ev-hide-tokens", type: "checkbox", checked: saved.hideTokens !== false });
  const pause = h("button", { type: "button", id: "ev-pause", "aria-pressed": "false" }, "Pause");
  const clearButton = h("button", { type: "button", class: "ghost" }, "Clear");
  const counts = h("span", { class: "muted", id: "ev-counts" }, "");
  const notice = h("div", { "aria-live": "polite" });
  const feed = h("div", { class: "feed", id: "feed", role: "log", "aria-label": "Event feed", "aria-live": "polite",
    "aria-relevant": "additions", tabindex: "0" });

  const form = h("form", { class: "card", id: "events-form" },
    h("div", { class: "grid cols-2" },
      h("div", {},
        h("label", { for: "ev-types" }, "Types ", h("span", { class: "field-hint", id: "ev-types-hint" },
          "patterns, comma-separated; ", h("code", {}, "*"), " is one word; a trailing ", h("code", {}, "*"), " or ",
          h("code", {}, ">"), " matches the rest (", h("code", {}, "run.*"), " includes run.node.started)")),
        types),
      h("div", {}, h("label", { for: "ev-subject" }, "Subject ", h("span", { class: "field-hint" }, "exact, or a collection like runs/*")), subject),
    ),
    h("div", { class: "row", style: { marginTop: "0.75rem" } },
      h("label", { for: "ev-since", style: { margin: 0 } }, "Start"),
      h("div", { style: { width: "14rem" } }, since),
      h("div", { style: { width: "8rem" } }, after),
      h("label", { class: "check" }, hideTokens, "Hide run.token"),
      h("span", { class: "spacer" }),
      h("button", { type: "submit", class: "primary" }, "Apply"),
    ),
  );

  main.append(
    h("h1", {}, "Events"),
    form,
    notice,
    h("div", { class: "row", style: { marginBottom: "0.5rem" } }, pause, clearButton, h("span", { class: "spacer" }), counts),
    h("div", { class: "feed-head", "aria-hidden": "true" },
      h("span", { class: "seq" }, "Seq"), h("span", {}, "Time"), h("span", {}, "Type"), h("span", {}, "Subject"), h("span", {}, "Data")),
    feed,
  );

  let subscription = null;
  let queue = [];
  let received = 0;
  let hidden = 0;
  let paused = false;
  let shown = 0;

  const flush = perFrame(() => {
    if (paused || !queue.length) return;
    const atBottom = feed.scrollTop + feed.clientHeight >= feed.scrollHeight - 24;
    const batch = queue.length > MAX_ROWS ? queue.slice(-MAX_ROWS) : queue;
    queue = [];
    const fragment = document.createDocumentFragment();
    for (const [event, sequence] of batch) fragment.append(row(event, sequence));
    if (shown === 0) feed.replaceChildren();
    feed.append(fragment);
    shown += batch.length;
    while (feed.childElementCount > MAX_ROWS) feed.firstElementChild.remove();
    if (atBottom) feed.scrollTop = feed.scrollHeight;
    updateCounts();
  });

  function updateCounts() {
    const parts = [`${received.toLocaleString()} received`];
    if (hidden) parts.push(`${hidden.toLocaleString()} tokens hidden`);
    if (received - hidden > MAX_ROWS) parts.push(`showing the latest ${MAX_ROWS}`);
    if (paused && queue.length) parts.push(`${queue.length.toLocaleString()} waiting`);
    counts.textContent = parts.join(" · ");
  }

  function start(applied = false) {
    if (subscription) subscription.close();
    const patterns = types.value.split(/[\s,]+/).map((t) => t.trim()).filter(Boolean);
    const filter = {};
    if (patterns.length) filter.types = patterns;
    if (subject.value.trim()) filter.subject = subject.value.trim();
    let from = since.value;
    if (from === "after") from = Math.max(0, parseInt(after.value, 10) || 0);
    saveFilter({ types: types.value, subject: subject.value, since: since.value, after: after.value,
      hideTokens: hideTokens.checked });
    queue = [];
    received = 0;
    hidden = 0;
    shown = 0;
    feed.replaceChildren(h("p", { class: "empty", style: { padding: "0.5rem" } },
      from === "now" ? "Waiting for events…" : "Replaying…"));
    notice.replaceChildren();
    updateCounts();
    subscription = ctx.socket.subscribe({ filter, since: from }, {
      onEvent(event, sequence) {
        received += 1;
        if (hideTokens.checked && event.type === "run.token") {
          hidden += 1;
        } else {
          queue.push([event, sequence]);
          if (queue.length > MAX_ROWS * 4) queue = queue.slice(-MAX_ROWS);
        }
        flush();
        if (paused) updateCounts();
      },
      onError(message, final) {
        notice.replaceChildren(h("p", { class: `notice ${final ? "error" : "warn"}`, role: final ? "alert" : "status" },
          final ? `The feed stopped: ${message}` : message));
        // Only what is true: a refused or ended feed waits for nothing (it said "Waiting for
        // events…" under "The feed stopped", and "Filter applied" was announced).
        if (final && shown === 0) {
          feed.replaceChildren(h("p", { class: "empty", style: { padding: "0.5rem" } },
            "Not following any events: change the filter and apply it again."));
        }
        if (final && applied) {
          applied = false;
          ctx.announce("The filter was refused");
        }
      },
      onSubscribed() {
        notice.replaceChildren();
        if (applied) {
          applied = false;
          ctx.announce("Filter applied");
        }
      },
    });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    start(true);
  });
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) flush();
    updateCounts();
  });
  clearButton.addEventListener("click", () => {
    feed.replaceChildren();
    queue = [];
    shown = 0;
    updateCounts();
  });

  start();
  return () => {
    if (subscription) subscription.close();
  };
}
