"""The app itself: ``GET /api/me`` (who the app thinks you are), ``GET/HEAD /health`` (503 "starting" until
start-up has loaded the model; then 200 when the database answers and its schema is ready for this role, else
503 with the reason) and the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

from ...storage.db import SchemaNotReady
from ..deps import ChatModelDep, ConfigDep, IdentityDep, ServicesDep, State
from ..models import Health, Me
from .common import errors

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The page runs only its own script and style and talks only to this server: even text that slipped into
# the page as markup could not run script or load anything from elsewhere.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)

router = APIRouter(tags=["app"])


@router.get("/api/me", response_model=Me, responses=errors(401))
def me(who: IdentityDep, config: ConfigDep, chat_model: ChatModelDep) -> Any:
    return {
        "user": who.user,
        "identity": who.source,
        "max_message_chars": config.web.max_message_chars,
        "model": chat_model.provider,
        "rag_enabled": config.rag.enabled,
    }


@router.get("/health", response_model=Health, response_model_exclude_none=True, responses={503: {"model": Health}})
def health(services: ServicesDep, state: State) -> Any:
    """503 ``"starting"`` (with the ``reason``) while start-up loads the embedding model; then 200 when a
    database connection answers within web.health_timeout_seconds and the schema is ready for the app's role,
    else 503 saying why (a missing or behind schema names the job that sets it up)."""
    readiness = state.readiness
    if not readiness.ready:
        return JSONResponse(
            {"status": "starting", "database": "not checked yet", "reason": readiness.step},
            status_code=503,
            headers={"Retry-After": "2"},
        )
    timeout = services.config.web.health_timeout_seconds
    try:
        with state.database_within(timeout).connection(timeout=timeout) as conn:
            conn.execute("SELECT 1").fetchone()
    except Exception as exc:
        where = getattr(services.opened_database(), "target", None)
        detail = _one_line(exc)
        if where is not None and not isinstance(exc, SchemaNotReady):  # that one already names it
            detail += f" ({where.description})"
        return JSONResponse(
            {"status": "unavailable", "database": detail, "tracing": services.tracer.status()}, status_code=503
        )
    return {"status": "ok", "database": "ok", "tracing": services.tracer.status()}


router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # for HEAD probes


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html",
        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
