"""What the routers share: the error responses they document, and the JSON shapes of stored objects."""

from __future__ import annotations

from typing import Any

from ...storage.memory import Message, Session
from ..errors import people_message
from ..models import ErrorBody


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (every error body is :class:`ErrorBody`)."""
    return {code: {"model": ErrorBody} for code in codes}


def session_out(session: Session) -> dict[str, Any]:
    data = session.to_json()
    data.pop("user_id", None)
    return data


def message_out(message: Message) -> dict[str, Any]:
    data = message.to_json()
    data.pop("user_id", None)
    metadata = data.get("metadata") or {}
    if metadata.get("error"):  # the stored detail is for developers (it is in the log and the trace)
        data["metadata"] = {**metadata, "error": people_message(metadata.get("error_kind"))}
    return {"id": message.id, **data}
