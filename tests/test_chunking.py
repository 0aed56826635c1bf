"""Chunking rules (unit tests) and the guarantees behind them (hypothesis property tests).

What the property tests check, precisely, for any text and any valid (chunk_size, chunk_overlap):

* bounded: every chunk has 1..chunk_size characters and is a contiguous slice of the section text;
* nothing lost or duplicated beyond the overlap: dropping the first ``overlap_chars`` characters of each
  chunk and concatenating the rest gives the section text, compared with all whitespace removed;
* the overlap is honest: ``text[:overlap_chars]`` is the end of the previous chunk, at most
  ``chunk_overlap`` characters, made of whole words taken only from the previous chunk's new text;
* never mid-word: a chunk starts and ends at word boundaries unless a word is longer than chunk_size;
* deterministic: same input, same chunks and ids.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_assistant.ingest.chunking import (
    Chunk,
    TextPiece,
    chunk_document,
    content_hash,
    document_hash,
    make_chunk_id,
    split_text,
)
from context_assistant.ingest.documents import ParsedDocument, Section, parse_document

DOCS = Path(__file__).resolve().parent.parent / "fixtures" / "docs"


def doc_of(*texts: str, path: str = "docs/guide.md") -> ParsedDocument:
    return ParsedDocument(path=path, sections=[Section(text=text, heading="", page=None) for text in texts])


def texts(pieces: list[TextPiece] | list[Chunk]) -> list[str]:
    return [piece.text for piece in pieces]


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("size", "overlap", "message"),
    [
        (100, 100, r"^chunk_overlap \(100\) must be smaller than chunk_size \(100\), otherwise chunks could not"),
        (100, 150, r"^chunk_overlap \(150\) must be smaller than chunk_size \(100\)"),
        (0, 0, r"^chunk_size must be a positive integer, got 0$"),
        (-5, 0, r"^chunk_size must be a positive integer, got -5$"),
        (10.5, 0, r"^chunk_size must be a positive integer, got 10\.5$"),
        (True, 0, r"^chunk_size must be a positive integer, got True$"),
        (100, -1, r"^chunk_overlap must be a non-negative integer, got -1$"),
        (100, "5", r"^chunk_overlap must be a non-negative integer, got '5'$"),
    ],
)
def test_bad_settings_are_rejected_with_a_clear_message(size: object, overlap: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chunk_document(doc_of("some text"), chunk_size=size, chunk_overlap=overlap)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        split_text("some text", size, overlap)  # type: ignore[arg-type]


def test_defaults_are_500_and_50() -> None:
    sentence = "The on-call rotation hands over on Tuesdays at 10:00 UTC. "
    chunks = chunk_document(doc_of(sentence * 30))
    assert all(len(chunk.text) <= 500 for chunk in chunks)
    assert len(chunks) > 3
    assert all(0 < chunk.overlap_chars <= 50 for chunk in chunks[1:])


# ------------------------------------------------------------------------------------------ structure


def test_short_text_is_one_chunk_without_overlap() -> None:
    assert [(p.text, p.overlap_chars) for p in split_text("  Hello world.  ", 50, 10)] == [("Hello world.", 0)]
    assert split_text(" \n\t ", 50, 10) == []


def test_paragraphs_are_packed_whole_before_anything_else() -> None:
    text = "Alpha one.\n\nBravo two.\n\nCharlie three is a longer paragraph. It has two sentences."
    assert texts(split_text(text, 30, 0)) == [
        "Alpha one.\n\nBravo two.",
        "Charlie three is a longer",
        "paragraph.",  # a sentence end beats packing more words
        "It has two sentences.",
    ]
    # with room, the long paragraph splits at its sentence end rather than mid-sentence
    assert texts(split_text(text, 40, 0)) == [
        "Alpha one.\n\nBravo two.",
        "Charlie three is a longer paragraph.",
        "It has two sentences.",
    ]


def test_line_ending_a_sentence_beats_a_sentence_end_mid_line() -> None:
    text = "First sentence here. Second one\ncontinues after a wrap. Third\nfourth."
    assert texts(split_text(text, 55, 0)) == [
        "First sentence here. Second one\ncontinues after a wrap.",
        "Third\nfourth.",
    ]


def test_table_rows_break_at_line_ends_not_mid_row() -> None:
    table = "Category | Period\nApplication logs | 90 days\nCustomer invoices | 7 years\nBackups | 35 days"
    assert texts(split_text(table, 50, 0)) == [
        "Category | Period\nApplication logs | 90 days",
        "Customer invoices | 7 years\nBackups | 35 days",
    ]


def test_words_are_never_split_unless_longer_than_the_chunk() -> None:
    text = "tiny words then " + "x" * 25 + " end"
    assert texts(split_text(text, 10, 0)) == ["tiny words", "then", "xxxxxxxxxx", "xxxxxxxxxx", "xxxxx end"]


def test_overlap_is_whole_words_from_the_previous_chunk() -> None:
    text = "one two three four five six seven eight nine ten"
    pieces = split_text(text, 20, 9)
    assert [(p.text, p.overlap_chars) for p in pieces] == [
        ("one two three four", 0),
        ("four five six seven", 4),
        ("six seven eight nine", 9),
        ("nine ten", 4),
    ]


def test_overlap_is_dropped_rather_than_splitting_a_word() -> None:
    text = "aa bb " + "c" * 18
    assert [(p.text, p.overlap_chars) for p in split_text(text, 20, 5)] == [("aa bb", 0), ("c" * 18, 0)]


def test_sections_are_chunked_separately_with_running_index() -> None:
    doc = ParsedDocument(
        path="docs/runbook.pdf",
        sections=[
            Section("Page one text that is long enough to need two chunks.", "Runbook", 1),
            Section("Page two.", "Runbook > Escalation", 2),
        ],
    )
    chunks = chunk_document(doc, chunk_size=60, chunk_overlap=10)
    # Each chunk starts with its heading path (the contextual header), which counts towards the size; a path
    # too long for a quarter of the chunk loses its outer levels.
    assert [(c.chunk_index, c.heading, c.page, c.text) for c in chunks] == [
        (0, "Runbook", 1, "Runbook\n\nPage one text that is long enough to need two"),
        (1, "Runbook", 1, "Runbook\n\nneed two chunks."),
        (2, "Runbook > Escalation", 2, "Escalation\n\nPage two."),
    ]
    assert [c.header_chars for c in chunks] == [9, 9, 12]
    assert chunks[2].overlap_chars == 0  # no overlap across sections
    assert all(c.path == "docs/runbook.pdf" for c in chunks)


# ------------------------------------------------------------------------------------------ identity


def test_chunk_id_is_sha256_of_path_and_position_and_pinned() -> None:
    """Pinned literal: changing the derivation would orphan every stored chunk, so it must be deliberate."""
    assert make_chunk_id("docs/guide.md", 0) == hashlib.sha256(b"docs/guide.md\x000").hexdigest()
    assert make_chunk_id("docs/guide.md", 0) == "6e9dadfb2e6755a426bbf687df8f2b2b2df7b425f5c4d4cf9176ebda39a9859e"
    assert make_chunk_id("docs/guide.md", 1) != make_chunk_id("docs/guide.md", 0)
    assert make_chunk_id("docs/guide.m", 10) != make_chunk_id("docs/guide.md", 0)


def test_edited_document_keeps_ids_by_position_and_shortened_one_loses_its_tail() -> None:
    paragraphs = [f"Paragraph {n} explains step {n} of the release checklist in detail." for n in range(6)]
    original = chunk_document(doc_of("\n\n".join(paragraphs)), chunk_size=80, chunk_overlap=0)
    edited_paragraphs = [*paragraphs]
    edited_paragraphs[2] = "Paragraph 2 now says the freeze starts 48 hours before the release."
    edited = chunk_document(doc_of("\n\n".join(edited_paragraphs)), chunk_size=80, chunk_overlap=0)
    assert [c.chunk_id for c in edited] == [c.chunk_id for c in original]
    changed = [c.chunk_index for c, o in zip(edited, original, strict=True) if c.content_hash != o.content_hash]
    assert changed == [2]

    shortened = chunk_document(doc_of("\n\n".join(paragraphs[:3])), chunk_size=80, chunk_overlap=0)
    assert [c.chunk_id for c in shortened] == [c.chunk_id for c in original[:3]]


def test_hashes() -> None:
    chunk = chunk_document(doc_of("Café opens at 08:00."))[0]
    assert chunk.content_hash == hashlib.sha256("Café opens at 08:00.".encode()).hexdigest()
    assert content_hash("x") == hashlib.sha256(b"x").hexdigest()
    assert document_hash(b"%PDF-1.7 ...") == hashlib.sha256(b"%PDF-1.7 ...").hexdigest()


def test_functions_and_chunks_pickle_for_spark_workers() -> None:
    assert pickle.loads(pickle.dumps(chunk_document)) is chunk_document
    chunks = chunk_document(doc_of("Some text to chunk."))
    assert pickle.loads(pickle.dumps(chunks)) == chunks


def test_every_fixture_chunks_within_limits() -> None:
    for path in sorted(DOCS.rglob("*")):
        if not path.is_file() or path.name in ("empty.txt", "broken.pdf", "diagram.png"):
            continue
        doc = parse_document(str(path), path.read_bytes())
        chunks = chunk_document(doc, chunk_size=200, chunk_overlap=30)
        assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
        assert len({c.chunk_id for c in chunks}) == len(chunks)
        assert all(0 < len(c.text) <= 200 for c in chunks), path
        assert_lossless(doc, chunks)


# ------------------------------------------------------------------------------------------ properties


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def header_forms(heading: str) -> list[str]:
    """The contextual headers a heading path may become: the path, or its inner part, or a cut-off form."""
    parts = heading.split(" > ")
    forms = [" > ".join(parts[i:]) for i in range(len(parts))]
    return forms + [f[:n].rstrip() + "…" for f in forms[-1:] for n in range(1, len(f) + 1)]


def assert_lossless(doc: ParsedDocument, chunks: list[Chunk]) -> None:
    """Per section, in order: the chunks' new text (overlap removed) is the section text modulo whitespace."""
    remaining = list(chunks)
    for section in doc.sections:
        expected = squash(section.text)
        rebuilt = ""
        while rebuilt != expected:
            assert remaining and expected.startswith(rebuilt), f"section text lost or duplicated: {section}"
            chunk = remaining.pop(0)
            assert (chunk.heading, chunk.page) == (section.heading, section.page)
            assert chunk.text[: chunk.header_chars].rstrip() in ("", *header_forms(section.heading))
            rebuilt += squash(chunk.text[chunk.header_chars + chunk.overlap_chars :])
    assert remaining == []


