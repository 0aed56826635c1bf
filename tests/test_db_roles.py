"""Two identities on one database, as on Lakebase: the deployer who owns it and an app that only uses it.

On the embedded Postgres, with real roles: ``ca_owner`` owns the database (on Lakebase the project's creator,
whom the jobs run as); ``ca_app`` has exactly what a Databricks App's database resource grants its service
principal, CONNECT and CREATE on the database, and nothing else (PUBLIC's default TEMP and CONNECT are
revoked, so nothing here works by accident through them); ``ca_stranger`` may connect and was granted
nothing. pgvector is installed by the cluster's superuser before the test, standing in for Lakebase, where
the database owner may create it (here only a superuser may: pgvector is not a trusted extension).

Both orders are run: the app started before the first job run (it answers 503 saying which job to run, then
works once the setup task has run, without a restart) and after. The documents are ingested by the real
ingest job on local Spark and synced by the real sync job as the owner; chat, sessions, recall, feedback and
search then run as the app through the real web server and the real CLI.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from psycopg import sql

from context_assistant import cli
from context_assistant.core.config import Config, save_config
from context_assistant.jobs import run_ingest_job, run_setup_job, run_sync_job
from context_assistant.services import Services
from context_assistant.storage.db import SchemaNotReady, open_database
from context_assistant.storage.migrations import LATEST_VERSION, MIGRATIONS
from context_assistant.web import create_app
from retrieval_support import HashingEmbedder
from web_support import PG_ENV, LiveServer

REPO = Path(__file__).resolve().parents[1]
OWNER, APP, STRANGER = "ca_owner", "ca_app", "ca_stranger"
SCHEMA = "context_assistant"


def admin(pg_server: Any, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(pg_server.uri(dbname), autocommit=True)


def create_role(conn: psycopg.Connection, role: str) -> None:
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))


@pytest.fixture
def lakebase_like(pg_server: Any) -> Iterator[str]:
    """A fresh database owned by OWNER with the app's grants exactly as Databricks Apps gives them."""
    name = pg_server.create_database("roles")  # from the template: drop it and make one owned by OWNER
    pg_server.drop_database(name)
    with admin(pg_server) as conn:
        for role in (OWNER, APP, STRANGER):
            create_role(conn, role)
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(OWNER)))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(sql.Identifier(name), sql.Identifier(APP))
        )
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(name), sql.Identifier(STRANGER))
        )
    with admin(pg_server, name) as conn:
        conn.execute("CREATE EXTENSION vector")  # in public, as the superuser (see the module docstring)
    yield name
    pg_server.drop_database(name)
    with admin(pg_server) as conn:  # default privileges of OWNER name APP: clear them so roles stay droppable
        for role in (APP, STRANGER):
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO postgres").format(sql.Identifier(role)))


@pytest.fixture
def as_role(make_config: Callable[..., Config], lakebase_like: str, tmp_path: Path) -> Callable[..., Config]:
    def config(role: str, **overrides: Any) -> Config:
        values = {
            "database__user": role,
            "database__name": lakebase_like,
            "memory__recall": True,
            "rag__embedding_model": "test-hashing-64",
            "data_dir": str(tmp_path / f"data-{role}"),
            **overrides,
        }
        return make_config(**values)

    return config


def hashing_services(config: Config) -> Services:
    """Services as the jobs, the app and the CLI build them, with the fast hashing embedder."""
    services = Services(config, env=PG_ENV)
    services.embedder = HashingEmbedder()  # type: ignore[misc]  (a cached_property, set before first use)
    return services


def run_job(job: Any, argv: list[str], **kwargs: Any) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = job(argv, out=out, env=PG_ENV, **kwargs)
    return code, json.loads(out.getvalue().splitlines()[-1])


