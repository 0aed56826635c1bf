"""Answer quality: the real assistant turn over a dataset, scored with ``mlflow.genai.evaluate``.

A dataset is JSON lines, one question a line (``expected_sources`` and ``expected_facts`` are optional)::

    {"question": "When does on-call hand over?", "expected_sources": ["oncall-runbook.txt"],
     "expected_facts": ["Tuesdays at 10:00 UTC"]}

``expected_sources`` are document paths as the sources under an answer show them (relative to the documents
folder or Volume; a source whose path ends in ``/<expected>`` counts too). Every line is checked before
anything runs; a file with a bad line is rejected with each bad line listed.

Each question is one turn of :meth:`~context_assistant.assistant.agent.ContextAgent.invoke`, the function behind
``/invocations``: MLflow sees the ResponsesAgent request (``{"input": [{"role": "user", ...}]}``) and
response, and the turn's own trace (memory, retrieval, prompt, model spans) is the evaluation row's trace.
Each question runs as a fresh user (``context-assistant-eval-<run>-<n>``) in a new session, so no answer
recalls another; the sessions are deleted afterwards unless kept (``--keep-sessions``).

Scorers, deterministic and offline:

* ``source_recall`` — the share of ``expected_sources`` among the passages given to the model;
* ``valid_citations`` — every ``[n]`` in the answer names one of the passages given (yes/no);
* ``fact_coverage`` — the share of ``expected_facts`` found in the answer (case and spacing ignored);
* ``latency_ms`` — the turn's wall time (mean, median, p90, max over the run).

With a judge model (``evaluation.judge_model`` or ``--judge-model``: an MLflow model URI) MLflow's LLM judges
run too: ``retrieval_groundedness``, ``relevance_to_query`` and ``correctness`` (only for questions with
``expected_facts``). A question whose turn failed gets no scores and is listed with its error.

The run lands in the assistant's MLflow experiment (``tracing.*``), tagged
``context_assistant.run: assistant_evaluation``; its traces carry the per-question assessments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..core.config import Config
from ..core.console import json_lines
from ..retrieval.evaluation import EvaluationError

if TYPE_CHECKING:
    from ..core.clock import Clock
    from ..core.tracing import AnyTracer
    from ..llm.interface import ChatModel
    from ..retrieval.embeddings import Embedder
    from ..storage.memory import ConversationStore
    from .turn import Assistant

RUN_TAG = "context_assistant.run"
RUN_KIND = "assistant_evaluation"
USER_PREFIX = "context-assistant-eval"
DETERMINISTIC = ("source_recall", "valid_citations", "fact_coverage", "latency_ms")
JUDGES = ("retrieval_groundedness", "relevance_to_query", "correctness")
EXPECTATIONS = ("expected_sources", "expected_facts")
LATENCY_AGGREGATIONS = ["mean", "median", "p90", "max"]
_SPACES = re.compile(r"\s+")


class EvaluationParts(Protocol):
    """What an evaluation uses of the composition root (``services.Services`` is one): the parts a turn is
    built from, already wired. Tracing must be on in ``config`` (see :func:`tracing_on`)."""

    @property
    def config(self) -> Config: ...
    @property
    def tracer(self) -> AnyTracer: ...
    @property
    def assistant(self) -> Assistant: ...
    @property
    def store(self) -> ConversationStore: ...
    @property
    def embedder(self) -> Embedder: ...
    @property
    def chat_model(self) -> ChatModel: ...
    @property
    def clock(self) -> Clock: ...


def tracing_on(config: Config) -> Config:
    """``config`` with turn tracing enabled: each answer's trace is its row of the evaluation, so the parts
    an evaluation runs on are built from this (``Services(tracing_on(config))``)."""
    if config.tracing.enabled and config.tracing.exporter == "in_process":
        return config
    # In process: mlflow.genai.evaluate reads the traces of the answers its own process records.
    return config.replace(tracing=dataclasses.replace(config.tracing, enabled=True, exporter="in_process"))


@dataclass(frozen=True)
class EvalQuestion:
    question: str
    expected_sources: tuple[str, ...] = ()
    expected_facts: tuple[str, ...] = ()

    def to_row(self) -> dict[str, Any]:
        """The row ``mlflow.genai.evaluate`` gets: the ResponsesAgent request as inputs, and expectations."""
        expectations: dict[str, Any] = {}
        if self.expected_sources:
            expectations["expected_sources"] = list(self.expected_sources)
        if self.expected_facts:
            expectations["expected_facts"] = list(self.expected_facts)
        return {"inputs": {"input": [{"role": "user", "content": self.question}]}, "expectations": expectations}


def load_dataset(path: str | Path) -> list[EvalQuestion]:
    """Every question of a JSONL dataset, all checked before any is used (one bad line rejects the file)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvaluationError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise EvaluationError(f"{path} is a folder; give the dataset's JSONL file") from None
    except UnicodeDecodeError as exc:
        raise EvaluationError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    questions: list[EvalQuestion] = []
    errors: list[str] = []
    for number, item in json_lines(lines, errors):
        problem = _problem(item)
        if problem:
            errors.append(f"line {number}: {problem}")
            continue
        questions.append(
            EvalQuestion(
                item["question"],
                tuple(p.strip() for p in item.get("expected_sources") or ()),
                tuple(f.strip() for f in item.get("expected_facts") or ()),
            )
        )
    if errors:
        shown = errors[:20]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise EvaluationError(f"{path}: nothing evaluated, {len(errors)} bad line(s)\n" + "\n".join(shown) + more)
    if not questions:
        raise EvaluationError(f"{path} has no questions")
    return questions


