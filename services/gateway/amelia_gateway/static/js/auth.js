// The API token: from `?token=` (then removed from the address bar), or the settings dialog;
// kept in localStorage. Changing it tells the app (event "amelia:token") so the socket reconnects.

const KEY = "amelia.apiToken";

export function initToken() {
  const url = new URL(window.location.href);
  if (url.searchParams.has("token")) {
    setToken(url.searchParams.get("token") || "", { quiet: true });
    url.searchParams.delete("token");
    // Keep the token out of the history and out of anything the user copies from the address bar.
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
}

export function getToken() {
  try {
    return window.localStorage.getItem(KEY) || "";
  } catch {
    return memoryToken;
  }
}

let memoryToken = "";

export function setToken(token, { quiet = false } = {}) {
  const value = String(token || "").trim();
  memoryToken = value;
  try {
    if (value) window.localStorage.setItem(KEY, value);
    else window.localStorage.removeItem(KEY);
  } catch {
    // Storage disabled (private mode): the token lives in memory for this page.
  }
  if (!quiet) window.dispatchEvent(new CustomEvent("amelia:token", { detail: { set: Boolean(value) } }));
}
