// A `develop` run's change: its branch's diff against its base (GET /v1/runs/{run}/diff), per
// file with its counts and a unified patch whose lines are coloured by kind (the +/- stays in
// the text: colour never carries the meaning alone), and what to do with it.
//
// - Paused on the final question (node `approve_diff`): the diff sits in the approval card, and
//   Land / Discard / Keep answer the question (`{"decision": "land", "into": …}`): the run
//   itself lands or discards, as the workflow says.
// - Ended with its branch still there (`kept`, `conflict`, `not_landed`; or failed / cancelled
//   with its branch listed by GET /v1/repositories): Land (POST
//   /v1/runs/{run}:land into the branch typed, default the recorded target) and Discard (POST
//   :discard). A conflict comes back as FAILED_PRECONDITION naming the files: shown as it is,
//   nothing moved. Once settled, `onSettled()` lets the run page show the `git.landed` /
//   `git.discarded` event that followed.

import { request } from "../api.js";
import { errorNotice, h, idOf } from "../dom.js";

// The keys of the final question this view shows (the run page leaves them out of its details).
export const DIFF_QUESTION_KEYS = new Set(["diff", "repository", "branch", "into"]);
// Run outputs whose branch is still there to land or discard.
const OPEN_BRANCH = new Set(["kept", "conflict", "not_landed"]);
// Workflows that leave a branch `amelia/<run>`: a failed or cancelled one may have left it.
const CODING_WORKFLOWS = new Set(["develop", "code"]);
const CHANGE = {
  FILE_CHANGE_ADDED: "added", FILE_CHANGE_MODIFIED: "modified", FILE_CHANGE_DELETED: "deleted",
  FILE_CHANGE_RENAMED: "renamed",
};

/** The kind of one patch line, for its colour. */
function lineKind(line) {
  if (line.startsWith("@@")) return "hunk";
  if (/^(diff --git|index |--- |\+\+\+ |new file|deleted file|similarity|rename |old mode|new mode|Binary)/.test(line)) {
    return "meta";
  }
  if (line.startsWith("+")) return "add";
  if (line.startsWith("-")) return "del";
  if (line.startsWith("\\")) return "meta";
  return "ctx";
}

/** A file's unified patch as coloured lines. */
export function patchView(patch) {
  const lines = String(patch || "").replace(/\n$/, "").split("\n");
  return h("pre", { class: "diff-patch", tabindex: "0" },
    ...lines.map((line) => h("span", { class: `dl ${lineKind(line)}` }, `${line}\n`)));
}

function counts(additions, deletions) {
  return h("span", { class: "diff-counts" },
    h("span", { class: "diff-add" }, `+${additions || 0}`), " ",
    h("span", { class: "diff-del" }, `−${deletions || 0}`));
}

function fileView(file) {
  const change = CHANGE[file.change] || "changed";
  const label = file.oldPath ? `${file.oldPath} → ${file.path}` : file.path;
  return h("details", { class: "diff-file", open: true, dataset: { path: file.path, change } },
    h("summary", {},
      h("span", { class: "mono diff-path" }, label),
      h("span", { class: `diff-change ${change}` }, change),
      file.binary ? h("span", { class: "muted" }, "binary") : counts(file.additions, file.deletions)),
    file.binary ? null : patchView(file.patch),
    file.truncated ? h("p", { class: "muted" }, "The patch was cut to fit; `amelia runs diff` shows it whole.") : null);
}

export class DiffView {
  /** `resume(value)` answers the run's question; `onSettled()` after a land or a discard. */
  constructor(ctx, runName, { resume, onSettled } = {}) {
    this.ctx = ctx;
    this.name = runName;
    this.resume = resume || ((value) => ctx.api.resumeRun(runName, value));
    this.onSettled = onSettled || (() => {});
    // "question" | "ended" | "settled" | "looking" (for a failed run's branch) | "none" | ""
    this.mode = "";
    this.loaded = "";
    this.element = h("section", { class: "card diff-card", id: "run-diff", "aria-labelledby": "diff-title", hidden: true });
    // Where the view lives when it is not in the approval card.
    this.slot = h("div", { id: "diff-slot" }, this.element);
  }

  /** The view for a paused run's question, when it is the final diff's; else null. */
  forQuestion(interrupt) {
    // An ended run's card stays as it is: the page replays the run's events, and its old
    // approve_diff question must not take the card back (a click on Land would then answer a
    // question that is over, and the card be drawn again under the user's eyes).
    if (this.mode === "ended" || this.mode === "settled") return null;
    const value = interrupt && interrupt.value;
    if (!interrupt || interrupt.node !== "approve_diff" || !value || !value.diff) return null;
    this.mode = "question";
    this.load(value.into || "");
    return this.element;
  }

  /** After a GetRun: an ended run with its branch still there gets the diff and the buttons. */
  show(run) {
    const output = (run && run.output) || {};
    if (this.mode === "settled") return;
    if (run.status === "RUN_STATUS_PAUSED") return; // forQuestion decides
    const completedOpen = run.status === "RUN_STATUS_COMPLETED" && output.branch && OPEN_BRANCH.has(output.status);
    if (!completedOpen && !this.mayHaveLeftBranch(run)) {
      if (this.mode === "question") this.hide();
      return;
    }
    if (completedOpen) {
      this.showEnded();
    } else if (!["ended", "looking", "none"].includes(this.mode)) {
      this.mode = "looking";
      this.hide(true);
      this.lookForBranch().then((found) => {
        if (this.mode !== "looking") return;
        if (found) this.showEnded();
        else this.mode = "none";
      }, () => { if (this.mode === "looking") this.mode = ""; });
    }
  }

