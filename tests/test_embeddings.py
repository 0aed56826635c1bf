"""Embeddings: the model-name rules, vector validation, the local model, and the serving-endpoint client.

The serving-endpoint tests drive the real client (httpx with databricks-sdk authentication) against the
``fake_databricks`` loopback server, which speaks the documented embeddings REST shape:
``POST /serving-endpoints/{name}/invocations`` with ``{"input": [...]}`` answered by
``{"data": [{"embedding": [...], "index": i}]}``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from context_assistant.core.config import load_config
from context_assistant.core.retries import retry_after_seconds
from context_assistant.retrieval.batching import BatchingEmbedder
from context_assistant.retrieval.embedder_choice import make_embedder
from context_assistant.retrieval.embeddings import (
    MINILM,
    CachingEmbedder,
    EmbeddingError,
    LocalEmbedder,
    ServingEndpointEmbedder,
    parse_model_spec,
    validate_vectors,
)
from context_assistant.retrieval.model_process import ModelProcessEmbedder
from fake_databricks import Response
from retrieval_support import minilm  # noqa: F401  (session fixture)

ENDPOINT_PATH = r"/serving-endpoints/([^/]+)/invocations"


def test_model_names_choose_local_or_endpoint() -> None:
    assert parse_model_spec("all-MiniLM-L6-v2") == parse_model_spec("all-MiniLM-L6-v2")
    assert parse_model_spec("all-MiniLM-L6-v2").provider == "local"
    assert parse_model_spec("databricks-gte-large-en").provider == "endpoint"
    spec = parse_model_spec("endpoint:my-embedder")
    assert (spec.provider, spec.name) == ("endpoint", "my-embedder")
    spec = parse_model_spec("local:databricks-lookalike")
    assert (spec.provider, spec.name) == ("local", "databricks-lookalike")
    with pytest.raises(EmbeddingError, match=r"rag\.embedding_model is empty"):
        parse_model_spec("  ")
    with pytest.raises(EmbeddingError, match="nothing after 'endpoint:'"):
        parse_model_spec("endpoint:")


def test_make_embedder_builds_nothing_expensive_up_front() -> None:
    cached = make_embedder(load_config(None, env={}).rag, serving=True)
    assert isinstance(cached, CachingEmbedder) and cached.model_name == MINILM
    batcher = (
        cached.inner
    )  # the web app's concurrent calls of a local model are micro-batched (test_embed_batching)
    assert isinstance(batcher, BatchingEmbedder) and batcher._thread is None  # no thread until a call
    child = batcher.inner  # the model runs in a child process (test_model_process), started on the first call
    assert isinstance(child, ModelProcessEmbedder) and child.model_name == MINILM and child.starts == 0
    local = make_embedder(load_config(None, env={}).rag).inner
    assert isinstance(local, LocalEmbedder) and local.model_name == MINILM and local._model is None
    rag = load_config(None, env={}, overrides={"rag.embedding_model": "databricks-gte-large-en"}).rag
    built: list[int] = []
    remote = make_embedder(rag, lambda: built.append(1)).inner
    assert isinstance(remote, ServingEndpointEmbedder) and remote.endpoint == "databricks-gte-large-en"
    assert built == []  # the workspace client is only made when a request goes out
    with pytest.raises(EmbeddingError, match="needs a Databricks workspace client"):
        make_embedder(rag, None)


@pytest.mark.parametrize(
    ("vectors", "count", "dim", "message"),
    [
        ([[1.0, 0.0]], 2, 2, "returned 1 vectors for 2 inputs"),
        ([[1.0, 0.0, 0.0]], 1, 2, "vector of length 3 \\(input 0\\); expected 2"),
        ([[1.0, math.nan]], 1, 2, "NaN or infinite values \\(input 0\\)"),
        ([[1.0, 1.0], [math.inf, 0.0]], 2, 2, "NaN or infinite values \\(input 1\\)"),
        ([[1.0, 1.0], [0.0, 0.0]], 2, 2, "all-zero vector \\(input 1\\)"),
        ([["a", "b"]], 1, 2, "not a list of number vectors"),
        ([[]], 1, None, "vector of length 0"),
    ],
)
def test_bad_vectors_are_rejected(vectors: Any, count: int, dim: int | None, message: str) -> None:
    with pytest.raises(EmbeddingError, match=f"model X returned .*{message}|model X {message}"):
        validate_vectors(vectors, count, dim, "model X")


def test_good_vectors_pass_through() -> None:
    assert validate_vectors([[3, 4]], 1, None, "m") == [[3.0, 4.0]]


def test_local_minilm(minilm: LocalEmbedder) -> None:  # noqa: F811
    vectors = minilm.embed(["Deploy the bundle to production.", "How do I ship the app?", ""])
    assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-4 for v in vectors)
    assert minilm.embed([]) == []
    # Both spellings of the name are the bundled model, loaded once per process.
    other = LocalEmbedder("sentence-transformers/all-MiniLM-L6-v2")
    assert other.model_name == minilm.model_name == MINILM
    assert other.model is minilm.model


def test_local_model_that_is_not_available_offline() -> None:
    embedder = LocalEmbedder("no-such-org/no-such-model-xyz")
    with pytest.raises(EmbeddingError, match="could not load the embedding model 'no-such-org/no-such-model-xyz'"):
        embedder.embed(["hello"])


# ---------------------------------------------------------------------------------------------------------
# Serving endpoints over loopback HTTP


def _vector(i: int, dim: int = 8) -> list[float]:
    return [float(i + 1)] + [0.5] * (dim - 1)


def _answer(request: Any, dim: int = 8, shuffle: bool = True) -> dict[str, Any]:
    texts = request.json["input"]
    data = [{"object": "embedding", "index": i, "embedding": _vector(i, dim)} for i in range(len(texts))]
    return {"object": "list", "data": list(reversed(data)) if shuffle else data, "model": "gte"}


def test_endpoint_request_shape_auth_batching_and_order(fake_databricks: Any, clock: Any) -> None:
    fake_databricks.on("POST", ENDPOINT_PATH, _answer)
    embedder = ServingEndpointEmbedder(
        "databricks-gte-large-en", fake_databricks.workspace_client(), batch_size=2, clock=clock
    )
    vectors = embedder.embed(["a", "b", "c", "d", "e"])
    # Answers arrive in reverse order; ``index`` puts them back.
    assert vectors == [_vector(0), _vector(1), _vector(0), _vector(1), _vector(0)]
    calls = fake_databricks.calls(ENDPOINT_PATH, "POST")
    assert [c.json for c in calls] == [{"input": ["a", "b"]}, {"input": ["c", "d"]}, {"input": ["e"]}]
    assert all(c.match.group(1) == "databricks-gte-large-en" for c in calls)
    assert all(c.headers["authorization"] == "Bearer dapi-test-token" for c in calls)
    assert calls[0].headers["content-type"] == "application/json"
    assert embedder.dimension == 8  # learnt from the answers: no extra probe request
    assert len(fake_databricks.calls(ENDPOINT_PATH)) == 3


def test_endpoint_dimension_is_probed_from_the_model(fake_databricks: Any, clock: Any) -> None:
    fake_databricks.on("POST", ENDPOINT_PATH, lambda r: _answer(r, dim=1024))
    embedder = ServingEndpointEmbedder("databricks-bge-large-en", fake_databricks.workspace_client(), clock=clock)
    assert embedder.dimension == 1024
    assert [c.json for c in fake_databricks.calls(ENDPOINT_PATH)] == [{"input": ["dimension probe"]}]


def test_endpoint_retries_429_honouring_retry_after_then_succeeds(fake_databricks: Any, clock: Any) -> None:
    answers = iter(
        [
            Response(429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}, {"Retry-After": "7"}),
            Response(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling up"}),
        ]
    )

    def handler(request: Any) -> Any:
        return next(answers, None) or _answer(request)

    fake_databricks.on("POST", ENDPOINT_PATH, handler)
    embedder = ServingEndpointEmbedder("databricks-gte-large-en", fake_databricks.workspace_client(), clock=clock)
    assert embedder.embed(["x"]) == [_vector(0)]
    assert len(fake_databricks.calls(ENDPOINT_PATH)) == 3
    assert clock.sleeps[0] == 7.0  # Retry-After honoured
    assert 0 < clock.sleeps[1] <= 20.0  # then exponential backoff with jitter


def test_endpoint_4xx_fails_at_once_naming_the_endpoint(fake_databricks: Any, clock: Any) -> None:
    fake_databricks.on(
        "POST",
        ENDPOINT_PATH,
        Response(400, {"error_code": "BAD_REQUEST", "message": "Input is too long: 9000 tokens"}),
    )
    embedder = ServingEndpointEmbedder("my-embedder", fake_databricks.workspace_client(), clock=clock)
    with pytest.raises(EmbeddingError) as error:
        embedder.embed(["x" * 10])
    assert str(error.value) == (
        "serving endpoint 'my-embedder' rejected the request (400) (server said: BAD_REQUEST: Input is too long: "
        "9000 tokens)"
    )
    assert len(fake_databricks.calls(ENDPOINT_PATH)) == 1 and clock.sleeps == []


def test_endpoint_not_found_and_forbidden(fake_databricks: Any, clock: Any) -> None:
    fake_databricks.on(
        "POST",
        "/serving-endpoints/gone/invocations",
        Response(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Endpoint gone does not exist"}),
    )
    fake_databricks.on(
        "POST",
        "/serving-endpoints/locked/invocations",
        Response(403, {"error_code": "PERMISSION_DENIED", "message": "no access"}),
    )
    workspace = fake_databricks.workspace_client()
    with pytest.raises(
        EmbeddingError, match=r"serving endpoint 'gone' was not found \(404\) — check rag\.embedding_model"
    ):
        ServingEndpointEmbedder("gone", workspace, clock=clock).embed(["x"])
    with pytest.raises(
        EmbeddingError, match=r"no permission to use serving endpoint 'locked' \(403\) — it needs CAN_QUERY"
    ):
        ServingEndpointEmbedder("locked", workspace, clock=clock).embed(["x"])


def test_endpoint_gives_up_after_repeated_5xx(fake_databricks: Any, clock: Any) -> None:
    fake_databricks.on("POST", ENDPOINT_PATH, Response(500, {"error_code": "INTERNAL_ERROR", "message": "boom"}))
    embedder = ServingEndpointEmbedder("e", fake_databricks.workspace_client(), clock=clock, attempts=3)
    with pytest.raises(EmbeddingError, match="serving endpoint 'e' kept failing after 3 attempts: HTTP 500"):
        embedder.embed(["x"])
    assert len(fake_databricks.calls(ENDPOINT_PATH)) == 3 and len(clock.sleeps) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"data": [{"index": 0, "embedding": [0.0, 0.0, 0.0]}]}, "returned an all-zero vector"),
        ({"data": [{"index": 0, "embedding": [1.0, None]}]}, "not a list of number vectors|NaN"),
        ({"data": []}, "returned 0 vectors for 1 inputs"),
        ({"data": [{"index": 0}]}, "'data' items must be objects with 'embedding'"),
        ({"choices": [{"text": "hi"}]}, "did not answer in the embeddings format"),
    ],
)
def test_endpoint_bad_answers_never_become_vectors(
    fake_databricks: Any, clock: Any, body: Any, message: str
) -> None:
    fake_databricks.on("POST", ENDPOINT_PATH, Response(200, body))
    embedder = ServingEndpointEmbedder("e", fake_databricks.workspace_client(), clock=clock)
    with pytest.raises(EmbeddingError, match=message):
        embedder.embed(["x"])


def test_custom_endpoint_predictions_shape(fake_databricks: Any, clock: Any) -> None:
    fake_databricks.on(
        "POST", ENDPOINT_PATH, lambda r: {"predictions": [_vector(i, 4) for i in range(len(r.json["input"]))]}
    )
    embedder = ServingEndpointEmbedder("custom", fake_databricks.workspace_client(), clock=clock)
    assert embedder.embed(["a", "b"]) == [_vector(0, 4), _vector(1, 4)]


def test_retry_after_header_forms() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert retry_after_seconds({"retry-after": "3"}, epoch) == 3.0
    assert retry_after_seconds({}, epoch) is None
    assert (
        retry_after_seconds({"retry-after": "Thu, 01 Jan 1970 00:00:10 GMT"}, epoch + timedelta(seconds=4)) == 6.0
    )
    assert retry_after_seconds({"retry-after": "soon"}, epoch) is None
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}, epoch) == 1.5


def test_caching_embedder_embeds_a_question_once_and_never_caches_bulk_batches() -> None:
    from retrieval_support import CountingEmbedder, HashingEmbedder

    counting = CountingEmbedder(HashingEmbedder())
    cached = CachingEmbedder(counting, capacity=2)
    first = cached.embed(["when is the handover?"])
    assert cached.embed(["when is the handover?"]) == first and counting.texts == ["when is the handover?"]
    # A mixed call embeds only what it has not seen.
    cached.embed(["when is the handover?", "who approves deploys?"])
    assert counting.texts[-1:] == ["who approves deploys?"]
    # Least recently used texts leave when the cache is full.
    cached.embed(["third"])
    cached.embed(["when is the handover?"])
    assert counting.texts[-1] == "when is the handover?"
    # Bulk calls (a sync batch) are looked up but not stored.
    bulk = [f"chunk {i}" for i in range(20)]
    cached.embed(bulk)
    calls = counting.calls
    cached.embed(["chunk 3"])
    assert counting.calls == calls + 1
