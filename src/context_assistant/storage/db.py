"""The connection pool to PostgreSQL (where to connect, and with which credentials: targets.py).

One pool per process. Lakebase accepts a Databricks OAuth token as the password; tokens live one hour, so new
connections get a token at most 15 minutes old and connections are retired well before the hour is up.

Every table lives in one schema (``database.schema``), set as ``search_path`` on each pooled connection. Only
the role that owns the database changes it (see db_schema.py): ``open_database`` migrates when this role is
the owner and otherwise only checks, answering :class:`SchemaNotReady` (which names the job to run) until the
owner's setup has created, migrated and granted it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg_pool import ConnectionPool, PoolTimeout

from ..core.clock import REAL_CLOCK, Clock
from ..core.config import Config
from ..core.retries import RetriesExhausted, retry_call
from ..core.workspace import workspace_client
from .db_schema import DEFAULT_SCHEMA, SetupReport, grant_usage, inspect_schema, prepare_schema
from .migrations import MIGRATIONS, Migration
from .pool_logs import install_one_line_logs
from .targets import DatabaseError, Target, resolve_target

log = logging.getLogger(__name__)

# Lakebase tokens expire after an hour; retire connections after 45 minutes (the pool adds up to 5% jitter).
CONNECTION_MAX_LIFETIME = 45 * 60
MIGRATION_LOCK_KEY = 0x0C0A5517  # advisory lock id shared by every process migrating this schema
MIGRATION_LOCK_TIMEOUT_SECONDS = 5.0  # how long one migration attempt waits for a table lock
MIGRATION_LOCK_ATTEMPTS = 6  # then a clear error (about a minute in all, with the backoff)

# A pooled connection idle longer than this is health-checked before it is handed out.
IDLE_CHECK_SECONDS = 5.0
AUTH_FAILED = {"28P01", "28000"}  # invalid_password, invalid_authorization_specification
# While the schema is not ready for this role, look again at most this often (an app started before the
# first job run becomes usable once the job's setup task has run, without a restart).
SCHEMA_RECHECK_SECONDS = 5.0

TCP_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 5}


def scalar(conn: psycopg.Connection, query: str | sql.SQL | sql.Composed, params: Params | None = None) -> Any:
    """The first value of the one row a query always returns (``count(*)``, ``to_regclass``, ``SHOW``, a lock
    attempt); a missing row is a broken server, not a result."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise DatabaseError(f"the database answered no row to: {query!r}")
    return row[0]


# The connection of the ``Database.unit()`` open in this context (thread, or step of a generator), if any.
_UNIT: ContextVar[tuple[Database, psycopg.Connection] | None] = ContextVar(
    "context_assistant_db_unit", default=None
)


class MostRecentFirstPool(ConnectionPool):
    """A psycopg pool that hands out the connection returned last (LIFO), as PgBouncer does by default and
    SQLAlchemy's ``pool_use_lifo`` does: psycopg_pool hands out the one idle longest (FIFO), so a process that
    once needed two connections (a nested checkout during start-up) alternates between them for good, and
    each statement lands on a backend whose caches the other one warmed. Measured on the append benchmark
    (two connections in the pool): 100-message appends 1.50–1.56 → 1.37–1.45 ms a call. The
    connections left idle age out after ``max_idle``, which also spares a Lakebase endpoint idle sessions.

    The swap is the pool's own critical section (it holds its lock around ``_get_ready_connection``); should a
    later psycopg_pool store idle connections differently, this falls back to its order, never to an error."""

    def _get_ready_connection(self, timeout: float | None) -> Any:
        conn = super()._get_ready_connection(timeout)
        idle = getattr(self, "_pool", None)
        if conn is not None and idle and hasattr(idle, "appendleft"):
            idle.appendleft(conn)  # back where it was: the longest idle, the first to close after max_idle
            conn = idle.pop()  # the most recently returned
        return conn


class SchemaNotReady(DatabaseError):
    """The schema is missing, behind, or not usable by this role; the message names the job or command that
    fixes it (the owner's setup), instead of a Postgres permission error halfway through a request."""


# ---------------------------------------------------------------------------------------------------------
# The pool


