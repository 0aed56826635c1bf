"""The connection layer on a real Postgres: migrations, the embedded server, Lakebase tokens and rotation."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from conftest import PgServer
from context_assistant.core.clock import FakeClock
from context_assistant.core.config import load_config
from context_assistant.core.errors import ConfigError
from context_assistant.storage.db import CONNECTION_MAX_LIFETIME, Database, open_database
from context_assistant.storage.migrations import LATEST_VERSION, MIGRATIONS, Migration
from context_assistant.storage.targets import (
    CachedToken,
    DatabaseError,
    Target,
    lakebase_token_minter,
    resolve_target,
)
from fake_databricks import FakeDatabricks


def fresh_db(pg_server: PgServer, name: str) -> Database:
    pg_server.drop_database(name)
    with psycopg.connect(pg_server.admin_uri, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return Database(Target("postgres", pg_server.uri(name), name), max_size=4)


def test_migrations_are_versioned_and_idempotent(pg_server: PgServer) -> None:
    with fresh_db(pg_server, "migrate_twice") as db:
        first = db.migrate(vector=False)
        assert [m.version for m in first] == [m.version for m in MIGRATIONS if not m.requires_vector]
        assert db.migrate(vector=False) == []
        later = db.migrate(vector=True)  # vector migrations apply when a vector feature asks for them
        assert all(m.requires_vector for m in later)
        assert db.migrate(vector=True) == []
        status = db.status()
        assert status["schema_version"] == LATEST_VERSION
        assert status["pgvector_version"] and status["server_version"].startswith("18")
    pg_server.drop_database("migrate_twice")


def test_concurrent_migrations_apply_each_version_once(pg_server: PgServer) -> None:
    dbs = [fresh_db(pg_server, "migrate_race")]
    dbs.append(Database(Target("postgres", pg_server.uri("migrate_race"), "second"), max_size=2))
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run(db: Database) -> None:
        try:
            results.append([m.version for m in db.migrate(vector=True)])
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(v for r in results for v in r) == [m.version for m in MIGRATIONS]
    with dbs[0].connection() as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)
    for db in dbs:
        db.close()
    pg_server.drop_database("migrate_race")


def test_missing_pgvector_is_a_clear_error(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server without the extension (simulated by asking for an extension name it does not have)."""
    with fresh_db(pg_server, "no_vector") as db:
        monkeypatch.setattr(Database, "VECTOR_EXTENSION", "vector_not_installed_here")
        with pytest.raises(DatabaseError, match="the pgvector extension is not available on no_vector") as info:
            db.migrate(vector=True)
        assert "rag.enabled: false" in str(info.value)
        # Nothing half-applied: the failed run rolled back and the memory schema can still be created.
        assert db.status()["schema_version"] == 0
        monkeypatch.undo()
        assert db.migrate(vector=False)
    pg_server.drop_database("no_vector")


def test_unreachable_database_names_the_target(tmp_path: Path) -> None:
    config = load_config(
        None, env={}, overrides={"database.host": str(tmp_path / "nowhere"), "database.sslmode": "disable"}
    )
    target = resolve_target(config, env={"PGPASSWORD": "x"})
    with pytest.raises(DatabaseError) as info:
        Database(target, open_timeout=1)
    message = str(info.value)
    assert f"could not connect to Postgres at {tmp_path / 'nowhere'}:5432/databricks_postgres" in message
    assert "PG*/LAKEBASE_*" in message


