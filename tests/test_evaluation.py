"""Retrieval evaluation (context_assistant.retrieval.evaluation): metrics, labelled-set files, scoring a real pgvector
index, and the scratch database the project's set is indexed into.

Index mechanics use ``HashingEmbedder`` (a fast test double, see retrieval_support); the real model runs in
the notebook tests.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import psycopg
import pytest

from context_assistant.core.clock import FakeClock
from context_assistant.retrieval.base import Hit
from context_assistant.retrieval.evaluation import (
    EvaluationError,
    LabelledDocument,
    LabelledQuery,
    distinct_paths,
    evaluate,
    index_corpus,
    load_corpus,
    load_queries,
    mode_metrics,
    ndcg_at_k,
    open_scratch_database,
    recall_at_k,
)
from context_assistant.retrieval.pgvector import PgVectorChunkIndex
from context_assistant.retrieval.sync import InMemoryChunkSource
from context_assistant.storage.db import Database
from context_assistant.storage.targets import Target
from retrieval_support import HashingEmbedder, document

REPO = Path(__file__).resolve().parents[1]


def test_recall_and_ndcg_by_hand():
    assert recall_at_k(["a", "b", "c"], {"c", "z"}, 2) == 0.0
    assert recall_at_k(["a", "b", "c"], {"c", "z"}, 3) == 0.5
    assert ndcg_at_k(["x", "a"], {"a"}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(["a", "b"], {"a", "b"}, 10) == 1.0
    assert ndcg_at_k(["b", "x", "a"], {"a", "b"}, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_a_document_counts_once_at_its_best_rank():
    hits = [Hit(f"{p}#{i}", p, "", None, "", 1.0) for i, p in enumerate(["a", "b", "a", "a", "c"])]
    ranked = distinct_paths(hits)
    assert ranked == ["a", "b", "c"]
    assert ndcg_at_k(ranked, {"a"}, 10) == 1.0  # not 1 + 1/log2(4) + 1/log2(5)


def test_the_project_set_loads():
    corpus = load_corpus(REPO / "fixtures" / "eval" / "corpus.jsonl")
    queries = load_queries(REPO / "fixtures" / "eval" / "queries.jsonl")
    assert len(corpus) == 62 and len(queries) == 52
    assert {q.kind for q in queries} == {"keyword", "paraphrase"}
    assert {p for q in queries for p in q.relevant} <= {d.id for d in corpus}


def test_a_bad_labelled_file_is_rejected_with_every_bad_line(tmp_path):
    bad = tmp_path / "labels.jsonl"
    bad.write_text(
        '{"id": "q1", "query": "fine", "relevant": ["a.md"]}\n'
        "not json\n"
        "[1]\n"
        '{"query": "no id", "relevant": ["a.md"]}\n'
        '{"id": "q2", "query": " ", "relevant": ["a.md"]}\n'
        '{"id": "q3", "query": "x", "relevant": []}\n'
        '{"id": "q4", "query": "x", "relevant": "a.md"}\n'
        '{"id": "q5", "query": "x", "relevant": ["a.md"], "kind": "all"}\n'
        '{"id": "q1", "query": "again", "relevant": ["a.md"]}\n'
        "\n",
        encoding="utf-8",
    )
    with pytest.raises(EvaluationError) as caught:
        load_queries(bad)
    assert str(caught.value) == (
        f"{bad}: nothing evaluated, 8 bad line(s)\n"
        "line 2: not valid JSON (Expecting value at column 1)\n"
        "line 3: expected a JSON object\n"
        "line 4: 'id' must be a non-empty string or an integer\n"
        "line 5: 'query' must be a non-empty string\n"
        "line 6: 'relevant' must be a non-empty list of document paths\n"
        "line 7: 'relevant' must be a non-empty list of document paths\n"
        "line 8: 'kind' 'all' is reserved for the whole set\n"
        "line 9: duplicate id 'q1'"
    )


def test_missing_empty_and_binary_files_say_so(tmp_path):
    with pytest.raises(EvaluationError, match=f"^no such file: {tmp_path / 'nope.jsonl'}$"):
        load_queries(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(EvaluationError, match=f"^{empty} has no queries$"):
        load_queries(empty)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(EvaluationError, match=r"is not UTF-8 text \(invalid start byte at byte 0\)$"):
        load_queries(binary)


DOCS = [
    *document("deploy.md", "Deploy the bundle with databricks bundle deploy.", "Roll back by redeploying."),
    *document("oncall.md", "The pager rotation hands over every Monday morning."),
    *document("retention.md", "Raw clickstream logs are kept for 400 days."),
]
QUERIES = [
    LabelledQuery("q1", "databricks bundle deploy", ("deploy.md",), "keyword"),
    LabelledQuery("q2", "pager rotation Monday", ("oncall.md",), "keyword"),
    LabelledQuery("q3", "how long are clickstream logs kept", ("retention.md", "deploy.md"), "paraphrase"),
]


def test_evaluate_scores_each_mode_overall_and_per_kind(db):
    index = PgVectorChunkIndex(db, HashingEmbedder())
    index.refresh(InMemoryChunkSource(DOCS))
    clock = FakeClock()
    report = evaluate(index, QUERIES, k=1, ndcg_k=3, clock=clock)
    assert list(report) == ["vector", "keyword", "hybrid"]
    keyword = report["keyword"]
    assert set(keyword) == {"all", "keyword", "paraphrase", "ms_per_query"}
    assert keyword["keyword"] == {"recall@1": 1.0, "ndcg@3": 1.0, "n": 2}
    assert keyword["paraphrase"]["recall@1"] == 0.5  # two relevant documents, one slot
    assert keyword["all"]["n"] == 3 and keyword["ms_per_query"] == 0.0  # time comes from the injected clock
    for mode in report.values():
        for group in ("all", "keyword", "paraphrase"):
            assert 0.0 <= mode[group]["recall@1"] <= 1.0 and 0.0 <= mode[group]["ndcg@3"] <= 1.0


def test_evaluate_rejects_impossible_settings(db):
    index = PgVectorChunkIndex(db, HashingEmbedder())
    with pytest.raises(EvaluationError, match=r"^there are no queries to evaluate$"):
        evaluate(index, [])
    with pytest.raises(EvaluationError, match=r"^depth \(3\) must be at least k \(5\) and ndcg_k \(10\)$"):
        evaluate(index, QUERIES, depth=3)


def test_mode_metrics_are_valid_mlflow_names():
    scores = {
        "all": {"recall@5": 0.5, "ndcg@10": 0.25, "n": 4},
        "para phrase/x": {"recall@5": 1.0, "ndcg@10": 1.0, "n": 1},
        "ms_per_query": 3.5,
    }
    assert mode_metrics("hybrid", scores) == {
        "hybrid/recall_at_5": 0.5,
        "hybrid/ndcg_at_10": 0.25,
        "hybrid/para phrase_x/recall_at_5": 1.0,
        "hybrid/para phrase_x/ndcg_at_10": 1.0,
        "hybrid/ms_per_query": 3.5,
    }


# ------------------------------------------------------------------------------------- scratch database


@pytest.fixture
def main_db(pg_server, database_name):
    database = Database(Target("postgres", pg_server.uri(database_name), "test database"), max_size=2)
    yield database
    database.close()


def test_the_project_set_is_indexed_in_a_scratch_database_only(pg_server, main_db, database_name, config):
    scratch_name = f"{database_name}_eval"
    corpus = [LabelledDocument("d1", "Deploying", "databricks bundle deploy"), LabelledDocument("d2", "", "pager")]
    try:
        scratch = open_scratch_database(main_db, scratch_name)
        with scratch:
            assert scratch.target.description == f"scratch database {scratch_name} (test database)"
            index, first = index_corpus(scratch, HashingEmbedder(), config.rag, corpus)
            assert (first.added, first.rebuilt) == (2, True)
            assert [h.path for h in index.search("bundle deploy", top_k=1, mode="keyword")] == ["d1"]
        with open_scratch_database(main_db, scratch_name) as again:  # kept: a re-run embeds nothing
            _, second = index_corpus(again, HashingEmbedder(), config.rag, corpus)
            assert (second.embedded, second.kept) == (0, 2)
        with psycopg.connect(pg_server.uri(database_name)) as conn:  # the assistant's own index is untouched
            assert conn.execute("SELECT to_regclass('context_assistant.rag_chunks')").fetchone()[0] is None
    finally:
        pg_server.drop_database(scratch_name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Eval-Set", "scratch database name 'Eval-Set': use lowercase letters, digits and underscores"),
        ("x; DROP", "scratch database name 'x; DROP': use lowercase letters"),
        (None, "the scratch database must not be the assistant's own database"),
    ],
)
def test_bad_scratch_database_names(main_db, database_name, name: Any, message):
    with pytest.raises(EvaluationError, match="^" + message.replace("(", r"\(")):
        open_scratch_database(main_db, name or database_name)
