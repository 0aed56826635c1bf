"""Conversation memory: sessions and their messages, private to the user who owns them.

Every query takes the user and filters on it, so a session id that belongs to someone else behaves exactly
like one that does not exist. All SQL is parameterised.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TextIO, TypeVar

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from ..core.clock import REAL_CLOCK, Clock
from ..core.errors import InvalidInput, NotFound
from ..core.text import MAX_SESSION_ID_LENGTH, check_session_id
from ..core.tokens import message_tokens
from .db import Database
from .memory_files import ROLES, ImportRejected, ImportResult, parse_import

TITLE_LENGTH = 80


class SessionNotFound(NotFound):
    """No session with this id belongs to the user (whether it exists for someone else is never said)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session not found: {session_id}" if session_id.strip() else "session not found: the id is empty"
        )
        self.session_id = session_id


class AmbiguousSession(InvalidInput):
    """A session id prefix that matches more than one of the user's sessions."""


class MessageNotFound(NotFound):
    """No message with this id belongs to the user."""

    def __init__(self, message_id: int) -> None:
        super().__init__(f"message not found: {message_id}")
        self.message_id = message_id


@dataclass(frozen=True)
class Session:
    id: str
    user_id: str
    title: str
    summary: str
    summary_through: int | None
    created_at: datetime
    updated_at: datetime
    message_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "title": self.title,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "message_count": self.message_count,
        }


@dataclass(frozen=True)
class Message:
    id: int
    session_id: str
    user_id: str
    role: str
    content: str
    timestamp: datetime
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.metadata.get("status") == "failed"

    def to_json(self) -> dict[str, Any]:
        """The export/API shape (also one line of ``memory export``)."""
        return {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "role": self.role,
            "content": self.content,
            "timestamp": self.timestamp.isoformat(),
            "metadata": self.metadata,
        }


_SESSION_COLUMNS = """s.id, s.user_id, s.title, s.summary, s.summary_through, s.created_at, s.updated_at,
    (SELECT count(*) FROM conversations c WHERE c.session_id = s.id)::int AS message_count"""
_MESSAGE_COLUMNS = "id, session_id, user_id, role, content, timestamp, metadata"


# The user's session (none when it is not theirs), and its updated_at moved to %(ts)s when a second or more
# behind: the head of both append statements' WITH. The row's own condition is checked again so that a
# concurrent writer's later updated_at is never moved back; the one on ``s`` skips the update's index scan.
_SESSION_TOUCHED = """s AS (SELECT id, user_id, updated_at FROM sessions WHERE id = %(sid)s AND user_id = %(uid)s),
    touched AS (UPDATE sessions SET updated_at = %(ts)s
                WHERE id = (SELECT id FROM s WHERE s.updated_at <= %(ts)s - interval '1 second')
                  AND updated_at <= %(ts)s - interval '1 second')"""


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidInput(f"role {role!r} is not one of {', '.join(ROLES)}")


def _new_session_id() -> str:
    return uuid.uuid4().hex


def title_from(message: str) -> str:
    """A session title from its first message: the first line, shortened at a word boundary."""
    line = " ".join(message.strip().split("\n", 1)[0].split())
    if len(line) <= TITLE_LENGTH:
        return line
    cut = line[: TITLE_LENGTH - 1].rsplit(" ", 1)[0]
    return cut + "…"


