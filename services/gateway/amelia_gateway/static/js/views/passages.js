// Passages with their source: search hits (SearchHit, proto JSON) and the passages a run
// retrieved (`run.retrieval` event data, snake_case or camelCase), rendered the same way; and a
// document's chunks (ListChunks) with the part a search hit covers marked.

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

/** A hit's character span in its document: proto JSON leaves out zero offsets. */
export function spanOf(hit) {
  const end = Number(pick(hit, "endOffset", "end_offset") ?? 0);
  const start = Number(pick(hit, "startOffset", "start_offset") ?? 0);
  return { start, end };
}

/** `passage(hit, {onOpen})`: with `onOpen`, a button shows the hit among its document's chunks. */
export function passage(hit, { onOpen } = {}) {
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
    document ? h("div", { class: "where mono" }, document,
      onOpen ? h("button", { type: "button", class: "small ghost open-in-document", style: { marginLeft: "0.5rem" },
        "aria-label": `Show this passage in ${title}`, onclick: () => onOpen(hit) }, "Show in document") : null) : null,
  );
}

/**
 * One chunk of a document (ListChunks, proto JSON). `hits` are the search hits on the same
 * document: the chunk is marked as a hit when a hit's passage overlaps it, and the overlapping
 * text is wrapped in <mark>.
 */
export function chunkItem(chunk, hits = []) {
  const index = Number(chunk.chunkIndex || 0);
  const content = String(chunk.content || "");
  const start = Number(chunk.startOffset || 0);
  const end = Number(chunk.endOffset || start + content.length);
  const overlaps = hits.map(spanOf).filter((span) => span.start < end && start < span.end);
  const headings = chunk.headingPath || [];
  const where = [];
  if (headings.length) where.push(headings.join(" › "));
  if (chunk.page) where.push(`page ${chunk.page}`);
  where.push(`chars ${start}–${end}`);
  let text = [content];
  if (overlaps.length) {
    // One marked run from the first to the last covered character of this chunk.
    const from = Math.max(0, Math.min(...overlaps.map((s) => s.start)) - start);
    const to = Math.min(content.length, Math.max(...overlaps.map((s) => s.end)) - start);
    text = [content.slice(0, from), h("mark", {}, content.slice(from, to)), content.slice(to)];
  }
  const hit = overlaps.length > 0;
  return h("li", {
    class: "passage chunk",
    dataset: { chunkIndex: String(index), hit: String(hit) },
    style: hit ? { borderColor: "var(--info)", borderWidth: "2px", background: "var(--info-bg)" } : {},
  },
    h("header", {},
      h("span", { class: "source" }, `Chunk ${index}`),
      h("span", { class: "where" }, where.join(" · ")),
      hit ? h("span", { class: "badge info" }, "Search hit") : null,
      chunk.embedded ? null : h("span", { class: "where", title: "found by its words until its embedding is computed" }, "not embedded yet"),
    ),
    h("blockquote", {}, ...text),
  );
}
