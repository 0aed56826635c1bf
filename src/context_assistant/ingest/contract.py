"""The chunk table's contract, declared once: its columns and their types, and every view of them.

The ingest writes the chunk table (Spark DDL), its workers hand parsed chunks to Spark as Arrow, the index
sync reads it back (``deltalake``/Spark column lists) and Vector Search syncs a subset of it. All of them derive
what they use from the declarations here, so a column added or retyped here is added or retyped everywhere.

* :data:`CHUNK_TABLE`: the chunk table, one row per chunk (``chunk_id`` is its key);
* :data:`DOCUMENTS_TABLE`: the documents table, one row per file seen in the source (``path`` is its key);
* :data:`CHUNK_FIELDS`: what a parser produces per chunk (the chunk's own columns, without its document's);
* :data:`PARSED_FILE`: a file's summary in the parser's output; :data:`STAGED_ROW`: a row of that output
  (the staging table): a file's summary, or one of its chunks (one row per chunk, never an array, so a big
  file's chunks stream through Spark in bounded batches);
* :data:`INDEXED_COLUMNS`: what a search index reads of a chunk; :data:`HIT_COLUMNS`: what a hit shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # the Spark SQL type: STRING, INT, BIGINT, TIMESTAMP
    nullable: bool = False

    def ddl(self) -> str:
        return f"{self.name} {self.type}" + ("" if self.nullable else " NOT NULL")


CHUNK_TABLE: tuple[Column, ...] = (
    Column("chunk_id", "STRING"),  # sha256 of path and position (ingest.chunking.make_chunk_id)
    Column("path", "STRING"),  # relative to the source root, "/"-separated: what citations show
    Column("chunk_index", "INT"),
    Column("text", "STRING"),
    Column("heading", "STRING"),  # "" when none; the heading path joined with " > "
    Column("page", "INT", nullable=True),  # PDFs only
    Column("content_hash", "STRING"),  # sha256 of text: the index re-embeds a chunk only when it changes
    # The document version that last changed this chunk's text (an edit leaves untouched chunks alone):
    Column("doc_hash", "STRING"),
    Column("modified_at", "TIMESTAMP"),
    Column("ingested_at", "TIMESTAMP"),
)

DOCUMENTS_TABLE: tuple[Column, ...] = (
    Column("path", "STRING"),
    Column("doc_hash", "STRING", nullable=True),  # sha256 of the bytes last read; NULL for skipped files
    Column("status", "STRING"),  # ok | failed | skipped
    Column("error", "STRING", nullable=True),
    Column("chunk_count", "INT"),  # chunks in the chunk table for the path
    Column("size_bytes", "BIGINT"),
    Column("modified_at", "TIMESTAMP"),
    Column("chunking", "STRING", nullable=True),  # the settings its chunks were cut with
    Column("ingested_at", "TIMESTAMP"),  # the run that last parsed the file or changed its status
)


def columns(table: Iterable[Column], *names: str) -> tuple[Column, ...]:
    """The named columns of ``table``, in the order given."""
    by_name = {column.name: column for column in table}
    return tuple(by_name[name] for name in names)


def names(table: Iterable[Column]) -> tuple[str, ...]:
    return tuple(column.name for column in table)


CHUNK_FIELDS = columns(CHUNK_TABLE, "chunk_id", "chunk_index", "text", "heading", "page", "content_hash")
INDEXED_COLUMNS = names(
    columns(CHUNK_TABLE, "chunk_id", "path", "chunk_index", "text", "heading", "page", "content_hash")
)
HIT_COLUMNS = names(columns(CHUNK_TABLE, "chunk_id", "path", "heading", "page", "text"))

PARSED_FILE: tuple[Column, ...] = (
    Column("path", "STRING"),
    Column("size_bytes", "BIGINT"),
    Column("modified_us", "BIGINT"),  # modification time, microseconds since the epoch
    Column("doc_hash", "STRING"),
    Column("status", "STRING"),  # ok | failed | unchanged (the bytes hash to the stored hash)
    Column("error", "STRING"),
    Column("chunk_count", "INT"),
)
# A chunk of the parser's output joined with its file: the MERGE's source rows.
FRESH_CHUNK: tuple[Column, ...] = (
    *columns(
        CHUNK_TABLE, "chunk_id", "path", "chunk_index", "text", "heading", "page", "content_hash", "doc_hash"
    ),
    Column("modified_us", "BIGINT"),
)


def table_ddl(table: Iterable[Column]) -> str:
    """``CREATE TABLE`` column definitions: ``chunk_id STRING NOT NULL, ...``."""
    return ", ".join(column.ddl() for column in table)


def schema_ddl(table: Iterable[Column]) -> str:
    """A Spark schema string for data frames (every column nullable, as Spark infers them)."""
    return ", ".join(f"{column.name} {column.type}" for column in table)


def merge_update(table: Iterable[Column], *, key: str, values: Mapping[str, str] | None = None) -> str:
    """A ``MERGE``'s ``UPDATE SET`` list for every column of ``table`` but ``key``: ``t.c = s.c`` unless
    ``values`` gives the source expression for ``c`` (a timestamp the source carries as microseconds, say)."""
    values = values or {}
    return ", ".join(
        f"t.{column.name} = {values.get(column.name, 's.' + column.name)}"
        for column in table
        if column.name != key
    )


def merge_insert(table: Iterable[Column], *, values: Mapping[str, str] | None = None) -> str:
    """A ``MERGE``'s ``INSERT (...) VALUES (...)`` for every column of ``table``, sources as in
    :func:`merge_update`."""
    values = values or {}
    table = tuple(table)
    return (
        f"INSERT ({', '.join(column.name for column in table)}) "
        f"VALUES ({', '.join(values.get(column.name, 's.' + column.name) for column in table)})"
    )


def insert_select(table: Iterable[Column], *, values: Mapping[str, str] | None = None) -> str:
    """An ``INSERT INTO ... SELECT``'s select list for every column of ``table``, sources as in
    :func:`merge_update`. A required column's value is wrapped in ``coalesce`` for one reason: the local
    engine (pysail) refuses to insert any expression that *could* be NULL into a NOT NULL column, whatever the
    rows hold. Callers check the rows with :func:`null_check` first, so the fallback never applies."""
    values = values or {}
    blank = {"STRING": "''", "INT": "0", "BIGINT": "0", "TIMESTAMP": "timestamp_micros(0)"}
    selected = ((column, values.get(column.name, "s." + column.name)) for column in table)
    return ", ".join(
        value if column.nullable else f"coalesce({value}, {blank[column.type]})" for column, value in selected
    )


def null_check(table: Iterable[Column]) -> str:
    """A SQL condition true for a row in which one of ``table``'s required columns is NULL."""
    return " OR ".join(f"{column.name} IS NULL" for column in table if not column.nullable)