class Database:
    """A connection pool plus the schema it serves."""

    VECTOR_EXTENSION = "vector"

    def __init__(
        self,
        target: Target,
        *,
        schema: str = DEFAULT_SCHEMA,
        min_size: int = 1,
        max_size: int = 10,
        max_lifetime: float = CONNECTION_MAX_LIFETIME,
        open_timeout: float = 30.0,
        clock: Clock = REAL_CLOCK,
        connection_class: type[psycopg.Connection[Any]] = psycopg.Connection,
    ) -> None:
        self.target = target
        self.schema = schema
        self._clock = clock
        self._vector_ready = False
        # Whether this process may change the schema (create run-time tables such as the recall index): the
        # owner may; a role that only uses the schema (the app) may not. Set by open_database.
        self.may_change_schema = True
        self.schema_recheck_seconds = SCHEMA_RECHECK_SECONDS
        self._schema_error: SchemaNotReady | None = None
        self._schema_vector = False
        self._schema_checked_at = 0.0
        self._schema_lock = threading.Lock()
        self.setup_report = SetupReport(schema)  # what this process created, moved, migrated and granted
        install_one_line_logs()  # the pool's reconnect warnings: one line, one per outage (pool_logs.py)
        self.pool = MostRecentFirstPool(
            target.conninfo,
            connection_class=connection_class,  # tests count statements and transactions with a subclass
            kwargs=self._connection_kwargs,
            min_size=min_size,
            max_size=max_size,
            max_lifetime=max_lifetime,
            max_idle=5 * 60,
            check=self._check_if_idle,
            configure=self._configure,
            name="context-assistant",
            open=False,
        )
        self._refuse_bad_credentials(min(open_timeout, 5.0))
        try:
            self.pool.open(wait=True, timeout=open_timeout)
        except PoolTimeout as exc:
            self.pool.close()
            raise DatabaseError(
                f"could not connect to {target.description} within {open_timeout:g}s: "
                f"{self._last_connect_error() or exc}. Check the host, port, user and credentials "
                "(database.* in config.yaml, PG*/LAKEBASE_* environment variables)."
            ) from None

    def _refuse_bad_credentials(self, timeout: float) -> None:
        """One connection before the pool: a wrong password or an unknown role fails at once, in one line,
        instead of the pool retrying (and warning) until its open timeout. Other problems (a server still
        starting, a network blip) are left to the pool's retries."""
        try:
            psycopg.connect(
                self.target.conninfo, **self._connection_kwargs(), connect_timeout=max(1, int(timeout))
            ).close()
        except psycopg.OperationalError as exc:
            if getattr(exc, "sqlstate", None) in AUTH_FAILED or "authentication failed" in str(exc):
                raise DatabaseError(
                    f"could not connect to {self.target.description}: {_one_line(exc)}. Check the user and "
                    "password (database.user, PGPASSWORD / LAKEBASE_PASSWORD)."
                ) from None
        except Exception:  # a token that cannot be minted, ...: the pool reports it as before
            return

    def set_wait_timeout(self, seconds: float) -> None:
        """How long a request waits for a connection before failing (the pool's default; 30 s otherwise):
        the web app sets it to web.health_timeout_seconds so requests during an outage fail fast."""
        self.pool.timeout = seconds

    def _last_connect_error(self) -> str:
        try:
            with psycopg.connect(self.target.conninfo, **self._connection_kwargs(), connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return str(exc).strip().splitlines()[0]
        return ""

    def _connection_kwargs(self) -> dict[str, Any]:
        """Called by the pool for every new connection, so each gets a current token."""
        kwargs: dict[str, Any] = {"application_name": "context-assistant"}
        if self.target.kind != "embedded":
            kwargs.update(TCP_KEEPALIVES)
        if self.target.password is not None:
            kwargs["password"] = self.target.password()
        return kwargs

    def _check_if_idle(self, conn: psycopg.Connection) -> None:
        """Health-check a connection on checkout only if it sat idle a while: a connection used moments ago
        is alive, and a round trip per checkout would tax every query. One idle longer (a server restart, a
        network drop, Lakebase scaling to zero) is checked, and replaced by the pool if it is dead."""
        returned_at = getattr(conn, "_ca_returned_at", None)
        if returned_at is None or time.monotonic() - returned_at > IDLE_CHECK_SECONDS:
            ConnectionPool.check_connection(conn)

    def _configure(self, conn: psycopg.Connection) -> None:
        # public stays on the path for an extension created there (pgvector's types) before the schema existed.
        conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(self.schema)))
        if self._vector_ready:
            from pgvector.psycopg import register_vector

            register_vector(conn)
        conn.commit()

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A pooled connection; the block is one transaction, committed on success, rolled back on error.

        A server that cannot be reached (no connection within ``timeout``, or one lost mid-statement) is a
        :class:`DatabaseError` here, the one place that knows psycopg's and the pool's exceptions for it.
        Raises :class:`SchemaNotReady` while the schema is not usable by this role (see ``require_schema``).
        """
        unit = _UNIT.get()
        if unit is not None and unit[0] is self:
            yield from _in_unit(unit[1])
            return
        if self._schema_error is not None:
            self._recheck_schema()
        with self._pooled(timeout) as conn:
            yield conn

    @contextmanager
    def unit(self, timeout: float | None = None) -> Iterator[None]:
        """One pooled connection and one transaction for every :meth:`connection` block inside (in this thread
        or context): a turn's reads (history, recall, retrieval) cost one checkout and one BEGIN/COMMIT
        instead of one per block, without passing a connection through every layer.

        Meant for reads. A block inside that fails with a database error rolls the shared transaction back
        (what it read is already in Python) so the blocks after it still run; nested units join the outer one.
        """
        current = _UNIT.get()
        if current is not None and current[0] is self:
            yield
            return
        with self.connection(timeout) as conn:
            token = _UNIT.set((self, conn))
            try:
                yield
            finally:
                _UNIT.reset(token)

    @contextmanager
    def autocommit(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A pooled connection in autocommit mode, for one statement that is atomic on its own (a turn's
        writes): one round trip, no BEGIN/COMMIT, locks held only for the statement."""
        if self._schema_error is not None:
            self._recheck_schema()
        with self._pooled(timeout) as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                if not conn.closed:
                    conn.autocommit = False

    @contextmanager
    def _pooled(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """:meth:`connection` without the schema check: what reads the schema's state (and sets it up) uses."""
        try:
            with self.pool.connection(timeout=timeout) as conn:
                try:
                    yield conn
                finally:
                    conn._ca_returned_at = time.monotonic()  # type: ignore[attr-defined]  # see _check_if_idle
        except PoolTimeout as exc:
            raise DatabaseError(f"the database is unavailable, try again shortly: {_one_line(exc)}") from exc
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"the database is unavailable, try again shortly: {_one_line(exc)}") from exc

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema --------------------------------------------------------------------------------------

    def migrate(self, *, vector: bool = False) -> list[Migration]:
        """As the schema's owner: create the schema (and move an older version's tables out of ``public``),
        then apply pending migrations; with ``vector`` also those that need pgvector. Returns what ran.

        Reads the schema's state first and does no DDL at all when nothing is pending.
        """
        return self._migrate(vector, self.setup_report)

    def _migrate(self, vector: bool, report: SetupReport) -> list[Migration]:
        with self._pooled() as conn:
            state = inspect_schema(conn, self.schema)
        if state.ledger and not state.unusable_objects and not state.pending(vector):
            self._schema_ready(vector)
            return []
        if not state.is_owner:
            # A role with only CONNECT and CREATE on the database (an app's) could create the schema, and
            # would then own it and lock the real owner out: only the owner sets it up.
            raise DatabaseError(
                f"role {state.role} may not create or migrate schema {self.schema} in {self.target.description}: "
                f"it does not own the database (owner: {state.database_owner}). Run the setup as the database "
                "owner: the bundle's ingest job (databricks bundle run ingest_job), whose first task does it, "
                "or `context-assistant db setup` as that role"
            )
        ledger = sql.Identifier(self.schema, "schema_migrations")
        wanted = [m for m in MIGRATIONS if vector or not m.requires_vector]

        def apply_pending() -> list[Migration]:
            with self._pooled() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
                # A migration's DDL waits for every open transaction on its table, and every query after it
                # waits for the DDL: on a serving app's database, give up after a few seconds and try again
                # rather than stall every request behind a long transaction (a sync, a notebook).
                conn.execute(f"SET LOCAL lock_timeout = '{int(MIGRATION_LOCK_TIMEOUT_SECONDS * 1000)}ms'")
                prepare_schema(conn, self.schema, report)
                applied = {row[0] for row in conn.execute(sql.SQL("SELECT version FROM {}").format(ledger))}
                pending = [m for m in wanted if m.version not in applied]
                if any(m.requires_vector for m in pending):
                    self._check_vector_available(conn)
                for migration in pending:
                    conn.execute(migration.sql)
                    conn.execute(
                        sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(ledger),
                        (migration.version, migration.name),
                    )
                    log.info("applied migration %s: %s", migration.version, migration.name)
                return pending

        def waited(attempt: int, exc: BaseException, delay: float) -> None:
            log.warning(
                "migrating schema %s: a table is in use by another transaction (attempt %d); trying again in %.0fs",
                self.schema,
                attempt,
                delay,
            )

        try:
            pending = retry_call(
                apply_pending,
                is_transient=lambda exc: isinstance(exc.__cause__, psycopg.errors.LockNotAvailable),  # via _pooled
                attempts=MIGRATION_LOCK_ATTEMPTS,
                base_delay=2.0,
                max_delay=15.0,
                clock=self._clock,
                on_retry=waited,
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DatabaseError(
                f"role {state.role} may not create or migrate schema {self.schema} in "
                f"{self.target.description} ({str(exc).strip().splitlines()[0]}): run "
                "`context-assistant db setup` as the database owner, or the bundle's ingest job "
                "(databricks bundle run ingest_job), whose first task does it"
            ) from None
        except RetriesExhausted:
            raise DatabaseError(
                f"could not migrate schema {self.schema} in {self.target.description}: its tables stayed in use "
                f"by other transactions through {MIGRATION_LOCK_ATTEMPTS} attempts (nothing was changed). Find "
                "them in pg_stat_activity (a long sync, an idle-in-transaction session), let them finish, and "
                "run the setup again"
            ) from None
        if report.moved_from_public:
            log.warning("moved %s from schema public into %s", ", ".join(report.moved_from_public), self.schema)
        report.applied.extend(m.version for m in pending)
        self._schema_ready(vector)
        return pending

    def setup(self, *, vector: bool, grant_to: Sequence[str] = ()) -> SetupReport:
        """The owner's setup step: create and migrate the schema, then let each role in ``grant_to`` use it
        (USAGE on the schema, DML on its tables and sequences, default privileges for later tables)."""
        report = self.setup_report  # includes what open_database already did in this process
        self._migrate(vector, report)
        if grant_to:
            with self._pooled() as conn:
                try:
                    report.granted_to = grant_usage(conn, self.schema, grant_to)
                except LookupError as exc:
                    raise DatabaseError(str(exc)) from None
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise DatabaseError(
                        f"could not grant access to schema {self.schema} in {self.target.description} "
                        f"({str(exc).strip().splitlines()[0]}): run the setup as the database owner"
                    ) from None
        self.may_change_schema = True
        return report

    def check_schema(self, *, vector: bool) -> None:
        """Raise :class:`SchemaNotReady` unless this role can use the schema as it is (no DDL)."""
        with self._pooled() as conn:
            state = inspect_schema(conn, self.schema)
        problem = state.problem(vector, self.target.description)
        if problem is not None:
            raise SchemaNotReady(problem)
        self._schema_ready(vector)

    def is_owner(self) -> bool:
        """Whether this role owns the database (or the schema): the one that creates and migrates it."""
        with self._pooled() as conn:
            return inspect_schema(conn, self.schema).is_owner

    def require_schema(self, *, vector: bool) -> None:
        """Check the schema now; if it is not ready, every ``connection()`` raises :class:`SchemaNotReady`
        and looks again at most every ``schema_recheck_seconds``, until the owner's setup has run."""
        self._schema_vector = vector
        self._schema_checked_at = self._clock.monotonic()
        try:
            self.check_schema(vector=vector)
        except SchemaNotReady as exc:
            self._schema_error = exc
            log.warning("%s", exc)

    def _recheck_schema(self) -> None:
        with self._schema_lock:
            error = self._schema_error
            if error is None:
                return
            if self._clock.monotonic() - self._schema_checked_at >= self.schema_recheck_seconds:
                self._schema_checked_at = self._clock.monotonic()
                try:
                    self.check_schema(vector=self._schema_vector)
                    return
                except SchemaNotReady as exc:
                    self._schema_error = error = exc
        raise SchemaNotReady(str(error))

    def _schema_ready(self, vector: bool) -> None:
        self._schema_error = None
        self._schema_vector = vector
        if vector:
            self._enable_vector_adapters()

    def _check_vector_available(self, conn: psycopg.Connection) -> None:
        row = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = %s", (self.VECTOR_EXTENSION,)
        ).fetchone()
        if row is None:
            raise DatabaseError(
                f"the pgvector extension is not available on {self.target.description}. RAG and memory recall "
                "store embeddings with pgvector: install it on the server (on Lakebase it is available; run "
                "CREATE EXTENSION vector as the database owner), or set rag.enabled: false and memory.recall: false."
            )

    def _enable_vector_adapters(self) -> None:
        """Register pgvector types on pooled connections (they are opened before the extension existed)."""
        if self._vector_ready:
            return
        self._vector_ready = True
        # Connections opened before the extension existed lack the adapters: replace them.
        self.pool.drain()

    def status(self) -> dict[str, Any]:
        """What ``db status`` shows: which server, its versions, the schema and its version, and whether this
        role can use it (answers even when it cannot)."""
        with self._pooled() as conn:
            version = scalar(conn, "SHOW server_version")
            vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            available = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
            state = inspect_schema(conn, self.schema)
        versions = sorted(state.applied)
        return {
            "kind": self.target.kind,
            "target": self.target.description,
            "server_version": version,
            "pgvector_version": vector[0] if vector else None,
            "pgvector_available": available[0] if available else None,
            "schema": self.schema,
            "role": state.role,
            "schema_owner": state.owner,
            "schema_version": max(versions) if versions else 0,
            "applied_migrations": versions,
            "latest_schema_version": MIGRATIONS[-1].version,
            "problem": state.problem(self._schema_vector, self.target.description),
        }


