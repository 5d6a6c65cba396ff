"""`python -m eval.ltr [setting …]`: a learned fusion — the hybrid search's candidates ranked by
a linear model over features of both legs, fitted on the tuning splits (issue 16, session 24).

The candidates are the service's: the vector and keyword legs' first `n` chunks each. Each gets
features the service has at hand (its fused score, each leg's passage rank and raw score, its
share of the question's idf mass in its text, its heading path and its page title, how its page
does among the candidates, its length). A logistic model is fitted on the tuning splits' (tune,
tune2) candidates, labelled by whether the chunk's passage holds the question's evidence; the
searches then rank by it before the service's own steps (distinct passages, section openings,
reading order). Each setting is a JSON object (the first is the baseline of rose/fell):

- `{}`: the service as it is;
- `{"ltr": "point", "C": 1.0}`: pointwise logistic regression, inverse regularisation C;
- `{"ltr": "pair", "C": 1.0}`: pairwise (each evidence chunk against each other candidate of
  its question; RankNet's linear form);
- `"drop": ["cover", …]`: features left out.

Printed like eval.tune. The model is always fitted on the tuning splits, whatever EVAL_SPLIT
asks; on other splits only aggregates and rose/fell counts are printed.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import uuid
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from amelia_rag import search
from amelia_rag.search import (
    Hit,
    fuse,
    keyword_ranking,
    passage_ranks,
    query_terms,
    term_weights,
    vector_ranking,
)
from eval.corpus import Question, questions, words
from eval.pages import VariantSearcher
from eval.tune import TUNING, EvalDatabase, compare, eval_database

FEATURES = (
    "fused",
    "vrank",
    "krank",
    "cos",
    "cos_gap",
    "kw",
    "cover",
    "head",
    "title",
    "page_gap",
    "page_share",
    "length",
)


async def candidates(
    session: AsyncSession, query: str, vector: np.ndarray, n: int
) -> tuple[list[Hit], np.ndarray]:
    """The fused candidates, best first, and their feature rows (FEATURES' order)."""
    by_vector = await vector_ranking(session, vector, n, None)
    by_keyword = await keyword_ranking(session, query, vector, n, None)
    vrank = {h.chunk_id: r for r, h in zip(passage_ranks(by_vector), by_vector, strict=True)}
    krank = {h.chunk_id: r for r, h in zip(passage_ranks(by_keyword), by_keyword, strict=True)}
    kw = {h.chunk_id: h.score for h in by_keyword}
    fused = fuse(by_vector, by_keyword, 0.0)
    if not fused:
        return [], np.zeros((0, len(FEATURES)))
    terms = await query_terms(session, query)
    idf = await term_weights(session, terms) if terms else {}
    mass = sum(idf.values()) or 1.0
    held = await _held(session, [h.chunk_id for h in fused], terms)
    best_cos = max(h.vector_score for h in fused)
    best_kw = max(kw.values(), default=0.0) or 1.0
    page_best: dict[uuid.UUID, float] = {}
    page_count: dict[uuid.UUID, int] = {}
    for h in fused:
        page_best[h.document_id] = max(page_best.get(h.document_id, -1.0), h.vector_score)
        page_count[h.document_id] = page_count.get(h.document_id, 0) + 1
    rows = []
    for h in fused:
        body, head, title = held.get(h.chunk_id, ([], [], []))
        rows.append(
            [
                h.score,
                1.0 / (search.RRF_K + vrank[h.chunk_id]) if h.chunk_id in vrank else 0.0,
                1.0 / (search.RRF_K + krank[h.chunk_id]) if h.chunk_id in krank else 0.0,
                h.vector_score,
                h.vector_score - best_cos,
                kw.get(h.chunk_id, 0.0) / best_kw,
                sum(idf.get(t, 0.0) for t in body) / mass,
                sum(idf.get(t, 0.0) for t in head) / mass,
                sum(idf.get(t, 0.0) for t in title) / mass,
                page_best[h.document_id] - best_cos,
                page_count[h.document_id] / len(fused),
                math.log(1 + len(h.content)),
            ]
        )
    return fused, np.asarray(rows, dtype=np.float64)


async def _held(
    session: AsyncSession, ids: list[uuid.UUID], terms: list[str]
) -> dict[uuid.UUID, tuple[list[str], list[str], list[str]]]:
    """Which of the query's terms each chunk holds in its text, its heading path, its title."""
    if not terms:
        return {}
    result = await session.execute(
        text(
            """
            SELECT c.id,
                   ARRAY(SELECT t FROM unnest(CAST(:terms AS text[])) t
                         WHERE c.tsv @@ CAST(t AS tsquery)) AS body,
                   ARRAY(SELECT t FROM unnest(CAST(:terms AS text[])) t
                         WHERE to_tsvector('english',
                                 coalesce(array_to_string(c.heading_path, ' '), ''))
                               @@ CAST(t AS tsquery)) AS head,
                   ARRAY(SELECT t FROM unnest(CAST(:terms AS text[])) t
                         WHERE to_tsvector('english', coalesce(d.title, ''))
                               @@ CAST(t AS tsquery)) AS title
            FROM chunks c JOIN documents d ON d.id = c.document_id
            WHERE c.id = ANY(:ids)
            """
        ),
        {"terms": terms, "ids": ids},
    )
    return {r.id: (list(r.body), list(r.head), list(r.title)) for r in result}


class Model:
    """A fitted linear scorer over FEATURES (some dropped)."""

    def __init__(self, setting: dict[str, Any]) -> None:
        self.kind = setting.get("ltr", "point")
        self.c = float(setting.get("C", 1.0))
        self.keep = [i for i, f in enumerate(FEATURES) if f not in setting.get("drop", [])]
        self.scaler = StandardScaler()
        self.model = LogisticRegression(C=self.c, max_iter=2000, class_weight="balanced")

    def fit(self, data: list[tuple[np.ndarray, np.ndarray]]) -> None:
        x_all = np.vstack([x[:, self.keep] for x, _ in data])
        self.scaler.fit(x_all)
        if self.kind == "point":
            y_all = np.concatenate([y for _, y in data])
            self.model.fit(self.scaler.transform(x_all), y_all)
            return
        pairs, labels = [], []
        for x, y in data:
            z = self.scaler.transform(x[:, self.keep])
            for p in np.flatnonzero(y):
                for q in np.flatnonzero(~y):
                    pairs.append(z[p] - z[q])
                    labels.append(1)
                    pairs.append(z[q] - z[p])
                    labels.append(0)
        self.model = LogisticRegression(C=self.c, max_iter=2000, fit_intercept=False)
        self.model.fit(np.asarray(pairs), np.asarray(labels))

    def scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.decision_function(self.scaler.transform(x[:, self.keep])))

    def weights(self) -> str:
        coef = self.model.coef_.ravel()
        return ", ".join(f"{FEATURES[i]} {w:+.2f}" for i, w in zip(self.keep, coef, strict=True))


