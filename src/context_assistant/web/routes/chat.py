"""Turns: ``POST /api/chat`` (the whole answer), ``POST /api/chat/stream`` (Server-Sent Events), the turns
in flight (``GET /api/chat/turns``, re-attach with ``GET /api/chat/turns/{id}/events``, ``POST
/api/chat/turns/{id}/stop``) and ``POST /api/feedback`` (thumbs up/down on a reply).

A streamed turn runs in the app (live.py), not in the request: a client that hangs up, reloads or opens a
second tab only stops watching; the answer is still written and stored."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...core.errors import InvalidInput, NotFound, Unavailable
from ...core.tracing import FeedbackError
from ..deps import (
    AssistantDep,
    ChatBody,
    CurrentUser,
    ReadyForTurns,
    ServicesDep,
    StoreDep,
    TracerDep,
    TurnHubDep,
)
from ..errors import request_id
from ..models import ChatReply, FeedbackOut, FeedbackRequest, LiveTurnList, LiveTurnOut
from ..stream import SSE_HEADERS, live_frames
from .common import errors

router = APIRouter(tags=["chat"])


@router.post(
    "/api/chat",
    response_model=ChatReply,
    responses=errors(401, 404, 413, 415, 422, 502, 503),
    summary="Send a message and get the whole answer",
    dependencies=[ReadyForTurns],  # during start-up: wait for the model (readiness.py)
)
def chat(user: CurrentUser, body: ChatBody, assistant: AssistantDep, turns: TurnHubDep) -> Any:
    """One turn. A failed model call answers 502 (or 422 when the conversation no longer fits the model)
    with the stored message's id: send it back as ``retry_of`` to try again (also a question the app was
    stopped or killed while answering)."""
    if body.retry_of is not None:
        turns.adopt(user, body.retry_of)
    return assistant.turn(user, body.message, body.session_id, retry_of=body.retry_of).to_json()


@router.post(
    "/api/chat/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: start, sources, delta (repeated), then done or error. "
            "Each event's data is one JSON object (see stream.py / the README).",
        },
        **errors(401, 404, 413, 415, 422, 503),
    },
    summary="Send a message and stream the answer (Server-Sent Events)",
    dependencies=[ReadyForTurns],
)
async def chat_stream(
    user: CurrentUser, body: ChatBody, assistant: AssistantDep, turns: TurnHubDep, request: Request
) -> Any:
    """The turn as it happens. Problems found before the message is stored (unknown session, bad input)
    are plain HTTP errors; a model failure after it is an ``error`` event with ``retryable`` and
    ``user_message_id`` (retry with ``retry_of``). Each event has an ``id:``; the turn goes on when the
    client hangs up: re-attach with ``GET /api/chat/turns/{user_message_id}/events``."""
    if body.retry_of is not None:
        await run_in_threadpool(turns.adopt, user, body.retry_of)
    events = assistant.stream_turn(user, body.message, body.session_id, retry_of=body.retry_of)
    first = await run_in_threadpool(next, events)  # stores the message: the start event
    try:
        turn = turns.start(user, first, events)
    except RuntimeError as exc:
        raise Unavailable("the app is restarting; your message is saved: send it again in a moment") from exc
    frames = live_frames(turn, request_id=request_id(request))
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)


class TurnNotRunning(NotFound):
    """No turn answering that message runs in this app (it finished long ago, or never ran here)."""

    def __init__(self, user_message_id: int) -> None:
        super().__init__(f"no answer to message {user_message_id} is being written; reload the conversation")


@router.get("/api/chat/turns", response_model=LiveTurnList, responses=errors(401))
def live_turns(user: CurrentUser, turns: TurnHubDep) -> Any:
    """Your answers being written right now (re-attach to one with its ``events``)."""
    return {"turns": [t.summary() for t in turns.running(user)]}


@router.get(
    "/api/chat/turns/{user_message_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The events after `after`, then the rest."},
        **errors(401, 404),
    },
    summary="Re-attach to an answer being written (Server-Sent Events, resumable)",
)
async def turn_events(
    user_message_id: int,
    user: CurrentUser,
    turns: TurnHubDep,
    request: Request,
    after: int | None = None,
    last_event_id: str | None = Header(default=None, alias="Last-Event-ID"),
) -> Any:
    """The events of the turn answering ``user_message_id`` after event ``after`` (or the ``Last-Event-ID``
    header; from the start when neither is given), then the rest as they come. 404 when no such turn runs
    here: the conversation's messages then say how it ended."""
    turn = turns.get(user, user_message_id)
    if turn is None:
        raise TurnNotRunning(user_message_id)
    if after is None:
        after = int(last_event_id) if last_event_id and last_event_id.strip().isdigit() else 0
    frames = live_frames(turn, after, request_id=request_id(request))
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/api/chat/turns/{user_message_id}/stop", response_model=LiveTurnOut, responses=errors(401, 404))
def stop_turn(user_message_id: int, user: CurrentUser, turns: TurnHubDep) -> Any:
    """Stop writing the answer to ``user_message_id``. It stops at the model's next piece of text; what was
    written before it is kept as a reply marked stopped (watchers get a ``stopped`` event). Stopping a finished
    turn changes nothing."""
    turn = turns.stop(user, user_message_id)
    if turn is None:
        raise TurnNotRunning(user_message_id)
    return turn.summary()


@router.post("/api/feedback", response_model=FeedbackOut, responses=errors(401, 404, 413, 415, 422, 503))
def feedback(
    user: CurrentUser, body: FeedbackRequest, store: StoreDep, tracer: TracerDep, services: ServicesDep
) -> Any:
    """Thumbs up or down on one of your replies. Stored with the reply (a second call replaces it) and,
    when the turn was traced, recorded on its MLflow trace as a ``user_feedback`` assessment."""
    message = store.get_message(user, body.message_id)
    if message.role != "assistant":
        raise InvalidInput(f"feedback is given on a reply; message {message.id} is a {message.role} message")
    comment = body.comment.strip()
    trace_id = message.metadata.get("trace_id")
    assessment_id, note = None, None
    if trace_id:
        try:
            assessment_id = tracer.feedback(trace_id, user, body.value == "up", comment)
        except FeedbackError as exc:
            note = str(exc)
        if assessment_id is None and note is None:
            note = "tracing is off or the trace store is unavailable (see the app log)"
    else:
        note = "this turn was not traced"
    record = {
        "value": body.value,
        "comment": comment,
        "at": services.clock.now().isoformat(),
        "assessment_id": assessment_id,
    }
    store.update_metadata(user, message.id, {"feedback": record})
    return {
        "message_id": message.id,
        "value": body.value,
        "comment": comment,
        "at": record["at"],
        "traced": assessment_id is not None,
        "note": note,
    }
