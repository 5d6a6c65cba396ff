"""`python -m eval.llmrerank [depth] ['{"mode": "yes"}' …]`: the local model (the default
Qwen2.5-Coder-0.5B-Instruct GGUF under llama.cpp) as a re-ranker of the service's first `depth`
passages (10 by default; issue 16, session 28). On the tuning splits only by default, like
eval.tune (`EVAL_SPLIT`; on other splits only aggregates and rose / fell counts are printed).

No cross-encoder ships in a package found here; the local model is the one reader of a question
against a passage installed. Two scorers, each passage shown with its title and heading path:

- `yes`: pointwise relevance. "Passage … Question … Does the passage answer the question?
  Answer yes or no." and the first generated token's top log-probabilities (llama.cpp's
  `/completion` with `n_probs`): the score is log P(yes) − log P(no), the spellings summed.
- `upr`: query likelihood (UPR, Sachan et al. 2022): the mean log-probability of the question's
  tokens given the passage. This llama.cpp returns no log-probabilities of prompt tokens (no
  `echo`), so the question is generated under a grammar that allows only its text: llama.cpp
  reports each token's log-probability from the raw logits (`post_sampling_probs` off), which
  is the teacher-forced likelihood. Both prompts open with the same passage text, and a passage's
  two requests go one after the other to the same slot, so the second reads the passage from
  the slot's prompt cache.

Each argument is a setting: `mode` `service` (the service's own order), `yes`, `upr` or `both`;
with `rrf` (k) the model's order is fused with the service's by reciprocal ranks, the model's
weighted by `w` (default 1). With none, a fixed list of settings. The first row is always the
service at its defaults (top 10); rises and falls are counted against it.

The model runs on a llama.cpp server at `EVAL_LLAMA_URL` (default http://127.0.0.1:18099), which
this module neither starts nor stops (`python -m amelia_common.llama_server serve …` on a free
port, with as many `--slots` as `EVAL_LLAMA_SLOTS`, default 4). Scores are kept in a SQLite file
(`AMELIA_EVAL_LLM_CACHE`, default ~/.cache/amelia/eval-llm-scores.sqlite) by model, prompt
version, question and passage, with the wall time its question's batch took shared out over its
passages, so a deeper run reads again only the passages it adds and a search's time is the sum
over its passages: what a search would wait on with that many slots on that machine. Only first
reads time a search: the server also restores prompts it read before from RAM, so time a run on a
freshly started server. A search costs 30-140 s on the shared 2-core VM, so `EVAL_LLM_SAMPLE` = N
reads a stratified sample (`to_read`) and `EVAL_LLM_MINUTES` bounds the reading (past it, only
questions already in the cache are scored; 0: the cache alone).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from amelia_rag.chunking import context_text
from amelia_rag.search import Hit, Searcher, SearchFilters
from eval.__main__ import TOP_K
from eval.corpus import Question, words
from eval.score import HEADER, Ranked, first_rank, row, score
from eval.tune import SPLIT, asked_questions, eval_database, moved

LLAMA_URL = os.environ.get("EVAL_LLAMA_URL", "http://127.0.0.1:18099").rstrip("/")
SLOTS = int(os.environ.get("EVAL_LLAMA_SLOTS", "4"))
# A stratified sample (see `to_read`) instead of every question, and a time limit on reading.
SAMPLE = int(os.environ.get("EVAL_LLM_SAMPLE", "0"))
# Past EVAL_LLM_MINUTES of reading, questions not yet in the cache are left out (0: cache only).
MINUTES = float(os.environ.get("EVAL_LLM_MINUTES", "inf"))
CACHE = Path(
    os.environ.get("AMELIA_EVAL_LLM_CACHE", Path.home() / ".cache/amelia/eval-llm-scores.sqlite")
)
# Bumped whenever a prompt changes, so cached scores of another prompt are not read.
PROMPT_VERSION = "s28.1"
N_PROBS = 20
# A spelling of yes or no absent from the top N_PROBS tokens counts as this log-probability.
FLOOR = -30.0
YES = ("yes", "Yes", "YES", " yes", " Yes")
NO = ("no", "No", "NO", " no", " No")
DEFAULT_SETTINGS: list[dict[str, Any]] = [
    {"mode": "yes"},
    {"mode": "yes", "rrf": 60},
    {"mode": "yes", "rrf": 10},
    {"mode": "upr"},
    {"mode": "upr", "rrf": 60},
    {"mode": "upr", "rrf": 10},
    {"mode": "both"},
    {"mode": "both", "rrf": 60},
]

PASSAGE_PREFIX = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nA passage from the PostgreSQL manual:\n\n{passage}\n\n"
)
YES_SUFFIX = (
    "Question: {question}\n\nDoes the passage answer the question? Answer yes or no."
    "<|im_end|>\n<|im_start|>assistant\n"
)
UPR_SUFFIX = "Write a question that this passage answers.<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class Read:
    """What the model made of one passage for one question."""

    yes: float  # log P(yes) − log P(no)
    upr: float  # mean log P(question token | passage, earlier question tokens)
    yes_tokens: int  # prompt tokens of the yes/no request
    upr_tokens: int  # prompt + question tokens of the likelihood request
    seconds: float  # this passage's share of its question's batch wall time
    yes_seconds: float  # the part of `seconds` the yes/no request took


@dataclass
class Scored:
    """One passage's two requests: their scores, prompt tokens and seconds."""

    yes: float
    upr: float
    yes_tokens: int
    upr_tokens: int
    judging: float  # seconds of the yes/no request
    total: float  # seconds of both


