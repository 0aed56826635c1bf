# Databricks notebook source
# MAGIC %md
# MAGIC # Evaluate the assistant's answers
# MAGIC
# MAGIC Every question of a dataset is answered by the real assistant turn (memory, retrieval, the chat model,
# MAGIC exactly as `/invocations` answers it) and scored with `mlflow.genai.evaluate`, in one MLflow
# MAGIC evaluation run in the assistant's experiment (the `experiment` widget, by default `tracing.experiment`;
# MAGIC on Databricks set it to the bundle's experiment, `/Workspace/Users/<deployer>/context-assistant-traces` by default,
# MAGIC to keep evaluations next to the assistant's traces). It is what `context-assistant eval DATASET` runs.
# MAGIC
# MAGIC **Scores.** Always, without any model: `source_recall` (the share of the expected documents among the
# MAGIC passages given to the model), `valid_citations` (every `[n]` names a passage that was given),
# MAGIC `fact_coverage` (the share of expected facts found in the answer) and `latency_ms`. With a
# MAGIC `judge_model` (an MLflow model URI: `databricks` for Databricks-managed judges,
# MAGIC `databricks:/<serving endpoint>`, `openai:/gpt-4o-mini`, ...) also MLflow's LLM judges
# MAGIC `retrieval_groundedness`, `relevance_to_query` and `correctness` (for questions with expected facts).
# MAGIC
# MAGIC **Which questions.** Leave `dataset` empty for the project's set (`fixtures/assistant_eval.jsonl`, 14
# MAGIC questions about the sample documents in `fixtures/docs`), or give your own JSONL file (a Volume or
# MAGIC workspace path), one question per line; `expected_sources` (document paths as the sources under an
# MAGIC answer show them) and `expected_facts` are optional:
# MAGIC
# MAGIC ```
# MAGIC {"question": "When does on-call hand over?", "expected_sources": ["oncall-runbook.txt"], "expected_facts": ["Tuesdays at 10:00 UTC"]}
# MAGIC {"question": "Who approves a production deploy?"}
# MAGIC ```
# MAGIC
# MAGIC Each question runs as a fresh user in a new session (no answer recalls another), and those sessions are
# MAGIC deleted afterwards. A file with a bad line is rejected as a whole, with every bad line listed. On
# MAGIC Databricks, set the `lakebase_branch` widget (`projects/<lakebase_project>/branches/production`) or
# MAGIC `lakebase_instance` so the turns run against the deployed memory and documents, not a local database.

# COMMAND ----------

# MAGIC %pip install -r ../requirements.txt

# COMMAND ----------

if "dbutils" in globals():  # on Databricks: load the packages just installed (run locally, nothing to do)
    dbutils.library.restartPython()  # noqa: F821

# COMMAND ----------

import os
import sys

# A Databricks notebook has no file path of its own and runs in its own folder: notebooks/ of the deployed bundle (or of
# a checkout, run from there). The package's code is next to it, in ../src.
sys.path.insert(0, os.path.abspath(os.path.join(os.getcwd(), "..", "src")))

import dataclasses
from pathlib import Path

REPO = Path.cwd().parent  # the bundle's (or checkout's) root: fixtures/assistant_eval.jsonl is there
from context_assistant.assistant import DETERMINISTIC, JUDGES, evaluate_assistant, tracing_on
from context_assistant.core import load_config
from context_assistant.notebook import Widgets, print_table
from context_assistant.retrieval import EvaluationError
from context_assistant.services import Services
from context_assistant.storage import lakebase_from_widgets

widget = Widgets(dbutils.widgets if "dbutils" in globals() else None).text  # noqa: F821

config = lakebase_from_widgets(load_config(), widget)
dataset = widget("dataset", "", "Questions (JSONL; empty: the project's set)").strip()
judge_model = widget(
    "judge_model", config.evaluation.judge_model, "Judge model URI (empty: no LLM judges; databricks: managed)"
).strip()
workers_text = widget("workers", "1", "Questions answered at once").strip()
if not workers_text.isdigit() or int(workers_text) < 1:
    raise EvaluationError(f"workers: {workers_text!r} is not a whole number of at least 1")
experiment = widget(
    "experiment", config.tracing.experiment_id or config.tracing.experiment, "MLflow experiment (path or id)"
).strip()
run_name = widget("run_name", "", "MLflow run name (empty: automatic)").strip() or None
if experiment.isdigit():
    config = config.replace(tracing=dataclasses.replace(config.tracing, experiment_id=experiment))
elif experiment:
    config = config.replace(tracing=dataclasses.replace(config.tracing, experiment=experiment, experiment_id=""))
if not dataset:
    dataset = str(REPO / "fixtures" / "assistant_eval.jsonl")
    if not Path(dataset).is_file():
        raise EvaluationError(
            f"the project's dataset is not at {dataset}: run this notebook from the deployed bundle (or a "
            "checkout), or set the dataset widget to your own questions"
        )

# COMMAND ----------

# MAGIC %md ## Answer and score every question

# COMMAND ----------

services = Services(tracing_on(config))  # each answer's trace is its row of the evaluation
try:
    report = evaluate_assistant(
        services, dataset, judge_model=judge_model, workers=int(workers_text), run_name=run_name
    )
finally:
    services.close()  # also flushes the turns' traces to MLflow

# COMMAND ----------

# MAGIC %md
# MAGIC ## Per question
# MAGIC Numbers are shares (1.00 = all), `yes`/`no` are pass/fail, `-` means the score does not apply (no
# MAGIC expected sources or facts, or no judge). The MLflow run's **Traces** tab shows each answer with its spans,
# MAGIC its sources and every score with its rationale.

# COMMAND ----------

names = [n for n in (*DETERMINISTIC, *JUDGES) if any(n in row.scores for row in report.rows)]


def cell(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}" if value <= 1 else f"{value:.0f}"
    return str(value)


print_table(
    [
        (number, *(cell(row.scores.get(n)) for n in names), row.error or row.question[:70])
        for number, row in enumerate(report.rows, start=1)
    ],
    ("#", *names, "question (or why it failed)"),
)

# COMMAND ----------

# MAGIC %md ## The run

# COMMAND ----------

print_table(sorted((name, f"{value:.3f}") for name, value in report.metrics.items()), ("metric", "value"))
print(f"\nMLflow run {report.run_id} in experiment {report.experiment_id} at {report.tracking_uri}")
if report.failed:
    print(f"{len(report.failed)} of {len(report.rows)} questions could not be answered: their scores are missing.")
