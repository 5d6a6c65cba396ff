// Documents: upload files (drag and drop or a file picker; multipart with per-file progress),
// list documents with their indexing state, open one to read its chunks (the latest search's
// hits marked), delete them, and search them, showing each passage with its source. The list
// refreshes itself on `document.*` events.

import { request, uploadDocument } from "../api.js";
import { debounce, errorNotice, formatBytes, formatTime, h, idOf, loads } from "../dom.js";
import { chunkItem, passage } from "./passages.js";

const PARALLEL_UPLOADS = 2;
const PAGE_SIZE = 50;
const CHUNK_PAGE_SIZE = 100;
// Pages read at most to reach a hit's chunk when a passage is shown in its document.
const MAX_CHUNK_PAGES = 20;

const STATE = {
  DOCUMENT_STATE_INDEXING: { label: "Indexing", tone: "info" },
  DOCUMENT_STATE_READY: { label: "Ready", tone: "ok" },
  DOCUMENT_STATE_FAILED: { label: "Failed", tone: "bad" },
};

/** The state, with how far indexing has got (chunks embedded of all) while it runs: the same
 * "Indexing 192/750" as the upload panel, from the latest `document.progress` when it is ahead
 * of the list's last read (`latest`: {done, total}); the list said "17%" beside "192/750". */
function stateBadge(doc, latest = null) {
  const state = STATE[doc.state] || { label: "Stored", tone: "" };
  let total = Number(doc.chunkCount || 0);
  let embedded = Number(doc.embeddedChunkCount || 0);
  const indexing = doc.state === "DOCUMENT_STATE_INDEXING";
  if (indexing && latest && latest.done > embedded && latest.total > 0) {
    embedded = latest.done;
    total = latest.total;
  }
  const label = indexing ? `${state.label} ${embedded}/${total}` : state.label;
  const progress = `${embedded} of ${total} chunks embedded`;
  const title = doc.indexError ? `Indexing failed at ${embedded}/${total}: ${doc.indexError}` : indexing ? progress : null;
  return h("span", { class: `badge ${state.tone}`, dataset: { state: doc.state || "", embedded: String(embedded) }, title }, label);
}

/** A source URI as a person reads it: `file:///docs/%D8%B9…` decoded (an Arabic file name was
 * unreadable); the URI as sent stays in the title. */
export function readableUri(uri) {
  try {
    return decodeURI(uri);
  } catch {
    return uri;
  }
}

/** A title made from a URI's file name keeps its percent-encoding (`%D8%B9%D8%B1….txt`, from
 * the rag service): shown decoded when it decodes. */
export function readableTitle(title) {
  if (!/%[0-9A-Fa-f]{2}/.test(title)) return title;
  try {
    return decodeURIComponent(title);
  } catch {
    return title;
  }
}

const listChunks = (name, pageToken) =>
  request("GET", `/v1/documents/${encodeURIComponent(idOf(name))}/chunks`, { query: { pageSize: CHUNK_PAGE_SIZE, pageToken } });

const TYPE_LABEL = {
  DOCUMENT_TYPE_PDF: "PDF",
  DOCUMENT_TYPE_MARKDOWN: "Markdown",
  DOCUMENT_TYPE_TEXT: "Text",
  DOCUMENT_TYPE_HTML: "HTML",
  DOCUMENT_TYPE_CODE: "Code",
  DOCUMENT_TYPE_WEB_PAGE: "Web page",
};

// Uploads outlive the screen: switching to another screen and back shows them still going.
const uploads = h("ul", { class: "uploads", id: "uploads", "aria-label": "Uploads" });
const waiting = [];
let active = 0;
let current = null; // {ctx, loadDocuments} of the mounted screen

