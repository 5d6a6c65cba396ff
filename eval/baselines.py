"""The pipeline a developer writes in an afternoon, to compare the service against.

HTML → text with BeautifulSoup's `get_text`, a recursive character split (800/200, the
separators of LangChain's RecursiveCharacterTextSplitter), all-MiniLM-L6-v2 with exact cosine
over every chunk, Okapi BM25 (the rank_bm25 formula: k1 1.5, b 0.75, idf floor ε 0.25) on
lower-cased words, and reciprocal rank fusion of the two (k = 60).
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

SIZE = 800
OVERLAP = 200
SEPARATORS = ("\n\n", "\n", " ", "")
RRF_K = 60
_TOKEN = re.compile(r"\w+")


def html_to_text(html: str) -> str:
    from bs4 import BeautifulSoup

    text = BeautifulSoup(html, "html.parser").get_text()
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


def _merge(pieces: list[str], separator: str) -> list[str]:
    """Greedy packing of pieces into chunks of ≤ SIZE with up to OVERLAP carried over."""
    chunks: list[str] = []
    current: list[str] = []
    total = 0
    for piece in pieces:
        extra = len(separator) if current else 0
        if total + len(piece) + extra > SIZE and current:
            chunks.append(separator.join(current).strip())
            while current and (total > OVERLAP or total + len(piece) + extra > SIZE):
                total -= len(current[0]) + (len(separator) if len(current) > 1 else 0)
                current.pop(0)
                extra = len(separator) if current else 0
        current.append(piece)
        total += len(piece) + (len(separator) if len(current) > 1 else 0)
    if current:
        chunks.append(separator.join(current).strip())
    return [c for c in chunks if c]


def split(text: str, separators: tuple[str, ...] = SEPARATORS) -> list[str]:
    """RecursiveCharacterTextSplitter(chunk_size=800, chunk_overlap=200)."""
    separator = separators[-1]
    rest: tuple[str, ...] = ()
    for i, candidate in enumerate(separators):
        if candidate == "" or candidate in text:
            separator, rest = candidate, separators[i + 1 :]
            break
    pieces = text.split(separator) if separator else list(text)
    out: list[str] = []
    good: list[str] = []
    for piece in pieces:
        if len(piece) < SIZE:
            good.append(piece)
            continue
        if good:
            out.extend(_merge(good, separator))
            good = []
        out.extend(split(piece, rest) if rest else [piece])
    if good:
        out.extend(_merge(good, separator))
    return out


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class BM25:
    """Okapi BM25 as rank_bm25's BM25Okapi computes it."""

    def __init__(self, corpus: list[list[str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.lengths = np.array([len(d) for d in corpus], dtype=np.float64)
        self.average = float(self.lengths.mean())
        self.frequencies = [Counter(d) for d in corpus]
        df: Counter[str] = Counter()
        for f in self.frequencies:
            df.update(f.keys())
        n = len(corpus)
        idf = {w: math.log(n - c + 0.5) - math.log(c + 0.5) for w, c in df.items()}
        floor = 0.25 * (sum(idf.values()) / len(idf))
        self.idf = {w: (v if v >= 0 else floor) for w, v in idf.items()}

    def scores(self, query: list[str]) -> np.ndarray:
        out = np.zeros(len(self.frequencies))
        norm = self.k1 * (1 - self.b + self.b * self.lengths / self.average)
        for word in query:
            if word not in self.idf:
                continue
            tf = np.array([f.get(word, 0) for f in self.frequencies], dtype=np.float64)
            out += self.idf[word] * tf * (self.k1 + 1) / (tf + norm)
        return out


def top(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k best scores, ties by index."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return [int(i) for i in order[:k]]


def rrf(rankings: list[list[int]], k: int) -> list[int]:
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking, start=1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused, key=lambda i: (-fused[i], i))[:k]
