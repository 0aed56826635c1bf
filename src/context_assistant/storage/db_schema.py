"""The schema's two identities: the owner who creates and migrates it, and the roles that only use it.

On Databricks the jobs run as the deployer, who owns the Lakebase database, and the app runs as its service
principal, whose Postgres role the app's database resource grants only CONNECT and CREATE on the database.
So every table lives in one dedicated schema (``database.schema``, default ``context_assistant``), which
only the owner changes:

* :func:`inspect_schema` reads, with no DDL at all, whether the schema exists, which migrations it has and
  whether the current role may use every table in it;
* :func:`prepare_schema` (owner) creates the schema, moves the tables of an older version out of ``public``
  and creates the migration ledger; the migrations themselves run in ``Database.migrate``;
* :func:`grant_usage` (owner) gives another role USAGE on the schema, DML on its tables and sequences, and
  the same on tables the owner creates later (default privileges: a model change rebuilds ``rag_chunks``);
* ``SchemaState.problem`` (raised as ``db.SchemaNotReady``) says what is missing and which job or command fixes it, instead of the Postgres
  ``permission denied`` a role would otherwise meet halfway through a request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .migrations import MIGRATIONS, Migration

DEFAULT_SCHEMA = "context_assistant"

# What the setup step is called wherever a message points at it.
SETUP_JOB_HINT = "run the bundle's ingest job (databricks bundle run ingest_job; its first task, setup_database"
SETUP_COMMAND = "context-assistant db setup"

# Tables and functions an earlier version created in ``public``; moved into the schema by the owner's setup.
LEGACY_TABLES = (
    "schema_migrations",
    "sessions",
    "conversations",
    "vector_spaces",
    "bm25_terms",
    "bm25_stats",
    "rag_chunks",
    "turn_index",
)
LEGACY_FUNCTIONS = ("bm25_track()", "bm25_or_query(text)")

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
# Lakebase's administrative role (all privileges on every database); its members may set the schema up too.
LAKEBASE_ADMIN_ROLE = "databricks_superuser"


@dataclass(frozen=True)
class SchemaState:
    """What one role sees of the schema; read by :func:`inspect_schema` without changing anything."""

    schema: str
    role: str
    database: str
    exists: bool
    owner: str | None
    usable: bool  # USAGE on the schema
    is_owner: bool  # member of the database's or the schema's owner (or Lakebase's admin role): may set up
    database_owner: str = ""
    applied: frozenset[int] = frozenset()
    ledger: bool = False  # the schema has its schema_migrations table
    unusable_objects: tuple[str, ...] = ()  # tables / sequences this role may not read and write
    legacy_public: bool = False  # an older version's tables are in public
    vector_installed: bool = False

    def pending(self, vector: bool) -> list[Migration]:
        """The migrations the owner's setup would apply (those needing pgvector only with ``vector``)."""
        return [m for m in MIGRATIONS if (vector or not m.requires_vector) and m.version not in self.applied]

    def missing(self, vector: bool) -> list[Migration]:
        """The pending migrations this version's code cannot serve without."""
        return [m for m in self.pending(vector) if m.serving_needs_it]

    def ready(self, vector: bool) -> bool:
        return (
            self.exists and self.usable and self.ledger and not self.missing(vector) and not self.unusable_objects
        )

    def problem(self, vector: bool, where: str) -> str | None:
        """One line saying why this role cannot use the schema and what fixes it; None when it can."""
        fix = (
            f"{SETUP_JOB_HINT}, creates and migrates it and grants the app's role access), or run "
            f"`{SETUP_COMMAND} --grant-to {quote_role(self.role)}` as the database owner"
        )
        if not self.exists:
            if self.legacy_public:
                return (
                    f"the tables of an earlier version are in schema public, not in {self.schema}, in {where}: "
                    f"run `{SETUP_COMMAND}` as their owner to move them"
                )
            return f"schema {self.schema} does not exist in {where}: {fix}"
        if not self.usable:
            return f"role {self.role} may not use schema {self.schema} in {where}: {fix}"
        if not self.ledger:
            return f"schema {self.schema} in {where} has no tables yet: {fix}"
        missing = self.missing(vector)
        if missing:
            have = max(self.applied, default=0)
            return (
                f"schema {self.schema} in {where} is at version {have}, this version of context-assistant needs "
                f"{missing[-1].version}: {fix}"
            )
        if self.unusable_objects:
            names = ", ".join(self.unusable_objects[:5]) + (" ..." if len(self.unusable_objects) > 5 else "")
            return f"role {self.role} may not read and write {names} in schema {self.schema} in {where}: {fix}"
        return None


def _first(cursor: psycopg.Cursor[Any]) -> Any:
    """The first value of the one row a catalog query always returns."""
    row = cursor.fetchone()
    assert row is not None, "a catalog query returned no row"
    return row[0]


def quote_role(role: str) -> str:
    """A role as a user would type it on a command line (service principal ids are plain UUIDs)."""
    return role if re.match(r"^[A-Za-z0-9_.@-]+$", role) else repr(role)


