"""Start-up: the app loads the embedding model before it answers (web/readiness.py, WebState.warm_up).

Real uvicorn on a loopback port, real HTTP, real Postgres. The "model" is a stand-in whose first call (the
load) is held until the test releases it, so the test sees the app mid-start-up without timing anything:
/health says "starting" with the reason, a chat request waits (nothing is stored meanwhile) and is answered
once start-up ends; one that waits longer than web.startup_wait_seconds gets a 503 and loses nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from context_assistant.core.config import Config
from context_assistant.services import Services
from context_assistant.web.app import create_app
from retrieval_support import HashingEmbedder
from web_support import PG_ENV, LiveServer, wait_for

USER = "ada@example.com"


class LoadingModel:
    """The hashing stand-in, whose first call blocks until ``loaded`` is set (a model loading)."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder()
        self.model_name = "test-loading-model"
        self.loading = threading.Event()
        self.loaded = threading.Event()
        self.threads: list[str] = []

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.threads.append(threading.current_thread().name)
        self.loading.set()
        assert self.loaded.wait(60), "the test never let the model load"
        return self.inner.embed(texts)


@pytest.fixture(name="starting_app")
def starting_app_fixture(make_config: Callable[..., Config]) -> Iterator[Callable[..., tuple[Any, LoadingModel]]]:
    opened: list[tuple[LiveServer, Services, LoadingModel]] = []

    def start(**overrides: Any) -> tuple[Any, LoadingModel]:
        config = make_config(rag__enabled=False, web__forwarded_identity="trust", **overrides)
        services = Services(config, env=dict(PG_ENV))
        model = LoadingModel()
        services.embedder = model  # recall embeds: start-up loads it
        server = LiveServer(create_app(services))  # with the warm-up, as served
        opened.append((server, services, model))
        assert model.loading.wait(60), "start-up never began loading the model"
        return server, model

    yield start
    for server, services, model in opened:
        model.loaded.set()
        server.close()
        services.close()


def stored_messages(server: LiveServer) -> int:
    store = server.server.config.app.state.web.services.store
    return sum(len(store.messages(USER, s.id)) for s in store.list_sessions(USER))


def test_health_says_starting_and_a_chat_sent_meanwhile_is_answered_once_ready(
    starting_app: Callable[..., tuple[Any, LoadingModel]],
) -> None:
    server, model = starting_app()
    state = server.server.config.app.state.web
    with httpx.Client(base_url=server.url, headers={"X-Forwarded-Email": USER}, timeout=60) as client:
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json() == {
            "status": "starting",
            "database": "not checked yet",
            "reason": "loading the embedding model test-loading-model",
        }
        assert health.headers["Retry-After"] == "2"
        assert client.get("/api/me").status_code == 200  # what needs no model is served meanwhile

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, "/api/chat", json={"message": "How long is data retained?"})
            wait_for(lambda: state.readiness.waiting == 1, "the chat request to wait for start-up")
            assert stored_messages(server) == 0  # it waits before anything is stored
            model.loaded.set()
            answered = pending.result(60)

        assert answered.status_code == 200, answered.text
        reply = answered.json()
        assert reply["reply"] and reply["user_message_id"] < reply["message_id"]
        assert stored_messages(server) == 2
        assert model.threads[0] == "warm-up"  # the load happened at start-up, not in the request
        health = client.get("/health").json()
        assert health == {"status": "ok", "database": "ok", "tracing": "off: tracing.enabled is false"}


def test_a_chat_that_waits_longer_than_startup_wait_seconds_gets_503_and_loses_nothing(
    starting_app: Callable[..., tuple[Any, LoadingModel]],
) -> None:
    server, model = starting_app(web__startup_wait_seconds=0.2)
    with httpx.Client(base_url=server.url, headers={"X-Forwarded-Email": USER}, timeout=60) as client:
        refused = client.post("/api/chat", json={"message": "Who reviews deploys?"})
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert "still starting (loading the embedding model test-loading-model)" in error
        assert "your message was not sent" in error and "send it again" in error
        streamed = client.post("/api/chat/stream", json={"message": "Who reviews deploys?"})
        assert streamed.status_code == 503 and "still starting" in streamed.json()["error"]
        agent = client.post("/invocations", json={"input": [{"role": "user", "content": "Who reviews deploys?"}]})
        assert agent.status_code == 503 and "still starting" in agent.json()["error"]["message"]
        assert stored_messages(server) == 0

        model.loaded.set()
        wait_for(lambda: client.get("/health").status_code == 200, "start-up to end")
        again = client.post("/api/chat", json={"message": "Who reviews deploys?"})
        assert again.status_code == 200, again.text
        assert stored_messages(server) == 2
