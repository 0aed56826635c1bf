# Databricks notebook source
# MAGIC %md
# MAGIC # Evaluate retrieval
# MAGIC
# MAGIC How well search finds the right documents: **recall@k** (the share of a query's relevant documents in
# MAGIC the first k results) and **nDCG@10** (1.0 when the relevant documents come first) for `vector`,
# MAGIC `keyword` (BM25) and `hybrid` search, logged as one MLflow run in the assistant's experiment
# MAGIC (the `experiment` widget, by default `tracing.experiment`), so runs can be compared over time. On
# MAGIC Databricks set it to the bundle's experiment (variable `experiment_name`, by default
# MAGIC `/Workspace/Users/<deployer>/context-assistant-traces`) to keep evaluations next to the assistant's traces, and
# MAGIC the `lakebase_branch` widget (`projects/<lakebase_project>/branches/production`, or `lakebase_instance`)
# MAGIC to the deployed Lakebase, whose index and scratch database it uses.
# MAGIC
# MAGIC **Which set.** Leave the `queries` widget empty to use the project's labelled set (`fixtures/eval`:
# MAGIC 62 handbook documents, 52 queries). It is indexed with your embedding model and index settings into
# MAGIC a *scratch database* on the same Postgres (the `scratch_database` widget), never into the assistant's
# MAGIC index; it is kept between runs, so a re-run embeds nothing (`DROP DATABASE` it when done).
# MAGIC
# MAGIC Or set `queries` to your own labelled file (a Volume or workspace path) to evaluate **your index**
# MAGIC (`rag.backend`: pgvector or Vector Search) as the assistant searches it. The format is JSON lines,
# MAGIC one query per line:
# MAGIC
# MAGIC ```
# MAGIC {"id": "q1", "query": "how do I roll back a release?", "relevant": ["runbooks/rollback.md"], "kind": "paraphrase"}
# MAGIC {"id": "q2", "query": "ERR_QUOTA_7731", "relevant": ["errors.md", "faq/quotas.md"]}
# MAGIC ```
# MAGIC
# MAGIC - `relevant`: the paths of the documents that answer the query, as `context-assistant search` (or
# MAGIC   the sources under an answer) shows them: relative to the documents folder or Volume.
# MAGIC - `kind` (optional): a group to report separately, e.g. `keyword` when the query uses the document's
# MAGIC   own words and `paraphrase` when it asks in other words.
# MAGIC
# MAGIC A document counts once, at its best-ranked chunk. A file with a bad line is rejected as a whole, with
# MAGIC every bad line listed.

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

REPO = Path.cwd().parent  # the bundle's (or checkout's) root: fixtures/eval is there
from context_assistant.core import load_config
from context_assistant.notebook import Widgets, print_table
from context_assistant.retrieval import (
    DEFAULT_NDCG_K,
    SEARCH_MODES,
    EvaluationError,
    check_scratch_name,
    evaluate,
    index_corpus,
    load_corpus,
    load_queries,
    log_evaluation,
    mlflow_experiment,
    open_scratch_database,
)
from context_assistant.services import Services
from context_assistant.storage import lakebase_from_widgets

OWN_SET_DEPTH = 50  # chunks fetched per query on your index, so documents with many chunks still fill the top 10


widget = Widgets(dbutils.widgets if "dbutils" in globals() else None).text  # noqa: F821


queries_path = widget("queries", "", "Labelled queries (JSONL; empty: the project's set)").strip()
k_text = widget("k", "5", "k for recall@k").strip()
if not k_text.isdigit() or int(k_text) < 1:
    raise EvaluationError(f"k: {k_text!r} is not a whole number of at least 1")
k = int(k_text)
scratch_name = check_scratch_name(
    widget("scratch_database", "context_assistant_eval", "Scratch database (project set)").strip()
)
config = lakebase_from_widgets(load_config(), widget)
experiment = widget(
    "experiment", config.tracing.experiment_id or config.tracing.experiment, "MLflow experiment (path or id)"
).strip()
run_name = widget("run_name", "", "MLflow run name (empty: automatic)").strip()
if experiment.isdigit():
    config = config.replace(tracing=dataclasses.replace(config.tracing, experiment_id=experiment))