def _problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "expected a JSON object"
    if not isinstance(item.get("question"), str) or not item["question"].strip():
        return "'question' must be a non-empty string"
    unknown = sorted(set(item) - {"question", *EXPECTATIONS})
    if unknown:
        return f"unknown key {unknown[0]!r} (known: question, expected_sources, expected_facts)"
    for key in EXPECTATIONS:
        value = item.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            return f"{key!r}, when given, must be a list of non-empty strings"
    return None


# ---------------------------------------------------------------------------------------------------------
# What the scorers read from a response


def _custom(outputs: Any) -> dict[str, Any]:
    return outputs.get("custom_outputs") or {} if isinstance(outputs, Mapping) else {}


def answer_text(outputs: Any) -> str:
    """The text of a ResponsesAgent response (all output text parts)."""
    if not isinstance(outputs, Mapping):
        return ""
    return "".join(
        str(part.get("text") or "")
        for item in outputs.get("output") or ()
        if isinstance(item, Mapping)
        for part in item.get("content") or ()
        if isinstance(part, Mapping) and part.get("type") == "output_text"
    )


def same_document(path: str, expected: str) -> bool:
    expected = expected.strip().lstrip("/")
    return path == expected or path.endswith("/" + expected)


def _normalise(text: str) -> str:
    return _SPACES.sub(" ", text).strip().casefold()


def score_source_recall(outputs: Any, expectations: Mapping[str, Any] | None) -> tuple[float, str] | None:
    expected = list((expectations or {}).get("expected_sources") or ())
    if not expected or not isinstance(outputs, Mapping):
        return None
    given = [str(s.get("path", "")) for s in _custom(outputs).get("sources") or ()]
    found = [e for e in expected if any(same_document(p, e) for p in given)]
    missing = [e for e in expected if e not in found]
    rationale = f"{len(found)} of {len(expected)} expected documents were among the passages given to the model"
    if missing:
        rationale += f"; missing: {', '.join(missing)}"
    return len(found) / len(expected), rationale


def score_citations(outputs: Any) -> tuple[bool, str] | None:
    from .agent import find_citations

    if not isinstance(outputs, Mapping):
        return None
    count = len(_custom(outputs).get("sources") or ())
    markers = find_citations(answer_text(outputs))
    if not markers:
        return True, f"no [n] citations in the answer ({count} passages were given)"
    wrong = sorted({number for number, _, _ in markers if not 1 <= number <= count})
    if wrong:
        shown = ", ".join(f"[{n}]" for n in wrong)
        return False, f"{shown} name no passage: {count} were given"
    return True, f"all {len(markers)} citations name one of the {count} passages given"


def score_facts(outputs: Any, expectations: Mapping[str, Any] | None) -> tuple[float, str] | None:
    facts = list((expectations or {}).get("expected_facts") or ())
    if not facts or not isinstance(outputs, Mapping):
        return None
    text = _normalise(answer_text(outputs))
    missing = [fact for fact in facts if _normalise(fact) not in text]
    rationale = f"{len(facts) - len(missing)} of {len(facts)} expected facts are in the answer"
    if missing:
        rationale += "; missing: " + "; ".join(repr(fact) for fact in missing)
    return (len(facts) - len(missing)) / len(facts), rationale


