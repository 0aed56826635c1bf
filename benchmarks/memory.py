"""Conversation memory: import throughput, append throughput, and "last 20 messages" latency at 1M rows.

    python -m benchmarks.memory [--messages 100000] [--rows 1000000]

The functions taking a conninfo are our side of ``python -m benchmarks`` (see ``benchmarks/__main__.py``),
measured against LangChain's ``PostgresChatMessageHistory`` in ``benchmarks/peers.py`` on the same rows.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from benchmarks.common import Stats, machine, timed
from benchmarks.peers import message_text
from benchmarks.scratch import ScratchServer, ours_database
from context_assistant.storage import ConversationStore, Database

BENCH_USER = "bench"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
APPEND_BLOCKS = 10  # slices of a side-by-side append run (see interleaved_append_rates)


def jsonl(messages: int, sessions: int, users: int = 50, offset: int = 0) -> str:
    out = io.StringIO()
    for i in range(offset, offset + messages):
        session = i % sessions
        out.write(
            json.dumps(
                {
                    "session_id": f"s{session}",
                    "user_id": f"user{session % users}" if users else BENCH_USER,
                    "role": "user" if (i // sessions) % 2 == 0 else "assistant",
                    "content": message_text(i),
                    "timestamp": (START + timedelta(seconds=i)).isoformat(),
                    "metadata": {},
                }
            )
            + "\n"
        )
    return out.getvalue()


@dataclass
class AppendTrial:
    """One side's appends into one session, ready to run: the payload of each call, prepared before any timing."""

    who: str
    messages: int
    calls: list[Any]
    append: Callable[[Any], None]
    count: Callable[[], int]  # messages the side's table holds
    close: Callable[[], None]


def our_appends(conninfo: str, messages: int, batch: int) -> AppendTrial:
    """``ConversationStore.append`` one message per call when ``batch == 1``; otherwise
    ``ConversationStore.append_many`` with ``batch`` messages per call."""
    db = ours_database(conninfo)
    store = ConversationStore(db)
    session = store.create_session(BENCH_USER, session_id="s0")
    calls = [
        [
            ("user" if i % 2 == 0 else "assistant", message_text(i), None)
            for i in range(start, min(start + batch, messages))
        ]
        for start in range(0, messages, batch)
    ]

    def append(call: list[tuple[str, str, None]]) -> None:
        if batch == 1:
            store.append(BENCH_USER, session.id, call[0][0], call[0][1])
        else:
            store.append_many(BENCH_USER, session.id, call)

    def count() -> int:
        with db.connection() as conn:
            return int(conn.execute("SELECT count(*) FROM conversations").fetchone()[0])

    return AppendTrial("our store", messages, calls, append, count, db.close)


