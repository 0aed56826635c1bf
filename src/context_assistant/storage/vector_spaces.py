"""Vector spaces: a table with a ``vector(dim)`` column, registered with the model that filled it.

``vector_spaces`` (migration 3) records per space (``chunks`` for the document index, ``turns`` for memory
recall) the model and dimension that filled its table, and the approximate-nearest-neighbour (ANN) index
built on it. A different model (name or dimension) drops and recreates the space's table: vectors from two
models are never mixed. Both the chunk index and recall build on these primitives, so neither imports the
other.

Dimensions up to :data:`MAX_VECTOR_INDEX_DIM` index ``vector``; up to :data:`MAX_HALFVEC_INDEX_DIM` index a
``halfvec`` cast; beyond that search is exact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

MAX_VECTOR_INDEX_DIM = 2000  # pgvector's limit for indexing vector
MAX_HALFVEC_INDEX_DIM = 4000  # ... and for halfvec


@dataclass(frozen=True)
class SpaceInfo:
    space: str
    model: str
    dimension: int
    index_type: str | None
    index_lists: int | None
    index_rows: int | None


def read_space(conn: psycopg.Connection, space: str) -> SpaceInfo | None:
    row = conn.execute(
        """SELECT space, model, dimension, index_type, index_lists, index_rows
           FROM vector_spaces WHERE space = %s""",
        (space,),
    ).fetchone()
    return SpaceInfo(*row) if row else None


def table_exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def reset_space(conn: psycopg.Connection, space: str, table: str, model: str, dimension: int, ddl: str) -> None:
    """Drop the space's table and statistics and create them empty for ``model``/``dimension``.

    ``ddl`` is the CREATE TABLE statement with ``{table}`` and ``{dim}`` placeholders; the table must have
    ``tsv tsvector`` and ``doc_len int`` columns, which the BM25 triggers read.
    """
    if dimension < 1:  # callers check the model's dimension first (embeddings.checked_dimension)
        raise ValueError(f"a vector space needs a positive dimension, got {dimension} for {model!r}")
    ident = sql.Identifier(table)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(ident))
    conn.execute("DELETE FROM bm25_terms WHERE space = %s", (space,))
    conn.execute("DELETE FROM bm25_stats WHERE space = %s", (space,))
    conn.execute(sql.SQL(ddl).format(table=ident, dim=sql.Literal(dimension)))
    for op, referencing in (
        ("INSERT", "NEW TABLE AS new_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
    ):
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {name} AFTER " + op + " ON {table} REFERENCING " + referencing + " "
                "FOR EACH STATEMENT EXECUTE FUNCTION bm25_track({space})"
            ).format(name=sql.Identifier(f"{table}_bm25_{op.lower()}"), table=ident, space=sql.Literal(space))
        )
    conn.execute(
        """INSERT INTO vector_spaces (space, model, dimension) VALUES (%s, %s, %s)
           ON CONFLICT (space) DO UPDATE SET model = EXCLUDED.model, dimension = EXCLUDED.dimension,
               index_type = NULL, index_lists = NULL, index_rows = NULL, created_at = now(), updated_at = now()""",
        (space, model, dimension),
    )
    log.info("created %s for %s (%d dims)", table, model, dimension)


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form; used for query vectors so no type adapter is needed on the connection."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def vector_expression(dimension: int) -> tuple[str, str | None]:
    """The indexed expression for a dimension and its cosine opclass (None: too wide to index)."""
    if dimension <= MAX_VECTOR_INDEX_DIM:
        return "embedding", "vector_cosine_ops"
    if dimension <= MAX_HALFVEC_INDEX_DIM:
        return f"(embedding::halfvec({dimension}))", "halfvec_cosine_ops"
    return "embedding", None


def query_vector_sql(dimension: int) -> str:
    """The query vector parameter, cast to match :func:`vector_expression`."""
    if MAX_VECTOR_INDEX_DIM < dimension <= MAX_HALFVEC_INDEX_DIM:
        return f"(%(qvec)s::vector({dimension})::halfvec({dimension}))"
    return f"%(qvec)s::vector({dimension})"


def pgvector_version(conn: psycopg.Connection) -> tuple[int, ...]:
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row is None:
        return (0,)
    return tuple(int(p) for p in row[0].split(".") if p.isdigit())


def set_local(conn: psycopg.Connection, name: str, value: Any) -> None:
    """``SET LOCAL`` with a bound value (SET itself takes no parameters)."""
    conn.execute("SELECT set_config(%s, %s, true)", (name, str(value)))


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching strings that start with ``prefix`` literally."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
