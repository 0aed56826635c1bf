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
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from ..core.config import INDEX_TYPES
from ..core.console import Progress, quiet
from .db import scalar

log = logging.getLogger(__name__)

MAX_VECTOR_INDEX_DIM = 2000  # pgvector's limit for indexing vector
MAX_HALFVEC_INDEX_DIM = 4000  # ... and for halfvec
IVFFLAT_MIN_ROWS = 10_000
IVFFLAT_REBUILD_GROWTH = 4


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
    return scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", (table,))


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
               index_type = NULL, index_lists = NULL, index_rows = NULL, full_since = NULL, created_at = now(),
               updated_at = now()""",
        (space, model, dimension),
    )
    log.info("created %s for %s (%d dims)", table, model, dimension)


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form, for vectors written in bulk as a text array (no type adapter on the connection)."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


class QueryVector:
    """A query vector as a statement parameter, sent in pgvector's binary form (``vector_recv``: dimension,
    unused, then big-endian float4s). Formatting 384 floats as text cost ~0.3 ms of CPU, twice a turn; this is
    a copy. The parameter goes out untyped and the statement's ``::vector(n)`` cast types it, so there is no
    type lookup and nothing to register on a connection (the dumper is registered once, process-wide)."""

    __slots__ = ("values",)

    def __init__(self, values: Sequence[float]) -> None:
        self.values = values


class _QueryVectorDumper(Dumper):
    format = Format.BINARY
    oid = 0  # unknown: the server takes the type from the statement's cast

    def dump(self, obj: QueryVector) -> bytes:
        values = np.asarray(obj.values, dtype=">f4")
        if values.ndim != 1:
            raise ValueError(f"a query vector is one row of numbers, not an array of shape {values.shape}")
        return struct.pack(">HH", values.shape[0], 0) + values.tobytes()


psycopg.adapters.register_dumper(QueryVector, _QueryVectorDumper)


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


# ---------------------------------------------------------------------------------------------------------
# The approximate-nearest-neighbour index on a space's table


def ensure_ann_index(
    conn: psycopg.Connection,
    space: str,
    table: str,
    *,
    index_type: str,
    ivfflat_min_rows: int = IVFFLAT_MIN_ROWS,
    say: Progress = quiet,
    rows_label: str = "rows",
) -> str:
    """Build, rebuild or drop the ANN index on ``table`` as ``index_type`` and the row count call for; returns
    its description (``hnsw``, ``ivfflat (lists=N)``, ``none (...)``).

    ``hnsw`` is built once and maintained on every insert. ``ivfflat`` is built only once the table has
    ``ivfflat_min_rows`` rows (below that exact search is fast and an IVF index trained on few rows is poor),
    with :func:`ivfflat_lists` lists, and rebuilt when the row count has grown (or shrunk)
    :data:`IVFFLAT_REBUILD_GROWTH` times since it was built. Too wide a dimension gets no index.
    """
    info = read_space(conn, space)
    assert info is not None
    rows = scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    expression, opclass = vector_expression(info.dimension)
    names = {kind: f"{table}_embedding_{kind}" for kind in INDEX_TYPES}
    present = {kind for kind, name in names.items() if table_exists(conn, name)}
    if opclass is None:
        _drop_indexes(conn, names, present)
        _record_index(conn, space, None, None, None)
        return f"none (exact search: {info.dimension} dims is too wide for a pgvector index)"

    if index_type == "hnsw":
        if "ivfflat" in present:
            _drop_indexes(conn, names, {"ivfflat"})
        if "hnsw" not in present:
            say(f"building the hnsw index on {rows} {rows_label}")
            _tune_maintenance(conn)
            conn.execute(f"CREATE INDEX {names['hnsw']} ON {table} USING hnsw ({expression} {opclass})")
            _record_index(conn, space, "hnsw", None, rows)
        return "hnsw"

    # ivfflat
    if "hnsw" in present:
        _drop_indexes(conn, names, {"hnsw"})
    if rows < ivfflat_min_rows:
        if "ivfflat" in present and info.index_rows and rows * IVFFLAT_REBUILD_GROWTH > info.index_rows:
            return f"ivfflat (lists={info.index_lists})"
        _drop_indexes(conn, names, present & {"ivfflat"})
        _record_index(conn, space, None, None, None)
        return f"none (exact search until {ivfflat_min_rows} rows, then ivfflat)"
    stale = (
        "ivfflat" not in present
        or info.index_type != "ivfflat"
        or not info.index_rows
        or rows >= IVFFLAT_REBUILD_GROWTH * info.index_rows
        or rows * IVFFLAT_REBUILD_GROWTH <= info.index_rows
    )
    if not stale:
        return f"ivfflat (lists={info.index_lists})"
    lists = ivfflat_lists(rows)
    say(f"building the ivfflat index on {rows} {rows_label} (lists={lists})")
    _tune_maintenance(conn)
    building = names["ivfflat"] + "_new"
    conn.execute(f"DROP INDEX IF EXISTS {building}")
    conn.execute(
        f"CREATE INDEX {building} ON {table} USING ivfflat ({expression} {opclass}) WITH (lists = {lists})"
    )
    conn.execute(f"DROP INDEX IF EXISTS {names['ivfflat']}")
    conn.execute(f"ALTER INDEX {building} RENAME TO {names['ivfflat']}")
    _record_index(conn, space, "ivfflat", lists, rows)
    return f"ivfflat (lists={lists})"


def _tune_maintenance(conn: psycopg.Connection) -> None:
    # An HNSW build is much faster when the graph fits in maintenance_work_mem (default 64MB).
    try:
        with conn.transaction():
            set_local(conn, "maintenance_work_mem", "512MB")
    except psycopg.Error:  # a managed server may refuse; the build still works, slower
        pass


def _drop_indexes(conn: psycopg.Connection, names: dict[str, str], kinds: Iterable[str]) -> None:
    for kind in kinds:
        conn.execute(f"DROP INDEX IF EXISTS {names[kind]}")


def _record_index(
    conn: psycopg.Connection, space: str, kind: str | None, lists: int | None, rows: int | None
) -> None:
    conn.execute(
        """UPDATE vector_spaces SET index_type = %s, index_lists = %s, index_rows = %s, updated_at = now()
           WHERE space = %s""",
        (kind, lists, rows, space),
    )


def ivfflat_lists(rows: int) -> int:
    """pgvector's guidance: rows / 1000 up to 1M rows, sqrt(rows) beyond; at least 10."""
    if rows > 1_000_000:
        return max(10, int(math.sqrt(rows)))
    return max(10, rows // 1000)


def indexed_for_sync(
    conn: psycopg.Connection, space: str, table: str, *, full: bool, say: Progress = quiet
) -> tuple[dict[str, tuple[str, str]], datetime | None]:
    """What a sync diffs against: ``chunk_id -> (path, content_hash)`` of ``table`` (the chunk index), and
    when a full re-embedding started (None: none under way).

    ``full`` starts one (``ingest --full``), or keeps the start of one an interruption left unfinished; a plain
    sync resumes it. Either way the rows indexed before it started get an empty hash, so the sync re-embeds
    them and only them. The start is committed at once (``vector_spaces.full_since``, migration 4), so it
    outlives an interruption; :func:`finish_full_reembedding` clears it."""
    if full:
        conn.execute(
            "UPDATE vector_spaces SET full_since = COALESCE(full_since, now()) WHERE space = %s", (space,)
        )
        conn.commit()
    since = scalar(conn, "SELECT full_since FROM vector_spaces WHERE space = %s", (space,))
    query = sql.SQL("SELECT chunk_id, path, content_hash, indexed_at FROM {}").format(sql.Identifier(table))
    indexed = {
        chunk_id: (path, "" if since is not None and indexed_at < since else content_hash)
        for chunk_id, path, content_hash, indexed_at in conn.execute(query)
    }
    conn.commit()
    if since is not None and not full:
        say(f"resuming the full re-embedding (ingest --full) left unfinished since {since:%Y-%m-%d %H:%M %Z}")
    return indexed, since


def finish_full_reembedding(conn: psycopg.Connection, space: str) -> None:
    """The full re-embedding of ``space`` completed: later syncs embed only what changed."""
    conn.execute("UPDATE vector_spaces SET full_since = NULL WHERE space = %s", (space,))
