"""Every error response is JSON: the hierarchy's root is mapped once, anything else is a bug.

* a :class:`~context_assistant.core.errors.ContextAssistantError` answers its own ``http_status`` with its
  ``to_json()`` body (``{"error": "..."}``; a failed turn adds ``kind``, ``retryable``, ``session_id``,
  ``user_message_id``);
* FastAPI's own errors (an unknown route, a body that does not validate) answer ``{"error": "..."}`` too;
* any other exception is a bug, whatever its type (a ``KeyError`` is not a 404, a ``ValueError`` not a 422):
  :class:`InternalErrors` logs it with its traceback under a request id and answers 500 with that id.
"""

from __future__ import annotations

import json
import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.errors import ContextAssistantError, Unavailable

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    """Map the error hierarchy and FastAPI's own errors to JSON bodies (bugs: :class:`InternalErrors`)."""

    async def known_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ContextAssistantError)
        if isinstance(exc, Unavailable):
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(exc.to_json(), status_code=exc.http_status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 204 or exc.status_code == 304:
            return Response(status_code=exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"error": detail}, status_code=exc.status_code, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for error in exc.errors():
            location = [str(part) for part in error.get("loc", ())]
            if error.get("type") == "json_invalid":
                reason = (error.get("ctx") or {}).get("error", "malformed")
                problems.append(f"the request body is not valid JSON ({reason} at character {location[-1]})")
                continue
            where = ".".join(part for part in location if part != "body") or "body"
            problems.append(f"{where}: {error.get('msg')}")
        return JSONResponse({"error": "; ".join(problems) or "invalid request"}, status_code=422)

    app.add_exception_handler(ContextAssistantError, known_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


class InternalErrors:
    """The last line (a plain ASGI middleware): an exception nothing mapped becomes a logged 500 with an id.

    The id goes into the log line (with the traceback), the JSON body and the ``X-Request-ID`` header, so a
    user's report finds the traceback. A response that had already started (a stream) cannot be replaced;
    the exception then goes on to the server, which closes the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            request_id = uuid.uuid4().hex[:16]
            log.exception("internal error (request id %s) in %s %s", request_id, scope["method"], scope["path"])
            if started:
                raise
            body = json.dumps(
                {
                    "error": f"internal error (request id {request_id}); the app log has the details",
                    "request_id": request_id,
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