@pytest.fixture(scope="module")
def chunk_table(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures ingested once by the real ingest job (Delta on local Spark; no Postgres involved)."""
    tables = tmp_path_factory.mktemp("tables")
    code, summary = run_job(
        run_ingest_job,
        [
            "--source",
            str(REPO / "fixtures" / "docs"),
            "--chunk-table",
            str(tables / "chunks"),
            "--documents-table",
            str(tables / "documents"),
            "--set",
            f"data_dir={tables / 'data'}",
        ],
        spark_factory=lambda config: spark,
    )
    assert code == 0, summary
    return tables / "chunks"


def owner_jobs(config: Config, tmp_path: Path, chunk_table: Path) -> dict[str, Any]:
    """The ingest job's Postgres tasks as the owner: setup_database (granting APP), then sync_index."""
    config_file = save_config(config, tmp_path / "owner.yaml")
    code, setup = run_job(
        run_setup_job, ["--config", str(config_file), "--grant-to", APP], services_factory=hashing_services
    )
    assert code == 0, setup
    code, sync = run_job(
        run_sync_job,
        ["--config", str(config_file), "--chunk-table", str(chunk_table)],
        services_factory=hashing_services,
    )
    assert code == 0, sync
    return {"setup": setup, "sync": sync}


class AppServer:
    """The web app as the app's role, on a real uvicorn server (no sync: the app never builds the index)."""

    def __init__(self, config: Config) -> None:
        self.services = hashing_services(config)
        self.server = LiveServer(create_app(self.services, warm_up=False))
        import httpx

        self.client = httpx.Client(base_url=self.server.url, timeout=30)

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.services.close()


@pytest.fixture
def app_server() -> Iterator[Callable[[Config], AppServer]]:
    started: list[AppServer] = []

    def start(config: Config) -> AppServer:
        started.append(AppServer(config))
        return started[-1]

    yield start
    for server in started:
        server.close()


def cli_run(config: Config, tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    """The real CLI in-process, with the role's config file (and a password so libpq, not OAuth, is used)."""
    path = save_config(config, tmp_path / f"cli-{config.database.user}.yaml")
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, PG_ENV), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--config", str(path), *argv])
    return code, out.getvalue(), err.getvalue()


def schema_exists(pg_server: Any, dbname: str) -> bool:
    with admin(pg_server, dbname) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)).fetchone() is not None


def use_everything_as_the_app(app: AppServer, app_config: Config, tmp_path: Path) -> None:
    """Chat (retrieval + recall + memory), sessions, feedback, recall and search, all as APP."""
    client = app.client
    first = client.post("/api/chat", json={"message": "When does the on-call rotation hand over?"})
    assert first.status_code == 200, first.text
    turn = first.json()
    assert turn["warnings"] == []  # search and recall ran (nothing degraded by a permission error)
    assert turn["sources"], "retrieval as the app found passages the owner's sync indexed"
    second = client.post("/api/chat", json={"message": "And the on-call escalation?"})
    assert second.status_code == 200 and second.json()["warnings"] == []

    sessions = client.get("/api/sessions").json()["sessions"]
    assert {s["id"] for s in sessions} == {turn["session_id"], second.json()["session_id"]}
    renamed = client.patch(f"/api/sessions/{turn['session_id']}", json={"title": "on-call"})
    assert renamed.status_code == 200, renamed.text
    feedback = client.post("/api/feedback", json={"message_id": turn["message_id"], "value": "up"})
    assert feedback.status_code == 200, feedback.text

    recalled = app.services.recall.recall(app_config.default_user, "on-call rotation hand over", top_k=3)
    assert any("rotation" in r.content for r in recalled)  # the app embedded its own turns (turn_index DML)

    code, out, err = cli_run(app_config, tmp_path, "search", "deploy reviewers", "--mode", "keyword", "--json")
    assert code == 0, err
    assert json.loads(out)["hits"], "BM25 search as the app through the CLI (the CLI has no hashing embedder)"
    code, out, err = cli_run(app_config, tmp_path, "sessions", "list", "--json")
    assert code == 0, err
    gone = client.delete(f"/api/sessions/{second.json()['session_id']}")
    assert gone.status_code == 204


