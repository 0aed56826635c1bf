"""Conversation memory on a real Postgres: ordering, budgets, user isolation, import/export, concurrency."""

from __future__ import annotations

import io
import json
import threading
from datetime import datetime, timedelta, timezone

import pytest

from context_assistant.core.clock import FakeClock
from context_assistant.storage.memory import (
    ConversationStore,
    ImportRejected,
    SessionNotFound,
    fit_turns,
    title_from,
)


def test_messages_come_back_in_order_even_with_equal_timestamps(store: ConversationStore) -> None:
    session = store.create_session("alice")
    for i in range(5):  # the fake clock never moves: every timestamp is identical
        store.append("alice", session.id, "user" if i % 2 == 0 else "assistant", f"m{i}")
    assert [m.content for m in store.messages("alice", session.id)] == ["m0", "m1", "m2", "m3", "m4"]
    assert len({m.timestamp for m in store.messages("alice", session.id)}) == 1


def test_order_follows_timestamp_then_id(store: ConversationStore, clock: FakeClock) -> None:
    session = store.create_session("alice")
    store.append("alice", session.id, "user", "first")
    clock.advance(1)
    store.append("alice", session.id, "assistant", "second")
    assert [m.content for m in store.messages("alice", session.id)] == ["first", "second"]
    assert store.get_session("alice", session.id).updated_at == clock.now()


def test_recent_messages_respects_max_history(store: ConversationStore, clock: FakeClock) -> None:
    session = store.create_session("alice")
    for i in range(10):
        store.append("alice", session.id, "user", f"q{i}")
        store.append("alice", session.id, "assistant", f"a{i}")
        clock.advance(1)
    recent = store.recent_messages("alice", session.id, max_messages=4)
    assert [m.content for m in recent] == ["q8", "a8", "q9", "a9"]
    # An odd limit never starts the history with an answer whose question was cut.
    recent = store.recent_messages("alice", session.id, max_messages=5)
    assert [m.content for m in recent] == ["q8", "a8", "q9", "a9"]


def test_token_budget_keeps_the_newest_whole_turns(store: ConversationStore) -> None:
    session = store.create_session("alice")
    store.append("alice", session.id, "user", "old question " * 50)
    store.append("alice", session.id, "assistant", "old answer " * 50)
    store.append("alice", session.id, "user", "new question")
    store.append("alice", session.id, "assistant", "new answer")
    recent = store.recent_messages("alice", session.id, max_messages=20, max_tokens=40)
    assert [m.content for m in recent] == ["new question", "new answer"]
    everything = store.recent_messages("alice", session.id, max_messages=20, max_tokens=10_000)
    assert len(everything) == 4


def test_a_turn_too_large_for_the_budget_is_dropped_whole() -> None:
    from context_assistant.storage.memory import Message

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    msgs = [Message(1, "s", "u", "user", "short", now), Message(2, "s", "u", "assistant", "x" * 400, now)]
    assert fit_turns(msgs, max_messages=10, max_tokens=50) == []


def test_failed_messages_are_left_out_of_history(store: ConversationStore) -> None:
    session = store.create_session("alice")
    ok = store.append("alice", session.id, "user", "works")
    store.append("alice", session.id, "assistant", "reply")
    failed = store.append("alice", session.id, "user", "model was down")
    store.update_metadata("alice", failed.id, {"status": "failed", "error": "503"})
    recent = store.recent_messages("alice", session.id, max_messages=10)
    assert recent[0].id == ok.id and failed.id not in [m.id for m in recent]
    assert store.get_message("alice", failed.id).failed  # still stored: nothing the user typed is lost
    assert failed.id in [
        m.id for m in store.recent_messages("alice", session.id, max_messages=10, include_failed=True)
    ]


def test_before_id_excludes_the_message_being_answered(store: ConversationStore) -> None:
    session = store.create_session("alice")
    store.append("alice", session.id, "user", "earlier")
    current = store.append("alice", session.id, "user", "now")
    recent = store.recent_messages("alice", session.id, max_messages=10, before_id=current.id)
    assert [m.content for m in recent] == ["earlier"]


