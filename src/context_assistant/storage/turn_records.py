"""A turn's database work in three round trips: the question, the context, the reply.

The turn is where a user waits, so its database work is shaped for it (issue 16): the question is stored by
one statement on an autocommit connection (:func:`store_question`), everything the prompt needs is read in the
turn's one read transaction (:func:`load_context`, inside ``Database.unit()`` with recall and retrieval), and
the reply, the question's status and the rolling summary are written by one more statement
(:func:`store_reply`). Every statement filters on the user, as :class:`ConversationStore` does, and the
question is committed before anything else happens, so nothing the user typed is lost whatever fails later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from ..core.errors import InvalidInput
from ..core.text import check_session_id
from ..core.tokens import message_tokens
from .limbo import TURN_QUESTION
from .memory import _MESSAGE_COLUMNS, ConversationStore, Message, SessionNotFound, fit_turns

# Unsummarised messages read with the context beyond the history window: enough for the turns that fell out
# of the window since the last turn; a session with more (a long imported one) is read in full instead.
CONTEXT_SLACK = 64

_NEW_SESSION_QUESTION = """
    WITH s AS (
        INSERT INTO sessions AS s (id, user_id, title, created_at, updated_at)
        VALUES (%(sid)s, %(uid)s, %(title)s, %(ts)s, %(ts)s) ON CONFLICT (id) DO NOTHING
        RETURNING s.id, s.user_id)
    INSERT INTO conversations (session_id, user_id, role, content, timestamp, metadata)
    SELECT s.id, s.user_id, 'user', %(content)s, %(ts)s, %(meta)s FROM s
    RETURNING id"""

# One UPDATE of the session row (two in one statement would silently keep only one): the activity time moves
# when it is a second or more behind (as in ConversationStore.append_many), an empty title takes the question's.
_QUESTION = """
    WITH s AS (SELECT id, user_id FROM sessions WHERE id = %(sid)s AND user_id = %(uid)s),
    touched AS (
        UPDATE sessions SET
            updated_at = CASE WHEN updated_at <= %(ts)s - interval '1 second' THEN %(ts)s ELSE updated_at END,
            title = CASE WHEN title = '' THEN %(title)s ELSE title END
        WHERE id = (SELECT id FROM s) AND (updated_at <= %(ts)s - interval '1 second' OR title = ''))
    INSERT INTO conversations (session_id, user_id, role, content, timestamp, metadata)
    SELECT s.id, s.user_id, 'user', %(content)s, %(ts)s, %(meta)s FROM s
    RETURNING id"""

# The session's summary and its messages not yet folded into it, newest first, up to a limit.
_CONTEXT = f"""
    SELECT s.summary, s.summary_through, m.*
    FROM sessions s
    LEFT JOIN LATERAL (
        SELECT {_MESSAGE_COLUMNS} FROM conversations c
        WHERE c.session_id = s.id AND c.user_id = s.user_id AND c.id > coalesce(s.summary_through, -1)
          AND (%(before)s::bigint IS NULL OR c.id < %(before)s::bigint)
        ORDER BY c.timestamp DESC, c.id DESC LIMIT %(limit)s) m ON TRUE
    WHERE s.id = %(sid)s AND s.user_id = %(uid)s"""

_REPLY = """
    WITH s AS (SELECT id, user_id FROM sessions WHERE id = %(sid)s AND user_id = %(uid)s),
    reply AS (
        INSERT INTO conversations (session_id, user_id, role, content, timestamp, metadata)
        SELECT s.id, s.user_id, 'assistant', %(content)s, %(ts)s, %(meta)s FROM s RETURNING id),
    question AS (
        UPDATE conversations SET metadata = metadata || %(patch)s
        WHERE id = %(qid)s AND user_id = %(uid)s AND EXISTS (SELECT 1 FROM s)),
    session AS (
        UPDATE sessions SET
            updated_at = CASE WHEN updated_at <= %(ts)s - interval '1 second' THEN %(ts)s ELSE updated_at END,
            summary = CASE WHEN advance THEN %(summary)s ELSE summary END,
            summary_through = CASE WHEN advance THEN %(through)s::bigint ELSE summary_through END
        FROM (SELECT %(through)s::bigint IS NOT NULL AND coalesce(summary_through, -1) < %(through)s::bigint
              AS advance FROM sessions WHERE id = (SELECT id FROM s)) a
        WHERE id = (SELECT id FROM s)
          AND (updated_at <= %(ts)s - interval '1 second' OR a.advance))
    SELECT id FROM reply"""


@dataclass(frozen=True)
class TurnContext:
    """What the prompt needs from the session: its rolling summary (as stored), the history window (whole
    turns within the limits, oldest first, failed messages left out) and the unsummarised messages older than
    the window (``to_fold``: what the summary should absorb now)."""

    summary: str
    summary_through: int | None
    history: list[Message]
    to_fold: list[Message] = field(default_factory=list)


def store_question(
    store: ConversationStore, user: str, session_id: str | None, content: str, title: str
) -> Message:
    """Store the user's question in one autocommitted statement: in a new session (created with ``title``)
    when ``session_id`` is None, else in the user's session (an empty title takes ``title``).

    Raises :class:`SessionNotFound` for a session that is not the user's, with nothing written.
    """
    timestamp = store.clock.now()
    new = session_id is None
    sid = store.new_session_id() if session_id is None else session_id
    check_session_id(sid)
    params = {
        "sid": sid,
        "uid": user,
        "title": title,
        "ts": timestamp,
        "content": content,
        "meta": Jsonb(TURN_QUESTION),
    }
    with store.db.autocommit() as conn:
        row = conn.execute(_NEW_SESSION_QUESTION if new else _QUESTION, params).fetchone()
    if row is None:
        if new:
            raise InvalidInput(f"session id already in use: {sid}")
        raise SessionNotFound(sid)
    return Message(row[0], sid, user, "user", content, timestamp, dict(TURN_QUESTION))


def load_context(
    store: ConversationStore,
    user: str,
    session_id: str,
    *,
    before_id: int,
    max_messages: int,
    max_tokens: int | None,
    count_tokens: Callable[[str], int] = message_tokens,
) -> TurnContext:
    """The session's summary, history window and messages to fold, in one statement (the same window as
    :meth:`ConversationStore.recent_messages`). A session with more unsummarised messages than the statement
    reads (a long imported one) is read again in full."""
    limit = max(max_messages, 0) + CONTEXT_SLACK
    with store.db.connection() as conn, conn.cursor() as cur:
        cur.execute(_CONTEXT, {"sid": session_id, "uid": user, "before": before_id, "limit": limit})
        rows = cur.fetchall()
    if not rows:
        raise SessionNotFound(session_id)
    summary, through = rows[0][0], rows[0][1]
    newest_first = [Message(*row[2:]) for row in rows if row[2] is not None]
    if len(newest_first) >= limit:
        newest_first = list(reversed(store.messages(user, session_id, after_id=through, before_id=before_id)))
    usable = [m for m in newest_first if not m.failed]
    history: list[Message] = []
    if max_messages > 0:
        window = list(reversed(usable[:max_messages]))
        if len(window) == max_messages:
            while window and window[0].role != "user":  # the window cut a turn in half
                window.pop(0)
        history = fit_turns(window, max_messages, max_tokens, count_tokens)
    first_kept = history[0].id if history else before_id
    to_fold = sorted((m for m in usable if m.id < first_kept), key=lambda m: (m.timestamp, m.id))
    return TurnContext(summary, through, history, to_fold)


def store_reply(
    store: ConversationStore,
    user: str,
    session_id: str,
    question_id: int,
    content: str,
    metadata: dict[str, Any],
    question_patch: dict[str, Any],
    summary: tuple[str, int] | None = None,
) -> Message:
    """Store the reply, merge ``question_patch`` into the question's metadata and (with ``summary`` =
    ``(text, through_message_id)``) advance the rolling summary, in one autocommitted statement.

    Raises :class:`SessionNotFound` when the session is no longer the user's (deleted meanwhile)."""
    timestamp = store.clock.now()
    params = {
        "sid": session_id,
        "uid": user,
        "ts": timestamp,
        "content": content,
        "meta": Jsonb(metadata),
        "qid": question_id,
        "patch": Jsonb(question_patch),
        "summary": summary[0] if summary else None,
        "through": summary[1] if summary else None,
    }
    with store.db.autocommit() as conn:
        row = conn.execute(_REPLY, params).fetchone()
    if row is None:
        raise SessionNotFound(session_id)
    return Message(row[0], session_id, user, "assistant", content, timestamp, metadata)
