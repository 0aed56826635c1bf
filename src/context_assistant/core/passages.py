"""The text format of a stored passage, shared by the part that writes it and the parts that read it.

A chunk of a section with headings starts with its heading path (``Guide > Install > Linux``, the levels
joined by :data:`HEADING_SEPARATOR`) and a blank line (:data:`HEADER_SEPARATOR`): a contextual chunk header,
so the heading is stored, keyword-indexed and embedded with the text. Ingest writes it
(:mod:`context_assistant.ingest.chunking`); a reader that shows the heading on its own (the offline model's
quotes) takes it off with :func:`chunk_body`. Here because both sides only share ``core``.
"""

from __future__ import annotations

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
