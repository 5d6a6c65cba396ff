"""What a search returns: distinct passages, windows of a section in reading order, any-term
keyword matches ranked by rarity."""

from __future__ import annotations

import uuid

from rag_helpers import Rag

from amelia.v1 import rag_pb2
from amelia_rag.search import Hit, distinct, reading_order

TEXT = "".join(f"Sentence {i} of the long section about compaction. " for i in range(60))


def _hit(start: int, end: int, section: int = 0, document: uuid.UUID | None = None) -> Hit:
    return Hit(
        chunk_id=uuid.uuid4(),
        content=TEXT[start:end],
        score=1.0,
        document_id=document or DOC,
        document_title="t",
        document_type="text",
        chunk_index=start,
        start_offset=start,
        end_offset=end,
        heading_path=[],
        page=0,
        section=section,
    )


DOC = uuid.uuid4()


def test_overlapping_passages_of_a_section_merge_into_one_exact_slice() -> None:
    hits = distinct([_hit(400, 1200), _hit(900, 1700), _hit(100, 600)], top_k=5, merge_chars=1600)
    assert len(hits) == 1
    (hit,) = hits
    assert (hit.start_offset, hit.end_offset) == (100, 1700)
    assert hit.content == TEXT[100:1700]


def test_a_merge_that_would_be_too_long_drops_the_lower_hit() -> None:
    hits = distinct([_hit(400, 1200), _hit(900, 1700)], top_k=5, merge_chars=1000)
    assert [(h.start_offset, h.end_offset) for h in hits] == [(400, 1200)]


def test_overlapping_passages_of_two_sections_merge_and_other_documents_are_kept_apart() -> None:
    # A short section's passage reads on into the next section: the same text, one hit.
    other = uuid.uuid4()
    hits = distinct(
        [_hit(0, 500), _hit(100, 600, section=1), _hit(100, 600, document=other), _hit(600, 900)],
        top_k=3,
        merge_chars=1600,
    )
    assert [(h.document_id, h.start_offset, h.end_offset) for h in hits] == [
        (DOC, 0, 600),
        (other, 100, 600),
        (DOC, 600, 900),
    ]


def _ranked(*hits: Hit) -> list[Hit]:
    for rank, hit in enumerate(hits):
        hit.score = 1.0 - rank / 10
    return list(hits)


def test_a_sections_opening_ranked_right_below_a_later_window_reads_first() -> None:
    later, opening, other = _hit(1600, 2400, section=3), _hit(0, 800, section=3), _hit(0, 500)
    hits = reading_order(_ranked(later, opening, other))
    assert [(h.start_offset, h.section) for h in hits] == [(0, 3), (1600, 3), (0, 0)]
    assert [h.score for h in hits] == [1.0, 0.9, 0.8]  # the ranks keep their scores


def test_windows_of_other_sections_or_documents_or_further_down_keep_their_ranks() -> None:
    elsewhere = uuid.uuid4()
    cases = [
        [_hit(1600, 2400, section=3), _hit(0, 800, section=2)],
        [_hit(1600, 2400, section=3), _hit(0, 800, section=3, document=elsewhere)],
        [_hit(1600, 2400, section=3), _hit(900, 1400, section=4), _hit(0, 800, section=3)],
        [_hit(0, 800, section=3), _hit(1600, 2400, section=3)],
    ]
    for hits in cases:
        assert reading_order(_ranked(*hits)) == hits


async def test_keyword_search_matches_any_term_and_ranks_rare_terms_first(rag: Rag) -> None:
    tag = uuid.uuid4().hex[:8]
    common = "".join(
        f"## Note {i}\n\nThe garden needs water every morning in summer.\n\n" for i in range(12)
    )
    rare = f"## Soil\n\nAdd zeolite{tag} to sandy soil so it holds water longer.\n"
    reply = await rag.ingest(f"# Garden\n\n{common}{rare}".encode(), file_path=f"/search/{tag}.md")
    # One word of five is in the passage: the old "half of the words" rule found nothing.
    hits = await rag.stub.Search(
        rag_pb2.SearchRequest(
            query=f"which mineral is zeolite{tag} for pottery kilns",
            mode=rag_pb2.SEARCH_MODE_KEYWORD,
            documents=[reply.document.name],
        )
    )
    assert hits.hits and f"zeolite{tag}" in hits.hits[0].content
    # "water" is in every note, "zeolite…" in one passage: the rare word decides.
    hits = await rag.stub.Search(
        rag_pb2.SearchRequest(
            query=f"water zeolite{tag}",
            mode=rag_pb2.SEARCH_MODE_KEYWORD,
            documents=[reply.document.name],
        )
    )
    assert f"zeolite{tag}" in hits.hits[0].content
    await rag.stub.DeleteDocument(rag_pb2.DeleteDocumentRequest(name=reply.document.name))
