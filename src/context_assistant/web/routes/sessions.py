"""Sessions: ``GET/POST /api/sessions``, ``GET/PATCH/DELETE /api/sessions/{id}``,
``GET /api/sessions/{id}/messages``. Another user's session answers 404, like one that does not exist.

The id is matched as a path (``{session_id:path}``), so an imported session whose id holds a ``/`` (sent as
``%2F``) can be opened, renamed and deleted too; the messages route comes first for that reason."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ...core.errors import InvalidInput
from ..deps import CurrentUser, StoreDep
from ..models import NewSession, RenameSession, SessionList, SessionMessages, SessionOut
from .common import errors, message_out, session_out

router = APIRouter(tags=["sessions"])


@router.get("/api/sessions", response_model=SessionList, responses=errors(401, 503))
def list_sessions(user: CurrentUser, store: StoreDep, limit: int = 100, offset: int = 0) -> Any:
    """Your sessions, most recently active first."""
    limit = max(1, min(limit, 500))
    sessions = store.list_sessions(user, limit=limit, offset=max(0, offset))
    return {"user": user, "sessions": [session_out(s) for s in sessions]}


@router.post(
    "/api/sessions", response_model=SessionOut, status_code=201, responses=errors(401, 413, 415, 422, 503)
)
def create_session(user: CurrentUser, body: NewSession, store: StoreDep) -> Any:
    """An empty session (the chat endpoints also create one when no session_id is given)."""
    return session_out(store.create_session(user, title=body.title.strip()))


@router.get(
    "/api/sessions/{session_id:path}/messages", response_model=SessionMessages, responses=errors(401, 404, 503)
)
def session_messages(session_id: str, user: CurrentUser, store: StoreDep) -> Any:
    session = store.get_session(user, session_id)
    return {
        "session": session_out(session),
        "messages": [message_out(m) for m in store.messages(user, session_id)],
    }


@router.get("/api/sessions/{session_id:path}", response_model=SessionOut, responses=errors(401, 404, 503))
def get_session(session_id: str, user: CurrentUser, store: StoreDep) -> Any:
    return session_out(store.get_session(user, session_id))


@router.patch(
    "/api/sessions/{session_id:path}", response_model=SessionOut, responses=errors(401, 404, 413, 415, 422, 503)
)
def rename_session(session_id: str, user: CurrentUser, body: RenameSession, store: StoreDep) -> Any:
    title = body.title.strip()
    if not title:
        raise InvalidInput("the title is blank")
    return session_out(store.rename_session(user, session_id, title))


@router.delete("/api/sessions/{session_id:path}", status_code=204, responses=errors(401, 404, 503))
def delete_session(session_id: str, user: CurrentUser, store: StoreDep) -> Response:
    """Delete the session and all its messages."""
    store.delete_session(user, session_id)
    return Response(status_code=204)
