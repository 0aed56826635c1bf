"""Checks every request passes before the application sees it (a plain ASGI middleware).

* **Body size**: a body over ``web.max_body_bytes`` is refused with 413 before anything parses it — from
  ``Content-Length`` when given, else while it is read (bodies are small JSON, so they are buffered).
* **JSON only** for state-changing API calls (POST/PUT/PATCH under ``/api/``): a browser can send a
  cross-site form post (urlencoded, multipart, text/plain) without asking, but not a JSON one, so this keeps
  other sites from starting chats or refreshes in a signed-in user's name. Answered with 415.
* **Headers** that cost nothing: no MIME sniffing, no referrer leaking session ids.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_ONLY_METHODS = frozenset({"POST", "PUT", "PATCH"})
COMMON_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        method = scope["method"]
        if method in JSON_ONLY_METHODS and scope["path"].startswith("/api/"):
            content_type = _header(scope, b"content-type").split(";", 1)[0].strip().lower()
            if content_type != "application/json":
                shown = content_type or "none"
                await _error(
                    scope,
                    send,
                    415,
                    f"send the request body as JSON (Content-Type: application/json), not {shown}",
                )
                return
        if method not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            await _error(scope, send, 413, _too_large(int(declared), limit))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > limit:
                await _error(scope, send, 413, _too_large(None, limit))
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)


def _too_large(size: int | None, limit: int) -> str:
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return f"the request body is {what}; the limit is {limit} bytes (web.max_body_bytes)"


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replayed


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {key.lower() for key, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in COMMON_HEADERS if k not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


async def _error(scope: Scope, send: Send, status: int, error: str) -> None:
    request_id = scope.get("state", {}).get("request_id")  # set by errors.RequestIds, which runs first
    body = json.dumps({"error": error, "request_id": request_id}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
