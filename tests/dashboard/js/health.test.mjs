// Unit tests of js/health.js: which errors are outages, the retry's backoff and its "back" wake-up.
import assert from "node:assert/strict";
import { test } from "node:test";

const target = new EventTarget();
globalThis.window = globalThis.window || {
  location: { protocol: "http:", host: "localhost" },
  addEventListener: target.addEventListener.bind(target),
  removeEventListener: target.removeEventListener.bind(target),
  dispatchEvent: target.dispatchEvent.bind(target),
};
globalThis.CustomEvent = globalThis.CustomEvent || class extends Event {
  constructor(type, init = {}) { super(type); this.detail = init.detail; }
};
const STATIC = new URL("../../../services/gateway/amelia_gateway/static/js/", import.meta.url);
const { RETRY_DELAYS_MS, feedTrouble, isOutage, retryOnOutage, serviceBack } = await import(new URL("health.js", STATIC));

test("an outage is the gateway unreachable, a 502/503/504, UNAVAILABLE or DEADLINE_EXCEEDED", () => {
  assert.ok(isOutage({ httpStatus: 0 }));
  assert.ok(isOutage({ httpStatus: 503, code: "UNAVAILABLE" }));
  assert.ok(isOutage({ httpStatus: 504, code: "DEADLINE_EXCEEDED" }));
  assert.ok(!isOutage({ httpStatus: 400, code: "INVALID_ARGUMENT" }));
  assert.ok(!isOutage({ httpStatus: 404, code: "NOT_FOUND" }));
  assert.ok(!isOutage({ name: "AbortError" }));
});

test("a failed load retries after 1, 2, 5, then every 10 s, and at once when a service is back", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  let loads = 0;
  const retry = retryOnOutage(() => { loads += 1; });
  const down = { httpStatus: 503, code: "UNAVAILABLE", message: "the agents service … is unavailable" };
  assert.deepEqual(RETRY_DELAYS_MS, [1000, 2000, 5000, 10000]);
  const said = [];
  for (const delay of [1000, 2000, 5000, 10000, 10000]) {
    said.push(retry.failed(down));
    t.mock.timers.tick(delay - 1);
    const before = loads;
    t.mock.timers.tick(1);
    assert.equal(loads, before + 1, `retried after ${delay} ms`);
  }
  assert.deepEqual(said, ["Trying again in 1 s.", "Trying again in 2 s.", "Trying again in 5 s.", "Trying again in 10 s.", "Trying again in 10 s."]);
  assert.equal(retry.failed({ httpStatus: 400, code: "INVALID_ARGUMENT" }), "", "not an outage: no retry");
  assert.ok(!retry.pending);

  retry.failed(down);
  const before = loads;
  serviceBack();
  assert.equal(loads, before + 1, "the service is back: load now");
  retry.ok();
  serviceBack();
  assert.equal(loads, before + 1, "nothing waits: nothing loads");
  retry.failed(down);
  retry.stop();
  t.mock.timers.tick(20000);
  assert.equal(loads, before + 1, "a stopped retry never loads");
});

test("the feed is stalled while the events service or its NATS is not serving", () => {
  const serving = { services: { events: { status: "SERVING", dependencies: { nats: "SERVING" } } } };
  assert.equal(feedTrouble(serving), "");
  assert.match(feedTrouble({ services: { events: { status: "NOT_SERVING" } } }), /events service is not serving/);
  assert.match(feedTrouble({ services: { events: { status: "SERVING", dependencies: { nats: "NOT_SERVING" } } } }), /NATS is not serving/);
  assert.equal(feedTrouble({}), "");
});
