"""Split parsed documents into overlapping, size-bounded chunks for embedding and retrieval.

Sizes are counted in the embedding model's tokens when a
:class:`~context_assistant.ingest.tokenization.TokenCounter` is given (what the pipeline does:
``rag.chunk_size`` is tokens), else in characters. Below, "``chunk_size``
units" means whichever applies.

Contextual chunk headers: a chunk of a section that has a heading path starts with that path
(``Deployment Guide > Rollback``) and a blank line, so the heading is part of the stored, keyword-indexed and
embedded text of every chunk of the section, not only a column. The header counts towards ``chunk_size``
(long paths lose their outer levels first, so the header never takes more than a quarter of a chunk);
``Chunk.header_chars`` says how long it is. With a token counter, the model's special tokens
(``[CLS]``/``[SEP]``) count too, so a chunk is never longer than what the model reads.

Rules (pure functions, no I/O, safe to call inside Spark workers):

* Sections are chunked independently, so a chunk never mixes two headings or two PDF pages.
* Inside a section, a chunk ends at the strongest boundary that fits: a paragraph break (blank line),
  else a line break that ends a sentence/clause or precedes a list item, else a sentence end (``.``,
  ``!``, ``?`` before whitespace), else any other line break (table rows), else a word boundary.
  Among boundaries of that strength the furthest one that fits wins, so chunks are as full as the
  structure allows.
* Never mid-word: the only exception is a single word longer than ``chunk_size`` (a long URL, a base64
  blob, text in a language written without spaces), which is hard-split every ``chunk_size`` units (at a
  token boundary when counting tokens).
* Overlap: a chunk after the first in its section starts with the last whole words (at most
  ``chunk_overlap`` characters) of the previous chunk's own new text, then the whitespace that separated
  them in the section, then its new text. ``Chunk.overlap_chars`` says how many leading characters
  repeat the previous chunk. If the overlap would force a word to be hard-split, the overlap is dropped.
* Every piece (a chunk's text after its header) is a contiguous slice of the section text, and the whole
  chunk text is at most ``chunk_size`` units.
* A section longer than :data:`WINDOW_CHARS` characters is chunked window by window
  (:func:`split_long_text`), in bounded memory; a window ends at a paragraph break where it can.

Guarantee checked by the property tests: for each section, ``chunk.text[chunk.header_chars +
chunk.overlap_chars:]`` of its chunks, concatenated, equals the section text up to whitespace (all
whitespace removed on both sides); the overlap equals the end of the previous chunk's text.

Identity: ``chunk_id`` is derived from the document path and the chunk's position only, so re-chunking an
edited document reuses ids for the same positions (the content hash tells whether the text changed) and a
shortened document simply loses its tail ids.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import InvalidInput
from ..core.passages import HEADER_SEPARATOR, HEADING_SEPARATOR
from .documents import ParsedDocument

if TYPE_CHECKING:
    from .tokenization import TokenCounter

DEFAULT_CHUNK_SIZE = 256  # tokens of the embedding model (all-MiniLM-L6-v2 reads 256)
DEFAULT_CHUNK_OVERLAP = 32
MAX_HEADER_SHARE = 4  # a contextual header takes at most 1/4 of a chunk


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
    overlap_chars: int = 0  # characters after the header that repeat the end of the previous chunk
    header_chars: int = 0  # leading characters of ``text`` that are the contextual header (path + blank line)


@dataclass(frozen=True)
class TextPiece:
    """A chunk of one text as offsets into it: ``text == source[start:end]``."""

    text: str
    start: int
    end: int
    overlap_chars: int


def chunk_document(
    doc: ParsedDocument,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    counter: TokenCounter | None = None,
) -> list[Chunk]:
    """Chunk every section of ``doc`` in order; ``chunk_index`` runs across sections. Sizes are tokens of
    ``counter`` (special tokens included), or characters without one."""
    return list(iter_chunks(doc, chunk_size, chunk_overlap, counter))


def iter_chunks(
    doc: ParsedDocument,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    counter: TokenCounter | None = None,
) -> Iterator[Chunk]:
    """:func:`chunk_document` one chunk at a time, so a big document's chunks can leave before the rest are
    cut (the ingest streams them to Spark in bounded groups). Settings are checked before the first chunk."""
    validate_chunking(chunk_size, chunk_overlap)
    return _iter_chunks(doc, chunk_size, chunk_overlap, counter)


def _iter_chunks(
    doc: ParsedDocument, chunk_size: int, chunk_overlap: int, counter: TokenCounter | None
) -> Iterator[Chunk]:
    special = counter.special_tokens if counter is not None else 0
    index = 0
    for section in doc.sections:
        header = fit_header(section.heading, max(1, (chunk_size - special) // MAX_HEADER_SHARE), counter)
        prefix = header + HEADER_SEPARATOR if header else ""
        budget = chunk_size - special - _measure(prefix, counter)
        budget = max(budget, 1)
        overlap = min(chunk_overlap, budget - 1)
        for piece in split_long_text(section.text, budget, overlap, counter=counter, window=WINDOW_CHARS):
            text = prefix + piece.text
            yield Chunk(
                chunk_id=make_chunk_id(doc.path, index),
                path=doc.path,
                chunk_index=index,
                text=text,
                heading=section.heading,
                page=section.page,
                content_hash=content_hash(text),
                overlap_chars=piece.overlap_chars,
                header_chars=len(prefix),
            )
            index += 1


def _measure(text: str, counter: TokenCounter | None) -> int:
    if counter is None:
        return len(text)
    return len(counter.token_starts(text)) if text else 0


def fit_header(heading: str, limit: int, counter: TokenCounter | None = None) -> str:
    """The heading path as a chunk header within ``limit`` units: outer levels are dropped first; a single
    heading that is still too long is cut at a word (or token) boundary and ends with "…"."""
    heading = " ".join(heading.split())
    if not heading:
        return ""
    parts = heading.split(HEADING_SEPARATOR)
    while parts:
        candidate = HEADING_SEPARATOR.join(parts)
        if _measure(candidate + HEADER_SEPARATOR, counter) <= limit:
            return candidate
        if len(parts) == 1:
            break
        parts = parts[1:]
    last = parts[-1]
    if counter is None:
        room = max(0, limit - len(HEADER_SEPARATOR) - 1)
        cut = last[:room].rsplit(" ", 1)[0] if " " in last[:room] else last[:room]
    else:
        starts = counter.token_starts(last)
        keep = max(0, limit - _measure(HEADER_SEPARATOR, counter) - 1)
        cut = last[: starts[keep]] if keep < len(starts) else last
    cut = cut.rstrip()
    return cut + "…" if cut else ""


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
        raise InvalidInput(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int) or chunk_overlap < 0:
        raise InvalidInput(f"chunk_overlap must be a non-negative integer, got {chunk_overlap!r}")
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


class _Characters:
    """Sizes in characters: a chunk ``[start, end)`` costs ``end - start``."""

    def __init__(self, finish: int) -> None:
        self.finish = finish

    def limit(self, start: int, budget: int) -> int:
        """The furthest end such that ``[start, end)`` costs at most ``budget``."""
        return min(self.finish, start + budget)

    def back(self, end: int, amount: int) -> int:
        """Where a stretch of ``amount`` units ending at ``end`` starts."""
        return end - amount


class _Tokens:
    """Sizes in tokens: a chunk ``[start, end)`` costs the number of tokens starting inside it. Chunks end at
    whitespace, where no token straddles, so this is exactly what the tokenizer sees for that slice."""

    def __init__(self, text: str, counter: TokenCounter, finish: int) -> None:
        self.starts = counter.token_starts(text)
        self.finish = finish

    def limit(self, start: int, budget: int) -> int:
        first = bisect.bisect_left(self.starts, start)
        if first + budget >= len(self.starts):
            return self.finish
        return self.starts[first + budget]

    def back(self, end: int, amount: int) -> int:
        last = bisect.bisect_left(self.starts, end)
        return self.starts[max(0, last - amount)] if self.starts else end


def split_text(
    text: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    *,
    counter: TokenCounter | None = None,
) -> list[TextPiece]:
    """Split one section's text into pieces following the rules in the module docstring (sizes in tokens of
    ``counter``, else in characters; no header, no special tokens: the caller's budget)."""
    validate_chunking(chunk_size, chunk_overlap)
    stripped = text.strip()
    if not stripped:
        return []
    begin = len(text) - len(text.lstrip())
    finish = begin + len(stripped)
    measure: _Characters | _Tokens = _Characters(finish) if counter is None else _Tokens(text, counter, finish)
    boundaries = _Boundaries(text, begin, finish)
    pieces: list[TextPiece] = []
    window_start = body_start = begin
    while True:
        limit = measure.limit(window_start, chunk_size)
        if limit >= finish:
            pieces.append(_piece(text, window_start, body_start, finish, pieces))
            return pieces
        end = boundaries.best_end(body_start, limit)
        if end is None and window_start < body_start:
            window_start = body_start  # drop the overlap rather than split a word that fits on its own
            continue
        hard_split = end is None
        if end is None:
            end = max(limit, window_start + 1)  # a single word longer than chunk_size (split at a token)
        next_body = end if hard_split else boundaries.next_start[end]
        pieces.append(_piece(text, window_start, body_start, end, pieces))
        window_start = next_body
        if chunk_overlap and not hard_split:
            overlap_start = boundaries.first_word_start(max(measure.back(end, chunk_overlap), body_start))
            if overlap_start is not None and overlap_start < end:
                window_start = overlap_start
        body_start = next_body