def interleaved_append_rates(trials: Sequence[AppendTrial], blocks: int = APPEND_BLOCKS) -> list[float]:
    """Messages per second of each trial, measured side by side: a few untimed calls each first (a fresh
    database's first statements fill its caches), then the rest in ``blocks`` slices, every side running each
    slice in turn and the order alternating (ABBA), so a change in the machine's load hits every side alike.
    Checks every side's table holds exactly its messages."""
    calls = len(trials[0].calls)
    if any(len(t.calls) != calls for t in trials):
        raise ValueError("side-by-side appends need the same number of calls on every side")
    warm = min(max(1, calls // 20), calls - 1)
    for trial in trials:
        for call in trial.calls[:warm]:
            trial.append(call)
    seconds = [0.0] * len(trials)
    edges = [warm + (calls - warm) * b // blocks for b in range(blocks + 1)]
    for b in range(blocks):
        order = list(range(len(trials))) if b % 2 == 0 else list(reversed(range(len(trials))))
        for i in order:
            started = time.perf_counter()
            for call in trials[i].calls[edges[b] : edges[b + 1]]:
                trials[i].append(call)
            seconds[i] += time.perf_counter() - started
    rates = []
    for trial, spent in zip(trials, seconds, strict=True):
        held = trial.count()
        if held != trial.messages:
            raise AssertionError(f"{trial.who} holds {held} messages after appending {trial.messages}")
        timed_messages = sum(len(call) for call in trial.calls[warm:])
        rates.append(timed_messages / spent)
    return rates


def fill_history(db: Database, rows: int, sessions: int) -> float:
    """``rows`` messages over ``sessions`` sessions (1,000 users), written by SQL; returns the seconds."""
    started = time.perf_counter()
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
    return time.perf_counter() - started


def fetch_last(db: Database, sessions: int, fetches: int, seed: int, last: int = 20) -> list[float]:
    """Seconds per ``recent_messages(max_messages=last)`` of a random session; 20 warm-up fetches first."""
    store = ConversationStore(db)
    rng = random.Random(seed)
    picks = [rng.randrange(sessions) for _ in range(fetches + 20)]
    times = []
    for i, s in enumerate(picks):
        started = time.perf_counter()
        messages = store.recent_messages(f"user{s % 1000}", f"s{s}", max_messages=last)
        elapsed = time.perf_counter() - started
        if not messages:
            raise AssertionError(f"our history of session s{s} is empty")
        if i >= 20:
            times.append(elapsed)
    return times


def last_messages(db: Database, session: int, last: int = 20) -> list[str]:
    store = ConversationStore(db)
    return [m.content for m in store.recent_messages(f"user{session % 1000}", f"s{session}", max_messages=last)]


# ---------------------------------------------------------------------------------------------------------
# the stand-alone script (issue 2's figures)


def bench_import(server: ScratchServer, messages: int) -> dict[str, float]:
    db = ours_database(server.fresh("bench_memory_import"))
    try:
        text = jsonl(messages, sessions=max(1, messages // 100))
        store = ConversationStore(db)
        seconds = timed(lambda: store.import_jsonl(text.splitlines()))
        again = timed(lambda: store.import_jsonl(text.splitlines()))
    finally:
        db.close()
    return {"messages": messages, "seconds": seconds, "per_second": messages / seconds, "reimport_seconds": again}


def bench_history(
    server: ScratchServer, rows: int, sessions: int, fetches: int, seed: int = 7
) -> dict[str, object]:
    db = ours_database(server.fresh("bench_memory_history"))
    try:
        fill = fill_history(db, rows, sessions)
        times = fetch_last(db, sessions, fetches, seed)
    finally:
        db.close()
    return {"rows": rows, "sessions": sessions, "fill_seconds": fill, "fetch": Stats.of(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000, help="messages in the import file")
    parser.add_argument("--appends", type=int, default=5_000)
    parser.add_argument("--rows", type=int, default=1_000_000, help="table size for the history fetch")
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--fetches", type=int, default=500)
    parser.add_argument("--database-url", help="admin URL of a Postgres with pgvector (default: embedded)")
    args = parser.parse_args()
    server = ScratchServer(args.database_url)
    print(machine())
    imp = bench_import(server, args.messages)
    print(
        f"memory import: {imp['messages']:,} messages in {imp['seconds']:.2f} s = {imp['per_second']:,.0f} msg/s "
        f"(re-import of the same file, all skipped: {imp['reimport_seconds']:.2f} s)"
    )
    trial = our_appends(server.fresh("bench_memory_append"), args.appends, batch=1)
    try:
        (rate,) = interleaved_append_rates([trial])
    finally:
        trial.close()
    print(f"append (one session, one thread, one transaction each): {rate:,.0f} msg/s")
    hist = bench_history(server, args.rows, args.sessions, args.fetches)
    print(
        f"history fetch, last 20 of one session among {hist['rows']:,} messages "
        f"(filled in {hist['fill_seconds']:.1f} s): {hist['fetch'].fmt()}"  # type: ignore[union-attr]
    )


if __name__ == "__main__":
    main()
