"""The pgvector backend: chunk embeddings in the same Postgres as memory, with hybrid BM25 + vector search.

Schema (migration 3 creates the shared parts; the tables with a ``vector(dim)`` column are created here,
once the model's dimension is known):

* ``vector_spaces``: per space (``chunks``, ``turns``) the model and dimension that filled it, and the
  approximate-nearest-neighbour (ANN) index built on it. A different model (name or dimension) drops and
  recreates the space's table: vectors from two models are never mixed.
* ``rag_chunks``: one row per indexed chunk: ``chunk_id`` (primary key), ``path``, ``chunk_index``,
  ``heading``, ``page``, ``text``, ``content_hash``, ``tsv`` (english tsvector of heading + text),
  ``doc_len`` (number of tokens in ``tsv``), ``embedding vector(dim)``, ``indexed_at``.
* ``bm25_terms`` / ``bm25_stats``: document frequency per lexeme and document count/total length per
  space, kept exact by statement-level triggers on the space's table (same transaction as the rows).

Keyword search is real BM25 (k1=0.9, b=0.4, Lucene's idf ``ln(1 + (N - df + 0.5) / (df + 0.5))``) computed
in plain SQL, so it runs on Lakebase where no BM25 extension can be assumed: candidates are the chunks whose
``tsv`` matches the OR of the query's lexemes (a GIN index scan); term frequencies come from the tsvector's
positions. Hybrid search fuses the vector and BM25 rankings by reciprocal rank fusion (k=60).

ANN index (``rag.index_type``): ``hnsw`` (default) is built after the first sync and maintained on every
insert; ``ef_search`` is ``max(rag.hnsw_ef_search, candidates)`` per query (``SET LOCAL``). ``ivfflat`` is
built only once the table has :data:`IVFFLAT_MIN_ROWS` rows (below that exact search is fast and an IVF
index trained on few rows is poor), with ``lists = rows / 1000`` (at least 10), ``sqrt(rows)`` above 1M
rows, and rebuilt when the row count has grown (or shrunk) 4x since it was built; ``ivfflat.probes`` is
``rag.ivfflat_probes`` per query. Filtered vector queries use pgvector's iterative index scans (0.8+) so a
selective path filter still returns ``top_k`` rows. Dimensions up to 2000 index ``vector``; up to 4000 index
a ``halfvec`` cast; beyond that search is exact.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .db import Database
from .embeddings import Embedder, EmbeddingError, validate_vectors
from .fusion import fuse
from .retrieval import (
    Hit,
    IndexNotReady,
    RetrievalError,
    candidate_count,
    check_mode,
    check_query,
)
from .sync import (
    DocumentChange,
    DocumentFailure,
    SourceChunk,
    SyncError,
    SyncPlan,
    SyncResult,
    document_batches,
    embedding_text,
    plan_sync,
)

log = logging.getLogger(__name__)

# Anserini's BM25 defaults for BEIR-style collections (short passages): k1 0.9, b 0.4; Lucene's 1.2 / 0.75
# over-penalise long passages and saturate term frequency later.
BM25_K1 = 0.9
BM25_B = 0.4
TEXT_SEARCH_CONFIG = "english"
IVFFLAT_MIN_ROWS = 10_000
IVFFLAT_REBUILD_GROWTH = 4
MAX_VECTOR_INDEX_DIM = 2000  # pgvector's limit for indexing vector
MAX_HALFVEC_INDEX_DIM = 4000  # ... and for halfvec
DEFAULT_BATCH_SIZE = 256  # chunks embedded per write transaction
DELETE_BATCH_SIZE = 1000
MAX_CONSECUTIVE_FAILURES = 3  # documents failing in a row before the run stops embedding
BM25_CANDIDATE_BUDGET = 5000  # rows (by document frequency) scored in the first, pruned phase of BM25
SYNC_LOCK_KEY = 0x0C0A5518  # advisory lock: one refresh of the chunk index at a time

CHUNKS_SPACE = "chunks"
CHUNKS_TABLE = "rag_chunks"


# ---------------------------------------------------------------------------------------------------------
# Spaces: a table with a vector(dim) column, registered with its model


PGVECTOR_DEFAULT_EF_SEARCH = 40  # hnsw.ef_search when nobody sets it


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
    if dimension < 1:
        raise EmbeddingError(f"the embedding model {model!r} reports dimension {dimension}")
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


def tsquery_or(lexemes: Sequence[str]) -> str:
    """A tsquery (text form) matching any of these already-normalised lexemes."""
    return " | ".join("'" + lex.replace("\\", "\\\\").replace("'", "''") + "'" for lex in lexemes)


def bm25_rank(
    conn: psycopg.Connection,
    space: str,
    table: str,
    key: str,
    where: str,
    params: dict[str, Any],
    query: str,
    limit: int,
    weights: Mapping[str, float] | None = None,
) -> list[tuple[Any, float]]:
    """The top ``limit`` rows of ``table`` (alias ``c``, filtered by ``where`` with ``params``) by BM25 for
    ``query``: ``(key, score)`` best first, exactly as if every matching row were scored.

    ``weights`` makes it a fielded BM25 (BM25F-style): each occurrence of a term counts the weight of the
    tsvector weight class (``A``-``D``) its position carries, e.g. ``{"A": 1, "D": 0.25}`` for a turn's own
    text and its neighbours. The row's ``doc_len`` must then be weighted the same way
    (:data:`WEIGHTED_DOC_LEN_SQL`). Without weights every occurrence counts 1.

    Rows are scored from their ``tsv`` (term frequency = number of positions of the lexeme) and ``doc_len``,
    with ``df`` per lexeme and the document count and average length of ``space`` from ``bm25_terms`` /
    ``bm25_stats``. Scoring every row that contains a very common query term is what makes naive SQL BM25
    slow, so this runs in two phases (the MaxScore idea): first only rows containing one of the query's
    rarer terms (together at most :data:`BM25_CANDIDATE_BUDGET` rows by document frequency) are scored; a
    row containing none of them can score at most ``(k1 + 1) * sum(idf)`` of the remaining common terms,
    so if the ``limit``-th score already reaches that bound the answer is exact. Otherwise every row
    matching any query term is scored.
    """
    stats = conn.execute("SELECT doc_count, total_length FROM bm25_stats WHERE space = %s", (space,)).fetchone()
    if not stats or not stats[0]:
        return []
    n, total = float(stats[0]), float(stats[1])
    avgdl = max(total / n, 1.0)
    terms = conn.execute(
        f"""SELECT t.lexeme, t.df FROM bm25_terms t
            WHERE t.space = %s AND t.lexeme = ANY (tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', %s)))
            ORDER BY t.df, t.lexeme""",
        (space, query),
    ).fetchall()
    if not terms:
        return []
    lexemes = [lexeme for lexeme, _ in terms]
    idfs = [math.log(1 + (n - df + 0.5) / (df + 0.5)) for _, df in terms]
    essential = 1
    budget = terms[0][1]
    while essential < len(terms) and budget + terms[essential][1] <= BM25_CANDIDATE_BUDGET:
        budget += terms[essential][1]
        essential += 1
    scoring = {**params, "lexemes": lexemes, "idfs": idfs, "avgdl": avgdl, "limit": limit}
    tf_sql = "coalesce(array_length(u.positions, 1), 1)::float8"
    if weights:
        scoring.update({f"w_{k}": float(weights.get(k, 1.0)) for k in "ABCD"})
        tf_sql = (
            "coalesce((SELECT sum(CASE w WHEN 'A' THEN %(w_A)s WHEN 'B' THEN %(w_B)s WHEN 'C' THEN %(w_C)s "
            "ELSE %(w_D)s END) FROM unnest(u.weights) AS w), 1)::float8"
        )
    sql_text = f"""
        SELECT c.{key}, sum(
                   t.idf * f.tf * ({BM25_K1} + 1)
                   / (f.tf + {BM25_K1} * (1 - {BM25_B} + {BM25_B} * c.doc_len / %(avgdl)s))) AS score
        FROM {table} c
        -- Only the query's lexemes of the row, with their positions: deleting "every other lexeme" in C is
        -- far cheaper than unnesting the whole tsvector and joining.
        CROSS JOIN LATERAL unnest(ts_delete(c.tsv, tsvector_to_array(ts_delete(c.tsv, %(lexemes)s::text[]))))
            AS u(lexeme, positions, weights)
        JOIN unnest(%(lexemes)s::text[], %(idfs)s::float8[]) AS t(lexeme, idf) ON t.lexeme = u.lexeme
        CROSS JOIN LATERAL (SELECT {tf_sql} AS tf) f
        WHERE c.tsv @@ %(candidates)s::tsquery AND {where}
        GROUP BY c.{key}
        ORDER BY score DESC, c.{key}
        LIMIT %(limit)s"""
    if essential < len(terms):
        bound = (BM25_K1 + 1) * sum(idfs[essential:])
        rows = conn.execute(sql_text, {**scoring, "candidates": tsquery_or(lexemes[:essential])}).fetchall()
        if len(rows) >= limit and rows[-1][1] >= bound:
            return [(row[0], float(row[1])) for row in rows]
    rows = conn.execute(sql_text, {**scoring, "candidates": tsquery_or(lexemes)}).fetchall()
    return [(row[0], float(row[1])) for row in rows]


DOC_LEN_SQL = "(SELECT coalesce(sum(coalesce(array_length(u.positions, 1), 1)), 0) FROM unnest({tsv}) u)::int"
# The length of a fielded document: each position counts its weight class's weight (see bm25_rank).
WEIGHTED_DOC_LEN_SQL = (
    "ceil((SELECT coalesce(sum(CASE w WHEN 'A' THEN {A} WHEN 'B' THEN {B} WHEN 'C' THEN {C} ELSE {D} END), 0) "
    "FROM unnest({tsv}) u, unnest(u.weights) AS w))::int"
)


# ---------------------------------------------------------------------------------------------------------
# The chunk index


CHUNKS_DDL = """
    CREATE TABLE {table} (
        chunk_id     text PRIMARY KEY,
        path         text NOT NULL,
        chunk_index  int NOT NULL,
        heading      text NOT NULL DEFAULT '',
        page         int,
        text         text NOT NULL,
        content_hash text NOT NULL,
        tsv          tsvector NOT NULL,
        doc_len      int NOT NULL,
        embedding    vector({dim}) NOT NULL,
        indexed_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX rag_chunks_tsv ON {table} USING gin (tsv);
    CREATE INDEX rag_chunks_path ON {table} (path text_pattern_ops);
"""

_STAGE_COLUMNS = ("chunk_id", "path", "chunk_index", "heading", "page", "text", "content_hash", "embedding")
_STAGE_TYPES = ("text", "text", "int4", "text", "int4", "text", "text", "vector")


class PgVectorChunkIndex:
    """A :class:`context_assistant.retrieval.ChunkIndex` in Postgres + pgvector."""

    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        *,
        index_type: str = "hnsw",
        search_mode: str = "hybrid",
        top_k: int = 5,
        hnsw_ef_search: int = 40,
        ivfflat_probes: int = 10,
        batch_size: int = DEFAULT_BATCH_SIZE,
        ivfflat_min_rows: int = IVFFLAT_MIN_ROWS,
        progress: Callable[[str], None] | None = None,
        fusion: str = "convex",
        hybrid_weight: float = 0.5,
    ) -> None:
        if index_type not in ("hnsw", "ivfflat"):
            raise ValueError(f"index_type {index_type!r} is not one of hnsw, ivfflat")
        self.db = db
        self.embedder = embedder
        self.index_type = index_type
        self.search_mode = check_mode(search_mode)
        self.top_k = top_k
        self.hnsw_ef_search = hnsw_ef_search
        self.ivfflat_probes = ivfflat_probes
        self.batch_size = batch_size
        self.ivfflat_min_rows = ivfflat_min_rows
        self.progress = progress or (lambda message: None)
        self.fusion = fusion
        self.hybrid_weight = hybrid_weight
        self._pgvector: tuple[int, ...] | None = None

    @classmethod
    def from_config(cls, db: Database, embedder: Embedder, rag: Any, **kwargs: Any) -> PgVectorChunkIndex:
        return cls(
            db,
            embedder,
            index_type=rag.index_type,
            search_mode=rag.search_mode,
            top_k=rag.top_k,
            hnsw_ef_search=rag.hnsw_ef_search,
            ivfflat_probes=rag.ivfflat_probes,
            fusion=rag.fusion,
            hybrid_weight=rag.hybrid_weight,
            **kwargs,
        )

    # -- sync -----------------------------------------------------------------------------------------

    def refresh(self, source: Any, full: bool = False) -> SyncResult:
        """Make the index equal the chunk table (ids and content hashes); see :mod:`context_assistant.sync`.

        One refresh at a time (a Postgres advisory lock); every batch is its own transaction; a document's
        changes are written together or, if its chunks cannot be embedded, not at all (its old chunks stay
        and it is listed in ``SyncResult.failed``). Raises :class:`SyncError` when another refresh runs.
        """
        started = time.monotonic()
        model = self.embedder.model_name
        with self.db.connection() as conn:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (SYNC_LOCK_KEY,)).fetchone()[0]
            conn.commit()
            if not got:
                raise SyncError("another sync of the chunk index is running; try again when it has finished")
            try:
                from pgvector.psycopg import register_vector

                register_vector(conn)
                result = SyncResult(model=model)
                result.rebuilt, dimension = self._ensure_space(conn)
                result.dimension = dimension
                indexed = {
                    chunk_id: (path, content_hash)
                    for chunk_id, path, content_hash in conn.execute(
                        sql.SQL("SELECT chunk_id, path, content_hash FROM {}").format(sql.Identifier(CHUNKS_TABLE))
                    )
                }
                conn.commit()
                self.progress(f"reading {source.label}")
                plan = plan_sync(source.fingerprints(), indexed, full=full)
                result.kept = plan.kept
                self.progress(
                    f"{plan.upsert_count} chunk(s) to embed in {len(plan.changes)} document(s), "
                    f"{len(plan.deletes)} to delete, {plan.kept} unchanged"
                )
                self._delete(conn, plan.deletes, result)
                self._embed_and_write(conn, source, plan, dimension, result)
                result.index = self._ensure_ann_index(conn)
                conn.commit()
            finally:
                conn.rollback()
                conn.execute("SELECT pg_advisory_unlock(%s)", (SYNC_LOCK_KEY,))
                conn.commit()
        result.seconds = time.monotonic() - started
        return result

    def _ensure_space(self, conn: psycopg.Connection) -> tuple[bool, int]:
        """Create the table on first use or when the model changed; returns (rebuilt, dimension)."""
        info = read_space(conn, CHUNKS_SPACE)
        model = self.embedder.model_name
        if info is not None and info.model == model and table_exists(conn, CHUNKS_TABLE):
            return False, info.dimension
        dimension = self.embedder.dimension  # loads the model / probes the endpoint
        if (
            info is not None
            and info.model == model
            and info.dimension == dimension
            and table_exists(conn, CHUNKS_TABLE)
        ):
            return False, dimension
        if info is not None:
            self.progress(
                f"embedding model changed from {info.model} ({info.dimension} dims): rebuilding the index"
            )
        reset_space(conn, CHUNKS_SPACE, CHUNKS_TABLE, model, dimension, CHUNKS_DDL)
        conn.commit()
        return True, dimension

    def _delete(self, conn: psycopg.Connection, chunk_ids: list[str], result: SyncResult) -> None:
        for start in range(0, len(chunk_ids), DELETE_BATCH_SIZE):
            batch = chunk_ids[start : start + DELETE_BATCH_SIZE]
            result.deleted += conn.execute(
                sql.SQL("DELETE FROM {} WHERE chunk_id = ANY(%s)").format(sql.Identifier(CHUNKS_TABLE)), (batch,)
            ).rowcount
            conn.commit()

    def _embed_and_write(
        self, conn: psycopg.Connection, source: Any, plan: SyncPlan, dimension: int, result: SyncResult
    ) -> None:
        if not plan.changes:
            return
        wanted = [chunk_id for change in plan.changes.values() for chunk_id in change.upserts]
        by_id = {chunk.chunk_id: chunk for chunk in source.read(wanted)}
        consecutive_failures = 0
        done = 0
        batches = list(document_batches(plan.changes.values(), self.batch_size))
        for number, batch in enumerate(batches, start=1):
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                reason = f"not attempted: {MAX_CONSECUTIVE_FAILURES} documents in a row failed to embed"
                for change in batch:
                    result.failed.append(DocumentFailure(change.path, reason, len(change.upserts)))
                continue
            written, failures = self._embed_batch(batch, by_id, dimension)
            if written:
                self._write(conn, written, by_id)
                conn.commit()
            for change, _ in written:
                result.added += change.added
                result.updated += change.updated
                result.deleted += len(change.deletes)
                consecutive_failures = 0
            for failure in failures:
                result.failed.append(failure)
                consecutive_failures += 1
            done += sum(len(change.upserts) for change in batch)
            self.progress(f"batch {number}/{len(batches)}: {done}/{plan.upsert_count} chunks")

    def _embed_batch(
        self, batch: list[DocumentChange], by_id: dict[str, SourceChunk], dimension: int
    ) -> tuple[list[tuple[DocumentChange, list[list[float]]]], list[DocumentFailure]]:
        """Embed a batch of documents; on failure, retry document by document to isolate the bad ones."""
        failures: list[DocumentFailure] = []
        present: list[DocumentChange] = []
        for change in batch:
            missing = [i for i in change.upserts if i not in by_id]
            if missing:  # the table changed while we read it: the next run picks the document up
                failures.append(
                    DocumentFailure(
                        change.path, "its chunks changed in the chunk table during the sync", len(missing)
                    )
                )
            else:
                present.append(change)

        def embed(changes: list[DocumentChange]) -> list[list[float]]:
            texts = [embedding_text(by_id[i].heading, by_id[i].text) for c in changes for i in c.upserts]
            vectors = self.embedder.embed(texts)
            return validate_vectors(
                vectors, len(texts), dimension, f"embedding model {self.embedder.model_name!r}"
            )

        try:
            vectors = embed(present)
        except EmbeddingError as exc:
            if len(present) <= 1:
                failures.extend(DocumentFailure(c.path, str(exc), len(c.upserts)) for c in present)
                return [], failures
            written = []
            for change in present:
                try:
                    written.append((change, embed([change])))
                except EmbeddingError as one:
                    failures.append(DocumentFailure(change.path, str(one), len(change.upserts)))
            return written, failures
        out = []
        offset = 0
        for change in present:
            out.append((change, vectors[offset : offset + len(change.upserts)]))
            offset += len(change.upserts)
        return out, failures

    def _write(
        self,
        conn: psycopg.Connection,
        written: list[tuple[DocumentChange, list[list[float]]]],
        by_id: dict[str, SourceChunk],
    ) -> None:
        """Upsert the documents' embedded chunks and delete their dropped ones, in the open transaction."""
        import numpy as np

        conn.execute(
            """CREATE TEMP TABLE IF NOT EXISTS ca_stage_chunks (
                   chunk_id text, path text, chunk_index int, heading text, page int, text text,
                   content_hash text, embedding vector) ON COMMIT DELETE ROWS"""
        )
        with conn.cursor() as cur:
            with cur.copy(
                f"COPY ca_stage_chunks ({', '.join(_STAGE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(list(_STAGE_TYPES))
                for change, vectors in written:
                    for chunk_id, vector in zip(change.upserts, vectors, strict=True):
                        c = by_id[chunk_id]
                        copy.write_row(
                            (
                                c.chunk_id,
                                c.path,
                                c.chunk_index,
                                c.heading or "",
                                c.page,
                                c.text,
                                c.content_hash,
                                np.asarray(vector, dtype=np.float32),
                            )
                        )
            # The same text that is embedded: a chunk that starts with its heading path is not given it twice.
            tsv = (
                f"to_tsvector('{TEXT_SEARCH_CONFIG}', CASE WHEN s.heading = '' OR starts_with(s.text, s.heading) "
                "THEN s.text ELSE s.heading || E'\\n' || s.text END)"
            )
            cur.execute(
                sql.SQL(
                    "INSERT INTO {table} AS r (chunk_id, path, chunk_index, heading, page, text, content_hash, "
                    "tsv, doc_len, embedding, indexed_at) "
                    "SELECT s.chunk_id, s.path, s.chunk_index, s.heading, s.page, s.text, s.content_hash, "
                    "v.tsv, " + DOC_LEN_SQL.format(tsv="v.tsv") + ", s.embedding, now() "
                    "FROM ca_stage_chunks s CROSS JOIN LATERAL (SELECT " + tsv + " AS tsv) v "
                    "ORDER BY s.chunk_id "
                    "ON CONFLICT (chunk_id) DO UPDATE SET path = EXCLUDED.path, chunk_index = EXCLUDED.chunk_index, "
                    "heading = EXCLUDED.heading, page = EXCLUDED.page, text = EXCLUDED.text, "
                    "content_hash = EXCLUDED.content_hash, tsv = EXCLUDED.tsv, doc_len = EXCLUDED.doc_len, "
                    "embedding = EXCLUDED.embedding, indexed_at = EXCLUDED.indexed_at"
                ).format(table=sql.Identifier(CHUNKS_TABLE))
            )
            deletes = [chunk_id for change, _ in written for chunk_id in change.deletes]
            if deletes:
                cur.execute(
                    sql.SQL("DELETE FROM {} WHERE chunk_id = ANY(%s)").format(sql.Identifier(CHUNKS_TABLE)),
                    (deletes,),
                )

    # -- the ANN index ----------------------------------------------------------------------------------

    def _ensure_ann_index(self, conn: psycopg.Connection) -> str:
        """Build, rebuild or drop the ANN index as ``index_type`` and the row count call for; returns its
        description."""
        info = read_space(conn, CHUNKS_SPACE)
        assert info is not None
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(CHUNKS_TABLE))).fetchone()[0]
        expression, opclass = vector_expression(info.dimension)
        names = {kind: f"{CHUNKS_TABLE}_embedding_{kind}" for kind in ("hnsw", "ivfflat")}
        present = {kind for kind, name in names.items() if table_exists(conn, name)}
        if opclass is None:
            self._drop_indexes(conn, names, present)
            self._record_index(conn, None, None, None)
            return f"none (exact search: {info.dimension} dims is too wide for a pgvector index)"

        if self.index_type == "hnsw":
            if "ivfflat" in present:
                self._drop_indexes(conn, names, {"ivfflat"})
            if "hnsw" not in present:
                self.progress(f"building the hnsw index on {rows} chunks")
                self._tune_maintenance(conn)
                conn.execute(f"CREATE INDEX {names['hnsw']} ON {CHUNKS_TABLE} USING hnsw ({expression} {opclass})")
                self._record_index(conn, "hnsw", None, rows)
            return "hnsw"

        # ivfflat
        if "hnsw" in present:
            self._drop_indexes(conn, names, {"hnsw"})
        if rows < self.ivfflat_min_rows:
            if "ivfflat" in present and info.index_rows and rows * IVFFLAT_REBUILD_GROWTH > info.index_rows:
                return f"ivfflat (lists={info.index_lists})"
            self._drop_indexes(conn, names, present & {"ivfflat"})
            self._record_index(conn, None, None, None)
            return f"none (exact search until {self.ivfflat_min_rows} rows, then ivfflat)"
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
        self.progress(f"building the ivfflat index on {rows} chunks (lists={lists})")
        self._tune_maintenance(conn)
        building = names["ivfflat"] + "_new"
        conn.execute(f"DROP INDEX IF EXISTS {building}")
        conn.execute(
            f"CREATE INDEX {building} ON {CHUNKS_TABLE} USING ivfflat ({expression} {opclass}) WITH (lists = {lists})"
        )
        conn.execute(f"DROP INDEX IF EXISTS {names['ivfflat']}")
        conn.execute(f"ALTER INDEX {building} RENAME TO {names['ivfflat']}")
        self._record_index(conn, "ivfflat", lists, rows)
        return f"ivfflat (lists={lists})"

    def _tune_maintenance(self, conn: psycopg.Connection) -> None:
        # An HNSW build is much faster when the graph fits in maintenance_work_mem (default 64MB).
        try:
            with conn.transaction():
                set_local(conn, "maintenance_work_mem", "512MB")
        except psycopg.Error:  # a managed server may refuse; the build still works, slower
            pass

    def _drop_indexes(self, conn: psycopg.Connection, names: dict[str, str], kinds: Iterable[str]) -> None:
        for kind in kinds:
            conn.execute(f"DROP INDEX IF EXISTS {names[kind]}")

    def _record_index(
        self, conn: psycopg.Connection, kind: str | None, lists: int | None, rows: int | None
    ) -> None:
        conn.execute(
            """UPDATE vector_spaces SET index_type = %s, index_lists = %s, index_rows = %s, updated_at = now()
               WHERE space = %s""",
            (kind, lists, rows, CHUNKS_SPACE),
        )

    # -- search ---------------------------------------------------------------------------------------

    def search(
        self, query: str, top_k: int | None = None, mode: str | None = None, path_prefix: str | None = None
    ) -> list[Hit]:
        check_query(query)
        mode = check_mode(mode or self.search_mode)
        top_k = self.top_k if top_k is None else top_k
        if top_k < 1:
            raise RetrievalError(f"top_k must be at least 1, got {top_k}")
        qvec = None
        if mode != "keyword":
            # Embed before taking a connection: the model is the slow part, and holds no database resources.
            (qvec,) = self.embedder.embed([query])
        pool = top_k if mode != "hybrid" else candidate_count(top_k)
        where = "TRUE"
        params: dict[str, Any] = {"limit": pool}
        if path_prefix:
            where = "c.path LIKE %(prefix)s"
            params["prefix"] = like_prefix(path_prefix)
        with self.db.connection() as conn:
            info = self._space(conn)
            vector_ranked: list[tuple[str, float]] = []
            keyword_ranked: list[tuple[str, float]] = []
            rows: dict[str, tuple[Any, ...]] = {}
            if qvec is not None:
                self._check_model_matches(info)
                if len(qvec) != info.dimension:
                    raise IndexNotReady(
                        f"the query vector has {len(qvec)} dims but the index has {info.dimension}; "
                        "run `context-assistant sync`"
                    )
                vector_ranked = self._vector_search(
                    conn, info, qvec, where, dict(params), filtered=bool(path_prefix), rows=rows
                )
            if mode != "vector":
                keyword_ranked = bm25_rank(
                    conn, CHUNKS_SPACE, CHUNKS_TABLE, "chunk_id", where, params, query, pool
                )
            if mode == "vector":
                ranked = vector_ranked
            elif mode == "keyword":
                ranked = keyword_ranked
            else:
                ranked = fuse(vector_ranked, keyword_ranked, self.fusion, self.hybrid_weight)
            ranked = ranked[:top_k]
            missing = [k for k, _ in ranked if k not in rows]  # keyword hits; vector hits came with their rows
            if missing:
                rows.update(
                    (row[0], row)
                    for row in conn.execute(
                        sql.SQL(
                            "SELECT chunk_id, path, heading, page, text FROM {} WHERE chunk_id = ANY(%s)"
                        ).format(sql.Identifier(CHUNKS_TABLE)),
                        (missing,),
                    )
                )
        return [
            Hit(chunk_id, rows[chunk_id][1], rows[chunk_id][2], rows[chunk_id][3], rows[chunk_id][4], score)
            for chunk_id, score in ranked
            if chunk_id in rows
        ]

    def _check_model_matches(self, info: SpaceInfo) -> None:
        if info.model != self.embedder.model_name:
            raise IndexNotReady(
                f"the chunk index was built with {info.model} but rag.embedding_model is now "
                f"{self.embedder.model_name}; run `context-assistant sync` to rebuild it"
            )

    def _space(self, conn: psycopg.Connection) -> SpaceInfo:
        """The chunk space as recorded, in one round trip (this is on every search's path)."""
        row = conn.execute(
            """SELECT space, model, dimension, index_type, index_lists, index_rows
               FROM vector_spaces WHERE space = %s AND to_regclass(%s) IS NOT NULL""",
            (CHUNKS_SPACE, CHUNKS_TABLE),
        ).fetchone()
        if row is None:
            raise IndexNotReady("the chunk index is empty: run `context-assistant ingest` (or `sync`) first")
        return SpaceInfo(*row)

    def _vector_search(
        self,
        conn: psycopg.Connection,
        info: SpaceInfo,
        qvec: Sequence[float],
        where: str,
        params: dict,
        filtered: bool,
        rows: dict[str, tuple[Any, ...]] | None = None,
    ) -> list[tuple[str, float]]:
        """Nearest chunks by cosine distance; their rows (chunk_id, path, heading, page, text) go into ``rows``
        so a vector search needs no second query."""
        if self._pgvector is None:
            self._pgvector = pgvector_version(conn)
        limit = params["limit"]
        if info.index_type == "hnsw":
            ef_search = max(self.hnsw_ef_search, limit)
            if ef_search != PGVECTOR_DEFAULT_EF_SEARCH:  # a round trip saved on the default path
                set_local(conn, "hnsw.ef_search", ef_search)
            if filtered and self._pgvector >= (0, 8):
                set_local(conn, "hnsw.iterative_scan", "relaxed_order")
        elif info.index_type == "ivfflat":
            set_local(conn, "ivfflat.probes", min(self.ivfflat_probes, info.index_lists or self.ivfflat_probes))
            if filtered and self._pgvector >= (0, 8):
                set_local(conn, "ivfflat.iterative_scan", "relaxed_order")
        expression, _ = vector_expression(info.dimension)
        params["qvec"] = vector_literal(qvec)
        distance = f"{expression} <=> {query_vector_sql(info.dimension)}"
        found = conn.execute(
            f"""SELECT chunk_id, path, heading, page, text, distance FROM (
                    SELECT c.chunk_id, c.path, c.heading, c.page, c.text, {distance} AS distance
                    FROM {CHUNKS_TABLE} c
                    WHERE {where} ORDER BY distance LIMIT %(limit)s) ranked
                ORDER BY distance, chunk_id""",
            params,
        ).fetchall()
        if rows is not None:
            rows.update((row[0], row[:5]) for row in found)
        return [(row[0], 1.0 - float(row[5])) for row in found]

    # -- inspection -----------------------------------------------------------------------------------

    def fingerprints(self) -> dict[str, str]:
        """``chunk_id -> content_hash`` of everything indexed (what tests compare with the chunk table)."""
        with self.db.connection() as conn:
            if not table_exists(conn, CHUNKS_TABLE):
                return {}
            return dict(
                conn.execute(
                    sql.SQL("SELECT chunk_id, content_hash FROM {}").format(sql.Identifier(CHUNKS_TABLE))
                ).fetchall()
            )

    def status(self) -> dict[str, Any]:
        """Model, dimension, row count and ANN index of the chunk index."""
        with self.db.connection() as conn:
            info = read_space(conn, CHUNKS_SPACE)
            if info is None or not table_exists(conn, CHUNKS_TABLE):
                return {"model": None, "dimension": None, "chunks": 0, "index_type": None}
            rows = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(CHUNKS_TABLE))
            ).fetchone()[0]
        return {
            "model": info.model,
            "dimension": info.dimension,
            "chunks": rows,
            "index_type": info.index_type,
            "index_lists": info.index_lists,
        }


def ivfflat_lists(rows: int) -> int:
    """pgvector's guidance: rows / 1000 up to 1M rows, sqrt(rows) beyond; at least 10."""
    if rows > 1_000_000:
        return max(10, int(math.sqrt(rows)))
    return max(10, rows // 1000)