@pytest.mark.spark
@pytest.mark.slow
def test_app_started_before_the_first_job_run_waits_then_works(
    as_role, app_server, chunk_table, pg_server, lakebase_like, tmp_path
) -> None:
    app_config = as_role(APP, database__setup="never")  # as app.yaml configures it
    app = app_server(app_config)

    health = app.client.get("/health")
    assert health.status_code == 503
    reason = health.json()["database"]
    assert f"schema {SCHEMA} does not exist in" in reason
    assert "databricks bundle run ingest_job" in reason and f"--grant-to {APP}" in reason
    chat = app.client.post("/api/chat", json={"message": "hello?"})
    assert chat.status_code == 503 and chat.json() == {"error": reason, "request_id": chat.headers["x-request-id"]}
    code, _, err = cli_run(app_config, tmp_path, "sessions", "list")
    assert code == 1 and err.strip() == f"error: {reason}"  # the CLI says the same, in one line
    assert not schema_exists(pg_server, lakebase_like)  # the app changed nothing, though it could have

    jobs = owner_jobs(as_role(OWNER), tmp_path, chunk_table)
    setup = jobs["setup"]["result"]
    assert setup["created_schema"] is True and setup["granted_to"] == [APP]
    assert setup["applied_migrations"] == [m.version for m in MIGRATIONS]
    assert jobs["sync"]["result"]["added"] > 0

    app.services.db.schema_recheck_seconds = 0  # the app looks again (every 5 s by default): no restart
    assert app.client.get("/health").json() == {
        "status": "ok",
        "database": "ok",
        "tracing": "off: tracing.enabled is false",
    }
    use_everything_as_the_app(app, app_config, tmp_path)


@pytest.mark.spark
@pytest.mark.slow
def test_app_started_after_the_job_run_works_at_once(
    as_role, app_server, chunk_table, lakebase_like, pg_server, tmp_path
) -> None:
    owner_jobs(as_role(OWNER), tmp_path, chunk_table)
    app_config = as_role(APP)  # database.setup: auto — the app is not the owner, so it only checks
    app = app_server(app_config)
    assert app.client.get("/health").status_code == 200
    use_everything_as_the_app(app, app_config, tmp_path)

    # The owner's later runs: nothing pending, so no DDL at all (an event trigger would refuse any).
    with admin(pg_server, lakebase_like) as conn:
        conn.execute(
            """CREATE FUNCTION refuse_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'DDL during a run with nothing to migrate: %', tg_tag; END $$"""
        )
        conn.execute("CREATE EVENT TRIGGER refuse_ddl ON ddl_command_start EXECUTE FUNCTION refuse_ddl()")
    try:
        for role in (OWNER, APP):
            with open_database(as_role(role), env=PG_ENV) as db, db.connection() as conn:
                assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] >= 1
    finally:
        with admin(pg_server, lakebase_like) as conn:
            conn.execute("DROP EVENT TRIGGER refuse_ddl")


def test_a_role_without_a_grant_is_refused_with_a_clear_message(as_role, app_server, tmp_path) -> None:
    with open_database(as_role(OWNER), env=PG_ENV) as db:  # the owner on auto: creates and migrates
        assert db.status()["schema_version"] == LATEST_VERSION
        db.setup(vector=True, grant_to=[APP])
    stranger = as_role(STRANGER)
    app = app_server(stranger)
    health = app.client.get("/health")
    assert health.status_code == 503
    assert health.json()["database"].startswith(f"role {STRANGER} may not use schema {SCHEMA} in ")
    assert f"--grant-to {STRANGER}" in health.json()["database"]
    code, _, err = cli_run(stranger, tmp_path, "sessions", "list")
    assert code == 1 and f"error: role {STRANGER} may not use schema {SCHEMA}" in err
    # ... and the app, granted, is fine.
    assert app_server(as_role(APP)).client.get("/health").status_code == 200


