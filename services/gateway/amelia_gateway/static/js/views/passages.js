// Passages with their source: search hits (SearchHit, proto JSON) and the passages a run
// retrieved (`run.retrieval` event data, snake_case or camelCase), rendered the same way.

import { h, idOf } from "../dom.js";

function pick(hit, ...names) {
  for (const name of names) {
    if (hit[name] !== undefined && hit[name] !== null && hit[name] !== "") return hit[name];
  }
  return undefined;
}

/** The hits inside a `run.retrieval` event's data, whatever its exact shape. */
export function hitsOf(data) {
  if (!data || typeof data !== "object") return [];
  for (const key of ["hits", "passages", "results", "chunks"]) {
    if (Array.isArray(data[key])) return data[key];
  }
  return data.content || data.text ? [data] : [];
}

export function passage(hit) {
  const title = pick(hit, "documentTitle", "document_title", "title") || idOf(pick(hit, "document") || "") || "untitled";
  const document = pick(hit, "document", "document_name") || "";
  const headings = pick(hit, "headingPath", "heading_path") || [];
  const page = pick(hit, "page");
  const end = pick(hit, "endOffset", "end_offset");
  // Proto JSON may leave out a zero start offset.
  const start = pick(hit, "startOffset", "start_offset") ?? (end !== undefined ? 0 : undefined);
  const chunk = pick(hit, "chunkIndex", "chunk_index");
  const score = pick(hit, "score");
  const where = [];
  if (Array.isArray(headings) && headings.length) where.push(headings.join(" › "));
  if (page) where.push(`page ${page}`);
  if (start !== undefined && end !== undefined) where.push(`chars ${start}–${end}`);
  else if (chunk !== undefined) where.push(`chunk ${chunk}`);
  return h("li", { class: "passage", dataset: { document } },
    h("header", {},
      h("span", { class: "source" }, title),
      where.length ? h("span", { class: "where" }, where.join(" · ")) : null,
      score !== undefined ? h("span", { class: "score", title: "relevance score" }, `score ${Number(score).toFixed(3)}`) : null,
    ),
    h("blockquote", {}, String(pick(hit, "content", "text") || "")),
    document ? h("div", { class: "where mono" }, document) : null,
  );
}