elif experiment:
    config = config.replace(tracing=dataclasses.replace(config.tracing, experiment=experiment, experiment_id=""))
services = Services(config)

# COMMAND ----------

# MAGIC %md ## The labelled set and the index it is searched in

# COMMAND ----------

scratch = None
if queries_path:
    queries = load_queries(queries_path)
    retriever = services.retriever
    depth = max(OWN_SET_DEPTH, k, DEFAULT_NDCG_K)
    where = f"your index ({config.rag.backend})"
    print(f"{len(queries)} queries from {queries_path}, searched in {where}")
else:
    eval_dir = REPO / "fixtures" / "eval"
    if not (eval_dir / "queries.jsonl").is_file():
        raise EvaluationError(
            f"the project's labelled set is not at {eval_dir}: run this notebook from the deployed bundle "
            "(or a checkout), or set the queries widget to your own labelled file"
        )
    corpus, queries = load_corpus(eval_dir / "corpus.jsonl"), load_queries(eval_dir / "queries.jsonl")
    scratch = open_scratch_database(services.db, scratch_name)
    retriever, synced = index_corpus(scratch, services.embedder, config.rag, corpus)
    depth = None  # one chunk per document: the top max(k, 10) chunks are the top documents
    where = scratch.target.description
    print(f"{len(corpus)} documents and {len(queries)} queries from {eval_dir}, indexed in {where}")
    print(synced.summary())

# COMMAND ----------

# MAGIC %md
# MAGIC ## Recall@k and nDCG@10 per search mode
# MAGIC `ms/query` is the search alone: the query vectors are computed first (the assistant keeps a
# MAGIC question's vector), so no mode is charged for embedding the questions the others then reuse.

# COMMAND ----------

if not queries_path or config.rag.backend == "pgvector" or config.rag.vector_search_embeddings == "self_managed":
    for labelled in queries:  # one call each: the embedder keeps the vectors of short calls
        services.embedder.embed([labelled.query])
try:
    report = evaluate(retriever, queries, modes=SEARCH_MODES, k=k, ndcg_k=DEFAULT_NDCG_K, depth=depth)
finally:
    if scratch is not None:
        scratch.close()
recall_key, ndcg_key = f"recall@{k}", f"ndcg@{DEFAULT_NDCG_K}"
groups = [group for group in report[SEARCH_MODES[0]] if group != "ms_per_query"]
rows = [
    (mode, group, f"{scores[group][recall_key]:.3f}", f"{scores[group][ndcg_key]:.3f}", scores[group]["n"])
    for mode, scores in report.items()
    for group in groups
]
print_table(rows, ("mode", "queries", recall_key, ndcg_key, "n"))
print()
print_table([(mode, f"{scores['ms_per_query']:.1f}") for mode, scores in report.items()], ("mode", "ms/query"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Log to MLflow
# MAGIC One run per evaluation in the assistant's experiment: the metrics per mode (`vector/recall_at_5`,
# MAGIC `hybrid/paraphrase/ndcg_at_10`, ...) and what was evaluated as parameters.

# COMMAND ----------

try:
    tracking_uri, experiment_id = mlflow_experiment(config, services.env)
    run_id = log_evaluation(
        report,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        run_name=run_name or f"retrieval {config.rag.embedding_model}",
        params={
            "labelled_set": queries_path or "fixtures/eval",
            "queries": len(queries),
            "index": where,
            "backend": config.rag.backend if queries_path else "pgvector",
            "embedding_model": config.rag.embedding_model,
            "index_type": config.rag.index_type,
            "k": k,
            "ndcg_k": DEFAULT_NDCG_K,
            "depth": depth or max(k, DEFAULT_NDCG_K),
        },
    )
    print(f"MLflow run {run_id} in experiment {experiment_id} at {tracking_uri}")
finally:
    services.close()
