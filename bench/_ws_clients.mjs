// The gateway bench's WebSocket subscribers in one Node.js process (bench/_node_clients.py
// drives it, and says why): Node's own WebSocket client (undici, `--experimental-websocket` on
// Node 20), every message parsed with JSON.parse, as a browser or a Node client would.
//
// It does what bench/_subscribers.py does, with the same commands, one JSON line each on stdin
// and one JSON line answered on stdout:
//   {"reset": {"name", "target", "measure", "skip"}} -> true
//   {"status": true}                                  -> whether every subscriber has its target
//   {"wait": seconds}                                 -> a report, once every subscriber has its
//                                                        target (or its socket closed)
//   {"close": true}                                   -> true, and the process ends
// Usage: node --experimental-websocket _ws_clients.mjs URL SUBJECT COUNT BATCH(0|1)

/* global process, WebSocket, setTimeout */
import readline from "node:readline";

const [url, subject, countText, batchText] = process.argv.slice(2);
const count = Number(countText);
const batch = batchText === "1";
// The wall clock, as the Python publisher's time.time() stamps each event: timeOrigin plus the
// monotonic performance.now() drifts from it while the system clock is slewed (measured here:
// 11 ms in 2 s), which made latencies negative.
const now = () => Date.now() / 1000;

class Receiver {
  constructor() {
    this.phase = { name: "", target: 0, measure: false, skip: 0 };
    this.count = 0;
    this.last = 0;
    this.gapped = false;
    this.closed = "";
    this.latencies = [];
    this.messages = 0;
    this.seen = new Uint8Array(0);
    this.sequence = 0;
  }

  arrived(sequence, data) {
    const phase = this.phase;
    if (data.p !== phase.name) return; // a straggler of an earlier phase
    const time = now();
    const number = data.i;
    if (sequence <= this.sequence || number >= this.seen.length || this.seen[number]) {
      this.gapped = true; // out of the log's order, repeated, or not of this phase
    } else {
      this.seen[number] = 1;
    }
    this.sequence = sequence;
    this.count += 1;
    this.last = time;
    if (phase.measure && number >= phase.skip) this.latencies.push(time - data.t);
  }

  done() {
    return this.closed !== "" || (this.phase.target > 0 && this.count >= this.phase.target);
  }

  reset(phase) {
    this.phase = phase;
    this.count = 0;
    this.gapped = false;
    this.latencies = [];
    this.messages = 0;
    this.seen = new Uint8Array(phase.target);
  }
}

function open(receiver) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let subscribed = false;
    ws.onmessage = (message) => {
      const parsed = JSON.parse(message.data);
      const kind = parsed.type;
      if (kind === "events") {
        receiver.messages += 1;
        for (const item of parsed.events) receiver.arrived(item.sequence, item.event.data);
      } else if (kind === "event") {
        receiver.messages += 1;
        receiver.arrived(parsed.sequence, parsed.event.data);
      } else if (kind === "ping") {
        ws.send('{"type":"pong"}'); // the gateway's heartbeat: it closes a silent client
      } else if (kind === "welcome") {
        const subscribe = { type: "subscribe", id: "b", filter: { subject } };
        if (batch) subscribe.batch = true;
        ws.send(JSON.stringify(subscribe));
      } else if (kind === "subscribed" && !subscribed) {
        subscribed = true;
        resolve(ws);
      } else if (kind === "error") {
        reject(new Error(JSON.stringify(parsed.error)));
      }
    };
    ws.onclose = (event) => {
      receiver.closed = `closed ${event.code}: ${event.reason}`;
      if (!subscribed) reject(new Error(receiver.closed));
    };
    ws.onerror = () => {
      if (!subscribed) reject(new Error(`could not open ${url}`));
    };
  });
}

const receivers = Array.from({ length: count }, () => new Receiver());
const sockets = [];
for (let start = 0; start < count; start += 25) {
  sockets.push(...(await Promise.all(receivers.slice(start, start + 25).map(open))));
}

const answer = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const allDone = () => receivers.every((r) => r.done());

async function wait(seconds) {
  const deadline = Date.now() + seconds * 1000;
  while (!allDone() && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return {
    done: allDone(),
    counts: receivers.map((r) => r.count),
    lasts: receivers.map((r) => r.last),
    latencies: receivers.flatMap((r) => r.latencies),
    gapped: receivers.filter((r) => r.gapped).length,
    closed: receivers.filter((r) => r.closed).map((r) => r.closed),
    messages: receivers.reduce((sum, r) => sum + r.messages, 0),
  };
}

answer(true); // every socket open and subscribed
for await (const line of readline.createInterface({ input: process.stdin })) {
  const command = JSON.parse(line);
  if (command.reset) {
    for (const r of receivers) r.reset(command.reset);
    answer(true);
  } else if (command.status) {
    answer(allDone());
  } else if (command.wait) {
    answer(await wait(command.wait));
  } else {
    break;
  }
}
for (const ws of sockets) ws.close();
answer(true);
process.exit(0);
