"""The peer side: LangChain's Postgres stack, used as its documentation shows, on the same server and data.

* memory: ``langchain_postgres.PostgresChatMessageHistory`` (its own table, created by ``create_tables``; it
  has an index on ``session_id``) on one psycopg connection, as documented;
* indexing: ``langchain_core.indexing.index()`` with ``langchain_classic.indexes.SQLRecordManager`` (in the
  same database) and ``langchain_postgres.PGVectorStore`` (``PGEngine`` + ``init_vectorstore_table``), with an
  HNSW index made by ``apply_vector_index(HNSWIndex())``;
* retrieval: the same ``PGVectorStore`` and ``similarity_search``.

Embeddings go through :class:`SharedEmbeddings`, a LangChain ``Embeddings`` wrapping the very embedder object
our side uses (the same sentence-transformers model instance and batch size, or the same synthetic vectors),
so the two sides embed identically and only the storage and bookkeeping differ.

These packages live in ``benchmarks/requirements.txt`` and the separate ``.venv-bench``; nothing here is
imported unless :func:`missing` says they are installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from benchmarks.corpus import state_of
from benchmarks.scratch import sqlalchemy_url

if TYPE_CHECKING:  # benchmarks.memory imports this module
    from benchmarks.memory import AppendTrial

PEER_MODULES = ("langchain_core", "langchain_postgres", "langchain_classic", "sqlalchemy")
HISTORY_TABLE = "lc_chat_history"
VECTOR_TABLE = "lc_chunks"


def missing() -> str:
    """'' when the peer packages can be imported, else which are missing and how to install them."""
    absent = [name for name in PEER_MODULES if importlib.util.find_spec(name) is None]
    if not absent:
        return ""
    return (
        f"{', '.join(absent)} not installed here; set up the benchmark virtualenv "
        "(README, Performance) and run `.venv-bench/bin/python -m benchmarks`"
    )


def SharedEmbeddings(embedder: Any) -> Any:  # a class factory, so langchain is imported lazily
    """A LangChain ``Embeddings`` that delegates to our embedder object (same model, same batching)."""
    from langchain_core.embeddings import Embeddings

    class _Shared(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embedder.embed(list(texts))

        def embed_query(self, text: str) -> list[float]:
            return embedder.embed([text])[0]

    return _Shared()


def session_uuid(name: str) -> str:
    """LangChain's history wants a UUID session id: the same md5-derived UUID the SQL fill computes."""
    return str(uuid.UUID(hashlib.md5(name.encode()).hexdigest()))


# ---------------------------------------------------------------------------------------------------------
# memory


def _history(conn: psycopg.Connection, session: str) -> Any:
    from langchain_postgres import PostgresChatMessageHistory

    return PostgresChatMessageHistory(HISTORY_TABLE, session, sync_connection=conn)


def _create_history_table(conn: psycopg.Connection) -> None:
    from langchain_postgres import PostgresChatMessageHistory

    PostgresChatMessageHistory.create_tables(conn, HISTORY_TABLE)


def their_appends(conninfo: str, messages: int, batch: int) -> AppendTrial:
    """``add_messages`` into one session, ``batch`` messages per call (a :class:`benchmarks.memory.AppendTrial`)."""
    from langchain_core.messages import AIMessage, HumanMessage

    from benchmarks.memory import AppendTrial

    conn = psycopg.connect(conninfo)
    _create_history_table(conn)
    history = _history(conn, session_uuid("bench"))
    calls = [
        [
            (HumanMessage if (start + j) % 2 == 0 else AIMessage)(content=message_text(start + j))
            for j in range(min(batch, messages - start))
        ]
        for start in range(0, messages, batch)
    ]

    def count() -> int:
        return int(
            conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(HISTORY_TABLE))).fetchone()[0]
        )

    return AppendTrial("LangChain's history", messages, calls, history.add_messages, count, conn.close)


def message_text(i: int) -> str:
    """The text of appended message ``i`` (both sides append the same texts)."""
    return f"message {i} about deployment, retention and on-call handover number {i % 97}"


