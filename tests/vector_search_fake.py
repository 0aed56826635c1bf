"""A loopback fake of the Databricks Vector Search REST API, built on :mod:`fake_databricks`.

It speaks the documented paths and JSON shapes (``/api/2.0/vector-search/endpoints``,
``/api/2.0/vector-search/indexes`` incl. ``/{name}/sync`` and ``/{name}/query``) plus the one Lakeflow
pipelines call the backend uses (``GET /api/2.0/pipelines/{id}``), so tests drive the real databricks-sdk
``WorkspaceClient`` over real HTTP and assert on exactly what it sent.

State changes on a timeline read from the test's :class:`~context_assistant.core.clock.FakeClock`, the same clock
the code under test sleeps on: an endpoint created at t comes ONLINE at ``t + endpoint_ready_after``, an
index finishes its initial build ``index_ready_after`` seconds after creation, and a triggered sync runs for
``sync_seconds``. So the code's own polling (``clock.sleep``) is what moves the world forward, and nothing in a
test waits for real time.

Like the service, it refuses a sync while one is running (409) and counts such attempts in
``overlapping_syncs`` so tests can assert the client never asked for one.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from context_assistant.core.clock import FakeClock
from fake_databricks import FakeDatabricks, Request, Response

VS = "/api/2.0/vector-search"
NAME = r"(?P<name>[^/]+)"
BUSY_PIPELINE_STATES = {"CREATED", "QUEUED", "WAITING_FOR_RESOURCES", "INITIALIZING", "RUNNING"}


def error(status: int, code: str, message: str) -> Response:
    """A Databricks REST error body; the SDK maps status + error_code to its exception classes."""
    return Response(status, {"error_code": code, "message": message})


@dataclass
class Timeline:
    """A value that changes at given clock times: ``at(t)`` is the last entry starting at or before ``t``."""

    entries: list[tuple[float, str]]

    def at(self, t: float) -> str:
        value = self.entries[0][1]
        for start, state in self.entries:
            if start <= t:
                value = state
        return value

    def then(self, start: float, state: str) -> None:
        self.entries = [e for e in self.entries if e[0] < start] + [(start, state)]


@dataclass
class PipelineUpdate:
    update_id: str
    created: float
    finished: float
    outcome: str  # COMPLETED | FAILED | CANCELED
    queued_for: float = 0.0  # seconds reported as QUEUED before RUNNING

    def state(self, t: float) -> str:
        if t >= self.finished:
            return self.outcome
        return "QUEUED" if t < self.created + self.queued_for else "RUNNING"


@dataclass
class FakeEndpoint:
    name: str
    endpoint_type: str
    states: Timeline
    message: str = ""

    def to_json(self, t: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "endpoint_type": self.endpoint_type,
            "id": f"ep-{self.name}",
            "endpoint_status": {"state": self.states.at(t), "message": self.message},
            "num_indexes": 0,
        }


@dataclass
class FakeIndex:
    name: str
    endpoint_name: str
    primary_key: str
    index_type: str
    spec: dict[str, Any]  # delta_sync_index_spec as created (pipeline_id added)
    states: Timeline
    rows: list[dict[str, Any]] = field(default_factory=list)
    updates: list[PipelineUpdate] = field(default_factory=list)
    message: str = ""

    @property
    def pipeline_id(self) -> str:
        return str(self.spec["pipeline_id"])

    def to_json(self, t: float, fake: VectorSearchFake) -> dict[str, Any]:
        state = self.states.at(t)
        body: dict[str, Any] = {
            "name": self.name,
            "endpoint_name": self.endpoint_name,
            "primary_key": self.primary_key,
            "index_type": self.index_type,
            "creator": "someone@example.com",
            "status": {
                "ready": state.startswith("ONLINE"),
                "message": self.message or f"index is {state}",
                "indexed_row_count": len(self.rows),
                "index_url": f"{fake.server.url}/{self.name}",
            },
        }
        if fake.report_detailed_state:
            body["status"]["detailed_state"] = state
        if self.index_type == "DELTA_SYNC":
            body["delta_sync_index_spec"] = self.spec
        return body


class VectorSearchFake:
    """Stateful Vector Search on a :class:`FakeDatabricks`; configure timings and rows, then inspect."""

    def __init__(self, server: FakeDatabricks, clock: FakeClock) -> None:
        self.server = server
        self.clock = clock
        # Send each response without waiting for the client's delayed ACK (Nagle): otherwise every request on a
        # kept-alive connection costs ~40 ms, and these tests poll hundreds of times. (Belongs in
        # fake_databricks.FakeDatabricks itself; set here on this server's own handler class meanwhile.)
        server.server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
        self.endpoints: dict[str, FakeEndpoint] = {}
        self.indexes: dict[str, FakeIndex] = {}
        self.endpoint_ready_after = 60.0
        self.index_ready_after = 120.0
        self.sync_seconds = 30.0
        self.sync_outcome = "COMPLETED"
        self.sync_queued_for = 0.0
        # Seconds after a sync is triggered during which GET index still reports the old (idle) state, as the
        # real service can: a client that trusts the index state alone would think the sync already finished.
        self.index_state_lag = 0.0
        self.report_detailed_state = True
        self.pipeline_status = 200  # set to 403 to simulate a caller who may not read the sync pipeline
        self.overlapping_syncs = 0
        self.sync_requests = 0
        self.sync_times: list[float] = []  # clock time of each sync the fake started on request
        # Simulate another job whose sync starts just before our next request: that request gets the 409.
        self.race_next_sync: float | None = None
        self._throttles: list[tuple[re.Pattern[str], int, int]] = []
        self._ids = itertools.count(1)
        self._register()

    # --- time ---------------------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.clock.monotonic()

    # --- test setup -----------------------------------------------------------------------------------------
    def add_endpoint(self, name: str, state: str = "ONLINE", endpoint_type: str = "STANDARD") -> FakeEndpoint:
        endpoint = FakeEndpoint(name, endpoint_type, Timeline([(self.now, state)]))
        self.endpoints[name] = endpoint
        return endpoint

    def add_index(
        self,
        name: str,
        endpoint_name: str,
        *,
        source_table: str,
        model: str | None = "databricks-gte-large-en",
        vector_dimension: int | None = None,
        state: str = "ONLINE_NO_PENDING_UPDATE",
        pipeline_type: str = "TRIGGERED",
        primary_key: str = "chunk_id",
        index_type: str = "DELTA_SYNC",
        rows: list[dict[str, Any]] | None = None,
    ) -> FakeIndex:
        spec: dict[str, Any] = {
            "source_table": source_table,
            "pipeline_type": pipeline_type,
            "pipeline_id": f"pipeline-{next(self._ids)}",
        }
        if model is not None:
            spec["embedding_source_columns"] = [{"name": "text", "embedding_model_endpoint_name": model}]
        if vector_dimension is not None:
            spec["embedding_vector_columns"] = [{"name": "embedding", "embedding_dimension": vector_dimension}]
        index = FakeIndex(name, endpoint_name, primary_key, index_type, spec, Timeline([(self.now, state)]))
        index.rows = list(rows or [])
        self.indexes[name] = index
        return index

    def start_external_sync(self, index_name: str, seconds: float) -> None:
        """Someone else (another job run) triggered a sync that is running now."""
        self._begin_sync(self.indexes[index_name], seconds)

    def throttle(self, path_regex: str, times: int, retry_after: int = 1) -> None:
        """Answer the next ``times`` requests whose path matches with 429 and a Retry-After header."""
        self._throttles.append((re.compile(path_regex), times, retry_after))

    # --- request log helpers -------------------------------------------------------------------------------
    def calls(self, path_regex: str, method: str | None = None) -> list[Request]:
        return self.server.calls(path_regex, method)

    def query_bodies(self, index_name: str) -> list[dict[str, Any]]:
        return [r.json for r in self.calls(f"{VS}/indexes/{re.escape(index_name)}/query", "POST")]

    # --- routes -------------------------------------------------------------------------------------------
    def _register(self) -> None:
        on = self.server.on
        on("POST", f"{VS}/endpoints", self._guard(self._create_endpoint))
        on("GET", f"{VS}/endpoints/{NAME}", self._guard(self._get_endpoint))
        on("POST", f"{VS}/indexes", self._guard(self._create_index))
        on("GET", f"{VS}/indexes/{NAME}", self._guard(self._get_index))
        on("POST", f"{VS}/indexes/{NAME}/sync", self._guard(self._sync))
        on("POST", f"{VS}/indexes/{NAME}/query", self._guard(self._query))
        on("GET", r"/api/2\.0/pipelines/(?P<pid>[^/]+)", self._guard(self._get_pipeline))

    def _guard(self, handler: Any) -> Any:
        def serve(request: Request) -> Response:
            for i, (pattern, times, retry_after) in enumerate(self._throttles):
                if times > 0 and pattern.fullmatch(request.path):
                    self._throttles[i] = (pattern, times - 1, retry_after)
                    response = error(429, "REQUEST_LIMIT_EXCEEDED", "rate limit exceeded, slow down")
                    response.headers["Retry-After"] = str(retry_after)
                    return response
            return handler(request)

        return serve

    def _create_endpoint(self, request: Request) -> Response:
        body = request.json or {}
        name = body.get("name")
        if not name or body.get("endpoint_type") not in {"STANDARD", "STORAGE_OPTIMIZED"}:
            return error(400, "INVALID_PARAMETER_VALUE", "name and endpoint_type are required")
        if name in self.endpoints:
            return error(409, "RESOURCE_ALREADY_EXISTS", f"endpoint {name} already exists")
        endpoint = FakeEndpoint(
            name,
            body["endpoint_type"],
            Timeline([(self.now, "PROVISIONING"), (self.now + self.endpoint_ready_after, "ONLINE")]),
        )
        self.endpoints[name] = endpoint
        return Response(body=endpoint.to_json(self.now))

    def _get_endpoint(self, request: Request) -> Response:
        endpoint = self.endpoints.get(request.match["name"]) if request.match else None
        if endpoint is None:
            return error(404, "NOT_FOUND", "Vector search endpoint not found")
        return Response(body=endpoint.to_json(self.now))

    def _create_index(self, request: Request) -> Response:
        body = request.json or {}
        name, endpoint_name = body.get("name"), body.get("endpoint_name")
        if name in self.indexes:
            return error(409, "RESOURCE_ALREADY_EXISTS", f"index {name} already exists")
        if endpoint_name not in self.endpoints:
            return error(404, "NOT_FOUND", f"endpoint {endpoint_name} not found")
        spec = dict(body.get("delta_sync_index_spec") or {})
        if body.get("index_type") != "DELTA_SYNC" or not spec.get("source_table"):
            return error(400, "INVALID_PARAMETER_VALUE", "a DELTA_SYNC index needs delta_sync_index_spec")
        spec["pipeline_id"] = f"pipeline-{next(self._ids)}"
        ready_at = self.now + self.index_ready_after
        index = FakeIndex(
            name,
            endpoint_name,
            body.get("primary_key", ""),
            "DELTA_SYNC",
            spec,
            Timeline([(self.now, "PROVISIONING_INITIAL_SNAPSHOT"), (ready_at, "ONLINE_NO_PENDING_UPDATE")]),
        )
        index.updates.append(PipelineUpdate(f"update-{next(self._ids)}", self.now, ready_at, "COMPLETED"))
        self.indexes[name] = index
        return Response(body=index.to_json(self.now, self))

    def _index(self, request: Request) -> FakeIndex | None:
        return self.indexes.get(request.match["name"]) if request.match else None

    def _get_index(self, request: Request) -> Response:
        index = self._index(request)
        if index is None:
            return error(404, "RESOURCE_DOES_NOT_EXIST", "Index does not exist")
        return Response(body=index.to_json(self.now, self))

    def _busy(self, index: FakeIndex) -> bool:
        latest = index.updates[-1] if index.updates else None
        return bool(latest and latest.state(self.now) in BUSY_PIPELINE_STATES)

    def _sync(self, request: Request) -> Response:
        index = self._index(request)
        if index is None:
            return error(404, "RESOURCE_DOES_NOT_EXIST", "Index does not exist")
        self.sync_requests += 1
        if index.spec.get("pipeline_type") != "TRIGGERED":
            return error(400, "INVALID_PARAMETER_VALUE", "sync is only supported for TRIGGERED indexes")
        if self.race_next_sync is not None:
            self._begin_sync(index, self.race_next_sync)
            self.race_next_sync = None
            return error(409, "RESOURCE_CONFLICT", "a sync is already in progress for this index")
        if self._busy(index):
            self.overlapping_syncs += 1
            return error(409, "RESOURCE_CONFLICT", "a sync is already in progress for this index")
        self.sync_times.append(self.now)
        self._begin_sync(index, self.sync_seconds)
        return Response(body={})

    def _begin_sync(self, index: FakeIndex, seconds: float) -> None:
        start = self.now
        update = PipelineUpdate(
            f"update-{next(self._ids)}", start, start + seconds, self.sync_outcome, self.sync_queued_for
        )
        index.updates.append(update)
        final = "ONLINE_NO_PENDING_UPDATE" if self.sync_outcome == "COMPLETED" else "ONLINE_PIPELINE_FAILED"
        lag = min(self.index_state_lag, seconds)
        index.states.then(start + lag, "ONLINE_TRIGGERED_UPDATE")
        index.states.then(start + seconds, final)

    def _get_pipeline(self, request: Request) -> Response:
        if self.pipeline_status != 200:
            return error(self.pipeline_status, "PERMISSION_DENIED", "no permission to view this pipeline")
        pid = request.match["pid"] if request.match else ""
        for index in self.indexes.values():
            if index.spec.get("pipeline_id") == pid:
                updates = [
                    {"update_id": u.update_id, "state": u.state(self.now), "creation_time": f"{u.created:020.3f}"}
                    for u in reversed(index.updates)  # most recent first, as the service lists them
                ]
                state = "RUNNING" if self._busy(index) else "IDLE"
                return Response(body={"pipeline_id": pid, "state": state, "latest_updates": updates})
        return error(404, "RESOURCE_DOES_NOT_EXIST", f"pipeline {pid} not found")

    def _query(self, request: Request) -> Response:
        index = self._index(request)
        if index is None:
            return error(404, "RESOURCE_DOES_NOT_EXIST", "Index does not exist")
        if not index.states.at(self.now).startswith("ONLINE"):
            return error(400, "INVALID_STATE", "index is not ready to serve queries")
        body = request.json or {}
        columns = body.get("columns") or []
        if not columns:
            return error(400, "INVALID_PARAMETER_VALUE", "columns must be provided")
        query_type = str(body.get("query_type", "ANN")).upper()
        if query_type not in {"ANN", "HYBRID", "FULL_TEXT"}:
            return error(400, "INVALID_PARAMETER_VALUE", f"unknown query_type {query_type}")
        managed = "embedding_source_columns" in index.spec
        if managed and not body.get("query_text"):
            return error(400, "INVALID_PARAMETER_VALUE", "query_text is required for this index")
        if not managed and not body.get("query_vector"):
            return error(400, "INVALID_PARAMETER_VALUE", "query_vector is required for self-managed vectors")
        rows = list(index.rows)
        try:
            if body.get("filters_json"):
                rows = [r for r in rows if _matches_filters(r, json.loads(body["filters_json"]))]
            if body.get("filter_string"):
                rows = [r for r in rows if _matches_filter_string(r, body["filter_string"])]
        except ValueError as exc:
            return error(400, "INVALID_PARAMETER_VALUE", f"invalid filter: {exc}")
        words = set(str(body.get("query_text", "")).lower().split())
        scored = [(r.get("score", _overlap(words, r)), r) for r in rows]
        scored.sort(key=lambda pair: -pair[0])
        limit = int(body.get("num_results", 10))
        data = [[row.get(c) for c in columns] + [score] for score, row in scored[:limit]]
        return Response(
            body={
                "manifest": {
                    "column_count": len(columns) + 1,
                    "columns": [{"name": c} for c in columns] + [{"name": "score"}],
                },
                "result": {"row_count": len(data), "data_array": data},
            }
        )


def _overlap(words: set[str], row: dict[str, Any]) -> float:
    text = set(str(row.get("text", "")).lower().split())
    return round(len(words & text) / (len(words) or 1), 6)


def _matches_filters(row: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Standard-endpoint dictionary filters: exact match and the OR-list form (all this fake needs)."""
    for key, wanted in filters.items():
        if " " in key.strip():
            raise ValueError(f"operator in {key!r} not supported by the fake")
        values = wanted if isinstance(wanted, list) else [wanted]
        if row.get(key) not in values:
            return False
    return True


