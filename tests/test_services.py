"""The composition root: parts built once even when threads race, provided only before first use, never
reconfigured; progress is an argument of the refresh, not an attribute swapped on a built index.

The refresh test runs a real sync into the test Postgres (pgvector) with the hashing embedder stand-in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from context_assistant.core.config import Config
from context_assistant.refresh import refresh_index
from context_assistant.retrieval.pgvector import PgVectorChunkIndex
from context_assistant.retrieval.sync import InMemoryChunkSource
from context_assistant.services import Services, part
from context_assistant.storage.db import DatabaseError
from retrieval_support import HashingEmbedder, document


class SlowServices(Services):
    """A part that takes a while to build, and counts its builds."""

    builds = 0

    @part
    def chat_model(self) -> Any:
        SlowServices.builds += 1
        time.sleep(0.05)
        return object()


def test_a_part_is_built_once_when_threads_race_for_it() -> None:
    SlowServices.builds = 0
    services = SlowServices(Config(), env={})
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(services.chat_model)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert SlowServices.builds == 1
    assert len(got) == 8 and all(model is got[0] for model in got)


def test_parts_are_provided_before_first_use_and_never_replaced() -> None:
    services = Services(Config(), env={})
    embedder = HashingEmbedder()
    services.embedder = embedder
    assert services.embedder is embedder
    with pytest.raises(AttributeError, match=r"services\.embedder is already built"):
        services.embedder = HashingEmbedder()
    with pytest.raises(AttributeError):
        services.config = Config()  # type: ignore[misc]  (read-only: per-call changes are arguments)


def test_the_database_is_waited_for_at_most_the_timeout_while_another_thread_builds() -> None:
    services = Services(Config(), env={})
    assert services.opened_database() is None
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with services._lock:  # another request building a part (e.g. opening the pool)
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    try:
        with pytest.raises(DatabaseError, match="still connecting to the database"):
            services.database(timeout=0.05)
    finally:
        release.set()
        thread.join()


def test_refresh_progress_is_an_argument(make_config: Callable[..., Config], pg_env: dict[str, str]) -> None:
    services = Services(make_config(memory__recall=False), env=pg_env)
    services.embedder = HashingEmbedder()
    services.chunk_source = InMemoryChunkSource(document("guides/a.md", "The pager rotates on Tuesdays."))
    lines: list[str] = []
    try:
        result = refresh_index(services, progress=lines.append)
        index = services.chunk_index
        assert isinstance(index, PgVectorChunkIndex) and not hasattr(index, "progress")
        assert result.ok and result.to_json()["added"] == 1
        assert lines[0] == "reading in-memory chunks"
        assert any(line.startswith("batch 1/1: 1/1 chunks") for line in lines)
        printed = len(lines)
        again = refresh_index(services)  # no progress argument: the first call's printer was not kept
        assert again.to_json()["kept"] == 1 and len(lines) == printed
    finally:
        services.close()


def test_web_dependencies_take_built_parts_on_the_event_loop_and_build_missing_ones_off_it() -> None:
    """FastAPI runs a plain ``def`` dependency in a worker thread (a hand-off per dependency, per request), so
    the web app's are ``async``; a part not built yet is still built in a worker thread, never on the loop."""
    import asyncio
    import inspect

    from context_assistant.web import deps

    for name in (
        "web_state",
        "services",
        "config",
        "identity",
        "current_user",
        "store",
        "assistant",
        "chat_model",
        "tracer",
        "chunk_index",
        "refresh_runner",
        "turn_hub",
        "chat_request",
    ):
        assert inspect.iscoroutinefunction(getattr(deps, name)), name

    class Recording(Services):
        built_on: ClassVar[list[int]] = []

        @part
        def chat_model(self) -> Any:
            Recording.built_on.append(threading.get_ident())
            return object()

    services = Recording(Config(), env={})
    assert services.built(Recording.chat_model) is None  # asking never builds

    async def twice() -> tuple[Any, Any, int]:
        first = await deps.chat_model(services)
        second = await deps.chat_model(services)
        return first, second, threading.get_ident()

    first, second, loop_thread = asyncio.run(twice())
    assert first is second is services.built(Recording.chat_model)
    assert len(Recording.built_on) == 1 and Recording.built_on[0] != loop_thread
