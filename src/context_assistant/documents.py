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

import codecs
import io
import logging
import os
import re
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({".txt", ".md", ".pdf", ".docx", ".html", ".htm"})

HEADING_SEPARATOR = " > "

# A .docx is a zip; refuse archives that would inflate beyond this (zip bombs) before python-docx reads them.
MAX_DOCX_UNCOMPRESSED_BYTES = 256 * 1024 * 1024
# Deeper nesting than this (tables in tables, PDF bookmarks) is treated as hostile and not descended into.
_MAX_NESTING = 16


class ParseError(Exception):
    """A supported file could not be turned into text; ``str(error)`` is the human reason."""


class UnsupportedFormat(Exception):
    """The file's extension is not one we parse; callers skip and count it rather than fail."""


@dataclass(frozen=True)
class Section:
    """A run of text under one heading path, on one page (PDF) or ``None``."""

    text: str
    heading: str  # "" when none; heading path joined with " > "
    page: int | None  # 1-based page for PDFs, else None


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
# Text normalisation
# --------------------------------------------------------------------------------------------------

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


def _normalize_heading(text: str) -> str:
    return " ".join(normalize_text(text).split())


class _SectionCollector:
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
        title = _normalize_heading(title)
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
# Plain text and Markdown
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


def _parse_txt(data: bytes) -> list[Section]:
    collector = _SectionCollector()
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
    collector = _SectionCollector()
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
        "iframe", "object", "embed", "audio", "video", "map", "nav", "select", "option", "input", "textarea",
        "label", "dialog",
    }
)  # fmt: skip
# Page chrome when it frames the page (outside <main>, <article> and <section>); content inside them: an
# article's header holds its title, its aside a note, its footer the footnotes, a button an FAQ question.
# A <form> is never dropped whole: some sites wrap the entire page in one.
_HTML_CHROME = frozenset({"header", "footer", "aside", "button"})
_HTML_CONTENT = frozenset({"main", "article", "section"})
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


def _is_hidden(tag: Any, content_depth: int = 0) -> bool:
    """Hidden or page-furniture elements. Inside the page's content a hidden block is a collapsed accordion
    panel or an inactive tab (text people read after a click), so only ``aria-hidden`` drops it there."""
    attrs = tag.attrs or {}
    if str(attrs.get("aria-hidden", "")).lower() == "true":
        return True
    if str(attrs.get("role", "")).lower() in _HTML_DROP_ROLES:
        return True
    if content_depth:
        return False
    return "hidden" in attrs or bool(_HIDDEN_STYLE.search(str(attrs.get("style", ""))))


_MAX_SPAN = 1000


def _span(value: Any) -> int:
    try:
        return max(1, min(int(str(value).strip() or 1), _MAX_SPAN))
    except ValueError:
        return 1


def _is_data_table(table: Any) -> bool:
    """A table of data (not one used for page layout): no headings, lists of paragraphs or nested tables."""
    return table.find(["table", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "pre"]) is None


def _table_rows(table: Any) -> list[Any]:
    rows: list[Any] = []
    for child in table.find_all(["thead", "tbody", "tfoot", "tr"], recursive=False):
        if child.name == "tr":
            rows.append(child)
        else:
            rows.extend(child.find_all("tr", recursive=False))
    return rows


def _cell_text(cell: Any) -> str:
    from bs4 import NavigableString
    from bs4.element import PreformattedString

    parts = []
    for node in cell.descendants:
        if isinstance(node, NavigableString) and not isinstance(node, PreformattedString):
            inside = []
            for parent in node.parents:
                if parent is cell:
                    break
                inside.append(parent)
            if any(
                p.name in _HTML_DROP or str((p.attrs or {}).get("aria-hidden", "")).lower() == "true"
                for p in inside
            ):
                continue
            parts.append(str(node))
        elif getattr(node, "name", None) == "br":
            parts.append(" ")
    return markdown_cell(" ".join("".join(parts).split()))


def markdown_cell(text: str) -> str:
    """Cell text that cannot break a Markdown table row."""
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(grid: list[list[str]]) -> str:
    """Rows of cells as a Markdown table; the first row is the header (Markdown tables need one)."""
    width = max((len(row) for row in grid), default=0)
    if not width:
        return ""
    lines = []
    for index, row in enumerate(grid):
        cells = [*row, *[""] * (width - len(row))]
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append("|" + "|".join([" --- "] * width) + "|")
    return "\n".join(lines)


