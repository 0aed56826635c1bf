"""The Databricks notebooks in notebooks/ run locally, end to end, against the embedded-style defaults.

Each notebook is executed as the plain Python file it is (Databricks source format), with its widgets
falling back to ``CA_WIDGET_<NAME>`` environment variables, on real local Spark (pysail), the real test
Postgres, the real all-MiniLM-L6-v2 model and a real MLflow store (SQLite, one per module).
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import psycopg
import pytest

from context_assistant.config import save_config
from context_assistant.index_pgvector import PgVectorChunkIndex
from context_assistant.pipeline import run_ingest
from context_assistant.sync import InMemoryChunkSource
from retrieval_support import document, minilm  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture
def notebook_config(make_config, pg_env, tmp_path, monkeypatch):
    """Make the config the notebooks load (``$CONTEXT_ASSISTANT_CONFIG``): the test database plus overrides."""

    def use(**overrides):
        config = make_config(**overrides)
        path = save_config(config, tmp_path / "config.yaml")
        monkeypatch.setenv("CONTEXT_ASSISTANT_CONFIG", str(path))
        for key, value in pg_env.items():
            monkeypatch.setenv(key, value)
        return config

    return use


@pytest.fixture
def notebook_env(notebook_config):
    return notebook_config()


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One MLflow store for the module: creating a SQLite store costs seconds, so the notebooks share it."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.py")))
def test_notebooks_are_databricks_source_files(name):
    text = (NOTEBOOKS / name).read_text(encoding="utf-8")
    assert text.startswith("# Databricks notebook source\n")
    assert "\n# COMMAND ----------\n" in text
    assert "dbutils.widgets" in text


def test_explore_chunks_notebook(spark, notebook_env, tmp_path, monkeypatch, capsys):
    chunks, documents = tmp_path / "tables" / "chunks", tmp_path / "tables" / "documents"
    run_ingest(spark, str(REPO / "fixtures" / "docs"), str(chunks), str(documents))
    monkeypatch.setenv("CA_WIDGET_CHUNK_TABLE", str(chunks))
    monkeypatch.setenv("CA_WIDGET_DOCUMENTS_TABLE", str(documents))
    runpy.run_path(str(NOTEBOOKS / "explore_chunks.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert f"chunks: {chunks}" in out
    assert "broken.pdf" in out and "failed" in out  # the failures cell names the broken file
    assert "avg_chars" in out and "deployment-guide.md" in out


def test_inspect_memory_notebook(notebook_env, store, clock, monkeypatch, capsys):
    session = store.create_session("ana@example.com", "How do we deploy?")
    store.append("ana@example.com", session.id, "user", "How do we deploy the bundle?")
    store.append("ana@example.com", session.id, "assistant", "Run databricks bundle deploy -t dev.")
    monkeypatch.setenv("CA_WIDGET_USER", "ana@example.com")
    runpy.run_path(str(NOTEBOOKS / "inspect_memory.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "ana@example.com" in out and session.id in out
    assert "How do we deploy the bundle?" in out
    assert "traces" in out  # the traces cell reports what it found (or why not) without failing


# ------------------------------------------------------------------------------------- evaluate retrieval


def logged_run(uri: str, experiment: str) -> Any:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (run,) = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    return run


def test_evaluate_retrieval_notebook_on_the_project_set(
    notebook_config,
    mlflow_uri,
    pg_server,
    database_name,
    minilm,  # noqa: F811
    monkeypatch,
    capsys,
):
    notebook_config(tracing__tracking_uri=mlflow_uri, tracing__experiment="notebook-evaluation")
    scratch = f"{database_name}_eval"
    monkeypatch.setenv("CA_WIDGET_SCRATCH_DATABASE", scratch)
    try:
        done = runpy.run_path(str(NOTEBOOKS / "evaluate_retrieval.py"), run_name="__main__")
        with psycopg.connect(pg_server.uri(scratch)) as conn:
            assert conn.execute("SELECT count(*) FROM rag_chunks").fetchone()[0] == 62
    finally:
        pg_server.drop_database(scratch)
    out = capsys.readouterr().out
    assert (
        f"62 documents and 52 queries from {REPO / 'fixtures' / 'eval'}, indexed in scratch database {scratch}"
        in out
    )
    report = done["report"]
    assert list(report) == ["vector", "keyword", "hybrid"]
    for mode, scores in report.items():
        assert set(scores) == {"all", "keyword", "paraphrase", "ms_per_query"}, mode
        for group in ("all", "keyword", "paraphrase"):
            assert 0.0 <= scores[group]["recall@5"] <= 1.0 and 0.0 <= scores[group]["ndcg@10"] <= 1.0
    assert report["vector"]["all"]["recall@5"] >= 0.9  # the real model finds nearly everything on this set
    assert report["keyword"]["keyword"]["recall@5"] >= 0.9  # BM25 finds the queries that use the doc's words
    with psycopg.connect(pg_server.uri(database_name)) as conn:  # the assistant's own index was not touched
        assert conn.execute("SELECT to_regclass('rag_chunks')").fetchone()[0] is None

    run = logged_run(mlflow_uri, "notebook-evaluation")
    assert f"MLflow run {run.info.run_id} in experiment {run.info.experiment_id}" in out
    metrics = run.data.metrics
    for mode in ("vector", "keyword", "hybrid"):
        for name in ("recall_at_5", "ndcg_at_10", "keyword/recall_at_5", "paraphrase/ndcg_at_10"):
            assert 0.0 <= metrics[f"{mode}/{name}"] <= 1.0
        assert metrics[f"{mode}/recall_at_5"] == pytest.approx(report[mode]["all"]["recall@5"])
        assert metrics[f"{mode}/ms_per_query"] > 0
    assert run.data.params["labelled_set"] == "fixtures/eval" and run.data.params["queries"] == "52"
    assert run.data.params["embedding_model"] == "all-MiniLM-L6-v2"


GUIDES = [
    *document(
        "guides/deploy.md",
        "Deploy the bundle to production with databricks bundle deploy --target prod.",
        "Before a production deploy, the release checklist must be complete.",
        "Roll back a failed deployment by deploying the previous release tag.",
        heading="Deploying",
    ),
    *document(
        "guides/oncall.md", "The on-call engineer hands over the pager every Monday at 10:00.", heading="On-call"
    ),
    *document("policies/retention.md", "Raw clickstream logs are kept for 400 days, aggregates for seven years."),
]


@pytest.fixture
def indexed_guides(db, minilm):  # noqa: F811
    """The assistant's own index (pgvector, the test database) holding GUIDES, embedded by the real model."""
    PgVectorChunkIndex(db, minilm).refresh(InMemoryChunkSource(GUIDES))


