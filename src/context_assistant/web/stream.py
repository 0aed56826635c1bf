"""Streaming a turn as Server-Sent Events, with the synchronous assistant in a thread of its own.

The assistant's turn is a blocking generator (database pool, model client). After its first event (the
message is stored: taken by the endpoint, so problems before that are plain HTTP errors) the rest of the turn
runs in one dedicated thread that hands each event to the event loop: one thread, so the trace the turn opens
(MLflow keeps the active span in context variables) is entered, added to and closed in the same context.
When the client goes away mid-answer, Starlette cancels the response; the thread notices at the next event,
stops and closes the generator, which is how the assistant learns to mark the message as interrupted. While
nothing happens (a slow model) a comment line goes out every ``KEEPALIVE_SECONDS`` so proxies keep the
connection open.

Events (``event: <name>`` then one ``data:`` line of JSON):

* ``start``   ``{session_id, user_message_id}`` — the message is stored;
* ``sources`` ``{sources: [{index, chunk_id, path, heading, page, score, text}]}``;
* ``delta``   ``{text}`` — the next piece of the answer;
* ``done``    ``{session_id, message_id, user_message_id, trace_id, model, usage, warnings, reply}``;
* ``error``   ``{error, kind, retryable, session_id, user_message_id, request_id}`` — the turn failed; the
  message is kept and can be answered again with ``retry_of: user_message_id``. ``error`` is a sentence for
  people (errors.py); the detail is in the server log under ``request_id``.

That is the framing of ``/api/chat/stream`` (:class:`ChatFrames`), written by :func:`live_frames` for a turn
the app runs (live.py): each event gets an ``id:`` (re-attach with ``Last-Event-ID``), a hang-up does not stop
the turn, and a turn the user stopped ends with ``stopped``. ``/invocations`` streams the turn in the OpenAI
Responses event shapes with its own :class:`FrameRenderer` through :func:`turn_frames` (a hang-up there still
ends the turn, as an OpenAI client expects).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ..assistant.turn import TurnEvent, TurnEvents, TurnFailed
from .errors import people_message, turn_failed_body
from .live import LiveTurn

log = logging.getLogger(__name__)

SSE_HEADERS = {
    # no-transform: proxies must not compress or buffer the stream; X-Accel-Buffering: nginx-style proxies
    # (the Databricks Apps proxy among them) pass each event on as it comes.
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
KEEPALIVE_SECONDS = 15.0
KEEPALIVE = b": keep-alive\n\n"


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One event in the text/event-stream format (JSON never contains a raw newline)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n".encode()


def event_frame(event: TurnEvent) -> bytes:
    if event.type == "done" and event.result is not None:
        data = event.result.to_json()
        data.pop("sources", None)  # already sent in the sources event
        return sse("done", data)
    return sse(event.type, event.data)


class FrameRenderer(Protocol):
    """How a streamed turn is written: bytes per event, for a failed or crashed turn, and at the end
    (an empty ``bytes`` sends nothing)."""

    def event(self, event: TurnEvent) -> bytes: ...

    def failed(self, error: TurnFailed) -> bytes: ...

    def crashed(self, error: Exception, first: TurnEvent) -> bytes: ...

    def end(self) -> bytes: ...


class ChatFrames:
    """The ``/api/chat/stream`` framing described in the module docstring; errors name ``request_id``."""

    def __init__(self, request_id: str | None = None) -> None:
        self.request_id = request_id

    def event(self, event: TurnEvent) -> bytes:
        return event_frame(event)

    def failed(self, error: TurnFailed) -> bytes:
        return sse("error", turn_failed_body(error, self.request_id))

    def crashed(self, error: Exception, first: TurnEvent) -> bytes:
        return sse(
            "error",
            {
                "error": people_message("internal"),
                "kind": "internal",
                "retryable": True,
                "session_id": first.data.get("session_id"),
                "user_message_id": first.data.get("user_message_id"),
                "request_id": self.request_id,
            },
        )

    def end(self) -> bytes:
        return b""


def _pump(events: TurnEvents, put: Callable[[tuple[str, Any]], None], stop: threading.Event) -> None:
    """The rest of the turn, in this thread: each event to ``put``, until the end or until ``stop`` is set."""
    try:
        for event in events:
            put(("event", event))
            if stop.is_set():
                break
    except TurnFailed as exc:
        put(("failed", exc))
    except Exception as exc:  # logged with the request id by turn_frames
        put(("crashed", exc))
    finally:
        try:
            events.close()  # after a hang-up: the assistant marks the message interrupted
        except Exception:
            log.exception("closing an interrupted turn failed")
        put(("end", None))


async def turn_frames(
    first: TurnEvent,
    events: TurnEvents,
    keepalive: float = KEEPALIVE_SECONDS,
    render: FrameRenderer | None = None,
    request_id: str | None = None,
) -> AsyncIterator[bytes]:
    """The frames of a turn whose first event (``start``) has already been taken from ``events``, written by
    ``render`` (default: :class:`ChatFrames`); a crash is logged, with its traceback, under ``request_id``."""
    render = render or ChatFrames(request_id)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has shut down; nobody is listening any more
            stop.set()

    threading.Thread(target=_pump, args=(events, put, stop), name="turn-stream", daemon=True).start()
    try:
        frame = render.event(first)
        if frame:
            yield frame
        while True:
            try:
                kind, value = await asyncio.wait_for(queue.get(), timeout=keepalive)
            except asyncio.TimeoutError:
                yield KEEPALIVE
                continue
            if kind == "event":
                frame = render.event(value)
            elif kind == "failed":
                frame = render.failed(value)
            elif kind == "crashed":
                log.error("the streamed turn failed [request %s]", request_id, exc_info=value)
                frame = render.crashed(value, first)
            else:
                frame = render.end()
                if frame:
                    yield frame
                return
            if frame:
                yield frame
    finally:
        stop.set()


async def live_frames(
    turn: LiveTurn, after: int = 0, keepalive: float = KEEPALIVE_SECONDS, request_id: str | None = None
) -> AsyncIterator[bytes]:
    """The ``/api/chat/stream`` frames of a turn run by the app (live.py), each with its ``id:``, from the
    event after ``after``. Leaving (the client hung up) does not stop the turn; ``stopped`` ends a turn the
    user stopped: ``{session_id, user_message_id, message_id, reply, reason}`` (``message_id`` of the kept
    partial reply, or null when nothing had been written)."""
    render = ChatFrames(request_id)
    first: TurnEvent | None = None
    async for event_id, kind, value in turn.follow(after, keepalive):
        if kind == "keepalive":
            yield KEEPALIVE
            continue
        if kind == "event":
            if value.type == "start":
                first = value
            frame = render.event(value)
        elif kind == "failed":
            frame = render.failed(value)
        elif kind == "crashed":
            frame = render.crashed(value, first or TurnEvent("start", turn.summary()))
        else:
            frame = sse("stopped", value)
        yield f"id: {event_id}\n".encode() + frame
