"""A loopback HTTP server that speaks the Databricks REST shapes a test registers.

Databricks-only services (serving endpoints, Vector Search, the Lakebase credential API, SCIM ``Me``) cannot
run here, so tests drive the real client libraries (databricks-sdk, openai, httpx) against this server
instead: the requests are real HTTP, and the test asserts on exactly what the client sent.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    match: re.Match[str] | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Response:
    status: int = 200
    body: Any = None  # dict/list -> JSON; bytes/str -> as is; iterable of bytes -> streamed
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], "Response | dict[str, Any] | list[Any]"]


class FakeDatabricks:
    """Register routes with ``on(method, path_regex, handler_or_response)``; inspect ``requests`` afterwards."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler | Response | list[Response]]] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # small responses otherwise wait ~40 ms for delayed ACKs

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                request = Request(self.command, path, query, {k.lower(): v for k, v in self.headers.items()}, body)
                response = fake._dispatch(request)
                self._write(response)

            def _write(self, response: Response) -> None:
                payload = response.body
                headers = dict(response.headers)
                if isinstance(payload, (dict, list)) or payload is None:
                    data = json.dumps(payload if payload is not None else {}).encode()
                    headers.setdefault("Content-Type", "application/json")
                elif isinstance(payload, str):
                    data = payload.encode()
                elif isinstance(payload, bytes):
                    data = payload
                else:  # a stream: close-delimited so chunks reach the client as they are written
                    self.send_response(response.status)
                    headers.setdefault("Content-Type", "text/event-stream")
                    headers["Connection"] = "close"
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    try:
                        for chunk in payload:
                            self.wfile.write(chunk)
                            self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return
                self.send_response(response.status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def on(self, method: str, path: str, handler: Handler | Response | list[Response] | dict[str, Any]) -> None:
        """Route ``method`` + full-match ``path`` regex. A list of Responses is served in order, the last repeating."""
        if isinstance(handler, dict):
            handler = Response(body=handler)
        self.routes.append((method.upper(), re.compile(path), handler))

    def _dispatch(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(request)
            for method, pattern, handler in self.routes:
                match = pattern.fullmatch(request.path)
                if method == request.method and match:
                    request.match = match
                    if isinstance(handler, list):
                        return handler.pop(0) if len(handler) > 1 else handler[0]
                    if isinstance(handler, Response):
                        return handler
                    break
            else:
                return Response(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no route {request.path}"})
        result = handler(request)  # outside the lock: a handler may stream slowly
        return result if isinstance(result, Response) else Response(body=result)

    def calls(self, path_regex: str, method: str | None = None) -> list[Request]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests if pattern.fullmatch(r.path) and (method is None or r.method == method)]

    def workspace_client(self, token: str = "dapi-test-token") -> Any:
        """A real databricks-sdk WorkspaceClient pointed here, with short timeouts so nothing hangs offline."""
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.core import Config

        return WorkspaceClient(
            config=Config(
                host=self.url, token=token, auth_type="pat", retry_timeout_seconds=10, http_timeout_seconds=10
            )
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sse(events: Iterable[Any], *, done: bool = True) -> Iterator[bytes]:
    """Encode JSON events as Server-Sent Events (the OpenAI streaming wire format)."""
    for event in events:
        yield f"data: {json.dumps(event)}\n\n".encode()
    if done:
        yield b"data: [DONE]\n\n"