export function mount(main, ctx) {
  // -- upload -------------------------------------------------------------------------------
  const picker = h("input", { type: "file", id: "file-input", multiple: true, class: "visually-hidden", tabindex: "-1" });
  const choose = h("button", { type: "button", id: "choose-files", class: "primary" }, "Choose files…");
  const zone = h("div", { class: "dropzone", id: "dropzone" },
    h("p", {}, h("strong", {}, "Drop files here"), " — Markdown, text, HTML, code or PDF"),
    choose, picker);

  // -- list ---------------------------------------------------------------------------------
  const docsBody = h("tbody", {});
  const docsError = h("div", { "aria-live": "polite" });
  const more = h("button", { type: "button", hidden: true }, "Load more");

  // -- search -------------------------------------------------------------------------------
  const query = h("input", { type: "search", id: "search-query", required: true, placeholder: "What are you looking for?" });
  const mode = h("select", { id: "search-mode" },
    h("option", { value: "SEARCH_MODE_HYBRID" }, "Hybrid"),
    h("option", { value: "SEARCH_MODE_VECTOR" }, "Vector"),
    h("option", { value: "SEARCH_MODE_KEYWORD" }, "Keyword"));
  // Empty: the service's default (RAG_TOP_K), the same as the API, the CLI and the agents get.
  const topK = h("input", { type: "number", id: "search-topk", min: "1", max: "100", placeholder: "default",
    "aria-label": "Number of passages (empty: the service's default)" });
  const results = h("ol", { class: "passages", id: "search-results", "aria-live": "polite" });
  const searchInfo = h("p", { class: "muted", id: "search-info", "aria-live": "polite" });
  const searchForm = h("form", { id: "search-form", role: "search" },
    h("label", { for: "search-query" }, "Search"),
    h("div", { class: "row search-row" },
      h("div", { class: "grow" }, query),
      h("div", { class: "search-mode" }, mode),
      h("div", { class: "search-topk" }, topK),
      h("button", { type: "submit", class: "primary" }, "Search")),
    h("span", { class: "field-hint" }, "Mode and number of passages (empty: the service's default)."));

  // -- one document's chunks ----------------------------------------------------------------
  const chunksTitle = h("h2", { id: "chunks-title" }, "Chunks");
  const chunksInfo = h("p", { class: "muted", id: "chunks-info", "aria-live": "polite" });
  const chunksList = h("ol", { class: "passages", id: "chunks-list" });
  const moreChunks = h("button", { type: "button", id: "more-chunks", hidden: true }, "Load more chunks");
  const closeChunks = h("button", { type: "button", class: "small ghost", id: "close-chunks" }, "Close");
  const chunksPanel = h("section", { class: "card", id: "chunks-panel", hidden: true, "aria-labelledby": "chunks-title" },
    h("div", { class: "row" }, h("div", { class: "grow" }, chunksTitle), closeChunks),
    chunksInfo, chunksList, h("div", { class: "pager" }, moreChunks));

  // Search (and a document's chunks) beside the upload card, the list under both at full
  // width; on a phone, one column: search, upload, then the list as cards (app.css).
  main.append(
    h("h1", {}, "Documents"),
    h("div", { class: "split documents-top" },
      h("div", {},
        h("section", { class: "card", "aria-labelledby": "search-title" },
          h("h2", { id: "search-title" }, "Search your documents"), searchForm, searchInfo, results),
        chunksPanel),
      h("section", { class: "card", "aria-labelledby": "upload-title" },
        h("h2", { id: "upload-title" }, "Upload"), zone, uploads)),
    h("section", { class: "card", "aria-labelledby": "docs-title" },
          h("h2", { id: "docs-title" }, "Documents"), docsError,
          h("div", { class: "table-wrap" }, h("table", { id: "docs-table" },
            h("thead", {}, h("tr", {},
              h("th", { scope: "col" }, "Title"), h("th", { scope: "col", class: "wide-only" }, "Type"),
              h("th", { scope: "col" }, "State"),
              h("th", { scope: "col", class: "num" }, "Chunks"), h("th", { scope: "col", class: "num wide-only" }, "Size"),
              h("th", { scope: "col", class: "wide-only" }, "Updated"), h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")))),
            docsBody)),
          h("div", { class: "pager" }, more)),
  );

  let stopped = false;
  const documentLoads = loads();
  let nextToken = "";
  let lastHits = [];
  let lastQuery = ""; // the latest search's hits, marked in an open document's chunks
  let opened = null; // {doc, chunks, token} of the document whose chunks are shown
  const progressOf = new Map(); // document name -> its latest document.progress {done, total}

  async function loadDocuments(append = false) {
    const latest = documentLoads();
    try {
      const response = await ctx.api.listDocuments({ pageSize: PAGE_SIZE, pageToken: append ? nextToken : "" });
      if (stopped || !latest()) return;
      docsError.replaceChildren();
      const docs = response.documents || [];
      nextToken = response.nextPageToken || "";
      more.hidden = !nextToken;
      const rows = docs.map((doc) => h("tr", { dataset: { document: doc.name } },
        h("td", { class: "break doc-title" }, h("span", { class: "title", dir: "auto" }, readableTitle(doc.title || idOf(doc.name))),
          doc.sourceUri ? h("div", { class: "muted mono truncate", dir: "auto", title: doc.sourceUri }, readableUri(doc.sourceUri)) : null),
        h("td", { class: "wide-only" }, TYPE_LABEL[doc.type] || ""),
        h("td", {}, stateBadge(doc, progressOf.get(doc.name))),
        h("td", { class: "num chunks", dataset: { count: String(doc.chunkCount || 0) } }, String(doc.chunkCount || 0)),
        h("td", { class: "num wide-only" }, formatBytes(doc.sizeBytes)),
        h("td", { class: "wide-only" }, formatTime(doc.updateTime || doc.createTime)),
        h("td", { class: "actions" }, h("div", { class: "row", style: { flexWrap: "nowrap" } },
          h("button", { type: "button", class: "small ghost open-document", "aria-label": `Open ${doc.title || doc.name}`,
            onclick: () => openDocument(doc) }, "Open"),
          h("button", { type: "button", class: "small ghost", "aria-label": `Delete ${doc.title || doc.name}`,
            onclick: () => remove(doc) }, "Delete"))),
      ));
      const shown = opened && docs.find((doc) => doc.name === opened.doc.name);
      if (shown) {
        opened.doc = shown;
        showChunksInfo();
      }
      if (append) docsBody.append(...rows);
      else if (rows.length) docsBody.replaceChildren(...rows);
      else docsBody.replaceChildren(h("tr", {}, h("td", { colspan: "7", class: "empty" }, "No documents yet: upload some.")));
    } catch (error) {
      if (!stopped && latest()) docsError.replaceChildren(errorNotice(error));
    }
  }

  function hitsOn(name) {
    return lastHits.filter((hit) => hit.document === name);
  }

  function showChunksInfo() {
    const { doc, chunks, token } = opened;
    const total = Number(doc.chunkCount || 0);
    const marked = chunks.filter((c) => c.dataset.hit === "true").length;
    chunksInfo.replaceChildren(stateBadge(doc, progressOf.get(doc.name)), " ",
      `${total} chunk${total === 1 ? "" : "s"}${token ? `, ${chunks.length} shown` : ""}`,
      marked ? ` · ${marked} marked by the search “${lastQuery}”` : "");
  }

  /** The next page of the open document's chunks; false when another was opened meanwhile. */
  async function loadChunks(view) {
    const page = await listChunks(view.doc.name, view.token);
    if (stopped || opened !== view) return false;
    const items = (page.chunks || []).map((chunk) => chunkItem(chunk, hitsOn(view.doc.name)));
    chunksList.append(...items);
    view.chunks.push(...items);
    view.token = page.nextPageToken || "";
    moreChunks.hidden = !view.token;
    showChunksInfo();
    return true;
  }

  /** Shows a document's chunks; with `hit`, reads on until that hit's chunk and scrolls to it. */
  async function openDocument(doc, hit = null, reveal = true) {
    const view = { doc, chunks: [], token: "" };
    opened = view;
    chunksPanel.hidden = false;
    chunksPanel.dataset.document = doc.name;
    chunksTitle.textContent = readableTitle(doc.title || idOf(doc.name));
    chunksList.replaceChildren();
    moreChunks.hidden = true;
    chunksInfo.textContent = "Loading chunks…";
    try {
      // Its current state and chunk count (a hit carries neither).
      const got = await request("GET", `/v1/documents/${encodeURIComponent(idOf(doc.name))}`);
      if (stopped || opened !== view) return;
      view.doc = got.document || doc;
      chunksTitle.textContent = readableTitle(view.doc.title || idOf(doc.name));
      const wanted = hit ? Number(hit.chunkIndex || 0) : -1;
      for (let pages = 0; pages < MAX_CHUNK_PAGES; pages += 1) {
        if (!(await loadChunks(view))) return;
        const last = view.chunks.at(-1);
        if (!view.token || !last || Number(last.dataset.chunkIndex) >= wanted) break;
      }
      if (!reveal) return;
      const target = chunksList.querySelector('[data-hit="true"]') || chunksPanel;
      target.style.scrollMarginTop = "7rem"; // below the sticky top bar, which wraps on a phone
      target.scrollIntoView({ block: "start" });
      ctx.announce(`Showing the chunks of ${view.doc.title || doc.name}`);
    } catch (error) {
      if (!stopped) chunksInfo.replaceChildren(errorNotice(error));
    }
  }

  function remark() {
    if (!opened) return;
    // Re-render the loaded chunks with the new hits (same data, new marks).
    openDocument(opened.doc, null, false);
  }

  async function remove(doc) {
    if (!window.confirm(`Delete “${doc.title || doc.name}” and its passages?`)) return;
    try {
      await ctx.api.deleteDocument(doc.name);
      ctx.announce(`Deleted ${doc.title || doc.name}`);
      loadDocuments();
    } catch (error) {
      docsError.replaceChildren(errorNotice(error));
    }
  }

  // -- uploading ----------------------------------------------------------------------------
  function enqueue(files) {
    for (const file of files) {
      const bar = h("progress", { max: "100", value: "0", "aria-label": `Upload of ${file.name}` });
      const stateText = h("span", { class: "state" }, "Waiting");
      const item = h("li", { class: "upload", dataset: { state: "waiting", file: file.name } },
        h("span", { class: "name", title: file.name }, file.name, h("span", { class: "muted" }, ` · ${formatBytes(file.size)}`)),
        bar, stateText);
      uploads.prepend(item);
      waiting.push({ file, item, bar, stateText, ctx });
    }
    pump();
  }

  /** Follows a stored document's indexing until `document.indexed` or `document.failed`. */
  function indexing(ctx, name, since, bar, stateText, item) {
    item.dataset.state = "indexing";
    bar.removeAttribute("value"); // indeterminate until the first progress event
    stateText.textContent = "Indexing…";
    return new Promise((resolve) => {
      const types = ["document.progress", "document.indexed", "document.failed"];
      const subscription = ctx.socket.subscribe({ filter: { types, subject: name }, since }, {
        onEvent(event) {
          const data = event.data || {};
          if (event.type === "document.progress" && Number(data.total) > 0) {
            bar.max = Number(data.total);
            bar.value = Number(data.done || 0);
            stateText.textContent = `Indexing ${data.done}/${data.total}`;
            item.dataset.done = String(data.done);
            item.dataset.total = String(data.total);
          } else if (event.type !== "document.progress") {
            subscription.close();
            resolve(event.type === "document.indexed" ? { chunks: Number(data.chunk_count || 0) } : { error: data.error || "unknown" });
          }
        },
      });
    });
  }

  function pump() {
    while (active < PARALLEL_UPLOADS && waiting.length) {
      const job = waiting.shift();
      active += 1;
      send(job).finally(() => {
        active -= 1;
        pump();
      });
    }
  }

  async function send({ file, item, bar, stateText, ctx }) {
    const startedAt = new Date(Date.now() - 1000).toISOString();
    item.dataset.state = "sending";
    stateText.textContent = "0%";
    try {
      const response = await uploadDocument(file, {
        onProgress(sent, total) {
          const percent = total ? Math.floor((sent / total) * 100) : 0;
          bar.value = percent;
          stateText.textContent = percent >= 100 ? "Stored…" : `${percent}%`;
        },
      });
      const doc = response.document || {};
      item.dataset.document = doc.name || "";
      if (current) current.loadDocuments();
      // Stored, not indexed: its passages are embedded in the background (the document's
      // state says so), so follow `document.progress` until it is ready or failed. A document
      // answered ready has nothing to embed: the same content, unchanged, or refreshed (its
      // metadata replaced; no `document.indexed` follows, so waiting for one never ended).
      const ready = doc.state === "DOCUMENT_STATE_READY";
      const unchangedReady = response.unchanged && ready;
      if (doc.state === "DOCUMENT_STATE_FAILED") throw new Error(`Indexing failed: ${doc.indexError || "unknown"}`);
      if (!ready) ctx.announce(`${file.name} stored; indexing`);
      const outcome = ready ? { chunks: Number(doc.chunkCount || 0) } : await indexing(ctx, doc.name, startedAt, bar, stateText, item);
      bar.max = 100;
      bar.value = 100;
      if (outcome.error) throw new Error(`Indexing failed: ${outcome.error}`);
      item.dataset.state = "done";
      const chunks = outcome.chunks;
      stateText.textContent = unchangedReady ? "Unchanged" : ready ? "Refreshed" : `${chunks} chunk${chunks === 1 ? "" : "s"}`;
      ctx.announce(`${file.name} ${unchangedReady ? "is unchanged and ready" : ready ? "is refreshed and ready" : "is ready"}`);
      if (current) current.loadDocuments();
    } catch (error) {
      item.dataset.state = "error";
      stateText.textContent = "Failed";
      item.append(h("span", { class: "error-text", role: "alert" }, error.message || String(error)));
    }
  }

  choose.addEventListener("click", () => picker.click());
  picker.addEventListener("change", () => {
    enqueue([...picker.files]);
    picker.value = "";
  });
  // The whole zone accepts drops; counting enter/leave avoids flicker over child elements.
  let depth = 0;
  zone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    zone.classList.add("over");
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("over");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    zone.classList.remove("over");
    const files = event.dataTransfer ? [...event.dataTransfer.files] : [];
    if (files.length) enqueue(files);
  });

  // -- searching ----------------------------------------------------------------------------
  searchForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = query.value.trim();
    if (!text) return;
    searchInfo.textContent = "Searching…";
    const started = performance.now();
    try {
      const body = { query: text, mode: mode.value };
      if (topK.value) body.topK = Number(topK.value);
      const response = await ctx.api.search(body);
      const hits = response.hits || [];
      lastHits = hits;
      lastQuery = text;
      const ms = Math.round(performance.now() - started);
      searchInfo.textContent = hits.length
        ? `${hits.length} passage${hits.length === 1 ? "" : "s"} (${ms} ms)`
        : "No passage matches. Try other words, or the keyword mode.";
      results.replaceChildren(...hits.map((hit) => passage(hit, { onOpen: showHit })));
      remark();
    } catch (error) {
      searchInfo.textContent = "";
      results.replaceChildren(h("li", {}, errorNotice(error)));
    }
  });

  function showHit(hit) {
    openDocument({ name: hit.document, title: hit.documentTitle }, hit);
  }

  more.addEventListener("click", () => loadDocuments(true));
  moreChunks.addEventListener("click", async () => {
    try {
      if (opened) await loadChunks(opened);
    } catch (error) {
      chunksInfo.replaceChildren(errorNotice(error));
    }
  });
  closeChunks.addEventListener("click", () => {
    opened = null;
    chunksPanel.hidden = true;
    chunksList.replaceChildren();
  });
  const refresh = debounce(() => loadDocuments(), 400);
  const subscription = ctx.socket.subscribe(
    { filter: { types: ["document.*"] }, since: "now" },
    // onSubscribed: also after a reconnect, when something may have changed meanwhile.
    {
      onEvent(event) {
        const data = event.data || {};
        if (event.type === "document.progress") progressOf.set(event.subject, { done: Number(data.done || 0), total: Number(data.total || 0) });
        else progressOf.delete(event.subject);
        refresh();
      },
      onSubscribed: refresh,
    },
  );
  loadDocuments();
  current = { ctx, loadDocuments };

  return () => {
    stopped = true;
    current = null;
    refresh.cancel();
    subscription.close();
  };
}
