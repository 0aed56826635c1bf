"""The web app: the chat page and its JSON API (FastAPI), served by uvicorn.

``python app.py`` (the Databricks App command) and ``context-assistant serve`` both end in :func:`serve`.
Everything the app does goes through :class:`~context_assistant.services.Services`, like the CLI, so the web
turn is the CLI turn: same memory, retrieval, model and tracing.

This module assembles the app; each resource's endpoints are an ``APIRouter`` in ``routes/``, and what they
may ask for (the user, the config, the parts they use) are the typed dependencies in ``deps.py``.
Synchronous work (the assistant turn, the store, the tracer) runs in FastAPI's worker threads: endpoints
doing it are plain ``def``; the streaming endpoint hands each step of the turn to a thread (stream.py).
Who is asking is decided in identity.py; body limits and JSON-only writes in guard.py. Every error
response is ``{"error": "...", "request_id": "..."}`` (failed turns add kind, retryable, session_id and
user_message_id); ``error`` is a sentence for people, the details are logged under the request id, which
every response carries as ``X-Request-ID`` (errors.py; it also answers anything unexpected with a 500).
The OpenAPI page at /docs is served from the app's own files (docs.py).

Endpoints (the OpenAPI page at /docs documents them; the JSON schema is at /openapi.json):

* ``POST /api/chat`` — one turn, answered when complete; ``POST /api/chat/stream`` — the same as SSE, run by
  the app rather than the request (live.py): ``GET /api/chat/turns``, ``GET /api/chat/turns/{id}/events``
  (re-attach, resumable), ``POST /api/chat/turns/{id}/stop``;
* ``GET/POST /api/sessions``, ``GET/PATCH/DELETE /api/sessions/{id}``, ``GET /api/sessions/{id}/messages``;
* ``POST /api/feedback`` — thumbs up/down (+ comment) on a reply: message metadata and MLflow assessment;
* ``GET /api/sources/{chunk_id}`` — a cited passage's text; ``GET /api/examples`` — questions for a new user;
* ``POST /api/rag/refresh`` (start; 409 while one runs), ``GET /api/rag/refresh`` (status);
* ``GET /api/me``; ``GET /health`` (503 ``"starting"`` while start-up loads the embedding model, see
  readiness.py; then 200 when the database answers and its schema is ready for this role, else 503 with the
  reason, e.g. which job creates the schema);
* ``POST /invocations`` (and ``/responses``), ``GET /agent/info`` — the assistant as an MLflow ResponsesAgent
  (routes/agent.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..core.config import ConfigError, load_config
from ..core.console import port_number
from ..core.errors import EXIT_OK
from ..core.interrupts import end_process, report_interrupted
from ..core.redact import install_log_redaction
from ..services import Services
from .deps import WebState
from .docs import install_docs
from .errors import RequestIds, install_error_handlers
from .guard import RequestGuard
from .refresh_runner import RefreshCall
from .routes import ROUTERS
from .routes.status import STATIC_DIR
from .text_check import checked_text

log = logging.getLogger(__name__)


def create_app(services: Services, *, refresh: RefreshCall | None = None, warm_up: bool = True) -> FastAPI:
    """The ASGI app over ``services`` (which the caller owns and closes).

    ``refresh(full, progress)`` is what the refresh button runs (default: refresh.refresh_documents).
    """
    install_log_redaction()  # the app log never holds a token an upstream error echoed (core.redact)
    state = WebState(services, refresh)
    if not warm_up:
        state.readiness.set_ready()  # nothing loads at start-up: requests need not wait (readiness.py)
    config = services.config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            threading.Thread(target=state.warm_up, name="warm-up", daemon=True).start()
            state.turns.start_sweeping()  # questions a killed process left without a state (live.py)
            state.supervisor.start()  # the embedded Postgres, restarted if it dies (supervisor.py)
        yield
        state.supervisor.stop()
        # Answers still being written: stopped and their questions marked interrupted (retryable).
        await asyncio.to_thread(state.turns.shutdown)

    app = FastAPI(
        title="context-assistant",
        version=__version__,
        description="Chat with an assistant that remembers your conversations and answers from your team's "
        "documents. Every /api endpoint acts for the signed-in user (see GET /api/me); sessions and messages "
        'of other users answer 404. Errors are JSON: {"error": "...", "request_id": "..."}.',
        lifespan=lifespan,
        dependencies=[Depends(checked_text)],  # NUL / lone surrogates: 422 before anything runs
        docs_url=None,  # served from the app's own files: docs.py
        redoc_url=None,
    )
    app.state.web = state
    app.add_middleware(RequestGuard, max_body_bytes=config.web.max_body_bytes)
    app.add_middleware(RequestIds)  # added last, so outermost: every response carries X-Request-ID
    install_error_handlers(app)
    install_docs(app)

    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", _RevalidatedStaticFiles(directory=STATIC_DIR), name="static")
    return app


class _RevalidatedStaticFiles(StaticFiles):
    """Static files the browser revalidates (ETag) on every load, so a new deploy's script is used at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


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
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
    # Server.run rather than uvicorn.run: after its graceful shutdown uvicorn re-raises the Ctrl-C, which
    # uvicorn.run swallows (exit 0, or 3 before start-up); the callers report it as an interruption (130).
    uvicorn.Server(config).run()


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
        print(f"{exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code
    with Services(config, env=os.environ, serving=True) as services:
        try:
            serve(services, args.host, args.port)
            return EXIT_OK
        except KeyboardInterrupt:  # Ctrl-C, re-raised by uvicorn after its graceful shutdown
            code = report_interrupted("Interrupted.")
    end_process(code)  # the process's entry point: leave without the interpreter's slow teardown
    return code
