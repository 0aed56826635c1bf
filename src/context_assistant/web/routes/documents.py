"""Documents: ``GET /api/sources/{chunk_id}`` (a cited passage's text), ``GET /api/examples`` (questions a
new user could ask, from the indexed documents) and the background refresh, ``POST /api/rag/refresh``
(start; 409 while one runs; a full re-index only for ``web.admins``) and ``GET /api/rag/refresh`` (its
status; who started it only for them and the admins)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ...core.errors import Conflict, ContextAssistantError
from ...retrieval.base import PassageUnavailable
from ...retrieval.examples import example_questions
from ..deps import ConfigDep, CurrentUser, IdentityDep, RefreshRunnerDep, ServicesDep, State
from ..models import Examples, RefreshRequest, RefreshStatusOut, SourceText
from ..refresh_runner import RefreshAlreadyRunning
from .common import errors

router = APIRouter()


@router.get("/api/sources/{chunk_id}", response_model=SourceText, responses=errors(401, 404, 503), tags=["chat"])
def source_text(chunk_id: str, user: CurrentUser, services: ServicesDep) -> Any:
    """The text of a cited passage (for sources of earlier answers, which are stored without it)."""
    if not services.config.rag.enabled:
        raise PassageUnavailable("document search is turned off (rag.enabled: false)")
    hit = services.chunk_index.passage(chunk_id)
    return {"chunk_id": hit.chunk_id, "path": hit.path, "heading": hit.heading, "page": hit.page, "text": hit.text}


@router.get("/api/examples", response_model=Examples, responses=errors(401, 503), tags=["chat"])
def examples(user: CurrentUser, services: ServicesDep) -> Any:
    """Example questions for a new conversation, drawn from the indexed documents' headings (none when
    document search is off, or the index is Vector Search's rather than this Postgres)."""
    config = services.config
    if not config.rag.enabled or config.rag.backend != "pgvector":
        return {"examples": []}
    return {"examples": example_questions(services.db)}


@router.post(
    "/api/rag/refresh",
    response_model=RefreshStatusOut,
    status_code=202,
    responses=errors(401, 403, 409, 413, 415),
    tags=["documents"],
)
def start_refresh(
    user: CurrentUser,
    who: IdentityDep,
    state: State,
    config: ConfigDep,
    runner: RefreshRunnerDep,
    body: RefreshRequest | None = None,
) -> Any:
    """Start bringing the document index in step with the chunk table (in the background). 409 while a
    refresh is running; follow it with GET. A full re-index (``{"full": true}``) is for the app's admins
    (``web.admins``): 403 for anyone else."""
    if not config.rag.enabled:
        raise Conflict("document search is turned off (rag.enabled: false); nothing to refresh")
    admin = state.identity.is_admin(who)
    full = bool(body and body.full)
    if full and not admin:
        raise AdminOnly("a full re-index can only be started by the app's admins (web.admins); ask one of them")
    try:
        return _for(runner.start(user, full=full).to_json(), user, admin)
    except RefreshAlreadyRunning as exc:
        if admin:
            raise
        raise RefreshAlreadyRunning("a document refresh is still running; wait for it to finish") from exc


@router.get("/api/rag/refresh", response_model=RefreshStatusOut, responses=errors(401), tags=["documents"])
def refresh_status(user: CurrentUser, who: IdentityDep, state: State, runner: RefreshRunnerDep) -> Any:
    """The running refresh, or how the last one ended (idle: none since the app started). Who started it
    is shown to them and to the app's admins only."""
    return _for(runner.status().to_json(), user, state.identity.is_admin(who))


def _for(status: dict[str, Any], user: str, admin: bool) -> dict[str, Any]:
    if not admin and status.get("started_by") not in (None, user):
        status["started_by"] = None
    return status


class AdminOnly(ContextAssistantError):
    """Only the app's admins (``web.admins``) may do that."""

    http_status = 403
    kind = "forbidden"
