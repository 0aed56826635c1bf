"""Retrieval quality on a labelled set: recall@k and nDCG@k for each search mode, optionally logged to MLflow.

A labelled set is JSON lines, one query a line::

    {"id": "q1", "query": "how do I roll back a release?", "relevant": ["runbooks/rollback.md"], "kind": "paraphrase"}

``relevant`` lists the document paths that answer the query (the ``path`` that ``context-assistant search``
shows); ``kind`` is optional and groups queries in the report (the project's set uses ``keyword`` and
``paraphrase``). Relevance is binary and per document: a query's ranking is the distinct paths of its hits
in order, so a document with several matching chunks counts once, at its best rank.

The project's own set (``fixtures/eval``: ``corpus.jsonl`` with ``id``/``title``/``text`` documents, one
chunk each, and ``queries.jsonl``) is indexed into a *scratch database* on the same server
(:func:`open_scratch_database`), never into the assistant's index: evaluating must not change what users
search. ``benchmarks/retrieval_eval.py`` and ``notebooks/evaluate_retrieval.py`` both score with
:func:`evaluate`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.clock import REAL_CLOCK, Clock
from ..core.errors import InvalidInput
from .base import SEARCH_MODES, Retriever, check_mode

if TYPE_CHECKING:
    from ..core.config import Config, RagConfig
    from ..storage.db import Database
    from .embeddings import Embedder
    from .pgvector import PgVectorChunkIndex
    from .sync import SourceChunk, SyncResult

DEFAULT_K = 5
DEFAULT_NDCG_K = 10
ALL = "all"  # the report's bucket of every query, next to one bucket per kind
_SCRATCH_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]")


class EvaluationError(InvalidInput):
    """The labelled set or the scratch database is unusable; ``str()`` says what to fix."""


@dataclass(frozen=True)
class LabelledQuery:
    id: str
    query: str
    relevant: tuple[str, ...]
    kind: str = ""


@dataclass(frozen=True)
class LabelledDocument:
    """A document of the project's evaluation corpus, indexed as one chunk (``path`` = ``id``)."""

    id: str
    title: str
    text: str


# ---------------------------------------------------------------------------------------------------------
# Reading labelled sets


def _json_lines(path: Path) -> tuple[list[tuple[int, Any]], list[str]]:
    """``(line number, value)`` per non-blank line, and one error per line that is not JSON."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvaluationError(f"no such file: {path}") from None
    except UnicodeDecodeError as exc:
        raise EvaluationError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    values, errors = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
    return values, errors


def _reject(path: Path, errors: list[str]) -> None:
    if errors:
        raise EvaluationError(f"{path}: nothing evaluated, {len(errors)} bad line(s)\n" + "\n".join(errors))


def _text(item: Mapping[str, Any], key: str) -> str | None:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    value = str(value)
    return value if value.strip() else None


def load_queries(path: str | Path) -> list[LabelledQuery]:
    """Every query of a labelled JSONL file, all checked before any is used (one bad line rejects the file)."""
    path = Path(path)
    values, errors = _json_lines(path)
    queries: list[LabelledQuery] = []
    seen: set[str] = set()
    for number, item in values:
        problem = None
        if not isinstance(item, dict):
            problem = "expected a JSON object"
        elif _text(item, "id") is None:
            problem = "'id' must be a non-empty string or an integer"
        elif not isinstance(item.get("query"), str) or not item["query"].strip():
            problem = "'query' must be a non-empty string"
        elif (
            not isinstance(item.get("relevant"), list)
            or not item["relevant"]
            or not all(isinstance(p, str) and p.strip() for p in item["relevant"])
        ):
            problem = "'relevant' must be a non-empty list of document paths"
        elif "kind" in item and not (isinstance(item["kind"], str) and item["kind"].strip()):
            problem = "'kind', when given, must be a non-empty string"
        elif item.get("kind") == ALL:
            problem = f"'kind' {ALL!r} is reserved for the whole set"
        elif str(item["id"]) in seen:
            problem = f"duplicate id {str(item['id'])!r}"
        if problem:
            errors.append(f"line {number}: {problem}")
            continue
        seen.add(str(item["id"]))
        relevant = tuple(dict.fromkeys(p.strip() for p in item["relevant"]))
        queries.append(LabelledQuery(str(item["id"]), item["query"], relevant, item.get("kind", "").strip()))
    _reject(path, errors)
    if not queries:
        raise EvaluationError(f"{path} has no queries")
    return queries


def load_corpus(path: str | Path) -> list[LabelledDocument]:
    """The documents of an evaluation corpus (``{"id", "title", "text"}`` per line), all checked first."""
    path = Path(path)
    values, errors = _json_lines(path)
    documents: list[LabelledDocument] = []
    for number, item in values:
        if not isinstance(item, dict):
            errors.append(f"line {number}: expected a JSON object")
        elif _text(item, "id") is None or _text(item, "text") is None:
            errors.append(f"line {number}: 'id' and 'text' must be non-empty strings")
        else:
            documents.append(LabelledDocument(str(item["id"]), str(item.get("title") or ""), str(item["text"])))
    _reject(path, errors)
    if not documents:
        raise EvaluationError(f"{path} has no documents")
    return documents


def corpus_chunks(corpus: Iterable[LabelledDocument]) -> list[SourceChunk]:
    """One chunk per document: ``chunk_id`` and ``path`` are the document id, the title is the heading."""
    from ..ingest.chunking import content_hash
    from .sync import SourceChunk

    return [SourceChunk(d.id, d.id, 0, d.text, d.title, None, content_hash(d.text)) for d in corpus]


# ---------------------------------------------------------------------------------------------------------
# Metrics


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """The share of the relevant documents found in the first ``k`` of ``ranked``."""
    wanted = set(relevant)
    return len(set(ranked[:k]) & wanted) / len(wanted)


def ndcg_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Normalised discounted cumulative gain with binary relevance; 1.0 when the relevant documents lead.

    ``ranked`` must hold each document once (see :func:`distinct_paths`), or the score can pass 1.
    """
    wanted = set(relevant)
    dcg = sum(1 / math.log2(i + 2) for i, doc in enumerate(ranked[:k]) if doc in wanted)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(wanted), k)))
    return dcg / ideal


