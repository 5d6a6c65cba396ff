// Tiny DOM helpers: build elements without innerHTML (no injection from event data), format values.

/**
 * h("button", {class: "primary", onclick: fn}, "Save") -> <button class="primary">Save</button>.
 * Attributes starting with "on" become listeners; `dataset`/`style` objects are merged; `false`,
 * null and undefined attributes are skipped; children may be strings, nodes, arrays or null.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "style" && typeof value === "object") {
      Object.assign(el.style, value);
    } else if (key === "class") {
      el.className = value;
    } else if (key in el && typeof value !== "string") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** Announce a short message to screen readers (polite). */
export function announce(message) {
  const region = document.getElementById("announcer");
  if (!region) return;
  region.textContent = "";
  // A new text node on the next frame makes repeated identical messages be read again.
  requestAnimationFrame(() => { region.textContent = message; });
}

/** An error as a notice; `then` adds what happens next ("Trying again in 5 s."). */
export function errorNotice(error, then = "") {
  const text = messageOf(error);
  return h("p", { class: "notice error", role: "alert" }, text, then ? `${/[.!?:]$/.test(text) ? "" : "."} ${then}` : null);
}

export function messageOf(error) {
  if (!error) return "";
  return error.message || String(error);
}

/**
 * Text a user wrote (an agent's name), set apart from the text around it for the bidi algorithm
 * (U+2068 FIRST STRONG ISOLATE … U+2069 POP DIRECTIONAL ISOLATE): where no <bdi> can go — an
 * <option>, a title — a U+202E in a name flipped the rest of the line ("(ohce:enilffo)").
 */
export function isolate(text) {
  return `\u2068${text}\u2069`;
}

export function idOf(name) {
  return String(name || "").split("/").pop();
}

export function shortId(name) {
  const id = idOf(name);
  return id.length > 12 ? `${id.slice(0, 8)}…` : id;
}

export function formatTime(value) {
  if (!value) return "";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return sameDay ? time : `${date.toLocaleDateString()} ${time}`;
}

/** Proto JSON Duration ("1.5s") or seconds -> "1.5 s". */
export function formatDuration(value) {
  if (value === undefined || value === null || value === "") return "";
  const seconds = typeof value === "number" ? value : parseFloat(String(value));
  if (!Number.isFinite(seconds)) return String(value);
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

export function formatBytes(n) {
  const value = Number(n || 0);
  if (value < 1024) return `${value} B`;
  if (value < 1024 * 1024) return `${(value / 1024).toFixed(1)} KB`;
  return `${(value / 1024 / 1024).toFixed(1)} MB`;
}

export function compactJson(value, max = 160) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch {
    text = String(value);
  }
  if (text === undefined) return "";
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export function prettyJson(value) {
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

/** Calls fn at most once per animation frame, with the latest arguments. */
export function perFrame(fn) {
  let scheduled = false;
  return () => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      fn();
    });
  };
}

/**
 * Answers taken in the order their loads began: `const current = loads();` once, then in a
 * load `const latest = current();` before its first await and `if (!latest()) return;` after
 * each. A load is dropped once a later one has begun (a filter changed, an event reloaded), so
 * an older answer that arrives last never replaces a newer one on the screen.
 */
export function loads() {
  let begun = 0;
  return () => {
    const mine = ++begun;
    return () => mine === begun;
  };
}

/** Calls fn after `ms` without further calls. */
export function debounce(fn, ms) {
  let timer = 0;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
