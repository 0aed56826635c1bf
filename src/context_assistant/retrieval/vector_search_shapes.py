"""What the Vector Search backend configures and what the service reports, as plain values.

:class:`VectorSearchSettings` is ``rag.*`` validated once, so a gap is reported before any request;
:class:`IndexState` and :class:`PipelineUpdate` are what ``GET index`` and the sync pipeline say, reduced to
what the sync logic needs; :class:`VectorSearchSyncReport` is what a refresh did; :func:`hits_from_response`
maps a query response to hits. :mod:`context_assistant.retrieval.vector_search` does the talking.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.config import ConfigError, RagConfig
from ..ingest.contract import HIT_COLUMNS
from .base import Hit, RetrievalFailed

RESULT_COLUMNS = HIT_COLUMNS  # what a query asks for: the chunk table columns a Hit shows (ingest.contract)
SYNCED_COLUMNS = (*RESULT_COLUMNS, "content_hash")
EMBEDDING_MODES = ("managed", "self_managed")
ENDPOINT_TYPES = ("STANDARD", "STORAGE_OPTIMIZED")
DEFAULT_TIMEOUT_SECONDS = 3600.0

SELF_MANAGED_CONTRACT = """\
rag.vector_search_embeddings: self_managed needs the chunk table to carry the vectors:
  column  embedding ARRAY<FLOAT> NOT NULL, one per chunk row, of exactly the embedder's dimension
          (databricks-gte-large-en: 1024, all-MiniLM-L6-v2: 384),
  model   the same rag.embedding_model the app embeds queries with (a different model gives wrong answers),
  update  written in the same MERGE that writes text, recomputed whenever content_hash changes (rows whose
          text is unchanged keep their vector), never NULL or all zeros (a failed embedding fails the
          document, as for any parse failure), and Change Data Feed stays on.
  On Databricks the MERGE's source can compute it as ai_query('<endpoint>', text) for a serving endpoint.
