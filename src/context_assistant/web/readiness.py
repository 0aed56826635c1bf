"""Whether the app has finished starting: the embedding model loaded, the pool and the trace store open.

Loading a local embedding model takes 10-40 s on 2 cores (importing torch is most of it). The app does that
at start-up on a background thread (``WebState.warm_up``) instead of in the first chat request, so the first
answer costs what the tenth does. Until then ``GET /health`` answers 503 ``"starting"`` with what it is doing,
and a chat request waits here (on the event loop, without holding a worker thread) for at most
``web.startup_wait_seconds`` before a 503 that says to retry. Start-up ends when the warm-up ends, whether or
not every step worked: what failed is then reported by /health and the requests themselves, as before.
"""

from __future__ import annotations

import asyncio
import threading

from ..core.errors import Unavailable


class StillStarting(Unavailable):
    """A chat request waited ``web.startup_wait_seconds`` and the app had not finished starting."""

    def __init__(self, step: str, waited: float) -> None:
        super().__init__(
            f"the app is still starting ({step}) after {waited:g}s; your message was not sent: "
            "send it again in a moment"
        )


class Readiness:
    """Start-up state shared by the warm-up thread (which moves it on) and the requests (which wait for it)."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.step = "starting"  # what start-up is doing now, for /health and the 503

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def waiting(self) -> int:
        """Requests waiting for start-up to end (for tests and logs)."""
        with self._lock:
            return sum(1 for _, future in self._waiters if not future.done())

    def starting(self, step: str) -> None:
        """Say what start-up is doing now (``loading the embedding model all-MiniLM-L6-v2``)."""
        self.step = step

    def set_ready(self) -> None:
        """Start-up is over: wake every waiting request."""
        with self._lock:
            self._ready.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    async def wait(self, timeout: float) -> None:
        """Return once start-up is over; :class:`StillStarting` after ``timeout`` seconds."""
        if self._ready.is_set():
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._ready.is_set():
                return
            self._waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:  # not the built-in TimeoutError on Python 3.10
            raise StillStarting(self.step, timeout) from None
        finally:
            with self._lock:
                self._waiters = [w for w in self._waiters if w[1] is not future]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


__all__ = ["Readiness", "StillStarting"]