words = st.one_of(
    st.text(alphabet="abcdefghij", min_size=1, max_size=8),
    st.text(alphabet="klmnopqrst", min_size=9, max_size=40),  # sometimes longer than the chunk
    st.sampled_from(["e.g.", "end.", "why?", "yes!", "(note)", "“quoted.”", "|", "-", "1.", "Ünïcødé"]),
)
separators = st.sampled_from([" ", " ", " ", "  ", "\n", "\n\n", "\n\n\n", " \n ", "\t"])
texts_strategy = st.lists(st.tuples(words, separators), max_size=80).map(
    lambda parts: "".join(w + s for w, s in parts)
)


@st.composite
def sizes(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, 120))
    return size, draw(st.integers(0, size - 1))


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.one_of(texts_strategy, st.text(max_size=300)), setting=sizes())
def test_split_text_properties(text: str, setting: tuple[int, int]) -> None:
    size, overlap = setting
    pieces = split_text(text, size, overlap)
    assert pieces == split_text(text, size, overlap)  # deterministic

    new_text = []
    for index, piece in enumerate(pieces):
        assert 0 < len(piece.text) <= size
        assert piece.text == text[piece.start : piece.end]
        assert piece.text == piece.text.strip()
        if index == 0:
            assert piece.overlap_chars == 0
        else:
            previous = pieces[index - 1]
            assert 0 <= piece.overlap_chars <= overlap
            if piece.overlap_chars:
                assert previous.text.endswith(piece.text[: piece.overlap_chars])
                # only from the previous chunk's own new text, so no text lands in three chunks
                assert piece.start >= previous.start + previous.overlap_chars
        new_text.append(piece.text[piece.overlap_chars :])
        assert_word_boundaries(text, piece, size)
    assert squash("".join(new_text)) == squash(text)