def test_owner_on_never_only_checks_and_the_setup_command_does_it(as_role, tmp_path) -> None:
    owner = as_role(OWNER, database__setup="never")
    with (
        open_database(owner, env=PG_ENV) as db,
        pytest.raises(SchemaNotReady, match="does not exist"),
        db.connection(),
    ):
        pass
    code, out, err = cli_run(owner, tmp_path, "db", "setup", "--grant-to", APP, "--skip-recall")
    assert code == 0, err
    assert f"Schema:   {SCHEMA} (created)" in out
    assert "Granted USAGE on the schema, read/write on its tables and sequences" in out and APP in out
    code, out, err = cli_run(owner, tmp_path, "db", "setup", "--json", "--skip-recall")
    assert code == 0, err
    again = json.loads(out)
    assert again["created_schema"] is False and again["applied_migrations"] == [] and again["granted_to"] == []


def test_granting_a_role_that_does_not_exist_says_to_deploy_first(as_role, tmp_path) -> None:
    code, _, err = cli_run(
        as_role(OWNER), tmp_path, "db", "setup", "--grant-to", "0000-no-such-app", "--skip-recall"
    )
    assert code == 1
    assert "there is no Postgres role '0000-no-such-app'" in err and "databricks bundle deploy" in err


def test_the_app_role_cannot_set_up_and_is_told_who_can(as_role, tmp_path) -> None:
    code, _, err = cli_run(as_role(APP), tmp_path, "db", "setup", "--skip-recall")
    assert code == 1
    assert f"role {APP} may not create or migrate schema {SCHEMA}" in err
    assert "as the database owner" in err


# What a database made before the schema existed can hold: the migrations of that era (later ones, such as 6's
# triggers whose functions keep the schema's search_path, are only ever created inside the schema).
LEGACY_LAYOUT_MIGRATIONS = tuple(m for m in MIGRATIONS if m.version <= 5)


def test_a_database_from_before_the_schema_moves_into_it_with_its_data(pg_server, make_config) -> None:
    """Local databases made by earlier versions have their tables in public: the owner's first open moves them
    (ALTER ... SET SCHEMA keeps rows, indexes, identity sequences and triggers) and nothing is lost."""
    name = pg_server.create_database("legacy")
    pg_server.drop_database(name)
    with admin(pg_server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with admin(pg_server, name) as conn:  # the old layout: everything in public
            conn.execute(
                "CREATE TABLE schema_migrations (version int PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for migration in LEGACY_LAYOUT_MIGRATIONS:
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            conn.execute(
                "INSERT INTO sessions (id, user_id, title, created_at, updated_at) VALUES ('s1', 'ana', 'old', now(), now())"
            )
            conn.execute(
                "INSERT INTO conversations (session_id, user_id, role, content, timestamp) "
                "VALUES ('s1', 'ana', 'user', 'kept across the upgrade', now())"
            )
        config = make_config(database__name=name)
        with open_database(config, env=PG_ENV) as db:
            assert db.setup_report.moved_from_public[:3] == ["schema_migrations", "sessions", "conversations"]
            assert "bm25_track()" in db.setup_report.moved_from_public
            # The ledger came along: only what came after the public layout is applied, in the schema.
            assert db.setup_report.applied == [m.version for m in MIGRATIONS if m not in LEGACY_LAYOUT_MIGRATIONS]
            from context_assistant.storage.memory import ConversationStore

            store = ConversationStore(db)
            (session,) = store.list_sessions("ana")
            assert session.title == "old"
            assert [m.content for m in store.messages("ana", "s1")] == ["kept across the upgrade"]
            assert store.append("ana", "s1", "assistant", "new turns get ids after the old ones").id > 1
        with admin(pg_server, name) as conn:
            assert conn.execute("SELECT to_regclass('public.sessions')").fetchone()[0] is None
            assert conn.execute("SELECT count(*) FROM context_assistant.conversations").fetchone()[0] == 2
    finally:
        pg_server.drop_database(name)