_LIKE_PREFIX = re.compile(r"^\s*(\w+)\s+LIKE\s+'((?:[^']|'')*)%'\s*$", re.IGNORECASE)


def _matches_filter_string(row: dict[str, Any], expression: str) -> bool:
    """Storage-optimized SQL-like filter: only ``col LIKE 'prefix%'`` is understood here."""
    match = _LIKE_PREFIX.match(expression)
    if not match:
        raise ValueError(f"unsupported filter_string {expression!r}")
    column, prefix = match.group(1), match.group(2).replace("''", "'")
    return str(row.get(column, "")).startswith(prefix)


class SdkClock:
    """Adapts a FakeClock to databricks-sdk's Clock, so the SDK's own retry sleeps (429 Retry-After) are instant."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def time(self) -> float:
        return self.clock.now().timestamp()

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)


def workspace_client(
    server: FakeDatabricks, clock: FakeClock, *, retry_timeout_seconds: int = 10, token: str = "dapi-test-token"
) -> Any:
    """A real WorkspaceClient on the loopback server whose retry back-off sleeps on ``clock``.

    ``FakeDatabricks.workspace_client()`` is the same but retries on the real clock; this one is used where a
    test makes the SDK retry (429), so the test neither waits nor depends on timing.
    """
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    sdk_clock = SdkClock(clock)
    return WorkspaceClient(
        config=Config(
            host=server.url,
            token=token,
            auth_type="pat",
            retry_timeout_seconds=retry_timeout_seconds,
            http_timeout_seconds=10,
            clock=sdk_clock,
        )
    )
