"""Errors as people read them, with a request id that ties what they saw to the server log.

Whatever goes wrong inside a turn (a model endpoint's address, the text of a server's 503, an exception) is
written for developers. The web app logs that detail with the request's id and sends people a sentence that
says what happened and what to do, plus the id to quote when they ask for help.

* :class:`RequestIds` (a plain ASGI middleware) gives every request an id: the platform's ``X-Request-Id``
  when it sends one that looks like an id (the Databricks Apps proxy does), else a new one. It is in
  ``request.state.request_id`` and in the ``X-Request-ID`` response header.
* :func:`people_message` is the sentence for a failed turn's ``kind`` (see llm.ERROR_KINDS, plus the
  assistant's ``interrupted`` and ``internal``).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{8,80}")

ASK_ADMIN = "if it keeps happening, tell the app's administrator"
_SAVED = "Your question is saved"
PEOPLE_MESSAGES = {
    "unavailable": f"The language model is not answering right now. {_SAVED}: try again in a minute.",
    "rate_limited": f"The language model is busy with too many requests. {_SAVED}: try again in a minute.",
    "timeout": f"The language model took too long to answer. {_SAVED}: try again, or ask a shorter question.",
    "context_too_long": "This conversation has grown too long for the language model to read. "
    "Start a new conversation and ask your question there.",
    "bad_endpoint": "The app's language model is not set up correctly, so it cannot answer. "
    "Tell the app's administrator; your question is saved.",
    "permission": "The app is not allowed to use its language model, so it cannot answer. "
    "Tell the app's administrator; your question is saved.",
    "bad_request": f"The language model refused this request. Try rephrasing your question; {ASK_ADMIN}.",
    "bad_response": f"The language model sent an answer the app could not read. Try again; {ASK_ADMIN}.",
    "interrupted": f"The answer stopped before it was complete (the page was closed or the connection dropped). "
    f"{_SAVED}: try again.",
    "internal": f"Something went wrong in the app while answering. {_SAVED}: try again; {ASK_ADMIN}.",
}
SERVER_ERROR = f"Something went wrong on the server. Try again; {ASK_ADMIN}."
DATABASE_DOWN = "The app cannot reach its database right now. Nothing was changed: try again in a minute."


def people_message(kind: str | None) -> str:
    """What a person is told about a failed turn of this ``kind``."""
    return PEOPLE_MESSAGES.get(kind or "internal", PEOPLE_MESSAGES["internal"])


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def turn_failed_body(failure: Any, rid: str | None) -> dict[str, Any]:
    """The JSON of a failed turn (``TurnFailed``) for the client, after logging its detail under ``rid``."""
    data = failure.to_json()
    log.warning(
        "turn failed [request %s, session %s, message %s, %s]: %s",
        rid,
        data.get("session_id"),
        data.get("user_message_id"),
        data.get("kind"),
        data.get("error"),
    )
    return {**data, "error": people_message(data.get("kind")), "request_id": rid}


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class RequestIds:
    """Give every HTTP request an id (``scope["state"]["request_id"]``) and echo it as ``X-Request-ID``."""

    def __init__(self, app: ASGIApp, *, new_id: Callable[[], str] = new_request_id) -> None:
        self.app = app
        self.new_id = new_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k.lower() == REQUEST_ID_HEADER.encode()), ""
        )
        rid = given if _SAFE_ID.fullmatch(given) else self.new_id()
        scope.setdefault("state", {})["request_id"] = rid

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        await self.app(scope, receive, sending)
