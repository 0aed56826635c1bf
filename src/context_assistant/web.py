"""The web app: the chat page and its JSON API (FastAPI), served by uvicorn.

``python app.py`` (the Databricks App command) and ``context-assistant serve`` both end in :func:`serve`.
Everything the app does goes through :class:`~context_assistant.services.Services`, like the CLI, so the web
turn is the CLI turn: same memory, retrieval, model and tracing.

Synchronous work (the assistant turn, the store, the tracer) runs in FastAPI's worker threads: endpoints
doing it are plain ``def``; the streaming endpoint hands each step of the turn to a thread (web_stream.py).
Who is asking is decided in web_identity.py; body limits and JSON-only writes in web_guard.py. Every error
response is ``{"error": "...", "request_id": "..."}`` (failed turns add kind, retryable, session_id and
user_message_id); ``error`` is a sentence for people, the details are logged under the request id
(web_errors.py).

Endpoints (the OpenAPI page at /docs documents them; the JSON schema is at /openapi.json):

* ``POST /api/chat`` — one turn, answered when complete; ``POST /api/chat/stream`` — the same as SSE;
* ``GET/POST /api/sessions``, ``GET/PATCH/DELETE /api/sessions/{id}``, ``GET /api/sessions/{id}/messages``;
* ``POST /api/feedback`` — thumbs up/down (+ comment) on a reply: message metadata and MLflow assessment;
* ``GET /api/sources/{chunk_id}`` — a cited passage's text; ``GET /api/examples`` — questions for a new user;
* ``POST /api/rag/refresh`` (start; 409 while one runs), ``GET /api/rag/refresh`` (status);
* ``GET /api/me``; ``GET /health`` (200 when the database answers, else 503).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from . import __version__
from .assistant import Assistant, TurnFailed
from .cli import port_number
from .config import ConfigError, load_config
from .db import Database, DatabaseError
from .memory import Message, Session, SessionNotFound
from .services import Services
from .tracing import FeedbackError
from .web_docs import install_docs
from .web_errors import DATABASE_DOWN, SERVER_ERROR, RequestIds, people_message, request_id, turn_failed_body
from .web_guard import RequestGuard
from .web_identity import IdentityError, IdentityResolver
from .web_models import (
    ChatReply,
    ChatRequest,
    ErrorBody,
    Examples,
    FeedbackOut,
    FeedbackRequest,
    Health,
    Me,
    NewSession,
    RefreshRequest,
    RefreshStatusOut,
    RenameSession,
    SessionList,
    SessionMessages,
    SessionOut,
    SourceText,
)
from .web_refresh import RefreshAlreadyRunning, RefreshCall, RefreshRunner
from .web_sources import PassageUnavailable, example_questions, passage
from .web_stream import SSE_HEADERS, turn_frames

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page runs only its own script and style and talks only to this server: even text that slipped into
# the page as markup could not run script or load anything from elsewhere.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


class WebState:
    """What the endpoints share: the services, the identity rule, the refresh runner."""

    def __init__(self, services: Services, refresh: RefreshCall | None = None) -> None:
        self.services = services
        self.config = services.config
        self.identity = IdentityResolver(services.config, services.env)
        self.refresh = RefreshRunner(refresh or self._refresh_documents, clock=services.clock)
        # Services builds parts on first use (cached properties); build each once, not once per racing thread.
        self._build_lock = threading.Lock()

    def component(self, name: str) -> Any:
        cached = self.services.__dict__.get(name)
        if cached is not None:
            return cached
        with self._build_lock:
            return getattr(self.services, name)

    @property
    def assistant(self) -> Assistant:
        return self.component("assistant")

    def database(self, timeout: float) -> Database:
        """The pool, waiting at most ``timeout`` for another thread that is still opening it."""
        cached = self.services.__dict__.get("db")
        if cached is not None:
            return cached
        if not self._build_lock.acquire(timeout=timeout):
            raise DatabaseError("still connecting to the database")
        try:
            return self.services.db
        finally:
            self._build_lock.release()

    def _refresh_documents(self, full: bool, progress: Callable[[str], None]) -> Any:
        """What the refresh button does: ingest changed documents and sync the index (the ingestion job
        on Databricks Apps, where ``rag.refresh_job_id`` names it); see refresh.py."""
        from .refresh import refresh_documents

        if self.config.rag.enabled:
            self.component("chunk_index")
        if self.config.memory.recall:
            self.component("recall")
        return refresh_documents(self.services, full=full, progress=progress)

    def warm_up(self) -> None:
        """Connect, migrate and load the parts of a turn before the first request needs them."""
        try:
            self.component("db")
            self.component("assistant")
            if self.config.rag.enabled or self.config.memory.recall:
                self.component("embedder").embed(["warm-up"])
        except Exception as exc:  # the app still starts; /health and the requests report the problem
            log.warning("warm-up incomplete: %s", exc)


def current_user(request: Request) -> str:
    """The user a request acts for (see web_identity.py); 401 when there is none."""
    return request.app.state.web.identity.resolve(request.headers).user


CurrentUser = Annotated[str, Depends(current_user)]


def create_app(services: Services, *, refresh: RefreshCall | None = None, warm_up: bool = True) -> FastAPI:
    """The ASGI app over ``services`` (which the caller owns and closes).

    ``refresh(full, progress)`` is what the refresh button runs (default: refresh.refresh_documents).
    """
    state = WebState(services, refresh)
    config = services.config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            threading.Thread(target=state.warm_up, name="warm-up", daemon=True).start()
        yield

    app = FastAPI(
        title="context-assistant",
        version=__version__,
        description="Chat with an assistant that remembers your conversations and answers from your team's "
        "documents. Every /api endpoint acts for the signed-in user (see GET /api/me); sessions and messages "
        'of other users answer 404. Errors are JSON: {"error": "..."}.',
        lifespan=lifespan,
        docs_url=None,  # served from the app's own files: web_docs.py
        redoc_url=None,
    )
    app.state.web = state
    app.add_middleware(RequestGuard, max_body_bytes=config.web.max_body_bytes)
    app.add_middleware(RequestIds)  # outermost: every response carries X-Request-ID
    _install_error_handlers(app)
    install_docs(app)

    def check_message(body: ChatRequest) -> None:
        if body.retry_of is not None:
            return
        limit = config.web.max_message_chars
        if not body.message.strip():
            raise HTTPException(422, "the message is empty")
        if len(body.message) > limit:
            raise HTTPException(
                422, f"the message is {len(body.message)} characters; the limit is {limit} (web.max_message_chars)"
            )

    # -- chat ---------------------------------------------------------------------------------------------

    @app.post(
        "/api/chat",
        response_model=ChatReply,
        responses=_errors(401, 404, 413, 415, 422, 502, 503),
        summary="Send a message and get the whole answer",
        tags=["chat"],
    )
    def chat(body: ChatRequest, user: CurrentUser, request: Request) -> Any:
        """One turn. A failed model call answers 502 (or 422 when the conversation no longer fits the model)
        with the stored message's id: send it back as ``retry_of`` to try again."""
        check_message(body)
        try:
            result = state.assistant.turn(user, body.message, body.session_id, retry_of=body.retry_of)
        except TurnFailed as exc:
            return JSONResponse(turn_failed_body(exc, request_id(request)), status_code=_turn_failed_status(exc))
        except SessionNotFound:
            raise
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return result.to_json()

    @app.post(
        "/api/chat/stream",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "Server-Sent Events: start, sources, delta (repeated), then done or error. "
                "Each event's data is one JSON object (see web_stream.py / the README).",
            },
            **_errors(401, 404, 413, 415, 422, 503),
        },
        summary="Send a message and stream the answer (Server-Sent Events)",
        tags=["chat"],
    )
    async def chat_stream(body: ChatRequest, user: CurrentUser, request: Request) -> Any:
        """The turn as it happens. Problems found before the message is stored (unknown session, bad input)
        are plain HTTP errors; a model failure after it is an ``error`` event with ``retryable`` and
        ``user_message_id`` (retry with ``retry_of``)."""
        check_message(body)
        assistant = await run_in_threadpool(lambda: state.assistant)
        events = assistant.stream_turn(user, body.message, body.session_id, retry_of=body.retry_of)
        try:
            first = await run_in_threadpool(next, events)  # stores the message: the start event
        except SessionNotFound:
            raise
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        frames = turn_frames(first, events, request_id=request_id(request))
        return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)

    # -- sessions -----------------------------------------------------------------------------------------

    @app.get("/api/sessions", response_model=SessionList, responses=_errors(401, 503), tags=["sessions"])
    def list_sessions(user: CurrentUser, limit: int = 100, offset: int = 0) -> Any:
        """Your sessions, most recently active first."""
        limit = max(1, min(limit, 500))
        sessions = state.component("store").list_sessions(user, limit=limit, offset=max(0, offset))
        return {"user": user, "sessions": [_session_out(s) for s in sessions]}

    @app.post(
        "/api/sessions",
        response_model=SessionOut,
        status_code=201,
        responses=_errors(401, 413, 415, 422, 503),
        tags=["sessions"],
    )
    def create_session(body: NewSession, user: CurrentUser) -> Any:
        """An empty session (the chat endpoints also create one when no session_id is given)."""
        return _session_out(state.component("store").create_session(user, title=body.title.strip()))

    @app.get(
        "/api/sessions/{session_id}",
        response_model=SessionOut,
        responses=_errors(401, 404, 503),
        tags=["sessions"],
    )
    def get_session(session_id: str, user: CurrentUser) -> Any:
        return _session_out(state.component("store").get_session(user, session_id))

    @app.patch(
        "/api/sessions/{session_id}",
        response_model=SessionOut,
        responses=_errors(401, 404, 413, 415, 422, 503),
        tags=["sessions"],
    )
    def rename_session(session_id: str, body: RenameSession, user: CurrentUser) -> Any:
        title = body.title.strip()
        if not title:
            raise HTTPException(422, "the title is blank")
        return _session_out(state.component("store").rename_session(user, session_id, title))

    @app.delete("/api/sessions/{session_id}", status_code=204, responses=_errors(401, 404, 503), tags=["sessions"])
    def delete_session(session_id: str, user: CurrentUser) -> Response:
        """Delete the session and all its messages."""
        state.component("store").delete_session(user, session_id)
        return Response(status_code=204)

    @app.get(
        "/api/sessions/{session_id}/messages",
        response_model=SessionMessages,
        responses=_errors(401, 404, 503),
        tags=["sessions"],
    )
    def session_messages(session_id: str, user: CurrentUser) -> Any:
        store = state.component("store")
        session = store.get_session(user, session_id)
        return {
            "session": _session_out(session),
            "messages": [_message_out(m) for m in store.messages(user, session_id)],
        }

    # -- feedback and sources -----------------------------------------------------------------------------

    @app.post(
        "/api/feedback",
        response_model=FeedbackOut,
        responses=_errors(401, 404, 413, 415, 422, 503),
        tags=["chat"],
    )
    def feedback(body: FeedbackRequest, user: CurrentUser) -> Any:
        """Thumbs up or down on one of your replies. Stored with the reply (a second call replaces it) and,
        when the turn was traced, recorded on its MLflow trace as a ``user_feedback`` assessment."""
        store = state.component("store")
        try:
            message = store.get_message(user, body.message_id)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        if message.role != "assistant":
            raise HTTPException(
                422, f"feedback is given on a reply; message {message.id} is a {message.role} message"
            )
        comment = body.comment.strip()
        trace_id = message.metadata.get("trace_id")
        assessment_id, note = None, None
        if trace_id:
            try:
                assessment_id = state.component("tracer").feedback(trace_id, user, body.value == "up", comment)
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

    @app.get("/api/sources/{chunk_id}", response_model=SourceText, responses=_errors(401, 404, 503), tags=["chat"])
    def source_text(chunk_id: str, user: CurrentUser) -> Any:
        """The text of a cited passage (for sources of earlier answers, which are stored without it)."""
        try:
            return passage(services, chunk_id)
        except PassageUnavailable as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/api/examples", response_model=Examples, responses=_errors(401, 503), tags=["chat"])
    def examples(user: CurrentUser) -> Any:
        """Example questions for a new conversation, drawn from the indexed documents' headings."""
        return {"examples": example_questions(services)}

    # -- documents ----------------------------------------------------------------------------------------

    @app.post(
        "/api/rag/refresh",
        response_model=RefreshStatusOut,
        status_code=202,
        responses=_errors(401, 409, 413, 415),
        tags=["documents"],
    )
    def start_refresh(user: CurrentUser, body: RefreshRequest | None = None) -> Any:
        """Start bringing the document index in step with the chunk table (in the background). 409 while a
        refresh is running; follow it with GET."""
        if not config.rag.enabled:
            raise HTTPException(409, "document search is turned off (rag.enabled: false); nothing to refresh")
        try:
            return state.refresh.start(user, full=bool(body and body.full)).to_json()
        except RefreshAlreadyRunning as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/api/rag/refresh", response_model=RefreshStatusOut, responses=_errors(401), tags=["documents"])
    def refresh_status(user: CurrentUser) -> Any:
        """The running refresh, or how the last one ended (idle: none since the app started)."""
        return state.refresh.status().to_json()

    # -- identity and health ------------------------------------------------------------------------------

    @app.get("/api/me", response_model=Me, responses=_errors(401), tags=["app"])
    def me(request: Request) -> Any:
        identity = state.identity.resolve(request.headers)
        return {
            "user": identity.user,
            "identity": identity.source,
            "max_message_chars": config.web.max_message_chars,
            "model": getattr(state.component("chat_model"), "provider", config.model.provider),
            "rag_enabled": config.rag.enabled,
        }

    @app.get("/health", response_model=Health, responses={503: {"model": Health}}, tags=["app"])
    def health() -> Any:
        """200 when a database connection answers within web.health_timeout_seconds, else 503."""
        timeout = config.web.health_timeout_seconds
        try:
            with state.database(timeout).connection(timeout=timeout) as conn:
                conn.execute("SELECT 1").fetchone()
        except Exception as exc:
            where = getattr(state.services.__dict__.get("db"), "target", None)
            detail = _one_line(exc) + (f" ({where.description})" if where is not None else "")
            return JSONResponse({"status": "unavailable", "database": detail}, status_code=503)
        return {"status": "ok", "database": "ok"}

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # for HEAD probes

    # -- the page -----------------------------------------------------------------------------------------

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
        )

    app.mount("/static", _RevalidatedStaticFiles(directory=STATIC_DIR), name="static")
    return app