# A row of the parser's output and the staging table: a summary row has ``status`` set and NULL chunk columns;
# a chunk row has ``chunk_id`` set, NULL ``status``, and carries its file's ``path``, ``doc_hash`` and
# ``modified_us`` (what the chunk MERGE needs), the other summary columns NULL.
STAGED_ROW: tuple[Column, ...] = tuple(
    Column(column.name, column.type, nullable=True) for column in (*PARSED_FILE, *CHUNK_FIELDS)
)


def staged_schema_ddl() -> str:
    """The Spark schema of the parser's output (``mapInArrow``) and the staging table."""
    return schema_ddl(STAGED_ROW)


def staged_arrow_schema() -> pa.Schema:
    """The same schema in Arrow, as the workers build their record batches."""
    import pyarrow as pa

    def arrow(column: Column) -> pa.DataType:
        return {
            "STRING": pa.string(),
            "INT": pa.int32(),
            "BIGINT": pa.int64(),
            "TIMESTAMP": pa.timestamp("us", tz="UTC"),
        }[column.type]

    return pa.schema([(column.name, arrow(column)) for column in STAGED_ROW])


__all__ = [
    "CHUNK_FIELDS",
    "CHUNK_TABLE",
    "DOCUMENTS_TABLE",
    "FRESH_CHUNK",
    "HIT_COLUMNS",
    "INDEXED_COLUMNS",
    "PARSED_FILE",
    "STAGED_ROW",
    "Column",
    "columns",
    "merge_insert",
    "merge_update",
    "names",
    "schema_ddl",
    "staged_arrow_schema",
    "staged_schema_ddl",
    "table_ddl",
]
