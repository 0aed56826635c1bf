"""The Databricks notebooks in notebooks/ run end to end the way Databricks runs them.

tests/notebook_harness.py runs each notebook cell by cell (``# COMMAND ----------``), magic cells handled
(``%pip install`` lines checked to name files that exist, not run), in the notebooks/ folder with no
``__file__``, with ``dbutils`` (widgets, restartPython, the user), ``spark`` and ``display`` provided. Behind
them: real local Spark (pysail), the real test Postgres, the real all-MiniLM-L6-v2 model, a real MLflow store
(SQLite, one per module) and, for the Lakebase widgets, the real databricks-sdk against a loopback server
speaking the Lakebase REST shapes (tests/fake_databricks.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from context_assistant.core.config import save_config
from context_assistant.ingest.run import run_ingest
from context_assistant.retrieval.pgvector import PgVectorChunkIndex
from context_assistant.retrieval.sync import InMemoryChunkSource
from notebook_harness import pip_files, read_cells, run_notebook
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
def test_notebooks_install_their_dependencies_then_restart_then_import_from_src(name):
    """What a fresh Databricks notebook needs before the project's code imports."""
    path = NOTEBOOKS / name
    text = path.read_text(encoding="utf-8")
    assert "__file__" not in text  # a Databricks notebook has none
    assert "dbutils.widgets" in text
    code = [cell for cell in read_cells(path) if cell.kind != "md"]
    assert code[0].kind == "pip" and code[0].source == "%pip install -r ../requirements.txt"
    assert pip_files(code[0].source) == ["../requirements.txt"] and (NOTEBOOKS / "../requirements.txt").is_file()
    assert code[1].kind == "python" and "dbutils.library.restartPython()" in code[1].source
    assert 'os.path.join(os.getcwd(), "..", "src")' in code[2].source
    assert "context_assistant" not in code[0].source + code[1].source  # nothing imported before the restart


def test_the_harness_reads_cells_and_checks_pip_lines(tmp_path):
    (tmp_path / "nb").mkdir()
    notebook = tmp_path / "nb" / "n.py"
    notebook.write_text(
        "# Databricks notebook source\n# MAGIC %md\n# MAGIC # Title\n\n# COMMAND ----------\n\n"
        "# MAGIC %pip install -r ../missing.txt\n\n# COMMAND ----------\n\nx = 1\n",
        encoding="utf-8",
    )
    assert [c.kind for c in read_cells(notebook)] == ["md", "pip", "python"]
    with pytest.raises(FileNotFoundError, match=r"names \.\./missing\.txt, which does not exist"):
        run_notebook(notebook)
    (tmp_path / "missing.txt").write_text("pyyaml\n")
    assert run_notebook(notebook).namespace["x"] == 1
    assert pip_files("%pip install ../dist/*.whl pyyaml>=6 --quiet") == ["../dist/*.whl"]


def test_explore_chunks_notebook(spark, notebook_env, tmp_path, monkeypatch, capsys):
    chunks, documents = tmp_path / "tables" / "chunks", tmp_path / "tables" / "documents"
    run_ingest(spark, str(REPO / "fixtures" / "docs"), str(chunks), str(documents))
    widgets = {"chunk_table": str(chunks), "documents_table": str(documents)}
    run = run_notebook(NOTEBOOKS / "explore_chunks.py", widgets=widgets, spark=spark)
    assert run.dbutils.library.restarts == 1 and run.displayed  # Databricks' display() showed the frames
    out = capsys.readouterr().out
    assert f"chunks: {chunks}" in out
    assert "broken.pdf" in out and "failed" in out  # the failures cell names the broken file
    assert "avg_chars" in out and "deployment-guide.md" in out


