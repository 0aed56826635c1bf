"""The Vector Search backend, driven through the real databricks-sdk WorkspaceClient over real HTTP.

Databricks Vector Search cannot run here, so these tests point the client at a loopback server
(``tests/vector_search_fake.py`` on ``tests/fake_databricks.py``) that speaks the documented REST paths and
shapes: ``/api/2.0/vector-search/endpoints``, ``/api/2.0/vector-search/indexes`` incl. ``/{name}/sync`` and
``/{name}/query``, and ``/api/2.0/pipelines/{id}``. The fake's state moves on the same FakeClock the code
sleeps on, so waiting for ONLINE, for an index build and for a sync takes no real time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from context_assistant.core.clock import FakeClock
from context_assistant.core.config import ConfigError, RagConfig
from context_assistant.retrieval.base import Hit, IndexNotReady, RetrievalError
from context_assistant.retrieval.vector_search import (
    MAX_RESULTS,
    VectorSearchError,
    VectorSearchIndex,
    VectorSearchSettings,
    VectorSearchTimeout,
    hits_from_response,
)
from fake_databricks import FakeDatabricks
from vector_search_fake import VectorSearchFake, workspace_client

ENDPOINT = "docs-endpoint"
INDEX = "main.assistant.chunks_index"
TABLE = "main.assistant.chunks"
MODEL = "databricks-gte-large-en"
VS = "/api/2.0/vector-search"
COLUMNS = ["chunk_id", "path", "heading", "page", "text"]

ROWS = [
    {
        "chunk_id": "c1",
        "path": "teams/data/rotation.md",
        "heading": "Rotating keys",
        "page": None,
        "text": "rotate the service principal keys every ninety days",
        "score": 0.91,
    },
    {
        "chunk_id": "c2",
        "path": "handbook.pdf",
        "heading": "",
        "page": 3.0,  # numbers come back as JSON numbers, possibly floats
        "text": "keys are kept in the secret scope",
        "score": 0.72,
    },
    {
        "chunk_id": "c3",
        "path": "teams/web/deploy.md",
        "heading": "Deploy",
        "page": None,
        "text": "deploy the app with the bundle",
        "score": 0.40,
    },
    {
        "chunk_id": "c4",
        "path": "teamsters/notes.md",
        "heading": "Notes",
        "page": None,
        "text": "unrelated notes",
        "score": 0.95,
    },
]


class HashingEmbedder:
    """A small deterministic Embedder (the protocol from context_assistant.retrieval.embeddings) for self-managed mode."""

    model_name = "hashing-test-3"
    dimension = 3

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return [[b / 255 + 0.01 for b in hashlib.sha256(t.encode()).digest()[:3]] for t in texts]


@pytest.fixture(scope="module")
def loopback() -> Iterator[FakeDatabricks]:
    server = FakeDatabricks()
    yield server
    server.close()


@pytest.fixture
def fake_databricks(loopback: FakeDatabricks) -> FakeDatabricks:
    """conftest's server, but one per module, emptied for each test: stopping a server takes 0.5 s."""
    loopback.routes.clear()
    loopback.requests.clear()
    return loopback


@pytest.fixture
def vs(fake_databricks: FakeDatabricks, clock: FakeClock) -> VectorSearchFake:
    return VectorSearchFake(fake_databricks, clock)


def settings(**changes: Any) -> VectorSearchSettings:
    values: dict[str, Any] = {
        "endpoint": ENDPOINT,
        "index_name": INDEX,
        "source_table": TABLE,
        "embeddings": "managed",
        "embedding_model": MODEL,
        "query_type": "HYBRID",
        "top_k": 5,
        "timeout_seconds": 3600.0,
    }
    values.update(changes)
    return VectorSearchSettings(**values)


@pytest.fixture
def make_index(fake_databricks: Any, clock: FakeClock) -> Callable[..., VectorSearchIndex]:
    def make(workspace: Any = None, embedder: Any = None, **changes: Any) -> VectorSearchIndex:
        return VectorSearchIndex(
            workspace or fake_databricks.workspace_client(),
            settings(**changes),
            embedder=embedder,
            clock=clock,
            poll_seconds=10.0,
        )

    return make


def ready_index(vs: VectorSearchFake, endpoint_type: str = "STANDARD", **kwargs: Any) -> None:
    vs.add_endpoint(ENDPOINT, endpoint_type=endpoint_type)
    vs.add_index(INDEX, ENDPOINT, source_table=TABLE, rows=ROWS, **kwargs)