def fill_history(conninfo: str, rows: int, sessions: int) -> float:
    """``rows`` messages over ``sessions`` sessions in LangChain's table, the same rows our fill writes."""
    from langchain_core.messages import AIMessage, HumanMessage, message_to_dict

    human = json.dumps(message_to_dict(HumanMessage(content="")))
    ai = json.dumps(message_to_dict(AIMessage(content="")))
    started = time.perf_counter()
    with psycopg.connect(conninfo) as conn:
        _create_history_table(conn)
        conn.execute(
            sql.SQL(
                """INSERT INTO {table} (session_id, message, created_at)
                   SELECT md5('s' || mod(g, %(s)s))::uuid,
                          jsonb_set(CASE WHEN mod(g / %(s)s, 2) = 0 THEN %(human)s::jsonb ELSE %(ai)s::jsonb END,
                                    '{{data,content}}',
                                    to_jsonb('message ' || g || ' with some ordinary length text about the team''s work')),
                          timestamptz '2026-01-01' + g * interval '1 second'
                   FROM generate_series(0, %(n)s - 1) g ORDER BY g"""
            ).format(table=sql.Identifier(HISTORY_TABLE)),
            {"s": sessions, "n": rows, "human": human, "ai": ai},
        )
        conn.commit()
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(HISTORY_TABLE)))
        conn.commit()
    return time.perf_counter() - started


def fetch_last(conninfo: str, sessions: int, fetches: int, seed: int, last: int = 20) -> list[float]:
    """Seconds per "last ``last`` messages of a session": ``get_messages()`` (the whole session, the only read
    the class offers) sliced to the last ``last``; the first 20 fetches warm the cache and are not counted."""
    rng = random.Random(seed)
    picks = [rng.randrange(sessions) for _ in range(fetches + 20)]
    times = []
    with psycopg.connect(conninfo) as conn:
        for i, s in enumerate(picks):
            started = time.perf_counter()
            messages = _history(conn, session_uuid(f"s{s}")).get_messages()[-last:]
            elapsed = time.perf_counter() - started
            if not messages:
                raise AssertionError(f"LangChain history of session s{s} is empty")
            if i >= 20:
                times.append(elapsed)
    return times


def check_last_messages(conninfo: str, session: int, last: int = 20) -> list[str]:
    """The contents of the last messages of one session (to compare with ours)."""
    with psycopg.connect(conninfo) as conn:
        return [str(m.content) for m in _history(conn, session_uuid(f"s{session}")).get_messages()[-last:]]


# ---------------------------------------------------------------------------------------------------------
# indexing and retrieval: PGVectorStore


class LangChainVectorStore:
    """A ``PGVectorStore`` (and optionally a ``SQLRecordManager``) on one scratch database."""

    def __init__(self, conninfo: str, embedder: Any, dimension: int, *, record_manager: bool = True) -> None:
        from langchain_postgres import PGEngine, PGVectorStore

        self.conninfo = conninfo
        self.url = sqlalchemy_url(conninfo)
        self.engine = PGEngine.from_connection_string(url=self.url)
        with psycopg.connect(conninfo) as conn:
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (VECTOR_TABLE,)).fetchone()[0]
        if not exists:
            self.engine.init_vectorstore_table(table_name=VECTOR_TABLE, vector_size=dimension)
        self.store = PGVectorStore.create_sync(
            engine=self.engine, table_name=VECTOR_TABLE, embedding_service=SharedEmbeddings(embedder)
        )
        self.record_manager = None
        if record_manager:
            from langchain_classic.indexes import SQLRecordManager

            self.record_manager = SQLRecordManager("benchmark/lc_chunks", db_url=self.url)
            self.record_manager.create_schema()

    def index(self, docs: Sequence[Any], cleanup: str, batch_size: int) -> dict[str, int]:
        """``index(docs, record_manager, vector_store, cleanup=...)``, documents keyed by ``source``."""
        from langchain_core.indexing import index

        # The default key encoder (SHA-1) warns on every call; it is what users get, so keep it, quietly.
        warnings.filterwarnings("ignore", message="Using SHA-1 for document hashing")
        return dict(
            index(
                docs,
                self.record_manager,
                self.store,
                cleanup=cleanup,
                source_id_key="source",
                batch_size=batch_size,
            )
        )

    def apply_hnsw(self) -> None:
        """The HNSW index as langchain-postgres documents it (m=16, ef_construction=64: pgvector's defaults)."""
        from langchain_postgres.v2.indexes import HNSWIndex

        self.store.apply_vector_index(HNSWIndex())

    def add_embeddings(
        self, texts: list[str], vectors: list[list[float]], ids: list[str], batch: int = 1000
    ) -> None:
        for start in range(0, len(texts), batch):
            self.store.add_embeddings(
                texts[start : start + batch], vectors[start : start + batch], ids=ids[start : start + batch]
            )

    def search_ids(self, query: str, k: int = 10) -> list[str]:
        return [str(doc.id) for doc in self.store.similarity_search(query, k=k)]

    def state(self) -> Counter[tuple[str, str]]:
        """(source, sha256(content)) of every row of the vector table."""
        with psycopg.connect(self.conninfo) as conn:
            rows = conn.execute(
                sql.SQL("SELECT langchain_metadata->>'source', content FROM {}").format(
                    sql.Identifier(VECTOR_TABLE)
                )
            ).fetchall()
        return state_of(rows)

    def close(self) -> None:
        """Release every connection (a database with open connections cannot be used as a template)."""
        self.engine._run_as_sync(self.engine._pool.dispose())
        if self.record_manager is not None:
            self.record_manager.engine.dispose()


