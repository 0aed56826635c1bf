"""The text format of a stored passage, shared by the part that writes it and the parts that read it.

A chunk of a section with headings starts with its heading path (``Guide > Install > Linux``, the levels
joined by :data:`HEADING_SEPARATOR`) and a blank line (:data:`HEADER_SEPARATOR`): a contextual chunk header,
so the heading is stored, keyword-indexed and embedded with the text. Ingest writes it
(:mod:`context_assistant.ingest.chunking`); a reader that shows the heading on its own (the offline model's
quotes) takes it off with :func:`chunk_body`. Here because both sides only share ``core``; so is the one rule
for which part of a passage to quote for a question (:func:`best_excerpt`: the offline model's answers and
``search``'s hit lines).
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Words too common to tell which sentence answers the question (words under 3 letters never count).
_STOPWORDS = frozenset(
    _WORD.findall(
        "and are can does for from has have how into its our than that the their them then there these they "
        "this was what when where which who why will with you your"
    )
)

HEADING_SEPARATOR = " > "
HEADER_SEPARATOR = "\n\n"


def chunk_body(text: str, heading: str) -> str:
    """A chunk's text without its contextual header (for displays that show the heading separately).

    The header may be the whole heading path or its inner levels only (long paths lose their outer levels
    first when chunks are cut), so each suffix of the path is tried."""
    for candidate in (heading, *_header_suffixes(heading)):
        if candidate and text.startswith(candidate + HEADER_SEPARATOR):
            return text[len(candidate) + len(HEADER_SEPARATOR) :]
    return text


def _header_suffixes(heading: str) -> list[str]:
    parts = heading.split(HEADING_SEPARATOR) if heading else []
    return [HEADING_SEPARATOR.join(parts[i:]) for i in range(1, len(parts))]


def question_terms(text: str) -> set[str]:
    """The words of ``text`` that can tell sentences apart (lower case, 3+ letters, no common words)."""
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOPWORDS}


def best_excerpt(text: str, terms: set[str], limit: int) -> str:
    """The passage's sentence sharing most words with the question (``terms``: :func:`question_terms`), with
    the sentences after it that share some too, in their order, within ``limit`` characters; the passage's
    start when no sentence shares a word."""
    flat = " ".join(text.split())
    sentences = [s for s in _SENTENCE_END.split(flat) if s]
    if not sentences:
        return ""
    scored = [(len(terms & question_terms(s)), -i) for i, s in enumerate(sentences)]
    best = max(range(len(sentences)), key=lambda i: scored[i])
    if scored[best][0] == 0:
        return shorten(flat, limit)
    chosen = sentences[best]
    following = best + 1
    while following < len(sentences) and len(chosen) + 1 + len(sentences[following]) <= limit:
        if not terms & question_terms(sentences[following]):
            break
        chosen += " " + sentences[following]
        following += 1
    return shorten(chosen, limit)


def shorten(text: str, limit: int) -> str:
    """``text`` cut at a word boundary within ``limit`` characters, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(",;:") + "…"
