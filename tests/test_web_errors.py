"""The web app maps the error hierarchy once; anything else is a bug: 500 JSON with a request id, logged.
Every error body carries the request id, which is also the response's X-Request-ID.

Driven in-process through Starlette's TestClient (real FastAPI app, real middleware and routers; the parts a
request reaches are stand-ins that raise, so no database or model is involved).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from context_assistant.core.config import Config, ConfigError
from context_assistant.services import Services, part
from context_assistant.storage.memory import SessionNotFound
from context_assistant.web import create_app
from context_assistant.web.errors import SERVER_ERROR


class BuggyAssistant:
    """An assistant with a bug: a KeyError escapes a turn."""

    def turn(self, *args: Any, **kwargs: Any) -> Any:
        raise KeyError("session_id")

    def stream_turn(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        raise KeyError("session_id")
        yield  # a generator, like the real one


class LostAssistant:
    def turn(self, *args: Any, **kwargs: Any) -> Any:
        raise SessionNotFound("gone")


class MisconfiguredServices(Services):
    @part
    def assistant(self) -> Any:
        raise ConfigError("rag.index_name must be set (catalog.schema.index) when rag.backend is vector_search")


@pytest.fixture
def client_for() -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(services: Services) -> TestClient:
        client = TestClient(create_app(services, warm_up=False), raise_server_exceptions=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def without_id(response: Any) -> dict[str, Any]:
    """The error body without its request id, after checking that it is the response's X-Request-ID."""
    body = dict(response.json())
    assert body.pop("request_id") == response.headers["x-request-id"]
    return body


def services_with(**parts: Any) -> Services:
    services = Services(Config(user="ana"), env={})
    for name, value in parts.items():
        setattr(services, name, value)
    return services


def test_a_bug_is_a_500_with_a_request_id_never_a_404(client_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = client_for(services_with(assistant=BuggyAssistant()))
    with caplog.at_level(logging.ERROR, logger="context_assistant.web.errors"):
        response = client.post("/api/chat", json={"message": "hello"})
    assert response.status_code == 500
    body = response.json()
    request_id = body["request_id"]
    assert body["error"] == SERVER_ERROR  # a sentence for people; the exception's text stays in the log
    assert response.headers["x-request-id"] == request_id
    (record,) = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is KeyError  # the traceback is in the log

    streamed = client.post("/api/chat/stream", json={"message": "hello"})
    assert streamed.status_code == 500 and "request_id" in streamed.json()


def test_known_errors_answer_their_own_status(client_for: Any) -> None:
    client = client_for(services_with(assistant=LostAssistant()))
    response = client.post("/api/chat", json={"message": "hello", "session_id": "gone"})
    assert (response.status_code, without_id(response)) == (
        404,
        {
            "error": "session not found: gone",
            "hint": "GET /api/sessions lists your sessions; leave session_id out to start a new one",
        },
    )
    blank = client.post("/api/chat", json={"message": "   "})
    assert (blank.status_code, without_id(blank)) == (422, {"error": "the message is empty"})


def test_a_configuration_error_while_building_a_part_is_a_server_error_not_a_bad_request(client_for: Any) -> None:
    client = client_for(MisconfiguredServices(Config(user="ana"), env={}))
    response = client.post("/api/chat", json={"message": "hello"})
    assert response.status_code == 500
    assert without_id(response) == {
        "error": "rag.index_name must be set (catalog.schema.index) when rag.backend is vector_search"
    }
