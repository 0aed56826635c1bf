"""The document refresh the chat page can start: in a background thread, one at a time.

A refresh (new and changed documents parsed, chunked and embedded; on Databricks Apps, the ingestion job)
takes longer than a request should wait, so ``POST /api/rag/refresh`` starts it and returns; ``GET`` shows
its progress or how it ended. Only one runs per app process (a second start is refused while one runs);
the pgvector index also holds a Postgres advisory lock, so a sync started elsewhere (the nightly job, the
CLI) makes this one fail with that message.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.clock import REAL_CLOCK, Clock
from ..core.errors import Conflict

log = logging.getLogger(__name__)

# (full, progress) -> a result with to_json(), and optionally ok and summary()
RefreshCall = Callable[[bool, Callable[[str], None]], Any]


class RefreshAlreadyRunning(Conflict):
    """One refresh runs at a time per app process; this one can be started once that one has finished."""

    retryable = True


@dataclass(frozen=True)
class RefreshStatus:
    state: str = "idle"  # idle | running | succeeded | failed
    full: bool = False
    started_by: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    progress: str | None = None  # the latest progress line while running
    summary: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RefreshRunner:
    def __init__(self, refresh: RefreshCall, clock: Clock = REAL_CLOCK) -> None:
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._status = RefreshStatus()
        self._thread: threading.Thread | None = None

    def status(self) -> RefreshStatus:
        with self._lock:
            return self._status

    def start(self, user: str, full: bool = False) -> RefreshStatus:
        with self._lock:
            if self._status.state == "running":
                raise RefreshAlreadyRunning(
                    f"a document refresh started by {self._status.started_by} at {self._status.started_at} "
                    "is still running; wait for it to finish"
                )
            self._status = RefreshStatus(
                "running", full=full, started_by=user, started_at=self._clock.now().isoformat()
            )
            self._thread = threading.Thread(target=self._run, args=(full,), name="rag-refresh", daemon=True)
            self._thread.start()
            return self._status

    def wait(self, timeout: float | None = None) -> RefreshStatus:
        """Block until the current refresh ends (shutdown, tests)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    def _progress(self, line: str) -> None:
        with self._lock:
            if self._status.state == "running":
                self._status = dataclasses.replace(self._status, progress=line)

    def _run(self, full: bool) -> None:
        try:
            result = self._refresh(full, self._progress)
        except Exception as exc:
            log.warning("document refresh failed: %s", exc)
            self._finish(state="failed", error=str(exc), summary=f"Refresh failed: {exc}")
            return
        summary = result.summary() if callable(getattr(result, "summary", None)) else None
        payload = result.to_json() if callable(getattr(result, "to_json", None)) else None
        if getattr(result, "ok", True):
            self._finish(state="succeeded", result=payload, summary=summary)
        else:
            error = "some documents could not be processed; their previous versions were kept (see summary)"
            self._finish(state="failed", result=payload, summary=summary, error=error)

    def _finish(self, **changes: Any) -> None:
        with self._lock:
            self._status = dataclasses.replace(
                self._status, finished_at=self._clock.now().isoformat(), progress=None, **changes
            )
