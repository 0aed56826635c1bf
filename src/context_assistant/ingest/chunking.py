"""Split parsed documents into overlapping, size-bounded chunks for embedding and retrieval.

Rules (pure functions, no I/O, safe to call inside Spark workers):

* Sections are chunked independently, so a chunk never mixes two headings or two PDF pages.
* Inside a section, a chunk ends at the strongest boundary that fits: a paragraph break (blank line),
  else a line break that ends a sentence/clause or precedes a list item, else a sentence end (``.``,
  ``!``, ``?`` before whitespace), else any other line break (table rows), else a word boundary.
  Among boundaries of that strength the furthest one that fits wins, so chunks are as full as the
  structure allows.
* Never mid-word: the only exception is a single word longer than ``chunk_size`` (a long URL, a base64
  blob, text in a language written without spaces), which is hard-split every ``chunk_size`` characters.
* Overlap: a chunk after the first in its section starts with the last whole words (at most
  ``chunk_overlap`` characters) of the previous chunk's own new text, then the whitespace that separated
  them in the section, then its new text. ``Chunk.overlap_chars`` says how many leading characters
  repeat the previous chunk. If the overlap would force a word to be hard-split, the overlap is dropped.
* Every chunk's text is a contiguous slice of the section text and at most ``chunk_size`` characters.

Guarantee checked by the property tests: for each section, ``chunk.text[chunk.overlap_chars:]`` of its
chunks, concatenated, equals the section text up to whitespace (all whitespace removed on both sides);
``chunk.text[:overlap_chars]`` equals the end of the previous chunk's text.

Identity: ``chunk_id`` is derived from the document path and the chunk's position only, so re-chunking an
edited document reuses ids for the same positions (the content hash tells whether the text changed) and a
shortened document simply loses its tail ids.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass

from ..core.errors import InvalidInput
from .documents import ParsedDocument

DEFAULT_CHUNK_SIZE = 500
DEFAULT_CHUNK_OVERLAP = 50


@dataclass(frozen=True)
class Chunk:
    """One retrievable piece of a document, with where it came from."""

    chunk_id: str
    path: str
    chunk_index: int  # position in the document, 0-based, across all sections
    text: str
    heading: str
    page: int | None
    content_hash: str  # sha256 hex of ``text`` (UTF-8)
    overlap_chars: int = 0  # leading characters of ``text`` that repeat the end of the previous chunk


@dataclass(frozen=True)
class TextPiece:
    """A chunk of one text as offsets into it: ``text == source[start:end]``."""

    text: str
    start: int
    end: int
    overlap_chars: int


def chunk_document(
    doc: ParsedDocument, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
) -> list[Chunk]:
    """Chunk every section of ``doc`` in order; ``chunk_index`` runs across sections."""
    validate_chunking(chunk_size, chunk_overlap)
    chunks: list[Chunk] = []
    for section in doc.sections:
        for piece in split_text(section.text, chunk_size, chunk_overlap):
            index = len(chunks)
            chunks.append(
                Chunk(
                    chunk_id=make_chunk_id(doc.path, index),
                    path=doc.path,
                    chunk_index=index,
                    text=piece.text,
                    heading=section.heading,
                    page=section.page,
                    content_hash=content_hash(piece.text),
                    overlap_chars=piece.overlap_chars,
                )
            )
    return chunks


def make_chunk_id(path: str, chunk_index: int) -> str:
    """Stable id from the exact path string and position: sha256 hex of ``f"{path}\\0{chunk_index}"``."""
    return hashlib.sha256(f"{path}\0{chunk_index}".encode()).hexdigest()


def content_hash(text: str) -> str:
    """sha256 hex of the chunk text encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def document_hash(data: bytes) -> str:
    """sha256 hex of a file's raw bytes; the pipeline compares it to skip unchanged files."""
    return hashlib.sha256(data).hexdigest()


