"""``context-assistant eval``: the real turn over a dataset, scored by ``mlflow.genai.evaluate``, offline.

The project's dataset (fixtures/assistant_eval.jsonl) runs against fixtures/docs, parsed and chunked by the
product's parsers into a real Delta chunk table, synced into the test Postgres with the real MiniLM model,
answered by the offline model and traced into a real local MLflow store (SQLite, the default location in
the data directory). MLflow's LLM judges are exercised against a loopback OpenAI-compatible server
(tests/fake_databricks.py) through MLflow's own judge client, so the real request/response path is tested
without a model.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from conftest import REPO
from context_assistant.assistant.evaluation import (
    EvalQuestion,
    load_dataset,
    score_citations,
    score_facts,
    score_source_recall,
)
from context_assistant.cli import main
from context_assistant.core.config import Config, save_config
from context_assistant.ingest.worker import parse_and_chunk
from context_assistant.retrieval.evaluation import EvaluationError
from context_assistant.retrieval.sync import SourceChunk
from fake_databricks import FakeDatabricks
from retrieval_support import minilm, write_chunk_table  # noqa: F401

DATASET = REPO / "fixtures" / "assistant_eval.jsonl"
DOCS = REPO / "fixtures" / "docs"


def docs_chunks() -> list[SourceChunk]:
    """fixtures/docs as the ingestion pipeline chunks it (its parsers and chunker, without Spark)."""
    chunks = []
    for file in sorted(p for p in DOCS.rglob("*") if p.is_file()):
        status, _, pieces = parse_and_chunk(file.relative_to(DOCS).as_posix(), file.read_bytes(), 500, 50)
        chunks += [
            SourceChunk(c.chunk_id, c.path, c.chunk_index, c.text, c.heading, c.page, c.content_hash)
            for c in pieces
            if status == "ok"
        ]
    return chunks


@pytest.fixture
def run_cli(make_config, pg_env, monkeypatch, capsys, tmp_path, minilm):  # type: ignore[no-untyped-def]  # noqa: F811
    """``run_cli(*argv, **config_overrides) -> (code, stdout, stderr)`` in-process, on fixtures/docs indexed."""
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)
    indexed: dict[str, bool] = {}

    def run(*argv: str, **overrides: Any) -> tuple[int, str, str]:
        config: Config = make_config(**overrides)
        path = save_config(config, tmp_path / "config.yaml")
        if not indexed:
            write_chunk_table(config.data_path / "chunks", docs_chunks())
            assert main(["--config", str(path), "sync"]) == 0
            indexed["done"] = True
            capsys.readouterr()
        code = main(["--config", str(path), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the tests that do not check the default location (a new store costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def mlflow_client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_eval_writes_an_mlflow_evaluation_run_with_per_question_scores_offline(run_cli, tmp_path, db) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli("eval", str(DATASET), "--json")

    assert code == 0, err
    report = json.loads(out)
    questions = load_dataset(DATASET)
    assert [row["question"] for row in report["rows"]] == [q.question for q in questions]
    assert report["model"] == "offline" and report["judge_model"] is None
    assert report["tracking_uri"] == f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}"
    for row, question in zip(report["rows"], questions, strict=True):
        assert row["error"] is None and row["trace_id"] and row["session_id"]
        assert row["scores"]["valid_citations"] is True, row  # the offline model cites only what it was given
        assert row["scores"]["latency_ms"] >= 0
        if question.expected_sources:
            assert (
                0.0 <= row["scores"]["source_recall"] <= 1.0
                and "expected documents" in row["rationales"]["source_recall"]
            )
            assert (
                0.0 <= row["scores"]["fact_coverage"] <= 1.0
                and "expected facts" in row["rationales"]["fact_coverage"]
            )
        else:
            assert "source_recall" not in row["scores"] and "fact_coverage" not in row["scores"]
    # Quality on this small set with the real embedding model and the offline (quoting) model. Reported by
    # the run; asserted loosely so a better ranking never fails the test and a broken pipeline always does.
    metrics = report["metrics"]
    assert metrics["source_recall/mean"] >= 0.75, metrics
    assert metrics["fact_coverage/mean"] >= 0.5, metrics
    assert metrics["valid_citations/mean"] == 1.0
    assert {"latency_ms/mean", "latency_ms/median", "latency_ms/p90", "latency_ms/max"} <= set(metrics)

    client = mlflow_client(report["tracking_uri"])
    run = client.get_run(report["run_id"])
    assert run.info.experiment_id == report["experiment_id"]
    assert run.data.tags["context_assistant.run"] == "assistant_evaluation"
    assert run.data.params["questions"] == str(len(questions)) and run.data.params["judge_model"] == "none"
    assert run.data.metrics["source_recall/mean"] == pytest.approx(metrics["source_recall/mean"])
    linked = client.search_traces(
        locations=[report["experiment_id"]], run_id=report["run_id"], include_spans=False
    )
    assert {t.info.trace_id for t in linked} == {row["trace_id"] for row in report["rows"]}
    trace = client.get_trace(report["rows"][0]["trace_id"])
    assert {span.name for span in trace.data.spans} >= {"turn", "retrieval", "model_call"}  # the real turn
    assessed = {a.name: a for a in trace.info.assessments}
    assert assessed["source_recall"].value == report["rows"][0]["scores"]["source_recall"]
    assert assessed["expected_facts"].value == ["Tuesdays at 10:00 UTC"]

    # Every question ran as a fresh user in a new session; the sessions are gone afterwards.
    with db.connection() as conn:
        left = conn.execute(
            "SELECT count(*) FROM sessions WHERE user_id LIKE 'context-assistant-eval-%'"
        ).fetchone()
    assert left[0] == 0


def test_eval_prints_a_readable_report_and_can_keep_the_sessions(run_cli, tmp_path, db, shared_store) -> None:  # type: ignore[no-untyped-def]
    dataset = tmp_path / "two.jsonl"
    dataset.write_text(
        json.dumps({"question": "Who is our data protection officer?", "expected_facts": ["Amira Okafor"]})
        + "\n\n"
        + json.dumps(
            {
                "question": "Which Slack channel do we use for incidents?",
                "expected_sources": ["oncall-runbook.txt"],
            }
        )
        + "\n",
        encoding="utf-8",
    )
    code, out, err = run_cli(
        "eval", str(dataset), "--keep-sessions", "--run-name", "smoke", tracing__tracking_uri=shared_store
    )

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"Evaluated 2 questions from {dataset} (model: offline; judges: none")
    header = lines[2].split()
    assert header == ["#", "source_recall", "valid_citations", "fact_coverage", "latency_ms", "question"]
    assert lines[3].split()[:3] == ["1", "-", "yes"] and lines[3].endswith("Who is our data protection officer?")
    assert "Run metrics: fact_coverage/mean " in out
    assert f"at {shared_store}" in out
    assert "Read it with: make mlflow-ui" in out and f"mlflow ui --backend-store-uri {shared_store}" in out
    assert "The questions' sessions are kept" in out
    client = mlflow_client(shared_store)
    run = client.search_runs(
        [client.get_experiment_by_name("context-assistant").experiment_id],
        filter_string="attributes.run_name = 'smoke'",
    )
    assert len(run) == 1
    with db.connection() as conn:
        kept = conn.execute(
            "SELECT count(DISTINCT session_id), count(*) FROM conversations WHERE user_id LIKE 'context-assistant-eval-%'"
        ).fetchone()
    assert tuple(kept) == (2, 4)


def test_llm_judges_run_when_a_judge_model_is_configured(run_cli, monkeypatch, tmp_path, shared_store) -> None:  # type: ignore[no-untyped-def]
    judge = FakeDatabricks()
    asked: list[str] = []

    def verdict(request: Any) -> dict[str, Any]:
        asked.append(request.json["messages"][-1]["content"])
        return {
            "id": "judge-1",
            "object": "chat.completion",
            "created": 1767225600,
            "model": "judge",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": json.dumps({"rationale": "Supported.", "result": "yes"}),
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    judge.on("POST", "/v1/chat/completions", verdict)
    monkeypatch.setenv("OPENAI_API_KEY", "judge-key")
    monkeypatch.setenv("OPENAI_API_BASE", judge.url + "/v1")
    dataset = tmp_path / "judged.jsonl"
    dataset.write_text(
        json.dumps({"question": "How long do we keep application logs?", "expected_facts": ["90 days"]})
        + "\n"
        + json.dumps({"question": "What is the orders-api SLO?"})
        + "\n",
        encoding="utf-8",
    )
    try:
        code, out, err = run_cli(
            "eval",
            str(dataset),
            "--json",
            evaluation__judge_model="openai:/judge",
            tracing__tracking_uri=shared_store,
        )
    finally:
        judge.close()

    assert code == 0, err
    report = json.loads(out)
    assert report["judge_model"] == "openai:/judge"
    with_facts, without = report["rows"]
    assert with_facts["scores"]["relevance_to_query"] == "yes" and with_facts["scores"]["correctness"] == "yes"
    assert with_facts["scores"]["retrieval_groundedness"] == "yes"
    assert with_facts["rationales"]["relevance_to_query"] == "Supported."
    assert "correctness" not in without["scores"] and without["scores"]["relevance_to_query"] == "yes"
    assert any("How long do we keep application logs?" in text for text in asked)  # the judge saw the question
    assert report["metrics"]["relevance_to_query/mean"] == 1.0


def test_a_question_the_assistant_cannot_answer_is_reported_and_fails_the_command(
    run_cli, tmp_path, shared_store
) -> None:  # type: ignore[no-untyped-def]
    dead = FakeDatabricks()
    dead.on("POST", "/v1/chat/completions", {"error": {"message": "no such model"}})  # 200 but not a completion
    dataset = tmp_path / "one.jsonl"
    dataset.write_text(json.dumps({"question": "How long do we keep application logs?"}) + "\n", encoding="utf-8")
    try:
        code, out, err = run_cli(
            "eval",
            str(dataset),
            "--json",
            model__provider="openai",
            model__base_url=dead.url + "/v1",
            model__endpoint="m",
            model__max_retries=0,
            tracing__tracking_uri=shared_store,
        )
    finally:
        dead.close()

    assert code == 1
    [row] = json.loads(out)["rows"]
    assert row["error"] and row["scores"] == {} and row["session_id"]
    assert "error: 1 of 1 questions could not be answered" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"question": "ok"}\n{"question": ""}\nnot json\n{"question": "q", "expected_facts": "90 days"}\n'
            '{"question": "q", "expected_source": ["a.md"]}\n',
            "nothing evaluated, 4 bad line(s)\n"
            "line 2: 'question' must be a non-empty string\n"
            "line 3: not valid JSON (Expecting value at column 1)\n"
            "line 4: 'expected_facts', when given, must be a list of non-empty strings\n"
            "line 5: unknown key 'expected_source' (known: question, expected_sources, expected_facts)",
        ),
        ("\n\n", None),
    ],
)
def test_a_bad_dataset_is_rejected_before_anything_runs(tmp_path, content, message) -> None:  # type: ignore[no-untyped-def]
    dataset = tmp_path / "bad.jsonl"
    dataset.write_text(content, encoding="utf-8")
    with pytest.raises(EvaluationError) as caught:
        load_dataset(dataset)
    assert str(caught.value) == (f"{dataset}: {message}" if message else f"{dataset} has no questions")


def test_eval_command_errors_are_one_line(make_config, tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = save_config(make_config(), tmp_path / "config.yaml")
    assert main(["--config", str(path), "eval", str(tmp_path / "missing.jsonl")]) == 1
    assert capsys.readouterr().err == f"error: no such file: {tmp_path / 'missing.jsonl'}\n"

    monkeypatch.setitem(sys.modules, "pandas", None)  # mlflow-skinny alone: no pandas
    assert main(["--config", str(path), "eval", str(DATASET)]) == 1
    assert capsys.readouterr().err == (
        "error: evaluation needs pandas, which is not installed: pip install 'context-assistant[eval]'\n"
    )


def response(text: str, sources: list[str]) -> dict[str, Any]:
    return {
        "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
        "custom_outputs": {"sources": [{"index": i, "path": p} for i, p in enumerate(sources, start=1)]},
    }


def test_the_deterministic_scorers() -> None:
    answer = response(
        "Logs stay 90  DAYS [1]; invoices seven years [2, 3].", ["/Volumes/c/s/v/policy.docx", "faq.html"]
    )
    expect = EvalQuestion("q", ("policy.docx", "runbook.txt"), ("90 days", "7 years")).to_row()["expectations"]

    assert score_source_recall(answer, expect) == (
        0.5,
        "1 of 2 expected documents were among the passages given to the model; missing: runbook.txt",
    )
    assert score_facts(answer, expect) == (0.5, "1 of 2 expected facts are in the answer; missing: '7 years'")
    assert score_citations(answer) == (False, "[3] name no passage: 2 were given")
    assert score_citations(response("[1] and [2]", ["a", "b"])) == (
        True,
        "all 2 citations name one of the 2 passages given",
    )
    assert score_citations(response("Nothing found.", [])) == (
        True,
        "no [n] citations in the answer (0 passages were given)",
    )
    assert score_source_recall(None, expect) is None and score_facts(answer, {}) is None
