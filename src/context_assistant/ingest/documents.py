"""Turn the raw bytes of a team document into normalised text sections.

Each supported format becomes a :class:`ParsedDocument`: an ordered list of :class:`Section` s, each a run
of text under one heading path (Markdown, HTML, DOCX, and PDFs that have bookmarks) and, for PDFs, on one
page. The chunker works on sections so chunks never straddle a heading or a page.

Outcomes are deliberately distinct so the ingestion job can count them:

* a supported file yields a ``ParsedDocument``;
* an unknown extension raises :class:`UnsupportedFormat` (skipped, not an error);
* a supported file that cannot be read (corrupt, encrypted, empty, no text, not really that format)
  raises :class:`ParseError` whose ``str()`` is a short human reason.

``parse_document`` is a pure, picklable module-level function: it runs inside Spark Python workers, so the
heavy parser libraries are imported lazily in the branch that needs them, and every exception a parser
library raises on hostile input is wrapped into ``ParseError`` instead of killing the worker.

Text encoding of ``.txt``/``.md`` files: a UTF-8, UTF-16 or UTF-32 byte-order mark wins; otherwise strict
UTF-8; otherwise Windows-1252 (a superset of Latin-1 for printable text, so accented Western European text
from old Windows editors reads correctly); bytes undefined in Windows-1252 fall back to Latin-1, which
never fails. Text containing NUL characters is rejected as binary (this includes UTF-16 without a BOM).
"""

from __future__ import annotations

import io
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import InvalidInput
from .docx_parser import parse_docx
from .html_parser import parse_html
from .text import (
    HEADING_SEPARATOR,
    MAX_NESTING,
    ParseError,
    Section,
    SectionCollector,
    decode_text,
    normalize_heading,
    normalize_text,
)

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({".txt", ".md", ".pdf", ".docx", ".html", ".htm"})


class UnsupportedFormat(InvalidInput):
    """The file's extension is not one we parse; callers skip and count it rather than fail."""


@dataclass(frozen=True)
class ParsedDocument:
    """The sections of one source file, in document order."""

    path: str
    sections: list[Section] = field(default_factory=list)


def extension_of(path: str) -> str:
    """Lower-cased extension including the dot ("" when none); works on paths and ``file:`` URIs."""
    return os.path.splitext(path.rstrip("/").rsplit("/", 1)[-1])[1].lower()


def is_supported(path: str) -> bool:
    """Whether ``parse_document`` knows the file's format (decided by extension only)."""
    return extension_of(path) in SUPPORTED_EXTENSIONS


def parse_document(path: str, data: bytes) -> ParsedDocument:
    """Parse ``data`` (the file's raw bytes) according to the extension of ``path``.

    Raises ``UnsupportedFormat`` for unknown extensions and ``ParseError`` (with a human reason) for files
    that cannot be read. Never lets a parser library's own exception escape.
    """
    ext = extension_of(path)
    if ext not in SUPPORTED_EXTENSIONS:
        raise UnsupportedFormat(f"unsupported file type {ext or '(no extension)'!r}")
    if not data:
        raise ParseError("empty file")
    try:
        sections = _PARSERS[ext](bytes(data))
    except ParseError:
        raise
    except Exception as error:  # hostile input makes parser libraries raise anything at all
        raise ParseError(f"not a valid {_FORMAT_NAMES[ext]} file: {_describe(error)}") from error
    if not sections:
        if ext == ".pdf":
            raise ParseError("no extractable text (scanned PDF?)")
        raise ParseError("no extractable text")
    return ParsedDocument(path=path, sections=sections)


# --------------------------------------------------------------------------------------------------
# Plain text and Markdown
# --------------------------------------------------------------------------------------------------


def _parse_txt(data: bytes) -> list[Section]:
    collector = SectionCollector(normalise=normalize_in_blocks)
    collector.add(decode_text(data))
    return collector.sections()


NORMALIZE_BLOCK_CHARS = 1 << 20