WINDOW_CHARS = 200_000  # sections longer than this are chunked window by window (bounded memory)
_WINDOW_CUTS = ("\n\n", "\n", " ")


def split_long_text(
    text: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    *,
    counter: TokenCounter | None = None,
    window: int = WINDOW_CHARS,
) -> Iterator[TextPiece]:
    """:func:`split_text` in bounded working memory: a section longer than ``window`` characters (a 50 MB
    plain-text file is one section) is cut into windows at a paragraph break (else a line break, else a
    space) and each window is split on its own, so the tokenizer's offsets and the boundary index only ever
    cover one window, not the whole file (which took 150 bytes of memory per byte of text). Pieces are the
    same as :func:`split_text`'s inside a window; a window's first piece has no overlap. Offsets are into
    ``text``."""
    start = 0
    while start < len(text):
        end = len(text)
        if end - start > window:
            end = start + window
            for cut in _WINDOW_CUTS:
                found = text.rfind(cut, start + window // 2, start + window)
                if found > start:
                    end = found + len(cut)
                    break
        for piece in split_text(text[start:end], chunk_size, chunk_overlap, counter=counter):
            yield TextPiece(piece.text, piece.start + start, piece.end + start, piece.overlap_chars)
        start = end


def _piece(text: str, window_start: int, body_start: int, end: int, previous: list[TextPiece]) -> TextPiece:
    overlap = 0
    if window_start < body_start and previous:
        overlap = previous[-1].end - window_start
    return TextPiece(text=text[window_start:end], start=window_start, end=end, overlap_chars=overlap)
