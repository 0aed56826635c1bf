"""Memory recall: find relevant turns from a user's earlier conversations (hybrid BM25 + vector search).

Every stored user and assistant message is a recall candidate, including messages loaded by
``memory import``; system messages, empty ones and failed ones (``metadata.status == "failed"``) are not.
Messages are embedded off the turn's path: after each turn the assistant asks :meth:`TurnRecall.index_later`
to embed the user's new turns on a background thread, and :meth:`TurnRecall.index_pending` does the same for
everyone (``context-assistant sync`` calls it, so a large import is embedded by the job). A turn never waits
for embedding (issue 13: the first turn after a 10,000-message import used to embed them all): until a turn is
indexed, recall finds it by keyword, scoring the newest :data:`PENDING_KEYWORD_ROWS` pending messages of the
user with the same BM25 as the index (their text only).

Table ``turn_index`` (created at run time, sized from the model like ``rag_chunks``): ``message_id``
(primary key, references ``conversations`` with ON DELETE CASCADE so deleting a session removes its turns
from recall), ``user_id``, ``session_id``, ``tsv``, ``doc_len``, ``embedding``. BM25 statistics live in
``bm25_terms``/``bm25_stats`` under the space ``turns``. Vector search per user is exact (one user's turns
are few enough; no ANN index), and every query filters on ``user_id``: a user never recalls another
user's turns. Long messages are embedded from their first :data:`EMBED_CHARS` characters (the model would
truncate anyway); BM25 indexes the whole text.

**Relevance floor** (``memory.recall_min_similarity``, :mod:`~context_assistant.retrieval.relevance`): without it
a user's closest earlier turns reach every prompt, even for a question unrelated to anything they said.

If the embedding model fails, recall degrades to keyword search instead of failing the turn; if the model
changed, the table is rebuilt (and re-embedded lazily). Creating or rebuilding the table is DDL, which only
the schema's owner does (``Database.may_change_schema``): the owner's setup and sync create it, and a
process that only uses the schema (the Databricks App) recalls what is there meanwhile and logs why.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from ..storage.bm25 import TEXT_SEARCH_CONFIG, WEIGHTED_DOC_LEN_SQL, bm25_rank
from ..storage.db import Database, scalar
from ..storage.vector_spaces import QueryVector, SpaceInfo, read_space, reset_space, table_exists, vector_literal
from . import turn_context
from .base import RecalledTurn, RetrievalError, RetrievalFailed, candidate_count, check_mode, check_query
from .embeddings import Embedder, EmbeddingError, checked_dimension, validate_vectors
from .fusion import fuse, keyword_only, with_own_similarity
from .relevance import relevance_floor

log = logging.getLogger(__name__)

TURNS_SPACE = "turns"
TURNS_TABLE = "turn_index"
EMBED_CHARS = 2000
DEFAULT_BATCH_SIZE = 64
RECALL_ROLES = ("user", "assistant")
SPACE_LOCK_KEY = 0x0C0A5519  # serialises creating/rebuilding turn_index between processes
PENDING_KEYWORD_ROWS = 5000  # newest not-yet-indexed messages of a user that recall scores by keyword

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

_ELIGIBLE = """c.role IN ('user', 'assistant')
      AND NOT (c.metadata @> '{"status": "failed"}')
      AND NOT (c.metadata @> '{"model": "offline"}')
      AND btrim(c.content) <> ''"""

_PENDING = f"""
    SELECT c.id, c.user_id, c.session_id, c.content FROM conversations c
    WHERE {{user_filter}} c.id > %(after)s
      AND c.role IN ('user', 'assistant')
      AND NOT (c.metadata @> '{{{{"status": "failed"}}}}')
      AND NOT (c.metadata @> '{{{{"model": "offline"}}}}')
      AND btrim(c.content) <> ''
      AND NOT EXISTS (SELECT 1 FROM {TURNS_TABLE} t WHERE t.message_id = c.id)
    ORDER BY c.id LIMIT %(limit)s"""


def _pending_rows(not_indexed: str) -> str:
    """The user's newest pending turns (eligible, and ``not_indexed`` if the index exists) as a table bm25_rank
    can score: the text only (weight A), bounded by the user's own messages (the conversations_history index),
    never all messages."""
    return f"""(
    SELECT p.id AS message_id, p.user_id, p.session_id, v.tsv,
           {WEIGHTED_DOC_LEN_SQL.format(tsv="v.tsv", **turn_context.BM25_WEIGHTS)} AS doc_len
    FROM (SELECT c.id, c.user_id, c.session_id, c.content FROM conversations c
          WHERE c.user_id = %(user)s AND {_ELIGIBLE}{not_indexed}
          ORDER BY c.id DESC LIMIT {PENDING_KEYWORD_ROWS}) p
    CROSS JOIN LATERAL (SELECT setweight(to_tsvector('{TEXT_SEARCH_CONFIG}', p.content), 'A') AS tsv) v)"""


_NOT_INDEXED = f" AND NOT EXISTS (SELECT 1 FROM {TURNS_TABLE} t WHERE t.message_id = c.id)"
_KEYWORD_ROWS = f"""(SELECT message_id, user_id, session_id, tsv, doc_len FROM {TURNS_TABLE}
    UNION ALL SELECT * FROM {_pending_rows(_NOT_INDEXED)} pending)"""
# Before the background indexer has created the turn space (the first minutes of a new install, or an embedding
# service that has never answered) every eligible message is pending: recall scores them by keyword alone.
_UNINDEXED_ROWS = _pending_rows("")


class TurnRecall:
    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        *,
        top_k: int = 3,
        search_mode: str = "hybrid",
        batch_size: int = DEFAULT_BATCH_SIZE,
        fusion: str = "minmax",  # memory.recall_fusion
        hybrid_weight: float = 0.5,
        min_similarity: str = "off",  # the config's memory.recall_min_similarity is "auto"
    ) -> None:
        self.db = db
        self.embedder = embedder
        self.top_k = top_k
        self.search_mode = check_mode(search_mode)
        self.batch_size = batch_size
        self.fusion = fusion
        self.hybrid_weight = hybrid_weight
        self.floor = relevance_floor(min_similarity, embedder.model_name)
        self._warned_not_ready = False
        self._space: SpaceInfo | None = None  # the turn space as last read, while it matches the model
        self._lock = threading.Lock()
        self._waiting: set[str | None] = set()  # users whose new turns the background indexer should embed
        self._indexer: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False

    @property
    def space_model(self) -> str:
        """What the turn index records as its model: the embedding model and the version of what is indexed
        per turn (:mod:`context_assistant.retrieval.turn_context`), so a change of either rebuilds it."""
        return f"{self.embedder.model_name}#{turn_context.VERSION}"

    # -- indexing -------------------------------------------------------------------------------------

    def prepare(self) -> int | None:
        """Create (or rebuild for a new model) the turn table now; the owner's setup step calls this so a
        process that may not change the schema finds it ready. Returns its dimension (None: not possible)."""
        return self._ensure_space()

    def _ensure_space(self) -> int | None:
        """The turn table for the current model (created or rebuilt if needed); returns its dimension, or
        None when it needs creating or rebuilding and this process may not change the schema."""
        model = self.space_model
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
        self._space = None
        return dimension

    def index_pending(self, user: str | None = None) -> int:
        """Index stored turns that are not indexed yet (of ``user``, or of everyone); returns how many new
        turns were indexed (neighbours re-indexed with them are not counted).

        Each turn is indexed with its neighbours (:mod:`context_assistant.retrieval.turn_context`); the turns whose
        context a new one changes (its neighbours, already indexed) are re-indexed in the same batch.
        """
        dimension = self._ensure_space()
        if dimension is None:
            return 0
        user_filter = "c.user_id = %(user)s AND" if user is not None else ""
        query = _PENDING.format(user_filter=user_filter)
        after = 0
        embedded = 0
        while not self._closed:  # close() stops a long run (a big import) between batches
            with self.db.connection() as conn:
                rows = conn.execute(query, {"user": user, "after": after, "limit": self.batch_size}).fetchall()
            if not rows:
                return embedded
            after = rows[-1][0]
            documents = self._documents([row[0] for row in rows])
            if not documents:
                continue
            ids = list(documents)
            texts = [documents[i].embed for i in ids]
            vectors = validate_vectors(
                self.embedder.embed(texts), len(texts), dimension, f"embedding model {self.embedder.model_name!r}"
            )
            try:
                embedded += self._write(ids, documents, vectors)
            except psycopg.errors.ForeignKeyViolation:
                log.info("recall: a session was deleted while its turns were embedded; skipping them")
        return embedded

    def index_later(self, user: str | None) -> None:
        """Embed the user's pending turns on a background thread (one per process, started on demand), so no
        turn waits for the model; recall finds them by keyword meanwhile. Failures are logged and the turns
        stay pending (the next turn or ``context-assistant sync`` indexes them)."""
        with self._lock:
            if self._closed:
                return
            self._waiting.add(user)
            self._idle.clear()
            if self._indexer is None:
                self._indexer = threading.Thread(target=self._index_waiting, name="recall-indexer", daemon=True)
                self._indexer.start()

    def wait_for_indexing(self, timeout: float | None = None) -> bool:
        """Wait until the background indexer has nothing left to do; False if ``timeout`` passed first."""
        return self._idle.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking background work and let the running batch finish (turns left pending stay pending,
        for the next process or ``context-assistant sync``)."""
        with self._lock:
            self._closed = True
            self._waiting.clear()
        self._idle.wait(timeout)

    def _index_waiting(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self._indexer = None
                    self._idle.set()
                    return
                user = self._waiting.pop()
            try:
                self.index_pending(user)
            except Exception as exc:
                log.warning(
                    "recall: background indexing failed, the turns stay pending until the next try: %s", exc
                )

    def _documents(self, new_ids: list[int]) -> dict[int, turn_context.TurnDocument]:
        """The documents of the new turns and of the indexed neighbours whose context they change."""
        before, after = turn_context.CONTEXT_BEFORE, turn_context.CONTEXT_AFTER
        with self.db.connection() as conn:
            sessions = [
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT session_id FROM conversations WHERE id = ANY(%s)", (new_ids,)
                ).fetchall()
            ]
            rows = conn.execute(
                f"""SELECT c.id, c.session_id, c.role, c.content, c.timestamp, c.metadata FROM conversations c
                    WHERE c.session_id = ANY(%s) AND {_ELIGIBLE}
                    ORDER BY c.session_id, c.timestamp, c.id""",
                (sessions,),
            ).fetchall()
        by_session: dict[str, list[turn_context.Turn]] = {}
        for row in rows:
            by_session.setdefault(row[1], []).append(turn_context.Turn(*row))
        wanted = set(new_ids)
        documents: dict[int, turn_context.TurnDocument] = {}
        for turns in by_session.values():
            positions = [i for i, t in enumerate(turns) if t.message_id in wanted]
            todo = set(positions)
            for i in positions:  # neighbours whose window now includes the new turn
                todo.update(range(max(0, i - after), min(len(turns), i + before + 1)))
            for i in sorted(todo):
                documents[turns[i].message_id] = turn_context.build_document(
                    turns[i], turns[max(0, i - before) : i], turns[i + 1 : i + 1 + after]
                )
        return documents

    def _write(
        self, ids: list[int], documents: dict[int, turn_context.TurnDocument], vectors: list[list[float]]
    ) -> int:
        """Index one batch in one statement, the vectors bound as a ``vector[]`` (binary) and the fields as
        ``text[]``: no temporary table, so a role with no TEMP privilege on the database (an app's) can write
        it too. Returns how many new turns were indexed (re-indexed neighbours are updates, not counted)."""
        weights = turn_context.BM25_WEIGHTS
        doc_len = WEIGHTED_DOC_LEN_SQL.format(tsv="v.tsv", **weights)
        with self.db.connection() as conn:
            # Vectors go as pgvector's text form: no type adapter (no per-call type lookup) on the connection.
            # Text and owner come from conversations itself, so a turn is indexed exactly as stored; the fields
            # are weighted A (text), B (speaker), C (date and temporal cues), D (neighbours).
            cfg = TEXT_SEARCH_CONFIG
            rows = conn.execute(
                f"""INSERT INTO {TURNS_TABLE} (message_id, user_id, session_id, tsv, doc_len, embedding)
                    SELECT c.id, c.user_id, c.session_id, v.tsv, {doc_len}, s.embedding
                    FROM unnest(%s::bigint[], %s::text[]::vector[], %s::text[], %s::text[], %s::text[])
                        AS s(message_id, embedding, speaker, day, context)
                    JOIN conversations c ON c.id = s.message_id
                    CROSS JOIN LATERAL (SELECT
                        setweight(to_tsvector('{cfg}', c.content), 'A')
                        || setweight(to_tsvector('{cfg}', s.speaker), 'B')
                        || setweight(to_tsvector('{cfg}', s.day), 'C')
                        || setweight(to_tsvector('{cfg}', s.context), 'D') AS tsv) v
                    ORDER BY c.id
                    ON CONFLICT (message_id) DO UPDATE SET tsv = EXCLUDED.tsv, doc_len = EXCLUDED.doc_len,
                        embedding = EXCLUDED.embedding
                    RETURNING (xmax = 0)""",
                (
                    ids,
                    [vector_literal(vector) for vector in vectors],
                    [documents[i].speaker for i in ids],
                    [documents[i].when for i in ids],
                    [documents[i].context for i in ids],
                ),
            ).fetchall()
            return sum(1 for (inserted,) in rows if inserted)  # new turns, not re-indexed ones

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
            info = self._read_space(conn)
            if info is None and mode == "vector":
                return []
            vector_ranked: list[int] = []
            keyword_ranked: list[int] = []
            scores: dict[int, float] = {}
            vector_scores: dict[int, float] = {}
            keyword_scores: dict[int, float] = {}
            ceiling: list[float] = []  # the question's BM25 ceiling (hybrid fusion)
            vector_searched = False
            if (
                qvec is not None
                and info is not None
                and info.model == self.space_model
                and len(qvec) == info.dimension
            ):
                vector_searched = True
                params["qvec"] = QueryVector(qvec)
                nearest = conn.execute(
                    f"""SELECT c.message_id, c.embedding <=> %(qvec)s::vector({info.dimension}) AS distance
                        FROM {TURNS_TABLE} c WHERE {where}
                        ORDER BY distance, c.message_id LIMIT %(limit)s""",
                    params,
                ).fetchall()
                for message_id, similarity in self.floor.vector([(m, 1.0 - float(d)) for m, d in nearest]):
                    vector_ranked.append(message_id)
                    scores[message_id] = vector_scores[message_id] = similarity
            if mode != "vector":
                # Indexed turns and the ones not embedded yet (a big import, the last turns) in one scoring.
                for message_id, score in bm25_rank(
                    conn,
                    TURNS_SPACE,
                    _KEYWORD_ROWS if info is not None else _UNINDEXED_ROWS,
                    "message_id",
                    where,
                    params,
                    query,
                    pool,
                    weights=turn_context.BM25_WEIGHTS,
                    unknown_terms=True,
                    min_coverage=self.floor.keyword_share(vector_searched, vector_ranked),
                    ceiling=ceiling,
                ):
                    keyword_ranked.append(message_id)
                    keyword_scores[message_id] = float(score)
                if mode == "keyword":
                    scores.update(keyword_scores)
            if mode == "hybrid":
                per_ceiling = 1 / ceiling[0] if ceiling else 1.0  # BM25 beside cosine: a share of its ceiling
                vector_side = [(m, vector_scores[m]) for m in vector_ranked]
                if vector_searched and info is not None and self.fusion == "convex":
                    vector_side = self._with_own_similarity(conn, info, params, vector_side, keyword_ranked)
                ranked = fuse(
                    vector_side,
                    [(m, keyword_scores[m] * per_ceiling) for m in keyword_ranked],
                    self.fusion,
                    self.hybrid_weight,
                    pool,
                )
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
            RecalledTurn(
                m,
                rows[m][1],
                rows[m][2],
                rows[m][3],
                rows[m][4],
                score,
                vector_scores.get(m),
                keyword_scores.get(m),
            )
            for m, score in ranked
            if m in rows
        ]

    @staticmethod
    def _with_own_similarity(
        conn: psycopg.Connection,
        info: SpaceInfo,
        params: dict[str, Any],
        vector: list[tuple[int, float]],
        keyword: list[int],
    ) -> list[tuple[int, float]]:
        """The vector candidates and the keyword-only turns that are indexed, with their own cosine similarity
        (one statement by key), best first: convex fusion then estimates nothing for them (as
        :func:`.fusion.fuse_chunks` does for chunks; a turn not embedded yet keeps the estimate)."""
        others = keyword_only(vector, keyword)
        if not others:
            return vector
        found = conn.execute(
            f"""SELECT message_id, embedding <=> %(qvec)s::vector({info.dimension})
                FROM {TURNS_TABLE} WHERE message_id = ANY(%(others)s) AND user_id = %(user)s""",
            {"qvec": params["qvec"], "others": others, "user": params["user"]},
        ).fetchall()
        return with_own_similarity(vector, found)

    def _read_space(self, conn: psycopg.Connection) -> SpaceInfo | None:
        """The turn space, read once per process while it matches the model (it is on every turn's path)."""
        if self._space is not None:
            return self._space
        info = read_space(conn, TURNS_SPACE)
        if info is None or not table_exists(conn, TURNS_TABLE):
            return None
        if info.model == self.space_model:
            self._space = info
        return info

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