# --- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"vector_search_endpoint": ""},
            "rag.vector_search_endpoint must be set (the Vector Search endpoint name) when rag.backend is vector_search",
        ),
        (
            {"index_name": ""},
            "rag.index_name must be set (catalog.schema.index) when rag.backend is vector_search",
        ),
        ({"index_name": "chunks_index"}, "rag.index_name: 'chunks_index' must be a Unity Catalog name"),
        (
            {"chunk_table": "chunks"},
            "rag.chunk_table: 'chunks' must be a Unity Catalog table (catalog.schema.table)",
        ),
        (
            {"embedding_model": "all-MiniLM-L6-v2"},
            "rag.embedding_model: 'all-MiniLM-L6-v2' is not a serving endpoint; managed Vector Search embeddings",
        ),
    ],
)
def test_configuration_gaps_are_reported_before_any_request(changes: dict[str, Any], message: str) -> None:
    base = {
        "backend": "vector_search",
        "vector_search_endpoint": ENDPOINT,
        "index_name": INDEX,
        "chunk_table": TABLE,
        "embedding_model": MODEL,
    }
    rag = RagConfig(**{**base, **changes})
    with pytest.raises(ConfigError) as err:
        VectorSearchSettings.from_rag_config(rag)
    assert str(err.value).startswith(message)


def test_settings_from_config_read_the_rag_section() -> None:
    rag = RagConfig(
        backend="vector_search",
        vector_search_endpoint=ENDPOINT,
        index_name=INDEX,
        chunk_table=TABLE,
        embedding_model="endpoint:team-embedder",
        vector_search_query_type="ANN",
        top_k=7,
    )
    s = VectorSearchSettings.from_rag_config(rag)
    assert (s.endpoint, s.index_name, s.source_table, s.query_type, s.top_k) == (ENDPOINT, INDEX, TABLE, "ANN", 7)
    assert s.serving_endpoint == "team-embedder"
    assert s.embeddings == "managed"


def test_self_managed_needs_an_embedder(fake_databricks: Any) -> None:
    with pytest.raises(ConfigError, match="self_managed needs an embedder"):
        VectorSearchIndex(fake_databricks.workspace_client(), settings(embeddings="self_managed"))


# --- create if missing, wait until ready --------------------------------------------------------------------


def test_creates_endpoint_and_index_when_missing_and_waits_until_ready(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex], clock: FakeClock, fake_databricks: Any
) -> None:
    vs.endpoint_ready_after, vs.index_ready_after = 45.0, 95.0
    report = make_index().refresh()

    (create_endpoint,) = vs.calls(f"{VS}/endpoints", "POST")
    assert create_endpoint.json == {"name": ENDPOINT, "endpoint_type": "STANDARD"}
    (create_index,) = vs.calls(f"{VS}/indexes", "POST")
    assert create_index.json == {
        "name": INDEX,
        "endpoint_name": ENDPOINT,
        "primary_key": "chunk_id",
        "index_type": "DELTA_SYNC",
        "delta_sync_index_spec": {
            "source_table": TABLE,
            "pipeline_type": "TRIGGERED",
            "columns_to_sync": ["chunk_id", "path", "heading", "page", "text", "content_hash"],
            "embedding_source_columns": [{"name": "text", "embedding_model_endpoint_name": MODEL}],
        },
    }
    # The index was created only once the endpoint was ONLINE, and refresh returned only after the build.
    endpoint_polls = vs.calls(f"{VS}/endpoints/{ENDPOINT}", "GET")
    assert len(endpoint_polls) >= 5  # PROVISIONING at 0, 10, ..., 40; ONLINE at 50
    assert clock.monotonic() >= 45.0 + 95.0
    assert report.endpoint_created and report.index_created
    assert not report.sync_triggered and vs.sync_requests == 0  # the initial build read the whole table
    assert report.state == "ONLINE_NO_PENDING_UPDATE"
    assert report.to_json()["index"] == INDEX
    assert report.summary().startswith(
        f"Vector Search index {INDEX}: created the endpoint, created the index (initial build done), 0 rows indexed"
    )
    # Every API request carried the workspace token (the SDK's unauthenticated host-metadata probe aside).
    api_requests = [r for r in fake_databricks.requests if r.path.startswith("/api/")]
    assert len(api_requests) > 10
    assert {r.headers.get("authorization") for r in api_requests} == {"Bearer dapi-test-token"}


