"""Every error response is JSON with a request id: the error hierarchy's root is mapped once, anything else is
a bug; and what went wrong is written for the people who read it, the detail for the log.

* :class:`RequestIds` (a plain ASGI middleware, the outermost) gives every request an id: the platform's
  ``X-Request-Id`` when it sends one that looks like an id (the Databricks Apps proxy does), else a new one.
  It is in ``request.state.request_id``, in the ``X-Request-ID`` header of every response and in every error
  body. It is also the last line: an exception nothing mapped is a bug, whatever its type (a ``KeyError`` is
  not a 404, a ``ValueError`` not a 422): logged with its traceback under the id, answered 500 with a sentence
  for people. (A response that had already started, a stream, cannot be replaced: the exception then goes on
  to the server, which closes the connection.)
* :func:`install_error_handlers`: a :class:`~context_assistant.core.errors.ContextAssistantError` answers its
  own ``http_status`` with its ``to_json()`` body plus ``request_id``; FastAPI's own errors (an unknown
  route, a body that does not validate) answer ``{"error": "...", "request_id": "..."}`` too.
* Written for people: a failed turn's detail (a model endpoint's address, a server's 503 text) is logged
  under the request id and the body says what happened and what to do (:func:`people_message`, by the
  turn's ``kind``); so does a database outage. A schema that is not ready keeps its own message, which
  names the job that fixes it.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..assistant.turn import TurnFailed
from ..core.errors import ContextAssistantError, Unavailable
from ..core.text import InvalidText
from ..storage.db import SchemaNotReady
from ..storage.memory import SessionNotFound
from ..storage.targets import DatabaseError

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
    "database": f"The app lost its database while answering. {_SAVED}: try again in a minute.",
    "internal": f"Something went wrong in the app while answering. {_SAVED}: try again; {ASK_ADMIN}.",
}
SERVER_ERROR = f"Something went wrong on the server. Try again; {ASK_ADMIN}."
DATABASE_DOWN = "The app cannot reach its database right now. Nothing was changed: try again in a minute."


def people_message(kind: str | None) -> str:
    """What a person is told about a failed turn of this ``kind`` (llm's error kinds, plus the assistant's
    ``interrupted`` and ``internal``)."""
    return PEOPLE_MESSAGES.get(kind or "internal", PEOPLE_MESSAGES["internal"])


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def turn_failed_body(failure: TurnFailed, rid: str | None) -> dict[str, Any]:
    """The JSON of a failed turn for the client, after logging its detail under ``rid``."""
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


def install_error_handlers(app: FastAPI) -> None:
    """Map the error hierarchy and FastAPI's own errors to JSON bodies (bugs: :class:`RequestIds`)."""

    async def known_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ContextAssistantError)
        rid = request_id(request)
        if isinstance(exc, TurnFailed):
            return JSONResponse(turn_failed_body(exc, rid), status_code=exc.http_status)
        body = {**exc.to_json(), "request_id": rid}
        if isinstance(exc, InvalidText):
            body["field"] = exc.field
        if isinstance(exc, SessionNotFound):  # what an API caller can do about it (the page starts a new one)
            body["hint"] = "GET /api/sessions lists your sessions" + (
                "; leave session_id out to start a new one" if request.url.path.startswith("/api/chat") else ""
            )
        if isinstance(exc, DatabaseError) and not isinstance(exc, SchemaNotReady):
            log.warning(
                "database unavailable [request %s] in %s %s: %s", rid, request.method, request.url.path, exc
            )
            body["error"] = DATABASE_DOWN
        elif isinstance(exc, Unavailable):
            log.warning("[request %s] %s %s: %s", rid, request.method, request.url.path, exc)
        return JSONResponse(body, status_code=exc.http_status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 204 or exc.status_code == 304:
            return Response(status_code=exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        body = {"error": detail, "request_id": request_id(request)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        fields = []
        for error in exc.errors():
            location = [str(part) for part in error.get("loc", ())]
            if error.get("type") == "json_invalid":
                reason = (error.get("ctx") or {}).get("error", "malformed")
                problems.append(f"the request body is not valid JSON ({reason} at character {location[-1]})")
                continue
            where = ".".join(part for part in location if part != "body") or "body"
            fields.append(where)
            if error.get("type") == "extra_forbidden":  # a misspelt field: say where the real names are
                problems.append(f"{where}: not a field of this request (the fields are listed at /docs)")
            else:
                problems.append(f"{where}: {error.get('msg')}")
        body = {"error": "; ".join(problems) or "invalid request", "request_id": request_id(request)}
        if len(fields) == 1 and len(problems) == 1:  # as for text refused by core.text: the one field at fault
            body["field"] = fields[0]
        return JSONResponse(body, status_code=422)

    app.add_exception_handler(ContextAssistantError, known_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class RequestIds:
    """The outermost middleware: an id per request (``scope["state"]["request_id"]``, echoed as
    ``X-Request-ID``), and a logged 500 with that id for an exception nothing mapped."""

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
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER.encode()
                ]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER.encode(), rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("unexpected error [request %s] in %s %s", rid, scope["method"], scope["path"])
            if started:
                raise
            body = json.dumps({"error": SERVER_ERROR, "request_id": rid}).encode()
            await sending(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