def inspect_schema(conn: psycopg.Connection, schema: str) -> SchemaState:
    """Read the schema's state as the connection's role sees it. Runs only SELECTs (no DDL, no locks)."""
    row = conn.execute(
        """SELECT current_user, current_database(), n.oid IS NOT NULL, pg_get_userbyid(n.nspowner),
                  n.oid IS NOT NULL AND has_schema_privilege(n.oid, 'USAGE'),
                  pg_has_role(d.datdba, 'MEMBER') OR (n.oid IS NOT NULL AND pg_has_role(n.nspowner, 'MEMBER'))
                      OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = %(admin)s AND pg_has_role(r.oid, 'MEMBER')),
                  pg_get_userbyid(d.datdba),
                  to_regclass('public.schema_migrations') IS NOT NULL AND %(schema)s <> 'public',
                  EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')
           FROM pg_database d
           LEFT JOIN pg_namespace n ON n.nspname = %(schema)s
           WHERE d.datname = current_database()""",
        {"schema": schema, "admin": LAKEBASE_ADMIN_ROLE},
    ).fetchone()
    assert row is not None
    role, database, exists, owner, usable, is_owner, database_owner, legacy, vector = row
    state = SchemaState(
        schema=schema,
        role=role,
        database=database,
        exists=exists,
        owner=owner,
        usable=usable,
        is_owner=is_owner,
        database_owner=database_owner,
        legacy_public=legacy,
        vector_installed=vector,
    )
    if not (exists and usable):
        return state
    ledger = sql.Identifier(schema, "schema_migrations")
    has_ledger = _first(
        conn.execute(
            """SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                          WHERE n.nspname = %s AND c.relname = 'schema_migrations')""",
            (schema,),
        )
    )
    unusable = tuple(
        name
        for (name,) in conn.execute(
            """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND (
                   (c.relkind IN ('r', 'p') AND NOT (has_table_privilege(c.oid, 'SELECT')
                       AND has_table_privilege(c.oid, 'INSERT') AND has_table_privilege(c.oid, 'UPDATE')
                       AND has_table_privilege(c.oid, 'DELETE')))
                   OR (c.relkind = 'S' AND NOT has_sequence_privilege(c.oid, 'USAGE')))
               ORDER BY c.relname""",
            (schema,),
        )
    )
    applied: frozenset[int] = frozenset()
    if has_ledger and "schema_migrations" not in unusable:
        applied = frozenset(
            version for (version,) in conn.execute(sql.SQL("SELECT version FROM {}").format(ledger))
        )
    return SchemaState(
        schema=schema,
        role=role,
        database=database,
        exists=True,
        owner=owner,
        usable=True,
        is_owner=is_owner,
        database_owner=database_owner,
        applied=applied,
        ledger=has_ledger,
        unusable_objects=unusable,
        legacy_public=legacy,
        vector_installed=vector,
    )


@dataclass
class SetupReport:
    """What :func:`prepare_schema` and :func:`grant_usage` did, for the CLI and the job's summary."""

    schema: str
    created_schema: bool = False
    moved_from_public: list[str] = field(default_factory=list)
    applied: list[int] = field(default_factory=list)
    granted_to: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "schema": self.schema,
            "created_schema": self.created_schema,
            "moved_from_public": self.moved_from_public,
            "applied_migrations": self.applied,
            "granted_to": self.granted_to,
            "notes": self.notes,
        }


def prepare_schema(conn: psycopg.Connection, schema: str, report: SetupReport) -> None:
    """As the owner, in the caller's transaction: create the schema, adopt an older version's tables from
    ``public`` (the migration path for databases made before the schema existed), create the ledger."""
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None
    if not exists:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        report.created_schema = True
    ledger_here = conn.execute(
        """SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = 'schema_migrations'""",
        (schema,),
    ).fetchone()
    if schema != "public" and ledger_here is None:
        report.moved_from_public = _adopt_public_tables(conn, schema)
    conn.execute(
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {} (
                   version int PRIMARY KEY, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        ).format(sql.Identifier(schema, "schema_migrations"))
    )


def _adopt_public_tables(conn: psycopg.Connection, schema: str) -> list[str]:
    """Move this project's tables and functions from ``public`` into ``schema`` (data, indexes, identity
    sequences and triggers move with them). Only when ``public`` holds this project's ledger."""
    if _first(conn.execute("SELECT to_regclass('public.schema_migrations')")) is None:
        return []
    moved = []
    target = sql.Identifier(schema)
    for table in LEGACY_TABLES:
        if _first(conn.execute("SELECT to_regclass(%s)", (f"public.{table}",))) is None:
            continue
        conn.execute(sql.SQL("ALTER TABLE public.{} SET SCHEMA {}").format(sql.Identifier(table), target))
        moved.append(table)
    for function in LEGACY_FUNCTIONS:
        if _first(conn.execute("SELECT to_regprocedure(%s)", (f"public.{function}",))) is None:
            continue
        name, _, args = function.partition("(")
        conn.execute(
            sql.SQL("ALTER FUNCTION public.{}(" + args + " SET SCHEMA {}").format(sql.Identifier(name), target)
        )
        moved.append(function)
    return moved


def role_exists(conn: psycopg.Connection, role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def grant_usage(conn: psycopg.Connection, schema: str, roles: Iterable[str]) -> list[str]:
    """As the owner, in the caller's transaction: let each role use the schema as the app does — USAGE on
    the schema, SELECT/INSERT/UPDATE/DELETE on its tables, USAGE/SELECT/UPDATE on its sequences, EXECUTE on
    its functions — now and, through default privileges, for what the owner creates later. No CREATE: the
    role never changes the schema. Returns the roles granted; a role that does not exist is an error."""
    granted = []
    target = sql.Identifier(schema)
    for role in _unique(roles):
        if not role_exists(conn, role):
            raise LookupError(
                f"there is no Postgres role {role!r} to grant access to. On Lakebase an app's role (named by "
                "its service principal's client id) is created when the app is deployed with its database "
                "resource: deploy the bundle first (databricks bundle deploy)"
            )
        who = sql.Identifier(role)
        statements: Sequence[str] = (
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
            "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
            "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {schema} TO {role}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT EXECUTE ON FUNCTIONS TO {role}",
        )
        for statement in statements:
            conn.execute(sql.SQL(statement).format(schema=target, role=who))
        granted.append(role)
    return granted


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        item = item.strip()
        if item and item not in seen:
            seen.append(item)
    return seen