class LearnedSearcher(VariantSearcher):
    def __init__(self, db: EvalDatabase, setting: dict[str, Any], model: Model | None) -> None:
        super().__init__(db, {})
        self.model = model

    async def ranked(
        self, session: AsyncSession, query: str, vector: np.ndarray, n: int, min_score: float
    ) -> list[Hit]:
        if self.model is None:
            return await super().ranked(session, query, vector, n, min_score)
        fused, x = await candidates(session, query, vector, n)
        if not fused:
            return fused
        s = self.model.scores(x)
        order = sorted(range(len(fused)), key=lambda i: (-s[i], fused[i].order))
        top = float(s[order[0]])
        out = []
        for i in order:  # scores in (0, 1], best 1, as the fusion's are
            fused[i].score = 1.0 / (1.0 + top - float(s[i]))
            out.append(fused[i])
        return out


async def training_data(
    db: EvalDatabase, asked: list[Question]
) -> list[tuple[np.ndarray, np.ndarray]]:
    n = max(10 * search.CANDIDATES_PER_HIT, search.CANDIDATES)
    data = []
    async with db.sessions() as session, session.begin():
        for q in asked:
            vector = await db.embedder.embed_query(q.question)
            fused, x = await candidates(session, q.question, vector, n)
            evidence = words(q.evidence)
            y = np.array(
                [
                    db.files.get(h.document_id) == q.file and evidence in words(h.content)
                    for h in fused
                ],
                dtype=bool,
            )
            if y.any() and not y.all():
                data.append((x, y))
    return data


async def run(settings: list[dict[str, Any]]) -> None:
    async with eval_database() as db:
        tuning = [q for q in questions() if q.split in TUNING]
        data = await training_data(db, tuning)
        print(
            f"fitted on {len(data)} of {len(tuning)} tuning questions (evidence among the"
            " candidates)"
        )
        models: dict[str, Model | None] = {}
        for setting in settings:
            key = json.dumps(setting)
            if setting.get("ltr"):
                model = Model(setting)
                model.fit(data)
                print(f"  {key}: {model.weights()}")
                models[key] = model
            else:
                models[key] = None
        await compare(
            db, settings, lambda setting: LearnedSearcher(db, setting, models[json.dumps(setting)])
        )


def main() -> None:
    asyncio.run(run([json.loads(a) for a in sys.argv[1:]] or [{}]))


if __name__ == "__main__":
    main()
