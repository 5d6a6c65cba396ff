// Run statuses in one place: their words, tones, which are active or final, and what a run's
// outcome reads as (a plan a person rejected COMPLETES, with `output.status = "rejected"`: it
// shows as "Rejected", not as a green "Completed").

import { h } from "./dom.js";

export const STATUSES = [
  ["RUN_STATUS_QUEUED", "Queued", "idle"],
  ["RUN_STATUS_RUNNING", "Running", "info"],
  ["RUN_STATUS_PAUSED", "Paused", "warn"],
  ["RUN_STATUS_COMPLETED", "Completed", "ok"],
  ["RUN_STATUS_FAILED", "Failed", "bad"],
  ["RUN_STATUS_CANCELLED", "Cancelled", "bad"],
];
const BY_NAME = new Map(STATUSES.map(([name, label, tone]) => [name, { label, tone }]));

export const ACTIVE_STATUSES = new Set(["RUN_STATUS_QUEUED", "RUN_STATUS_RUNNING", "RUN_STATUS_PAUSED"]);
export const TERMINAL_STATUSES = new Set(["RUN_STATUS_COMPLETED", "RUN_STATUS_FAILED", "RUN_STATUS_CANCELLED"]);
/** The lifecycle event that ends a run -> the status it ends in. */
export const TERMINAL_EVENTS = {
  "run.completed": "RUN_STATUS_COMPLETED",
  "run.failed": "RUN_STATUS_FAILED",
  "run.cancelled": "RUN_STATUS_CANCELLED",
};

/** `FAILED` (the short name the API's filter takes) for `RUN_STATUS_FAILED`. */
export function shortStatus(status) {
  return String(status || "").replace(/^RUN_STATUS_/, "");
}

/** {label, tone} of a status; with the run's output, a completed rejection reads "Rejected". */
export function outcome(status, output) {
  if (status === "RUN_STATUS_COMPLETED" && output && output.status === "rejected") {
    return { label: "Rejected", tone: "warn" };
  }
  return BY_NAME.get(status) || { label: "Unknown", tone: "idle" };
}

export function statusBadge(status, output) {
  const { label, tone } = outcome(status, output);
  return h("span", { class: `badge ${tone}`, "data-status": status || "", "data-outcome": label.toLowerCase() }, label);
}

export function statusLabel(status, output) {
  return outcome(status, output).label;
}
