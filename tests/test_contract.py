"""The chunk table's contract is declared once (ingest/contract.py) and every view of it agrees.

Pure checks of the declarations; tests/test_pipeline.py writes and reads the real tables with Spark.
"""

from __future__ import annotations

import dataclasses

from context_assistant.ingest import contract
from context_assistant.ingest.chunking import Chunk
from context_assistant.ingest.run import CHUNK_COLUMNS, DOCUMENT_COLUMNS
from context_assistant.retrieval.sync import SOURCE_COLUMNS, SourceChunk
from context_assistant.retrieval.vector_search_shapes import RESULT_COLUMNS, SYNCED_COLUMNS


def test_the_create_table_definitions_come_from_the_contract() -> None:
    assert CHUNK_COLUMNS == (
        "chunk_id STRING NOT NULL, path STRING NOT NULL, chunk_index INT NOT NULL, text STRING NOT NULL, "
        "heading STRING NOT NULL, page INT, content_hash STRING NOT NULL, doc_hash STRING NOT NULL, "
        "modified_at TIMESTAMP NOT NULL, ingested_at TIMESTAMP NOT NULL"
    )
    assert DOCUMENT_COLUMNS.startswith("path STRING NOT NULL, doc_hash STRING, status STRING NOT NULL")


def test_the_parsers_spark_and_arrow_schemas_agree() -> None:
    """The parser's output (the staging table) is flat: a file's summary columns, then one chunk's columns;
    no array column (a big file's chunks stream as rows)."""
    arrow = contract.staged_arrow_schema()
    assert arrow.names == [*contract.names(contract.PARSED_FILE), *contract.names(contract.CHUNK_FIELDS)]
    assert all(field.nullable for field in arrow)
    assert contract.staged_schema_ddl() == (
        "path STRING, size_bytes BIGINT, modified_us BIGINT, doc_hash STRING, status STRING, error STRING, "
        "chunk_count INT, chunk_id STRING, chunk_index INT, text STRING, heading STRING, page INT, "
        "content_hash STRING"
    )
    assert set(contract.names(contract.FRESH_CHUNK)) <= set(arrow.names)  # what the chunk MERGE selects


def test_what_is_read_and_synced_is_part_of_the_chunk_table() -> None:
    table = set(contract.names(contract.CHUNK_TABLE))
    assert SOURCE_COLUMNS == contract.INDEXED_COLUMNS
    assert [f.name for f in dataclasses.fields(SourceChunk)] == list(SOURCE_COLUMNS)
    assert set(SYNCED_COLUMNS) <= table and RESULT_COLUMNS == contract.HIT_COLUMNS
    chunk_fields = {f.name for f in dataclasses.fields(Chunk)}
    assert set(contract.names(contract.CHUNK_FIELDS)) <= chunk_fields


def test_the_merge_statements_name_every_column_of_the_contract() -> None:
    """The chunk and document MERGEs derive their SET and INSERT lists from the contract, so a new column
    cannot be forgotten in one of them."""
    stamps = {"modified_at": "timestamp_micros(s.modified_us)"}
    update = contract.merge_update(contract.CHUNK_TABLE, key="chunk_id", values=stamps)
    assert "t.chunk_id" not in update
    for name in contract.names(contract.CHUNK_TABLE)[1:]:
        assert f"t.{name} = " in update
    assert "t.modified_at = timestamp_micros(s.modified_us)" in update
    insert = contract.merge_insert(contract.DOCUMENTS_TABLE)
    assert insert.startswith(
        "INSERT (" + ", ".join(contract.names(contract.DOCUMENTS_TABLE)) + ") VALUES (s.path, "
    )


def test_the_chunk_insert_selects_every_column_and_the_null_check_covers_every_required_one() -> None:
    """``insert_select`` wraps required columns in ``coalesce`` only to satisfy the local engine's static
    NOT NULL check; ``null_check`` is what the ingest runs first so that fallback never applies."""
    stamps = {"ingested_at": "timestamp_micros(7)"}
    select = contract.insert_select(contract.CHUNK_TABLE, values=stamps)
    assert (
        select.startswith("coalesce(s.chunk_id, '')") and "s.page, " in select and "coalesce(s.page" not in select
    )
    assert "coalesce(timestamp_micros(7), timestamp_micros(0))" in select
    assert all(f"s.{c.name}" in select for c in contract.CHUNK_TABLE if c.name != "ingested_at")
    check = contract.null_check(contract.FRESH_CHUNK)
    required = [c.name for c in contract.FRESH_CHUNK if not c.nullable]
    assert check == " OR ".join(f"{name} IS NULL" for name in required)
    assert "page" not in required and "chunk_id" in required and "modified_us" in required
