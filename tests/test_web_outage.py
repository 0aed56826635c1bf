"""Faults as the web app meets them, on real Postgres servers: the embedded server killed with SIGKILL (the
app restarts it), a wrong password (one line, at once), and the app itself stopped with SIGTERM mid-answer. The outage test starts its own
embedded server in the test's data directory (never the test run's shared one) and stops it at the end."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from conftest import REPO, PgServer
from context_assistant.core.config import save_config
from context_assistant.storage.db import Database
from context_assistant.storage.targets import DatabaseError, EmbeddedPostgres, Target
from live_support import HeldAnswer, held_model_config
from web_support import start_app_fixture, wait_for  # noqa: F401  (the start_app fixture)


@pytest.mark.slow
def test_a_killed_embedded_postgres_is_restarted_and_requests_meanwhile_get_a_503(
    start_app, make_config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    config = make_config(
        data_dir=str(tmp_path / "own"),
        database__host="",
        database__name="context_assistant",
        rag__enabled=False,
        memory__recall=False,
        web__health_timeout_seconds=2,
    )
    server = EmbeddedPostgres(config.data_path)
    caplog.set_level(logging.WARNING, logger="context_assistant")
    app = None
    try:
        app = start_app(config)
        client = app.client()
        wait_for(lambda: client.get("/health").status_code == 200, "the app's own Postgres to start", 120)
        assert client.post("/api/chat", json={"message": "before"}).status_code == 200
        app.state.supervisor.check_seconds = 0.2
        # It restarts only a server it has seen run (never racing the app's own start).
        wait_for(lambda: app.state.supervisor.seen_running, "the supervisor's first look at the server", 60)

        pid = server.running_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: server.running_pid() != pid, "the postmaster to die", 30)

        # Whatever the moment, a request gets an answer: the supervisor's restart, or a 503 that says why.
        replies = [client.post("/api/chat", json={"message": "during"}) for _ in range(3)]
        for reply in replies:
            assert reply.status_code in (200, 503), reply.text
            if reply.status_code == 503:
                assert reply.headers["content-type"].startswith("application/json")
                assert "cannot reach its database" in reply.json()["error"]

        wait_for(lambda: app.state.supervisor.restarts >= 1, "the supervisor to restart Postgres", 120)
        wait_for(lambda: client.get("/health").status_code == 200, "health to recover", 60)
        assert client.post("/api/chat", json={"message": "after"}).status_code == 200
        logged = [r.getMessage() for r in caplog.records if r.name.endswith("supervisor")]
        assert any("is not running: starting it (attempt 1)" in line for line in logged), logged
        assert any("running again (restart 1)" in line for line in logged), logged
        assert all("\n" not in line for line in logged)
    finally:
        if app is not None:
            app.state.supervisor.stop()  # or it would start the server again
            app.state.supervisor.join(30)
        server.stop()


def test_a_wrong_password_fails_at_once_in_one_line(pg_server: PgServer, caplog: pytest.LogCaptureFixture) -> None:
    role = "wrong_password_user"
    hba = Path(pg_server.embedded.pgdata) / "pg_hba.conf"
    rule = f"local all {role} scram-sha-256\n"
    if rule not in hba.read_text():
        hba.write_text(rule + hba.read_text())
    with psycopg.connect(pg_server.admin_uri, autocommit=True) as admin:
        admin.execute("SELECT pg_reload_conf()")
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'right'")
    conninfo = psycopg.conninfo.make_conninfo(pg_server.admin_uri, user=role)

    def open_with(password: str) -> Any:
        return Database(Target("postgres", conninfo, "the test Postgres", password=lambda: password), max_size=1)

    wait_for(lambda: _opens(open_with, "right"), "the reloaded pg_hba.conf to apply")
    caplog.set_level(logging.WARNING)
    with pytest.raises(DatabaseError) as raised:
        open_with("wrong")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("could not connect to the test Postgres: ")
    assert "password authentication failed" in message and "Check the user and password" in message
    assert [r for r in caplog.records if r.name.startswith("psycopg")] == []  # no pool retry warnings


def _opens(open_with: Any, password: str) -> bool:
    try:
        open_with(password).close()
    except DatabaseError:
        return False
    return True


@pytest.mark.slow
def test_sigterm_mid_answer_leaves_the_question_interrupted_and_retryable(
    make_config, pg_env: dict[str, str], fake_databricks: Any, store: Any, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """``python app.py`` as the platform runs it, stopped with SIGTERM while a model (a loopback
    OpenAI-compatible server, holding mid-answer) is writing: the question ends failed/interrupted."""
    answer = HeldAnswer([f"word{i} " for i in range(6)], hold_after=2)
    config = held_model_config(make_config, fake_databricks, answer, rag__enabled=False, memory__recall=False)
    config_file = save_config(config, tmp_path / "config.yaml")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, **pg_env, "CONTEXT_ASSISTANT_CONFIG": str(config_file), "DATABRICKS_APP_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, "python app.py to serve", timeout=90)
        start, signalled = None, False
        with (
            contextlib.suppress(httpx.TransportError),  # the server closes the stream as it stops
            httpx.stream("POST", url + "/api/chat/stream", json={"message": "hello"}, timeout=60) as response,
        ):
            for line in response.iter_lines():  # still watching when the signal comes
                if line.startswith("data:") and start is None:
                    start = json.loads(line[5:])
                if answer.held.is_set() and not signalled:
                    process.send_signal(signal.SIGTERM)
                    signalled = True
        assert start is not None and signalled
        process.wait(60)
    finally:
        answer.release.set()
        if process.poll() is None:
            process.kill()
            process.wait(15)
    question = store.get_message(config.default_user, start["user_message_id"])
    assert question.failed and question.metadata["error_kind"] == "interrupted", question.metadata