def key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ReadCache:
    """The model's reads on disk: (model, prompt version, question, passage) → `Read`."""

    def __init__(self, path: Path, model: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS reads (model TEXT, version TEXT, question TEXT,"
            " passage TEXT, yes REAL, upr REAL, yes_tokens INTEGER, upr_tokens INTEGER,"
            " seconds REAL, yes_seconds REAL, PRIMARY KEY (model, version, question, passage))"
        )
        self.model = model

    def get(self, question: str, passage: str) -> Read | None:
        found = self.db.execute(
            "SELECT yes, upr, yes_tokens, upr_tokens, seconds, yes_seconds FROM reads WHERE model = ?"
            " AND version = ? AND question = ? AND passage = ?",
            (self.model, PROMPT_VERSION, key(question), key(passage)),
        ).fetchone()
        return Read(*found) if found else None

    def put(self, question: str, passage: str, read: Read) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO reads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.model,
                PROMPT_VERSION,
                key(question),
                key(passage),
                read.yes,
                read.upr,
                read.yes_tokens,
                read.upr_tokens,
                read.seconds,
                read.yes_seconds,
            ),
        )
        self.db.commit()


def shown(hit: Hit) -> str:
    """The passage as the model reads it: title and heading path, then the text."""
    return context_text(hit.document_title, tuple(hit.heading_path), hit.page, hit.content)


def logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def yes_score(top: list[dict[str, Any]]) -> float:
    """log P(yes) − log P(no) from the first token's top log-probabilities."""
    probs = {t["token"]: t["logprob"] for t in top}
    yes = logsumexp([probs.get(t, FLOOR) for t in YES])
    no = logsumexp([probs.get(t, FLOOR) for t in NO])
    return yes - no


def grammar_of(text: str) -> str:
    """A GBNF grammar whose only sentence is `text` (a JSON string is a GBNF literal)."""
    return f"root ::= {json.dumps(text)}"