def test_sessions_are_private_to_their_user(store: ConversationStore) -> None:
    a = store.create_session("alice", title="alice's plans")
    store.append("alice", a.id, "user", "secret")
    b = store.create_session("bob")

    assert [s.id for s in store.list_sessions("bob")] == [b.id]
    for action in (
        lambda: store.get_session("bob", a.id),
        lambda: store.messages("bob", a.id),
        lambda: store.rename_session("bob", a.id, "mine now"),
        lambda: store.delete_session("bob", a.id),
        lambda: store.append("bob", a.id, "user", "injected"),
    ):
        with pytest.raises(SessionNotFound, match=f"session not found: {a.id}"):
            action()
    assert store.recent_messages("bob", a.id, max_messages=10) == []
    with pytest.raises(LookupError):
        store.update_metadata("bob", store.messages("alice", a.id)[0].id, {"x": 1})
    # Alice's data is untouched.
    assert store.get_session("alice", a.id).title == "alice's plans"
    assert [m.content for m in store.messages("alice", a.id)] == ["secret"]
    # Bob cannot claim Alice's session id either.
    with pytest.raises(ValueError, match="session id already in use"):
        store.create_session("bob", session_id=a.id)


def test_rename_and_delete(store: ConversationStore) -> None:
    s = store.create_session("alice")
    store.append("alice", s.id, "user", "hi")
    assert store.rename_session("alice", s.id, "Renamed").title == "Renamed"
    store.delete_session("alice", s.id)
    with pytest.raises(SessionNotFound):
        store.get_session("alice", s.id)
    with store.db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM conversations WHERE session_id = %s", (s.id,)).fetchone()[0] == 0


def test_sessions_list_most_recent_first_with_counts(store: ConversationStore, clock: FakeClock) -> None:
    older = store.create_session("alice", title="older")
    clock.advance(5)
    newer = store.create_session("alice", title="newer")
    clock.advance(5)
    store.append("alice", older.id, "user", "bump")
    listed = store.list_sessions("alice")
    assert [s.id for s in listed] == [older.id, newer.id]
    assert listed[0].message_count == 1


def test_title_from_first_line() -> None:
    assert title_from("  How do I deploy?\nmore text") == "How do I deploy?"
    long = "word " * 40
    title = title_from(long)
    assert len(title) <= 80 and title.endswith("…") and not title.endswith(" …")


def test_history_fetch_is_an_index_scan(store: ConversationStore) -> None:
    with store.db.connection() as conn:
        conn.execute(
            """INSERT INTO sessions (id, user_id, created_at, updated_at)
               SELECT 's' || g, 'u' || (g % 10), now(), now() FROM generate_series(1, 50) g"""
        )
        conn.execute(
            """INSERT INTO conversations (session_id, user_id, role, content, timestamp)
               SELECT 's' || (g % 50 + 1), 'u' || ((g % 50 + 1) % 10), 'user', 'hello', now() + g * interval '1s'
               FROM generate_series(1, 50000) g"""
        )
        conn.execute("ANALYZE conversations")
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                """EXPLAIN SELECT * FROM conversations WHERE session_id = 's7' AND user_id = 'u7'
                   ORDER BY timestamp DESC, id DESC LIMIT 20"""
            )
        )
    assert "Index Scan Backward using conversations_history" in plan, plan
    assert "Seq Scan" not in plan and "Sort" not in plan, plan


# ------------------------------------------------------------------------------------------------------
# import / export


def line(session: str, user: str, role: str, content: str, ts: str, **extra: object) -> str:
    return json.dumps(
        {"session_id": session, "user_id": user, "role": role, "content": content, "timestamp": ts, **extra}
    )


def test_import_then_export_round_trips(store: ConversationStore) -> None:
    lines = [
        line("s1", "alice", "user", "What is our SLA?", "2026-01-01T10:00:00+00:00", metadata={"k": 1}),
        line("s1", "alice", "assistant", "99.9%", "2026-01-01T10:00:01+00:00"),
        line("s2", "bob", "user", "Hi", "2026-01-02T09:00:00Z"),
    ]
    result = store.import_jsonl(lines)
    assert (result.messages, result.skipped, result.sessions_created) == (3, 0, 2)
    assert store.get_session("alice", "s1").title == "What is our SLA?"
    assert [m.metadata for m in store.messages("alice", "s1")] == [{"k": 1}, {}]

    out = io.StringIO()
    assert store.export_jsonl(out, user="alice") == 2
    exported = [json.loads(x) for x in out.getvalue().splitlines()]
    assert exported[0] == {
        "session_id": "s1",
        "user_id": "alice",
        "role": "user",
        "content": "What is our SLA?",
        "timestamp": "2026-01-01T10:00:00+00:00",
        "metadata": {"k": 1},
    }


