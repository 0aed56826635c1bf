"""Memory recall: find relevant turns from a user's earlier conversations (hybrid BM25 + vector search).

Every stored user and assistant message is a recall candidate, including messages loaded by
``memory import``; system messages, empty ones and failed ones (``metadata.status == "failed"``) are not.
Messages are embedded lazily: :meth:`TurnRecall.recall` first embeds the user's messages that have no
embedding yet (in batches), and :meth:`TurnRecall.index_pending` does the same for everyone (``context-assistant
sync`` calls it, so a large import is embedded by the job rather than by the first recall).

Table ``turn_index`` (created at run time, sized from the model like ``rag_chunks``): ``message_id``
(primary key, references ``conversations`` with ON DELETE CASCADE so deleting a session removes its turns
from recall), ``user_id``, ``session_id``, ``tsv``, ``doc_len``, ``embedding``. BM25 statistics live in
``bm25_terms``/``bm25_stats`` under the space ``turns``. Vector search per user is exact (one user's turns
are few enough; no ANN index), and every query filters on ``user_id``: a user never recalls another
user's turns. Long messages are embedded from their first :data:`EMBED_CHARS` characters (the model would
truncate anyway); BM25 indexes the whole text.

If the embedding model fails, recall degrades to keyword search instead of failing the turn; if the model
changed, the table is rebuilt (and re-embedded lazily). Creating or rebuilding the table is DDL, which only
the schema's owner does (``Database.may_change_schema``): the owner's setup and sync create it, and a
process that only uses the schema (the Databricks App) recalls what is there meanwhile and logs why.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from ..storage.bm25 import DOC_LEN_SQL, TEXT_SEARCH_CONFIG, bm25_rank
from ..storage.db import Database, scalar
from ..storage.vector_spaces import read_space, reset_space, table_exists, vector_literal
from .base import RecalledTurn, RetrievalError, RetrievalFailed, candidate_count, check_mode, check_query, rrf_fuse
from .embeddings import Embedder, EmbeddingError, checked_dimension, validate_vectors

log = logging.getLogger(__name__)

TURNS_SPACE = "turns"
TURNS_TABLE = "turn_index"
EMBED_CHARS = 2000
DEFAULT_BATCH_SIZE = 64
RECALL_ROLES = ("user", "assistant")
SPACE_LOCK_KEY = 0x0C0A5519  # serialises creating/rebuilding turn_index between processes

TURNS_DDL = """
    CREATE TABLE {table} (
        message_id  bigint PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
        user_id     text NOT NULL,
        session_id  text NOT NULL,
        tsv         tsvector NOT NULL,
        doc_len     int NOT NULL,
        embedding   vector({dim}) NOT NULL
    );
    CREATE INDEX turn_index_user ON {table} (user_id, session_id);
    CREATE INDEX turn_index_tsv ON {table} USING gin (tsv);
