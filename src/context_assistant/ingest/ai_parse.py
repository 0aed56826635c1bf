"""PDFs parsed by Databricks' ``ai_parse_document`` (``rag.pdf_parser: ai_parse_document``), on Databricks only.

``ai_parse_document`` is a Databricks SQL AI Function (Databricks Runtime 17.1+, or serverless environment
version 3+; some regions) that reads a document's bytes with a layout model: it finds tables in scanned and
born-digital PDFs, reading order across columns, section headers, figures with descriptions, and page
headers and footers -- what ``pypdf``'s text layer cannot. The ingest calls it in the same Spark SQL that
hashes the files (:func:`ai_parse_column`), only for PDFs whose bytes changed, and turns its VARIANT answer
(version 2.0)::

    {"document": {"pages": [{"id": 0, ...}],
                  "elements": [{"id": 0, "type": "section_header" | "title" | "text" | "table" | "figure"
                                | "caption" | "footnote" | "page_header" | "page_footer" | "page_number",
                                "content": "...",            # tables: HTML
                                "description": "...",        # figures
                                "bbox": [{"coord": [...], "page_id": 0}]}]},
     "error_status": [{"error_message": "...", "page_id": 0}], "metadata": {...}}

into the same sections the built-in parser makes (:func:`sections_from_ai_parse`): one per page and heading
path, tables as Markdown tables (spans expanded), figures by their description, page headers and footers
once each, page numbers dropped. It costs AI Functions usage per page, so it is opt-in; locally (pysail has
no AI Functions) the setting is refused with a clear message.
"""

from __future__ import annotations

import json
from typing import Any

from ..core.config import PDF_PARSERS
from ..core.errors import ConfigError
from .text import ParseError, Section, SectionCollector

AI_PARSE_VERSION = "2.0"


def ai_parse_column(content: str = "content", path: str = "path") -> str:
    """The SQL expression that parses a PDF's bytes with ``ai_parse_document`` (NULL for other files and for
    rows whose bytes are unchanged), as JSON text for the Python workers."""
    return (
        f"CASE WHEN lower({path}) LIKE '%.pdf' AND {content} IS NOT NULL "
        f"THEN to_json(ai_parse_document({content}, map('version', '{AI_PARSE_VERSION}'))) END"
    )


def check_pdf_parser(parser: str, local_tables: bool) -> None:
    """Refuse ``ai_parse_document`` where it cannot run (a local Spark), naming the fix."""
    if parser not in PDF_PARSERS:
        raise ConfigError(f"rag.pdf_parser: {parser!r} is not one of {', '.join(PDF_PARSERS)}")
    if parser == "ai_parse_document" and local_tables:
        raise ConfigError(
            "rag.pdf_parser: ai_parse_document is a Databricks SQL AI Function and runs only on Databricks "
            "(Runtime 17.1+ or serverless environment 3+); use builtin for a local ingest"
        )


_HEADINGS = {"title": 1, "section_header": 2}
_FURNITURE = ("page_header", "page_footer")


def sections_from_ai_parse(answer: str | dict[str, Any]) -> list[Section]:
    """Sections from an ``ai_parse_document`` answer (JSON text or the parsed dict); raises ParseError when
    the model reported errors for every page or found nothing."""
    data = json.loads(answer) if isinstance(answer, str) else answer
    if not isinstance(data, dict):
        raise ParseError("ai_parse_document answered something that is not an object")
    document = data.get("document") or {}
    elements = document.get("elements") or []
    errors = data.get("error_status") or []
    if not elements and errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        raise ParseError(f"ai_parse_document could not parse the file: {first.get('error_message', errors[0])}")
    collector = SectionCollector()
    furniture_seen: set[str] = set()
    page: int | None = None
    for element in elements:
        if not isinstance(element, dict):
            continue
        kind = str(element.get("type") or "text")
        content = str(element.get("content") or "").strip()
        boxes = element.get("bbox") or []
        element_page = boxes[0].get("page_id") if boxes and isinstance(boxes[0], dict) else None
        if isinstance(element_page, int) and element_page + 1 != page:
            page = element_page + 1
            collector.set_page(page)
        if kind == "page_number":
            continue
        if kind in _FURNITURE:
            if content and content not in furniture_seen:
                furniture_seen.add(content)
                collector.add(content + "\n\n")
            continue
        if kind in _HEADINGS:
            collector.heading(_HEADINGS[kind], content)
            continue
        if kind == "table":
            collector.add(_table_markdown(content) + "\n\n")
            continue
        if kind == "figure":
            content = str(element.get("description") or content).strip()
        if content:
            collector.add(content + "\n\n")
    return collector.sections()


def _table_markdown(content: str) -> str:
    """A table element's HTML as a Markdown table (spans expanded); plain text passes through."""
    if "<table" not in content.lower():
        return content
    from bs4 import BeautifulSoup

    from .html_parser import html_table_markdown

    table = BeautifulSoup(content, "html.parser").find("table")
    return html_table_markdown(table) if table is not None else content
