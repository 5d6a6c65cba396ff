// Outages, as the page sees them: a screen's data that failed to load because a service was
// unavailable loads again by itself, and the event feed says when it is stalled.
//
// - `retryOnOutage(load)`: one screen's load that retries by itself. Its load calls `ok()` when
//   it drew its data and `failed(error)` when it could not; a failure that is an outage (the
//   gateway unreachable, a service UNAVAILABLE, a call that timed out) schedules the load again
//   after 1, 2, 5, then every 10 s, and at once when the gateway's status or the event feed says
//   a service is back (`amelia:service-back`). `failed` returns the words to add to the error
//   ("Trying again in 5 s."), or "" for an error that a retry would not change.
// - `startHealth(api, socket)`: the gateway's `GET /v1/status`, every 10 s while the page is
//   open and every 2 s while a load waits to retry; a service that comes back fires
//   `amelia:service-back`, and the events service or NATS not serving marks the socket's feed as
//   stalled (`socket.degrade("events-service", why)`), as the Status screen shows it.

export const RETRY_DELAYS_MS = [1000, 2000, 5000, 10000];
const STATUS_MS = 10000;
const STATUS_OUTAGE_MS = 2000;
const BACK = "amelia:service-back";

const waiting = new Set(); // retries scheduled now: the status poll goes faster meanwhile
let wake = () => {};

/** An error that another try may not get: the gateway unreachable, a service down or slow. */
export function isOutage(error) {
  if (!error || error.name === "AbortError") return false;
  if (error.httpStatus === 0 || [502, 503, 504].includes(error.httpStatus)) return true;
  return error.code === "UNAVAILABLE" || error.code === "DEADLINE_EXCEEDED";
}

/** Tell every waiting load that a service is back: they try again now. */
export function serviceBack() {
  window.dispatchEvent(new CustomEvent(BACK));
}

export function retryOnOutage(load, { delays = RETRY_DELAYS_MS } = {}) {
  let attempt = 0;
  let timer = 0;
  let stopped = false;
  const handle = {};
  function cancel() {
    clearTimeout(timer);
    timer = 0;
    waiting.delete(handle);
  }
  function now() {
    if (stopped || !timer) return;
    cancel();
    load();
  }
  window.addEventListener(BACK, now);
  return Object.assign(handle, {
    /** The load drew its data: no retry. */
    ok() {
      attempt = 0;
      cancel();
    },
    /** The load failed: schedule another if it is an outage; returns what to tell the user. */
    failed(error) {
      cancel();
      if (stopped || !isOutage(error)) return "";
      const delay = delays[Math.min(attempt, delays.length - 1)];
      attempt += 1;
      timer = setTimeout(() => {
        timer = 0;
        waiting.delete(handle);
        if (!stopped) load();
      }, delay);
      waiting.add(handle);
      wake();
      return `Trying again in ${Math.round(delay / 1000)} s.`;
    },
    /** True while a retry is scheduled. */
    get pending() {
      return Boolean(timer);
    },
    stop() {
      stopped = true;
      cancel();
      window.removeEventListener(BACK, now);
    },
  });
}

/** The words for why the event feed is stalled, from a /v1/status body; "" when it is not. */
export function feedTrouble(status) {
  const events = (status.services || {}).events;
  if (!events) return "";
  if (events.status !== "SERVING") {
    return `the events service is ${String(events.status || "unknown").toLowerCase().replace(/_/g, " ")}`;
  }
  const nats = (events.dependencies || {}).nats;
  if (nats && nats !== "SERVING") return `the events service's NATS is ${String(nats).toLowerCase().replace(/_/g, " ")}`;
  return "";
}

export function startHealth(api, socket) {
  let timer = 0;
  let busy = false;
  let nextAt = 0;
  let serving = null; // service name -> SERVING?, from the last answer
  async function check() {
    clearTimeout(timer);
    if (busy) return;
    busy = true;
    try {
      const status = await api.status({ timeout: 5 });
      const now = {};
      let back = false;
      for (const [name, report] of Object.entries(status.services || {})) {
        now[name] = report.status === "SERVING";
        if (now[name] && serving && serving[name] === false) back = true;
      }
      serving = now;
      const trouble = feedTrouble(status);
      if (trouble) socket.degrade("events-service", `${trouble} (see Status)`);
      else socket.recover("events-service");
      if (back || (waiting.size && Object.values(now).every(Boolean))) serviceBack();
    } catch {
      // The gateway itself is unreachable: the socket says so.
    } finally {
      busy = false;
      const delay = waiting.size ? STATUS_OUTAGE_MS : STATUS_MS;
      nextAt = Date.now() + delay;
      timer = setTimeout(check, delay);
    }
  }
  wake = () => {
    // A load waits to retry: ask sooner than the next regular check.
    if (!busy && nextAt - Date.now() > STATUS_OUTAGE_MS) {
      clearTimeout(timer);
      nextAt = Date.now() + STATUS_OUTAGE_MS;
      timer = setTimeout(check, STATUS_OUTAGE_MS);
    }
  };
  // The feed came back (the socket reopened, a stream is open again): the services may be too.
  socket.addEventListener("back", serviceBack);
  window.addEventListener("amelia:token", check);
  check();
}
