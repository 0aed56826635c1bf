"""Word (DOCX) files as sections: body paragraphs and tables in document order, ``Title``/``Heading N`` styles
opening sections, page headers and footers, footnotes and endnotes, and text boxes (see :func:`parse_docx`).
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

from .markdown_tables import cell_span, markdown_cell, markdown_table
from .text import MAX_NESTING, ParseError, Section, SectionCollector, human_size

# A .docx is a zip; refuse archives that would inflate beyond this (zip bombs) before python-docx reads them,
# judged from the zip's directory (zipfile never inflates a member past the size the directory declares).
MAX_DOCX_UNCOMPRESSED_BYTES = 256 * 1024 * 1024
# ... or that inflate more than this many times their size: Word's XML compresses 5-20x; a 174 KB file that
# expands to 95 MB of XML (550x) took 20 minutes and 2.3 GB to parse. Archives expanding to less than
# _RATIO_FLOOR are never refused by ratio (a tiny, very repetitive document harms nothing).
MAX_DOCX_EXPANSION_RATIO = 100
_RATIO_FLOOR = 8 * 1024 * 1024

_DOCX_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)


def _check_docx_container(data: bytes) -> None:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ParseError("not a valid DOCX file: not a zip archive (an old .doc renamed?)")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        if "word/document.xml" not in names and "[Content_Types].xml" not in names:
            raise ParseError("not a valid DOCX file: zip archive without a Word document inside")
        expanded = sum(info.file_size for info in archive.infolist())
        if expanded > MAX_DOCX_UNCOMPRESSED_BYTES:
            raise ParseError(f"DOCX would expand to more than {human_size(MAX_DOCX_UNCOMPRESSED_BYTES)}; refused")
        if expanded > _RATIO_FLOOR and expanded > MAX_DOCX_EXPANSION_RATIO * len(data):
            raise ParseError(
                f"DOCX would expand {expanded // max(len(data), 1)}x (from {human_size(len(data))} to "
                f"{human_size(expanded)}), more than the {MAX_DOCX_EXPANSION_RATIO}x limit: an archive bomb? refused"
            )


_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_FOOTNOTES_RELTYPE = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/footnotes"
_ENDNOTES_RELTYPE = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/endnotes"


def parse_docx(data: bytes) -> list[Section]:
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
    collector = SectionCollector()
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
        elif child.tag == control and depth < MAX_NESTING and not _docx_is_toc(child, qn):
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
    if depth > MAX_NESTING:
        return []
    grid: list[list[str]] = []
    for row in table.iterchildren(qn("w:tr")):
        cells: list[str] = []
        properties = row.find(qn("w:trPr"))
        before = properties.find(qn("w:gridBefore")) if properties is not None else None
        if before is not None:
            cells.extend([""] * cell_span(before.get(qn("w:val"))))
        for cell in _docx_row_cells(row, qn):
            cell_properties = cell.find(qn("w:tcPr"))
            span, merge = 1, None
            if cell_properties is not None:
                grid_span = cell_properties.find(qn("w:gridSpan"))
                span = cell_span(grid_span.get(qn("w:val"))) if grid_span is not None else 1
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
