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
  people (web_errors.py); the detail is in the server log under ``request_id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .assistant import TurnEvent, TurnFailed
from .web_errors import people_message, turn_failed_body

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


def _pump(events: Iterator[TurnEvent], put: Callable[[tuple[str, Any]], None], stop: threading.Event) -> None:
    """The rest of the turn, in this thread: each event to ``put``, until the end or until ``stop`` is set."""
    try:
        for event in events:
            put(("event", event))
            if stop.is_set():
                break
    except TurnFailed as exc:
        put(("failed", exc))
    except Exception as exc:
        log.exception("the streamed turn failed")
        put(("crashed", exc))
    finally:
        close = getattr(events, "close", None)  # after a hang-up: the assistant marks the message interrupted
        try:
            if close is not None:
                close()
        except Exception:
            log.exception("closing an interrupted turn failed")
        put(("end", None))


async def turn_frames(
    first: TurnEvent,
    events: Iterator[TurnEvent],
    keepalive: float = KEEPALIVE_SECONDS,
    request_id: str | None = None,
) -> AsyncIterator[bytes]:
    """The frames of a turn whose first event (``start``) has already been taken from ``events``.
    ``request_id`` goes into an ``error`` event and the log line with its detail."""
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
        yield event_frame(first)
        while True:
            try:
                kind, value = await asyncio.wait_for(queue.get(), timeout=keepalive)
            except asyncio.TimeoutError:
                yield KEEPALIVE
                continue
            if kind == "event":
                yield event_frame(value)
            elif kind == "failed":
                yield sse("error", turn_failed_body(value, request_id))
            elif kind == "crashed":
                log.error("the streamed turn failed [request %s]: %s", request_id, value)
                yield sse(
                    "error",
                    {
                        "error": people_message("internal"),
                        "kind": "internal",
                        "retryable": True,
                        "session_id": first.data.get("session_id"),
                        "user_message_id": first.data.get("user_message_id"),
                        "request_id": request_id,
                    },
                )
            else:
                return
    finally:
        stop.set()