def test_inspect_memory_notebook(notebook_env, store, clock, monkeypatch, capsys):
    session = store.create_session("ana@example.com", "How do we deploy?")
    store.append("ana@example.com", session.id, "user", "How do we deploy the bundle?")
    store.append("ana@example.com", session.id, "assistant", "Run databricks bundle deploy -t dev.")
    run_notebook(NOTEBOOKS / "inspect_memory.py", widgets={"user": "ana@example.com"})
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
    try:
        done = run_notebook(NOTEBOOKS / "evaluate_retrieval.py", widgets={"scratch_database": scratch}).namespace
        with psycopg.connect(pg_server.uri(scratch)) as conn:
            assert conn.execute("SELECT count(*) FROM context_assistant.rag_chunks").fetchone()[0] == 62
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
        assert conn.execute("SELECT to_regclass('context_assistant.rag_chunks')").fetchone()[0] is None

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
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        '{"id": "deploy", "query": "how do I ship the bundle to prod", "relevant": ["guides/deploy.md"]}\n'
        '{"id": "pager", "query": "who has the pager and when does it change", "relevant": ["guides/oncall.md"]}\n'
        '{"id": 3, "query": "retention of clickstream logs", "relevant": ["policies/retention.md"]}\n',
        encoding="utf-8",
    )
    widgets = {"experiment": "notebook-evaluation-own", "queries": str(labels), "k": "1"}
    done = run_notebook(NOTEBOOKS / "evaluate_retrieval.py", widgets=widgets).namespace
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
            {"queries": "{labels}"},
            "{labels}: nothing evaluated, 1 bad line(s)\nline 1: 'relevant' must be a non-empty list of document paths",
        ),
        ({"k": "five"}, "k: 'five' is not a whole number of at least 1"),
        ({"scratch_database": "Eval"}, "scratch database name 'Eval': use lowercase letters, digits"),
    ],
)
def test_evaluate_retrieval_notebook_rejects_bad_input(notebook_env, tmp_path, monkeypatch, widgets, message):
    from context_assistant.retrieval.evaluation import EvaluationError

    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"id": "q1", "query": "deploy", "relevant": []}\n', encoding="utf-8")
    widgets = {key: value.format(labels=labels) for key, value in widgets.items()}
    with pytest.raises(EvaluationError) as caught:
        run_notebook(NOTEBOOKS / "evaluate_retrieval.py", widgets=widgets)
    assert str(caught.value).startswith(message.format(labels=labels))


# ----------------------------------------------------------------------------------------- ask the assistant


def test_ask_assistant_notebook(notebook_config, mlflow_uri, indexed_guides, store, monkeypatch, capsys):
    notebook_config(tracing__enabled=True, tracing__tracking_uri=mlflow_uri, tracing__experiment="notebook-ask")
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    widgets = {"user": "ana@example.com", "question": "How do I deploy the bundle to production?"}
    done = run_notebook(NOTEBOOKS / "ask_assistant.py", widgets=widgets).namespace
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
    widgets = {"user": "ana@example.com", "session": result.session_id, "question": "And how do I roll it back?"}
    again = run_notebook(NOTEBOOKS / "ask_assistant.py", widgets=widgets).namespace["result"]
    assert again.session_id == result.session_id
    assert len(store.messages("ana@example.com", result.session_id)) == 4


