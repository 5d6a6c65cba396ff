"""The chunker: exact offsets, whole words, overlap and size respected, sections never crossed."""

from __future__ import annotations

import random
import re

import pytest

from amelia_rag.chunking import chunk_document, embedding_text, split_spans
from amelia_rag.parsing import ParsedDocument, Section, parse_markdown

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seventeen",
    "careful",
    "engineers",
    "review",
    "asynchronous",
    "pipelines,",
    "embeddings,",
    "and",
    "PostgreSQL",
    "indexes",
]


def random_text(seed: int, n_words: int) -> str:
    """Prose with sentences, line breaks and paragraphs in random places."""
    rng = random.Random(seed)
    parts = []
    for _ in range(n_words):
        word = rng.choice(WORDS)
        if rng.random() < 0.02:
            word = "x" * rng.randint(30, 400)  # occasional very long token
        parts.append(word)
        r = rng.random()
        if r < 0.08:
            parts.append(". ")
        elif r < 0.11:
            parts.append(".\n\n")
        elif r < 0.14:
            parts.append("\n")
        else:
            parts.append(" " if rng.random() < 0.9 else "  \t ")
    return "".join(parts)


def words_of(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


@pytest.mark.parametrize(
    ("size", "overlap"), [(100, 0), (100, 30), (250, 60), (800, 200), (400, 399)]
)
@pytest.mark.parametrize("seed", range(6))
def test_chunks_are_exact_whole_word_slices_with_bounded_overlap(
    seed: int, size: int, overlap: int
) -> None:
    text = random_text(seed, 1500)
    spans = split_spans(text, 0, len(text), size, overlap)
    assert spans, "text produced no chunks"
    word_starts = {s for s, _ in words_of(text)}
    word_ends = {e for _, e in words_of(text)}
    long_cut = {
        p for s, e in words_of(text) if e - s > size for p in range(s + size, e, size)
    }  # hard cuts inside tokens longer than a whole chunk are the only allowed mid-token offsets
    for i, (start, end) in enumerate(spans):
        assert 0 < end - start <= size
        assert start in word_starts or start in long_cut, f"chunk {i} starts inside a word"
        assert end in word_ends or end in long_cut, f"chunk {i} ends inside a word"
        if i:
            prev_start, prev_end = spans[i - 1]
            assert start > prev_start and end > prev_end, "chunks must advance"
            assert prev_end - start <= overlap, "overlap larger than CHUNK_OVERLAP"
            if overlap == 0:
                assert start >= prev_end
    # Every word is in some chunk: nothing is lost.
    covered = 0
    for start, end in spans:
        assert start <= covered or text[covered:start].strip() == ""
        covered = max(covered, end)
    assert text[covered:].strip() == ""


def test_overlap_is_used_when_there_is_room() -> None:
    text = " ".join(f"word{i}" for i in range(400))
    spans = split_spans(text, 0, len(text), 200, 50)
    overlaps = [spans[i - 1][1] - spans[i][0] for i in range(1, len(spans))]
    assert all(0 < o <= 50 for o in overlaps)


def test_prefers_paragraph_then_sentence_boundaries() -> None:
    para1 = "First paragraph sentence one. " * 3 + "End of first."
    para2 = "Second paragraph goes on. " * 3 + "End of second."
    text = para1 + "\n\n" + para2
    spans = split_spans(text, 0, len(text), len(para1) + 40, 0)
    assert text[spans[0][0] : spans[0][1]] == para1

    sentences = "Alpha beta gamma delta. Epsilon zeta eta theta. Iota kappa lambda mu nu."
    spans = split_spans(sentences, 0, len(sentences), 60, 0)
    assert sentences[spans[0][0] : spans[0][1]].endswith(".")


def test_next_chunk_starts_at_sentence_inside_overlap_when_possible() -> None:
    text = "Alpha beta gamma delta epsilon. Zeta eta theta. Iota kappa lambda mu nu xi omicron."
    spans = split_spans(text, 0, len(text), 60, 25)
    assert text[spans[0][0] : spans[0][1]] == "Alpha beta gamma delta epsilon. Zeta eta theta."
    # "epsilon." is also inside the overlap window, but the sentence start wins.
    assert text[spans[1][0] :].startswith("Zeta eta theta. Iota")


def test_single_huge_token_is_cut_to_size() -> None:
    text = "a" * 1050
    spans = split_spans(text, 0, len(text), 500, 100)
    assert [e - s for s, e in spans] == [500, 500, 50]


def test_document_chunks_stay_in_sections_and_equal_source_slices() -> None:
    md = (
        "# Guide\n\nIntro text here.\n\n## Install\n\n"
        + "Run the installer and wait. " * 40
        + "\n\n## Configure\n\nEdit the file.\n"
    )
    parsed = parse_markdown(md)
    chunks = chunk_document(parsed, 200, 50)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == md[chunk.start : chunk.end]
        section = next(s for s in parsed.sections if s.start <= chunk.start and chunk.end <= s.end)
        assert chunk.heading_path == section.heading_path
    paths = {c.heading_path for c in chunks}
    assert ("Guide", "Install") in paths and ("Guide", "Configure") in paths
    assert len([c for c in chunks if c.heading_path == ("Guide", "Install")]) > 3


def test_whitespace_only_section_gives_no_chunk() -> None:
    parsed = ParsedDocument("   \n\n  ", "text", [Section(0, 7)])
    assert chunk_document(parsed, 100, 10) == []


def test_embedding_text_puts_location_before_passage() -> None:
    parsed = parse_markdown("# Handbook\n\n## Roses\n\nPrune in late winter.\n")
    chunk = chunk_document(parsed, 100, 10)[-1]
    text = embedding_text("handbook.md", chunk)
    assert text.startswith("handbook.md > Handbook > Roses\n\n")
    assert text.endswith(chunk.text)


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        split_spans("abc", 0, 3, 100, 100)
    with pytest.raises(ValueError):
        split_spans("abc", 0, 3, 0, 0)


def test_a_short_section_passage_reads_on_into_the_sections_after_it() -> None:
    md = (
        "# REFRESH VIEW\n\nrefresh a view\n\n## Synopsis\n\nREFRESH VIEW name\n\n"
        "## Description\n\nREFRESH VIEW replaces the contents of a view.\n\n"
        "## Parameters\n\n" + "The name of the view to refresh, schema-qualified. " * 20
    )
    parsed = parse_markdown(md)
    chunks = chunk_document(parsed, 200, 50, passage_size=300)
    title, synopsis = chunks[0], chunks[1]
    for chunk in (title, synopsis):
        passage = md[chunk.passage_start : chunk.passage_end]
        assert passage.startswith(chunk.text)
        # The whole Description, and the over-long Parameters section's opening sentences.
        assert "replaces the contents of a view.\n\n## Parameters\n\nThe name of" in passage
        assert passage.endswith("schema-qualified.")
        assert len(passage) <= 300
    long_one = chunks[-1]
    assert long_one.passage_end - long_one.passage_start <= 300
    assert md[long_one.passage_start : long_one.passage_end].count("## ") == 0


def test_a_short_section_passage_reads_on_by_whole_sentences_only() -> None:
    md = "# VIEWS\n\nviews\n\n## Synopsis\n\n" + "CREATE VIEW name AS query " * 30
    parsed = parse_markdown(md)
    title = chunk_document(parsed, 200, 50, passage_size=300)[0]
    # No sentence of the Synopsis ends within the passage: the title stays alone.
    assert md[title.passage_start : title.passage_end] == "# VIEWS\n\nviews"


def test_a_short_section_passage_stays_on_its_page() -> None:
    text = "Page one ends here.\n\nPage two starts here with more words."
    parsed = ParsedDocument(text, "pdf", [Section(0, 19, page=1), Section(21, len(text), page=2)])
    first = chunk_document(parsed, 100, 10, passage_size=300)[0]
    assert (first.passage_start, first.passage_end) == (0, 19)