def open_database(
    config: Config,
    *,
    env: Mapping[str, str] | None = None,
    workspace_factory: Callable[[], Any] = workspace_client,
    clock: Clock = REAL_CLOCK,
    migrate: bool = True,
    vector: bool | None = None,
) -> Database:
    """Connect as the config says and make sure the schema is usable.

    The database's owner (the embedded server's user, a job run as the deployer) creates and migrates the
    schema itself when ``database.setup`` is ``auto``; any other role (the app) only checks it, and its
    connections raise :class:`SchemaNotReady` until the owner's setup has run. ``vector`` defaults to whether
    any feature that stores embeddings in Postgres is on.
    """
    target = resolve_target(config, env=env, workspace_factory=workspace_factory, clock=clock)
    db = Database(
        target,
        schema=config.database.schema,
        min_size=config.database.pool_min_size,
        max_size=config.database.pool_max_size,
        clock=clock,
    )
    if migrate:
        if vector is None:
            vector = wants_vector(config)
        try:
            if config.database.setup == "auto" and db.is_owner():
                db.migrate(vector=vector)
            else:
                db.may_change_schema = False
                db.require_schema(vector=vector)
        except Exception:
            db.close()
            raise
    return db


def wants_vector(config: Config) -> bool:
    """Whether any feature that stores embeddings in Postgres is on (so the pgvector migrations are needed)."""
    return (config.rag.enabled and config.rag.backend == "pgvector") or config.memory.recall


def _in_unit(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A :meth:`Database.connection` block joining the open unit's transaction."""
    try:
        yield conn
    except BaseException:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            conn.rollback()  # the unit's later blocks start a fresh transaction on the same connection
        raise


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
