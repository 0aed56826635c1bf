"""What text from outside may contain, checked once where it comes in: import lines, CLI arguments, HTTP bodies
and path parameters all use these functions, so every front door refuses the same things in the same words.

* :func:`check_text`: a NUL character (Postgres cannot store one in ``text``/``jsonb``) or an unpaired UTF-16
  surrogate (``"\\ud800"`` in JSON decodes to one; it cannot be encoded as UTF-8, so the database driver would
  fail deep inside a write) is refused, naming the field and the position.
* :func:`check_message`: the assistant's rule for a user's message: not blank, at most
  ``web.max_message_chars`` characters (the web API, the CLI chat and ``memory import`` share it).
* :func:`check_session_id`: a session id must be routable as one URL path segment (``/api/sessions/{id}``), so
  ``/``, ``\\``, control characters, ``.`` and ``..`` are refused, and it has at most 255 characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import InvalidInput

MAX_SESSION_ID_LENGTH = 255
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


class InvalidText(InvalidInput):
    """Text that cannot be stored or routed; ``field`` names where it was (for a 422 body or a CLI line)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field!r} {problem}")
        self.field = field
        self.problem = problem


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None when it can."""
    nul = value.find("\x00")
    if nul >= 0:
        return f"contains a NUL character (at position {nul}), which cannot be stored"
    surrogate = _SURROGATE.search(value)
    if surrogate:
        code = f"U+{ord(surrogate.group()):04X}"
        return (
            f"contains an unpaired surrogate ({code} at position {surrogate.start()}), which is not valid Unicode"
        )
    return None


def check_text(field: str, value: Any) -> None:
    """Raise :class:`InvalidText` when a string (or any string inside a JSON-like value: keys too) cannot be
    stored. Non-strings are left to the caller's own type checks."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise InvalidText(field, problem)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_text(field, key)
            check_text(field, item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_text(field, item)


def check_message(message: str, max_chars: int) -> None:
    """The one rule for what a user may send: not blank, at most ``max_chars`` (``web.max_message_chars``)
    characters, and storable text."""
    if not message or not message.strip():
        raise InvalidInput("the message is empty")
    check_message_length(message, max_chars)
    check_text("message", message)


def check_message_length(message: str, max_chars: int) -> None:
    """The length half of :func:`check_message` (an imported user message may be empty, never too long)."""
    if len(message) > max_chars:
        raise InvalidInput(
            f"the message is {len(message)} characters; the limit is {max_chars} (web.max_message_chars)"
        )


def session_id_problem(session_id: str) -> str | None:
    """Why ``session_id`` cannot be a session id, or None when it can."""
    if not session_id:
        return "is empty"
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        return f"is longer than {MAX_SESSION_ID_LENGTH} characters"
    problem = text_problem(session_id)
    if problem:
        return problem
    if "/" in session_id or "\\" in session_id:
        return "contains a slash, which cannot be part of a URL path segment (/api/sessions/{id})"
    if _CONTROL.search(session_id):
        return "contains a control character"
    if session_id in (".", "..") or session_id != session_id.strip():
        return "is '.', '..' or starts or ends with white space, which URLs do not keep as they are"
    return None


def check_session_id(session_id: str, field: str = "session_id") -> None:
    """Raise :class:`InvalidText` unless ``session_id`` can be stored and routed (see the module doc)."""
    problem = session_id_problem(session_id)
    if problem:
        raise InvalidText(field, problem)


__all__ = [
    "MAX_SESSION_ID_LENGTH",
    "InvalidText",
    "check_message",
    "check_message_length",
    "check_session_id",
    "check_text",
    "session_id_problem",
    "text_problem",
]
