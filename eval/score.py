"""Scoring ranked passages against the questions' expected page and evidence.

A hit is on the right page when it comes from the question's file; it is the right passage when
it also contains the question's evidence phrase (compared as lower-case words, so markup and
line breaks do not matter). Per mode: file hit@1, file hit@5, file MRR@10, the share of
questions with the right passage first and in the top 5 (file hit@5 cannot separate the modes on
this corpus: every asked page is in the top 5 of hybrid and the dense baselines), and nDCG@10 of the right passage (one relevant
passage per question: 1/log2(1 + rank) for the first hit that holds the evidence).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eval.corpus import Question, words


@dataclass(frozen=True)
class Ranked:
    """One hit as the scorer sees it."""

    file: str
    content: str


@dataclass
class Scores:
    file_hit1: float = 0.0
    file_hit5: float = 0.0
    file_mrr: float = 0.0
    passage_hit1: float = 0.0
    passage_hit5: float = 0.0
    ndcg10: float = 0.0
    passage_chars: float = 0.0
    misses: list[int] = field(default_factory=list)


def first_rank(hits: Sequence[Ranked], question: Question, passage: bool) -> int | None:
    evidence = words(question.evidence)
    for rank, hit in enumerate(hits[:10], start=1):
        if hit.file != question.file:
            continue
        if not passage or evidence in words(hit.content):
            return rank
    return None


def score(results: Mapping[int, Sequence[Ranked]], asked: Sequence[Question]) -> Scores:
    out = Scores()
    if not asked:
        return out
    chars: list[int] = []
    for question in asked:
        hits = results[question.id]
        chars.extend(len(h.content) for h in hits[:5])
        file_rank = first_rank(hits, question, passage=False)
        passage_rank = first_rank(hits, question, passage=True)
        if file_rank is not None:
            out.file_hit1 += file_rank == 1
            out.file_hit5 += file_rank <= 5
            out.file_mrr += 1.0 / file_rank
        if passage_rank is not None:
            out.passage_hit1 += passage_rank == 1
            out.passage_hit5 += passage_rank <= 5
            out.ndcg10 += 1.0 / math.log2(1 + passage_rank)
        if passage_rank is None or passage_rank > 5:
            out.misses.append(question.id)
    n = len(asked)
    out.file_hit1 /= n
    out.file_hit5 /= n
    out.file_mrr /= n
    out.passage_hit1 /= n
    out.passage_hit5 /= n
    out.ndcg10 /= n
    out.passage_chars = sum(chars) / len(chars) if chars else 0.0
    return out


HEADER = (
    "| mode | file hit@1 | file hit@5 | MRR@10 | nDCG@10 | right passage first "
    "| right passage in top 5 | mean passage chars |\n|---|---|---|---|---|---|---|---|"
)


def row(label: str, s: Scores) -> str:
    return (
        f"| {label} | {s.file_hit1:.2f} | {s.file_hit5:.2f} | {s.file_mrr:.2f} | "
        f"{s.ndcg10:.2f} | {s.passage_hit1:.2f} | {s.passage_hit5:.2f} | {s.passage_chars:.0f} |"
    )
