"""Retrieval quality floor: the default configuration, the real model, the project's labelled set.

CI's guard against a change that silently makes answers worse (a fusion, chunking, BM25 or embedding-text
change): ``fixtures/eval`` (62 handbook documents, 52 queries; see its README) is indexed with the real
all-MiniLM-L6-v2 into a real pgvector database, exactly as ``benchmarks/retrieval_eval.py`` does, with the
index settings a user gets by default (``load_config`` with no file), and every search mode must stay above a
floor. The floors sit a few points under what the code scores today (README, "Quality": vector 0.981 / 0.967,
keyword 0.894 / 0.838, hybrid 0.990 / 0.963 recall@5 / nDCG@10), so noise-free small changes pass and a real
regression fails. The opt-in second stage ``rag.reranker: sentences`` has a floor of its own over the same
index (1.000 / 0.977 today). A quality floor, not a timing: the run takes a few seconds (plus embedding the
62 documents' sentences once) and asserts no speed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from context_assistant.core import load_config
from context_assistant.retrieval.evaluation import evaluate, index_corpus, load_corpus, load_queries
from context_assistant.retrieval.rerank import RerankingRetriever, SentenceReranker
from context_assistant.storage.db import Database
from context_assistant.storage.targets import Target
from retrieval_support import minilm  # noqa: F401

EVAL = Path(__file__).resolve().parents[1] / "fixtures" / "eval"

# mode -> (recall@5, nDCG@10) floors over all 52 queries.
FLOORS = {
    "vector": (0.95, 0.93),
    "keyword": (0.85, 0.78),
    "hybrid": (0.97, 0.90),
}
SENTENCES_FLOOR = (0.97, 0.92)  # hybrid + rag.reranker: sentences (today 1.000 / 0.953)


@pytest.fixture(scope="module")
def index(pg_server, minilm):  # type: ignore[no-untyped-def]  # noqa: F811
    name = pg_server.create_database("quality")
    db = Database(Target("postgres", pg_server.uri(name), "quality floor database"), max_size=2)
    try:
        rag = load_config(None, env={}).rag  # what a user gets without a config file
        index, result = index_corpus(db, minilm, rag, load_corpus(EVAL / "corpus.jsonl"))
        assert result.ok and result.added == 62
        yield index
    finally:
        db.close()
        pg_server.drop_database(name)


@pytest.fixture(scope="module")
def report(index):  # type: ignore[no-untyped-def]
    return evaluate(index, load_queries(EVAL / "queries.jsonl"), modes=tuple(FLOORS))


@pytest.mark.parametrize("mode", list(FLOORS))
def test_default_search_stays_above_the_quality_floor(report, mode: str) -> None:  # type: ignore[no-untyped-def]
    recall_floor, ndcg_floor = FLOORS[mode]
    overall = report[mode]["all"]
    assert overall["n"] == 52
    assert overall["recall@5"] >= recall_floor, f"{mode} recall@5 {overall['recall@5']:.3f} < {recall_floor}"
    assert overall["ndcg@10"] >= ndcg_floor, f"{mode} nDCG@10 {overall['ndcg@10']:.3f} < {ndcg_floor}"


def test_hybrid_is_not_worse_than_keyword_alone(report) -> None:  # type: ignore[no-untyped-def]
    # Fusion must add the vector side's paraphrase matches, never lose what exact words found.
    assert report["hybrid"]["all"]["ndcg@10"] >= report["keyword"]["all"]["ndcg@10"]
    assert report["hybrid"]["paraphrase"]["recall@5"] >= report["keyword"]["paraphrase"]["recall@5"]


def test_sentence_reranking_stays_above_its_floor(index, report, minilm) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    # The opt-in second stage (rag.reranker: sentences) over the default hybrid search, with its defaults.
    rag = load_config(None, env={}).rag
    reranker = SentenceReranker(lambda: minilm)
    retriever = RerankingRetriever(index, reranker, candidates=rag.rerank_candidates, weight=rag.rerank_weight)
    reranked = evaluate(retriever, load_queries(EVAL / "queries.jsonl"), modes=("hybrid",))["hybrid"]["all"]
    recall_floor, ndcg_floor = SENTENCES_FLOOR
    assert reranked["recall@5"] >= recall_floor, f"recall@5 {reranked['recall@5']:.3f} < {recall_floor}"
    assert reranked["ndcg@10"] >= ndcg_floor, f"nDCG@10 {reranked['ndcg@10']:.3f} < {ndcg_floor}"
    assert reranker.cache.held > 0  # every passage was embedded sentence by sentence once, then reused