  /** A develop/code run that failed or was cancelled: its branch may still be there (no output
   *  says so), so the git API is asked. */
  mayHaveLeftBranch(run) {
    return ["RUN_STATUS_FAILED", "RUN_STATUS_CANCELLED"].includes(run.status)
      && CODING_WORKFLOWS.has(String(run.workflow || "").split("/").pop());
  }

  /** Whether the run's branch is still in a repository (ListRepositories: no 404 to log). */
  async lookForBranch() {
    const listed = await request("GET", "/v1/repositories");
    return (listed.repositories || []).some((repo) => (repo.runBranches || [])
      .some((branch) => branch.run === this.name));
  }

  showEnded() {
    this.mode = "ended";
    if (this.element.parentNode !== this.slot) this.slot.append(this.element);
    this.load("");
  }

  hide(keepMode = false) {
    if (!keepMode) this.mode = "";
    this.loaded = "";
    this.element.hidden = true;
    this.element.replaceChildren();
  }

  async load(into) {
    const key = `${this.mode}:${into}`;
    if (this.loaded === key) return;
    this.loaded = key;
    this.element.hidden = false;
    this.element.replaceChildren(h("h2", { id: "diff-title" }, "Change"), h("p", { class: "muted" }, "Loading the diff…"));
    try {
      const diff = await request("GET", `/v1/runs/${encodeURIComponent(idOf(this.name))}/diff`);
      if (this.loaded === key) this.render(diff, into || (diff.branch && diff.branch.target) || "");
    } catch (error) {
      if (this.loaded !== key) return;
      this.element.replaceChildren(h("h2", { id: "diff-title" }, "Change"), errorNotice(error));
      this.loaded = "";
    }
  }

  render(diff, into) {
    const files = diff.files || [];
    const branch = (diff.branch && diff.branch.branch) || "";
    const intoInput = h("input", { id: "diff-into", class: "mono", value: into, "aria-label": "Branch to land into", size: 14 });
    const notice = h("div", { id: "diff-notice", "aria-live": "polite" });
    const land = h("button", { type: "button", class: "primary", id: "diff-land" }, "Land");
    const discard = h("button", { type: "button", class: "danger", id: "diff-discard" }, "Discard");
    const keep = this.mode === "question" ? h("button", { type: "button", id: "diff-keep" }, "Keep") : null;
    const buttons = [land, discard, keep].filter(Boolean);
    const act = async (what) => {
      for (const button of buttons) button.disabled = true;
      notice.replaceChildren();
      try {
        const message = await this.act(what, intoInput.value.trim());
        notice.replaceChildren(h("p", { class: "notice ok", role: "status" }, message));
        this.ctx.announce(message);
        if (this.mode === "ended") {
          this.mode = "settled";
          this.onSettled();
        }
      } catch (error) {
        notice.replaceChildren(errorNotice(error));
        for (const button of buttons) button.disabled = false;
      }
    };
    land.addEventListener("click", () => act("land"));
    discard.addEventListener("click", () => act("discard"));
    if (keep) keep.addEventListener("click", () => act("keep"));
    const commits = diff.commits || [];
    // Through h(): it leaves out the parts that are null (replaceChildren would print "null").
    this.element.replaceChildren(...h("div", {},
      h("h2", { id: "diff-title" }, "Change"),
      h("p", { class: "diff-stats", id: "diff-stats" },
        `${files.length} file${files.length === 1 ? "" : "s"} `, counts(diff.additions, diff.deletions),
        branch ? [" on ", h("span", { class: "mono" }, branch)] : null,
        commits.length ? ` (${commits.length} commit${commits.length === 1 ? "" : "s"})` : null),
      h("div", { class: "diff-files" }, ...files.map(fileView)),
      files.length ? null : h("p", { class: "muted" }, "The branch changes nothing."),
      h("div", { class: "row diff-actions" },
        h("label", { for: "diff-into" }, "Land into"), intoInput, land, discard, keep),
      notice,
    ).childNodes);
  }

  /** Land, discard or keep; a sentence saying what happened. */
  async act(what, into) {
    if (this.mode === "question") {
      await this.resume(what === "land" ? { decision: "land", into } : { decision: what });
      return what === "land" ? `Answered: land into ${into || "the target branch"}; the run continues.`
        : `Answered: ${what}; the run continues.`;
    }
    const path = `/v1/runs/${encodeURIComponent(idOf(this.name))}`;
    if (what === "land") {
      const landed = await request("POST", `${path}:land`, { body: into ? { into } : {} });
      return `Landed in ${landed.into} at ${String(landed.commit || "").slice(0, 12)}`
        + `${landed.fastForward ? " (fast-forward)" : " (merge commit)"}.`;
    }
    const discarded = await request("POST", `${path}:discard`, { body: {} });
    return `Discarded ${discarded.branch} (its tip was ${String(discarded.commit || "").slice(0, 12)}).`;
  }
}