class ConversationStore:
    """Sessions and messages in Postgres, scoped by user."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock = REAL_CLOCK,
        new_session_id: Callable[[], str] = _new_session_id,
    ) -> None:
        self.db = db
        self.clock = clock
        self.new_session_id = new_session_id

    # -- sessions -----------------------------------------------------------------------------------

    def create_session(self, user: str, title: str = "", session_id: str | None = None) -> Session:
        session_id = session_id or self.new_session_id()
        check_session_id(session_id)
        now = self.clock.now()
        with self.db.connection() as conn, conn.cursor(row_factory=class_row(Session)) as cur:
            cur.execute(
                """INSERT INTO sessions AS s (id, user_id, title, created_at, updated_at)
                   VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING
                   RETURNING s.id, s.user_id, s.title, s.summary, s.summary_through, s.created_at,
                             s.updated_at, 0 AS message_count""",
                (session_id, user, title, now, now),
            )
            row = cur.fetchone()
        if row is None:
            # The id is taken. Whether by this user or another, do not reveal the other's session.
            existing = self._find_session(user, session_id)
            if existing is None:
                raise InvalidInput(f"session id already in use: {session_id}")
            return existing
        return row

    def get_session(self, user: str, session_id: str) -> Session:
        session = self._find_session(user, session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return session

    def find_session(self, user: str, reference: str) -> Session:
        """The user's session with this id, or the only one whose id starts with ``reference`` (what
        ``chat --session``, ``/resume`` and ``sessions show`` accept). Raises :class:`SessionNotFound` or
        :class:`AmbiguousSession`."""
        reference = reference.strip()
        if not reference:
            raise SessionNotFound(reference)
        exact = self._find_session(user, reference)
        if exact is not None:
            return exact
        with self.db.connection() as conn, conn.cursor(row_factory=class_row(Session)) as cur:
            cur.execute(
                f"""SELECT {_SESSION_COLUMNS} FROM sessions s
                    WHERE s.user_id = %s AND left(s.id, %s) = %s ORDER BY s.id LIMIT 6""",
                (user, len(reference), reference),
            )
            matches = cur.fetchall()
        if not matches:
            raise SessionNotFound(reference)
        if len(matches) > 1:
            shown = ", ".join(s.id for s in matches[:5]) + (" …" if len(matches) > 5 else "")
            raise AmbiguousSession(f"{reference!r} matches more than one session ({shown}); type more of the id")
        return matches[0]

    def _find_session(self, user: str, session_id: str) -> Session | None:
        with self.db.connection() as conn, conn.cursor(row_factory=class_row(Session)) as cur:
            cur.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions s WHERE s.id = %s AND s.user_id = %s",
                (session_id, user),
            )
            return cur.fetchone()

    def list_sessions(self, user: str, limit: int = 100, offset: int = 0) -> list[Session]:
        """The user's sessions, most recently active first."""
        with self.db.connection() as conn, conn.cursor(row_factory=class_row(Session)) as cur:
            cur.execute(
                f"""SELECT {_SESSION_COLUMNS} FROM sessions s WHERE s.user_id = %s
                    ORDER BY s.updated_at DESC, s.id LIMIT %s OFFSET %s""",
                (user, limit, offset),
            )
            return cur.fetchall()

    def rename_session(self, user: str, session_id: str, title: str) -> Session:
        with self.db.connection() as conn:
            updated = conn.execute(
                "UPDATE sessions SET title = %s WHERE id = %s AND user_id = %s", (title, session_id, user)
            ).rowcount
        if not updated:
            raise SessionNotFound(session_id)
        return self.get_session(user, session_id)

    def set_title_if_empty(self, user: str, session_id: str, title: str) -> None:
        with self.db.connection() as conn:
            conn.execute(
                "UPDATE sessions SET title = %s WHERE id = %s AND user_id = %s AND title = ''",
                (title, session_id, user),
            )

    def delete_session(self, user: str, session_id: str) -> None:
        """Delete a session and its messages."""
        with self.db.connection() as conn:
            deleted = conn.execute(
                "DELETE FROM sessions WHERE id = %s AND user_id = %s", (session_id, user)
            ).rowcount
        if not deleted:
            raise SessionNotFound(session_id)

    def set_summary(self, user: str, session_id: str, summary: str, through_message_id: int) -> None:
        """Store the rolling summary of everything up to and including ``through_message_id``."""
        with self.db.connection() as conn:
            updated = conn.execute(
                """UPDATE sessions SET summary = %s, summary_through = %s
                   WHERE id = %s AND user_id = %s""",
                (summary, through_message_id, session_id, user),
            ).rowcount
        if not updated:
            raise SessionNotFound(session_id)

    # -- messages -----------------------------------------------------------------------------------

    def append(
        self,
        user: str,
        session_id: str,
        role: str,
        content: str,
        metadata: dict[str, Any] | None = None,
    ) -> Message:
        """Add a message to one of the user's sessions (and mark the session active).

        One message is the common case, so it has a statement of its own: scalar parameters instead of
        :meth:`append_many`'s JSON document, no set-returning function and no sorts, which takes about a third
        off the part of an append that is not the commit's WAL flush."""
        _check_role(role)
        timestamp = self.clock.now()
        meta = metadata or {}
        with self.db.autocommit() as conn:  # one statement, atomic on its own: one round trip, no BEGIN/COMMIT
            row = conn.execute(
                f"""WITH {_SESSION_TOUCHED}
                   INSERT INTO conversations (session_id, user_id, role, content, timestamp, metadata)
                   SELECT s.id, s.user_id, %(role)s, %(content)s, %(ts)s, %(meta)s FROM s
                   RETURNING id""",
                {
                    "ts": timestamp,
                    "sid": session_id,
                    "uid": user,
                    "role": role,
                    "content": content,
                    "meta": Jsonb(meta),
                },
            ).fetchone()
        if row is None:
            raise SessionNotFound(session_id)
        return Message(row[0], session_id, user, role, content, timestamp, meta)

    def append_many(
        self,
        user: str,
        session_id: str,
        messages: Sequence[tuple[str, str, dict[str, Any] | None]],
    ) -> list[Message]:
        """Add ``(role, content, metadata)`` messages, in order, in one statement and one transaction.

        The session's ``updated_at`` moves only when it is a second or more behind: rewriting the session row
        on every message would cost an extra (non-HOT) row version per message for no visible difference.
        """
        for role, _, _ in messages:
            _check_role(role)
        if not messages:
            return []
        timestamp = self.clock.now()
        metas = [meta or {} for _, _, meta in messages]
        # The rows travel as ONE JSON document (one json.dumps, in C) rather than three arrays adapted element
        # by element (a Jsonb object per message): 0.07 instead of 0.18 ms of client time for 100 messages.
        rows = json.dumps(
            [
                {"role": role, "content": content, "metadata": meta}
                for (role, content, _), meta in zip(messages, metas, strict=True)
            ],
            ensure_ascii=False,
        )
        with self.db.autocommit() as conn:  # one statement, atomic on its own: one round trip, no BEGIN/COMMIT
            ids = [
                row[0]
                for row in conn.execute(
                    f"""WITH {_SESSION_TOUCHED},
                       inserted AS (
                           INSERT INTO conversations (session_id, user_id, role, content, timestamp, metadata)
                           SELECT s.id, s.user_id, m.role, m.content, %(ts)s, m.metadata
                           FROM s, ROWS FROM (json_to_recordset(%(rows)s::json)
                                              AS (role text, content text, metadata jsonb))
                                   WITH ORDINALITY AS m(role, content, metadata, n)
                           ORDER BY m.n
                           RETURNING id)
                       SELECT id FROM inserted ORDER BY id""",
                    {"ts": timestamp, "sid": session_id, "uid": user, "rows": rows},
                ).fetchall()
            ]
        if not ids:
            raise SessionNotFound(session_id)
        return [
            Message(message_id, session_id, user, role, content, timestamp, meta)
            for message_id, (role, content, _), meta in zip(ids, messages, metas, strict=True)
        ]

    def update_metadata(self, user: str, message_id: int, patch: dict[str, Any]) -> Message:
        """Merge ``patch`` into a message's metadata (e.g. a failed status, feedback, trace id)."""
        with self.db.connection() as conn, conn.cursor(row_factory=class_row(Message)) as cur:
            cur.execute(
                f"""UPDATE conversations SET metadata = metadata || %s
                    WHERE id = %s AND user_id = %s RETURNING {_MESSAGE_COLUMNS}""",
                (Jsonb(patch), message_id, user),
            )
            row = cur.fetchone()
        if row is None:
            raise MessageNotFound(message_id)
        return row

    def get_message(self, user: str, message_id: int) -> Message:
        with self.db.connection() as conn, conn.cursor(row_factory=class_row(Message)) as cur:
            cur.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM conversations WHERE id = %s AND user_id = %s",
                (message_id, user),
            )
            row = cur.fetchone()
        if row is None:
            raise MessageNotFound(message_id)
        return row

    def messages(
        self, user: str, session_id: str, *, after_id: int | None = None, before_id: int | None = None
    ) -> list[Message]:
        """A session's messages in order (timestamp, then id for equal timestamps), optionally only those
        with ``after_id < id < before_id``."""
        self.get_session(user, session_id)
        with self.db.connection() as conn, conn.cursor(row_factory=class_row(Message)) as cur:
            cur.execute(
                f"""SELECT {_MESSAGE_COLUMNS} FROM conversations
                    WHERE session_id = %(sid)s AND user_id = %(uid)s AND id > %(after)s
                      AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
                    ORDER BY timestamp, id""",
                {
                    "sid": session_id,
                    "uid": user,
                    "after": after_id if after_id is not None else -1,
                    "before": before_id,
                },
            )
            return cur.fetchall()

    def recent_messages(
        self,
        user: str,
        session_id: str,
        *,
        max_messages: int,
        max_tokens: int | None = None,
        include_failed: bool = False,
        before_id: int | None = None,
        count_tokens: Callable[[str], int] = message_tokens,
    ) -> list[Message]:
        """The newest whole turns that fit ``max_messages`` and ``max_tokens``, oldest first.

        A turn is a user message with the replies that follow it; turns are kept or dropped whole, so the
        history never starts with an answer whose question was cut. Failed messages (a model call that did
        not complete) are left out unless asked for. ``before_id`` excludes the message being answered.
        """
        if max_messages <= 0:
            return []
        with self.db.connection() as conn, conn.cursor(row_factory=class_row(Message)) as cur:
            cur.execute(
                f"""SELECT {_MESSAGE_COLUMNS} FROM conversations
                    WHERE session_id = %(sid)s AND user_id = %(uid)s
                      AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
                      AND (%(failed)s OR NOT (metadata @> '{{"status": "failed"}}'))
                    ORDER BY timestamp DESC, id DESC LIMIT %(limit)s""",
                {
                    "sid": session_id,
                    "uid": user,
                    "before": before_id,
                    "failed": include_failed,
                    "limit": max_messages,
                },
            )
            newest_first = cur.fetchall()
        oldest_first = list(reversed(newest_first))
        if len(oldest_first) == max_messages:
            # The window may have cut a turn in half: drop replies whose question fell outside it.
            while oldest_first and oldest_first[0].role != "user":
                oldest_first.pop(0)
        return fit_turns(oldest_first, max_messages, max_tokens, count_tokens)

    # -- import / export ----------------------------------------------------------------------------

    def export_jsonl(self, out: TextIO, user: str | None = None) -> int:
        """Write every message (of one user, or all) as JSON lines; returns the count."""
        count = 0
        with self.db.connection() as conn, conn.cursor(name="export", row_factory=class_row(Message)) as cur:
            cur.itersize = 5000
            if user is None:
                cur.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM conversations ORDER BY user_id, session_id, timestamp, id"
                )
            else:
                cur.execute(
                    f"""SELECT {_MESSAGE_COLUMNS} FROM conversations WHERE user_id = %s
                        ORDER BY session_id, timestamp, id""",
                    (user,),
                )
            for message in cur:
                out.write(json.dumps(message.to_json(), ensure_ascii=False) + "\n")
                count += 1
        return count

    def import_jsonl(self, lines: Iterable[str], *, max_message_chars: int | None = None) -> ImportResult:
        """Import exported lines, all or nothing.

        Every line is validated first (:mod:`.memory_files`; ``max_message_chars`` bounds user messages as
        the web does); any bad line rejects the whole file with each problem and its line number. Messages
        already present (same session, role, timestamp and content) are skipped, so importing the same file
        twice adds nothing the second time.
        """
        rows, errors = parse_import(lines, max_message_chars)
        if errors:
            raise ImportRejected(errors)
        if not rows:
            return ImportResult(0, 0, 0)
        with self.db.connection() as conn:
            conn.execute(
                """CREATE TEMP TABLE import_messages (
                       line int, session_id text, user_id text, role text, content text,
                       timestamp timestamptz, metadata jsonb) ON COMMIT DROP"""
            )
            with conn.cursor().copy(
                "COPY import_messages (line, session_id, user_id, role, content, timestamp, metadata) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)
            owned_elsewhere = conn.execute(
                """SELECT DISTINCT ON (i.session_id) i.line, i.session_id FROM import_messages i
                   JOIN sessions s ON s.id = i.session_id AND s.user_id <> i.user_id
                   ORDER BY i.session_id, i.line"""
            ).fetchall()
            if owned_elsewhere:
                raise ImportRejected(
                    [
                        f"line {line}: session {sid!r} already belongs to another user"
                        for line, sid in owned_elsewhere
                    ]
                )
            sessions = conn.execute(
                """INSERT INTO sessions (id, user_id, title, created_at, updated_at)
                   SELECT session_id, min(user_id), '', min(timestamp), max(timestamp)
                   FROM import_messages GROUP BY session_id
                   ON CONFLICT (id) DO UPDATE SET updated_at = GREATEST(sessions.updated_at, EXCLUDED.updated_at)
                   RETURNING (xmax = 0)"""
            ).fetchall()
            # Ids are handed out in file order: messages are read back by (timestamp, id), so messages that
            # share a timestamp keep the order the file gave them. Of duplicate lines the first one counts.
            inserted = conn.execute(
                """INSERT INTO conversations (session_id, user_id, role, content, timestamp, metadata)
                   SELECT fresh.session_id, fresh.user_id, fresh.role, fresh.content, fresh.timestamp,
                          fresh.metadata
                   FROM (
                       SELECT DISTINCT ON (i.session_id, i.timestamp, i.role, i.content) i.*
                       FROM import_messages i
                       WHERE NOT EXISTS (
                           SELECT 1 FROM conversations c
                           WHERE c.session_id = i.session_id AND c.timestamp = i.timestamp
                             AND c.role = i.role AND c.content = i.content)
                       ORDER BY i.session_id, i.timestamp, i.role, i.content, i.line
                   ) AS fresh
                   ORDER BY fresh.line"""
            ).rowcount
            # Untitled sessions take the first line of their first user message, as live sessions do.
            for session_id, first in conn.execute(
                """SELECT DISTINCT ON (c.session_id) c.session_id, c.content
                   FROM conversations c JOIN sessions s ON s.id = c.session_id
                   WHERE s.title = '' AND c.role = 'user'
                     AND c.session_id IN (SELECT DISTINCT session_id FROM import_messages)
                   ORDER BY c.session_id, c.timestamp, c.id"""
            ).fetchall():
                conn.execute(
                    "UPDATE sessions SET title = %s WHERE id = %s AND title = ''",
                    (title_from(first), session_id),
                )
        created = sum(1 for (is_new,) in sessions if is_new)
        return ImportResult(messages=inserted, skipped=len(rows) - inserted, sessions_created=created)


class _Turnish(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


M = TypeVar("M", bound=_Turnish)


def fit_turns(
    messages: Sequence[M],
    max_messages: int,
    max_tokens: int | None,
    count_tokens: Callable[[str], int] = message_tokens,
) -> list[M]:
    """Keep the newest whole turns of ``messages`` (oldest first) within both limits.

    A turn is a user message with the replies that follow it; the history and the prompt both cut whole turns.
    """
    turns: list[list[M]] = []
    for message in messages:
        if message.role == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    kept: list[list[M]] = []
    used_messages = used_tokens = 0
    for turn in reversed(turns):
        cost = sum(count_tokens(m.content) for m in turn)
        if used_messages + len(turn) > max_messages:
            break
        if max_tokens is not None and used_tokens + cost > max_tokens:
            break
        kept.append(turn)
        used_messages += len(turn)
        used_tokens += cost
    return [m for turn in reversed(kept) for m in turn]


__all__ = [
    "MAX_SESSION_ID_LENGTH",
    "ROLES",
    "AmbiguousSession",
    "ConversationStore",
    "ImportRejected",
    "ImportResult",
    "Message",
    "MessageNotFound",
    "Session",
    "SessionNotFound",
    "fit_turns",
    "title_from",
]