def assert_word_boundaries(text: str, piece: TextPiece, size: int) -> None:
    for cut in (piece.start, piece.end):
        if 0 < cut < len(text) and not text[cut - 1].isspace() and not text[cut].isspace():
            word_start = cut
            while word_start > 0 and not text[word_start - 1].isspace():
                word_start -= 1
            word_end = cut
            while word_end < len(text) and not text[word_end].isspace():
                word_end += 1
            assert word_end - word_start > size, f"mid-word cut at {cut} in {text[word_start:word_end]!r}"


@settings(max_examples=100, deadline=None, database=None)
@given(
    sections=st.lists(texts_strategy, min_size=1, max_size=4),
    setting=sizes(),
    path=st.text(min_size=1, max_size=30),
)
def test_chunk_document_properties(sections: list[str], setting: tuple[int, int], path: str) -> None:
    size, overlap = setting
    doc = ParsedDocument(
        path=path, sections=[Section(text, f"H{n}", n + 1) for n, text in enumerate(sections) if text.strip()]
    )
    chunks = chunk_document(doc, size, overlap)
    assert chunks == chunk_document(doc, size, overlap)
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert [c.chunk_id for c in chunks] == [make_chunk_id(path, i) for i in range(len(chunks))]
    assert all(c.content_hash == content_hash(c.text) and len(c.text) <= size for c in chunks)
    assert_lossless(doc, chunks)