def deterministic_scorers() -> list[Any]:
    """The offline scorers, as MLflow scorers (feedback with a rationale; None when they do not apply)."""
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    def feedback(result: tuple[Any, str] | None) -> Feedback | None:
        return None if result is None else Feedback(value=result[0], rationale=result[1])

    @scorer(name="source_recall")
    def source_recall(outputs: Any, expectations: Any) -> Feedback | None:
        return feedback(score_source_recall(outputs, expectations))

    @scorer(name="valid_citations")
    def valid_citations(outputs: Any) -> Feedback | None:
        return feedback(score_citations(outputs))

    @scorer(name="fact_coverage")
    def fact_coverage(outputs: Any, expectations: Any) -> Feedback | None:
        return feedback(score_facts(outputs, expectations))

    @scorer(name="latency_ms", aggregations=LATENCY_AGGREGATIONS)  # type: ignore[arg-type]
    def latency_ms(outputs: Any) -> float | None:
        value = _custom(outputs).get("latency_ms")
        return float(value) if value is not None else None

    return [source_recall, valid_citations, fact_coverage, latency_ms]


def judge_scorers(model: str) -> list[Any]:
    """MLflow's LLM judges on ``model``, skipped for a failed turn (and correctness without expected facts)."""
    from mlflow.genai.scorers import Correctness, RelevanceToQuery, RetrievalGroundedness, scorer

    groundedness, relevance, correctness = (
        RetrievalGroundedness(model=model),
        RelevanceToQuery(model=model),
        Correctness(model=model),
    )

    @scorer(name="retrieval_groundedness")
    def retrieval_groundedness(outputs: Any, trace: Any) -> Any:
        if not isinstance(outputs, Mapping) or not _custom(outputs).get("sources"):
            return None  # nothing was retrieved: nothing to be grounded in
        return groundedness(trace=trace)

    @scorer(name="relevance_to_query")
    def relevance_to_query(inputs: Any, outputs: Any) -> Any:
        if not isinstance(outputs, Mapping):
            return None
        return relevance(inputs=inputs, outputs=answer_text(outputs))

    @scorer(name="correctness")
    def correctness_(inputs: Any, outputs: Any, expectations: Any) -> Any:
        if not isinstance(outputs, Mapping) or not (expectations or {}).get("expected_facts"):
            return None
        return correctness(inputs=inputs, outputs=answer_text(outputs), expectations=expectations)

    return [retrieval_groundedness, relevance_to_query, correctness_]


# ---------------------------------------------------------------------------------------------------------
# Running it


@dataclass
class RowResult:
    question: str
    session_id: str | None = None
    trace_id: str | None = None
    error: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    rationales: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvalReport:
    run_id: str
    experiment_id: str
    tracking_uri: str
    dataset: str
    model: str
    judge_model: str
    metrics: dict[str, float]
    rows: list[RowResult]
    sessions_kept: bool = False

    @property
    def failed(self) -> list[RowResult]:
        return [row for row in self.rows if row.error]

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.tracking_uri,
            "dataset": self.dataset,
            "model": self.model,
            "judge_model": self.judge_model or None,
            "metrics": self.metrics,
            "rows": [row.to_json() for row in self.rows],
        }


class _Recorder:
    """What each prediction did (by question, in dataset order), for the report and the clean-up."""

    def __init__(self, questions: Sequence[EvalQuestion], run_token: str) -> None:
        self.rows = [RowResult(q.question) for q in questions]
        self._pending: dict[str, list[int]] = {}
        for index, q in enumerate(questions):
            self._pending.setdefault(q.question, []).append(index)
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self.users: list[str] = []
        self.prefix = f"{USER_PREFIX}-{run_token}"

    def start(self, question: str) -> tuple[str, RowResult | None]:
        with self._lock:
            user = f"{self.prefix}-{next(self._numbers)}"
            self.users.append(user)
            indexes = self._pending.get(question) or []
            row = self.rows[indexes.pop(0)] if indexes else None
        return user, row


