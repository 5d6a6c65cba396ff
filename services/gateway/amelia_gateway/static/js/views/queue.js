// Workers and queue (Temporal's task queue and pending activities): the queue's depth and the
// oldest queued run's wait, the runs in flight with their worker, heartbeat and lease, and the
// worker processes executing them (GET /v1/queue, polled while the screen is open).

import { request } from "../api.js";
import { errorNotice, formatDuration, formatTime, h, idOf, shortId } from "../dom.js";
import { poll } from "../poll.js";

const POLL_MS = 3000;

/** Seconds between two proto JSON timestamps (both from the server's clock). */
function secondsBetween(later, earlier) {
  return (new Date(later).getTime() - new Date(earlier).getTime()) / 1000;
}

function badge(tone, text) {
  return h("span", { class: `badge ${tone}` }, text);
}

function tile(label, value, hint, key) {
  return h("div", { class: "card queue-tile", dataset: { queue: key } },
    h("div", { class: "muted" }, label),
    h("div", { class: "queue-figure" }, value),
    hint ? h("div", { class: "hint" }, hint) : null);
}

function leaseRow(lease, readTime) {
  const held = Boolean(lease.held);
  const beat = lease.lastHeartbeatTime;
  return h("tr", { dataset: { run: idOf(lease.run), held: String(held) } },
    h("td", {}, h("a", { href: `#/runs/${idOf(lease.run)}`, class: "mono", title: lease.run }, shortId(lease.run))),
    h("td", {}, idOf(lease.target || "")),
    h("td", { class: "mono" }, lease.worker || ""),
    h("td", {}, String(lease.attempt || 0)),
    h("td", {}, formatTime(lease.startTime)),
    h("td", {}, held ? badge("ok", "Held") : badge("bad", "No worker")),
    h("td", {}, beat ? `${formatDuration(Math.max(secondsBetween(readTime, beat), 0))} ago` : "—"),
    h("td", {}, lease.leaseExpireTime ? formatTime(lease.leaseExpireTime) : held ? "" : "after the ack wait"),
  );
}

function workerRow(worker, readTime) {
  const beat = worker.lastHeartbeatTime;
  return h("tr", { dataset: { worker: worker.name, healthy: String(Boolean(worker.healthy)) } },
    h("td", { class: "mono" }, worker.name),
    h("td", {}, String(worker.busyLoops || 0)),
    h("td", {}, beat ? `${formatDuration(Math.max(secondsBetween(readTime, beat), 0))} ago` : "—"),
    h("td", {}, worker.healthy ? badge("ok", "Working") : badge("bad", "Stopped")),
  );
}

function table(id, caption, heads, rows, empty) {
  if (!rows.length) return h("p", { class: "empty", id }, empty);
  return h("div", { class: "table-wrap" },
    h("table", { id },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, ...heads.map((text) => h("th", { scope: "col" }, text)))),
      h("tbody", {}, ...rows)));
}

export function render(queue) {
  const readTime = queue.readTime;
  const waiting = Number(queue.waitingJobs || 0);
  const oldest = queue.oldestQueuedAge ? formatDuration(queue.oldestQueuedAge) : "—";
  const leases = queue.inFlight || [];
  const workers = queue.workers || [];
  const polling = Number(queue.pollingWorkers || 0);
  return [
    h("div", { class: "grid queue-tiles" },
      tile("Waiting jobs", String(waiting), `${Number(queue.queuedRuns || 0)} runs queued, ${Number(queue.waitingBehindRuns || 0)} waiting behind a thread's run`, "waiting"),
      tile("Oldest queued", oldest, queue.oldestQueuedTime ? `since ${formatTime(queue.oldestQueuedTime)}` : "none waiting", "oldest"),
      tile("In flight", String(Number(queue.inFlightJobs || 0)), `${Number(queue.redeliveredJobs || 0)} redelivered`, "in-flight"),
      tile("Idle workers", String(polling), "worker loops polling for a job", "polling")),
    h("article", { class: "card" },
      h("h2", {}, "Runs in flight"),
      table("queue-runs", "Runs a worker is executing",
        ["Run", "Target", "Worker", "Attempt", "Started", "Lease", "Heartbeat", "Lease ends"],
        leases.map((lease) => leaseRow(lease, readTime)), "No run is executing."),
      h("p", { class: "hint" },
        `A worker heartbeats about every second while it holds a run. A run no worker holds goes to another worker ${formatDuration(queue.ackWait)} after its last heartbeat (the ack wait).`)),
    h("article", { class: "card" },
      h("h2", {}, "Workers"),
      table("queue-workers", "Worker processes executing runs",
        ["Worker", "Busy loops", "Last heartbeat", "State"],
        workers.map((worker) => workerRow(worker, readTime)),
        polling ? `No worker is executing a run; ${polling} idle worker loops are polling.` : "No worker is executing a run."),
      h("p", { class: "hint" },
        "Workers are named by the runs they execute; idle ones are counted above (they do not say their name to the queue).")),
  ];
}

export function mount(main) {
  const updated = h("span", { class: "muted", "aria-live": "off" }, "");
  const name = h("span", { class: "muted mono" }, "");
  const body = h("div", { id: "queue-body" }, h("p", { class: "empty" }, "Asking the gateway…"));
  main.append(
    h("div", { class: "row view-head" }, h("h1", {}, "Workers and queue"), name, h("span", { class: "spacer" }), updated),
    body,
  );
  return poll(POLL_MS, async (signal) => {
    const queue = await request("GET", "/v1/queue", { signal, timeout: 5 });
    if (signal.aborted) return;
    name.textContent = queue.queue ? `queue ${queue.queue}` : "";
    body.replaceChildren(...render(queue));
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }, (error) => body.replaceChildren(errorNotice(error)));
}
