"""The pgvector backend: chunk embeddings in the same Postgres as memory, with hybrid BM25 + vector search.

Schema (migration 3 creates the shared parts; the tables with a ``vector(dim)`` column are created here,
once the model's dimension is known; the space and BM25 primitives live in :mod:`context_assistant.storage`,
shared with memory recall):

* ``vector_spaces``: per space (``chunks``, ``turns``) the model and dimension that filled it, and the
  approximate-nearest-neighbour (ANN) index built on it. A different model (name or dimension) drops and
  recreates the space's table: vectors from two models are never mixed.
* ``rag_chunks``: one row per indexed chunk: ``chunk_id`` (primary key), ``path``, ``chunk_index``,
  ``heading``, ``page``, ``text``, ``content_hash``, ``tsv`` (english tsvector of heading + text, plus BM25
  impact-tier keys), ``doc_len`` (tokens in ``tsv``), ``embedding vector(dim)``, ``indexed_at``.
* ``bm25_terms`` / ``bm25_stats``: df per lexeme and document count/total length per space (triggers).

Keyword search is real BM25 in plain SQL (runs on Lakebase, no extension needed), exact top-k scoring only the
rows that can reach it (:mod:`context_assistant.storage.bm25_tiers`). Hybrid search fuses the vector and BM25
rankings (``rag.fusion``, :mod:`.fusion`): by default a convex combination of the cosine similarity and BM25's
share of its query's ceiling (per document: ``rag.document_fusion``), or of min-max normalised scores, or RRF
(k=60).

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
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..core.config import INDEX_TYPES, RagConfig
from ..core.console import Progress, quiet
from ..core.errors import ConfigError
from ..storage.bm25_tiers import bm25_top, ensure_tier_keys
from ..storage.db import Database, scalar
from ..storage.vector_spaces import (
    IVFFLAT_MIN_ROWS,
    QueryVector,
    SpaceInfo,
    ensure_ann_index,
    finish_full_reembedding,
    indexed_for_sync,
    like_prefix,
    pgvector_version,
    query_vector_sql,
    read_space,
    reset_space,
    set_local,
    table_exists,
    vector_expression,
)
from .base import (
    Hit,
    IndexNotReady,
    PassageUnavailable,
    RetrievalError,
    candidate_count,
    check_mode,
    check_query,
)
from .chunk_rows import write_chunk_rows
from .embed_table import rate_line
from .embeddings import Embedder, EmbeddingError, checked_dimension, validate_vectors
from .fusion import fuse_chunks
from .relevance import relevance_floor
from .sync import (
    ChunkSource,
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

DEFAULT_BATCH_SIZE = 256  # chunks embedded per write transaction
DELETE_BATCH_SIZE = 1000
MAX_CONSECUTIVE_FAILURES = 3  # documents failing in a row before the run stops embedding
SYNC_LOCK_KEY = 0x0C0A5518  # advisory lock: one refresh of the chunk index at a time

CHUNKS_SPACE = "chunks"
CHUNKS_TABLE = "rag_chunks"
PGVECTOR_DEFAULT_EF_SEARCH = 40  # hnsw.ef_search when nobody sets it


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


class PgVectorChunkIndex:
    """A :class:`context_assistant.retrieval.base.ChunkIndex` in Postgres + pgvector."""

    needs_source = True  # filled by us, from the chunk table read through a ChunkSource

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
        fusion: str = "convex",
        hybrid_weight: float = 0.5,
        document_fusion: bool = True,
        min_similarity: str = "off",  # the config's rag.min_similarity is "auto"
    ) -> None:
        if index_type not in INDEX_TYPES:
            raise ConfigError(f"rag.index_type: {index_type!r} is not one of {', '.join(INDEX_TYPES)}")
        self.db = db
        self.embedder = embedder
        self.index_type = index_type
        self.search_mode = check_mode(search_mode)
        self.top_k = top_k
        self.hnsw_ef_search = hnsw_ef_search
        self.ivfflat_probes = ivfflat_probes
        self.batch_size = batch_size
        self.ivfflat_min_rows = ivfflat_min_rows
        self.fusion = fusion
        self.hybrid_weight = hybrid_weight
        self.document_fusion = document_fusion
        self.floor = relevance_floor(min_similarity, embedder.model_name)
        self._pgvector: tuple[int, ...] | None = None

    @classmethod
    def from_config(cls, db: Database, embedder: Embedder, rag: RagConfig, **kwargs: Any) -> PgVectorChunkIndex:
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
            document_fusion=rag.document_fusion,
            min_similarity=rag.min_similarity,
            **kwargs,
        )

    # -- sync -----------------------------------------------------------------------------------------

    def refresh(
        self,
        source: ChunkSource | None = None,
        full: bool = False,
        *,
        progress: Progress | None = None,
        embedder: Embedder | None = None,
        batch_size: int | None = None,
    ) -> SyncResult:
        """Make the index equal the chunk table (ids and content hashes); see :mod:`context_assistant.retrieval.sync`.

        One refresh at a time (a Postgres advisory lock); every batch is its own transaction; a document's
        changes are written together or, if its chunks cannot be embedded, not at all (its old chunks stay
        and it is listed in ``SyncResult.failed``). Raises :class:`SyncError` when another refresh runs.
        ``embedder`` replaces the index's own for this sync (one that reads the embeddings table first, see
        :mod:`context_assistant.retrieval.embed_spark`); it must be the same model. ``batch_size`` replaces
        the chunks per write transaction (larger when the vectors are only copied).
        """
        if source is None:
            raise SyncError("the pgvector index is filled from the chunk table: refresh needs its ChunkSource")
        say = progress or quiet
        started = time.monotonic()
        model = self.embedder.model_name
        with self.db.connection() as conn:
            got = scalar(conn, "SELECT pg_try_advisory_lock(%s)", (SYNC_LOCK_KEY,))
            conn.commit()
            if not got:
                raise SyncError(
                    "another sync of the chunk index is running; try again when it has finished", retryable=True
                )
            try:
                from pgvector.psycopg import register_vector

                register_vector(conn)
                result = SyncResult(model=model)
                result.rebuilt, dimension = self._ensure_space(conn, say, embedder or self.embedder)
                result.dimension = dimension
                ensure_tier_keys(conn, CHUNKS_SPACE, CHUNKS_TABLE, say)  # an index written before tiers existed
                indexed, full_since = indexed_for_sync(conn, CHUNKS_SPACE, CHUNKS_TABLE, full=full, say=say)
                say(f"reading {source.label}")
                plan = plan_sync(source.fingerprints(), indexed)  # --full: the stale rows above
                result.kept = plan.kept
                say(
                    f"{plan.upsert_count} chunk(s) to embed in {len(plan.changes)} document(s), "
                    f"{len(plan.deletes)} to delete, {plan.kept} unchanged"
                )
                self._delete(conn, plan.deletes, result)
                self._embed_and_write(
                    conn,
                    source,
                    plan,
                    dimension,
                    result,
                    say,
                    embedder or self.embedder,
                    batch_size or self.batch_size,
                )
                ensure_tier_keys(conn, CHUNKS_SPACE, CHUNKS_TABLE, say)  # the average length drifted
                result.index = ensure_ann_index(
                    conn,
                    CHUNKS_SPACE,
                    CHUNKS_TABLE,
                    index_type=self.index_type,
                    ivfflat_min_rows=self.ivfflat_min_rows,
                    say=say,
                    rows_label="chunks",
                )
                if full_since is not None and not result.failed:
                    finish_full_reembedding(conn, CHUNKS_SPACE)
                conn.commit()
            finally:
                conn.rollback()
                conn.execute("SELECT pg_advisory_unlock(%s)", (SYNC_LOCK_KEY,))
                conn.commit()
        result.seconds = time.monotonic() - started
        return result

    def _ensure_space(self, conn: psycopg.Connection, say: Progress, embedder: Embedder) -> tuple[bool, int]:
        """Create the table on first use or when the model changed; returns (rebuilt, dimension)."""
        info = read_space(conn, CHUNKS_SPACE)
        model = embedder.model_name
        if info is not None and info.model == model and table_exists(conn, CHUNKS_TABLE):
            return False, info.dimension
        dimension = checked_dimension(embedder)  # loads the model / probes the endpoint
        if (
            info is not None
            and info.model == model
            and info.dimension == dimension
            and table_exists(conn, CHUNKS_TABLE)
        ):
            return False, dimension
        if info is not None:
            say(f"embedding model changed from {info.model} ({info.dimension} dims): rebuilding the index")
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
        self,
        conn: psycopg.Connection,
        source: ChunkSource,
        plan: SyncPlan,
        dimension: int,
        result: SyncResult,
        say: Progress,
        embedder: Embedder,
        batch_size: int,
    ) -> None:
        if not plan.changes:
            return
        wanted = [chunk_id for change in plan.changes.values() for chunk_id in change.upserts]
        by_id = {chunk.chunk_id: chunk for chunk in source.read(wanted)}
        consecutive_failures = 0
        done = 0
        # Smallest documents first: a big document does not keep small edited ones out of the index.
        changes = sorted(plan.changes.values(), key=lambda change: (len(change.upserts), change.path))
        batches = list(document_batches(changes, batch_size))
        started = time.monotonic()
        for number, batch in enumerate(batches, start=1):
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                reason = f"not attempted: {MAX_CONSECUTIVE_FAILURES} documents in a row failed to embed"
                for change in batch:
                    result.failed.append(DocumentFailure(change.path, reason, len(change.upserts)))
                continue
            if len(batch) == 1 and len(batch[0].upserts) > batch_size:
                written, failures = self._write_in_slices(
                    conn, batch[0], by_id, dimension, embedder, batch_size, say
                )
            else:
                written, failures = self._embed_batch(batch, by_id, dimension, embedder)
                if written:
                    write_chunk_rows(conn, CHUNKS_SPACE, CHUNKS_TABLE, written, by_id)
            if written:
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
            say(f"batch {number}/{len(batches)}: {rate_line(done, plan.upsert_count, started, time.monotonic())}")

    def _write_in_slices(
        self,
        conn: psycopg.Connection,
        change: DocumentChange,
        by_id: dict[str, SourceChunk],
        dimension: int,
        embedder: Embedder,
        slice_size: int,
        say: Progress,
    ) -> tuple[list[tuple[DocumentChange, list[list[float]]]], list[DocumentFailure]]:
        """A document bigger than a batch, embedded and written ``slice_size`` chunks at a time in one
        transaction: still all or nothing (a failed slice rolls the earlier ones back), but its vectors are never
        all in memory at once. Returns it as written (with no vectors: they are in the table) or its failure."""
        conn.commit()  # what the sync did before (a re-key) is complete: a failed slice must not undo it
        total = len(change.upserts)
        for start in range(0, total, slice_size):
            last = start + slice_size >= len(change.upserts)
            part = DocumentChange(
                change.path, change.upserts[start : start + slice_size], change.deletes if last else []
            )
            written, failures = self._embed_batch([part], by_id, dimension, embedder)
            if failures:
                conn.rollback()
                (failure,) = failures
                return [], [DocumentFailure(change.path, failure.error, len(change.upserts))]
            write_chunk_rows(conn, CHUNKS_SPACE, CHUNKS_TABLE, written, by_id)
            if not last:
                say(f"{change.path}: {start + slice_size}/{total} chunks written (committed when all are)")
        return [(change, [])], []

    def _embed_batch(
        self, batch: list[DocumentChange], by_id: dict[str, SourceChunk], dimension: int, embedder: Embedder
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
            vectors = embedder.embed(texts)
            return validate_vectors(vectors, len(texts), dimension, f"embedding model {embedder.model_name!r}")

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
                vector_ranked = self.floor.vector(
                    self._vector_search(
                        conn, info, qvec, where, dict(params), filtered=bool(path_prefix), rows=rows
                    )
                )
            if mode != "vector":
                keyword_ranked = bm25_top(
                    conn,
                    CHUNKS_SPACE,
                    CHUNKS_TABLE,
                    "chunk_id",
                    where,
                    params,
                    query,
                    pool,
                    min_coverage=self.floor.keyword_share(qvec is not None, vector_ranked),
                    relative=mode == "hybrid",  # fusion puts them beside cosine similarities
                )
            if mode == "vector":
                ranked = vector_ranked
            elif mode == "keyword":
                ranked = keyword_ranked
            else:  # per document (rag.document_fusion): the keyword hits' paths are read in this transaction
                by_document = rows if self.document_fusion else None
                own = None  # convex: the keyword-only candidates' own similarity, read with their paths
                if qvec is not None and self.fusion == "convex":
                    own = (f"{vector_expression(info.dimension)[0]} <=> {query_vector_sql(info.dimension)}", qvec)
                ranked = fuse_chunks(
                    conn, CHUNKS_TABLE, vector_ranked, keyword_ranked, by_document, self, pool, own
                )
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
            raise IndexNotReady(
                f"no documents are indexed in {self.db.target.description}: run `context-assistant ingest` (or "
                "`sync`) there first, or pass --config to use another project's data folder"
            )
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
        params["qvec"] = QueryVector(qvec)
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

    def passage(self, chunk_id: str) -> Hit:
        """The indexed chunk (a source of an earlier answer is stored without its text); score 0."""
        with self.db.connection() as conn:
            try:
                row = conn.execute(
                    sql.SQL("SELECT chunk_id, path, heading, page, text FROM {} WHERE chunk_id = %s").format(
                        sql.Identifier(CHUNKS_TABLE)
                    ),
                    (chunk_id,),
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                row = None
        if row is None:
            raise PassageUnavailable(
                f"passage {chunk_id} is no longer in the document index (its document changed or was removed)"
            )
        found_id, path, heading, page, text = row
        return Hit(found_id, path, heading or "", page, text, 0.0)

    def status(self) -> dict[str, Any]:
        """Model, dimension, row count and ANN index of the chunk index."""
        with self.db.connection() as conn:
            info = read_space(conn, CHUNKS_SPACE)
            if info is None or not table_exists(conn, CHUNKS_TABLE):
                return {"model": None, "dimension": None, "chunks": 0, "index_type": None}
            rows = scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(CHUNKS_TABLE)))
        return {
            "model": info.model,
            "dimension": info.dimension,
            "chunks": rows,
            "index_type": info.index_type,
            "index_lists": info.index_lists,
        }
