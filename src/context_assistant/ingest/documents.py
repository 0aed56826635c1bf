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
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import InvalidInput
from .text import (
    HEADING_SEPARATOR,
    ParseError,
    Section,
    SectionCollector,
    decode_text,
    normalize_heading,
    normalize_text,
)

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({".txt", ".md", ".pdf", ".docx", ".html", ".htm"})

# A .docx is a zip; refuse archives that would inflate beyond this (zip bombs) before python-docx reads them.
MAX_DOCX_UNCOMPRESSED_BYTES = 256 * 1024 * 1024
# Deeper nesting than this (tables in tables, PDF bookmarks) is treated as hostile and not descended into.
_MAX_NESTING = 16


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
    collector = SectionCollector()
    collector.add(decode_text(data))
    return collector.sections()


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
# HTML
# --------------------------------------------------------------------------------------------------

# Elements whose content is never visible prose (code, page furniture, controls).
_HTML_DROP = frozenset(
    {
        "script", "style", "noscript", "template", "head", "title", "meta", "link", "base", "svg", "canvas",
        "iframe", "object", "embed", "audio", "video", "map", "nav", "aside", "footer", "form", "button",
        "select", "option", "input", "textarea", "label", "dialog",
    }
)  # fmt: skip
_HTML_DROP_ROLES = frozenset(
    {"navigation", "banner", "contentinfo", "search", "complementary", "menu", "menubar", "dialog"}
)
_HTML_BLOCKS = frozenset(
    {
        "p", "div", "section", "article", "main", "header", "blockquote", "pre", "figure", "figcaption",
        "address", "ul", "ol", "dl", "table", "thead", "tbody", "tfoot", "caption", "hr", "details",
        "summary", "body", "html",
    }
)  # fmt: skip
_HTML_LINES = frozenset({"li", "dt", "dd", "tr", "br"})
_HTML_HEADINGS = {f"h{level}": level for level in range(1, 7)}
# Bounded repetitions below: unbounded \s* runs next to each other can backtrack quadratically.
_HIDDEN_STYLE = re.compile(r"display\s{0,10}:\s{0,10}none|visibility\s{0,10}:\s{0,10}hidden", re.IGNORECASE)
_META_CHARSET = re.compile(
    rb"""<meta[^>]{0,200}?charset\s{0,10}=\s{0,10}["']?\s{0,10}([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE
)
_WHATWG_CP1252 = {"iso-8859-1", "iso8859-1", "latin1", "latin-1", "us-ascii", "ascii"}
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")
# Block boundaries are emitted as markers and resolved at the end, so that a closing </tr> followed by an
# opening <tr> (with indentation between) is one line break, not two: the strongest marker in a run wins.
_PARAGRAPH_MARK, _LINE_MARK = "\ue000", "\ue001"
_MARK_CHARS = _PARAGRAPH_MARK + _LINE_MARK
_MARKS = str.maketrans("", "", _MARK_CHARS)
# Starts at a marker so matching stays linear; spaces before a marker are stripped as line ends later.
_MARK_RUN = re.compile(rf"[{_MARK_CHARS}][\s{_MARK_CHARS}]*")


def _normalize_html_text(text: str) -> str:
    text = _MARK_RUN.sub(lambda run: "\n\n" if _PARAGRAPH_MARK in run.group() else "\n", text)
    return normalize_text(text)


def _decode_html(data: bytes) -> str:
    declared = _META_CHARSET.search(data[:4096])
    encoding = declared.group(1).decode("ascii").lower() if declared else None
    if encoding in _WHATWG_CP1252:
        encoding = "cp1252"  # what browsers do, per the WHATWG encoding standard
    return decode_text(data, declared_encoding=encoding)


def _is_hidden(tag: Any) -> bool:
    attrs = tag.attrs or {}
    if "hidden" in attrs or str(attrs.get("aria-hidden", "")).lower() == "true":
        return True
    if str(attrs.get("role", "")).lower() in _HTML_DROP_ROLES:
        return True
    return bool(_HIDDEN_STYLE.search(str(attrs.get("style", ""))))


def _html_break(name: str) -> str:
    return _PARAGRAPH_MARK if name in _HTML_BLOCKS else _LINE_MARK if name in _HTML_LINES else ""


def _parse_html(data: bytes) -> list[Section]:
    """Visible text of the page (its ``<main>`` if it has one), split into sections at ``<h1>``-``<h6>``."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode_html(data), "html.parser")
    candidates = [soup.find("main"), soup.find(None, attrs={"role": "main"}), soup.body, soup]
    for root in candidates:
        if root is not None:
            sections = _html_sections(root)
            if sections:
                return sections
    return []


def _html_sections(root: Any) -> list[Section]:
    """Walk the tree iteratively (hostile pages nest deeper than Python's recursion limit)."""
    from bs4 import NavigableString, Tag
    from bs4.element import PreformattedString

    collector = SectionCollector(_normalize_html_text)
    stack: list[tuple[Any, bool]] = [(root, True)]
    pre_depth = 0
    content_depth = 0  # inside <main>/<article>, where a <header> holds the article's title, not site chrome
    row_cells: list[int] = []
    while stack:
        node, entering = stack.pop()
        if isinstance(node, NavigableString):
            if not isinstance(node, PreformattedString):  # comments, doctype, CDATA, processing instructions
                text = str(node).translate(_MARKS)
                collector.add(text if pre_depth else _HTML_SPACE.sub(" ", text))
            continue
        if not isinstance(node, Tag):
            continue
        name = (node.name or "").lower()
        if not entering:
            if name == "pre":
                pre_depth -= 1
            elif name in ("main", "article"):
                content_depth -= 1
            elif name == "tr" and row_cells:
                row_cells.pop()
            collector.add(_html_break(name))
            continue
        if node is not root and (
            name in _HTML_DROP or (name == "header" and not content_depth) or _is_hidden(node)
        ):
            continue
        if name in _HTML_HEADINGS:
            collector.heading(_HTML_HEADINGS[name], node.get_text(" ", strip=True))
            continue
        if name == "br":
            collector.add(_LINE_MARK)
            continue
        if name in ("td", "th") and row_cells:
            if row_cells[-1]:
                collector.add(" | ")
            row_cells[-1] += 1
        elif name == "tr":
            row_cells.append(0)
        elif name == "pre":
            pre_depth += 1
        elif name in ("main", "article"):
            content_depth += 1
        collector.add(_html_break(name))
        stack.append((node, False))
        stack.extend((child, True) for child in reversed(node.contents))
    return collector.sections()


# --------------------------------------------------------------------------------------------------
# DOCX
# --------------------------------------------------------------------------------------------------

_DOCX_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)