"""

# Index detailed states (status.detailed_state) with no update running. ONLINE_PIPELINE_FAILED is idle too:
# the index serves the last good data and a new sync may be started.
IDLE_INDEX_STATES = {"ONLINE", "ONLINE_NO_PENDING_UPDATE", "ONLINE_DIRECT_ACCESS", "ONLINE_PIPELINE_FAILED"}
PIPELINE_FAILED_STATE = "ONLINE_PIPELINE_FAILED"
ACTIVE_UPDATE_STATES = {
    "CREATED",
    "QUEUED",
    "WAITING_FOR_RESOURCES",
    "INITIALIZING",
    "RESETTING",
    "SETTING_UP_TABLES",
    "RUNNING",
    "STOPPING",
}
FAILED_UPDATE_STATES = {"FAILED", "CANCELED"}
ENDPOINT_FAILED_STATES = {"OFFLINE", "RED_STATE", "DELETED", "STOPPED", "STOPPING"}


class VectorSearchError(RetrievalFailed):
    """Vector Search refused or failed a request, or an index/sync failed; ``str()`` is one line for users."""


class VectorSearchTimeout(VectorSearchError):
    """Waiting for an endpoint, an index build or a sync ran past ``rag.vector_search_timeout_seconds``."""

    http_status = 504
    kind = "timeout"
    retryable = True


@dataclass(frozen=True)
class VectorSearchSettings:
    """The configuration this backend reads, validated once so a gap is reported before any request."""

    endpoint: str
    index_name: str
    source_table: str
    embeddings: str = "managed"
    embedding_model: str = ""
    query_type: str = "HYBRID"
    endpoint_type: str = "STANDARD"
    top_k: int = 5
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @property
    def serving_endpoint(self) -> str | None:
        """The serving endpoint ``embedding_model`` names (embeddings' naming rules), or None for a local model."""
        from .embeddings import EmbeddingError, parse_model_spec

        try:
            spec = parse_model_spec(self.embedding_model)
        except EmbeddingError:
            return None
        return spec.name if spec.provider == "endpoint" else None

    @classmethod
    def from_rag_config(cls, rag: RagConfig) -> VectorSearchSettings:
        settings = cls(
            endpoint=rag.vector_search_endpoint.strip(),
            index_name=rag.index_name.strip(),
            source_table=rag.chunk_table.strip(),
            embeddings=rag.vector_search_embeddings,
            embedding_model=rag.embedding_model.strip(),
            query_type=rag.vector_search_query_type,
            endpoint_type=rag.vector_search_endpoint_type,
            top_k=rag.top_k,
            timeout_seconds=rag.vector_search_timeout_seconds,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        when = "when rag.backend is vector_search"
        if not self.endpoint:
            raise ConfigError(f"rag.vector_search_endpoint must be set (the Vector Search endpoint name) {when}")
        if not self.index_name:
            raise ConfigError(f"rag.index_name must be set (catalog.schema.index) {when}")
        if not _is_uc_name(self.index_name):
            raise ConfigError(
                f"rag.index_name: {self.index_name!r} must be a Unity Catalog name catalog.schema.index"
            )
        if not _is_uc_name(self.source_table):
            raise ConfigError(
                f"rag.chunk_table: {self.source_table!r} must be a Unity Catalog table (catalog.schema.table) "
                f"{when}: the index syncs from that Delta table"
            )
        if self.embeddings not in EMBEDDING_MODES:
            raise ConfigError(
                f"rag.vector_search_embeddings: {self.embeddings!r} is not one of {', '.join(EMBEDDING_MODES)}"
            )
        if self.embeddings == "managed" and self.serving_endpoint is None:
            raise ConfigError(
                f"rag.embedding_model: {self.embedding_model!r} is not a serving endpoint; managed Vector Search "
                "embeddings need one (e.g. databricks-gte-large-en, or endpoint:NAME), "
                "or set rag.vector_search_embeddings: self_managed"
            )
        if self.query_type not in ("HYBRID", "ANN"):
            raise ConfigError(f"rag.vector_search_query_type: {self.query_type!r} is not one of HYBRID, ANN")
        if self.endpoint_type not in ENDPOINT_TYPES:
            raise ConfigError(
                f"rag.vector_search_endpoint_type: {self.endpoint_type!r} is not one of {', '.join(ENDPOINT_TYPES)}"
            )
        if self.timeout_seconds <= 0:
            raise ConfigError("rag.vector_search_timeout_seconds: must be positive")


@dataclass
class IndexState:
    """What ``GET index`` said, reduced to what the sync logic needs."""

    detailed_state: str  # "" when the service does not report one
    ready: bool
    message: str
    indexed_row_count: int | None
    pipeline_id: str | None
    pipeline_type: str | None

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> IndexState:
        """From the ``GET index`` answer (read raw: the typed model drops ``status.detailed_state``)."""
        status = raw.get("status") or {}
        spec = raw.get("delta_sync_index_spec") or {}
        count = status.get("indexed_row_count")
        return cls(
            detailed_state=str(status.get("detailed_state") or ""),
            ready=bool(status.get("ready")),
            message=str(status.get("message") or ""),
            indexed_row_count=int(count) if count is not None else None,
            pipeline_id=spec.get("pipeline_id"),
            pipeline_type=spec.get("pipeline_type"),
        )

    @property
    def failed(self) -> bool:
        return "OFFLINE" in self.detailed_state or "FAILED" in self.detailed_state.replace(
            PIPELINE_FAILED_STATE, ""
        )

    @property
    def busy(self) -> bool:
        """An update (initial build or sync) is running, or the index is not serving yet."""
        if self.failed:
            return False
        if not self.detailed_state:
            return not self.ready
        return self.detailed_state not in IDLE_INDEX_STATES

    @property
    def label(self) -> str:
        return self.detailed_state or ("ready" if self.ready else "not ready")


@dataclass(frozen=True)
class PipelineUpdate:
    update_id: str
    state: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_UPDATE_STATES


@dataclass
class VectorSearchSyncReport:
    """What :meth:`VectorSearchIndex.refresh` did; ``to_json()`` is what the CLI and the sync job print."""

    backend: str = "vector_search"
    index: str = ""
    endpoint_created: bool = False
    index_created: bool = False
    sync_triggered: bool = False
    sync_completed: bool = False
    waited_for_running_sync: bool = False
    waited_seconds: float = 0.0
    indexed_row_count: int | None = None
    state: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """A refresh that returns completed; one that could not raised."""
        return True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for people."""
        done = []
        if self.endpoint_created:
            done.append("created the endpoint")
        if self.index_created:
            done.append("created the index (initial build done)")
        if self.waited_for_running_sync:
            done.append("waited for a running sync")
        if self.sync_triggered:
            done.append("synced" if self.sync_completed else "requested a sync")
        elif self.sync_completed:
            done.append("waited for a sync another job started")
        rows = "" if self.indexed_row_count is None else f", {self.indexed_row_count} rows indexed"
        line = f"Vector Search index {self.index}: {', '.join(done) or 'nothing to do'}{rows}; state {self.state}"
        line += f"; {self.waited_seconds:.0f}s."
        return "\n".join([line, *self.notes])


def hits_from_response(response: Any) -> list[Hit]:
    """Map ``manifest.columns`` + ``result.data_array`` to hits; the score is the last column."""
    manifest = getattr(response, "manifest", None)
    columns = [c.name for c in (manifest.columns if manifest and manifest.columns else [])]
    rows = response.result.data_array if getattr(response, "result", None) and response.result.data_array else []
    if rows and not columns:
        raise VectorSearchError("Vector Search returned rows without a manifest of their columns")
    missing = [c for c in RESULT_COLUMNS if c not in columns[:-1]]
    if rows and missing:
        raise VectorSearchError(f"Vector Search results lack the column(s) {', '.join(missing)}")
    hits = []
    for row in rows:
        if len(row) != len(columns):
            raise VectorSearchError(
                f"Vector Search returned a row of {len(row)} values for {len(columns)} columns"
            )
        value = dict(zip(columns[:-1], row[:-1], strict=True))
        hits.append(
            Hit(
                chunk_id=str(value["chunk_id"]),
                path=str(value["path"]),
                heading=str(value.get("heading") or ""),
                page=_as_int(value.get("page")),
                text=str(value.get("text") or ""),
                score=float(row[-1]),
            )
        )
    return hits


def sql_literal(value: str) -> str:
    """A single-quoted SQL string for a storage-optimized ``filter_string`` (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _as_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    number = float(value)
    return int(number) if math.isfinite(number) else None


def _is_uc_name(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 3 and all(p.strip("`") for p in parts) and "/" not in name
