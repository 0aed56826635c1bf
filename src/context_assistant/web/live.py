"""Answers that outlive the browser: each streamed turn runs in a thread of its own, owned by the app.

The HTTP stream only watches. A :class:`LiveTurn` records every event of its turn, numbered from 1 (the SSE
``id:``), so a reload or a second tab re-attaches with ``Last-Event-ID`` / ``?after=N`` and receives what it
missed, then the rest as it comes; a finished answer is stored by the turn itself whether or not anyone is
watching. ``stop`` ends the turn when its next event comes (that event is dropped): the generator is closed (the turn marks the
question interrupted), then the partial answer is stored as a reply with ``status: "stopped"`` and the
question is marked ``stopped`` (or, when nothing had been written yet, failed with kind ``stopped`` so
Retry answers it). On shutdown every turn still running is stopped as ``interrupted`` (no partial reply; the
question is failed and retryable), and a turn whose thread does not end in time has its question marked
directly, so no turn is left without a state.

One process holds the turns (a Databricks App runs one); a turn started in another process is not
re-attachable here, and after a restart the start-up sweep (limbo.py) marks it interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..assistant.turn import TurnEvent, TurnEvents, TurnFailed
from ..core.clock import REAL_CLOCK, Clock
from ..storage.limbo import mark_interrupted
from ..storage.memory import ConversationStore

log = logging.getLogger(__name__)

INTERRUPTED = "the reply was interrupted before it completed"
GRACE_SECONDS = 600.0  # a question with no state this old is not being answered anywhere any more
STOPPED_EMPTY = "you stopped the answer before it began"

Item = tuple[
    str, Any
]  # ("event", TurnEvent) | ("failed", TurnFailed) | ("crashed", Exception) | ("stopped", dict)


@dataclass(eq=False)
class LiveTurn:
    """One turn in flight (or just finished): its events so far, and who may watch or stop it."""

    user: str
    session_id: str
    user_message_id: int
    items: list[Item] = field(default_factory=list)
    finished: bool = False
    finished_at: float | None = None
    stop_reason: str | None = None  # "stopped" (the user) or "interrupted" (shutdown)
    text: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)

    @property
    def last_event_id(self) -> int:
        return len(self.items)

    def publish(self, kind: str, value: Any) -> None:
        with self._lock:
            self.items.append((kind, value))
            self._wake()

    def finish(self, now: float) -> None:
        with self._lock:
            self.finished = True
            self.finished_at = now
            self._wake()

    def _wake(self) -> None:
        for loop, waiter in self._waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed: its watcher is gone
                loop.call_soon_threadsafe(waiter.set)
        self._waiters.clear()

    async def follow(self, after: int = 0, keepalive: float = 15.0) -> AsyncIterator[tuple[int, str, Any]]:
        """Yield ``(id, kind, value)`` for every item after ``after``, waiting for new ones until the turn
        ends; ``(0, "keepalive", None)`` when nothing happened for ``keepalive`` seconds."""
        position = max(0, after)
        loop = asyncio.get_running_loop()
        while True:
            waiter = asyncio.Event()
            with self._lock:
                fresh = self.items[position:]
                done = self.finished
                if not fresh and not done:
                    self._waiters.append((loop, waiter))
            for item in fresh:
                position += 1
                yield position, item[0], item[1]
            if fresh:
                continue
            if done:
                return
            try:
                await asyncio.wait_for(waiter.wait(), timeout=keepalive)
            except asyncio.TimeoutError:
                yield 0, "keepalive", None

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "user_message_id": self.user_message_id,
            "last_event_id": self.last_event_id,
            "finished": self.finished,
        }


class TurnHub:
    """The turns this app is running, by the id of the question they answer."""

    def __init__(
        self, store: Callable[[], ConversationStore], *, clock: Clock = REAL_CLOCK, linger_seconds: float = 300.0
    ) -> None:
        self._store = store  # built on first use, like every part of the app
        self.clock = clock
        self.linger_seconds = linger_seconds  # a finished turn stays re-attachable this long
        self.started_at = clock.now()
        self._turns: dict[int, LiveTurn] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._sweeping = threading.Event()

    # -- starting and finding turns ------------------------------------------------------------------

    def start(self, user: str, first: TurnEvent, events: TurnEvents) -> LiveTurn:
        """Run the rest of a turn whose ``start`` event (the question is stored) was taken from ``events``."""
        turn = LiveTurn(user, str(first.data["session_id"]), int(first.data["user_message_id"]))
        turn.publish("event", first)
        with self._lock:
            self._forget_old()
            if self._closing:
                events.close()
                raise RuntimeError("the app is shutting down")
            self._turns[turn.user_message_id] = turn
        turn.thread = threading.Thread(
            target=self._run, args=(turn, events), name=f"turn-{turn.user_message_id}", daemon=True
        )
        turn.thread.start()
        return turn

    def get(self, user: str, user_message_id: int) -> LiveTurn | None:
        """The user's turn answering ``user_message_id`` when it runs here (or finished moments ago)."""
        with self._lock:
            self._forget_old()
            turn = self._turns.get(user_message_id)
        return turn if turn is not None and turn.user == user else None

    def running(self, user: str | None = None) -> list[LiveTurn]:
        with self._lock:
            turns = [t for t in self._turns.values() if not t.finished]
        return [t for t in turns if user is None or t.user == user]

    def is_running(self, user_message_id: int) -> bool:
        with self._lock:
            turn = self._turns.get(user_message_id)
        return turn is not None and not turn.finished

    def stop(self, user: str, user_message_id: int) -> LiveTurn | None:
        """Ask the user's turn to stop at its next event; None when no such turn runs here."""
        turn = self.get(user, user_message_id)
        if turn is not None and not turn.finished and turn.stop_reason is None:
            turn.stop_reason = "stopped"
        return turn

    def _forget_old(self) -> None:
        now = self.clock.monotonic()
        for key, turn in list(self._turns.items()):
            if turn.finished and turn.finished_at is not None and now - turn.finished_at > self.linger_seconds:
                del self._turns[key]

    # -- running a turn ------------------------------------------------------------------------------

    def _run(self, turn: LiveTurn, events: TurnEvents) -> None:
        stopped = False
        try:
            for event in events:
                if turn.stop_reason is not None and event.type != "done":
                    stopped = True  # asked while this event was on its way: the answer ends before it
                    break
                if event.type == "delta":
                    turn.text.append(str(event.data.get("text", "")))
                elif event.type == "sources":
                    turn.sources = list(event.data.get("sources", []))
                turn.publish("event", event)
                if event.type == "done":
                    break
        except TurnFailed as exc:
            turn.publish("failed", exc)
        except Exception as exc:
            log.error("the turn answering message %s failed", turn.user_message_id, exc_info=exc)
            turn.publish("crashed", exc)
        finally:
            try:
                events.close()  # when stopped early: the assistant marks the question interrupted
            except Exception:
                log.exception("closing the turn answering message %s failed", turn.user_message_id)
            if stopped:
                turn.publish("stopped", self._keep_partial(turn))
            turn.finish(self.clock.monotonic())

    def _keep_partial(self, turn: LiveTurn) -> dict[str, Any]:
        """After a stop: store what was written as a stopped reply (or mark the question retryable)."""
        text = "".join(turn.text)
        reason = turn.stop_reason or "stopped"
        data: dict[str, Any] = {
            "session_id": turn.session_id,
            "user_message_id": turn.user_message_id,
            "message_id": None,
            "reply": text,
            "reason": reason,
        }
        try:
            if reason == "stopped" and text.strip():
                sources = [{k: v for k, v in s.items() if k != "text"} for s in turn.sources]
                reply = self._store().append(
                    turn.user,
                    turn.session_id,
                    "assistant",
                    text,
                    {"status": "stopped", "in_reply_to": turn.user_message_id, "sources": sources},
                )
                self._store().update_metadata(
                    turn.user, turn.user_message_id, {"status": "stopped", "error": None, "error_kind": None}
                )
                data["message_id"] = reply.id
            elif reason == "stopped":
                self._store().update_metadata(
                    turn.user,
                    turn.user_message_id,
                    {"status": "failed", "error": STOPPED_EMPTY, "error_kind": "stopped"},
                )
        except Exception as exc:  # the question is stored and marked interrupted by the turn already
            log.error("could not store the stopped answer to message %s: %s", turn.user_message_id, exc)
        return data

    # -- questions left in limbo ---------------------------------------------------------------------

    def sweep(self, grace_seconds: float = GRACE_SECONDS) -> list[int]:
        """Mark questions left without reply or state for ``grace_seconds`` interrupted (retryable)."""
        ids = mark_interrupted(
            self._store().db,
            self.clock.now() - timedelta(seconds=grace_seconds),
            running=[t.user_message_id for t in self.running()],
        )
        if ids:
            log.warning("marked %d unanswered question(s) interrupted (ids %s)", len(ids), ids)
        return ids

    def start_sweeping(self, grace_seconds: float = GRACE_SECONDS) -> None:
        """Sweep now (in the background) and then every half grace period until shutdown."""

        def loop() -> None:
            while not self._sweeping.is_set():
                try:
                    self.sweep(grace_seconds)
                except Exception as exc:  # the database may be down: try again next time
                    log.warning("could not look for interrupted questions: %s", exc)
                self._sweeping.wait(grace_seconds / 2)

        threading.Thread(target=loop, name="turn-sweeper", daemon=True).start()

    def adopt(self, user: str, message_id: int) -> None:
        """Before ``retry_of``: a question stored before this app started, with no state and no turn here,
        is not being answered (the app was killed mid-turn): mark it interrupted so it can be retried."""
        if not self.is_running(message_id):
            mark_interrupted(self._store().db, self.started_at, user=user, message_id=message_id)

    # -- shutdown ------------------------------------------------------------------------------------

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every running turn as interrupted; mark the questions of turns that do not end in time."""
        self._sweeping.set()
        with self._lock:
            self._closing = True
            turns = [t for t in self._turns.values() if not t.finished]
        for turn in turns:
            turn.stop_reason = turn.stop_reason or "interrupted"
        deadline = self.clock.monotonic() + timeout
        for turn in turns:
            if turn.thread is not None:
                turn.thread.join(max(0.0, deadline - self.clock.monotonic()))
            if not turn.finished:
                try:
                    self._store().update_metadata(
                        turn.user,
                        turn.user_message_id,
                        {"status": "failed", "error": INTERRUPTED, "error_kind": "interrupted"},
                    )
                    log.warning("marked message %s interrupted at shutdown", turn.user_message_id)
                except Exception as exc:
                    log.error("could not mark message %s interrupted at shutdown: %s", turn.user_message_id, exc)