def evaluate_assistant(
    services: EvaluationParts,
    dataset: str | Path,
    *,
    judge_model: str | None = None,
    workers: int = 1,
    keep_sessions: bool = False,
    run_name: str | None = None,
) -> EvalReport:
    """Run every question of ``dataset`` through the assistant and score it with ``mlflow.genai.evaluate``.

    ``services`` must trace turns (:func:`tracing_on`): the turn's trace is the row's trace, in the
    experiment ``tracing.*`` names. ``workers`` turns run at once (1: latencies are not inflated by each other).
    """
    questions = load_dataset(dataset)
    if workers < 1:
        raise EvaluationError(f"workers must be at least 1, got {workers}")
    try:
        import mlflow
        import mlflow.genai
        import pandas  # noqa: F401  (mlflow.genai.evaluate needs it; mlflow-skinny does not bring it)
    except ImportError as exc:
        raise EvaluationError(
            f"evaluation needs {exc.name}, which is not installed: pip install 'context-assistant[eval]'"
        ) from None
    from .agent import AgentError, ContextAgent

    judge = services.config.evaluation.judge_model if judge_model is None else judge_model
    config = services.config
    if not config.tracing.enabled:
        raise EvaluationError(
            "an evaluation records each answer's trace, and tracing is off: build the services from "
            "tracing_on(config) (context-assistant eval does)"
        )
    tracer = services.tracer
    if not tracer.warm_up() or not tracer.experiment_id:
        raise EvaluationError(
            f"cannot open the MLflow experiment {config.tracing.experiment_id or config.tracing.experiment!r} at "
            f"{tracer.tracking_uri} (the warning above says why); check tracing.tracking_uri / "
            "MLFLOW_TRACKING_URI and tracing.experiment"
        )
    agent = ContextAgent(services.assistant, services.store, clock=services.clock)
    if config.rag.enabled or config.memory.recall:
        services.embedder.embed(["warm-up"])  # load a local model now, not inside the first turn's latency
    recorder = _Recorder(questions, uuid.uuid4().hex[:8])
    clock = services.clock

    def predict(input: list[dict[str, Any]]) -> dict[str, Any]:
        question = str(input[-1].get("content", "")) if input else ""
        user, row = recorder.start(question)
        started = clock.monotonic()
        try:
            response = agent.invoke(user, {"input": input})
        except AgentError as exc:
            if row is not None:
                row.error = str(exc)
                row.session_id = exc.extra.get("session_id")
                row.trace_id = _failed_trace_id(services, user, exc.extra.get("user_message_id"))
            raise
        response["custom_outputs"]["latency_ms"] = round((clock.monotonic() - started) * 1000, 1)
        if row is not None:
            row.session_id = response["custom_outputs"]["session_id"]
            row.trace_id = response["custom_outputs"]["trace_id"]
        return response

    scorers = deterministic_scorers() + (judge_scorers(judge) if judge else [])
    mlflow.set_tracking_uri(tracer.tracking_uri)
    mlflow.set_experiment(experiment_id=tracer.experiment_id)  # evaluate looks the run's traces up in it
    name = run_name or f"assistant eval {Path(dataset).name}"
    try:
        with (
            _environment(
                MLFLOW_GENAI_EVAL_SKIP_TRACE_VALIDATION="true",  # it would run the first question an extra time
                MLFLOW_GENAI_EVAL_MAX_WORKERS=str(workers),
            ),
            mlflow.start_run(experiment_id=tracer.experiment_id, run_name=name) as run,
            contextlib.redirect_stdout(sys.stderr),  # MLflow prints its summary; stdout is for our report
        ):
            mlflow.set_tag(RUN_TAG, RUN_KIND)
            mlflow.log_params(
                {
                    "dataset": str(dataset),
                    "questions": len(questions),
                    "model": getattr(services.chat_model, "name", config.model.endpoint),
                    "judge_model": judge or "none",
                    "rag_enabled": config.rag.enabled,
                    "backend": config.rag.backend,
                    "embedding_model": config.rag.embedding_model,
                    "search_mode": config.rag.search_mode,
                    "top_k": config.rag.top_k,
                    "workers": workers,
                }
            )
            result = mlflow.genai.evaluate(
                data=[q.to_row() for q in questions], predict_fn=predict, scorers=scorers
            )
    finally:
        if not keep_sessions:
            _delete_sessions(services, recorder.users)
    _merge_scores(recorder.rows, result.result_df, [s.name for s in scorers], run.info.run_id)
    return EvalReport(
        run_id=run.info.run_id,
        experiment_id=str(tracer.experiment_id),
        tracking_uri=tracer.tracking_uri,
        dataset=str(dataset),
        model=getattr(services.chat_model, "name", config.model.endpoint),
        judge_model=judge,
        metrics={key: float(value) for key, value in (result.metrics or {}).items()},
        rows=recorder.rows,
        sessions_kept=keep_sessions,
    )


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _failed_trace_id(services: EvaluationParts, user: str, message_id: Any) -> str | None:
    if not isinstance(message_id, int):
        return None
    try:
        return services.store.get_message(user, message_id).metadata.get("trace_id")
    except Exception:
        return None


