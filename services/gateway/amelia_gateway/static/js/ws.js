// The gateway's WebSocket (`/ws`), kept alive: reconnects by itself and resumes every
// subscription after the last sequence it delivered, so a handler sees each event exactly once,
// in order, across gateway restarts and dropped connections.
//
// Protocol (docs/gateway.md): the client sends
//   {"type":"subscribe","id":"s1","filter":{"types":["run.*"],"subject":"runs/…"},"since":"now"|"beginning"|42|"<RFC 3339>"}
//   {"type":"subscribe","id":"s2","run":"runs/…","since":"beginning"|42}
//   {"type":"unsubscribe","id":"s1"}   {"type":"pong"} (answer to the server's ping)
// and receives welcome / subscribed / event {subscription, sequence, event} / end / error / ping.
// The API token travels as the subprotocol `bearer.<token>` next to `amelia.v1`, because a
// browser cannot set an Authorization header on a WebSocket.

const CLOSE_UNAUTHORIZED = 4401;
const BACKOFF_START_MS = 250;
const BACKOFF_MAX_MS = 5000;
// Liveness: after PROBE_MS without a message the client pings (`{"type":"ping"}`, answered with
// a pong); no answer within PROBE_TIMEOUT_MS and the feed reads as stalled (a frozen gateway
// still holds its TCP connection open, and its own pings come only every heartbeat interval).
const PROBE_MS = 5000;
const PROBE_TIMEOUT_MS = 6000;

/** One subscription; survives reconnects. `lastSequence` is the last event handed to `onEvent`. */
class Subscription {
  constructor(socket, id, spec, handlers) {
    this.socket = socket;
    this.id = id;
    this.spec = spec; // {filter} or {run}, and the first `since`
    this.handlers = handlers;
    this.lastSequence = 0;
    // A live ("now") subscription that has seen nothing yet resumes from when it was made, so
    // events published while the socket was down are not lost.
    this.openedAt = !spec.run && (spec.since === "now" || spec.since === undefined) ? new Date().toISOString() : "";
    this.sent = false;
    this.delivered = 0;
    this.duplicates = 0;
    this.ended = false;
    this.closed = false;
  }

  /** The subscription's stream is flowing again (events, `subscribed`, `status: back`). */
  flowing() {
    this.socket.recover(`stream:${this.id}`);
  }

  /** The subscribe message for the current connection: resume after what was delivered. */
  message() {
    const message = { type: "subscribe", id: this.id };
    if (this.spec.run) message.run = this.spec.run;
    else message.filter = this.spec.filter || {};
    if (this.lastSequence > 0) message.since = this.lastSequence;
    else if (this.openedAt && this.sent) message.since = this.openedAt;
    else if (this.spec.since !== undefined) message.since = this.spec.since;
    this.sent = true;
    return message;
  }

  deliver(sequence, event) {
    // The dedupe: anything at or before the last delivered sequence was already shown.
    if (!(sequence > this.lastSequence)) {
      this.duplicates += 1;
      return;
    }
    this.lastSequence = sequence;
    this.delivered += 1;
    this.flowing();
    if (this.handlers.onEvent) this.handlers.onEvent(event, sequence);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.socket.recover(`stream:${this.id}`, false);
    this.socket._forget(this);
  }
}

/**
 * const socket = new EventSocket({ token: () => getToken() });
 * const sub = socket.subscribe({ filter: { types: ["run.*"] }, since: "now" }, { onEvent(e, seq) {} });
 * sub.close();
 * Events: "state" ({detail: {state, attempt, reason}}), "welcome".
 */
