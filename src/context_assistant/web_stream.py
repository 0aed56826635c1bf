"""Streaming a turn as Server-Sent Events, with the synchronous assistant running in worker threads.

The assistant's turn is a blocking generator (database pool, model client). Each ``next()`` runs in a worker
thread so the event loop keeps serving other requests. When the client goes away mid-answer, Starlette
cancels the response; the ``finally`` below then closes the turn's generator (in a thread, shielded from the
cancellation), which is how the assistant learns to mark the message as interrupted.

Events (``event: <name>`` then one ``data:`` line of JSON):

* ``start``   ``{session_id, user_message_id}`` — the message is stored;
* ``sources`` ``{sources: [{index, chunk_id, path, heading, page, score, text}]}``;
* ``delta``   ``{text}`` — the next piece of the answer;
* ``done``    ``{session_id, message_id, user_message_id, trace_id, model, usage, warnings, reply}``;
* ``error``   ``{error, kind, retryable, session_id, user_message_id}`` — the turn failed; the message is kept
  and can be answered again with ``retry_of: user_message_id``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio

from .assistant import TurnEvent, TurnFailed

log = logging.getLogger(__name__)

SSE_HEADERS = {
    # no-transform: proxies must not compress or buffer the stream; X-Accel-Buffering: nginx-style proxies
    # (the Databricks Apps proxy among them) pass each event on as it comes.
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
_END = object()


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One event in the text/event-stream format (JSON never contains a raw newline)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n".encode()


def event_frame(event: TurnEvent) -> bytes:
    if event.type == "done" and event.result is not None:
        data = event.result.to_json()
        data.pop("sources", None)  # already sent in the sources event
        return sse("done", data)
    return sse(event.type, event.data)


def _next(events: Iterator[TurnEvent]) -> Any:
    return next(events, _END)


async def turn_frames(first: TurnEvent, events: Iterator[TurnEvent]) -> AsyncIterator[bytes]:
    """The frames of a turn whose first event (``start``) has already been taken from ``events``."""
    session_id = first.data.get("session_id")
    user_message_id = first.data.get("user_message_id")
    try:
        yield event_frame(first)
        while True:
            try:
                event = await anyio.to_thread.run_sync(_next, events)
            except TurnFailed as exc:
                yield sse("error", exc.to_json())
                return
            except Exception as exc:
                log.exception("the streamed turn failed")
                yield sse(
                    "error",
                    {
                        "error": f"internal error: {exc}",
                        "kind": "internal",
                        "retryable": True,
                        "session_id": session_id,
                        "user_message_id": user_message_id,
                    },
                )
                return
            if event is _END:
                return
            yield event_frame(event)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_close, events)


def _close(events: Iterator[TurnEvent]) -> None:
    close = getattr(events, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # closing only records why there is no reply; never fail the response for it
            log.exception("closing an interrupted turn failed")
