// The inbox in the top bar, on every screen: how many runs are PAUSED, waiting for a person's
// answer, with a link to them (to the run itself when there is one). Kept current by the run
// lifecycle events on the page's WebSocket, and loaded again by itself after an outage.

import { debounce, idOf } from "./dom.js";
import { retryOnOutage } from "./health.js";

const PAGE = 50;
const TYPES = ["run.interrupted", "run.resumed", "run.completed", "run.failed", "run.cancelled"];

export function startInbox(ctx, link) {
  const count = link.querySelector(".inbox-count");
  const text = link.querySelector(".inbox-text");

  async function load() {
    try {
      const { runs = [], nextPageToken } = await ctx.api.listRuns({ filter: "status = PAUSED", pageSize: PAGE });
      const n = runs.length;
      link.hidden = n === 0;
      count.textContent = nextPageToken ? `${n}+` : String(n);
      text.textContent = n === 1 ? "run waits for an answer" : "runs wait for an answer";
      link.href = n === 1 ? `#/runs/${idOf(runs[0].name)}` : "#/runs?status=PAUSED";
      link.dataset.count = String(n);
      retry.ok();
    } catch (error) {
      // Not important enough to show an error in the top bar; the count shown stays, and an
      // outage (the agents service restarting) is retried until it answers: the next event may
      // be long to come (a paused run's count was lost until one).
      retry.failed(error);
    }
  }
  const retry = retryOnOutage(load);

  const refresh = debounce(load, 300);
  ctx.socket.subscribe({ filter: { types: TYPES, subject: "runs/*" }, since: "now" },
    { onEvent: refresh, onSubscribed: refresh });
  window.addEventListener("amelia:token", refresh);
}
