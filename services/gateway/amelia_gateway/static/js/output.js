// A streaming text view that stays fast for runs of any length.
//
// - Tokens are queued and written once per animation frame, appended to a Text node
//   (`appendData`), never by rebuilding HTML.
// - The text is cut into pages of `pageChars` characters; at most `domPages` pages are in the
//   DOM at a time. Older pages live only as strings, reachable with "Earlier" / "Later", so a
//   100,000-token run keeps a DOM the size of a few pages.
// - The box has a fixed height: streaming never moves anything else on the page. It follows the
//   end while the reader is at the bottom; scrolled up, it stops following (no jump under the
//   reader) and offers "Jump to latest".

import { h } from "./dom.js";

export class OutputView {
  constructor({ label = "Output", pageChars = 16000, domPages = 3, placeholder = "" } = {}) {
    this.pageChars = pageChars;
    this.domPages = domPages;
    this.pages = [{ label: "", text: "" }];
    this.pending = [];
    this.pendingMarker = null;
    this.totalChars = 0;
    this.pieces = 0;
    this.first = 0; // first page index in the DOM
    this.last = 0; // last page index in the DOM
    this.follow = true;
    this.scheduled = false;
    this.placeholderText = placeholder;

    this.counter = h("span", { class: "count", "aria-hidden": "true" }, "");
    this.where = h("span", { class: "where" }, "");
    this.note = h("span", { class: "note", role: "status" }, "");
    this.earlier = h("button", { type: "button", class: "small", onclick: () => this.showEarlier(), disabled: true }, "Earlier");
    this.later = h("button", { type: "button", class: "small", onclick: () => this.showLater(), disabled: true }, "Later");
    this.latest = h("button", { type: "button", class: "small", onclick: () => this.jumpToLatest(), hidden: true }, "Jump to latest");
    this.download = h("button", { type: "button", class: "small ghost", onclick: () => this.save() }, "Download");
    this.pre = h("pre", {
      class: "output",
      role: "log",
      "aria-live": "polite",
      "aria-label": label,
      tabindex: "0",
    });
    this.placeholder = placeholder ? h("span", { class: "placeholder" }, placeholder) : null;
    this.element = h(
      "div",
      { class: "output-box" },
      h("div", { class: "output-toolbar" }, this.earlier, this.later, this.where, this.note,
        h("span", { class: "spacer" }), this.latest, this.counter, this.download),
      this.pre,
    );
    this.pageEls = new Map();
    this._renderWindow();
    // After the window's pages: drawing them replaces the box's children.
    if (this.placeholder) this.pre.prepend(this.placeholder);
    this.pre.addEventListener("scroll", () => this._onScroll(), { passive: true });
  }

  // -- writing --------------------------------------------------------------------------------

  append(text) {
    if (!text) return;
    this.pending.push(text);
    this.pieces += 1;
    this._schedule();
  }

  /** Start a new page headed by `label` (e.g. "attempt 2"), after what is queued. */
  marker(label) {
    this.pending.push({ marker: label });
    this._schedule();
  }

  /** Write everything queued now (tests, and before reading the text). */
  flush() {
    this.scheduled = false;
    if (!this.pending.length) return;
    const queued = this.pending;
    this.pending = [];
    if (this.placeholder) {
      this.placeholder.remove();
      this.placeholder = null;
    }
    this.element.classList.remove("settled-empty");
    const atBottom = this._atBottom();
    let text = "";
    for (const item of queued) {
      if (typeof item === "string") {
        text += item;
      } else {
        this._write(text);
        text = "";
        this._newPage(item.marker);
      }
    }
    this._write(text);
    this._updateToolbar();
    if (this.follow && atBottom) this.pre.scrollTop = this.pre.scrollHeight;
  }

  /** Nothing written and nothing queued. */
  isEmpty() {
    return this.totalChars === 0 && !this.pending.some((item) => typeof item === "string" && item);
  }

  /** What the empty box says while nothing is written yet (it waits for a worker, for tokens…). */
  say(text) {
    if (this.placeholder && this.placeholder.isConnected) this.placeholder.textContent = text;
  }

  /** The stream ended with nothing written: one line saying so replaces the tall empty box. */
  settleEmpty(text) {
    this.element.classList.add("settled-empty");
    if (!this.placeholder || !this.placeholder.isConnected) {
      this.placeholder = h("span", { class: "placeholder" }, "");
      this.pre.prepend(this.placeholder);
    }
    this.placeholder.textContent = text;
  }

  reset() {
    this.element.classList.remove("settled-empty");
    if (this.placeholder) this.placeholder.remove();
    this.placeholder = null;
    this.pages = [{ label: "", text: "" }];
    this.pending = [];
    this.totalChars = 0;
    this.pieces = 0;
    this.first = 0;
    this.last = 0;
    this.follow = true;
    this._renderWindow();
    if (this.placeholderText) {
      this.placeholder = h("span", { class: "placeholder" }, this.placeholderText);
      this.pre.prepend(this.placeholder);
    }
  }