# ------------------------------------------------------------------------------------------ token sizes


@settings(max_examples=150, deadline=None, database=None)
@given(sections=st.lists(texts_strategy, min_size=1, max_size=3), setting=sizes())
def test_token_sized_chunks_fit_the_budget_and_lose_nothing(sections: list[str], setting: tuple[int, int]) -> None:
    """Counted in (estimated) tokens, special tokens and the contextual header included."""
    from context_assistant.ingest.tokenization import EstimatedCounter, count_tokens

    counter = EstimatedCounter()
    size, overlap = setting
    size += 8  # room for the two special tokens and a header
    doc = ParsedDocument(
        path="a.md", sections=[Section(text, f"Part {n}", None) for n, text in enumerate(sections) if text.strip()]
    )
    chunks = chunk_document(doc, size, min(overlap, size - 1), counter=counter)
    for chunk in chunks:
        assert count_tokens(counter, chunk.text) + counter.special_tokens <= size
    assert_lossless(doc, chunks)


def test_fixture_chunks_fit_minilm_and_carry_their_heading_path() -> None:
    """With the real all-MiniLM-L6-v2 tokenizer: no chunk is longer than the 256 word pieces the model
    reads, and every chunk of a section with a heading starts with its path."""
    from context_assistant.ingest.tokenization import count_tokens
    from context_assistant.retrieval.tokenizer import counter_for_model

    counter = counter_for_model("all-MiniLM-L6-v2")
    if counter.name.startswith("estimate"):
        pytest.skip("the MiniLM weights package is not installed here (the lowest-versions venv has no model)")
    assert counter.window == 256
    for path in sorted(DOCS.rglob("*")):
        if not path.is_file() or path.name in ("empty.txt", "broken.pdf", "diagram.png"):
            continue
        doc = parse_document(str(path), path.read_bytes())
        chunks = chunk_document(doc, chunk_size=256, chunk_overlap=32, counter=counter)
        for chunk in chunks:
            assert count_tokens(counter, chunk.text) + 2 <= 256, (path, chunk.text)
            if chunk.heading:
                assert chunk.text.startswith(chunk.heading + "\n\n")
        assert_lossless(doc, chunks)
    small = chunk_document(
        parse_document("deployment-guide.md", (DOCS / "deployment-guide.md").read_bytes()), 64, 8, counter=counter
    )
    assert max(count_tokens(counter, c.text) for c in small) <= 62
    assert any(c.overlap_chars for c in small)


def test_fit_header_and_chunk_body() -> None:
    from context_assistant.core.passages import chunk_body
    from context_assistant.ingest.chunking import fit_header

    assert fit_header("Guide > Install > Linux", 100) == "Guide > Install > Linux"
    assert fit_header("Guide > Install > Linux", 12) == "Linux"  # outer levels go first
    assert fit_header("A very long single heading", 12) == "A very…"
    assert fit_header("", 10) == ""
    assert chunk_body("Guide > Linux\n\nRun apt.", "Guide > Linux") == "Run apt."
    assert chunk_body("Linux\n\nRun apt.", "Guide > Linux") == "Run apt."
    assert chunk_body("Run apt.", "") == "Run apt."
