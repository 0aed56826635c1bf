"""A message never outlives or precedes its session, whatever client writes it: the guarantees of the foreign key
from ``conversations`` to ``sessions``, kept by the triggers of migration 6 (one check per statement instead of
one per row), on a real Postgres, including the races a foreign key settles with its row lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from context_assistant.storage import Database
from context_assistant.storage.memory import ConversationStore

INSERT = """INSERT INTO conversations (session_id, user_id, role, content, timestamp)
            SELECT s, 'alice', 'user', 'hello', now() FROM unnest(%s::text[]) AS s"""


def execute(db: Database, statement: str, params: Any) -> None:
    with db.connection() as conn:
        conn.execute(statement, params)


def count(db: Database, session_id: str) -> int:
    with db.connection() as conn:
        return int(
            conn.execute("SELECT count(*) FROM conversations WHERE session_id = %s", (session_id,)).fetchone()[0]
        )


def test_a_message_of_a_missing_session_is_refused_and_its_statement_writes_nothing(
    store: ConversationStore,
) -> None:
    real = store.create_session("alice").id
    for sessions in ([["nope"]], [[real, real, "nope", real]]):
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match=r'session "nope".*no such session'):
            execute(store.db, INSERT, sessions)
    assert count(store.db, real) == 0
    execute(store.db, INSERT, [[real] * 100])  # many rows of existing sessions: one statement, one check
    assert count(store.db, real) == 100


def test_a_message_moves_only_to_an_existing_session_and_a_session_with_messages_keeps_its_id(
    store: ConversationStore,
) -> None:
    a, b = store.create_session("alice").id, store.create_session("alice").id
    message = store.append("alice", a, "user", "hi")
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="moved to session"):
        execute(store.db, "UPDATE conversations SET session_id = 'nope' WHERE id = %s", (message.id,))
    execute(store.db, "UPDATE conversations SET session_id = %s WHERE id = %s", (b, message.id))
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="its id cannot change"):
        execute(store.db, "UPDATE sessions SET id = 'renamed' WHERE id = %s", (b,))
    execute(store.db, "UPDATE sessions SET id = 'renamed' WHERE id = %s", (a,))  # no messages refer to it
    assert [m.content for m in store.messages("alice", b)] == ["hi"]


def test_deleting_sessions_deletes_their_messages_and_only_theirs(store: ConversationStore) -> None:
    kept, gone, also_gone = (store.create_session("alice").id for _ in range(3))
    for session in (kept, gone, also_gone):
        store.append_many("alice", session, [("user", "q", None), ("assistant", "a", None)])
    with store.db.connection() as conn:  # one statement deleting two sessions
        conn.execute("DELETE FROM sessions WHERE id = ANY(%s)", ([gone, also_gone],))
    assert (count(store.db, kept), count(store.db, gone), count(store.db, also_gone)) == (2, 0, 0)


def test_truncating_sessions_deletes_every_message(store: ConversationStore) -> None:
    session = store.create_session("alice").id
    store.append("alice", session, "user", "hi")
    execute(store.db, "TRUNCATE sessions", None)
    assert count(store.db, session) == 0


def test_a_client_with_another_search_path_is_checked_the_same_way(store: ConversationStore) -> None:
    """psql or a SQL editor with the default search_path, naming the tables with their schema."""
    session = store.create_session("alice").id
    schema = store.db.schema
    with psycopg.connect(store.db.target.conninfo, autocommit=True) as conn:
        assert conn.execute("SHOW search_path").fetchone()[0] == '"$user", public'
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(INSERT.replace("INTO conversations", f"INTO {schema}.conversations"), [["nope"]])
        conn.execute(INSERT.replace("INTO conversations", f"INTO {schema}.conversations"), [[session]])
        conn.execute(f"DELETE FROM {schema}.sessions WHERE id = %s", (session,))
    assert count(store.db, session) == 0


def test_a_session_delete_outside_read_committed_is_refused_and_deletes_nothing(store: ConversationStore) -> None:
    """Under REPEATABLE READ the cascade would read its own snapshot and miss a message committed meanwhile
    (the foreign key raised a serialization failure there); the triggers refuse such a delete instead."""
    session = store.create_session("alice").id
    store.append("alice", session, "user", "kept")
    with (
        pytest.raises(psycopg.errors.FeatureNotSupported, match="READ COMMITTED only, not REPEATABLE READ"),
        store.db.connection() as conn,
        conn.transaction(),
    ):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("DELETE FROM sessions WHERE id = %s", (session,))
    assert [m.content for m in store.messages("alice", session)] == ["kept"]


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work())
        except Exception as exc:  # the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def blocked(thread: threading.Thread) -> bool:
    thread.join(0.5)
    return thread.is_alive()


def test_a_session_deleted_while_a_message_is_written_takes_the_message_with_it(store: ConversationStore) -> None:
    """The writer locks the session (FOR KEY SHARE) at the end of its statement; the delete waits for the writer's
    commit, and its cascade then sees the new message, as with a foreign key."""
    session = store.create_session("alice").id
    with store.db.connection() as writer, writer.transaction():
        writer.execute(INSERT, [[session]])

        def delete() -> int:
            with store.db.connection() as conn:
                return conn.execute("DELETE FROM sessions WHERE id = %s", (session,)).rowcount

        thread, outcome = in_thread(delete)
        assert blocked(thread), "the delete must wait for the writer's lock on the session"
    thread.join(10)
    assert outcome == [1]
    assert count(store.db, session) == 0


def test_a_message_written_while_its_session_is_deleted_is_refused(store: ConversationStore) -> None:
    session = store.create_session("alice").id
    with store.db.connection() as deleter, deleter.transaction():
        deleter.execute("DELETE FROM sessions WHERE id = %s", (session,))

        def write() -> None:
            with store.db.connection() as conn:
                conn.execute(INSERT, [[session]])

        thread, outcome = in_thread(write)
        assert blocked(thread), "the writer must wait for the delete to finish"
        time.sleep(0.1)
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.ForeignKeyViolation)
    assert count(store.db, session) == 0


def test_a_database_with_the_foreign_key_migrates_to_the_triggers_keeping_its_messages(db: Database) -> None:
    with db.connection() as conn:  # back to migration 5's schema: the key, no triggers
        conn.execute(
            """DROP TRIGGER conversations_need_sessions ON conversations;
               DROP TRIGGER conversations_moved_to_a_session ON conversations;
               DROP TRIGGER sessions_delete_their_messages ON sessions;
               DROP TRIGGER sessions_keep_their_id ON sessions;
               DROP TRIGGER sessions_truncate_their_messages ON sessions;
               DROP FUNCTION conversations_need_sessions(), conversations_moved_to_a_session(),
                             sessions_delete_their_messages(), sessions_keep_their_id();
               ALTER TABLE conversations ADD FOREIGN KEY (session_id) REFERENCES sessions (id) ON DELETE CASCADE;
               DELETE FROM schema_migrations WHERE version = 6"""
        )
    store = ConversationStore(db)
    session = store.create_session("alice").id
    store.append("alice", session, "user", "kept through the migration")
    assert [m.version for m in db.migrate(vector=True)] == [6]  # as `db setup` on an older deployment
    with db.connection() as conn:
        keys = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'conversations'::regclass AND contype = 'f'"
        ).fetchone()[0]
    assert keys == 0
    assert [m.content for m in store.messages("alice", session)] == ["kept through the migration"]
    store.delete_session("alice", session)
    assert count(db, session) == 0
