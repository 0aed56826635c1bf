"""The Databricks Vector Search backend (``rag.backend: vector_search``): a Delta Sync index on the chunk table.

What it does, and why this way:

* **Create if missing.** The endpoint (``rag.vector_search_endpoint``) is created with
  ``rag.vector_search_endpoint_type`` and waited for until ONLINE; the index (``rag.index_name``) is a
  Delta Sync index on ``rag.chunk_table`` (primary key ``chunk_id``), pipeline type TRIGGERED, so it changes
  only when we ask (after an ingest) instead of keeping a continuous pipeline running. A new index builds
  itself from the table once; we wait until that build is done. An existing index is checked against the
  configuration (type, key, source table, embedding column/model, endpoint) so a mismatch is a clear error
  rather than answers from the wrong table.
* **Embeddings** (``rag.vector_search_embeddings``):

  - ``managed`` (default): Vector Search embeds the ``text`` column with the serving endpoint named by
    ``rag.embedding_model`` (e.g. ``databricks-gte-large-en``), at sync and at query time. Nothing else
    is needed from the pipeline.
  - ``self_managed``: the index reads vectors from an ``embedding ARRAY<FLOAT>`` column of the chunk table
    (:data:`EMBEDDING_COLUMN`) whose size is the embedder's dimension, and we embed queries with the same
    :class:`~context_assistant.retrieval.embeddings.Embedder`. The ingest pipeline must write that column; see
    :data:`SELF_MANAGED_CONTRACT`.

* **Sync** (:meth:`VectorSearchIndex.refresh`): after an ingest, trigger exactly one sync, but only once
  the index is not already syncing: a sync running (ours from an earlier run, or another job's) is waited
  out first, polling the index's ``status.detailed_state`` and the latest update of its sync pipeline on
  the injected clock, with a deadline and a clear timeout error. Then (by default) wait for our sync to
  finish, so a job that returns success means the index reflects the table. Completion is read from the
  pipeline update that our request created, because right after ``/sync`` the index can still report its
  old idle state; when the pipeline cannot be read (permissions) the index state alone is used.
* **Query** (:meth:`VectorSearchIndex.search`): ``query_type`` HYBRID (vector + keyword) or ANN from
  ``rag.vector_search_query_type``, ``num_results``, the columns a :class:`~context_assistant.retrieval.base.Hit`
  needs, mapped by the response's ``manifest.columns`` (the score is the last column).
  **Path prefix**: standard endpoints' filters (``filters_json``, a dict such as ``{"path": "a.md"}``) have
  exact match, OR-lists, comparisons and a *token-based* ``LIKE``, but no prefix operator, so on a
  standard endpoint we ask for up to :data:`MAX_RESULTS` candidates and keep those whose path starts with
  the prefix. Storage-optimized endpoints take a SQL-like ``filter_string``; there we send
  ``path LIKE '<prefix>%'``. In both cases the exact prefix test is applied to what comes back, so on a
  standard endpoint a prefix matching few documents can yield fewer than ``top_k`` hits.
  Retrieval's modes map to query types: ``vector`` ANN, ``hybrid`` HYBRID, ``keyword`` FULL_TEXT (Beta).

Configuration (``rag.*``): ``vector_search_endpoint``, ``index_name`` (``catalog.schema.index``),
``chunk_table`` (``catalog.schema.table``, Change Data Feed on, as the ingest pipeline creates it on
Databricks), ``embedding_model``, ``vector_search_query_type``, ``top_k``, and, read with defaults until
they are declared in :mod:`context_assistant.core.config`: ``vector_search_embeddings`` (managed),
``vector_search_endpoint_type`` (STANDARD, used only when creating the endpoint) and
``vector_search_timeout_seconds`` (3600: the longest any one refresh waits for an endpoint, a build or a
sync).

Client library: databricks-sdk's ``vector_search_endpoints`` / ``vector_search_indexes`` (and
``pipelines``), not ``databricks-vectorsearch``: the SDK is already a dependency with the workspace's
unified auth (PAT, OAuth, Apps service principal), retries 429/503 itself honouring Retry-After, takes an
injectable clock, and talks plain REST to the configured host, so tests run it against a loopback server.
``databricks-vectorsearch`` is deprecated (renamed ``databricks-ai-search``), pulls in mlflow, and sleeps
on the wall clock. Two calls go through the SDK's ``api_client`` instead of the typed wrappers, each
because the typed model drops a field we need: ``GET index`` (for ``status.detailed_state``, the one field
that says a sync is running) and ``query`` with ``filter_string`` (storage-optimized endpoints).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.clock import REAL_CLOCK, Clock
from ..core.config import ConfigError, RagConfig
from .base import Hit, IndexNotReady, RetrievalError, check_mode, check_query

if TYPE_CHECKING:
    from .embeddings import Embedder

log = logging.getLogger(__name__)

PRIMARY_KEY = "chunk_id"
TEXT_COLUMN = "text"
EMBEDDING_COLUMN = "embedding"
RESULT_COLUMNS = ("chunk_id", "path", "heading", "page", "text")
SYNCED_COLUMNS = (*RESULT_COLUMNS, "content_hash")
MAX_RESULTS = 200  # HYBRID and FULL_TEXT queries return at most 200 rows; also our over-fetch for prefixes
# retrieval's search modes -> query_type. FULL_TEXT (keyword only) is a Beta feature of Vector Search.
QUERY_TYPES = {"hybrid": "HYBRID", "vector": "ANN", "keyword": "FULL_TEXT"}
EMBEDDING_MODES = ("managed", "self_managed")
ENDPOINT_TYPES = ("STANDARD", "STORAGE_OPTIMIZED")
DEFAULT_TIMEOUT_SECONDS = 3600.0
DEFAULT_POLL_SECONDS = 10.0

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


class VectorSearchError(RetrievalError):
    """Vector Search refused or failed a request, or an index/sync failed; ``str()`` is one line for users."""


class VectorSearchTimeout(VectorSearchError):
    """Waiting for an endpoint, an index build or a sync ran past ``rag.vector_search_timeout_seconds``."""


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


class VectorSearchIndex:
    """Retrieval from a Databricks Vector Search Delta Sync index over the chunk table."""

    def __init__(
        self,
        workspace: Any,
        settings: VectorSearchSettings,
        *,
        embedder: Embedder | None = None,
        clock: Clock = REAL_CLOCK,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        settings.validate()
        if settings.embeddings == "self_managed" and embedder is None:
            raise ConfigError("rag.vector_search_embeddings: self_managed needs an embedder for queries")
        self.workspace = workspace
        self.settings = settings
        self.embedder = embedder
        self.clock = clock
        self.poll_seconds = poll_seconds
        self._endpoint_type: str | None = None
        self._pipeline_readable = True

    @classmethod
    def from_config(
        cls, rag: RagConfig, workspace: Any, *, embedder: Embedder | None = None, clock: Clock = REAL_CLOCK
    ) -> VectorSearchIndex:
        return cls(workspace, VectorSearchSettings.from_rag_config(rag), embedder=embedder, clock=clock)

    @property
    def name(self) -> str:
        return self.settings.index_name

    # --- refresh: create if missing, then one sync ------------------------------------------------------------
    def refresh(self, source: Any = None, full: bool = False, *, wait: bool = True) -> VectorSearchSyncReport:
        """Make sure endpoint and index exist, then sync once (never while another sync runs).

        ``source`` (the :class:`~context_assistant.retrieval.sync.ChunkSource` of the ChunkIndex protocol) is not used:
        the service reads the Delta table itself. ``full`` changes nothing either: a Delta Sync index follows
        the table's Change Data Feed, so every sync covers the rows that changed; a rebuild from scratch
        means deleting the index. ``wait=False`` returns as soon as the sync has been requested.
        """
        report = VectorSearchSyncReport(index=self.name)
        started = self.clock.monotonic()
        deadline = started + self.settings.timeout_seconds
        if full:
            report.notes.append("full has no effect on a Delta Sync index; delete the index to rebuild it")
        report.endpoint_created = self._ensure_endpoint(deadline)
        report.index_created, state = self._ensure_index(deadline)
        if report.index_created:
            # The initial build read the whole table as of its start, which is after the ingest.
            report.notes.append("index created; its initial build covered the current table")
        elif state.pipeline_type == "CONTINUOUS":
            report.notes.append("index pipeline is CONTINUOUS: it follows the table by itself, no sync needed")
        else:
            self._sync(report, deadline, wait)
        final = self._index_state()
        report.indexed_row_count, report.state = final.indexed_row_count, final.label
        report.waited_seconds = round(self.clock.monotonic() - started, 3)
        return report

    def sync(self, *, wait: bool = True) -> VectorSearchSyncReport:
        """Trigger one sync of an existing index (waiting out a running one first)."""
        report = VectorSearchSyncReport(index=self.name)
        started = self.clock.monotonic()
        self._sync(report, started + self.settings.timeout_seconds, wait)
        final = self._index_state()
        report.indexed_row_count, report.state = final.indexed_row_count, final.label
        report.waited_seconds = round(self.clock.monotonic() - started, 3)
        return report

    def _ensure_endpoint(self, deadline: float) -> bool:
        from databricks.sdk.errors import NotFound
        from databricks.sdk.service.vectorsearch import EndpointType

        api = self.workspace.vector_search_endpoints
        name = self.settings.endpoint
        created = False
        try:
            info = self._call(f"get endpoint {name}", lambda: api.get_endpoint(name))
        except VectorSearchError as exc:
            if not isinstance(exc.__cause__, NotFound):
                raise
            log.info("creating Vector Search endpoint %s (%s)", name, self.settings.endpoint_type)
            endpoint_type = EndpointType(self.settings.endpoint_type)
            info = self._call(
                f"create endpoint {name}", lambda: api.create_endpoint(name=name, endpoint_type=endpoint_type)
            ).response
            created = True
        latest = [info]

        def poll() -> tuple[bool, str]:
            if latest[0] is None:
                latest[0] = self._call(f"get endpoint {name}", lambda: api.get_endpoint(name))
            current, latest[0] = latest[0], None
            status = current.endpoint_status
            state = _enum_value(status.state if status else None) or "UNKNOWN"
            if state in ENDPOINT_FAILED_STATES:
                message = (status.message if status else "") or ""
                hint = " (start it on the Compute > Vector Search page)" if state.startswith("STOP") else ""
                raise VectorSearchError(f"Vector Search endpoint {name} is {state}{hint}: {message}".rstrip(": "))
            self._endpoint_type = _enum_value(current.endpoint_type)
            return state == "ONLINE", state

        self._wait(f"endpoint {name} to be ONLINE", poll, deadline)
        return created

    def _ensure_index(self, deadline: float) -> tuple[bool, IndexState]:
        from databricks.sdk.errors import NotFound

        created = False
        try:
            raw = self._get_index_raw()
        except VectorSearchError as exc:
            if not isinstance(exc.__cause__, NotFound):
                raise
            self._create_index()
            created = True
        else:
            self._check_existing(raw)

        def poll() -> tuple[bool, str]:
            state = self._index_state()
            if state.failed:
                raise VectorSearchError(
                    f"Vector Search index {self.name} is {state.detailed_state}: {state.message}"
                )
            if created and state.detailed_state == PIPELINE_FAILED_STATE:
                raise VectorSearchError(f"the initial build of index {self.name} failed: {state.message}")
            done = (not state.busy) if created else (state.ready or not state.busy)
            return done, state.label

        self._wait(f"index {self.name} to be ready", poll, deadline)
        return created, self._index_state()

    def _create_index(self) -> None:
        from databricks.sdk.service.vectorsearch import (
            DeltaSyncVectorIndexSpecRequest,
            EmbeddingSourceColumn,
            EmbeddingVectorColumn,
            PipelineType,
            VectorIndexType,
        )

        s = self.settings
        spec = DeltaSyncVectorIndexSpecRequest(
            source_table=s.source_table,
            pipeline_type=PipelineType.TRIGGERED,
            columns_to_sync=list(SYNCED_COLUMNS),
        )
        if s.embeddings == "managed":
            spec.embedding_source_columns = [
                EmbeddingSourceColumn(name=TEXT_COLUMN, embedding_model_endpoint_name=s.serving_endpoint)
            ]
        else:
            assert self.embedder is not None
            spec.embedding_vector_columns = [
                EmbeddingVectorColumn(name=EMBEDDING_COLUMN, embedding_dimension=self.embedder.dimension)
            ]
        log.info(
            "creating Vector Search index %s on %s (%s embeddings)", s.index_name, s.source_table, s.embeddings
        )
        self._call(
            f"create index {s.index_name}",
            lambda: self.workspace.vector_search_indexes.create_index(
                name=s.index_name,
                endpoint_name=s.endpoint,
                primary_key=PRIMARY_KEY,
                index_type=VectorIndexType.DELTA_SYNC,
                delta_sync_index_spec=spec,
            ),
        )

    def _check_existing(self, raw: dict[str, Any]) -> None:
        """An existing index must be the one this configuration describes; say exactly what differs."""
        s = self.settings
        spec = raw.get("delta_sync_index_spec") or {}
        problems: list[str] = []
        if raw.get("index_type") != "DELTA_SYNC":
            problems.append(f"it is a {raw.get('index_type') or 'unknown'} index, not DELTA_SYNC")
        if raw.get("endpoint_name") and raw["endpoint_name"] != s.endpoint:
            problems.append(f"it is on endpoint {raw['endpoint_name']} (rag.vector_search_endpoint: {s.endpoint})")
        if raw.get("primary_key") != PRIMARY_KEY:
            problems.append(f"its primary key is {raw.get('primary_key')!r}, not {PRIMARY_KEY!r}")
        source = str(spec.get("source_table", ""))
        if spec and _norm_name(source) != _norm_name(s.source_table):
            problems.append(f"it syncs from {source} (rag.chunk_table: {s.source_table})")
        sources = {c.get("name"): c for c in spec.get("embedding_source_columns") or []}
        vectors = {c.get("name"): c for c in spec.get("embedding_vector_columns") or []}
        if spec and s.embeddings == "managed":
            model = (sources.get(TEXT_COLUMN) or {}).get("embedding_model_endpoint_name")
            if TEXT_COLUMN not in sources:
                problems.append(
                    f"it does not embed the {TEXT_COLUMN!r} column (rag.vector_search_embeddings: managed)"
                )
            elif model != s.serving_endpoint:
                problems.append(f"it embeds with {model} (rag.embedding_model: {s.embedding_model})")
        elif spec:
            dimension = (vectors.get(EMBEDDING_COLUMN) or {}).get("embedding_dimension")
            if EMBEDDING_COLUMN not in vectors:
                problems.append(
                    f"it has no {EMBEDDING_COLUMN!r} vector column (rag.vector_search_embeddings: self_managed)"
                )
            elif self.embedder is not None and dimension != self.embedder.dimension:
                problems.append(
                    f"its vectors have dimension {dimension}, the embedder {self.embedder.model_name} "
                    f"gives {self.embedder.dimension}"
                )
        if problems:
            raise ConfigError(
                f"Vector Search index {s.index_name} exists but does not match the configuration: "
                + "; ".join(problems)
                + ". Point rag.index_name at a new index, or delete this one to have it recreated."
            )

    # --- sync -----------------------------------------------------------------------------------------------
    def _sync(self, report: VectorSearchSyncReport, deadline: float, wait: bool) -> None:
        report.waited_for_running_sync = self._wait_until_idle(deadline)
        before = self._latest_update(self._index_state().pipeline_id)
        if self._trigger_sync():
            report.sync_triggered = True
            if wait:
                self._wait_for_our_sync(before, deadline)
                report.sync_completed = True
        else:
            # Another sync started between our check and our request: it started after the ingest finished,
            # so it covers the ingest. Wait for it rather than queue a second one.
            report.notes.append("another sync started just before ours; used that one instead of a second")
            if wait:
                self._wait_until_idle(deadline)
                report.sync_completed = True
        if not self._pipeline_readable:
            report.notes.append("the sync pipeline could not be read; sync progress came from the index state")

    def _sync_busy(self) -> tuple[bool, str]:
        state = self._index_state()
        if state.failed:
            raise VectorSearchError(f"Vector Search index {self.name} is {state.detailed_state}: {state.message}")
        update = self._latest_update(state.pipeline_id)
        if update is not None and update.active:
            return True, f"{state.label}, pipeline update {update.update_id} {update.state}"
        return state.busy, state.label

    def _wait_until_idle(self, deadline: float) -> bool:
        """Wait while a sync (or the initial build) runs; True when there was one to wait for."""
        busy, _ = self._sync_busy()
        if not busy:
            return False
        log.info("index %s is syncing; waiting for that sync to finish before starting ours", self.name)
        self._wait(
            f"the running sync of index {self.name} to finish", lambda: _negate(self._sync_busy()), deadline
        )
        return True

    def _trigger_sync(self) -> bool:
        """Ask for a sync; False when the service refused because one is already running (409)."""
        from databricks.sdk.errors import ResourceConflict

        try:
            self._call(
                f"sync index {self.name}", lambda: self.workspace.vector_search_indexes.sync_index(self.name)
            )
        except VectorSearchError as exc:
            if isinstance(exc.__cause__, ResourceConflict):
                log.info("index %s: a sync is already running (%s)", self.name, exc)
                return False
            raise
        return True

    def _wait_for_our_sync(self, before: PipelineUpdate | None, deadline: float) -> None:
        seen_busy = False
        idle_polls = 0

        def poll() -> tuple[bool, str]:
            nonlocal seen_busy, idle_polls
            state = self._index_state()
            if state.failed:
                raise VectorSearchError(
                    f"Vector Search index {self.name} is {state.detailed_state}: {state.message}"
                )
            update = self._latest_update(state.pipeline_id)
            if update is not None:
                if before is not None and update.update_id == before.update_id:
                    return False, f"{state.label}, waiting for the sync pipeline to start"
                if update.state in FAILED_UPDATE_STATES:
                    raise VectorSearchError(
                        f"the sync of Vector Search index {self.name} ended {update.state} "
                        f"(pipeline {state.pipeline_id}, update {update.update_id}): {state.message}"
                    )
                if update.active or state.busy:
                    return False, f"{state.label}, pipeline update {update.update_id} {update.state}"
                return True, state.label
            # No pipeline view: the index state alone. It may still show the old idle state just after /sync,
            # so only believe "idle" after having seen the update, or after a few polls that never did.
            if state.busy:
                seen_busy = True
                return False, state.label
            idle_polls += 1
            if not seen_busy and idle_polls < 3:
                return False, f"{state.label}, waiting for the sync to show up"
            if state.detailed_state == PIPELINE_FAILED_STATE:
                raise VectorSearchError(f"the sync of Vector Search index {self.name} failed: {state.message}")
            return True, state.label

        self._wait(f"the sync of index {self.name} to finish", poll, deadline)

    def _latest_update(self, pipeline_id: str | None) -> PipelineUpdate | None:
        """The sync pipeline's most recent update, or None when there is none or it cannot be read."""
        from databricks.sdk.errors import NotFound, PermissionDenied

        if not pipeline_id or not self._pipeline_readable:
            return None
        try:
            pipeline = self._call(f"get pipeline {pipeline_id}", lambda: self.workspace.pipelines.get(pipeline_id))
        except VectorSearchError as exc:
            if isinstance(exc.__cause__, (PermissionDenied, NotFound)):
                log.warning("cannot read sync pipeline %s (%s); using the index state only", pipeline_id, exc)
                self._pipeline_readable = False
                return None
            raise
        updates = [u for u in pipeline.latest_updates or [] if u.update_id]
        if not updates:
            return None
        if all(u.creation_time for u in updates):
            latest = max(updates, key=lambda u: u.creation_time or "")
        else:
            latest = updates[0]  # the service lists the most recent first
        return PipelineUpdate(str(latest.update_id), _enum_value(latest.state) or "UNKNOWN")

    # --- status ---------------------------------------------------------------------------------------------
    def _get_index_raw(self) -> dict[str, Any]:
        path = f"/api/2.0/vector-search/indexes/{self.name}"
        return self._call(f"get index {self.name}", lambda: self.workspace.api_client.do("GET", path))

    def _index_state(self) -> IndexState:
        raw = self._get_index_raw()
        status = raw.get("status") or {}
        spec = raw.get("delta_sync_index_spec") or {}
        count = status.get("indexed_row_count")
        return IndexState(
            detailed_state=str(status.get("detailed_state") or ""),
            ready=bool(status.get("ready")),
            message=str(status.get("message") or ""),
            indexed_row_count=int(count) if count is not None else None,
            pipeline_id=spec.get("pipeline_id"),
            pipeline_type=spec.get("pipeline_type"),
        )

    def status(self) -> dict[str, Any]:
        """The index as the service describes it (for ``context-assistant status``)."""
        state = self._index_state()
        return {
            "backend": "vector_search",
            "index": self.name,
            "endpoint": self.settings.endpoint,
            "state": state.label,
            "ready": state.ready,
            "syncing": state.busy,
            "indexed_row_count": state.indexed_row_count,
            "message": state.message,
        }

    # --- query ----------------------------------------------------------------------------------------------
    def search(
        self, query: str, top_k: int | None = None, mode: str | None = None, path_prefix: str | None = None
    ) -> list[Hit]:
        """The ``top_k`` best chunks for ``query``; ``mode`` hybrid|vector|keyword (default from config)."""
        check_query(query)
        k = self.settings.top_k if top_k is None else top_k
        if k < 1:
            raise RetrievalError(f"top_k must be at least 1, got {k}")
        query_type = self._query_type(mode)
        body = self._query_body(query, k, query_type, path_prefix or None)
        response = self._query(body)
        hits = hits_from_response(response)
        if path_prefix:
            hits = [hit for hit in hits if hit.path.startswith(path_prefix)]
        return hits[:k]

    def _query_type(self, mode: str | None) -> str:
        """None: ``rag.vector_search_query_type``; else retrieval's mode (vector, keyword, hybrid)."""
        return self.settings.query_type if mode is None else QUERY_TYPES[check_mode(mode)]

    def _query_body(self, query: str, k: int, query_type: str, path_prefix: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"columns": list(RESULT_COLUMNS), "num_results": k, "query_type": query_type}
        if self.settings.embeddings == "managed" or query_type != "ANN":
            body["query_text"] = query  # managed: embedded by the service; HYBRID/FULL_TEXT: the keyword side
        if self.settings.embeddings == "self_managed" and query_type != "FULL_TEXT":
            assert self.embedder is not None
            body["query_vector"] = [float(x) for x in self.embedder.embed([query])[0]]
        wanted = k
        if path_prefix:
            if self._endpoint_kind() == "STORAGE_OPTIMIZED":
                body["filter_string"] = f"path LIKE {sql_literal(path_prefix + '%')}"
            else:
                wanted = max(k, MAX_RESULTS)  # no prefix operator: over-fetch, keep the prefix matches below
        body["num_results"] = wanted if query_type == "ANN" else min(wanted, MAX_RESULTS)
        return body

    def _endpoint_kind(self) -> str:
        if self._endpoint_type is None:
            name = self.settings.endpoint
            info = self._call(
                f"get endpoint {name}", lambda: self.workspace.vector_search_endpoints.get_endpoint(name)
            )
            self._endpoint_type = _enum_value(info.endpoint_type) or "STANDARD"
        return self._endpoint_type

    def _query(self, body: dict[str, Any]) -> Any:
        from databricks.sdk.errors import NotFound
        from databricks.sdk.service.vectorsearch import QueryVectorIndexResponse

        def run() -> Any:
            if "filter_string" in body:  # not a parameter of the typed query_index
                path = f"/api/2.0/vector-search/indexes/{self.name}/query"
                return QueryVectorIndexResponse.from_dict(self.workspace.api_client.do("POST", path, body=body))
            return self.workspace.vector_search_indexes.query_index(index_name=self.name, **body)

        try:
            return self._call(f"query index {self.name}", run)
        except VectorSearchError as exc:
            if isinstance(exc.__cause__, NotFound):
                raise IndexNotReady(
                    f"Vector Search index {self.name} does not exist: run `context-assistant sync` to create it"
                ) from exc.__cause__
            raise

    # --- plumbing -------------------------------------------------------------------------------------------
    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        """Run one SDK call; its errors become :class:`VectorSearchError` with the SDK error as the cause.

        The SDK already retried 429/503 (honouring Retry-After) and connection errors until its
        ``retry_timeout_seconds``; a ``TimeoutError`` means those retries ran out.
        """
        from databricks.sdk.errors import DatabricksError

        try:
            return call()
        except DatabricksError as exc:
            raise VectorSearchError(f"Vector Search {what} failed: {_one_line(exc)}") from exc
        except TimeoutError as exc:
            cause = exc.__cause__ or exc
            raise VectorSearchError(
                f"Vector Search {what} failed: still failing after the SDK's retries ({_one_line(cause)})"
            ) from cause

    def _wait(self, what: str, poll: Callable[[], tuple[bool, str]], deadline: float) -> str:
        while True:
            done, state = poll()
            if done:
                return state
            if self.clock.monotonic() >= deadline:
                raise VectorSearchTimeout(
                    f"timed out after {self.settings.timeout_seconds:g}s waiting for {what} (last state: {state}); "
                    "raise rag.vector_search_timeout_seconds or check the index in the Databricks UI"
                )
            self.clock.sleep(min(self.poll_seconds, deadline - self.clock.monotonic()))


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


def _enum_value(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def _negate(result: tuple[bool, str]) -> tuple[bool, str]:
    return not result[0], result[1]


def _is_uc_name(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 3 and all(p.strip("`") for p in parts) and "/" not in name


def _norm_name(name: str) -> str:
    return ".".join(p.strip("`").lower() for p in name.split("."))


def _one_line(exc: BaseException) -> str:
    """The error's text on one line, without the client-config dump the SDK appends to auth errors."""
    text = " ".join(str(exc).split()).split(" Config: host=")[0].rstrip(". ")
    return text or type(exc).__name__


__all__: Sequence[str] = (
    "EMBEDDING_COLUMN",
    "SELF_MANAGED_CONTRACT",
    "VectorSearchError",
    "VectorSearchIndex",
    "VectorSearchSettings",
    "VectorSearchSyncReport",
    "VectorSearchTimeout",
    "hits_from_response",
)