def documents(chunks: Sequence[Any]) -> list[Any]:
    """Our chunks as LangChain documents: the same text we embed (heading + chunk), keyed by source path."""
    from langchain_core.documents import Document

    from context_assistant.retrieval import embedding_text

    return [
        Document(
            page_content=embedding_text(c.heading, c.text),
            metadata={"source": c.path, "chunk_index": c.chunk_index},
        )
        for c in chunks
    ]


def index_steps(
    server: Any, dbname: str, corpus: Any, embedder: Any, batch_size: int
) -> dict[str, dict[str, Any]]:
    """LangChain ``index()`` through the same four steps as our sync, for both cleanup modes.

    The full index (into an empty store, then the HNSW index) is the same work whatever the cleanup mode, so it
    runs once; the database is then cloned (``CREATE DATABASE ... TEMPLATE``) and each cleanup mode runs the
    no-change, 1%-edited and 1%-deleted steps on its own copy. Returns ``{"full": step, "incremental": {step
    name: step}, "full_cleanup": {...}}`` with :class:`benchmarks.indexing.Step` values.
    """
    from benchmarks.corpus import describe_difference
    from benchmarks.indexing import Step

    def checked(seconds: float, vs: LangChainVectorStore, corpus: Any, result: dict[str, int]) -> Step:
        problem = describe_difference(vs.state(), corpus.expected_state())
        return Step(seconds, not problem, problem or json.dumps(result))

    dimension = len(embedder.embed(["dimension probe"])[0])
    base = corpus.copy()
    vs = LangChainVectorStore(server.fresh(dbname), embedder, dimension)
    try:
        started = time.perf_counter()
        result = vs.index(documents(base.chunks()), cleanup="incremental", batch_size=batch_size)
        vs.apply_hnsw()
        full = checked(time.perf_counter() - started, vs, base, result)
    finally:
        vs.close()
    out: dict[str, Any] = {"full": full}
    for mode in ("incremental", "full"):
        copy = base.copy()
        clone = f"{dbname}_{mode}"
        vs = LangChainVectorStore(server.clone(dbname, clone), embedder, dimension)
        steps: dict[str, Step] = {}
        try:
            for name in ("no_change", "changed_1pct", "deleted_1pct"):
                if name == "changed_1pct":
                    copy.edit(0.01)
                elif name == "deleted_1pct":
                    copy.delete(0.01)
                docs = documents(copy.chunks())
                started = time.perf_counter()
                result = vs.index(docs, cleanup=mode, batch_size=batch_size)
                steps[name] = checked(time.perf_counter() - started, vs, copy, result)
        finally:
            vs.close()
            server.drop(clone)
        out["incremental" if mode == "incremental" else "full_cleanup"] = steps
    return out