def test_ask_assistant_notebook_user_where_the_notebook_context_is_closed(
    notebook_env, fake_databricks, store, monkeypatch
):
    """Serverless and standard access mode refuse the notebook context's userName() (not whitelisted): the
    turn is then stored as the identity of the notebook's own credentials (SCIM Me, real databricks-sdk
    against a loopback server), never as the process's OS user that every notebook user shares."""
    fake_databricks.on("GET", "/api/2.0/preview/scim/v2/Me", {"userName": "cy@example.com"})
    monkeypatch.setenv("DATABRICKS_HOST", fake_databricks.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-test-token")
    widgets = {"question": "How do I deploy the bundle to production?"}
    done = run_notebook(NOTEBOOKS / "ask_assistant.py", widgets=widgets, user=None).namespace
    assert done["user"] == "cy@example.com"
    assert [m.role for m in store.messages("cy@example.com", done["result"].session_id)] == ["user", "assistant"]
    assert fake_databricks.calls("/api/2.0/preview/scim/v2/Me", "GET")


@pytest.mark.parametrize(
    ("widgets", "error", "message"),
    [
        ({"question": "  "}, ValueError, "the message is empty"),
        ({"session": "no-such-session"}, LookupError, "session not found: no-such-session"),
    ],
)
def test_ask_assistant_notebook_bad_input(notebook_env, monkeypatch, widgets, error, message):
    with pytest.raises(error) as caught:
        run_notebook(NOTEBOOKS / "ask_assistant.py", widgets=widgets)
    assert str(caught.value).strip("'") == message


# ------------------------------------------------------------------------------------------ Lakebase widgets


def test_inspect_memory_reads_the_lakebase_branch_the_widget_names(
    notebook_env, store, fake_databricks, pg_server, monkeypatch, capsys
):
    """The branch widget is resolved with the real databricks-sdk (its read-write endpoint) against
    a loopback server speaking the Lakebase REST shapes; its endpoint's host is the test Postgres."""
    branch = "projects/context-assistant/branches/production"
    endpoint = f"{branch}/endpoints/primary"
    fake_databricks.on(
        "GET",
        f"/api/2.0/postgres/{branch}/endpoints",
        {
            "endpoints": [
                {
                    "name": endpoint,
                    "status": {
                        "endpoint_type": "ENDPOINT_TYPE_READ_WRITE",
                        "hosts": {"host": pg_server.socket_dir},
                    },
                }
            ]
        },
    )
    monkeypatch.setenv("DATABRICKS_HOST", fake_databricks.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-test-token")
    session = store.create_session("bo@example.com", "Deployed memory")
    store.append("bo@example.com", session.id, "user", "Is this the deployed memory?")
    widgets = {
        "user": "bo@example.com",
        "lakebase_branch": branch,
        "lakebase_database": notebook_env.database.name,
    }
    run = run_notebook(NOTEBOOKS / "inspect_memory.py", widgets=widgets)
    assert run.namespace["db"].target.description.startswith(f"Postgres at {pg_server.socket_dir}:5432/")
    assert run.namespace["services"].config.database.endpoint == endpoint
    assert "Is this the deployed memory?" in capsys.readouterr().out
    assert fake_databricks.calls(f"/api/2.0/postgres/{branch}/endpoints", "GET")


def test_lakebase_widgets_are_checked(notebook_env, monkeypatch):
    from context_assistant.core.config import ConfigError

    with pytest.raises(
        ConfigError, match="set the lakebase_branch widget or the lakebase_instance widget, not both"
    ):
        run_notebook(
            NOTEBOOKS / "inspect_memory.py",
            widgets={"lakebase_branch": "projects/p/branches/b", "lakebase_instance": "i"},
        )
    with pytest.raises(ConfigError, match="expected projects/<project>/branches/<branch>"):
        run_notebook(NOTEBOOKS / "inspect_memory.py", widgets={"lakebase_branch": "production"})
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")  # on Databricks, with no database configured
    monkeypatch.setenv("CONTEXT_ASSISTANT__DATABASE__HOST", "")
    with pytest.raises(ConfigError, match="there is no embedded Postgres on Databricks"):
        run_notebook(NOTEBOOKS / "inspect_memory.py", widgets={})


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
    widgets = {"dataset": str(dataset), "run_name": "notebook answers"}
    done = run_notebook(NOTEBOOKS / "evaluate_assistant.py", widgets=widgets).namespace
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
        ({"workers": "0"}, "workers: '0' is not a whole number of at least 1"),
        ({"dataset": "{missing}"}, "no such file: {missing}"),
    ],
)
def test_evaluate_assistant_notebook_rejects_bad_input(notebook_env, tmp_path, monkeypatch, widgets, message):
    from context_assistant.retrieval.evaluation import EvaluationError

    missing = tmp_path / "missing.jsonl"
    widgets = {key: value.format(missing=missing) for key, value in widgets.items()}
    with pytest.raises(EvaluationError) as caught:
        run_notebook(NOTEBOOKS / "evaluate_assistant.py", widgets=widgets)
    assert str(caught.value) == message.format(missing=missing)
