"""The building blocks every document parser shares: sections, text normalisation, decoding, the parse error.

A parser (one per format, in :mod:`context_assistant.ingest.documents`) feeds raw text and headings into a
:class:`SectionCollector`, which normalises the text (:func:`normalize_text`) and emits one :class:`Section`
per run of text under one heading path and page.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from ..core.errors import InvalidInput
from ..core.passages import HEADING_SEPARATOR

# Deeper nesting than this (tables in tables, PDF bookmarks) is treated as hostile and not descended into.
MAX_NESTING = 16


class ParseError(InvalidInput):
    """A supported file could not be turned into text; ``str(error)`` is the human reason."""


@dataclass(frozen=True)
class Section:
    """A run of text under one heading path, on one page (PDF) or ``None``."""

    text: str
    heading: str  # "" when none; heading path joined with " > "
    page: int | None  # 1-based page for PDFs, else None


_LIGATURES = str.maketrans({"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st"})
# Characters that carry no visible text: soft hyphen, zero-width space/no-break, word joiner, BOM.
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u2060\ufeff"))
_LINE_BREAKS = re.compile(r"\r\n|[\r\v\f\x1c\x1d\x1e\x85\u2028]")
_PARAGRAPH_BREAKS = re.compile("\u2029")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")  # any whitespace except newline, incl. NBSP and em spaces
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
_SOFT_HYPHEN_BREAK = re.compile(r"\u00ad ?\n ?")  # runs on whitespace already collapsed to one space
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str, *, pdf: bool = False) -> str:
    """Normalise extracted text so equal content compares equal and chunks cleanly.

    Unicode NFC for authored formats (keeps symbols such as "²" or "™" as written); NFKC for PDFs, whose
    extracted text is full of compatibility forms (ligatures, full-width and presentation forms). Ligatures
    are expanded for every format. PDFs additionally get hyphenated line breaks joined
    ("informa-\\ntion" -> "information"; a capital after the hyphen keeps it: "Jean-\\nPierre" ->
    "Jean-Pierre") and wrapped lines reflowed into paragraphs. Whitespace: line breaks unified to "\\n",
    runs of other whitespace collapsed to one space, lines stripped, at most one blank line in a row
    (a blank line is the paragraph separator the chunker splits on).
    """
    text = unicodedata.normalize("NFKC" if pdf else "NFC", text).translate(_LIGATURES)
    text = _PARAGRAPH_BREAKS.sub("\n\n", _LINE_BREAKS.sub("\n", text))
    text = _HORIZONTAL_SPACE.sub(" ", _CONTROL.sub("", text))
    text = _SOFT_HYPHEN_BREAK.sub("", text).translate(_INVISIBLE)
    lines = [line.strip() for line in text.split("\n")]
    if pdf:
        lines = _reflow_lines(lines)
    return _MANY_BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


_LIST_ITEM = re.compile(r"^([-•*▪◦–]|\d{1,3}[.)]|[a-z][.)])\s")
_ENDS_WITH_HYPHENATION = re.compile(r"[^\W\d_][-\u2010]$")
_ENDS_CLAUSE = ".!?:;"


def _reflow_lines(lines: list[str]) -> list[str]:
    """Join PDF lines that are mere wraps of one paragraph, so chunks break at sentences, not at wraps.

    A line ending in a hyphenated word joins the next line when that starts with a letter: without the
    hyphen before a lower-case letter ("informa-" + "tion"), keeping it before a capital ("Jean-" +
    "Pierre"). Otherwise a line break is kept when the line ends a sentence/clause, is noticeably shorter
    than the page's full-width lines (end of paragraph, heading, table cell), or the next line starts a
    list item.
    """
    lengths = sorted(len(line) for line in lines if line)
    if not lengths:
        return lines
    full_width = lengths[int(len(lengths) * 0.9) - 1 if len(lengths) >= 10 else -1]
    out: list[str] = []
    last_line_length = 0  # length of the physical line that ends out[-1]
    for line in lines:
        previous = out[-1] if out else ""
        if previous and line and _ENDS_WITH_HYPHENATION.search(previous) and line[0].isalpha():
            out[-1] = previous[:-1] + line if line[0].islower() else previous + line
        elif (
            previous
            and line
            and previous[-1] not in _ENDS_CLAUSE
            and last_line_length >= 0.75 * full_width
            and not _LIST_ITEM.match(line)
        ):
            out[-1] = f"{previous} {line}"
        else:
            out.append(line)
        last_line_length = len(line)
    return out


def normalize_heading(text: str) -> str:
    return " ".join(normalize_text(text).split())


class SectionCollector:
    """Accumulates text under the current heading path/page and emits non-empty normalised sections."""

    def __init__(self, normalise: Callable[[str], str] = normalize_text) -> None:
        self._normalise = normalise
        self._sections: list[Section] = []
        self._parts: list[str] = []
        self._headings: list[tuple[int, str]] = []
        self._page: int | None = None

    def add(self, text: str) -> None:
        self._parts.append(text)

    def heading(self, level: int, title: str) -> None:
        """Start a new section under ``title``, which nests under every open heading of a lower level."""
        title = normalize_heading(title)
        if not title:  # an empty heading element is not a boundary worth a section
            return
        self.flush()
        while self._headings and self._headings[-1][0] >= level:
            self._headings.pop()
        self._headings.append((level, title))

    def set_heading_path(self, path: str) -> None:
        self.flush()
        self._headings = [(0, path)] if path else []

    def set_page(self, page: int | None) -> None:
        self.flush()
        self._page = page

    def flush(self) -> None:
        text = self._normalise("".join(self._parts))
        self._parts = []
        if text:
            heading = HEADING_SEPARATOR.join(title for _, title in self._headings)
            self._sections.append(Section(text=text, heading=heading, page=self._page))

    def sections(self) -> list[Section]:
        self.flush()
        return self._sections


# --------------------------------------------------------------------------------------------------
# Decoding text files
# --------------------------------------------------------------------------------------------------

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode_text(data: bytes, declared_encoding: str | None = None) -> str:
    """Decode text bytes: BOM, else a declared encoding, else strict UTF-8, else cp1252, else Latin-1.

    Raises ``ParseError`` for data that is evidently binary (NUL characters after decoding).
    """
    text: str | None = None
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = data[len(bom) :].decode(encoding, errors="replace")
            break
    if text is None and declared_encoding:
        try:
            text = data.decode(declared_encoding)
        except (LookupError, UnicodeDecodeError):
            text = None
    if text is None:
        for encoding in ("utf-8", "cp1252", "latin-1"):
            try:
                text = data.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
    assert text is not None  # latin-1 decodes every byte string
    if "\x00" in text:
        raise ParseError("binary data, not text (NUL bytes; UTF-16 needs a byte-order mark)")
    return text


def human_size(size: int) -> str:
    """A file size for an error message: whole MB, or KB below one MB."""
    return f"{size // (1024 * 1024)} MB" if size >= 1024 * 1024 else f"{size // 1024} KB"