def expand_spans(rows: list[list[tuple[str, int, int]]]) -> list[list[str]]:
    """Lay ``(text, rowspan, colspan)`` cells out on a grid, repeating a spanning cell's text in every
    position it covers (so each row reads complete on its own, as a reader of the table sees it)."""
    grid: dict[tuple[int, int], str] = {}
    for r, cells in enumerate(rows):
        c = 0
        for text, rowspan, colspan in cells:
            while (r, c) in grid:
                c += 1
            for dr in range(min(rowspan, len(rows) - r)):
                for dc in range(colspan):
                    grid[(r + dr, c + dc)] = text
            c += colspan
    width = max((c for _, c in grid), default=-1) + 1
    return [[grid.get((r, c), "") for c in range(width)] for r in range(len(rows))]


def html_table_markdown(table: Any) -> str:
    """An HTML data table as a Markdown table with row and column spans expanded (caption first)."""
    rows = []
    for tr in _table_rows(table):
        cells = tr.find_all(["td", "th"], recursive=False)
        rows.append([(_cell_text(td), _span(td.get("rowspan")), _span(td.get("colspan"))) for td in cells])
    rows = [row for row in rows if row]
    grid = [row for row in expand_spans(rows) if any(cell for cell in row)]
    caption = table.find("caption")
    title = " ".join(caption.get_text(" ", strip=True).split()) if caption is not None else ""
    body = markdown_table(grid)
    return f"{title}\n\n{body}" if title and body else body or title


def _html_break(name: str) -> str:
    return _PARAGRAPH_MARK if name in _HTML_BLOCKS else _LINE_MARK if name in _HTML_LINES else ""