def test_embedded_server_is_shared_by_two_processes(tmp_path: Path) -> None:
    data = tmp_path / "state"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"data_dir: {data}\nrag:\n  enabled: false\nmemory:\n  recall: false\n")
    code = (
        "import json, sys; from context_assistant.core.config import load_config;"
        "from context_assistant.storage.db import open_database;"
        f"db = open_database(load_config({str(cfg)!r}, env={{}}));"
        "c = db.pool.getconn(); print(json.dumps({'pid': c.execute('SELECT pg_postmaster_start_time()::text')"
        ".fetchone()[0], 'status': db.status()})); db.pool.putconn(c); db.close()"
    )
    try:
        first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        one, two = json.loads(first.stdout), json.loads(second.stdout)
        assert one["pid"] == two["pid"]  # the second process attached to the running server
        assert two["status"]["kind"] == "embedded" and two["status"]["schema_version"] >= 1
        assert (data / "postgres" / "PG_VERSION").exists()
    finally:
        stop = subprocess.run(
            [sys.executable, "-m", "context_assistant", "--config", str(cfg), "db", "stop"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Stopped the embedded Postgres." in stop.stdout, stop.stderr


# ------------------------------------------------------------------------------------------------------
# Lakebase credentials


def test_cached_token_is_reused_for_15_minutes_then_reminted() -> None:
    clock = FakeClock()
    minted = iter(f"tok-{i}" for i in range(1, 10))
    token = CachedToken(lambda: next(minted), clock=clock)
    assert token() == "tok-1"
    clock.advance(14 * 60)
    assert token() == "tok-1"
    clock.advance(61)
    assert token() == "tok-2"
    assert token.mint_count == 2


def test_pool_connections_get_fresh_tokens_and_retire_before_the_hour(pg_server: PgServer) -> None:
    """Real password authentication: the server only accepts the newest token, as after a rotation."""
    role = "token_user"
    hba = Path(pg_server.embedded.pgdata) / "pg_hba.conf"
    rule = f"local all {role} scram-sha-256\n"
    if rule not in hba.read_text():
        hba.write_text(rule + hba.read_text())
    with psycopg.connect(pg_server.admin_uri, autocommit=True) as admin:
        admin.execute("SELECT pg_reload_conf()")
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} LOGIN")
    time.sleep(0.2)  # let the postmaster pick up the reloaded pg_hba.conf

    clock = FakeClock()
    counter = iter(range(1, 100))

    def mint() -> str:  # the "credential API": issue a token and make it the valid password
        token = f"token-{next(counter)}"
        with psycopg.connect(pg_server.admin_uri, autocommit=True) as admin:
            admin.execute(f"ALTER ROLE {role} PASSWORD '{token}'")
        return token

    token = CachedToken(mint, clock=clock)
    conninfo = psycopg.conninfo.make_conninfo(pg_server.admin_uri, user=role)
    db = Database(Target("lakebase", conninfo, "fake lakebase", password=token), min_size=1, max_size=2)
    try:
        with db.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == role
        assert token.mint_count == 1
        assert db.pool.max_lifetime == CONNECTION_MAX_LIFETIME < 3600

        drain_and_refill(db)  # new connections within 15 minutes reuse the cached token
        with db.connection() as conn:
            conn.execute("SELECT 1")
        assert token.mint_count == 1

        clock.advance(16 * 60)  # the cached token is too old: the next connection mints a new one
        drain_and_refill(db)
        with db.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == role
        assert token.mint_count == 2
    finally:
        db.close()


def drain_and_refill(db: Database) -> None:
    """Replace the pooled connections and wait until the background refill has connected."""
    db.pool.drain()
    deadline = time.monotonic() + 10
    while db.pool.get_stats().get("pool_available", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)


def test_connections_are_recycled_after_max_lifetime(pg_server: PgServer) -> None:
    db = Database(Target("postgres", pg_server.admin_uri, "short-lived"), min_size=1, max_size=1, max_lifetime=0.5)
    try:
        with db.connection() as conn:
            first = conn.info.backend_pid
        time.sleep(1.0)  # wait out the lifetime; the pool replaces the connection in the background
        deadline = time.monotonic() + 10
        second = first
        while second == first and time.monotonic() < deadline:
            with db.connection() as conn:
                second = conn.info.backend_pid
            time.sleep(0.1)
        assert second != first
    finally:
        db.close()


def test_the_pool_hands_out_the_connection_returned_last(pg_server: PgServer) -> None:
    """Once two connections were needed at once, one at a time uses the one returned last every time (LIFO),
    not the two in turn (psycopg_pool's own order); the other stays idle, so the pool can close it."""
    db = Database(Target("postgres", pg_server.admin_uri, "lifo"), min_size=1, max_size=4)
    try:
        with db.connection() as outer, db.connection() as inner:  # a nested checkout: the pool grows to two
            outer_pid, inner_pid = outer.info.backend_pid, inner.info.backend_pid
        assert outer_pid != inner_pid and db.pool.get_stats()["pool_available"] == 2
        used = []
        for _ in range(6):
            with db.connection() as conn:
                used.append(conn.info.backend_pid)
            with db.autocommit() as conn:
                used.append(conn.info.backend_pid)
        assert used == [outer_pid] * 12  # returned last (the outer block closed after the inner one)
    finally:
        db.close()


def test_lakebase_credentials_through_databricks_sdk(fake_databricks: FakeDatabricks) -> None:
    """databricks-sdk against a loopback server speaking the documented credential REST shapes."""
    fake_databricks.on(
        "POST",
        "/api/2.0/database/credentials",
        {"token": "instance-token", "expiration_time": "2026-01-01T01:00:00Z"},
    )
    fake_databricks.on(
        "POST",
        "/api/2.0/postgres/credentials",
        {"token": "autoscaling-token", "expire_time": "2026-01-01T01:00:00Z"},
    )
    w = fake_databricks.workspace_client()

    provisioned = load_config(None, env={}, overrides={"database.host": "h", "database.instance_name": "ca-db"})
    assert lakebase_token_minter(provisioned.database, w)() == "instance-token"
    request = fake_databricks.calls("/api/2.0/database/credentials")[0]
    assert request.json["instance_names"] == ["ca-db"]
    assert request.headers["authorization"] == "Bearer dapi-test-token"

    autoscaling = load_config(
        None,
        env={},
        overrides={"database.host": "h", "database.endpoint": "projects/p/branches/b/endpoints/e"},
    )
    assert lakebase_token_minter(autoscaling.database, w)() == "autoscaling-token"
    assert fake_databricks.calls("/api/2.0/postgres/credentials")[0].json["endpoint"] == (
        "projects/p/branches/b/endpoints/e"
    )


def test_lakebase_target_without_password_uses_oauth_and_current_user(
    fake_databricks: FakeDatabricks,
) -> None:
    fake_databricks.on("GET", "/api/2.0/preview/scim/v2/Me", {"userName": "someone@example.com"})
    fake_databricks.on("POST", "/api/2.0/database/credentials", {"token": "t1"})
    config = load_config(
        None, env={"PGHOST": "instance.database.cloud.databricks.com", "LAKEBASE_INSTANCE_NAME": "ca-db"}
    )
    target = resolve_target(config, env={}, workspace_factory=fake_databricks.workspace_client)
    assert target.kind == "lakebase"
    assert "user=someone@example.com" in target.conninfo and "sslmode=require" in target.conninfo
    assert target.password is not None and target.password() == "t1"
    assert "someone@example.com (OAuth)" in target.description


def test_a_provisioned_host_given_as_the_autoscaling_endpoint_is_a_clear_error() -> None:
    """An app's valueFrom on a Lakebase Provisioned ``database`` resource is the instance's host, not an
    endpoint path (Databricks Apps docs, "valueFrom reference"): the LAKEBASE_ENDPOINT line of app.yaml left
    in place after switching to Provisioned must say what to set instead, before any workspace call."""
    host = "instance-1234.database.cloud.databricks.com"
    config = load_config(None, env={"PGHOST": host, "PGUSER": "app-sp", "LAKEBASE_ENDPOINT": host})
    with pytest.raises(ConfigError, match=r"looks like a host name.*LAKEBASE_INSTANCE_NAME"):
        resolve_target(config, env={}, workspace_factory=lambda: pytest.fail("no workspace call"))
    garbled = load_config(None, env={"PGHOST": host, "LAKEBASE_ENDPOINT": "projects/p/branches/b"})
    with pytest.raises(ConfigError, match="projects/<project>/branches/<branch>/endpoints/<endpoint>"):
        resolve_target(garbled, env={}, workspace_factory=lambda: pytest.fail("no workspace call"))


def test_an_instance_name_wins_over_the_provisioned_host_in_lakebase_endpoint(
    fake_databricks: FakeDatabricks,
) -> None:
    """The README's Provisioned swap: LAKEBASE_INSTANCE_NAME set, the valueFrom host still in LAKEBASE_ENDPOINT."""
    fake_databricks.on("POST", "/api/2.0/database/credentials", {"token": "t-instance"})
    host = "instance-1234.database.cloud.databricks.com"
    config = load_config(
        None,
        env={"PGHOST": host, "PGUSER": "app-sp", "LAKEBASE_ENDPOINT": host, "LAKEBASE_INSTANCE_NAME": "ca-db"},
    )
    target = resolve_target(config, env={}, workspace_factory=fake_databricks.workspace_client)
    assert target.password is not None and target.password() == "t-instance"
    assert fake_databricks.calls("/api/2.0/database/credentials")[0].json["instance_names"] == ["ca-db"]


def test_password_from_environment_skips_oauth() -> None:
    config = load_config(None, env={"LAKEBASE_HOST": "db.example.com", "LAKEBASE_USER": "me"})
    target = resolve_target(
        config,
        env={"LAKEBASE_PASSWORD": "secret"},
        workspace_factory=lambda: pytest.fail("no workspace needed"),
    )
    assert target.kind == "postgres" and target.password is not None and target.password() == "secret"
    assert "secret" not in target.conninfo and "secret" not in target.description


def test_open_database_migrates(config, pg_env) -> None:  # type: ignore[no-untyped-def]
    with open_database(config, env=pg_env) as db:
        assert db.status()["schema_version"] == LATEST_VERSION


def _unprivileged_python() -> list[str] | None:
    """A command running this venv's packages as the ``nobody`` user, or None where that is impossible here
    (not root, no runuser, no system Python of this minor version, or the code is not readable by others)."""
    import os
    import shutil

    system_python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if os.geteuid() != 0 or not shutil.which("runuser") or not os.path.exists(system_python):
        return None
    import psycopg as psycopg_module

    import context_assistant

    paths = [str(Path(psycopg_module.__file__).parents[1]), str(Path(context_assistant.__file__).parents[1])]
    command = [
        "runuser",
        "-u",
        "nobody",
        "--",
        "env",
        f"PYTHONPATH={os.pathsep.join(paths)}",
        "HOME=/tmp",
        system_python,
    ]
    probe = subprocess.run(
        [*command, "-c", "import context_assistant.storage.db"], capture_output=True, timeout=60
    )
    return command if probe.returncode == 0 else None


def test_embedded_server_starts_as_a_normal_user() -> None:
    """As root the server runs as a ``pgserver`` user (every other test); as anyone else it runs as that user.
    The start/attach lock lives in the data directory, so a lock root created elsewhere cannot block it."""
    import tempfile

    command = _unprivileged_python()
    if command is None:
        pytest.skip("needs root, runuser and a system Python matching this one to run a test as 'nobody'")
    base = Path(tempfile.mkdtemp(prefix="ca-nobody-", dir="/tmp"))
    base.chmod(0o777)
    code = (
        "from context_assistant.core.config import load_config; from context_assistant.storage.db import open_database;"
        " from context_assistant.storage.targets import EmbeddedPostgres;"
        f" cfg = load_config(None, env={{}}, overrides={{'data_dir': {str(base / 'state')!r}}});"
        " db = open_database(cfg); print(db.status()['kind'], db.status()['schema_version'] > 0); db.close();"
        " print(EmbeddedPostgres(cfg.data_path).stop())"
    )
    try:
        result = subprocess.run([*command, "-c", code], capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["embedded", "True", "True"]
        assert (base / "state" / "postgres").stat().st_uid != 0  # the user's own server, not root's
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _with_extra_migration(monkeypatch: pytest.MonkeyPatch) -> Migration:
    """A pending migration that needs an exclusive lock on ``sessions`` (as an ALTER TABLE does)."""
    import context_assistant.storage.db as db_module
    import context_assistant.storage.db_schema as schema_module

    extra = Migration(LATEST_VERSION + 1, "test: a column on sessions", "ALTER TABLE sessions ADD COLUMN x int")
    for module in (db_module, schema_module):
        monkeypatch.setattr(module, "MIGRATIONS", (*MIGRATIONS, extra))
    monkeypatch.setattr(db_module, "MIGRATION_LOCK_TIMEOUT_SECONDS", 0.2)
    return extra


class _ReleasingClock(FakeClock):
    """Sleeps instantly; the first sleep (the first retry's backoff) ends the other transaction."""

    def __init__(self, release: Callable[[], None]) -> None:
        super().__init__()
        self.release = release

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.release()


def test_a_migration_waits_for_a_busy_table_then_applies(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A serving app's open transaction holds a lock on a table the migration alters: the migration gives up
    after its lock timeout instead of queueing every later query behind its DDL, logs one line, and tries
    again after a backoff; once the transaction ends it applies. Real Postgres, two real sessions."""
    with fresh_db(pg_server, "migrate_busy") as db:
        db.migrate(vector=False)
        extra = _with_extra_migration(monkeypatch)
        holder = psycopg.connect(pg_server.uri("migrate_busy"))
        holder.execute("SELECT count(*) FROM context_assistant.sessions")  # an open transaction: ACCESS SHARE
        clock = _ReleasingClock(holder.rollback)
        busy = Database(Target("postgres", pg_server.uri("migrate_busy"), "busy"), max_size=2, clock=clock)
        try:
            with caplog.at_level(logging.WARNING):
                applied = busy.migrate(vector=False)
        finally:
            busy.close()
            holder.close()
        assert [m.version for m in applied] == [extra.version]
        assert len(clock.sleeps) == 1
        assert [r.getMessage() for r in caplog.records if "in use by another transaction" in r.getMessage()]
    pg_server.drop_database("migrate_busy")


def test_a_table_that_stays_busy_is_a_clear_error_and_changes_nothing(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_db(pg_server, "migrate_stuck") as db:
        db.migrate(vector=False)
        before = db.status()["schema_version"]
        _with_extra_migration(monkeypatch)
        holder = psycopg.connect(pg_server.uri("migrate_stuck"))
        holder.execute("SELECT count(*) FROM context_assistant.sessions")
        stuck = Database(
            Target("postgres", pg_server.uri("migrate_stuck"), "stuck"), max_size=2, clock=FakeClock()
        )
        try:
            with pytest.raises(DatabaseError, match="stayed in use by other transactions") as info:
                stuck.migrate(vector=False)
            assert "pg_stat_activity" in str(info.value) and "nothing was changed" in str(info.value)
        finally:
            stuck.close()
            holder.close()
        assert db.status()["schema_version"] == before
        with db.connection() as conn:  # the column was not added
            assert (
                conn.execute(
                    "SELECT count(*) FROM information_schema.columns WHERE table_name = 'sessions' AND column_name = 'x'"
                ).fetchone()[0]
                == 0
            )
    pg_server.drop_database("migrate_stuck")


def test_a_pending_migration_the_code_serves_without_does_not_stop_a_role_that_only_checks(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an upgrade is deployed, the app (which may not migrate) keeps serving until the owner's setup runs
    when the pending migrations only change how a guarantee is kept or how fast (Migration.serving_needs_it)."""
    import context_assistant.storage.db as db_module
    import context_assistant.storage.db_schema as schema_module
    from context_assistant.storage.db import SchemaNotReady

    def with_migrations(*extra: Migration) -> None:
        for module in (db_module, schema_module):
            monkeypatch.setattr(module, "MIGRATIONS", (*MIGRATIONS, *extra))

    with fresh_db(pg_server, "migrate_optional") as db:
        db.migrate(vector=False)
        optional = Migration(
            LATEST_VERSION + 1,
            "test: an index",
            "CREATE INDEX sessions_title ON sessions (title)",
            serving_needs_it=False,
        )
        with_migrations(optional)
        db.check_schema(vector=False)  # serves as it is
        needed = Migration(LATEST_VERSION + 2, "test: a column", "ALTER TABLE sessions ADD COLUMN x int")
        with_migrations(optional, needed)
        with pytest.raises(SchemaNotReady, match=f"at version {LATEST_VERSION}, .* needs {LATEST_VERSION + 2}"):
            db.check_schema(vector=False)
        assert [m.version for m in db.migrate(vector=False)] == [optional.version, needed.version]  # the owner
        db.check_schema(vector=False)
    pg_server.drop_database("migrate_optional")