def _delete_sessions(services: EvaluationParts, users: Sequence[str]) -> None:
    store = services.store
    for user in users:
        for session in store.list_sessions(user, limit=500):
            store.delete_session(user, session.id)


def _merge_scores(rows: Sequence[RowResult], frame: Any, names: Sequence[str], run_id: str) -> None:
    """Each row's scores and rationales, from the assessments MLflow logged on its trace in this run."""
    if frame is None:
        return
    wanted = set(names)
    by_trace = {row.trace_id: row for row in rows if row.trace_id}
    for record in frame.to_dict(orient="records"):
        row = by_trace.get(record.get("trace_id"))
        if row is None:
            continue
        for assessment in record.get("assessments") or ():
            name = assessment.get("assessment_name")
            feedback = assessment.get("feedback")
            source_run = (assessment.get("metadata") or {}).get("mlflow.assessment.sourceRunId")
            if name not in wanted or not isinstance(feedback, Mapping) or source_run not in (None, run_id):
                continue
            error = (feedback.get("error") or {}).get("error_message")
            if feedback.get("value") is not None:
                row.scores[name] = _plain(feedback["value"])
            if error:
                row.rationales[name] = f"scorer failed: {error}"
            elif assessment.get("rationale"):
                row.rationales[name] = str(assessment["rationale"])


def _plain(value: Any) -> Any:
    """numpy scalars and MLflow's categorical ratings as plain JSON values."""
    value = getattr(value, "value", value)  # CategoricalRating.YES -> "yes"
    item = getattr(value, "item", None)
    return item() if callable(item) else value


# ---------------------------------------------------------------------------------------------------------
# The report


def format_report(report: EvalReport) -> str:
    """The report as text: one line per question, then the run's metrics and where to read it."""
    names = [n for n in (*DETERMINISTIC, *JUDGES) if any(n in row.scores for row in report.rows)]
    judges = report.judge_model or "none (set evaluation.judge_model or --judge-model for LLM judges)"
    lines = [
        f"Evaluated {len(report.rows)} questions from {report.dataset} (model: {report.model}; judges: {judges})",
        "",
    ]
    table = [("#", *names, "question")]
    for number, row in enumerate(report.rows, start=1):
        question = " ".join(row.question.split())
        question = question if len(question) <= 60 else question[:59] + "…"
        if row.error:
            table.append((str(number), *("-" for _ in names), f"{question}  [failed: {row.error}]"))
        else:
            table.append((str(number), *(_cell(row.scores.get(n)) for n in names), question))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=False)) + "  " + r[-1])
    lines.append("")
    if report.metrics:
        lines.append("Run metrics: " + ", ".join(f"{k} {_cell(v)}" for k, v in sorted(report.metrics.items())))
    lines.append(f"MLflow run {report.run_id} in experiment {report.experiment_id} at {report.tracking_uri}")
    if report.tracking_uri.startswith("sqlite:"):
        lines.append(
            "Read it with: make mlflow-ui in the project folder, then http://127.0.0.1:5000 (the run's Traces tab "
            "shows each question's answer, spans and scores with their rationales); elsewhere, with the full "
            f"mlflow package (mlflow-skinny has no UI): mlflow ui --backend-store-uri {report.tracking_uri}"
        )
    else:
        lines.append("Read it in the experiment's Evaluations tab (or the run's Traces tab) in the MLflow UI.")
    if report.sessions_kept:
        lines.append(f"The questions' sessions are kept (users {USER_PREFIX}-*).")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)
