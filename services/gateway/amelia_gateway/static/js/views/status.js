// Status: every service's health, NATS and PostgreSQL as the services see them, the local
// model server (or why none runs), and the gateway's own counters (GET /v1/status, polled while
// the screen is open).

import { errorNotice, h } from "../dom.js";
import { poll } from "../poll.js";

const POLL_MS = 4000;

const TONE = {
  SERVING: "ok",
  DEGRADED: "warn",
  NOT_SERVING: "bad",
  UNREACHABLE: "bad",
  STOPPING: "warn",
  UNKNOWN: "idle",
  SERVICE_UNKNOWN: "idle",
  UNAUTHENTICATED: "bad",
  STARTING: "warn",
  OFF: "idle",
};

const LABEL = {
  SERVING: "Serving",
  DEGRADED: "Degraded",
  NOT_SERVING: "Not serving",
  UNREACHABLE: "Unreachable",
  STOPPING: "Stopping",
  UNKNOWN: "Unknown",
  SERVICE_UNKNOWN: "Unknown",
  UNAUTHENTICATED: "No access",
  STARTING: "Starting",
  OFF: "Off",
};

function badge(status) {
  const value = String(status || "UNKNOWN");
  return h("span", { class: `badge ${TONE[value] || "idle"}`, "data-health": value }, LABEL[value] || value);
}

const GATEWAY_FIELDS = [
  ["connections", "WebSocket connections"],
  ["maxConnections", "Connection limit"],
  ["subscriptions", "Subscriptions"],
  ["topics", "Shared live streams"],
  ["upstreamStreams", "Upstream gRPC streams"],
  ["eventsSerialized", "Events forwarded"],
  ["queuedMessages", "Queued messages"],
  ["httpStreams", "NDJSON streams"],
  ["httpRequests", "HTTP requests"],
  ["wsClosedSlow", "Slow clients closed"],
];

export function mount(main, ctx) {
  // The overall badge lives in this slot; the screen never looks things up through `main`.
  const overall = h("span", { id: "overall-slot" }, h("span", { class: "badge idle", id: "overall" }, "…"));
  const updated = h("span", { class: "muted", "aria-live": "off" }, "");
  const body = h("div", { id: "status-body" }, h("p", { class: "empty" }, "Asking the gateway…"));
  main.append(
    h("div", { class: "row view-head" }, h("h1", {}, "Status"), overall, h("span", { class: "spacer" }), updated),
    body,
  );
  function failed(error) {
    const next = error.httpStatus === 401 ? badge("UNAUTHENTICATED") : badge("UNREACHABLE");
    next.id = "overall";
    overall.replaceChildren(next);
    body.replaceChildren(errorNotice(error));
  }

  function render(status) {
    const next = badge(status.status);
    next.id = "overall";
    overall.replaceChildren(next);
    const services = Object.entries(status.services || {});
    const cards = services.map(([name, report]) =>
      h("article", { class: "card service-card", "aria-label": `${name} service`, dataset: { service: name } },
        h("h3", {}, h("span", {}, name), badge(report.status)),
        h("dl", { class: "kv" },
          h("dt", {}, "Address"), h("dd", { class: "mono" }, report.address || ""),
          ...Object.entries(report.dependencies || {}).flatMap(([dep, value]) => [
            h("dt", {}, dep), h("dd", {}, badge(value)),
          ]),
        ),
      ));
    const infra = ["nats", "postgres"].map((name) =>
      h("article", { class: "card service-card", "aria-label": name, dataset: { service: name } },
        h("h3", {}, h("span", {}, name === "nats" ? "NATS JetStream" : "PostgreSQL"), badge(status[name])),
        h("p", { class: "hint" }, "As the services that use it report it."),
      ));
    const model = status.localModel || { status: "UNKNOWN" };
    const modelFields = [
      ["url", "Address", "mono"],
      ["model", "Model", ""],
      ["threads", "Threads", ""],
      ["slots", "Slots", ""],
      ["pid", "Pid", ""],
      ["log", "Log", "mono"],
    ].filter(([key]) => model[key] !== undefined && model[key] !== null && model[key] !== "");
    const localModel = h("article", { class: "card service-card", "aria-label": "local model", dataset: { service: "local-model" } },
      h("h3", {}, h("span", {}, "Local model"), badge(model.status)),
      model.why ? h("p", { class: "hint" }, model.why) : null,
      modelFields.length ? h("dl", { class: "kv" },
        ...modelFields.flatMap(([key, label, style]) => [
          h("dt", {}, label), h("dd", { class: style }, String(model[key])),
        ]),
      ) : null,
    );
    const gateway = status.gateway || {};
    const gatewayCard = h("article", { class: "card", dataset: { service: "gateway" } },
      h("h2", {}, "Gateway"),
      h("dl", { class: "kv" },
        ...GATEWAY_FIELDS.filter(([key]) => key in gateway).flatMap(([key, label]) => [
          h("dt", {}, label), h("dd", {}, String(gateway[key])),
        ]),
        h("dt", {}, "This page's socket"), h("dd", {}, ctx.socket.state === "open"
          ? `connected (client ${ctx.socket.clientId || "?"})` : ctx.socket.state),
      ));
    body.replaceChildren(
      h("p", {}, h("a", { href: "#/queue", id: "queue-link" }, "Workers and queue →"),
        " runs waiting, runs in flight with their worker and heartbeat."),
      h("h2", {}, "Services"),
      h("div", { class: "grid cards" }, ...cards, ...infra, localModel),
      gatewayCard,
      h("p", { class: "hint" }, `Refreshed every ${POLL_MS / 1000} seconds.`),
    );
  }

  return poll(POLL_MS, async (signal) => {
    const status = await ctx.api.status({ signal, timeout: 5 });
    if (signal.aborted) return;
    render(status);
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }, failed);
}
