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
    if (this.handlers.onEvent) this.handlers.onEvent(event, sequence);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
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
      this._startWatchdog();
      this._setState("open");
      for (const subscription of this.subscriptions.values()) {
        if (!subscription.ended) this._send(subscription.message());
      }
    };
    ws.onmessage = (message) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
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
      if (this.ws && Date.now() - this.lastHeard > this.heartbeatMs * 3) {
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
        if (subscription && subscription.handlers.onSubscribed) subscription.handlers.onSubscribed();
        break;
      case "status": {
        // The stream is open again after an error with `final: false`: clear its notice (a
        // handler without onBack clears it as on `subscribed`).
        const handlers = subscription ? subscription.handlers : {};
        const back = handlers.onBack || handlers.onSubscribed;
        if (message.status === "back" && back) back(message.message || "");
        break;
      }
      case "end":
        if (subscription) {
          subscription.ended = true;
          this.subscriptions.delete(subscription.id);
          if (subscription.handlers.onEnd) subscription.handlers.onEnd();
        }
        break;
      case "error": {
        const error = message.error || {};
        if (subscription) {
          if (message.final) {
            subscription.ended = true;
            this.subscriptions.delete(subscription.id);
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
