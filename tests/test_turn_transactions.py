"""The database work of one assistant turn, counted on real Postgres + pgvector (issue 16).

A counting connection class (a ``psycopg.Connection`` whose cursors record every statement and whether it
opened a transaction) is given to the pool; the turn is run the way the app runs it (retrieval, recall, the
offline model) and its statements on the turn's own thread are counted. Recall's background indexer runs on
its own thread and is waited for before the counted turn, so the turn is measured in its steady state.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from context_assistant.assistant.turn import Assistant
from context_assistant.core.config import Config
from context_assistant.llm.offline import OfflineModel
from context_assistant.retrieval.pgvector import PgVectorChunkIndex
from context_assistant.retrieval.recall import TurnRecall
from context_assistant.retrieval.sync import InMemoryChunkSource
from context_assistant.storage import db as db_module
from context_assistant.storage.db import Database
from context_assistant.storage.memory import ConversationStore
from context_assistant.storage.targets import Target
from retrieval_support import HashingEmbedder, document


class Ledger:
    """Statements as ``(thread id, sql, opened a transaction)``."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str, bool]] = []
        self.lock = threading.Lock()

    def on_thread(self, ident: int) -> list[tuple[str, bool]]:
        with self.lock:
            return [(sql, began) for thread, sql, began in self.entries if thread == ident]


LEDGER = Ledger()


class CountingCursor(psycopg.Cursor[Any]):
    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        conn = self.connection
        # Outside autocommit psycopg sends BEGIN before the first statement of a transaction; in autocommit
        # every statement is its own transaction.
        began = conn.autocommit or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        text = (
            query
            if isinstance(query, str)
            else query.as_string(conn)
            if hasattr(query, "as_string")
            else str(query)
        )
        with LEDGER.lock:
            LEDGER.entries.append((threading.get_ident(), " ".join(str(text).split()), began))
        return super().execute(query, params, **kwargs)


class CountingConnection(psycopg.Connection[Any]):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = CountingCursor


@pytest.fixture
def counted_db(db: Database, pg_server: Any, database_name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(db_module, "IDLE_CHECK_SECONDS", 3600.0)  # no idle health checks inside the count
    database = Database(
        Target("postgres", pg_server.uri(database_name), "test database"),
        max_size=4,
        connection_class=CountingConnection,
    )
    database.migrate(vector=True)
    yield database
    database.close()


def test_a_turn_is_three_transactions_without_type_lookups(counted_db: Database, config: Config) -> None:
    embedder = HashingEmbedder()
    store = ConversationStore(counted_db)
    index = PgVectorChunkIndex.from_config(counted_db, embedder, config.rag)
    index.refresh(InMemoryChunkSource(document("runbook.md", "Deploys happen on Tuesdays after review.")))
    recall = TurnRecall(counted_db, embedder, top_k=3)
    assistant = Assistant(config, store, OfflineModel(), retriever=index, recall=recall)

    # Earlier sessions of the user (indexed by the background indexer) and two turns in this session.
    for question in ("When do deploys happen?", "Who reviews a deploy?"):
        assistant.turn("ana", question)
    session = assistant.turn("ana", "Remember the Tuesday deploy rule.").session_id
    assistant.turn("ana", "And after review?", session)
    assert recall.wait_for_indexing(timeout=60)
    assert recall.pending_count("ana") == 0

    me = threading.get_ident()
    before = len(LEDGER.on_thread(me))
    result = assistant.turn("ana", "When do deploys happen again?", session)
    statements = LEDGER.on_thread(me)[before:]

    transactions = [sql for sql, began in statements if began]
    assert len(transactions) <= 3, transactions
    # The question is stored first, by one statement that commits on its own.
    assert statements[0][0].startswith("WITH s AS") and "INSERT INTO conversations" in statements[0][0]
    # The reply is the last statement, also on its own.
    assert "INSERT INTO conversations" in statements[-1][0] and statements[-1][1]
    # No per-turn type lookups (pgvector's adapters are registered once per pooled connection) and no
    # indexing on the turn's path: no temp staging, no turn_index writes, no embedding of a backlog.
    assert not any("pg_type" in sql for sql, _ in statements)
    assert not any("TEMP" in sql.upper() or "INSERT INTO turn_index" in sql for sql, _ in statements)
    assert len(statements) <= 18, [sql[:80] for sql, _ in statements]
    assert result.reply and store.get_message("ana", result.user_message_id).metadata["status"] == "ok"
    # The turn's messages reach the recall index in the background.
    assert recall.wait_for_indexing(timeout=60)
    assert recall.pending_count("ana") == 0
    recall.close()


def test_summary_advances_with_the_reply(counted_db: Database, config: Config) -> None:
    """History that falls out of the window is folded into the summary and stored with the reply (T3)."""
    import dataclasses

    config = config.replace(memory=dataclasses.replace(config.memory, max_history=2, recall=False))
    store = ConversationStore(counted_db)
    assistant = Assistant(config, store, OfflineModel())
    session = None
    ids = []
    for i in range(3):
        result = assistant.turn("ana", f"Question number {i}. More words.", session)
        session = result.session_id
        ids.append((result.user_message_id, result.reply_message_id))
    stored = store.get_session("ana", session)
    assert stored.summary_through == ids[0][1]
    assert stored.summary.splitlines()[0] == "- user: Question number 0."