def _check_docx_container(data: bytes) -> None:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ParseError("not a valid DOCX file: not a zip archive (an old .doc renamed?)")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        if "word/document.xml" not in names and "[Content_Types].xml" not in names:
            raise ParseError("not a valid DOCX file: zip archive without a Word document inside")
        if sum(info.file_size for info in archive.infolist()) > MAX_DOCX_UNCOMPRESSED_BYTES:
            raise ParseError(f"DOCX would expand to more than {_human_size(MAX_DOCX_UNCOMPRESSED_BYTES)}; refused")


def _parse_docx(data: bytes) -> list[Section]:
    """Body paragraphs and tables in document order; ``Title``/``Heading N`` styles open sections.

    Tables become one line per row with cells joined by " | " (a merged cell once per row). Content
    controls are read through (except a table of contents, which only repeats the headings); inserted
    tracked changes count as text, deleted ones do not. Headers, footers and comments are page furniture
    and are skipped.
    """
    _check_docx_container(data)
    import docx
    from docx.oxml.ns import qn

    document = docx.Document(io.BytesIO(data))
    collector = SectionCollector()
    for kind, element in _docx_blocks(document.element.body, qn, depth=0):
        if kind == "table":
            collector.add(_docx_table_text(element, document, qn, depth=0) + "\n\n")
            continue
        text = _docx_paragraph_text(element, qn)
        level = _docx_heading_level(element, document)
        if level is not None:
            collector.heading(level, text)
        else:
            collector.add(text + "\n\n")
    return collector.sections()


def _docx_blocks(container: Any, qn: Callable[[str], str], depth: int) -> Iterator[tuple[str, Any]]:
    """Paragraph and table elements of a body or cell, in order, looking inside content controls."""
    paragraph, table, control = qn("w:p"), qn("w:tbl"), qn("w:sdt")
    for child in container.iterchildren():
        if child.tag == paragraph:
            yield "paragraph", child
        elif child.tag == table:
            yield "table", child
        elif child.tag == control and depth < _MAX_NESTING and not _docx_is_toc(child, qn):
            content = child.find(qn("w:sdtContent"))
            if content is not None:
                yield from _docx_blocks(content, qn, depth + 1)


def _docx_is_toc(control: Any, qn: Callable[[str], str]) -> bool:
    gallery = control.find(f"{qn('w:sdtPr')}/{qn('w:docPartObj')}/{qn('w:docPartGallery')}")
    return gallery is not None and "contents" in str(gallery.get(qn("w:val"), "")).lower()


def _docx_paragraph_text(paragraph: Any, qn: Callable[[str], str]) -> str:
    """All visible text of a paragraph: runs, hyperlinks, fields' results, inline controls, insertions."""
    text, tab, breaks = qn("w:t"), qn("w:tab"), (qn("w:br"), qn("w:cr"))
    hyphen = qn("w:noBreakHyphen")
    parts: list[str] = []
    for node in paragraph.iter(text, tab, *breaks, hyphen):
        if node.tag == text:
            parts.append(node.text or "")
        elif node.tag == tab:
            parts.append("\t")
        elif node.tag == hyphen:
            parts.append("-")
        else:
            parts.append("\n")
    return "".join(parts)


def _docx_heading_level(paragraph: Any, document: Any) -> int | None:
    from docx.text.paragraph import Paragraph

    style = Paragraph(paragraph, document).style
    name = ((style.name if style is not None else "") or "").strip()
    if name.lower() == "title":
        return 0
    match = _DOCX_HEADING_STYLE.match(name)
    return int(match.group(1)) if match else None


def _docx_table_text(table: Any, document: Any, qn: Callable[[str], str], depth: int) -> str:
    from docx.table import Table

    if depth > _MAX_NESTING:
        return ""
    rows: list[str] = []
    for row in Table(table, document).rows:
        cells: list[str] = []
        seen: list[Any] = []
        for cell in row.cells:
            if any(cell._tc is done for done in seen):  # a merged cell is returned once per grid column
                continue
            seen.append(cell._tc)
            parts = (
                _docx_table_text(element, document, qn, depth + 1)
                if kind == "table"
                else _docx_paragraph_text(element, qn)
                for kind, element in _docx_blocks(cell._tc, qn, depth + 1)
            )
            text = " ".join(" ".join(parts).split())
            if text:
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return "\n".join(rows)


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
    if depth > _MAX_NESTING:
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


def _human_size(size: int) -> str:
    return f"{size // (1024 * 1024)} MB" if size >= 1024 * 1024 else f"{size // 1024} KB"


def _describe(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return message[:300] if message else type(error).__name__


_PARSERS = {
    ".txt": _parse_txt,
    ".md": _parse_markdown,
    ".html": _parse_html,
    ".htm": _parse_html,
    ".docx": _parse_docx,
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
