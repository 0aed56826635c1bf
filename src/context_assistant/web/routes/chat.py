"""Turns: ``POST /api/chat`` (the whole answer), ``POST /api/chat/stream`` (Server-Sent Events) and
``POST /api/feedback`` (thumbs up/down on a reply)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ...core.errors import InvalidInput
from ...core.tracing import FeedbackError
from ..deps import AssistantDep, ChatBody, CurrentUser, ServicesDep, StoreDep, TracerDep
from ..errors import request_id
from ..models import ChatReply, FeedbackOut, FeedbackRequest
from ..stream import SSE_HEADERS, turn_frames
from .common import errors

router = APIRouter(tags=["chat"])


@router.post(
    "/api/chat",
    response_model=ChatReply,
    responses=errors(401, 404, 413, 415, 422, 502, 503),
    summary="Send a message and get the whole answer",
)
def chat(user: CurrentUser, body: ChatBody, assistant: AssistantDep) -> Any:
    """One turn. A failed model call answers 502 (or 422 when the conversation no longer fits the model)
    with the stored message's id: send it back as ``retry_of`` to try again."""
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
)
async def chat_stream(user: CurrentUser, body: ChatBody, assistant: AssistantDep, request: Request) -> Any:
    """The turn as it happens. Problems found before the message is stored (unknown session, bad input)
    are plain HTTP errors; a model failure after it is an ``error`` event with ``retryable`` and
    ``user_message_id`` (retry with ``retry_of``)."""
    events = assistant.stream_turn(user, body.message, body.session_id, retry_of=body.retry_of)
    first = await run_in_threadpool(next, events)  # stores the message: the start event
    frames = turn_frames(first, events, request_id=request_id(request))
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)


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