def _parse_html(data: bytes) -> list[Section]:
    """Visible text of the page (its ``<main>`` if it has one), split into sections at ``<h1>``-``<h6>``."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_decode_html(data), "html.parser")
    candidates = [soup.find("main"), soup.find(attrs={"role": "main"}), soup.body, soup]
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

    collector = _SectionCollector(_normalize_html_text)
    stack: list[tuple[Any, bool]] = [(root, True)]
    pre_depth = 0
    content_depth = 0  # inside <main>/<article>/<section>: headers, asides, footers there are content
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
            elif name in _HTML_CONTENT:
                content_depth -= 1
            elif name == "tr" and row_cells:
                row_cells.pop()
            collector.add(_html_break(name))
            continue
        if node is not root and (
            name in _HTML_DROP or (name in _HTML_CHROME and not content_depth) or _is_hidden(node, content_depth)
        ):
            continue
        if name == "table" and _is_data_table(node):
            collector.add(_PARAGRAPH_MARK + html_table_markdown(node) + _PARAGRAPH_MARK)
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
        elif name in _HTML_CONTENT:
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


_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_FOOTNOTES_RELTYPE = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/footnotes"
_ENDNOTES_RELTYPE = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/endnotes"


def _parse_docx(data: bytes) -> list[Section]:
    """Body paragraphs and tables in document order; ``Title``/``Heading N`` styles open sections.

    Tables become Markdown tables, merged cells (``gridSpan``, ``vMerge``) repeated in every grid position
    they cover. Text boxes are read where they are anchored (once: the legacy VML copy Word stores beside
    a text box is skipped). Content controls are read through (except a table of contents, which only
    repeats the headings); inserted tracked changes count as text, deleted ones do not. The text of page
    headers comes first and of page footers last (each distinct text once); footnotes and endnotes follow
    as ``[^n]: text`` lines. Comments' anchored text is body text; the comments themselves are not read.
    """
    _check_docx_container(data)
    import docx
    from docx.oxml.ns import qn

    document = docx.Document(io.BytesIO(data))
    for fallback in list(document.element.body.iter(_MC_FALLBACK)):
        fallback.getparent().remove(fallback)
    collector = _SectionCollector()
    headers, footers = _docx_page_furniture(document, qn)
    for text in headers:
        collector.add(text + "\n\n")
    for kind, element in _docx_blocks(document.element.body, qn, depth=0):
        if kind == "table":
            collector.add(_docx_table_markdown(element, qn, depth=0) + "\n\n")
            continue
        text = _docx_paragraph_text(element, qn)
        level = _docx_heading_level(element, document)
        if level is not None:
            collector.heading(level, text)
        else:
            collector.add(text + "\n\n")
    notes = _docx_notes(document, qn)
    if footers or notes:
        collector.set_heading_path("")
        for text in [*notes, *footers]:
            collector.add(text + "\n\n")
    return collector.sections()


def _docx_page_furniture(document: Any, qn: Callable[[str], str]) -> tuple[list[str], list[str]]:
    """The distinct texts of the page headers and footers of every section (first, odd and even pages)."""
    found: dict[str, list[str]] = {"header": [], "footer": []}
    for section in document.sections:
        for kind in ("header", "footer"):
            for attribute in (kind, f"first_page_{kind}", f"even_page_{kind}"):
                try:
                    part = getattr(section, attribute)
                    if part.is_linked_to_previous:
                        continue
                    element = part._element
                except Exception:  # a damaged or missing part: the body matters more
                    continue
                texts = []
                for block_kind, block in _docx_blocks(element, qn, depth=0):
                    text = (
                        _docx_table_markdown(block, qn, depth=0)
                        if block_kind == "table"
                        else _docx_paragraph_text(block, qn)
                    )
                    if text.strip():
                        texts.append(text.strip())
                joined = "\n".join(texts)
                if joined and joined not in found[kind]:
                    found[kind].append(joined)
    return found["header"], found["footer"]


def _docx_notes(document: Any, qn: Callable[[str], str]) -> list[str]:
    """Footnotes and endnotes as ``[^n]: text`` (the separator notes Word keeps are skipped)."""
    from lxml import etree

    notes: list[str] = []
    for rel in document.part.rels.values():
        if rel.reltype not in (_FOOTNOTES_RELTYPE, _ENDNOTES_RELTYPE) or rel.is_external:
            continue
        try:
            root = etree.fromstring(rel.target_part.blob, etree.XMLParser(resolve_entities=False, no_network=True))
        except Exception:
            continue
        tag = qn("w:footnote") if rel.reltype == _FOOTNOTES_RELTYPE else qn("w:endnote")
        for note in root.iter(tag):
            if note.get(qn("w:type")) in ("separator", "continuationSeparator", "continuationNotice"):
                continue
            text = " ".join(" ".join(_docx_paragraph_text(p, qn).split()) for p in note.iter(qn("w:p"))).strip()
            if text:
                notes.append(f"[^{note.get(qn('w:id'))}]: {text}")
    return notes


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
    hyphen, nested = qn("w:noBreakHyphen"), qn("w:p")
    parts: list[str] = []
    for node in paragraph.iter(text, tab, *breaks, hyphen, nested):
        if node.tag == nested:  # a paragraph of a text box anchored here: its own line
            if node is not paragraph:
                parts.append("\n")
        elif node.tag == text:
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


def _docx_table_markdown(table: Any, qn: Callable[[str], str], depth: int) -> str:
    """A Word table as a Markdown table: ``gridSpan`` repeats a cell across the columns it spans and a
    ``vMerge`` continuation repeats the cell above; a table nested in a cell is flattened into its text."""
    return markdown_table(_docx_table_grid(table, qn, depth))


def _docx_table_grid(table: Any, qn: Callable[[str], str], depth: int) -> list[list[str]]:
    if depth > _MAX_NESTING:
        return []
    grid: list[list[str]] = []
    for row in table.iterchildren(qn("w:tr")):
        cells: list[str] = []
        properties = row.find(qn("w:trPr"))
        before = properties.find(qn("w:gridBefore")) if properties is not None else None
        if before is not None:
            cells.extend([""] * _span(before.get(qn("w:val"))))
        for cell in _docx_row_cells(row, qn):
            cell_properties = cell.find(qn("w:tcPr"))
            span, merge = 1, None
            if cell_properties is not None:
                grid_span = cell_properties.find(qn("w:gridSpan"))
                span = _span(grid_span.get(qn("w:val"))) if grid_span is not None else 1
                v_merge = cell_properties.find(qn("w:vMerge"))
                merge = None if v_merge is None else (v_merge.get(qn("w:val")) or "continue")
            column = len(cells)
            if merge == "continue" and grid and column < len(grid[-1]):
                text = grid[-1][column]
            else:
                parts = []
                for kind, element in _docx_blocks(cell, qn, depth + 1):
                    if kind == "table":
                        parts.append("; ".join(" ".join(r) for r in _docx_table_grid(element, qn, depth + 1)))
                    else:
                        parts.append(_docx_paragraph_text(element, qn))
                text = markdown_cell(" ".join(parts))
            cells.extend([text] * span)
        if any(cells):
            grid.append(cells)
    return grid


def _docx_row_cells(row: Any, qn: Callable[[str], str]) -> Iterator[Any]:
    """The cells of a row, looking inside row-level content controls."""
    for child in row.iterchildren():
        if child.tag == qn("w:tc"):
            yield child
        elif child.tag == qn("w:sdt"):
            content = child.find(qn("w:sdtContent"))
            if content is not None:
                yield from (c for c in content.iterchildren(qn("w:tc")))


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
    collector = _SectionCollector()
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
        title = _normalize_heading(str(getattr(item, "title", "") or ""))
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