  text() {
    this.flush();
    return this.pages.map((page) => page.text).join("");
  }

  // -- paging ---------------------------------------------------------------------------------

  showEarlier() {
    if (this.first === 0) return;
    this.follow = false;
    this.last = Math.max(this.first - 1 + Math.floor(this.domPages / 2), this.first);
    this.last = Math.min(this.last, this.pages.length - 1);
    this.first = Math.max(0, this.last - this.domPages + 1);
    this._renderWindow();
    this.pre.scrollTop = 0;
  }

  showLater() {
    if (this.last >= this.pages.length - 1) return;
    this.first = Math.min(this.last + 1 - Math.floor(this.domPages / 2), this.pages.length - 1);
    this.first = Math.max(0, this.first);
    this.last = Math.min(this.pages.length - 1, this.first + this.domPages - 1);
    this._renderWindow();
    this.pre.scrollTop = 0;
    if (this.last === this.pages.length - 1) this.follow = true;
  }

  jumpToLatest() {
    this.follow = true;
    this.last = this.pages.length - 1;
    this.first = Math.max(0, this.last - this.domPages + 1);
    this._renderWindow();
    this.pre.scrollTop = this.pre.scrollHeight;
  }

  save() {
    const blob = new Blob([this.text()], { type: "text/plain;charset=utf-8" });
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: "output.txt" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  /** A short line in the toolbar (replaying, reconnecting…); "" clears it. */
  status(text) {
    this.note.textContent = text || "";
  }

  get domNodeCount() {
    return this.pre.getElementsByTagName("*").length;
  }

  // -- internals ------------------------------------------------------------------------------

  _schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => this.flush());
  }

  _atBottom() {
    const pre = this.pre;
    return pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 24;
  }

  _onScroll() {
    const atBottom = this._atBottom();
    // Reading above the end: stop following, so no page is evicted from under the reader.
    if (!atBottom) this.follow = false;
    else if (this.last === this.pages.length - 1) this.follow = true;
    this._updateToolbar();
  }

  _write(text) {
    while (text) {
      const room = this.pageChars - this.pages[this.pages.length - 1].text.length;
      if (text.length <= room) {
        this._appendToPage(text);
        return;
      }
      // The text overflows this page: end the page at a line break (pages are blocks, so a
      // cut inside a line would show as a break): the last one that fits, else the next one
      // if it comes soon, else cut where the page is full.
      let cut = text.lastIndexOf("\n", room - 1);
      if (cut < 0) {
        const next = text.indexOf("\n", Math.max(room, 0));
        cut = next >= 0 && next - room < this.pageChars / 4 ? next : Math.max(room - 1, 0);
      }
      this._appendToPage(text.slice(0, cut + 1));
      text = text.slice(cut + 1);
      this._newPage("");
    }
  }

  _appendToPage(piece) {
    const index = this.pages.length - 1;
    this.pages[index].text += piece;
    this.totalChars += piece.length;
    const el = this.pageEls.get(index);
    if (el) el.textNode.appendData(piece);
  }

  _newPage(label) {
    this.pages.push({ label: label || "", text: "" });
    const index = this.pages.length - 1;
    if (this.follow || (this.last === index - 1 && this._atBottom())) {
      this.follow = true;
      this.last = index;
      if (this.last - this.first + 1 > this.domPages) {
        // Evict the oldest page from the DOM; its text stays in `pages`.
        const old = this.pageEls.get(this.first);
        if (old) old.el.remove();
        this.pageEls.delete(this.first);
        this.first += 1;
      }
      this.pre.append(this._pageElement(index));
    }
  }

  _pageElement(index) {
    const page = this.pages[index];
    const textNode = document.createTextNode(page.text);
    const el = h("span", { class: "page", dataset: { page: String(index + 1) } },
      page.label ? h("span", { class: "marker", role: "separator" }, page.label) : null,
      textNode);
    this.pageEls.set(index, { el, textNode });
    return el;
  }

  _renderWindow() {
    this.pageEls.clear();
    const nodes = [];
    for (let index = this.first; index <= this.last; index += 1) nodes.push(this._pageElement(index));
    this.pre.replaceChildren(...nodes);
    this._updateToolbar();
  }

  _updateToolbar() {
    const total = this.pages.length;
    this.earlier.disabled = this.first === 0;
    this.later.disabled = this.last >= total - 1;
    this.latest.hidden = this.follow || (this.last >= total - 1 && this._atBottom());
    // Only worth saying when some pages are out of the DOM.
    this.where.textContent = total > this.domPages
      ? `Pages ${this.first + 1}–${this.last + 1} of ${total}`
      : "";
    this.counter.textContent = `${this.pieces.toLocaleString()} tokens · ${this.totalChars.toLocaleString()} chars`;
  }
}
