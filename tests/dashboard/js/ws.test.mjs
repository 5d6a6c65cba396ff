// Unit tests of js/ws.js: what a subscription's handlers hear of the gateway's messages.
import assert from "node:assert/strict";
import { test } from "node:test";

globalThis.window = globalThis.window || { location: { protocol: "http:", host: "localhost" }, addEventListener() {} };
const STATIC = new URL("../../../services/gateway/amelia_gateway/static/js/", import.meta.url);
const { EventSocket } = await import(new URL("ws.js", STATIC));

function socketWith(handlers) {
  const socket = new EventSocket({ url: "ws://localhost/ws" });
  socket.start = () => socket; // no connection: messages are handed to _receive
  const subscription = socket.subscribe({ filter: { subject: "runs/*" } }, handlers);
  const receive = (message) => socket._receive(JSON.stringify({ subscription: subscription.id, ...message }));
  return { socket, subscription, receive };
}

test("'status: back' after a non-final error clears the notice (onBack, else onSubscribed)", () => {
  const heard = [];
  const { receive, socket, subscription } = socketWith({
    onError: (message, final) => heard.push(["error", message, final]),
    onBack: (message) => heard.push(["back", message]),
  });
  receive({ type: "error", error: { code: 14, message: "the events service … is unavailable" }, final: false });
  receive({ type: "status", status: "back", message: "the events service is back: …" });
  assert.deepEqual(heard, [
    ["error", "the events service … is unavailable", false],
    ["back", "the events service is back: …"],
  ]);
  assert.ok(socket.subscriptions.has(subscription.id), "a non-final error keeps the subscription");

  let cleared = 0;
  const plain = socketWith({ onSubscribed: () => { cleared += 1; } });
  plain.receive({ type: "status", status: "back", message: "…" });
  assert.equal(cleared, 1);
  plain.receive({ type: "status", status: "something else" });
  assert.equal(cleared, 1, "an unknown status is ignored");
});

test("an open socket reads 'stalled' while a stream is down or the gateway is silent, 'open' once it flows", () => {
  const { receive, socket } = socketWith({});
  const states = [];
  let backs = 0;
  socket.addEventListener("state", (event) => states.push([event.detail.state, event.detail.reason]));
  socket.addEventListener("back", () => { backs += 1; });
  socket._setState("open");
  receive({ type: "error", error: { code: 14, message: "the events service … is unavailable" }, final: false });
  assert.equal(socket.state, "stalled");
  assert.match(socket.reason, /events service … is unavailable/);
  receive({ type: "status", status: "back", message: "the events service is back: …" });
  assert.equal(socket.state, "open");
  assert.equal(backs, 1, "'back' tells the pages to reload what failed");

  // A refused subscribe's error (not an outage) is not a stall; a final error clears its stall.
  receive({ type: "error", error: { code: 3, message: "subscription 's1' already exists" }, final: false });
  assert.equal(socket.state, "open");
  receive({ type: "error", error: { code: 14, message: "down" }, final: false });
  receive({ type: "error", error: { code: 14, message: "gone" }, final: true });
  assert.equal(socket.state, "open");

  // The events service not serving (health.js) and a missed heartbeat, cleared one by one.
  socket.degrade("events-service", "the events service is not serving");
  socket.degrade("heartbeat", "no heartbeat from the gateway for 9 s");
  assert.equal(socket.state, "stalled");
  socket.recover("heartbeat");
  assert.equal(socket.state, "stalled", "still stalled: the events service is not serving");
  socket.recover("events-service");
  assert.equal(socket.state, "open");
  assert.deepEqual(states.map(([state]) => state), ["open", "stalled", "open", "stalled", "open", "stalled", "stalled", "stalled", "open"]);
});

test("a stall is not shown while the socket is not open (reconnecting says it already)", () => {
  const { socket } = socketWith({});
  socket._setState("reconnecting");
  socket.degrade("heartbeat", "no heartbeat");
  assert.equal(socket.state, "reconnecting");
});
