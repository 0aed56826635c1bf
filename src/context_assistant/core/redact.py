"""One redaction step for text that comes from outside: upstream error bodies and exception messages.

A server that echoes the request's ``Authorization`` header in its error body, a driver error that prints a
connection URL, an SDK exception that quotes a token: such text must never reach a log, stdout, a ``--json``
error, a stored message's metadata or an MLflow trace. :func:`redact` replaces, with ``[REDACTED]``:

* bearer tokens (``Bearer …``) and whole ``Authorization:`` header values (``Basic …`` too);
* Databricks tokens (``dapi…``, ``dose…``, ``dkea…``), OpenAI-style keys (``sk-…``) and JWTs (OAuth access
  tokens, Lakebase credentials);
* passwords in URLs (``postgresql://user:pass@host``, ``https://user:pass@host``) and ``password=…``,
  ``api_key=…``, ``token=…``, ``client_secret=…`` pairs (``key=value``, ``key: value`` or JSON);
* the configured secrets themselves, wherever they appear: the values of :data:`SECRET_ENV_VARS` (read at
  each call, so a variable set later counts) and any value passed to :func:`register_secret` (the model's API
  key variable, minted Lakebase tokens). A secret shorter than :data:`MIN_SECRET_LENGTH` characters is only
  caught by the patterns above (replacing a short common word everywhere would garble every message).

Where it runs: :func:`context_assistant.core.upstream.error_detail` and ``exception_line`` (every message built
from an upstream body or an SDK exception), the error hierarchy's root (so every ``ContextAssistantError``
message is clean, whoever built it), the failed-turn metadata the assistant stores, exceptions recorded on
MLflow spans, and every log record (:func:`install_log_redaction`, installed by the CLI, the jobs and the web
app).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import traceback
from collections.abc import Mapping

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 6
SECRET_ENV_VARS = (
    "PGPASSWORD",
    "LAKEBASE_PASSWORD",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_SECRET",
    "DATABRICKS_PASSWORD",
    "OPENAI_API_KEY",
    "AZURE_CLIENT_SECRET",
    "ARM_CLIENT_SECRET",
)

_KEYS = r"password|passwd|pwd|secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|token"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # An Authorization header (or a JSON/dict key of that name) with whatever scheme and value follow.
    (re.compile(r"""(?i)(\bauthorization\b["']?\s*[:=]\s*["']?)[^"'\r\n,;}]+"""), rf"\1{REDACTED}"),
    # "Bearer <token>" anywhere (a token has a digit or punctuation, or is long: "bearer tokens" is prose)
    (
        re.compile(r"\b([Bb]earer|BEARER)\s+(?:[A-Za-z0-9._~+/=-]{20,}|(?=\S*[\d._~+/=-])[A-Za-z0-9._~+/=-]{6,})"),
        rf"\1 {REDACTED}",
    ),
    # userinfo of a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), rf"\1{REDACTED}@"),
    # key=value, key: value, "key": "value" (libpq conninfo, query strings, JSON bodies)
    (re.compile(rf"""(?i)(\b(?:{_KEYS})\b["']?\s*[:=]\s*["']?)[^\s"'&,;}}]+"""), rf"\1{REDACTED}"),
    (re.compile(r"\b(?:dapi|dose|dkea)[0-9a-f]{16,}(?:-\d+)?\b"), REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), REDACTED),
)

_registered: set[str] = set()
_registered_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Have :func:`redact` remove ``value`` from now on (a key read from a configured variable, a token)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _registered_lock:
            _registered.add(value)


def configured_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    """The secrets :func:`redact` removes verbatim: registered ones and :data:`SECRET_ENV_VARS`' values,
    longest first (so a secret containing another is removed whole)."""
    env = os.environ if env is None else env
    with _registered_lock:
        found = set(_registered)
    found.update(value for name in SECRET_ENV_VARS if len(value := env.get(name) or "") >= MIN_SECRET_LENGTH)
    return sorted(found, key=len, reverse=True)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` with every secret this module knows of replaced by ``[REDACTED]`` (see the module doc)."""
    if not text:
        return text
    for secret in configured_secrets(env):
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_exception(exc: BaseException) -> tuple[str, str]:
    """``(message, traceback)`` of an exception, both redacted (the traceback includes chained causes, whose
    messages are often the raw upstream text)."""
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).strip()
    except Exception:
        stack = repr(exc)
    return redact(str(exc)), redact(stack)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message and its exception text in place (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _redact_record(record: logging.LogRecord) -> None:
    if getattr(record, "_context_assistant_redacted", False):
        return
    record._context_assistant_redacted = True
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: leave it to logging's own error handling
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = redact_exception(record.exc_info[1])[1]
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


_installed = False
_install_lock = threading.Lock()


def install_log_redaction() -> None:
    """Redact every log record of this process, whichever logger and handler it goes through (the project's,
    uvicorn's, MLflow's, the SDKs'): records are redacted where they are made, by wrapping the record factory.
    Idempotent."""
    global _installed
    with _install_lock:
        if _installed:
            return
        make_record = logging.getLogRecordFactory()

        def redacting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(redacting_factory)
        _installed = True


__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "SECRET_ENV_VARS",
    "RedactingFilter",
    "configured_secrets",
    "install_log_redaction",
    "redact",
    "redact_exception",
    "register_secret",
]
