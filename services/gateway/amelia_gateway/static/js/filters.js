// The runs list's filters as the API's AIP-160 `filter` string (see ListRuns in agents.proto):
// pure functions, so they are tested without a browser.

const SINCE_MS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };

/** A string literal for the filter: double-quoted, `"` and `\` escaped. */
export function quoteFilter(text) {
  return `"${String(text).replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/**
 * {q, target, status: "FAILED,PAUSED", since: "24h", filter} -> one filter string ("" for none).
 * `now` (ms) is for tests.
 */
export function buildRunFilter({ q, target, status, since, filter } = {}, now = Date.now()) {
  const parts = [];
  if (q) parts.push(quoteFilter(q));
  if (target) {
    const field = target.startsWith("agents/") ? "agent" : "workflow";
    parts.push(`${field} = ${quoteFilter(target)}`);
  }
  const statuses = String(status || "").split(",").filter(Boolean);
  if (statuses.length === 1) parts.push(`status = ${statuses[0]}`);
  if (statuses.length > 1) parts.push(`(${statuses.map((s) => `status = ${s}`).join(" OR ")})`);
  if (SINCE_MS[since]) parts.push(`create_time > ${quoteFilter(new Date(now - SINCE_MS[since]).toISOString())}`);
  if (filter) parts.push(`(${filter})`);
  return parts.join(" AND ");
}

/** What a person pastes as a thread (`threads/<id>`, the bare id, a URL ending in it) -> `threads/<id>`. */
export function threadName(text) {
  const value = String(text || "").trim();
  const match = /([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\/?$/i.exec(value);
  if (match) return `threads/${match[1].toLowerCase()}`;
  return value.startsWith("threads/") ? value : `threads/${value}`;
}

/** The runs list's orders: the URL's `order` value -> [label, the API's `order_by`]. */
export const RUN_ORDERS = {
  "": ["Newest first", "create_time desc"],
  oldest: ["Oldest first", "create_time"],
  longest: ["Longest first", "duration desc"],
  shortest: ["Shortest first", "duration"],
  "most-tokens": ["Most tokens first", "usage.total_tokens desc"],
  "fewest-tokens": ["Fewest tokens first", "usage.total_tokens"],
};

/** The orders a sortable column toggles between: [descending, ascending]. */
export const SORT_COLUMNS = {
  created: ["", "oldest"],
  duration: ["longest", "shortest"],
  tokens: ["most-tokens", "fewest-tokens"],
};

/** The order after clicking `column` while the list is in `current`: descending first, then flips. */
export function nextOrder(column, current) {
  const [down, up] = SORT_COLUMNS[column];
  return current === down ? up : down;
}

/** How `column` is sorted under `order`: "descending", "ascending" or "none" (for aria-sort). */
export function sortState(column, order) {
  const [down, up] = SORT_COLUMNS[column];
  if (order === down) return "descending";
  return order === up ? "ascending" : "none";
}
