"""Conversation memory: import throughput, append throughput, and "last 20 messages" latency at 1M rows.

    python -m benchmarks.memory [--messages 100000] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql

from benchmarks.common import Stats, machine, scratch_config, timed
from context_assistant.db import EmbeddedPostgres, open_database
from context_assistant.memory import ConversationStore


def fresh_database(config) -> None:  # type: ignore[no-untyped-def]
    admin = EmbeddedPostgres(config.data_path).start("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(config.database.name)))


def jsonl(messages: int, sessions: int, users: int = 50) -> str:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    out = io.StringIO()
    for i in range(messages):
        session = i % sessions
        out.write(
            json.dumps(
                {
                    "session_id": f"s{session}",
                    "user_id": f"user{session % users}",
                    "role": "user" if (i // sessions) % 2 == 0 else "assistant",
                    "content": f"message {i} about deployment, retention and on-call handover number {i % 97}",
                    "timestamp": (start + timedelta(seconds=i)).isoformat(),
                    "metadata": {},
                }
            )
            + "\n"
        )
    return out.getvalue()


def bench_import(messages: int) -> dict[str, float]:
    with scratch_config("bench_memory_import", **{"rag.enabled": False, "memory.recall": False}) as config:
        fresh_database(config)
        text = jsonl(messages, sessions=max(1, messages // 100))
        with open_database(config) as db:
            store = ConversationStore(db)
            seconds = timed(lambda: store.import_jsonl(text.splitlines()))
            again = timed(lambda: store.import_jsonl(text.splitlines()))
    return {"messages": messages, "seconds": seconds, "per_second": messages / seconds, "reimport_seconds": again}


def bench_append(n: int) -> dict[str, float]:
    with scratch_config("bench_memory_append", **{"rag.enabled": False, "memory.recall": False}) as config:
        fresh_database(config)
        with open_database(config) as db:
            store = ConversationStore(db)
            session = store.create_session("bench")
            seconds = timed(lambda: [store.append("bench", session.id, "user", f"message {i}") for i in range(n)])
    return {"messages": n, "seconds": seconds, "per_second": n / seconds}


def bench_history(rows: int, sessions: int, fetches: int, seed: int = 7) -> dict[str, object]:
    """Fill ``rows`` messages over ``sessions`` sessions with SQL, then time 20-message history fetches."""
    with scratch_config("bench_memory_history", **{"rag.enabled": False, "memory.recall": False}) as config:
        fresh_database(config)
        with open_database(config) as db:
            t0 = time.perf_counter()
            with db.connection() as conn:
                conn.execute(
                    """INSERT INTO sessions (id, user_id, created_at, updated_at)
                       SELECT 's' || g, 'user' || mod(g, 1000), now(), now() FROM generate_series(0, %s - 1) g""",
                    (sessions,),
                )
                conn.execute(
                    """INSERT INTO conversations (session_id, user_id, role, content, timestamp)
                       SELECT 's' || mod(g, %(s)s), 'user' || mod(mod(g, %(s)s), 1000),
                              CASE WHEN mod(g / %(s)s, 2) = 0 THEN 'user' ELSE 'assistant' END,
                              'message ' || g || ' with some ordinary length text about the team''s work',
                              timestamptz '2026-01-01' + g * interval '1 second'
                       FROM generate_series(0, %(n)s - 1) g""",
                    {"s": sessions, "n": rows},
                )
            with db.connection() as conn:
                conn.execute("ANALYZE sessions")
                conn.execute("ANALYZE conversations")
            fill = time.perf_counter() - t0
            store = ConversationStore(db)
            rng = random.Random(seed)
            picks = [rng.randrange(sessions) for _ in range(fetches)]
            for s in picks[:20]:  # warm the cache and the pool
                store.recent_messages(f"user{s % 1000}", f"s{s}", max_messages=20)
            times = [
                timed(lambda s=s: store.recent_messages(f"user{s % 1000}", f"s{s}", max_messages=20)) for s in picks
            ]
    return {"rows": rows, "sessions": sessions, "fill_seconds": fill, "fetch": Stats.of(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000, help="messages in the import file")
    parser.add_argument("--appends", type=int, default=5_000)
    parser.add_argument("--rows", type=int, default=1_000_000, help="table size for the history fetch")
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--fetches", type=int, default=500)
    args = parser.parse_args()
    print(machine())
    imp = bench_import(args.messages)
    print(
        f"memory import: {imp['messages']:,} messages in {imp['seconds']:.2f} s = {imp['per_second']:,.0f} msg/s "
        f"(re-import of the same file, all skipped: {imp['reimport_seconds']:.2f} s)"
    )
    app = bench_append(args.appends)
    print(f"append (one session, one thread, one transaction each): {app['per_second']:,.0f} msg/s")
    hist = bench_history(args.rows, args.sessions, args.fetches)
    print(
        f"history fetch, last 20 of one session among {hist['rows']:,} messages "
        f"(filled in {hist['fill_seconds']:.1f} s): {hist['fetch'].fmt()}"  # type: ignore[union-attr]
    )


if __name__ == "__main__":
    main()
