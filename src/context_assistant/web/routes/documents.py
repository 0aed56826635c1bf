"""Documents: ``GET /api/sources/{chunk_id}`` (a cited passage's text), ``GET /api/examples`` (questions a
new user could ask, from the indexed documents) and the background refresh, ``POST /api/rag/refresh``
(start; 409 while one runs) and ``GET /api/rag/refresh`` (its status)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ...core.errors import Conflict
from ...retrieval.base import PassageUnavailable
from ...retrieval.examples import example_questions
from ..deps import ConfigDep, CurrentUser, RefreshRunnerDep, ServicesDep
from ..models import Examples, RefreshRequest, RefreshStatusOut, SourceText
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
    responses=errors(401, 409, 413, 415),
    tags=["documents"],
)
def start_refresh(
    user: CurrentUser, config: ConfigDep, runner: RefreshRunnerDep, body: RefreshRequest | None = None
) -> Any:
    """Start bringing the document index in step with the chunk table (in the background). 409 while a
    refresh is running; follow it with GET."""
    if not config.rag.enabled:
        raise Conflict("document search is turned off (rag.enabled: false); nothing to refresh")
    return runner.start(user, full=bool(body and body.full)).to_json()


@router.get("/api/rag/refresh", response_model=RefreshStatusOut, responses=errors(401), tags=["documents"])
def refresh_status(user: CurrentUser, runner: RefreshRunnerDep) -> Any:
    """The running refresh, or how the last one ended (idle: none since the app started)."""
    return runner.status().to_json()
