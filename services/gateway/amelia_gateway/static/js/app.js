// The dashboard shell: one WebSocket for the whole page, a hash router, the connection
// indicator and the settings dialog. Each screen is a module exporting
// `mount(main, ctx, params) -> unmount()`.

import { api } from "./api.js";
import { getToken, initToken, setToken } from "./auth.js";
import { announce, h } from "./dom.js";
import { EventSocket } from "./ws.js";
import * as crons from "./views/crons.js";
import * as documents from "./views/documents.js";
import * as events from "./views/events.js";
import * as run from "./views/run.js";
import * as runs from "./views/runs.js";
import * as queue from "./views/queue.js";
import * as status from "./views/status.js";
import * as threads from "./views/threads.js";
import { startInbox } from "./inbox.js";
import { startHealth } from "./health.js";

const ROUTES = [
  { pattern: /^\/?$/, view: status, tab: "status" },
  { pattern: /^\/status$/, view: status, tab: "status" },
  { pattern: /^\/queue$/, view: queue, tab: "status" },
  { pattern: /^\/events$/, view: events, tab: "events" },
  { pattern: /^\/runs$/, view: runs, tab: "runs" },
  { pattern: /^\/runs\/([A-Za-z0-9_-]+)$/, view: run, tab: "runs" },
  { pattern: /^\/threads$/, view: threads, tab: "threads" },
  { pattern: /^\/threads\/([A-Za-z0-9_-]+)$/, view: threads, tab: "threads" },
  { pattern: /^\/documents$/, view: documents, tab: "documents" },
  { pattern: /^\/crons$/, view: crons, tab: "crons" },
];

initToken();

const socket = new EventSocket({ token: getToken });
const main = document.getElementById("main");
const ctx = {
  api,
  socket,
  navigate(path) {
    window.location.hash = `#${path}`;
  },
  /** The query of the hash (`#/runs?status=FAILED` -> status=FAILED): a screen's shareable state. */
  query() {
    const hash = window.location.hash || "";
    const at = hash.indexOf("?");
    return new URLSearchParams(at < 0 ? "" : hash.slice(at + 1));
  },
  announce,
};
// For tests and for people poking at the page from the console.
window.amelia = { socket, api, ctx };

let unmount = null;
let firstRoute = true;
let shownPath = null;

function route() {
  const path = (window.location.hash || "#/status").slice(1).split("?")[0];
  let match = null;
  let found = ROUTES[0];
  for (const candidate of ROUTES) {
    match = candidate.pattern.exec(path);
    if (match) {
      found = candidate;
      break;
    }
  }
  if (unmount) {
    try {
      unmount();
    } catch (error) {
      console.error(error);
    }
    unmount = null;
  }
  main.replaceChildren();
  for (const link of document.querySelectorAll("[data-route]")) {
    if (link.dataset.route === found.tab) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  unmount = found.view.mount(main, ctx, match ? match.slice(1) : []) || null;
  document.body.dataset.view = found.tab;
  // A new screen opens at its top: the page keeps the old one's scroll otherwise (on a phone,
  // "Start run" low in the runs form opened the run below its title and status). A change of
  // the query alone (a list's filter) is the same screen: it keeps its place.
  if (shownPath !== null && path !== shownPath) window.scrollTo(0, 0);
  shownPath = path;
  // Move focus to the new screen's heading (not on first load: keep the skip link first).
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    if (!firstRoute) heading.focus({ preventScroll: true });
    document.title = `${heading.textContent} · Amelia`;
  }
  firstRoute = false;
}

// -- connection indicator -------------------------------------------------------------------

const indicator = document.getElementById("connection");
const indicatorText = indicator.querySelector(".conn-text");
const feedNotice = document.getElementById("feed-notice");
let lastAnnounced = "";
socket.addEventListener("state", (event) => {
  const { state, attempt, reason } = event.detail;
  indicator.dataset.state = state;
  let text = "";
  if (state === "open") text = "Live";
  else if (state === "stalled") text = "Stalled";
  else if (state === "connecting") text = "Connecting…";
  else if (state === "reconnecting") text = attempt > 1 ? `Reconnecting… (try ${attempt})` : "Reconnecting…";
  else if (state === "unauthorized") text = "Token needed";
  else text = "Offline";
  indicatorText.textContent = text;
  indicator.title = reason || "";
  // Stalled: the socket is open but nothing flows (a frozen gateway, the events service or NATS
  // down): say so, as the page would otherwise look live and quiet.
  feedNotice.hidden = state !== "stalled";
  feedNotice.textContent = state === "stalled"
    ? `Live updates are stalled: ${reason || "the event feed is not flowing"}. The page catches up once they flow again.` : "";
  const spoken = state === "open" ? "Connected to the gateway" : state === "unauthorized"
    ? "The gateway refused the API token" : state === "reconnecting" ? "Connection lost, reconnecting"
      : state === "stalled" ? "Live updates are stalled" : "";
  if (spoken && spoken !== lastAnnounced) {
    lastAnnounced = spoken;
    announce(spoken);
  }
});

// -- settings -------------------------------------------------------------------------------

const dialog = document.getElementById("settings");
const tokenInput = document.getElementById("token-input");
const showButton = document.getElementById("token-show");

function openSettings(message) {
  tokenInput.value = getToken();
  const old = dialog.querySelector(".notice");
  if (old) old.remove();
  if (message) {
    dialog.querySelector("h2").after(h("p", { class: "notice warn", role: "alert" }, message));
  }
  if (!dialog.open) dialog.showModal();
  tokenInput.focus();
}

document.getElementById("settings-button").addEventListener("click", () => openSettings());
showButton.addEventListener("click", () => {
  const shown = tokenInput.type === "text";
  tokenInput.type = shown ? "password" : "text";
  showButton.textContent = shown ? "Show" : "Hide";
  showButton.setAttribute("aria-pressed", String(!shown));
});
dialog.addEventListener("close", () => {
  if (dialog.returnValue !== "save") return;
  setToken(tokenInput.value);
  announce("Token saved");
});

window.addEventListener("amelia:token", () => {
  askedForToken = false;
  socket.reconnectNow();
  route();
});

let askedForToken = false;
window.addEventListener("amelia:unauthorized", () => {
  if (askedForToken || dialog.open) return;
  askedForToken = true;
  openSettings("The gateway needs an API token (AMELIA_API_TOKEN). Paste it here.");
});

// -- start ----------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
socket.start();
startHealth(api, socket);
startInbox(ctx, document.getElementById("inbox"));
route();