def test_import_is_idempotent(store: ConversationStore) -> None:
    lines = [line("s1", "alice", "user", f"m{i}", f"2026-01-01T10:00:0{i}+00:00") for i in range(5)]
    assert store.import_jsonl(lines).messages == 5
    again = store.import_jsonl(lines)
    assert (again.messages, again.skipped, again.sessions_created) == (0, 5, 0)
    assert len(store.messages("alice", "s1")) == 5
    # An export of the live store imports into itself as a no-op.
    out = io.StringIO()
    store.export_jsonl(out)
    assert store.import_jsonl(out.getvalue().splitlines()).messages == 0


def test_import_keeps_file_order_for_messages_that_share_a_timestamp(store: ConversationStore) -> None:
    """Issue 14: equal timestamps used to come back grouped by role (all assistant lines, then all user lines)
    and sorted by content. History, the prompt and export read by (timestamp, id): ids follow the file."""
    ts = "2026-03-01T12:00:00Z"
    contents = [f"{'zyxwvutsrq'[n % 10]} message {49 - n}" for n in range(50)]  # sorts unlike file order
    lines = [line("same", "alice", ("user", "assistant")[n % 2], contents[n], ts) for n in range(50)]
    lines.insert(10, lines[3])  # a duplicate line: the first occurrence keeps its place
    assert store.import_jsonl(lines).messages == 50

    messages = store.messages("alice", "same")
    assert [m.content for m in messages] == contents
    assert [m.role for m in messages] == ["user", "assistant"] * 25
    out = io.StringIO()
    store.export_jsonl(out, user="alice")
    assert [json.loads(x)["content"] for x in out.getvalue().splitlines()] == contents
    everyone = io.StringIO()
    store.export_jsonl(everyone)
    assert [json.loads(x)["content"] for x in everyone.getvalue().splitlines()] == contents
    assert [m.content for m in store.recent_messages("alice", "same", max_messages=10)] == contents[-10:]


def test_malformed_lines_are_reported_by_number_and_nothing_is_imported(store: ConversationStore) -> None:
    lines = [
        line("s1", "alice", "user", "fine", "2026-01-01T10:00:00Z"),
        "{not json",
        line("s1", "alice", "bot", "bad role", "2026-01-01T10:00:00Z"),
        json.dumps({"session_id": "s1", "user_id": "alice", "role": "user", "content": "x"}),
        line("s1", "alice", "user", "bad time", "yesterday"),
        "",
        line("s1", "mallory", "user", "other owner", "2026-01-01T10:00:00Z"),
        line("s3", "alice", "user", "ok too", "2026-01-01T10:00:00Z"),
        "[1, 2]",
    ]
    with pytest.raises(ImportRejected) as info:
        store.import_jsonl(lines)
    errors = info.value.errors
    assert errors[0].startswith("line 2: not valid JSON")
    assert "line 3: 'role' 'bot' is not one of user, assistant, system" in errors
    assert "line 4: missing 'timestamp'" in errors
    assert "line 5: 'timestamp' 'yesterday' is not an ISO 8601 date-time" in errors
    assert any(e.startswith("line 7: session 's1' has user 'mallory' but line 1 gave 'alice'") for e in errors)
    assert "line 9: expected a JSON object" in errors
    assert len(errors) == 6
    assert store.list_sessions("alice") == []  # nothing partially imported


def test_import_cannot_write_into_another_users_session(store: ConversationStore) -> None:
    s = store.create_session("alice", session_id="shared-id")
    store.append("alice", s.id, "user", "mine")
    with pytest.raises(ImportRejected, match="line 2: session 'shared-id' already belongs to another user"):
        store.import_jsonl(
            [
                line("new", "bob", "user", "hello", "2026-01-01T10:00:00Z"),
                line("shared-id", "bob", "user", "sneaky", "2026-01-01T10:00:00Z"),
            ]
        )
    assert [m.content for m in store.messages("alice", s.id)] == ["mine"]
    assert store.list_sessions("bob") == []


