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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..core.clock import REAL_CLOCK, Clock
from ..core.config import ConfigError, RagConfig
from ..core.console import Progress, quiet
from ..core.upstream import exception_line
from .base import Hit, IndexNotReady, PassageUnavailable, RetrievalError, check_mode, check_query
from .vector_search_shapes import (
    ENDPOINT_FAILED_STATES,
    FAILED_UPDATE_STATES,
    PIPELINE_FAILED_STATE,
    RESULT_COLUMNS,
    SELF_MANAGED_CONTRACT,
    SYNCED_COLUMNS,
    IndexState,
    PipelineUpdate,
    VectorSearchError,
    VectorSearchSettings,
    VectorSearchSyncReport,
    VectorSearchTimeout,
    hits_from_response,
    sql_literal,
)

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

    from .embeddings import Embedder
    from .sync import ChunkSource

log = logging.getLogger(__name__)

PRIMARY_KEY = "chunk_id"
TEXT_COLUMN = "text"
EMBEDDING_COLUMN = "embedding"
MAX_RESULTS = 200  # HYBRID and FULL_TEXT queries return at most 200 rows; also our over-fetch for prefixes
# retrieval's search modes -> query_type. FULL_TEXT (keyword only) is a Beta feature of Vector Search.
QUERY_TYPES = {"hybrid": "HYBRID", "vector": "ANN", "keyword": "FULL_TEXT"}
DEFAULT_POLL_SECONDS = 10.0


class VectorSearchIndex:
    """Retrieval from a Databricks Vector Search Delta Sync index over the chunk table."""

    needs_source = False  # the service reads the Delta table itself

    def __init__(
        self,
        workspace: WorkspaceClient,
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
        cls,
        rag: RagConfig,
        workspace: WorkspaceClient,
        *,
        embedder: Embedder | None = None,
        clock: Clock = REAL_CLOCK,
    ) -> VectorSearchIndex:
        return cls(workspace, VectorSearchSettings.from_rag_config(rag), embedder=embedder, clock=clock)

    @property
    def name(self) -> str:
        return self.settings.index_name

    # --- refresh: create if missing, then one sync ------------------------------------------------------------
    def refresh(
        self,
        source: ChunkSource | None = None,
        full: bool = False,
        *,
        progress: Progress | None = None,
        wait: bool = True,
    ) -> VectorSearchSyncReport:
        """Make sure endpoint and index exist, then sync once (never while another sync runs).

        ``source`` (the :class:`~context_assistant.retrieval.sync.ChunkSource` of the ChunkIndex protocol) is not used:
        the service reads the Delta table itself. ``full`` changes nothing either: a Delta Sync index follows
        the table's Change Data Feed, so every sync covers the rows that changed; a rebuild from scratch
        means deleting the index. ``wait=False`` returns as soon as the sync has been requested.
        """
        say = progress or quiet
        say(f"checking Vector Search endpoint {self.settings.endpoint} and index {self.name}")
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
            say(f"syncing Vector Search index {self.name}" + (" (waiting for it to finish)" if wait else ""))
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
        return IndexState.from_raw(self._get_index_raw())

    def passage(self, chunk_id: str) -> Hit:
        """Not kept here: the chat page shows a passage's text only with the answer that cited it."""
        raise PassageUnavailable(
            "the passage text of earlier answers is not available with the vector_search backend"
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
                answer = self.workspace.api_client.do("POST", path, body=body)
                return QueryVectorIndexResponse.from_dict(answer if isinstance(answer, dict) else {})
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
            raise VectorSearchError(f"Vector Search {what} failed: {exception_line(exc)}") from exc
        except TimeoutError as exc:
            cause = exc.__cause__ or exc
            raise VectorSearchError(
                f"Vector Search {what} failed: still failing after the SDK's retries ({exception_line(cause)})"
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


def _enum_value(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def _negate(result: tuple[bool, str]) -> tuple[bool, str]:
    return not result[0], result[1]


def _norm_name(name: str) -> str:
    return ".".join(p.strip("`").lower() for p in name.split("."))


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