export class EventSocket extends EventTarget {
  constructor({ url, token } = {}) {
    super();
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    this.url = url || `${scheme}://${window.location.host}/ws`;
    this.tokenOf = token || (() => "");
    this.subscriptions = new Map();
    this.nextId = 1;
    this.ws = null;
    this.state = "idle";
    this.attempt = 0;
    this.clientId = "";
    this.heartbeatMs = 30000;
    this.timer = 0;
    this.watchdog = 0;
    this.lastHeard = 0;
    this.probeSentAt = 0;
    // Why the open socket's feed is stalled: a missed heartbeat, a subscription's stream down
    // (an `error` with `final: false`), the events service not serving (health.js). State
    // "stalled" while any is set; "open" (Live) once all are cleared.
    this.problems = new Map();
    this.stopped = false;
    this.connects = 0;
    this._online = () => this.reconnectNow();
    window.addEventListener("online", this._online);
  }

  // -- public ---------------------------------------------------------------------------------

  start() {
    this.stopped = false;
    if (!this.ws) this._connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.watchdog);
    window.removeEventListener("online", this._online);
    if (this.ws) this.ws.close(1000, "page closed");
    this.ws = null;
    this._setState("closed");
  }

  /**
   * The feed is stalled for `reason` (under `key`): the state reads "stalled" while the socket is
   * open. `recover(key)` clears it; once nothing is left the state is "open" again and, when
   * `back` is true, a "back" event says the feed is flowing (pages reload what failed).
   */
  degrade(key, reason) {
    if (this.problems.get(key) === reason) return;
    this.problems.set(key, reason);
    this._showHealth();
  }

  recover(key, back = true) {
    if (!this.problems.delete(key)) return;
    this._showHealth();
    if (back) this.dispatchEvent(new CustomEvent("back", { detail: { key } }));
  }

  _showHealth() {
    if (this.state !== "open" && this.state !== "stalled") return;
    const reasons = [...this.problems.values()];
    const state = reasons.length ? "stalled" : "open";
    const reason = reasons.join("; ");
    if (state !== this.state || reason !== this.reason) this._setState(state, reason);
  }

  /** Drop the connection and connect again now (e.g. after the token changed). */
  reconnectNow() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.attempt = 0;
    if (this.ws) {
      const old = this.ws;
      this.ws = null;
      this._detach(old);
      old.close(1000, "reconnecting");
    }
    this._connect();
  }

  /**
   * spec: {filter: {types, subject}, since} or {run: "runs/…", since}.
   * handlers: onEvent(event, sequence), onEnd(), onError(message, final), onSubscribed(),
   * onBack(message) (the stream is open again after a non-final error; default: onSubscribed).
   */
  subscribe(spec, handlers = {}) {
    const id = `s${this.nextId++}`;
    const subscription = new Subscription(this, id, spec, handlers);
    this.subscriptions.set(id, subscription);
    if (this.state === "open") this._send(subscription.message());
    this.start();
    return subscription;
  }

  // -- connection -----------------------------------------------------------------------------

  _protocols() {
    const token = this.tokenOf();
    return token ? ["amelia.v1", `bearer.${token}`] : ["amelia.v1"];
  }

  _connect() {
    if (this.stopped) return;
    this._setState(this.connects === 0 ? "connecting" : "reconnecting");
    let ws;
    try {
      ws = new WebSocket(this.url, this._protocols());
    } catch (error) {
      // A token with characters a subprotocol cannot carry.
      this._setState("unauthorized", "the API token has characters a WebSocket cannot carry");
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.connects += 1;
      this.attempt = 0;
      this.lastHeard = Date.now();
      this.probeSentAt = 0;
      // What was stalled on the old socket is asked again on this one.
      for (const key of [...this.problems.keys()]) if (key !== "events-service") this.problems.delete(key);
      this._startWatchdog();
      this._setState("open");
      this._showHealth();
      if (this.connects > 1) this.dispatchEvent(new CustomEvent("back", { detail: { key: "socket" } }));
      for (const subscription of this.subscriptions.values()) {
        if (!subscription.ended) this._send(subscription.message());
      }
    };
    ws.onmessage = (message) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      this.probeSentAt = 0;
      this.recover("heartbeat");
      this._receive(message.data);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      clearInterval(this.watchdog);
      if (this.stopped) return;
      if (event.code === CLOSE_UNAUTHORIZED) {
        this._setState("unauthorized", event.reason || "wrong or missing API token");
        window.dispatchEvent(new CustomEvent("amelia:unauthorized"));
        return;
      }
      this._scheduleReconnect(event.reason || "");
    };
    ws.onerror = () => {
      // onclose follows and decides what to do.
    };
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  _scheduleReconnect(reason) {
    this.attempt += 1;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** (this.attempt - 1));
    const delay = base / 2 + Math.random() * (base / 2);
    this._setState("reconnecting", reason);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this._connect(), delay);
  }

  _startWatchdog() {
    // A connection that went silent (laptop sleep, dead proxy) never fires onclose; the server
    // pings every heartbeat interval, so three missed pings mean the connection is gone.
    clearInterval(this.watchdog);
    this.watchdog = setInterval(() => {
      const now = Date.now();
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        if (!this.probeSentAt && now - this.lastHeard > PROBE_MS) {
          this.probeSentAt = now;
          this._send({ type: "ping" });
        } else if (this.probeSentAt && now - this.probeSentAt > PROBE_TIMEOUT_MS) {
          const silent = Math.round((now - this.lastHeard) / 1000);
          this.degrade("heartbeat", `no heartbeat from the gateway for ${silent} s`);
        }
      }
      if (this.ws && now - this.lastHeard > this.heartbeatMs * 3) {
        const old = this.ws;
        this.ws = null;
        this._detach(old);
        old.close(4000, "heartbeat timeout");
        this._scheduleReconnect("no heartbeat from the gateway");
      }
    }, 1000);
  }

  _send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    }
  }

  _forget(subscription) {
    this.subscriptions.delete(subscription.id);
    if (!subscription.ended) this._send({ type: "unsubscribe", id: subscription.id });
  }

  _setState(state, reason = "") {
    this.state = state;
    this.reason = reason;
    this.dispatchEvent(
      new CustomEvent("state", { detail: { state, attempt: this.attempt, reason } }),
    );
  }

  // -- messages -------------------------------------------------------------------------------

  _receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    const subscription = this.subscriptions.get(message.subscription);
    switch (message.type) {
      case "event":
        if (subscription) subscription.deliver(Number(message.sequence), message.event);
        break;
      case "ping":
        this._send({ type: "pong" });
        break;
      case "welcome":
        this.clientId = message.clientId || "";
        if (message.heartbeatInterval) this.heartbeatMs = Number(message.heartbeatInterval) * 1000;
        this.dispatchEvent(new CustomEvent("welcome", { detail: message }));
        break;
      case "subscribed":
        if (subscription) subscription.flowing();
        if (subscription && subscription.handlers.onSubscribed) subscription.handlers.onSubscribed();
        break;
      case "status": {
        // The stream is open again after an error with `final: false`: clear its notice (a
        // handler without onBack clears it as on `subscribed`).
        const handlers = subscription ? subscription.handlers : {};
        const back = handlers.onBack || handlers.onSubscribed;
        if (message.status === "back" && subscription) subscription.flowing();
        if (message.status === "back" && back) back(message.message || "");
        break;
      }
      case "end":
        if (subscription) {
          subscription.ended = true;
          this.subscriptions.delete(subscription.id);
          this.recover(`stream:${subscription.id}`, false);
          if (subscription.handlers.onEnd) subscription.handlers.onEnd();
        }
        break;
      case "error": {
        const error = message.error || {};
        if (subscription) {
          if (message.final) {
            subscription.ended = true;
            this.subscriptions.delete(subscription.id);
            this.recover(`stream:${subscription.id}`, false);
          } else if (error.code === 14 || error.code === 8 || error.code === 4) {
            // The gateway keeps the subscription and waits for the service (or for room on the
            // event log): the feed is stalled until its `status: back`.
            this.degrade(`stream:${subscription.id}`, error.message || "the event stream is down");
          }
          if (subscription.handlers.onError) {
            subscription.handlers.onError(error.message || "stream error", Boolean(message.final));
          }
        }
        break;
      }
      default:
        break;
    }
  }
}