class _RevalidatedStaticFiles(StaticFiles):
    """Static files the browser revalidates (ETag) on every load, so a new deploy's script is used at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def _turn_failed_status(exc: TurnFailed) -> int:
    return 422 if exc.kind == "context_too_long" else 502


def _session_out(session: Session) -> dict[str, Any]:
    data = session.to_json()
    data.pop("user_id", None)
    return data


def _message_out(message: Message) -> dict[str, Any]:
    data = message.to_json()
    data.pop("user_id", None)
    metadata = data.get("metadata") or {}
    if metadata.get("error"):  # the stored detail is for developers (it is in the log and the trace)
        data["metadata"] = {**metadata, "error": people_message(metadata.get("error_kind"))}
    return {"id": message.id, **data}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _install_error_handlers(app: FastAPI) -> None:
    import psycopg
    from psycopg_pool import PoolTimeout

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 204 or exc.status_code == 304:
            return Response(status_code=exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(
            {"error": detail, "request_id": request_id(request)}, status_code=exc.status_code, headers=exc.headers
        )

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
        body = {"error": "; ".join(problems) or "invalid request", "request_id": request_id(request)}
        return JSONResponse(body, status_code=422)

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc), "request_id": request_id(request)}, status_code=404)

    async def unauthorized(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc), "request_id": request_id(request)}, status_code=401)

    async def database_down(request: Request, exc: Exception) -> Response:
        rid = request_id(request)
        log.warning("database unavailable [request %s]: %s", rid, exc)
        return JSONResponse({"error": DATABASE_DOWN, "request_id": rid}, status_code=503)

    async def server_error(request: Request, exc: Exception) -> Response:
        rid = request_id(request)
        log.error("unexpected error [request %s] in %s %s", rid, request.method, request.url.path, exc_info=exc)
        # Answered outside the middleware (Starlette's last resort), so the id header is set here.
        headers = {"X-Request-ID": rid} if rid else None
        return JSONResponse({"error": SERVER_ERROR, "request_id": rid}, status_code=500, headers=headers)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(SessionNotFound, not_found)
    app.add_exception_handler(IdentityError, unauthorized)
    for error in (DatabaseError, PoolTimeout, psycopg.OperationalError):
        app.add_exception_handler(error, database_down)
    app.add_exception_handler(Exception, server_error)  # anything else: a sentence, the traceback to the log


# ---------------------------------------------------------------------------------------------------------
# Running it


def bind_address(
    services: Services, host: str | None = None, port: int | None = None, env: Mapping[str, str] | None = None
) -> tuple[str, int]:
    """Where to listen: the arguments, else all interfaces on Databricks Apps (its proxy connects from
    outside the container), else ``web.host``; the port from the argument, else ``web.port`` (which
    ``DATABRICKS_APP_PORT`` sets)."""
    env = services.env if env is None else env
    if host is None:
        host = "0.0.0.0" if env.get("DATABRICKS_APP_NAME") else services.config.web.host
    return host, services.config.web.port if port is None else port


def serve(services: Services, host: str | None = None, port: int | None = None) -> None:
    """Serve the app until interrupted (Ctrl-C, SIGTERM from the platform)."""
    import uvicorn

    host, port = bind_address(services, host, port)
    app = create_app(services)
    print(f"context-assistant {__version__} on http://{host}:{port} (API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)


def main(argv: Sequence[str] | None = None) -> int:
    """``python app.py [--config FILE] [--host HOST] [--port PORT]``."""
    parser = argparse.ArgumentParser(prog="app.py", description="Serve the context-assistant chat app.")
    parser.add_argument("--config", help="config file (default: $CONTEXT_ASSISTANT_CONFIG or ./config.yaml)")
    parser.add_argument("--host", help="interface to listen on (default: web.host; 0.0.0.0 on Databricks Apps)")
    parser.add_argument("--port", type=port_number, help="port (default: $DATABRICKS_APP_PORT, else web.port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    with Services(config, env=os.environ) as services:
        serve(services, args.host, args.port)
    return 0