"""

_PENDING = f"""
    SELECT c.id, c.user_id, c.session_id, c.content FROM conversations c
    WHERE {{user_filter}} c.id > %(after)s
      AND c.role IN ('user', 'assistant')
      AND NOT (c.metadata @> '{{{{"status": "failed"}}}}')
      AND NOT (c.metadata @> '{{{{"model": "offline"}}}}')
      AND btrim(c.content) <> ''
      AND NOT EXISTS (SELECT 1 FROM {TURNS_TABLE} t WHERE t.message_id = c.id)
    ORDER BY c.id LIMIT %(limit)s"""


class TurnRecall:
    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        *,
        top_k: int = 3,
        search_mode: str = "hybrid",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.db = db
        self.embedder = embedder
        self.top_k = top_k
        self.search_mode = check_mode(search_mode)
        self.batch_size = batch_size
        self._warned_not_ready = False

    # -- indexing -------------------------------------------------------------------------------------

    def prepare(self) -> int | None:
        """Create (or rebuild for a new model) the turn table now; the owner's setup step calls this so a
        process that may not change the schema finds it ready. Returns its dimension (None: not possible)."""
        return self._ensure_space()

    def _ensure_space(self) -> int | None:
        """The turn table for the current model (created or rebuilt if needed); returns its dimension, or
        None when it needs creating or rebuilding and this process may not change the schema."""
        model = self.embedder.model_name
        with self.db.connection() as conn:
            info = read_space(conn, TURNS_SPACE)
            if info is not None and info.model == model and table_exists(conn, TURNS_TABLE):
                return info.dimension
        if not self.db.may_change_schema:
            if self._warned_not_ready:
                return None
            self._warned_not_ready = True
            built = f"built for {info.model}" if info is not None else "not created yet"
            log.warning(
                "recall: the turn index is %s and rag.embedding_model is %s; this role does not change the "
                "schema, so the owner's sync (the bundle's ingest or nightly job) must build it",
                built,
                model,
            )
            return None
        dimension = checked_dimension(self.embedder)
        with self.db.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SPACE_LOCK_KEY,))
            info = read_space(conn, TURNS_SPACE)  # another process may have done it meanwhile
            if info is not None and info.model == model and table_exists(conn, TURNS_TABLE):
                return info.dimension
            if info is not None:
                log.info("recall: embedding model changed from %s; re-embedding conversation turns", info.model)
            reset_space(conn, TURNS_SPACE, TURNS_TABLE, model, dimension, TURNS_DDL)
        return dimension

    def index_pending(self, user: str | None = None) -> int:
        """Embed stored turns that have no embedding yet (of ``user``, or of everyone); returns how many."""
        dimension = self._ensure_space()
        if dimension is None:
            return 0
        user_filter = "c.user_id = %(user)s AND" if user is not None else ""
        query = _PENDING.format(user_filter=user_filter)
        after = 0
        embedded = 0
        while True:
            with self.db.connection() as conn:
                rows = conn.execute(query, {"user": user, "after": after, "limit": self.batch_size}).fetchall()
            if not rows:
                return embedded
            after = rows[-1][0]
            texts = [content[:EMBED_CHARS] for _, _, _, content in rows]
            vectors = validate_vectors(
                self.embedder.embed(texts), len(texts), dimension, f"embedding model {self.embedder.model_name!r}"
            )
            try:
                embedded += self._write(rows, vectors)
            except psycopg.errors.ForeignKeyViolation:
                log.info("recall: a session was deleted while its turns were embedded; skipping them")

    def _write(self, rows: list[tuple[Any, ...]], vectors: list[list[float]]) -> int:
        """Insert one batch in one statement, the vectors bound as a ``vector[]`` (binary): no temporary
        table, so a role with no TEMP privilege on the database (an app's) can write it too."""
        import numpy as np
        from pgvector.psycopg import register_vector

        with self.db.connection() as conn:
            register_vector(conn)
            # Text and owner come from conversations itself, so a turn is indexed exactly as stored.
            return conn.execute(
                f"""INSERT INTO {TURNS_TABLE} (message_id, user_id, session_id, tsv, doc_len, embedding)
                    SELECT c.id, c.user_id, c.session_id, v.tsv, {DOC_LEN_SQL.format(tsv="v.tsv")}, s.embedding
                    FROM unnest(%s::bigint[], %s::vector[]) AS s(message_id, embedding)
                    JOIN conversations c ON c.id = s.message_id
                    CROSS JOIN LATERAL (SELECT to_tsvector('{TEXT_SEARCH_CONFIG}', c.content) AS tsv) v
                    ORDER BY c.id
                    ON CONFLICT (message_id) DO NOTHING""",
                (
                    [row[0] for row in rows],
                    [np.asarray(vector, dtype=np.float32) for vector in vectors],
                ),
            ).rowcount

    # -- recall ---------------------------------------------------------------------------------------

    def recall(
        self,
        user: str,
        query: str,
        top_k: int | None = None,
        exclude_session: str | None = None,
        mode: str | None = None,
    ) -> list[RecalledTurn]:
        """The user's past turns most relevant to ``query``, best first (never another user's turns).

        ``exclude_session`` leaves out the session being answered (its turns are already in the prompt).
        """
        check_query(query)
        if not user:
            raise RetrievalError("recall needs a user")
        mode = check_mode(mode or self.search_mode)
        top_k = self.top_k if top_k is None else top_k
        if top_k < 1:
            return []
        qvec = None
        try:
            self.index_pending(user)  # keyword search needs the rows too (their tsvector lives there)
            if mode != "keyword":
                (qvec,) = self.embedder.embed([query])
        except EmbeddingError as exc:
            if mode == "vector":
                raise RetrievalFailed(f"recall could not embed the query: {exc}") from exc
            log.warning("recall uses keyword search over the turns embedded so far: %s", exc)
        pool = top_k if mode != "hybrid" else candidate_count(top_k)
        # Failed turns are left out, and so are the offline model's replies: they only quote documents that
        # retrieval already finds, and recalling them would crowd out what the user actually said.
        where = (
            "c.user_id = %(user)s AND NOT EXISTS (SELECT 1 FROM conversations m WHERE m.id = c.message_id"
            ' AND (m.metadata @> \'{"status": "failed"}\' OR m.metadata @> \'{"model": "offline"}\'))'
        )
        params: dict[str, Any] = {"user": user, "limit": pool}
        if exclude_session is not None:
            where += " AND c.session_id <> %(exclude)s"
            params["exclude"] = exclude_session
        with self.db.connection() as conn:
            info = read_space(conn, TURNS_SPACE)
            if info is None or not table_exists(conn, TURNS_TABLE):
                return []
            vector_ranked: list[int] = []
            keyword_ranked: list[int] = []
            scores: dict[int, float] = {}
            if qvec is not None and info.model == self.embedder.model_name and len(qvec) == info.dimension:
                params["qvec"] = vector_literal(qvec)
                for message_id, distance in conn.execute(
                    f"""SELECT c.message_id, c.embedding <=> %(qvec)s::vector({info.dimension}) AS distance
                        FROM {TURNS_TABLE} c WHERE {where}
                        ORDER BY distance, c.message_id LIMIT %(limit)s""",
                    params,
                ):
                    vector_ranked.append(message_id)
                    scores[message_id] = 1.0 - float(distance)
            if mode != "vector":
                for message_id, score in bm25_rank(
                    conn, TURNS_SPACE, TURNS_TABLE, "message_id", where, params, query, pool
                ):
                    keyword_ranked.append(message_id)
                    if mode == "keyword":
                        scores[message_id] = float(score)
            if mode == "hybrid":
                ranked = rrf_fuse([vector_ranked, keyword_ranked])
            else:
                ranked = [(m, scores[m]) for m in (vector_ranked if mode == "vector" else keyword_ranked)]
            ranked = ranked[:top_k]
            rows = {
                row[0]: row
                for row in conn.execute(
                    """SELECT id, session_id, role, content, timestamp FROM conversations
                       WHERE id = ANY(%s) AND user_id = %s""",
                    ([m for m, _ in ranked], user),
                )
            }
        return [
            RecalledTurn(m, rows[m][1], rows[m][2], rows[m][3], rows[m][4], score)
            for m, score in ranked
            if m in rows
        ]

    def pending_count(self, user: str | None = None) -> int:
        """How many turns still wait for an embedding (for status output and tests)."""
        with self.db.connection() as conn:
            if not table_exists(conn, TURNS_TABLE):
                user_filter = "c.user_id = %(user)s AND" if user is not None else ""
                return scalar(
                    conn,
                    f"""SELECT count(*) FROM conversations c WHERE {user_filter}
                        c.role IN ('user', 'assistant') AND NOT (c.metadata @> '{{"status": "failed"}}')
                        AND btrim(c.content) <> ''""",
                    {"user": user},
                )
            query = _PENDING.format(user_filter="c.user_id = %(user)s AND" if user is not None else "")
            return len(conn.execute(query, {"user": user, "after": 0, "limit": 1 << 62}).fetchall())
