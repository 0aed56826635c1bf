"""``rag.pdf_parser: ai_parse_document``: the Databricks AI Function cannot run here (pysail has no AI
Functions), so these tests cover what runs locally: the SQL expression the ingest adds to its Spark query,
the refusal of the setting on a local Spark, and the conversion of the function's documented VARIANT answer
(version 2.0) into sections and chunks, through the same batch parser the ingest runs in ``mapInArrow``."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from context_assistant.core.errors import ConfigError
from context_assistant.ingest.ai_parse import ai_parse_column, check_pdf_parser, sections_from_ai_parse
from context_assistant.ingest.plan import chunking_signature
from context_assistant.ingest.run import run_ingest
from context_assistant.ingest.text import ParseError
from context_assistant.ingest.worker import make_batch_parser


def _box(page: int) -> list[dict]:
    return [{"coord": [0, 0, 10, 10], "page_id": page}]


ANSWER = {
    "document": {
        "pages": [{"id": 0, "image_uri": ""}, {"id": 1, "image_uri": ""}],
        "elements": [
            {"id": 0, "type": "page_header", "content": "Larkspur Data", "bbox": _box(0)},
            {"id": 1, "type": "title", "content": "Release checklist", "bbox": _box(0)},
            {"id": 2, "type": "text", "content": "Freeze starts 48 hours before.", "bbox": _box(0)},
            {"id": 3, "type": "section_header", "content": "Owners", "bbox": _box(0)},
            {
                "id": 4,
                "type": "table",
                "content": "<table><tr><th colspan='2'>Owner</th></tr><tr><td>Tags</td><td>Ana</td></tr></table>",
                "bbox": _box(0),
            },
            {"id": 5, "type": "page_number", "content": "1", "bbox": _box(0)},
            {"id": 6, "type": "page_header", "content": "Larkspur Data", "bbox": _box(1)},
            {
                "id": 7,
                "type": "figure",
                "content": "",
                "description": "A flow chart of the release.",
                "bbox": _box(1),
            },
            {"id": 8, "type": "footnote", "content": "Times are UTC.", "bbox": _box(1)},
        ],
    },
    "error_status": [],
    "metadata": {"id": "x", "version": "2.0"},
}


def test_answer_becomes_sections_with_pages_headings_and_markdown_tables() -> None:
    sections = sections_from_ai_parse(json.dumps(ANSWER))
    assert [(s.heading, s.page, s.text) for s in sections] == [
        ("", 1, "Larkspur Data"),
        ("Release checklist", 1, "Freeze starts 48 hours before."),
        ("Release checklist > Owners", 1, "| Owner | Owner |\n| --- | --- |\n| Tags | Ana |"),
        ("Release checklist > Owners", 2, "A flow chart of the release.\n\nTimes are UTC."),
    ]


def test_an_answer_with_only_errors_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="could not parse the file: unreadable page"):
        sections_from_ai_parse(
            {"document": {"elements": []}, "error_status": [{"error_message": "unreadable page", "page_id": 0}]}
        )


def test_the_batch_parser_chunks_the_answer_instead_of_the_bytes() -> None:
    batch = pa.RecordBatch.from_pylist(
        [
            {"path": "a.pdf", "size_bytes": 3, "modified_us": 1, "doc_hash": "h", "content": b"%PDF-junk",
             "ai_parsed": json.dumps(ANSWER)},
        ]
    )  # fmt: skip
    rows = [row for out in make_batch_parser(256, 32)(iter([batch])) for row in out.to_pylist()]
    (summary,) = [row for row in rows if row["status"] is not None]
    assert summary["status"] == "ok" and summary["chunk_count"] == 4  # one per section
    chunks = [row for row in rows if row["chunk_id"] is not None]  # one row per chunk
    assert len(chunks) == 4 and chunks[1]["text"].startswith("Release checklist\n\nFreeze starts")


def test_the_sql_and_the_local_refusal(tmp_path: Path) -> None:
    assert ai_parse_column() == (
        "CASE WHEN lower(path) LIKE '%.pdf' AND content IS NOT NULL "
        "THEN to_json(ai_parse_document(content, map('version', '2.0'))) END"
    )
    with pytest.raises(ConfigError, match="runs only on Databricks"):
        check_pdf_parser("ai_parse_document", local_tables=True)
    with pytest.raises(ConfigError, match="is not one of builtin, ai_parse_document"):
        check_pdf_parser("ocr", local_tables=False)
    check_pdf_parser("ai_parse_document", local_tables=False)
    check_pdf_parser("builtin", local_tables=True)
    assert chunking_signature(256, 32, None, "ai_parse_document").endswith(",pdf=ai_parse_document,v=2")
    with pytest.raises(ConfigError, match="runs only on Databricks"):
        run_ingest(None, str(tmp_path), str(tmp_path / "c"), str(tmp_path / "d"), pdf_parser="ai_parse_document")  # type: ignore[arg-type]