def normalize_in_blocks(text: str, block: int | None = None) -> str:
    """:func:`normalize_text` of a long plain text, one block of about ``block`` characters at a time, cut at
    a blank line (else a line break), so a 50 MB file needs a few copies of one block rather than a dozen of
    the whole text. The same result: normalisation works line by line and blank-line runs become one."""
    block = block or NORMALIZE_BLOCK_CHARS
    if len(text) <= block:
        return normalize_text(text)
    parts: list[tuple[str, str]] = []  # (normalised block, separator that followed it)
    start = 0
    while start < len(text):
        end, separator = len(text), ""
        if end - start > block:
            for cut in ("\n\n", "\n"):
                found = text.find(cut, start + block // 2, start + block)
                if found >= 0 and not text[max(start, found - 1) : found].endswith("\u00ad"):
                    end, separator = found, cut
                    break
            else:
                end = start + block  # one line longer than a block: cut it (NFC stays per character)
        parts.append((normalize_text(text[start:end]), separator))
        start = end + len(separator)
    out: list[str] = []
    for normalised, separator in parts:
        if normalised:
            out.append(normalised)
            out.append("\n\n" if separator == "\n\n" else "\n")
    return "".join(out[:-1]).strip()


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]|$)")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_NOT_SETEXT_TEXT = re.compile(r"^\s*([-*+>|#]|\d+[.)])(\s|$)")
_INLINE_MARKUP = re.compile(r"\*\*|__|`")


def _strip_front_matter(lines: list[str]) -> list[str]:
    """Drop a leading YAML front-matter block (``---`` ... ``---``): metadata, not prose."""
    if not lines or lines[0].strip() != "---":
        return lines
    for index in range(1, min(len(lines), 200)):
        if lines[index].strip() in ("---", "..."):
            return lines[index + 1 :]
    return lines


def _atx_title(rest: str) -> str:
    """Heading text without the optional closing ``#`` sequence ("## Title ##" -> "Title")."""
    title = rest.strip()
    without_closing = title.rstrip("#")
    if without_closing != title and (not without_closing or without_closing[-1] in " \t"):
        title = without_closing.strip()
    return title


def _parse_markdown(data: bytes) -> list[Section]:
    """Split Markdown into sections at ATX (``#``) and setext headings, ignoring fenced code blocks."""
    collector = SectionCollector()
    lines = _strip_front_matter(decode_text(data).replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    fence: str | None = None
    pending: list[str] = []  # lines of the current section not yet handed to the collector

    def hand_over() -> None:
        collector.add("\n".join(pending) + "\n")
        pending.clear()

    for line in lines:
        if fence is not None:
            pending.append(line)
            stripped = line.strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                fence = None
            continue
        fence_match = _FENCE.match(line)
        if fence_match:
            fence = fence_match.group(1)
            pending.append(line)
            continue
        heading_match = _ATX_HEADING.match(line)
        if heading_match:
            hand_over()
            title = _INLINE_MARKUP.sub("", _atx_title(line[heading_match.end() :]))
            collector.heading(len(heading_match.group(1)), title)
            continue
        underline = _SETEXT_UNDERLINE.match(line)
        if (
            underline
            and pending
            and pending[-1].strip()
            and (len(pending) == 1 or not pending[-2].strip())
            and not _NOT_SETEXT_TEXT.match(pending[-1])
        ):
            title = pending.pop()
            hand_over()
            collector.heading(1 if underline.group(1)[0] == "=" else 2, _INLINE_MARKUP.sub("", title))
            continue
        pending.append(line)
    hand_over()
    return collector.sections()


# --------------------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------------------


def _parse_pdf(data: bytes) -> list[Section]:
    """One section per page with text (1-based ``page``); the heading is the bookmark path in effect."""
    if b"%PDF-" not in data[:1024]:
        raise ParseError("not a valid PDF file: no %PDF header")
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    # pypdf logs repairs of damaged files as warnings; a file we cannot read gets a ParseError instead.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
    except PdfReadError as error:
        raise ParseError(f"not a valid PDF file: {_describe(error)}") from error
    if reader.is_encrypted:
        _decrypt_with_empty_password(reader)
    pages = reader.pages
    if len(pages) == 0:
        raise ParseError("not a valid PDF file: no pages")
    bookmarks = _pdf_bookmarks_by_page(reader)
    collector = SectionCollector()
    heading = ""  # the bookmark path in effect, carried across pages
    for index, page in enumerate(pages):
        try:
            raw = page.extract_text() or ""
        except Exception as error:
            raise ParseError(f"could not extract text from PDF page {index + 1}: {_describe(error)}") from error
        collector.set_page(index + 1)
        collector.set_heading_path(heading)
        on_page = bookmarks.get(index, [])
        next_bookmark = 0
        for line in normalize_text(raw, pdf=True).split("\n"):
            found = _find_bookmark(line, on_page, next_bookmark)
            if found is None:
                collector.add(line + "\n")
            else:  # the bookmarked heading line itself: start its section, keep it as metadata only
                collector.set_heading_path(on_page[found][1])
                next_bookmark = found + 1
        if on_page:
            heading = on_page[-1][1]
    return collector.sections()


def _find_bookmark(line: str, bookmarks: list[tuple[str, str]], start: int) -> int | None:
    key = _title_key(line)
    if not key:
        return None
    for index in range(start, len(bookmarks)):
        if _title_key(bookmarks[index][0]) == key:
            return index
    return None


def _title_key(title: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", title).casefold().split())


def _decrypt_with_empty_password(reader: Any) -> None:
    """Many 'encrypted' PDFs only restrict printing/copying and open with an empty user password."""
    try:
        opened = reader.decrypt("")
    except Exception as error:
        raise ParseError(f"PDF is encrypted and could not be opened: {_describe(error)}") from error
    if not opened:
        raise ParseError("PDF is encrypted (password required)")


def _pdf_bookmarks_by_page(reader: Any) -> dict[int, list[tuple[str, str]]]:
    """Bookmarks (outline entries) grouped by 0-based start page: ``[(title, heading path), ...]``.

    A page's text is split where a line equals one of its bookmark titles; a bookmark whose title is not
    found as a line still sets the heading from the next page on. Broken outlines are ignored (the text
    matters more than its headings).
    """
    by_page: dict[int, list[tuple[str, str]]] = {}
    try:
        for page_index, title, path in _pdf_outline_entries(reader, reader.outline, (), 0):
            by_page.setdefault(page_index, []).append((title, path))
    except Exception:
        return {}
    return by_page


def _pdf_outline_entries(
    reader: Any, items: Iterable[Any], parents: tuple[str, ...], depth: int
) -> Iterator[tuple[int, str, str]]:
    """Yield (page_index, title, heading path) for each bookmark, depth-first in outline order."""
    if depth > MAX_NESTING:
        return
    path = parents
    for item in items:
        if isinstance(item, list):
            yield from _pdf_outline_entries(reader, item, path, depth + 1)
            continue
        title = normalize_heading(str(getattr(item, "title", "") or ""))
        page_index = reader.get_destination_page_number(item)
        path = (*parents, title) if title else parents
        if page_index is not None and page_index >= 0 and title:
            yield page_index, title, HEADING_SEPARATOR.join(path)


def _describe(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return message[:300] if message else type(error).__name__


_PARSERS = {
    ".txt": _parse_txt,
    ".md": _parse_markdown,
    ".html": parse_html,
    ".htm": parse_html,
    ".docx": parse_docx,
    ".pdf": _parse_pdf,
}
_FORMAT_NAMES = {
    ".txt": "text",
    ".md": "Markdown",
    ".html": "HTML",
    ".htm": "HTML",
    ".docx": "DOCX",
    ".pdf": "PDF",
}
