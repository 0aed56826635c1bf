"""One error hierarchy: what went wrong, for people, and what it means to each front door.

Everything the project raises on purpose is a :class:`ContextAssistantError`. ``str()`` is one line a user
can act on, and the class says what it means where it surfaces:

* ``http_status``: what the web app answers (it maps the root once; any other exception is a bug and answers
  500 with a request id, logged with its traceback);
* ``exit_code``: what the CLI and the job entry points exit with (they catch the root once);
* ``retryable``: whether trying the same thing again later can succeed (an outage can pass, a wrong name
  cannot); an instance may say otherwise than its class (``retryable=`` when raising);
* ``kind``: a short name for JSON output (``not_found``, ``bad_input``, ...);
* ``label``: how the CLI starts the line (``error: ...``, ``config error: ...``, ``usage error: ...``).

The kinds below are the vocabulary; each states all five attributes, so whichever kind comes first in a
class's bases decides them all. Each part's own errors (``SessionNotFound``, ``ParseError``,
``SyncError``, ``ModelError``, ...) subclass the kind that fits and keep their names, so callers can still
catch them precisely. When a part's error family must also carry a kind, the kind comes first in the bases
(``class IndexNotReady(Unavailable, RetrievalError)``) so its status and exit code win.

:class:`InvalidInput` and :class:`NotFound` also subclass the built-in ``ValueError`` / ``LookupError`` that
the code raised before, so callers written against those keep working. That is safe because the front doors
map only the root: a ``KeyError`` from a bug is never mistaken for a 404.
"""

from __future__ import annotations

from typing import Any

from .redact import redact

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran but failed: not found, rejected input, a service that did not answer
EXIT_USAGE = 2  # bad usage or configuration: nothing was attempted
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


class ContextAssistantError(Exception):
    """The root: an error with a message meant for the user. Unclassified, it is a server-side failure."""

    http_status: int = 500
    exit_code: int = EXIT_FAILED
    retryable: bool = False
    kind: str = "error"
    label: str = "error"

    def __init__(self, *args: object, retryable: bool | None = None) -> None:
        # Messages are often built from upstream text (an error body, an SDK exception): whatever built it, no
        # token or password goes further than here (core.redact).
        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))
        if retryable is not None:
            self.retryable = retryable

    def to_json(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": "<one line>"}``; subclasses add fields a client can act on."""
        return {"error": str(self)}


class InvalidInput(ContextAssistantError, ValueError):
    """The request itself is wrong (an empty message, a malformed file, an unknown option value)."""

    http_status = 422
    kind = "bad_input"
    retryable = False
    exit_code = EXIT_FAILED
    label = "error"


class UsageError(InvalidInput):
    """The command line is wrong: nothing was attempted."""

    http_status = 422
    kind = "usage"
    retryable = False
    exit_code = EXIT_USAGE
    label = "usage error"


class NotFound(ContextAssistantError, LookupError):
    """What was asked for does not exist, or belongs to someone else (the two are never told apart)."""

    http_status = 404
    kind = "not_found"
    retryable = False
    exit_code = EXIT_FAILED
    label = "error"


class Conflict(ContextAssistantError):
    """The request conflicts with the current state (something else is running, a feature is off)."""

    http_status = 409
    kind = "conflict"
    retryable = False
    exit_code = EXIT_FAILED
    label = "error"


class Unauthorized(ContextAssistantError):
    """Who is asking is unknown."""

    http_status = 401
    kind = "unauthorized"
    retryable = False
    exit_code = EXIT_FAILED
    label = "error"


class Unavailable(ContextAssistantError):
    """A service we depend on (the database, an endpoint) cannot be reached or is not ready; it may pass."""

    http_status = 503
    kind = "unavailable"
    retryable = True
    exit_code = EXIT_FAILED
    label = "error"


class UpstreamError(ContextAssistantError):
    """A service we call answered, but with an error or with something we cannot use."""

    http_status = 502
    kind = "upstream"
    retryable = False
    exit_code = EXIT_FAILED
    label = "error"


class ConfigError(ContextAssistantError, ValueError):
    """A configuration problem: ``str()`` names the key, the value and what is allowed."""

    http_status = 500
    kind = "config"
    retryable = False
    exit_code = EXIT_USAGE
    label = "config error"


__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ConfigError",
    "Conflict",
    "ContextAssistantError",
    "InvalidInput",
    "NotFound",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
    "UsageError",
]
