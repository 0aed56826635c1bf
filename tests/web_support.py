"""Helpers for the web tests: the app on a real uvicorn server on a free loopback port, over real Postgres.

Each app gets the test's own database (the ``config``/``make_config`` fixtures), the offline model (or a
loopback OpenAI-compatible server, tests/fake_databricks.py) and a small pgvector document index built by a
real sync from in-memory chunks with the hashing embedder (tests/retrieval_support.py: a fast stand-in for
the embedding model; retrieval quality is not what these tests are about).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from context_assistant.core.config import Config
from context_assistant.refresh import refresh_index
from context_assistant.retrieval.sync import InMemoryChunkSource
from context_assistant.services import Services
from context_assistant.web.app import create_app
from retrieval_support import HashingEmbedder, document

DOCS = [
    *document(
        "runbooks/oncall.md",
        "The on-call rotation hands over on Tuesdays at 10:00 UTC in the #oncall channel.",
        "An unanswered page escalates to the secondary after 15 minutes.",
        heading="On-call > Handover",
    ),
    *document(
        "guides/deployment.md",
        "Production deploys happen Monday to Thursday between 09:00 and 15:00 UTC.",
        "Every change needs two reviewers before it can be merged.",
        heading="Deployment Guide > Rules",
    ),
    *document("faq.html", "Laptops are replaced every 36 months through the IT portal."),
]

PG_ENV = {"PGPASSWORD": "unused-trust-auth"}


class LiveServer:
    """uvicorn serving ``app`` in a thread on a loopback port chosen by the OS."""

    def __init__(self, app: Any) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test web server did not start")
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class RunningApp:
    services: Services
    server: LiveServer
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def state(self) -> Any:
        return self.server.server.config.app.state.web

    def client(self, user: str | None = None, headers: dict[str, str] | None = None) -> httpx.Client:
        """An HTTP client; with ``user``, every request carries ``X-Forwarded-Email: user``."""
        headers = {**({"X-Forwarded-Email": user} if user else {}), **(headers or {})}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.server.close()
        self.services.close()


def web_services(config: Config, *, env: dict[str, str] | None = None, **parts: Any) -> Services:
    """Services on the test database with the hashing embedder and the DOCS index (a real sync)."""
    services = Services(config, env={**PG_ENV, **(env or {})}, **parts.pop("services_kwargs", {}))
    services.embedder = HashingEmbedder()  # provided before its first use
    services.chunk_source = parts.pop("chunk_source", None) or InMemoryChunkSource(DOCS)
    for name, value in parts.items():
        setattr(services, name, value)
    if config.rag.enabled:
        refresh_index(services)
    return services


@pytest.fixture(name="start_app")
def start_app_fixture(make_config: Callable[..., Config]) -> Iterator[Callable[..., RunningApp]]:
    """``start_app(config=None, env=None, refresh=None, **service_parts)`` -> a RunningApp, closed after the test."""
    running: list[RunningApp] = []

    def start(
        config: Config | None = None,
        *,
        env: dict[str, str] | None = None,
        refresh: Any = None,
        **parts: Any,
    ) -> RunningApp:
        services = web_services(config or make_config(), env=env, **parts)
        app = RunningApp(services, LiveServer(create_app(services, refresh=refresh)))
        running.append(app)
        wait_for(lambda: app.state.readiness.ready, "the app's start-up (readiness.py)", timeout=600)
        return app

    yield start
    for app in running:
        app.close()


def read_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """Parse a text/event-stream body as it arrives: (event, data) pairs."""
    event, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line:
            if data:
                yield event, json.loads(data)
            event, data = "message", ""


def wait_for(
    condition: Callable[[], Any],
    what: str,
    timeout: float = 20.0,
    pause: Callable[[float], None] = time.sleep,
) -> Any:
    """Poll until ``condition()`` is truthy (background work: a refresh, a closed stream).

    A condition fed by a Playwright callback (a route handler) needs ``pause=page_pause(page)``:
    the sync API only dispatches its events inside its own calls, never during ``time.sleep``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        pause(0.05)


def page_pause(page: Any) -> Callable[[float], None]:
    """A pause that lets Playwright deliver its events (route handlers, console messages) meanwhile."""
    return lambda seconds: page.wait_for_timeout(seconds * 1000)
