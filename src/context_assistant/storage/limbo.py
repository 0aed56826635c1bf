"""Questions left in limbo: stored, but neither answered nor marked failed.

A turn marks its question ``ok`` or ``failed`` when it ends; a process killed mid-turn (SIGKILL, a lost
container, a database that went away at the wrong moment) leaves the question with no status at all, and
``retry_of`` refuses a message that is not failed. :func:`mark_interrupted` gives such questions the state
they deserve — failed, kind ``interrupted``, retryable — once they are older than a grace period (a turn
still running elsewhere is younger than that) and not answered by the message after them.

Only questions a turn stored (metadata ``{"via": "turn"}``) are swept: a user message that came in through
``memory import`` or ``ConversationStore.append`` with no reply after it is a record, not a turn in limbo.
One named question (a retry of it) is marked whatever stored it.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from psycopg.types.json import Jsonb

from .db import Database

INTERRUPTED = "the reply was interrupted before it completed"
PATCH = {"status": "failed", "error": INTERRUPTED, "error_kind": "interrupted"}
# What a turn stores its question with (and what marks a question the sweep may mark interrupted).
TURN_QUESTION = {"via": "turn"}


def mark_interrupted(
    db: Database,
    older_than: datetime,
    *,
    user: str | None = None,
    message_id: int | None = None,
    running: Collection[int] = (),
) -> list[int]:
    """Mark questions a turn stored before ``older_than`` without a status, and not followed by a reply,
    as interrupted (optionally only ``user``'s, or only ``message_id``); skip the ids in ``running``.
    Returns the ids marked."""
    with db.connection() as conn:
        rows = conn.execute(
            """UPDATE conversations m SET metadata = m.metadata || %(patch)s
               WHERE m.role = 'user'
                 AND NOT (m.metadata ? 'status')
                 AND m.timestamp < %(before)s
                 AND (%(user)s::text IS NULL OR m.user_id = %(user)s)
                 AND (%(id)s::bigint IS NULL OR m.id = %(id)s)
                 AND (%(id)s::bigint IS NOT NULL OR m.metadata @> %(turn)s)
                 AND m.id <> ALL(%(running)s::bigint[])
                 AND COALESCE((SELECT n.role FROM conversations n
                               WHERE n.session_id = m.session_id AND n.id > m.id
                               ORDER BY n.id LIMIT 1), 'user') <> 'assistant'
               RETURNING m.id""",
            {
                "patch": Jsonb(PATCH),
                "turn": Jsonb(TURN_QUESTION),
                "before": older_than,
                "user": user,
                "id": message_id,
                "running": list(running),
            },
        ).fetchall()
    return sorted(int(row[0]) for row in rows)