class Reader:
    """Asks the llama.cpp server, one worker per slot, each pinned to its slot."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.client.post(f"{LLAMA_URL}/completion", json=body, timeout=3600)
        reply.raise_for_status()
        data: dict[str, Any] = reply.json()
        return data

    async def read(self, slot: int, question: str, passage: str) -> Scored:
        """Both scorers on one passage, on one slot (the second reuses the passage's cache)."""
        prefix = PASSAGE_PREFIX.format(passage=passage)
        common = {"temperature": 0, "cache_prompt": True, "id_slot": slot, "n_probs": N_PROBS}
        started = time.perf_counter()
        judged = await self.complete(
            {**common, "prompt": prefix + YES_SUFFIX.format(question=question), "n_predict": 1}
        )
        yes = yes_score(judged["completion_probabilities"][0]["top_logprobs"])
        judging = time.perf_counter() - started
        forced = await self.complete(
            {
                **common,
                "prompt": prefix + UPR_SUFFIX,
                "n_predict": 4 * len(question),
                "n_probs": 1,
                "grammar": grammar_of(question),
            }
        )
        steps = [p["logprob"] for p in forced["completion_probabilities"] if p["token"]]
        if forced["content"] != question or not steps:
            raise RuntimeError(f"the grammar did not force the question: {forced['content']!r}")
        return Scored(
            yes,
            sum(steps) / len(steps),
            judged["tokens_evaluated"],
            forced["tokens_evaluated"] + len(steps),
            judging,
            time.perf_counter() - started,
        )

    async def read_all(self, question: str, passages: list[str]) -> list[Read]:
        """The passages read in parallel over the slots; each gets an equal share of the
        batch's wall time."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(passages)):
            queue.put_nowait(i)
        out: dict[int, Scored] = {}

        async def worker(slot: int) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                out[i] = await self.read(slot, question, passages[i])

        started = time.perf_counter()
        await asyncio.gather(*(worker(s) for s in range(min(SLOTS, len(passages)))))
        share = (time.perf_counter() - started) / max(len(passages), 1)
        # The yes/no requests' part of the wall time, as their part of the requests' time.
        judging = sum(s.judging for s in out.values()) / sum(s.total for s in out.values())
        return [
            Read(s.yes, s.upr, s.yes_tokens, s.upr_tokens, share, share * judging)
            for s in (out[i] for i in range(len(passages)))
        ]


def llm_order(reads: list[Read], mode: str) -> list[int]:
    """Candidate indices best first by the model's score(s); ties keep the service's order."""
    if mode == "yes":
        return sorted(range(len(reads)), key=lambda i: (-reads[i].yes, i))
    if mode == "upr":
        return sorted(range(len(reads)), key=lambda i: (-reads[i].upr, i))
    yes, upr = llm_order(reads, "yes"), llm_order(reads, "upr")
    return rrf([yes, upr], [1.0, 1.0], 60)


def rrf(orders: list[list[int]], weights: list[float], k: float) -> list[int]:
    """Reciprocal-rank fusion of orders of the same candidates; ties keep index order."""
    fused: dict[int, float] = {}
    for order, weight in zip(orders, weights, strict=True):
        for rank, i in enumerate(order, start=1):
            fused[i] = fused.get(i, 0.0) + weight / (k + rank)
    return sorted(fused, key=lambda i: (-fused[i], i))


def reranked(reads: list[Read], setting: dict[str, Any]) -> list[int]:
    """The candidates' order a setting gives (indices into the service's order)."""
    mode = setting.get("mode", "yes")
    service = list(range(len(reads)))
    if mode == "service":
        return service
    order = llm_order(reads, mode)
    if "rrf" not in setting:
        return order
    return rrf([service, order], [1.0, float(setting.get("w", 1.0))], float(setting["rrf"]))


@dataclass
class Asked:
    """One question with the service's top 10 and the candidates the model re-ranks."""

    question: Question
    service: list[Ranked]
    candidates: list[Hit]
    ranked: list[Ranked]  # the candidates as the scorer sees them

    def candidate_rank(self) -> int | None:
        """Where the right passage is among the candidates (any depth), None if absent."""
        evidence = words(self.question.evidence)
        for rank, hit in enumerate(self.ranked, start=1):
            if hit.file == self.question.file and evidence in words(hit.content):
                return rank
        return None


def to_read(asked: list[Asked]) -> tuple[list[Asked], int]:
    """The questions the model reads, in order, and how many of the service's top-5 hits they
    stand for. All, unless `EVAL_LLM_SAMPLE` = N: then every question whose right passage is a
    candidate below the service's top 5 (each one that could rise), then a seeded sample of N of
    those whose right passage is in the top 5 (the ones that could fall, sampled); questions
    whose right passage is no candidate cannot move and are not read."""
    if not SAMPLE:
        return asked, 0
    top5 = [a for a in asked if (first_rank(a.service, a.question, passage=True) or 99) <= 5]
    can_rise = [a for a in asked if a not in top5 and a.candidate_rank() is not None]
    return can_rise + random.Random(28).sample(top5, min(SAMPLE, len(top5))), len(top5)