def test_concurrent_appends_lose_nothing_and_keep_order(db, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    from context_assistant.core.clock import RealClock

    store = ConversationStore(db, clock=RealClock())
    sessions = [store.create_session(f"user{i % 4}").id for i in range(20)]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(50):
                store.append(f"user{n % 4}", sessions[n], "user", f"{n}:{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for n, sid in enumerate(sessions):
        contents = [m.content for m in store.messages(f"user{n % 4}", sid)]
        assert contents == [f"{n}:{i}" for i in range(50)]


def test_append_many_keeps_order_in_one_statement(store: ConversationStore) -> None:
    session = store.create_session("alice")
    added = store.append_many(
        "alice", session.id, [("user", "q", None), ("assistant", "a", {"model": "m"}), ("user", "q2", {})]
    )
    assert [m.content for m in added] == ["q", "a", "q2"] and added[0].id < added[1].id < added[2].id
    stored = store.messages("alice", session.id)
    assert [(m.id, m.content, m.metadata) for m in stored] == [(m.id, m.content, m.metadata) for m in added]
    assert store.append_many("alice", session.id, []) == []
    with pytest.raises(SessionNotFound):
        store.append_many("bob", session.id, [("user", "sneaky", None)])
    with pytest.raises(ValueError, match="'robot' is not one of"):
        store.append_many("alice", session.id, [("user", "ok", None), ("robot", "x", None)])
    assert len(store.messages("alice", session.id)) == 3  # nothing of the rejected batch was written


def test_session_activity_moves_at_a_second_granularity(store: ConversationStore, clock: FakeClock) -> None:
    session = store.create_session("alice")
    created = store.get_session("alice", session.id).updated_at
    clock.advance(0.3)
    store.append("alice", session.id, "user", "soon after")
    assert store.get_session("alice", session.id).updated_at == created  # not rewritten for 0.3 s
    clock.advance(5)
    store.append("alice", session.id, "user", "later")
    assert store.get_session("alice", session.id).updated_at == clock.now()


def test_a_single_append_has_the_batch_rules_in_its_own_statement(
    store: ConversationStore, clock: FakeClock
) -> None:
    """``append`` has a statement of its own (scalar parameters): the same user scoping, role check, stored
    text and activity rule as ``append_many``, and an updated_at a concurrent writer moved later is never
    moved back by an append stamped earlier."""
    session = store.create_session("alice")
    with pytest.raises(SessionNotFound):
        store.append("bob", session.id, "user", "sneaky")
    with pytest.raises(ValueError, match="'robot' is not one of"):
        store.append("alice", session.id, "robot", "x")
    assert store.messages("alice", session.id) == []
    tricky = "{a, \"b\"}, NULL, 'q' \\ ünï 🙂\r\n"
    added = store.append("alice", session.id, "assistant", tricky, {"k": tricky})
    (stored,) = store.messages("alice", session.id)
    assert (stored.id, stored.role, stored.content, stored.metadata) == (
        added.id,
        "assistant",
        tricky,
        {"k": tricky},
    )
    later = clock.now() + timedelta(hours=1)
    with store.db.connection() as conn:  # another writer (a clock ahead of ours) touched the session
        conn.execute("UPDATE sessions SET updated_at = %s WHERE id = %s", (later, session.id))
    clock.advance(5)
    store.append("alice", session.id, "user", "stamped earlier")
    assert store.get_session("alice", session.id).updated_at == later


def test_appended_text_and_metadata_come_back_byte_for_byte(store: ConversationStore) -> None:
    """append_many sends its rows as one JSON document: whatever quoting, escapes, array or JSON syntax a
    message holds is stored as written, in the content and in the metadata (numbers included)."""
    session = store.create_session("alice")
    tricky = [
        'quotes " and \\" and \\\\ backslashes',
        "{braces, commas}, NULL, and 'single quotes'",
        "",
        "tabs\tand\nnewlines\r\n",
        "unicode: ünïcödé — 日本語 — 🙂",
        "NULL",
        '{"role": "system", "content": "injected"}',
        "\\u0041 is not A",
    ]
    metas = [{"k": value, "n": 0.1 + i, "big": 2**60, "nested": [None, True]} for i, value in enumerate(tricky)]
    written = store.append_many(
        "alice",
        session.id,
        [
            ("user" if i % 2 == 0 else "assistant", t, m)
            for i, (t, m) in enumerate(zip(tricky, metas, strict=True))
        ],
    )
    stored = store.messages("alice", session.id)
    assert [m.content for m in stored] == tricky == [m.content for m in written]
    assert [m.metadata for m in stored] == metas
