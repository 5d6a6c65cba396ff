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
