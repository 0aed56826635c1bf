"""Text from the request checked at the door, before any endpoint runs (issue: NUL and lone surrogates).

A NUL character cannot be stored in Postgres ``text``/``jsonb``, and an unpaired surrogate (``"\\ud800"`` in
JSON) cannot be encoded as UTF-8: both would fail deep inside a write, after a session may already exist.
This app-wide dependency refuses them first — in path parameters (``/api/sessions/abc%00def``), the query
and every string of a JSON body (keys too) — as a 422 naming the field (core/text.py has the rule), so
nothing is written.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from ..assistant.agent import AgentError
from ..core.text import InvalidText, text_problem

AGENT_PATHS = ("/invocations", "/responses")  # answer in the OpenAI error shape (routes/agent.py)


def _walk(where: str, value: Any) -> None:
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise InvalidText(where or "body", problem)
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)
            _walk(name, key)
            _walk(name, item)
    elif isinstance(value, list):
        for position, item in enumerate(value):
            _walk(f"{where}[{position}]", item)


async def checked_text(request: Request) -> None:
    """Raise :class:`~context_assistant.core.text.InvalidText` (422) for unstorable text anywhere in the
    request's path parameters, query or JSON body (on the agent routes: an OpenAI-shaped 400 naming it)."""
    try:
        await _check(request)
    except InvalidText as exc:
        if request.url.path in AGENT_PATHS:
            raise AgentError(400, str(exc), param=exc.field) from None
        raise


async def _check(request: Request) -> None:
    for name, value in request.path_params.items():
        _walk(str(name), value)
    for name, value in request.query_params.multi_items():
        _walk(name, value)
    if request.method in ("POST", "PUT", "PATCH") and "json" in request.headers.get("content-type", ""):
        raw = await request.body()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:  # FastAPI reports malformed JSON in its own words
            return
        _walk("", data)