def test_existing_endpoint_and_index_are_used_not_recreated(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    ready_index(vs)
    report = make_index().refresh()
    assert not vs.calls(f"{VS}/endpoints", "POST") and not vs.calls(f"{VS}/indexes", "POST")
    assert not report.endpoint_created and not report.index_created
    assert report.sync_triggered and report.sync_completed


def test_storage_optimized_endpoint_type_is_requested_when_configured(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    make_index(endpoint_type="STORAGE_OPTIMIZED").refresh()
    assert vs.calls(f"{VS}/endpoints", "POST")[0].json["endpoint_type"] == "STORAGE_OPTIMIZED"


def test_an_existing_endpoint_still_provisioning_is_waited_for(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex], clock: FakeClock
) -> None:
    endpoint = vs.add_endpoint(ENDPOINT, state="PROVISIONING")
    endpoint.states.then(clock.monotonic() + 30, "ONLINE")
    vs.add_index(INDEX, ENDPOINT, source_table=TABLE)
    make_index().refresh()
    assert vs.sync_times and vs.sync_times[0] >= 30


def test_self_managed_index_is_created_with_the_embedders_dimension(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    make_index(embeddings="self_managed", embedder=HashingEmbedder()).refresh()
    spec = vs.calls(f"{VS}/indexes", "POST")[0].json["delta_sync_index_spec"]
    assert spec["embedding_vector_columns"] == [{"name": "embedding", "embedding_dimension": 3}]
    assert "embedding_source_columns" not in spec


@pytest.mark.parametrize(
    ("index_kwargs", "problem"),
    [
        (
            {"source_table": "main.other.table"},
            "it syncs from main.other.table (rag.chunk_table: main.assistant.chunks)",
        ),
        ({"model": "databricks-bge-large-en"}, "it embeds with databricks-bge-large-en (rag.embedding_model:"),
        ({"primary_key": "id"}, "its primary key is 'id', not 'chunk_id'"),
        ({"model": None, "vector_dimension": 1024}, "it does not embed the 'text' column"),
    ],
)
def test_an_existing_index_that_does_not_match_the_configuration_is_refused(
    vs: VectorSearchFake,
    make_index: Callable[..., VectorSearchIndex],
    index_kwargs: dict[str, Any],
    problem: str,
) -> None:
    vs.add_endpoint(ENDPOINT)
    vs.add_index(INDEX, ENDPOINT, **{"source_table": TABLE, **index_kwargs})
    with pytest.raises(ConfigError) as err:
        make_index().refresh()
    message = str(err.value)
    assert message.startswith(f"Vector Search index {INDEX} exists but does not match the configuration: ")
    assert problem in message
    assert message.endswith("delete this one to have it recreated.")
    assert vs.sync_requests == 0


def test_self_managed_dimension_mismatch_is_refused(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    vs.add_endpoint(ENDPOINT)
    vs.add_index(INDEX, ENDPOINT, source_table=TABLE, model=None, vector_dimension=1024)
    with pytest.raises(ConfigError, match="its vectors have dimension 1024, the embedder hashing-test-3 gives 3"):
        make_index(embeddings="self_managed", embedder=HashingEmbedder()).refresh()


def test_an_offline_endpoint_is_a_clear_error(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    vs.add_endpoint(ENDPOINT, state="OFFLINE").message = "capacity unavailable"
    with pytest.raises(
        VectorSearchError, match=f"^Vector Search endpoint {ENDPOINT} is OFFLINE: capacity unavailable$"
    ):
        make_index().refresh()
    assert not vs.calls(f"{VS}/indexes", "POST")


def test_a_failed_index_build_is_a_clear_error(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    vs.add_endpoint(ENDPOINT)
    vs.add_index(INDEX, ENDPOINT, source_table=TABLE, state="OFFLINE_FAILED").message = "source table has no CDF"
    with pytest.raises(
        VectorSearchError, match=f"^Vector Search index {INDEX} is OFFLINE_FAILED: source table has no CDF$"
    ):
        make_index().refresh()
    assert vs.sync_requests == 0


def test_waiting_for_the_endpoint_times_out_with_the_last_state(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    vs.endpoint_ready_after = 10_000
    with pytest.raises(VectorSearchTimeout) as err:
        make_index(timeout_seconds=120).refresh()
    assert str(err.value).startswith(
        f"timed out after 120s waiting for endpoint {ENDPOINT} to be ONLINE (last state: PROVISIONING); "
    )


# --- sync: exactly one, never overlapping -------------------------------------------------------------------


def test_sync_is_triggered_once_and_waited_for(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex], clock: FakeClock
) -> None:
    ready_index(vs)
    vs.sync_seconds = 45
    report = make_index().refresh()
    assert vs.sync_requests == 1 and vs.sync_times == [0.0]
    (sync,) = vs.calls(f"{VS}/indexes/{re.escape(INDEX)}/sync", "POST")
    assert sync.json == {}
    assert clock.monotonic() >= 45  # returned only once the sync was done
    assert report.sync_completed and report.state == "ONLINE_NO_PENDING_UPDATE"
    assert report.indexed_row_count == len(ROWS)
    assert not report.waited_for_running_sync
    assert (
        report.summary()
        == f"Vector Search index {INDEX}: synced, 4 rows indexed; state ONLINE_NO_PENDING_UPDATE; 50s."
    )


def test_a_sync_requested_while_one_runs_waits_then_triggers_exactly_one(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex], clock: FakeClock
) -> None:
    ready_index(vs)
    vs.start_external_sync(INDEX, seconds=75)  # e.g. the previous job run's sync
    report = make_index().refresh()
    assert vs.overlapping_syncs == 0
    assert vs.sync_requests == 1
    assert vs.sync_times[0] >= 75  # ours started only after the running one finished
    assert report.waited_for_running_sync and report.sync_completed


def test_completion_is_read_from_the_pipeline_not_a_lagging_index_state(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex], clock: FakeClock
) -> None:
    ready_index(vs)
    # For 45 s after /sync the index still says ONLINE_NO_PENDING_UPDATE; the pipeline update shows at once.
    vs.sync_seconds, vs.index_state_lag, vs.sync_queued_for = 60, 45, 15
    make_index().refresh()
    assert clock.monotonic() >= 60


def test_without_pipeline_access_the_index_state_is_used(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex], clock: FakeClock
) -> None:
    ready_index(vs)
    vs.pipeline_status = 403
    vs.sync_seconds, vs.index_state_lag = 60, 15  # the index shows the update only 15 s after /sync
    report = make_index().refresh()
    assert clock.monotonic() >= 60
    assert report.sync_completed
    assert "the sync pipeline could not be read; sync progress came from the index state" in report.notes


def test_without_pipeline_access_a_running_sync_is_still_waited_out(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    ready_index(vs)
    vs.pipeline_status = 403
    vs.start_external_sync(INDEX, seconds=50)
    make_index().refresh()
    assert vs.overlapping_syncs == 0 and vs.sync_times[0] >= 50


def test_a_sync_that_another_job_started_first_is_used_instead_of_a_second(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex], clock: FakeClock
) -> None:
    ready_index(vs)
    vs.race_next_sync = 40  # another job's sync begins between our idle check and our request
    report = make_index().refresh()
    assert not report.sync_triggered and report.sync_completed
    assert vs.sync_times == [] and clock.monotonic() >= 40
    assert "another sync started just before ours; used that one instead of a second" in report.notes


def test_a_failed_sync_is_reported(vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]) -> None:
    ready_index(vs)
    vs.sync_outcome = "FAILED"
    with pytest.raises(
        VectorSearchError, match=rf"^the sync of Vector Search index {re.escape(INDEX)} ended FAILED"
    ):
        make_index().refresh()


def test_waiting_for_a_running_sync_times_out_without_starting_another(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    ready_index(vs)
    vs.start_external_sync(INDEX, seconds=10_000)
    with pytest.raises(VectorSearchTimeout) as err:
        make_index(timeout_seconds=300).refresh()
    assert str(err.value).startswith(
        f"timed out after 300s waiting for the running sync of index {INDEX} to finish "
        "(last state: ONLINE_TRIGGERED_UPDATE, pipeline update "
    )
    assert vs.sync_requests == 0


def test_a_continuous_index_is_not_synced(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    ready_index(vs, pipeline_type="CONTINUOUS")
    report = make_index().refresh()
    assert vs.sync_requests == 0 and not report.sync_triggered
    assert "CONTINUOUS" in report.notes[0]


def test_an_index_without_detailed_state_falls_back_to_ready(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    vs.report_detailed_state = False
    report = make_index().refresh()
    assert report.index_created and report.state == "ready"


# --- query --------------------------------------------------------------------------------------------------


def test_hybrid_query_request_and_result_mapping(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    ready_index(vs)
    hits = make_index(top_k=3).search("how do I rotate keys")
    (body,) = vs.query_bodies(INDEX)
    assert body == {
        "columns": COLUMNS,
        "num_results": 3,
        "query_type": "HYBRID",
        "query_text": "how do I rotate keys",
    }
    assert hits == [
        Hit("c4", "teamsters/notes.md", "Notes", None, "unrelated notes", 0.95),
        Hit("c1", "teams/data/rotation.md", "Rotating keys", None, ROWS[0]["text"], 0.91),
        Hit("c2", "handbook.pdf", "", 3, ROWS[1]["text"], 0.72),
    ]
    assert isinstance(hits[2].page, int)


@pytest.mark.parametrize(
    ("mode", "query_type"), [("vector", "ANN"), ("hybrid", "HYBRID"), ("keyword", "FULL_TEXT")]
)
def test_mode_selects_the_query_type(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex], mode: str, query_type: str
) -> None:
    ready_index(vs)
    make_index(query_type="ANN").search("keys", mode=mode, top_k=2)
    assert vs.query_bodies(INDEX)[0]["query_type"] == query_type


def test_configured_ann_query_type_is_the_default(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    ready_index(vs)
    make_index(query_type="ANN").search("keys")
    assert vs.query_bodies(INDEX)[0] == {
        "columns": COLUMNS,
        "num_results": 5,
        "query_type": "ANN",
        "query_text": "keys",
    }


def test_bad_queries_are_refused_before_any_request(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    ready_index(vs)
    index = make_index()
    with pytest.raises(RetrievalError, match="the query is empty"):
        index.search("  ")
    with pytest.raises(RetrievalError, match="search mode 'fuzzy' is not one of vector, keyword, hybrid"):
        index.search("keys", mode="fuzzy")
    with pytest.raises(RetrievalError, match="top_k must be at least 1, got 0"):
        index.search("keys", top_k=0)
    assert vs.query_bodies(INDEX) == []


def test_path_prefix_on_a_standard_endpoint_overfetches_and_keeps_exact_prefix_matches(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    ready_index(vs)
    hits = make_index(top_k=5).search("keys", path_prefix="teams/")
    (body,) = vs.query_bodies(INDEX)
    assert body["num_results"] == MAX_RESULTS
    assert "filters_json" not in body and "filter_string" not in body
    assert [h.chunk_id for h in hits] == ["c1", "c3"]  # not teamsters/notes.md, though it scores highest


def test_path_prefix_results_are_cut_to_top_k(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    ready_index(vs)
    hits = make_index().search("keys", path_prefix="teams", top_k=2)
    assert [h.chunk_id for h in hits] == ["c4", "c1"]


def test_path_prefix_on_a_storage_optimized_endpoint_is_a_server_side_filter(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    ready_index(vs, endpoint_type="STORAGE_OPTIMIZED")
    vs.indexes[INDEX].rows.append({**ROWS[2], "chunk_id": "c5", "path": "team's/x.md", "score": 0.5})
    index = make_index(top_k=4)
    hits = index.search("keys", path_prefix="team's/")
    (body,) = vs.query_bodies(INDEX)
    assert body["filter_string"] == "path LIKE 'team''s/%'"
    assert body["num_results"] == 4
    assert [h.chunk_id for h in hits] == ["c5"]


def test_self_managed_queries_send_our_query_vector(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    ready_index(vs, model=None, vector_dimension=3)
    embedder = HashingEmbedder()
    index = make_index(embeddings="self_managed", embedder=embedder)
    index.search("rotate keys")  # HYBRID: the vector side and the keyword side
    index.search("rotate keys", mode="vector")  # ANN: the vector only
    hybrid, ann = vs.query_bodies(INDEX)
    expected = embedder.embed(["rotate keys"])[0]
    assert hybrid["query_vector"] == pytest.approx(expected) and hybrid["query_text"] == "rotate keys"
    assert ann["query_vector"] == pytest.approx(expected) and "query_text" not in ann


def test_querying_a_missing_index_says_to_sync(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    with pytest.raises(IndexNotReady) as err:
        make_index().search("keys")
    assert (
        str(err.value) == f"Vector Search index {INDEX} does not exist: run `context-assistant sync` to create it"
    )


def test_a_rejected_query_surfaces_the_service_message(
    vs: VectorSearchFake, make_index: Callable[..., VectorSearchIndex]
) -> None:
    vs.add_endpoint(ENDPOINT)
    vs.add_index(INDEX, ENDPOINT, source_table=TABLE, state="PROVISIONING_INITIAL_SNAPSHOT")
    with pytest.raises(VectorSearchError) as err:
        make_index().search("keys")
    assert str(err.value) == f"Vector Search query index {INDEX} failed: index is not ready to serve queries"


# --- 429: the SDK retries, on our clock --------------------------------------------------------------------


def test_rate_limited_requests_are_retried_by_the_sdk_honouring_retry_after(
    vs: VectorSearchFake, fake_databricks: Any, make_index: Callable[..., VectorSearchIndex], clock: FakeClock
) -> None:
    ready_index(vs)
    vs.throttle(f"{VS}/indexes/.*/query", times=2, retry_after=7)
    hits = make_index(workspace=workspace_client(fake_databricks, clock, retry_timeout_seconds=60)).search("keys")
    assert len(hits) == 4
    assert len(vs.calls(f"{VS}/indexes/.*/query", "POST")) == 3
    retry_sleeps = [s for s in clock.sleeps if 7 <= s < 8]  # Retry-After plus the SDK's jitter below 1 s
    assert len(retry_sleeps) == 2


def test_persistent_rate_limiting_gives_a_clear_error(
    vs: VectorSearchFake, fake_databricks: Any, make_index: Callable[..., VectorSearchIndex], clock: FakeClock
) -> None:
    ready_index(vs)
    vs.throttle(f"{VS}/indexes/.*/query", times=1000, retry_after=2)
    index = make_index(workspace=workspace_client(fake_databricks, clock, retry_timeout_seconds=5))
    with pytest.raises(VectorSearchError) as err:
        index.search("keys")
    assert str(err.value) == (
        f"Vector Search query index {INDEX} failed: still failing after the SDK's retries "
        "(rate limit exceeded, slow down)"
    )


def test_rate_limited_sync_requests_are_retried_too(
    vs: VectorSearchFake, fake_databricks: Any, make_index: Callable[..., VectorSearchIndex], clock: FakeClock
) -> None:
    ready_index(vs)
    vs.throttle(f"{VS}/indexes/.*/sync", times=1, retry_after=3)
    report = make_index(workspace=workspace_client(fake_databricks, clock)).refresh()
    assert report.sync_completed and vs.sync_requests == 1 and vs.overlapping_syncs == 0


# --- response mapping -----------------------------------------------------------------------------------------


def _response(body: dict[str, Any]) -> Any:
    from databricks.sdk.service.vectorsearch import QueryVectorIndexResponse

    return QueryVectorIndexResponse.from_dict(body)


def test_columns_are_mapped_by_name_and_the_score_is_the_last_column() -> None:
    response = _response(
        {
            "manifest": {
                "columns": [{"name": n} for n in ["text", "page", "path", "chunk_id", "heading", "score"]]
            },
            "result": {"row_count": 1, "data_array": [["body", "12", "a.pdf", "id1", None, 0.5]]},
        }
    )
    assert hits_from_response(response) == [Hit("id1", "a.pdf", "", 12, "body", 0.5)]


def test_an_empty_result_is_no_hits() -> None:
    assert (
        hits_from_response(_response({"manifest": {"columns": [{"name": "score"}]}, "result": {"row_count": 0}}))
        == []
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"result": {"data_array": [["x", 1.0]]}},
            "Vector Search returned rows without a manifest of their columns",
        ),
        (
            {
                "manifest": {"columns": [{"name": "chunk_id"}, {"name": "score"}]},
                "result": {"data_array": [["x", 1.0]]},
            },
            "Vector Search results lack the column(s) path, heading, page, text",
        ),
    ],
)
def test_malformed_responses_are_clear_errors(body: dict[str, Any], message: str) -> None:
    with pytest.raises(VectorSearchError) as err:
        hits_from_response(_response(body))
    assert str(err.value) == message


def test_services_wire_the_backend_for_sync_and_search(
    vs: VectorSearchFake, fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    from context_assistant.core.config import Config
    from context_assistant.refresh import refresh_index
    from context_assistant.services import Services

    ready_index(vs)
    rag = RagConfig(
        backend="vector_search",
        vector_search_endpoint=ENDPOINT,
        index_name=INDEX,
        chunk_table=TABLE,
        embedding_model=MODEL,
        top_k=2,
    )
    services = Services(
        Config().replace(rag=rag), env={}, clock=clock, workspace_factory=fake_databricks.workspace_client
    )
    assert isinstance(services.chunk_index, VectorSearchIndex)
    result = refresh_index(services)
    assert result.to_json()["sync_completed"] is True and vs.sync_requests == 1
    assert [h.chunk_id for h in services.retriever.search("keys")] == ["c4", "c1"]
