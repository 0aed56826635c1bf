"""What an upstream service said when it refused a request, as one line a user can read.

Chat models (OpenAI-compatible servers and Databricks serving endpoints), embedding endpoints and Vector
Search all answer errors in a few JSON shapes; this is the one place that knows them. What it returns is
redacted (:mod:`context_assistant.core.redact`): a server that echoes a token back does not get it shown. Each caller adds what
only it knows (which setting to check for a 404, which permission a 403 needs).
"""

from __future__ import annotations

from collections.abc import Mapping

from .redact import redact

MAX_DETAIL_CHARS = 300


def error_detail(body: object, text: str = "", *, with_code: bool = False) -> str:
    """The server's own explanation in an error body, on one line (at most :data:`MAX_DETAIL_CHARS`).

    Understands OpenAI's ``{"error": {"message": ...}}`` and ``{"error": "..."}``, Databricks'
    ``{"error_code": ..., "message": ...}`` and FastAPI's ``{"detail": ...}``; a string body is taken as it is,
    and anything else falls back to ``text`` (the raw response). ``with_code`` puts a Databricks
    ``error_code`` before the message (``BAD_REQUEST: Input is too long``); without a message the code alone
    is the detail.
    """
    message: object = None
    code: object = None
    if isinstance(body, Mapping):
        inner = body.get("error")
        if isinstance(inner, Mapping):
            message = inner.get("message")
        elif isinstance(inner, str):
            message = inner
        message = message or body.get("message") or body.get("detail")
        code = body.get("error_code")
        if code and (with_code and message):
            message = f"{code}: {message}"
        message = message or code
    elif isinstance(body, str):
        message = body
    detail = redact(" ".join(str(message or text or "").split()))
    return detail[:MAX_DETAIL_CHARS] + ("…" if len(detail) > MAX_DETAIL_CHARS else "")


def status_message(
    status: int, service: str, detail: str = "", *, hints: Mapping[int, str] | None = None
) -> tuple[str, str]:
    """``(kind, message)`` for an HTTP error status from ``service`` (``"serving endpoint 'x'"``), worded the
    same for every caller. ``hints`` adds what only the caller knows — which setting to check on a 404, which
    permission a 403 needs — keyed by status (``500`` stands for any 5xx). ``kind`` is one of ``permission``,
    ``bad_endpoint``, ``rate_limited``, ``unavailable``, ``bad_request``."""
    if status == 401:
        kind, text = "permission", f"{service} rejected the credentials (401)"
    elif status == 403:
        kind, text = "permission", f"no permission to use {service} (403)"
    elif status == 404:
        kind, text = "bad_endpoint", f"{service} was not found (404)"
    elif status == 429:
        kind, text = "rate_limited", f"{service} is rate limited (429)"
    elif status >= 500:
        kind, text = "unavailable", f"{service} is unavailable ({status})"
    else:
        kind, text = "bad_request", f"{service} rejected the request ({status})"
    hint = (hints or {}).get(500 if status >= 500 else status)
    return kind, text + (f" — {hint}" if hint else "") + (f" (server said: {detail})" if detail else "")


def exception_line(exc: BaseException) -> str:
    """An error's text on one line, without the client-configuration dump databricks-sdk appends to
    authentication errors (it names hosts and auth types, never what to fix)."""
    text = " ".join(str(exc).split()).split(" Config: host=")[0].rstrip(". ")
    return redact(text) or type(exc).__name__


__all__ = ["MAX_DETAIL_CHARS", "error_detail", "exception_line", "status_message"]
