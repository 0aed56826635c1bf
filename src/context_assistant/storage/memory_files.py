"""The JSONL memory file (``memory export`` writes it, ``memory import`` reads it): one message per line.

Every line is checked before anything is written, with the rules the rest of the project applies to the same
fields, so an imported conversation is one the web app and the CLI can open: session ids must be routable
(:func:`context_assistant.core.text.check_session_id`), text must be storable (no NUL, no unpaired surrogate:
:func:`context_assistant.core.text.check_text`, metadata included) and a user's message may be no longer than
a user could have sent (``web.max_message_chars``, :func:`context_assistant.core.text.check_message_length`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from psycopg.types.json import Jsonb

from ..core.errors import InvalidInput
from ..core.text import MAX_SESSION_ID_LENGTH, check_message_length, check_text, session_id_problem

ROLES = ("user", "assistant", "system")


@dataclass(frozen=True)
class ImportResult:
    messages: int
    skipped: int
    sessions_created: int

    def to_json(self) -> dict[str, int]:
        return {"imported": self.messages, "skipped": self.skipped, "sessions_created": self.sessions_created}


class ImportRejected(InvalidInput):
    """The file was not imported; ``errors`` lists each bad line (``line N: problem``)."""

    MAX_SHOWN = 20

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        shown = errors[: self.MAX_SHOWN]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        super().__init__(f"nothing imported: {len(errors)} problem(s)\n" + "\n".join(shown) + more)


def parse_import(
    lines: Iterable[str], max_message_chars: int | None = None
) -> tuple[list[tuple[Any, ...]], list[str]]:
    """``(rows, errors)``: rows are ``(line, session_id, user_id, role, content, timestamp, metadata)``."""
    rows: list[tuple[Any, ...]] = []
    errors: list[str] = []
    owners: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = parse_line(line, max_message_chars)
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
            continue
        session_id, user_id = row[0], row[1]
        owner = owners.setdefault(session_id, (user_id, number))
        if owner[0] != user_id:
            errors.append(
                f"line {number}: session {session_id!r} has user {user_id!r} but line {owner[1]} gave {owner[0]!r}"
            )
            continue
        rows.append((number, *row))
    return rows, errors


def parse_line(line: str, max_message_chars: int | None = None) -> tuple[Any, ...]:
    """One line as ``(session_id, user_id, role, content, timestamp, metadata)``; ValueError says what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    for key in ("session_id", "user_id", "role", "content", "timestamp"):
        if key not in obj:
            raise ValueError(f"missing {key!r}")
    session_id, user_id, role, content = obj["session_id"], obj["user_id"], obj["role"], obj["content"]
    if not isinstance(session_id, str) or not session_id:
        raise ValueError("'session_id' must be a non-empty string")
    problem = session_id_problem(session_id)
    if problem:
        raise ValueError(f"'session_id' {_short(session_id)} {problem}")
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("'user_id' must be a non-empty string")
    if role not in ROLES:
        raise ValueError(f"'role' {_short(role)} is not one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise ValueError("'content' must be a string")
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError("'metadata' must be an object")
    for field, value in (("user_id", user_id), ("content", content), ("metadata", metadata)):
        check_text(field, value)  # an InvalidText is a ValueError: reported with its line number
    if role == "user" and max_message_chars is not None:
        try:
            check_message_length(content, max_message_chars)
        except InvalidInput as exc:
            raise ValueError(f"'content': {exc}; longer than a user can send, so not imported") from None
    timestamp = parse_timestamp(obj["timestamp"])
    return session_id, user_id, role, content, timestamp, Jsonb(metadata)


def parse_timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("'timestamp' must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'timestamp' {_short(value)} is not an ISO 8601 date-time") from None
    # A timestamp without an offset is taken as UTC (documented in the README).
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _short(value: Any, limit: int = 80) -> str:
    """A value for an error line: repr'd (so control characters show), and cut when long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…'"


__all__ = [
    "MAX_SESSION_ID_LENGTH",
    "ROLES",
    "ImportRejected",
    "ImportResult",
    "parse_import",
    "parse_line",
    "parse_timestamp",
]