def distinct_paths(hits: Iterable[Any]) -> list[str]:
    """The hits' document paths in rank order, each once (at its best rank)."""
    return list(dict.fromkeys(hit.path for hit in hits))


def evaluate(
    retriever: Retriever,
    queries: Sequence[LabelledQuery],
    *,
    modes: Sequence[str] = SEARCH_MODES,
    k: int = DEFAULT_K,
    ndcg_k: int = DEFAULT_NDCG_K,
    depth: int | None = None,
    clock: Clock = REAL_CLOCK,
) -> dict[str, dict[str, Any]]:
    """Search every query in every mode and average the metrics, overall and per kind.

    Returns ``{mode: {"all": {"recall@<k>", "ndcg@<ndcg_k>", "n"}, <kind>: {...}, "ms_per_query"}}``.
    ``depth`` is how many chunks each search returns (default ``max(k, ndcg_k)``); raise it when documents
    have many chunks, so that ``ndcg_k`` distinct documents are seen.
    """
    if not queries:
        raise EvaluationError("there are no queries to evaluate")
    if k < 1 or ndcg_k < 1:
        raise EvaluationError(f"k and ndcg_k must be at least 1, got {k} and {ndcg_k}")
    depth = max(k, ndcg_k) if depth is None else depth
    if depth < max(k, ndcg_k):
        raise EvaluationError(f"depth ({depth}) must be at least k ({k}) and ndcg_k ({ndcg_k})")
    recall_key, ndcg_key = f"recall@{k}", f"ndcg@{ndcg_k}"
    kinds = sorted({q.kind for q in queries if q.kind})
    report: dict[str, dict[str, Any]] = {}
    for mode in modes:
        check_mode(mode)
        per_kind: dict[str, list[tuple[float, float]]] = {kind: [] for kind in [ALL, *kinds]}
        started = clock.monotonic()
        for q in queries:
            ranked = distinct_paths(retriever.search(q.query, top_k=depth, mode=mode))
            scores = (recall_at_k(ranked, q.relevant, k), ndcg_at_k(ranked, q.relevant, ndcg_k))
            per_kind[ALL].append(scores)
            if q.kind:
                per_kind[q.kind].append(scores)
        report[mode] = {
            kind: {
                recall_key: sum(s[0] for s in values) / len(values),
                ndcg_key: sum(s[1] for s in values) / len(values),
                "n": len(values),
            }
            for kind, values in per_kind.items()
        }
        report[mode]["ms_per_query"] = 1000 * (clock.monotonic() - started) / len(queries)
    return report


def mode_metrics(mode: str, scores: Mapping[str, Any]) -> dict[str, float]:
    """One mode's report as MLflow metrics: ``<mode>/recall_at_5``, ``<mode>/<kind>/ndcg_at_10``, ...

    MLflow metric names allow letters, digits, ``_ - . /`` and spaces, so ``@`` becomes ``_at_``.
    """
    metrics: dict[str, float] = {}
    for kind, values in scores.items():
        if not isinstance(values, Mapping):
            metrics[f"{mode}/{kind}"] = float(values)
            continue
        prefix = mode if kind == ALL else f"{mode}/{_METRIC_UNSAFE.sub('_', kind)}"
        for name, value in values.items():
            if name != "n":
                metrics[f"{prefix}/{name.replace('@', '_at_')}"] = float(value)
    return metrics


