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
        problems = sum(getattr(error, "problems", 1) for error in errors)  # a line lists all of its problems
        lines = f" on {len(errors)} line(s)" if problems != len(errors) else ""
        super().__init__(f"nothing imported: {problems} problem(s){lines}\n" + "\n".join(shown) + more)


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
        except LineRejected as exc:
            errors.append(LineError(f"line {number}: {exc}", len(exc.problems)))
            continue
        except ValueError as exc:
            errors.append(LineError(f"line {number}: {exc}"))
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


REQUIRED_KEYS = ("session_id", "user_id", "role", "content", "timestamp")


class LineRejected(ValueError):
    """Every problem of one line, so the user fixes them in one go."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class LineError(str):
    """``line N: problem; problem`` that remembers how many problems it lists."""

    problems: int

    def __new__(cls, text: str, problems: int = 1) -> LineError:
        error = super().__new__(cls, text)
        error.problems = problems
        return error


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
    problems: list[str] = [f"missing {key!r}" for key in REQUIRED_KEYS if key not in obj]
    if problems:
        raise LineRejected(problems)
    session_id, user_id, role, content = obj["session_id"], obj["user_id"], obj["role"], obj["content"]
    metadata = obj.get("metadata") or {}
    # Every field is checked, so a line with several problems lists them all at once.
    if not isinstance(session_id, str) or not session_id:
        problems.append("'session_id' must be a non-empty string")
    elif problem := session_id_problem(session_id):
        problems.append(f"'session_id' {_short(session_id)} {problem}")
    if not isinstance(user_id, str) or not user_id:
        problems.append("'user_id' must be a non-empty string")
    if role not in ROLES:
        problems.append(f"'role' {_short(role)} is not one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        problems.append("'content' must be a string")
    if not isinstance(metadata, dict):
        problems.append("'metadata' must be an object")
    for field, value in (("user_id", user_id), ("content", content), ("metadata", metadata)):
        if isinstance(value, (str, dict)):
            try:
                check_text(field, value)
            except ValueError as exc:  # an InvalidText is a ValueError: reported with its line number
                problems.append(str(exc))
    if role == "user" and max_message_chars is not None and isinstance(content, str):
        try:
            check_message_length(content, max_message_chars)
        except InvalidInput as exc:
            problems.append(f"'content': {exc}; longer than a user can send, so not imported")
    try:
        timestamp = parse_timestamp(obj["timestamp"])
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise LineRejected(problems)
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
