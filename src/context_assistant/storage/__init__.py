"""PostgreSQL: where to connect (targets: embedded, Postgres, Lakebase), the pool and migrations (db), the one
schema only the database owner changes and its setup (db_schema, db_setup), conversation memory, and the
pgvector/BM25 primitives that the document index and memory recall share (vector spaces, their ANN index,
BM25 in SQL, exact top-k with impact tiers)."""

from .bm25 import BM25_B, BM25_K1, bm25_rank
from .bm25_tiers import bm25_top
from .db import Database, SchemaNotReady, open_database, scalar, wants_vector
from .db_schema import SchemaState, SetupReport, inspect_schema
from .db_setup import app_principal, run_setup
from .memory import (
    ConversationStore,
    ImportRejected,
    ImportResult,
    Message,
    MessageNotFound,
    Session,
    SessionNotFound,
    fit_turns,
)
from .migrations import LATEST_VERSION, MIGRATIONS, Migration
from .targets import (
    DatabaseError,
    EmbeddedPostgres,
    Target,
    lakebase_from_widgets,
    resolve_target,
    with_lakebase,
)
from .vector_spaces import SpaceInfo, ensure_ann_index, read_space, reset_space, table_exists

__all__ = [
    "BM25_B",
    "BM25_K1",
    "LATEST_VERSION",
    "MIGRATIONS",
    "ConversationStore",
    "Database",
    "DatabaseError",
    "EmbeddedPostgres",
    "ImportRejected",
    "ImportResult",
    "Message",
    "MessageNotFound",
    "Migration",
    "SchemaNotReady",
    "SchemaState",
    "Session",
    "SessionNotFound",
    "SetupReport",
    "SpaceInfo",
    "Target",
    "app_principal",
    "bm25_rank",
    "bm25_top",
    "ensure_ann_index",
    "fit_turns",
    "inspect_schema",
    "lakebase_from_widgets",
    "open_database",
    "read_space",
    "reset_space",
    "resolve_target",
    "run_setup",
    "scalar",
    "table_exists",
    "wants_vector",
    "with_lakebase",
]