async def measure(depth: int, settings: list[dict[str, Any]]) -> None:
    async with eval_database() as db, httpx.AsyncClient() as client:
        model = (await client.get(f"{LLAMA_URL}/props", timeout=30)).json()["model_path"]
        cache = ReadCache(CACHE, Path(model).name)
        reader = Reader(client)
        searcher = Searcher(db.sessions, db.embedder)
        all_asked: list[Asked] = []
        for q in asked_questions():
            found = await searcher.search(
                q.question, top_k=TOP_K, min_score=0.0, mode="hybrid", filters=SearchFilters()
            )
            hits = await searcher.search(
                q.question, top_k=depth, min_score=0.0, mode="hybrid", filters=SearchFilters()
            )
            all_asked.append(Asked(q, ranked_of(db.files, found), hits, ranked_of(db.files, hits)))
        chosen, top5 = to_read(all_asked)
        load = os.getloadavg()[0]
        reads: dict[int, list[Read]] = {}
        computed, started = 0, time.perf_counter()
        for n, a in enumerate(chosen, start=1):
            texts = [shown(h) for h in a.candidates]
            known = [cache.get(a.question.question, t) for t in texts]
            missing = [i for i, r in enumerate(known) if r is None]
            if missing and time.perf_counter() - started > MINUTES * 60:
                continue  # past the time limit: only questions already read count
            if missing:
                fresh = await reader.read_all(a.question.question, [texts[i] for i in missing])
                for i, r in zip(missing, fresh, strict=True):
                    cache.put(a.question.question, texts[i], r)
                    known[i] = r
                computed += len(missing)
                print(
                    f"  {n}/{len(chosen)}: {len(missing)} passages read in"
                    f" {sum(r.seconds for r in fresh):.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            reads[a.question.id] = [r for r in known if r is not None]
        read = [a for a in chosen if a.question.id in reads]
        print(
            f"{len(db.files)} pages, {len(all_asked)} {SPLIT} questions, {len(read)} read"
            f" (of {len(chosen)} chosen); the service's first {depth} passages re-ranked by"
            f" {Path(model).name} ({SLOTS} slots); {computed} passages read in"
            f" {time.perf_counter() - started:.0f} s this run (load {load:.1f} →"
            f" {os.getloadavg()[0]:.1f}), the rest from {CACHE}"
        )
        ceiling = sum(a.candidate_rank() is not None for a in all_asked)
        in_top5 = sum(
            (first_rank(a.service, a.question, passage=True) or 99) <= 5 for a in all_asked
        )
        print(
            f"the service: right passage in the top 5 for {in_top5} of {len(all_asked)}; a"
            f" perfect reader of the first {depth}: {ceiling} ({ceiling / len(all_asked):.2f})\n"
        )
        per_search(reads)
        table(read, reads, settings, depth, top5, in_top5, len(all_asked))


def table(
    read: list[Asked],
    reads: dict[int, list[Read]],
    settings: list[dict[str, Any]],
    depth: int,
    top5: int,
    in_top5: int,
    asked: int,
) -> None:
    """One row per setting over the questions read; with a sample, each setting's top-5 share
    over all the asked questions estimated: rises counted, falls scaled from the sample."""
    questions_read = [a.question for a in read]
    service = {a.question.id: a.service for a in read}
    baseline = ranks_of(service, questions_read)
    sampled = sum(baseline[q.id] <= 5 for q in questions_read)
    print(f"\nover the {len(read)} questions read\n\n{HEADER}")
    print(row("the service (hybrid, top 10)", score(service, questions_read)))
    for setting in settings:
        results = {
            a.question.id: [a.ranked[i] for i in reranked(reads[a.question.id], setting)][:TOP_K]
            for a in read
        }
        ranks = ranks_of(results, questions_read)
        rose = sum(ranks[i] <= 5 < baseline[i] for i in ranks)
        fell = sum(baseline[i] <= 5 < ranks[i] for i in ranks)
        estimate = ""
        if top5 and sampled:
            share = (in_top5 + rose - fell * top5 / sampled) / asked
            estimate = f" into / out of the top 5: {rose} / {fell} of {sampled}; est. {share:.2f}"
        print(
            row(f"depth {depth} {json.dumps(setting)}", score(results, questions_read)),
            moved(score(results, questions_read), ranks, baseline) + estimate,
            flush=True,
        )


def ranked_of(files: dict[Any, str], hits: list[Hit]) -> list[Ranked]:
    return [Ranked(files.get(h.document_id, "?"), h.content) for h in hits]


def ranks_of(results: dict[int, list[Ranked]], asked: list[Question]) -> dict[int, int]:
    return {q.id: first_rank(results[q.id], q, passage=True) or 99 for q in asked}


def per_search(reads: dict[int, list[Read]]) -> None:
    """What a search waits on: the model's wall time and prompt tokens per question."""
    seconds = [sum(r.seconds for r in rs) for rs in reads.values()]
    judging = [sum(r.yes_seconds for r in rs) for rs in reads.values()]
    yes_tokens = [sum(r.yes_tokens for r in rs) for rs in reads.values()]
    upr_tokens = [sum(r.upr_tokens for r in rs) for rs in reads.values()]
    print(
        f"per search, both scorers: {sum(seconds) / len(seconds):.1f} s mean,"
        f" p95 {np.percentile(seconds, 95):.1f} s (the yes/no requests'"
        f" part: {sum(judging) / len(judging):.1f} s mean, p95 {np.percentile(judging, 95):.1f} s);"
        " prompt tokens: yes/no"
        f" {sum(yes_tokens) / len(yes_tokens):.0f}, likelihood {sum(upr_tokens) / len(upr_tokens):.0f}"
        " (its passage prefix read from the slot's cache)"
    )


def main() -> None:
    depth = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else TOP_K
    args = [a for a in sys.argv[1:] if not a.isdigit()]
    asyncio.run(measure(depth, [json.loads(a) for a in args] or DEFAULT_SETTINGS))


if __name__ == "__main__":
    main()
