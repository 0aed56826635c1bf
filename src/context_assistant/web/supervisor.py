"""The embedded Postgres, watched by the web app: restarted with backoff when it stops.

The embedded server outlives the processes that use it, so nothing used to notice when it died (a crash, an
OOM kill, someone's ``kill -9``): the app answered 503 until some CLI command happened to start it again.
The app now checks every few seconds that its postmaster runs and, when it does not, starts it again — at
once, then after 1, 2, 4 … up to 30 s between failed attempts — logging each attempt in one line. The
connection pool replaces its dead connections by itself; meanwhile requests fail within
``web.health_timeout_seconds`` with a 503 that says the database is unavailable.

Only for the embedded server: an external Postgres or Lakebase is someone else's to run.
"""

from __future__ import annotations

import logging
import threading

from ..core.config import Config
from ..storage.targets import EmbeddedPostgres

log = logging.getLogger(__name__)


class EmbeddedSupervisor:
    def __init__(self, config: Config, *, check_seconds: float = 2.0, max_backoff_seconds: float = 30.0) -> None:
        self.config = config
        self.server = EmbeddedPostgres(config.data_path)
        self.check_seconds = check_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.restarts = 0
        # Until the server has run once, the app's first connection is starting it, not the supervisor.
        self._seen_running = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching (again, after :meth:`stop` and :meth:`join`: the watcher is one thread at a time)."""
        if not self.config.database.embedded or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="postgres-supervisor", daemon=True)
        self._thread.start()

    @property
    def seen_running(self) -> bool:
        """Whether the watcher has seen the server run: it restarts only a server it saw running."""
        return self._seen_running

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the watcher to end after :meth:`stop` (it may be in the middle of starting the server)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _watch(self) -> None:
        failures, down = 0, False
        delay = 0.0  # the first look at once: a server that dies soon after start-up must count as seen running
        while not self._stop.wait(delay):
            failures, down = self._check(failures, down)
            delay = self.check_seconds if failures == 0 else self._backoff(failures)

    def _check(self, failures: int, down: bool) -> tuple[int, bool]:
        """One look at the server, starting it when it is down; returns the new ``(failures, down)``."""
        running = self._running()
        if running is None:  # starting (crash recovery can take a while): not down, not up yet
            return failures, down
        if running:
            self._seen_running = True
            if down:  # started by us, or by pg_ctl still finishing a start we gave up waiting for
                self.restarts += 1
                log.warning("the embedded Postgres is running again (restart %d)", self.restarts)
            return 0, False
        if not self._seen_running:  # two starts at once fail each other ("lock file ... already exists")
            return failures, down
        attempt = failures + 1
        log.warning(
            "the embedded Postgres in %s is not running: starting it (attempt %d)", self.server.pgdata, attempt
        )
        try:
            self.server.start(self.config.database.name)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.error(
                "could not start the embedded Postgres (attempt %d; next in %gs): %s",
                attempt,
                self._backoff(attempt),
                first[:300],
            )
            return attempt, True
        return 0, True  # the next check (running) logs the recovery

    def _running(self) -> bool | None:
        """Whether the postmaster runs; None while its pid file is incomplete (a start under way: the file
        gets its last lines only when the server is ready, after crash recovery on a slow machine)."""
        try:
            return self.server.running_pid() is not None
        except Exception as exc:
            log.debug("the embedded Postgres pid file is not complete yet: %s", exc)
            return None

    def _backoff(self, failures: int) -> float:
        return float(min(self.max_backoff_seconds, 2 ** (failures - 1)))
