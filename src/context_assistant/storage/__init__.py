"""PostgreSQL: connections and migrations, conversation memory, and the pgvector/BM25 primitives that the
document index and memory recall share (vector spaces, their ANN index, BM25 in SQL)."""

from .bm25 import bm25_rank
from .db import Database, DatabaseError, EmbeddedPostgres, Target, open_database, scalar, with_lakebase
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
from .vector_spaces import SpaceInfo, ensure_ann_index, read_space, reset_space, table_exists

__all__ = [
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
    "Session",
    "SessionNotFound",
    "SpaceInfo",
    "Target",
    "bm25_rank",
    "ensure_ann_index",
    "fit_turns",
    "open_database",
    "read_space",
    "reset_space",
    "scalar",
    "table_exists",
    "with_lakebase",
]
