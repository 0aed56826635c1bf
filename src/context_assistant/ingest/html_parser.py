"""HTML pages as sections: the visible text of the page's content, split at ``<h1>``-``<h6>``.

Page chrome (navigation, banners, scripts, hidden blocks) is left out when it frames the page; inside the
page's content (``<main>``, ``<article>``, ``<section>``) headers, asides, footers, buttons and collapsed
panels are content and kept. Data tables become Markdown tables with spans expanded
(:mod:`context_assistant.ingest.markdown_tables`).
"""

from __future__ import annotations

import re
from typing import Any

from .markdown_tables import cell_span, expand_spans, markdown_cell, markdown_table
from .text import Section, SectionCollector, decode_text, normalize_text

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


def html_table_markdown(table: Any) -> str:
    """An HTML data table as a Markdown table with row and column spans expanded (caption first)."""
    rows = []
    for tr in _table_rows(table):
        cells = tr.find_all(["td", "th"], recursive=False)
        rows.append([(_cell_text(td), cell_span(td.get("rowspan")), cell_span(td.get("colspan"))) for td in cells])
    rows = [row for row in rows if row]
    grid = [row for row in expand_spans(rows) if any(cell for cell in row)]
    caption = table.find("caption")
    title = " ".join(caption.get_text(" ", strip=True).split()) if caption is not None else ""
    body = markdown_table(grid)
    return f"{title}\n\n{body}" if title and body else body or title


def _html_break(name: str) -> str:
    return _PARAGRAPH_MARK if name in _HTML_BLOCKS else _LINE_MARK if name in _HTML_LINES else ""


def parse_html(data: bytes) -> list[Section]:
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