def test_evaluate_retrieval_notebook_on_your_own_labelled_set(
    notebook_config, mlflow_uri, indexed_guides, tmp_path, monkeypatch, capsys
):
    notebook_config(tracing__tracking_uri=mlflow_uri)
    monkeypatch.setenv("CA_WIDGET_EXPERIMENT", "notebook-evaluation-own")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        '{"id": "deploy", "query": "how do I ship the bundle to prod", "relevant": ["guides/deploy.md"]}\n'
        '{"id": "pager", "query": "who has the pager and when does it change", "relevant": ["guides/oncall.md"]}\n'
        '{"id": 3, "query": "retention of clickstream logs", "relevant": ["policies/retention.md"]}\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("CA_WIDGET_QUERIES", str(labels))
    monkeypatch.setenv("CA_WIDGET_K", "1")
    done = runpy.run_path(str(NOTEBOOKS / "evaluate_retrieval.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert f"3 queries from {labels}, searched in your index (pgvector)" in out
    report = done["report"]
    assert set(report["hybrid"]) == {"all", "ms_per_query"}  # no kinds given: one group
    assert report["vector"]["all"]["recall@1"] == 1.0
    for scores in report.values():
        # guides/deploy.md has three chunks: it counts once, so nDCG stays within [0, 1]
        assert 0.0 <= scores["all"]["recall@1"] <= 1.0 and 0.0 <= scores["all"]["ndcg@10"] <= 1.0
    run = logged_run(mlflow_uri, "notebook-evaluation-own")
    assert run.data.metrics["vector/recall_at_1"] == 1.0
    assert run.data.params["labelled_set"] == str(labels) and run.data.params["depth"] == "50"


@pytest.mark.parametrize(
    ("widgets", "message"),
    [
        (
            {"CA_WIDGET_QUERIES": "{labels}"},
            "{labels}: nothing evaluated, 1 bad line(s)\nline 1: 'relevant' must be a non-empty list of document paths",
        ),
        ({"CA_WIDGET_K": "five"}, "k: 'five' is not a whole number of at least 1"),
        ({"CA_WIDGET_SCRATCH_DATABASE": "Eval"}, "scratch database name 'Eval': use lowercase letters, digits"),
    ],
)
def test_evaluate_retrieval_notebook_rejects_bad_input(notebook_env, tmp_path, monkeypatch, widgets, message):
    from context_assistant.evaluation import EvaluationError

    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "q1", "query": "deploy", "relevant": []}\n', encoding="utf-8")
    for key, value in widgets.items():
        monkeypatch.setenv(key, value.format(labels=labels))
    with pytest.raises(EvaluationError) as caught:
        runpy.run_path(str(NOTEBOOKS / "evaluate_retrieval.py"), run_name="__main__")
    assert str(caught.value).startswith(message.format(labels=labels))


# ----------------------------------------------------------------------------------------- ask the assistant


def test_ask_assistant_notebook(notebook_config, mlflow_uri, indexed_guides, store, monkeypatch, capsys):
    notebook_config(tracing__enabled=True, tracing__tracking_uri=mlflow_uri, tracing__experiment="notebook-ask")
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    monkeypatch.setenv("CA_WIDGET_USER", "ana@example.com")
    monkeypatch.setenv("CA_WIDGET_QUESTION", "How do I deploy the bundle to production?")
    done = runpy.run_path(str(NOTEBOOKS / "ask_assistant.py"), run_name="__main__")
    out = capsys.readouterr().out
    result = done["result"]
    assert result.sources and result.sources[0].path == "guides/deploy.md"
    assert "[1] guides/deploy.md" in result.reply  # the (offline) model's answer cites its source
    assert result.reply in out and "[1] guides/deploy.md › Deploying  (score " in out
    assert f"session: {result.session_id}" in out
    assert result.trace_id and f"trace: {result.trace_id}" in out

    from mlflow import MlflowClient

    trace = MlflowClient(tracking_uri=mlflow_uri).get_trace(result.trace_id)
    assert trace.info.trace_metadata["mlflow.trace.user"] == "ana@example.com"
    stored = store.messages("ana@example.com", result.session_id)
    assert [m.role for m in stored] == ["user", "assistant"] and stored[1].content == result.reply

    # The printed session id continues the conversation.
    monkeypatch.setenv("CA_WIDGET_SESSION", result.session_id)
    monkeypatch.setenv("CA_WIDGET_QUESTION", "And how do I roll it back?")
    again = runpy.run_path(str(NOTEBOOKS / "ask_assistant.py"), run_name="__main__")["result"]
    assert again.session_id == result.session_id
    assert len(store.messages("ana@example.com", result.session_id)) == 4


@pytest.mark.parametrize(
    ("widgets", "error", "message"),
    [
        ({"CA_WIDGET_QUESTION": "  "}, ValueError, "the message is empty"),
        ({"CA_WIDGET_SESSION": "no-such-session"}, LookupError, "session not found: no-such-session"),
    ],
)
def test_ask_assistant_notebook_bad_input(notebook_env, monkeypatch, widgets, error, message):
    for key, value in widgets.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(error) as caught:
        runpy.run_path(str(NOTEBOOKS / "ask_assistant.py"), run_name="__main__")
    assert str(caught.value).strip("'") == message


# ------------------------------------------------------------------------------------- evaluate the assistant


def test_evaluate_assistant_notebook(
    notebook_config, mlflow_uri, indexed_guides, db, tmp_path, monkeypatch, capsys
):
    notebook_config(tracing__tracking_uri=mlflow_uri, tracing__experiment="notebook-answers")
    dataset = tmp_path / "questions.jsonl"
    dataset.write_text(
        '{"question": "How do I deploy the bundle to production?", "expected_sources": ["guides/deploy.md"], '
        '"expected_facts": ["databricks bundle deploy --target prod"]}\n'
        '{"question": "How long are raw clickstream logs kept?", "expected_sources": ["policies/retention.md"]}\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("CA_WIDGET_DATASET", str(dataset))
    monkeypatch.setenv("CA_WIDGET_RUN_NAME", "notebook answers")
    done = runpy.run_path(str(NOTEBOOKS / "evaluate_assistant.py"), run_name="__main__")
    out = capsys.readouterr().out

    report = done["report"]
    assert [row.scores["source_recall"] for row in report.rows] == [1.0, 1.0]  # the real model finds both
    assert report.rows[0].scores["fact_coverage"] == 1.0 and report.rows[0].scores["valid_citations"] is True
    assert ["source_recall/mean", "1.000"] in [line.split() for line in out.splitlines()]
    assert "How do I deploy the bundle to production?" in out
    assert f"MLflow run {report.run_id} in experiment {report.experiment_id} at {mlflow_uri}" in out
    run = logged_run(mlflow_uri, "notebook-answers")
    assert run.info.run_id == report.run_id and run.info.run_name == "notebook answers"
    assert run.data.tags["context_assistant.run"] == "assistant_evaluation"
    assert run.data.metrics["source_recall/mean"] == 1.0
    with db.connection() as conn:  # the questions' sessions were deleted
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("widgets", "message"),
    [
        ({"CA_WIDGET_WORKERS": "0"}, "workers: '0' is not a whole number of at least 1"),
        ({"CA_WIDGET_DATASET": "{missing}"}, "no such file: {missing}"),
    ],
)
def test_evaluate_assistant_notebook_rejects_bad_input(notebook_env, tmp_path, monkeypatch, widgets, message):
    from context_assistant.evaluation import EvaluationError

    missing = tmp_path / "missing.jsonl"
    for key, value in widgets.items():
        monkeypatch.setenv(key, value.format(missing=missing))
    with pytest.raises(EvaluationError) as caught:
        runpy.run_path(str(NOTEBOOKS / "evaluate_assistant.py"), run_name="__main__")
    assert str(caught.value) == message.format(missing=missing)
