"""Database faults as the web app meets them, on real Postgres servers: the embedded server killed with
SIGKILL (the app restarts it), and a wrong password (one line, at once). The outage test starts its own
embedded server in the test's data directory (never the test run's shared one) and stops it at the end."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import PgServer
from context_assistant.storage.db import Database
from context_assistant.storage.targets import DatabaseError, EmbeddedPostgres, Target
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