def validate_chunking(chunk_size: int, chunk_overlap: int) -> None:
    """Reject settings that cannot produce bounded, progressing chunks, with a message naming the fix."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidInput(f"chunk_size must be a positive integer (characters), got {chunk_size!r}")
    if isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int) or chunk_overlap < 0:
        raise InvalidInput(f"chunk_overlap must be a non-negative integer (characters), got {chunk_overlap!r}")
    if chunk_overlap >= chunk_size:
        raise InvalidInput(
            f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size}), "
            "otherwise chunks could not advance through the text"
        )


# Boundary strengths, strongest first. A line break only ranks above a mid-line sentence end when it
# also ends a sentence/clause or starts a list item: hard-wrapped prose (plain text, PDFs) should break at
# sentences, while table rows and list items (no punctuation) still break at lines before words.
_PARAGRAPH, _LINE_AFTER_SENTENCE, _SENTENCE, _LINE, _WORD = range(5)
_WHITESPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
_CLAUSE_END = re.compile(r"[.!?…:;][\"'”’)\]]*$")
_LIST_ITEM_START = re.compile(r"([-*+•]|\d{1,3}[.)])\s")


class _Boundaries:
    """Where a chunk may end inside one text, indexed by strength for fast "furthest that fits" lookups."""

    def __init__(self, text: str, begin: int, finish: int) -> None:
        self.ends: list[list[int]] = [[] for _ in range(_WORD + 1)]
        self.next_start: dict[int, int] = {}
        self.word_starts: list[int] = [begin]
        for match in _WHITESPACE.finditer(text, begin, finish):
            end, start = match.start(), match.end()
            newlines = match.group().count("\n")
            if newlines >= 2:
                strength = _PARAGRAPH
            elif newlines == 1:
                ends_clause = _CLAUSE_END.search(text, max(begin, end - 4), end)
                starts_item = _LIST_ITEM_START.match(text, start, finish)
                strength = _LINE_AFTER_SENTENCE if ends_clause or starts_item else _LINE
            elif _SENTENCE_END.search(text, max(begin, end - 4), end):
                strength = _SENTENCE
            else:
                strength = _WORD
            self.ends[strength].append(end)
            self.next_start[end] = start
            self.word_starts.append(start)

    def best_end(self, after: int, limit: int) -> int | None:
        """The furthest end in ``(after, limit]`` of the strongest kind available, or None."""
        for ends in self.ends:
            position = bisect.bisect_right(ends, limit) - 1
            if position >= 0 and ends[position] > after:
                return ends[position]
        return None

    def first_word_start(self, at_or_after: int) -> int | None:
        position = bisect.bisect_left(self.word_starts, at_or_after)
        return self.word_starts[position] if position < len(self.word_starts) else None


def split_text(
    text: str, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
) -> list[TextPiece]:
    """Split one section's text into pieces following the rules in the module docstring."""
    validate_chunking(chunk_size, chunk_overlap)
    stripped = text.strip()
    if not stripped:
        return []
    begin = len(text) - len(text.lstrip())
    finish = begin + len(stripped)
    boundaries = _Boundaries(text, begin, finish)
    pieces: list[TextPiece] = []
    window_start = body_start = begin
    while True:
        if finish - window_start <= chunk_size:
            pieces.append(_piece(text, window_start, body_start, finish, pieces))
            return pieces
        end = boundaries.best_end(body_start, window_start + chunk_size)
        if end is None and window_start < body_start:
            window_start = body_start  # drop the overlap rather than split a word that fits on its own
            continue
        hard_split = end is None
        if end is None:
            end = window_start + chunk_size  # a single word longer than chunk_size
        next_body = end if hard_split else boundaries.next_start[end]
        pieces.append(_piece(text, window_start, body_start, end, pieces))
        window_start = next_body
        if chunk_overlap and not hard_split:
            overlap_start = boundaries.first_word_start(max(end - chunk_overlap, body_start))
            if overlap_start is not None and overlap_start < end:
                window_start = overlap_start
        body_start = next_body


def _piece(text: str, window_start: int, body_start: int, end: int, previous: list[TextPiece]) -> TextPiece:
    overlap = 0
    if window_start < body_start and previous:
        overlap = previous[-1].end - window_start
    return TextPiece(text=text[window_start:end], start=window_start, end=end, overlap_chars=overlap)