# ---------------------------------------------------------------------------------------------------------
# The scratch index for the project's set, and MLflow


def check_scratch_name(name: str) -> str:
    """A scratch database name must be a plain lowercase identifier, so it reads the same quoted or not."""
    if not _SCRATCH_NAME.match(name):
        raise EvaluationError(
            f"scratch database name {name!r}: use lowercase letters, digits and underscores (at most 63)"
        )
    return name


def open_scratch_database(main: Database, name: str) -> Database:
    """A database ``name`` next to ``main`` (same server and credentials), created if missing and migrated.

    The evaluation corpus is indexed there, so the assistant's own index is never touched. It is kept
    between runs: a re-run with the same embedding model embeds nothing. Drop it with ``DROP DATABASE``.
    """
    import psycopg
    from psycopg import sql

    from ..storage.db import Database
    from ..storage.targets import Target

    check_scratch_name(name)
    own = psycopg.conninfo.conninfo_to_dict(main.target.conninfo).get("dbname")
    if name == own:
        raise EvaluationError(
            f"the scratch database must not be the assistant's own database ({name}): choose another name"
        )
    password = main.target.password() if main.target.password is not None else None
    extra: dict[str, Any] = {"password": password} if password else {}
    try:
        with psycopg.connect(main.target.conninfo, autocommit=True, **extra) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a concurrent run made it
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise EvaluationError(
            f"cannot create the scratch database {name} on {main.target.description}: "
            f"{str(exc).strip().splitlines()[0]}. Ask the database owner to run CREATE DATABASE {name} "
            "(and grant you access), or evaluate your own labelled set against your index instead."
        ) from None
    target = Target(
        main.target.kind,
        psycopg.conninfo.make_conninfo(main.target.conninfo, dbname=name),
        f"scratch database {name} ({main.target.description})",
        main.target.password,
    )
    db = Database(target, min_size=1, max_size=2)
    try:
        db.migrate(vector=True)
    except Exception:
        db.close()
        raise
    return db


def index_corpus(
    db: Database,
    embedder: Embedder,
    rag: RagConfig,
    corpus: Sequence[LabelledDocument],
    progress: Callable[[str], None] | None = None,
) -> tuple[PgVectorChunkIndex, SyncResult]:
    """Index ``corpus`` in ``db`` with the configured index settings (only what changed is embedded)."""
    from .pgvector import PgVectorChunkIndex
    from .sync import InMemoryChunkSource

    index = PgVectorChunkIndex.from_config(db, embedder, rag)
    result = index.refresh(
        InMemoryChunkSource(corpus_chunks(corpus), label="the labelled corpus"), progress=progress
    )
    return index, result


def mlflow_experiment(config: Config, env: Mapping[str, str]) -> tuple[str, str]:
    """``(tracking URI, experiment id)`` of the experiment traces go to (``tracing.*``), created if missing.

    Evaluation runs sit next to the assistant's traces (on Databricks, the bundle's experiment), whether or
    not turn tracing is switched on.
    """
    import dataclasses

    from ..core.tracing import make_tracer
    from ..core.tracing_inprocess import InProcessTracer

    tracing = dataclasses.replace(config.tracing, enabled=True, exporter="in_process")  # MLflow is here anyway
    tracer = make_tracer(config.replace(tracing=tracing), env)
    assert isinstance(tracer, InProcessTracer)
    if not tracer.warm_up() or not tracer.experiment_id:
        raise EvaluationError(
            f"cannot open the MLflow experiment {config.tracing.experiment_id or config.tracing.experiment!r} "
            f"at {tracer.tracking_uri} (the warning above says why); check tracing.tracking_uri / "
            "MLFLOW_TRACKING_URI and tracing.experiment"
        )
    return tracer.tracking_uri, tracer.experiment_id


def log_evaluation(
    report: Mapping[str, Mapping[str, Any]],
    *,
    tracking_uri: str,
    experiment_id: str,
    run_name: str,
    params: Mapping[str, Any],
) -> str:
    """One MLflow run for one evaluation: ``params`` and each mode's metrics (:func:`mode_metrics`). Returns
    the run id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tag("context_assistant.run", "retrieval_evaluation")
        mlflow.log_params({key: str(value) for key, value in params.items()})
        for mode, scores in report.items():
            mlflow.log_metrics(mode_metrics(mode, scores))
        return run.info.run_id
