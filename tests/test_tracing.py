"""MLflow tracing of turns against a real local MLflow store (SQLite), read back through MlflowClient.

One store is shared by the whole module: importing MLflow and running its schema migrations takes seconds,
so each test writes its own traces (with its own session ids) into the same experiment. Traces are exported
synchronously here (``MLFLOW_ENABLE_ASYNC_TRACE_LOGGING=false``; the product keeps MLflow's asynchronous
default) because flushing the asynchronous queue to read a trace back costs about a second each time.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from context_assistant.core.config import load_config
from context_assistant.core.tracing import (
    SPAN_MEMORY_LOAD,
    SPAN_MEMORY_STORE,
    SPAN_MODEL_CALL,
    SPAN_PROMPT_BUILD,
    SPAN_RECALL,
    SPAN_RETRIEVAL,
    DisabledTracer,
    FeedbackError,
    Tracer,
    create_store_whole,
    exporter_for,
    make_tracer,
    tracking_uri_for,
)
from context_assistant.llm.interface import NumberedSource
from context_assistant.services import Services

SOURCES = [
    NumberedSource(1, "docs/security.md", "Tokens", None, "Rotate tokens in Settings.", 0.82, "c-1"),
    NumberedSource(2, "docs/faq.pdf", "", 4, "Warehouses start in a minute.", 0.31, "c-2"),
]


@pytest.fixture(scope="module")
def tracer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracer]:
    data_dir = tmp_path_factory.mktemp("mlflow")
    overrides = {"data_dir": str(data_dir), "tracing.experiment": "ca-tests", "tracing.setup_timeout_seconds": 600}
    config = load_config(None, env={}, overrides=overrides)  # (a loaded machine may take minutes to open it)
    tracer = make_tracer(config, env={})
    assert isinstance(tracer, Tracer)
    with pytest.MonkeyPatch.context() as patch:
        # Read when the tracing provider is (re)built, which pointing MLflow at this new store does.
        patch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
        started = time.perf_counter()
        assert tracer.warm_up()
        # Reported, not asserted: how long MLflow import + SQLite migrations took on this machine.
        print(f"\nMLflow store ready in {time.perf_counter() - started:.1f}s: {tracer.tracking_uri}")
        yield tracer
        tracer.close()


def client(tracer: Tracer) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracer.tracking_uri)


def read_back(tracer: Tracer, trace_id: str | None) -> Any:
    assert trace_id
    tracer.flush()
    return client(tracer).get_trace(trace_id)


def traced_turn(tracer: Tracer, user: str, session_id: str | None, message: str) -> str | None:
    """A turn the way the assistant traces it, with stand-ins for the work each step does."""
    with tracer.turn(user, session_id, {"message": message}) as turn:
        with turn.span(SPAN_MEMORY_LOAD, {"session_id": session_id}) as span:
            span.set_outputs({"messages": 4})
        with turn.span(SPAN_RECALL, {"query": message}) as span:
            span.set_outputs([])
        with turn.span(SPAN_RETRIEVAL, {"query": message, "top_k": 2}) as span:
            span.set_sources(SOURCES)
        with turn.span(SPAN_PROMPT_BUILD) as span:
            span.set_outputs({"prompt_tokens": 40})
        with turn.span(SPAN_MODEL_CALL, {"model": "offline"}) as span:
            span.set_usage(40, 7)
            span.set_outputs({"text": "Rotate tokens in Settings [1]."})
        with turn.span(SPAN_MEMORY_STORE) as span:
            span.set_outputs({"message_id": 12})
        turn.set_tags({"model": "offline", "status": "ok"})
        turn.set_outputs({"reply": "Rotate tokens in Settings [1]."})
        return turn.trace_id


def test_a_turn_is_one_trace_with_a_span_per_step_tagged_with_session_and_user(tracer: Tracer) -> None:
    trace_id = traced_turn(tracer, "alice@example.com", "session-1", "How do I rotate tokens?")

    trace = read_back(tracer, trace_id)

    assert trace.info.experiment_id == tracer.experiment_id
    assert str(trace.info.state) in ("OK", "TraceState.OK")
    assert trace.info.trace_metadata["mlflow.trace.session"] == "session-1"
    assert trace.info.trace_metadata["mlflow.trace.user"] == "alice@example.com"
    assert trace.info.tags["model"] == "offline" and trace.info.tags["status"] == "ok"
    usage = json.loads(trace.info.trace_metadata["mlflow.trace.tokenUsage"])
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (40, 7, 47)

    spans = {span.name: span for span in trace.data.spans}
    root = spans["turn"]
    assert root.parent_id is None
    assert root.inputs == {"message": "How do I rotate tokens?"}
    assert root.outputs == {"reply": "Rotate tokens in Settings [1]."}
    steps = [span for span in trace.data.spans if span.parent_id == root.span_id]
    assert [span.name for span in sorted(steps, key=lambda s: s.start_time_ns)] == [
        SPAN_MEMORY_LOAD,
        SPAN_RECALL,
        SPAN_RETRIEVAL,
        SPAN_PROMPT_BUILD,
        SPAN_MODEL_CALL,
        SPAN_MEMORY_STORE,
    ]
    assert spans[SPAN_RETRIEVAL].span_type == "RETRIEVER"
    assert spans[SPAN_MODEL_CALL].span_type == "CHAT_MODEL"
    assert spans[SPAN_RETRIEVAL].outputs == [
        {
            "page_content": "Rotate tokens in Settings.",
            "metadata": {
                "doc_uri": "docs/security.md",
                "chunk_id": "c-1",
                "score": 0.82,
                "index": 1,
                "heading": "Tokens",
            },
            "id": "c-1",
        },
        {
            "page_content": "Warehouses start in a minute.",
            "metadata": {"doc_uri": "docs/faq.pdf", "chunk_id": "c-2", "score": 0.31, "index": 2, "page": 4},
            "id": "c-2",
        },
    ]


def test_a_sessions_turns_can_be_found_by_session(tracer: Tracer) -> None:
    first = traced_turn(tracer, "bob", "session-search", "first question")
    second = traced_turn(tracer, "bob", "session-search", "second question")
    traced_turn(tracer, "bob", "another-session", "unrelated")
    tracer.flush()

    found = client(tracer).search_traces(
        locations=[tracer.experiment_id], filter_string="metadata.`mlflow.trace.session` = 'session-search'"
    )

    assert {trace.info.trace_id for trace in found} == {first, second}


def test_the_session_can_be_set_once_the_turn_has_created_it(tracer: Tracer) -> None:
    with tracer.turn("carol", None, {"message": "hello"}) as turn:
        turn.set_session("session-created-mid-turn")

    trace = read_back(tracer, turn.trace_id)
    assert trace.info.trace_metadata["mlflow.trace.session"] == "session-created-mid-turn"
    assert trace.info.trace_metadata["mlflow.trace.user"] == "carol"


def test_feedback_is_an_assessment_on_the_turns_trace(tracer: Tracer) -> None:
    trace_id = traced_turn(tracer, "dave", "session-feedback", "Which warehouse?")
    assert trace_id

    assessment_id = tracer.feedback(trace_id, "dave", False, "It named the wrong warehouse.")

    trace = read_back(tracer, trace_id)
    [feedback] = trace.info.assessments
    assert feedback.assessment_id == assessment_id
    assert feedback.name == "user_feedback"
    assert feedback.value is False
    assert feedback.rationale == "It named the wrong warehouse."
    assert (feedback.source.source_type, feedback.source.source_id) == ("HUMAN", "dave")


def test_feedback_on_an_unknown_trace_is_a_clear_error(tracer: Tracer) -> None:
    with pytest.raises(FeedbackError) as caught:
        tracer.feedback("tr-0000000000000000", "dave", True)
    assert str(caught.value) == f"trace 'tr-0000000000000000' not found in {tracer.tracking_uri}"

    with pytest.raises(FeedbackError, match="no trace id given: this turn was not traced"):
        tracer.feedback("", "dave", True)


def test_an_error_in_the_turn_propagates_unchanged_and_marks_the_trace(tracer: Tracer) -> None:
    failure = RuntimeError("serving endpoint 'x' does not exist")
    trace_id = None
    with pytest.raises(RuntimeError) as caught, tracer.turn("erin", "session-error", {"message": "hi"}) as turn:
        trace_id = turn.trace_id
        with turn.span(SPAN_MODEL_CALL, {"model": "x"}):
            raise failure
    assert caught.value is failure

    trace = read_back(tracer, trace_id)
    assert "ERROR" in str(trace.info.state)
    model_span = next(span for span in trace.data.spans if span.name == SPAN_MODEL_CALL)
    assert "ERROR" in str(model_span.status.status_code)
    assert any("does not exist" in str(event.attributes) for event in model_span.events)


def test_values_mlflow_cannot_serialise_are_recorded_as_text(tracer: Tracer) -> None:
    from datetime import datetime, timezone

    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with tracer.turn("frank", "session-values", {"at": when, "path": Path("/docs/a.md")}) as turn:
        pass

    root = read_back(tracer, turn.trace_id).data.spans[0]
    assert root.inputs == {"at": "2026-01-01T00:00:00+00:00", "path": "/docs/a.md"}


@pytest.mark.parametrize("kind", ["unwritable sqlite path", "unknown scheme"])
def test_a_broken_tracking_uri_never_breaks_a_turn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tracer: Tracer, kind: str
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's folder should be")
    uri = f"sqlite:///{blocker}/mlflow.db" if kind == "unwritable sqlite path" else "nosuchstore://nowhere"
    broken = Tracer(uri, experiment="ca-tests", setup_timeout_seconds=600)

    with caplog.at_level(logging.WARNING, logger="context_assistant.core.tracing"):
        assert not broken.warm_up()  # the exporter said why it cannot use the store
        for _ in range(2):
            with broken.turn("gina", "session-broken", {"message": "hi"}) as turn:
                with turn.span(SPAN_RETRIEVAL, {"query": "hi"}) as span:
                    span.set_sources(SOURCES)
                turn.set_tags({"model": "offline"})
                turn.set_session("session-broken")
                result = "the turn's own work still happens"
            assert turn.trace_id is None and result
        assert broken.feedback("tr-1", "gina", True) is None
        broken.flush()  # returns at once: there is no exporter to wait for

    warnings = [r.getMessage() for r in caplog.records if r.name == "context_assistant.core.tracing"]
    assert len(warnings) == 1  # said once, not per turn
    assert warnings[0].startswith(f"MLflow tracing is off: cannot use the trace store {uri}: ")
    assert broken.status().startswith(f"off: cannot use the trace store {uri}: ")
    broken.close()
    # The shared, working tracer is unaffected.
    assert traced_turn(tracer, "gina", "session-after-broken", "still traced?")


def test_a_trace_store_that_does_not_answer_does_not_hold_up_turns(
    fake_databricks: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A loopback stand-in for a remote MLflow tracking server (its REST shape) that is slow, then refuses.
    Turns never wait for the store: they are queued for the exporter while it is still opening it."""
    from fake_databricks import Request, Response

    answered = threading.Event()

    def slow_then_refuse(request: Request) -> Response:
        answered.wait(10)  # held until the turn has gone ahead
        return Response(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "store is read-only"})

    fake_databricks.on("GET", r"/api/2\.0/mlflow/experiments/get-by-name", slow_then_refuse)
    slow = Tracer(fake_databricks.url, experiment="ca-tests", setup_timeout_seconds=0.1)

    with caplog.at_level(logging.WARNING, logger="context_assistant.core.tracing"):
        with slow.turn("ivan", "session-slow", {"message": "hi"}) as turn:
            pass
        assert turn.trace_id is not None  # queued: written once the store opens, dropped if it never does
        assert slow.status() == "starting"
        answered.set()
        slow.flush()  # returns once the exporter has given up on the store
        with slow.turn("ivan", "session-slow", {"message": "again"}) as turn:
            pass
        assert turn.trace_id is None

    warnings = [r.getMessage() for r in caplog.records if r.name == "context_assistant.core.tracing"]
    assert warnings[0].startswith(f"MLflow tracing is off: cannot use the trace store {fake_databricks.url}: ")
    assert "store is read-only" in warnings[0] and len(warnings) == 1
    assert slow.status().startswith("off: ")
    slow.close()


def test_the_turns_process_never_imports_mlflow(tmp_path: Path) -> None:
    """The serving side of tracing is plain data and a pipe; MLflow lives in the exporter process only."""
    script = f"""
import sys
from context_assistant.core.config import load_config
from context_assistant.core.tracing import make_tracer
config = load_config(None, env={{}}, overrides={{"data_dir": {str(tmp_path)!r}, "tracing.experiment": "ca-tests"}})
tracer = make_tracer(config, env={{}})
with tracer.turn("kim", "session-import", {{"message": "hi"}}) as turn:
    with turn.span("model_call") as span:
        span.set_usage(3, 4)
tracer.flush()
tracer.close()
print(turn.trace_id, "mlflow" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    trace_id, imported = done.stdout.split()
    assert imported == "False"
    from mlflow import MlflowClient

    trace = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_trace(trace_id)
    assert trace.info.trace_metadata["mlflow.trace.user"] == "kim"
    assert (tmp_path / "mlflow.db").stat().st_mode & 0o777 == 0o600


def test_a_full_queue_drops_and_counts_traces_and_never_blocks_a_turn(tmp_path: Path) -> None:
    """The exporter is stopped (SIGSTOP) so nothing drains: the pipe and the queue fill, later turns are dropped
    and counted, and every turn still returns. Once the exporter runs again, what was queued is written."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = Tracer(uri, experiment="ca-tests", setup_timeout_seconds=600, queue_size=4)
    assert small.warm_up()
    assert small._process is not None
    os.kill(small._process.pid, signal.SIGSTOP)
    ids = []
    try:
        for n in range(300):
            with small.turn("lee", "session-full", {"message": "x" * 2000 + str(n)}) as turn:
                pass
            ids.append(turn.trace_id)
    finally:
        os.kill(small._process.pid, signal.SIGCONT)
    assert small.dropped > 0 and all(ids)
    assert small.status() == f"on ({small.dropped} traces dropped: the exporter fell behind)"
    small.flush()
    from mlflow import MlflowClient

    found = MlflowClient(tracking_uri=uri).search_traces(
        locations=[small.experiment_id],
        filter_string="metadata.`mlflow.trace.session` = 'session-full'",
        max_results=500,
    )
    assert len(found) == 300 - small.dropped
    small.close()


def test_a_dead_exporter_is_restarted_once_then_tracing_is_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mortal = Tracer(uri, experiment="ca-tests", setup_timeout_seconds=600)
    with caplog.at_level(logging.WARNING, logger="context_assistant.core.tracing"):
        assert mortal.warm_up()
        first = mortal._process
        assert first is not None
        first.kill()
        first.wait()
        while mortal._process is first:  # the reader notices and starts a new exporter
            time.sleep(0.05)
        assert mortal.warm_up()
        with mortal.turn("max", "session-dead", {"message": "after a restart"}) as turn:
            pass
        mortal.flush()
        assert turn.trace_id is not None
        from mlflow import MlflowClient

        assert MlflowClient(tracking_uri=uri).get_trace(turn.trace_id) is not None

        second = mortal._process
        assert second is not None and second is not first
        second.kill()
        second.wait()
        while not mortal.status().startswith("off"):
            time.sleep(0.05)
        with mortal.turn("max", "session-dead", {"message": "untraced"}) as turn:
            result = "answered"
        assert turn.trace_id is None and result == "answered"
    assert mortal.status().startswith("off: the trace exporter exited")
    messages = [r.getMessage() for r in caplog.records if r.name == "context_assistant.core.tracing"]
    assert any("starting it again" in m for m in messages) and any("tracing is off" in m for m in messages)


def test_the_exporter_imports_through_this_process_path_and_its_last_error_is_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Databricks App or in a notebook the package is on ``sys.path`` (put there by app.py or the notebook),
    not installed: the exporter must get that path. A package shadowing ours first on this process's path proves
    the child imports through it; the error it raises is what ``status()`` gives as the reason."""
    shadow = tmp_path / "shadow" / "context_assistant"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise RuntimeError('imported through the parent process path')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "shadow"))
    tracer = Tracer(f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="ca-tests", setup_timeout_seconds=600)
    tracer.start()
    deadline = time.monotonic() + 600  # a safety net for a hung child, not a timing assertion
    while not tracer.status().startswith("off") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracer.status().startswith("off: the trace exporter exited (code 1): RuntimeError: imported through")
    assert tracer.flush() is False  # nothing can be confirmed written
    tracer.close()


def test_disabled_tracing_records_nothing(tmp_path: Path) -> None:
    config = load_config(None, env={}, overrides={"data_dir": str(tmp_path), "tracing.enabled": False})
    tracer = make_tracer(config, env={})

    assert isinstance(tracer, DisabledTracer) and not tracer.warm_up()
    with tracer.turn("hank", "s", {"message": "hi"}) as turn:
        with turn.span(SPAN_MODEL_CALL) as span:
            span.set_usage(1, 2)
        turn.set_tags({"a": "b"})
    assert turn.trace_id is None
    assert tracer.feedback("tr-1", "hank", True) is None
    assert not (tmp_path / "mlflow.db").exists()


def test_where_traces_go(tmp_path: Path) -> None:
    local = load_config(None, env={}, overrides={"data_dir": str(tmp_path)})
    assert tracking_uri_for(local, {}) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking_uri_for(local, {"DATABRICKS_APP_NAME": "context-assistant"}) == "databricks"
    assert tracking_uri_for(local, {"DATABRICKS_RUNTIME_VERSION": "17.3"}) == "databricks"
    # A notebook's credentials live in its Python session, not in variables a child process inherits.
    assert exporter_for(local, {"DATABRICKS_RUNTIME_VERSION": "17.3"}) == "in_process"
    assert exporter_for(local, {"DATABRICKS_RUNTIME_VERSION": "17.3", "DATABRICKS_APP_NAME": "ca"}) == "process"
    assert exporter_for(local, {}) == "process"
    pinned = load_config(None, env={}, overrides={"tracing.exporter": "process"})
    assert exporter_for(pinned, {"DATABRICKS_RUNTIME_VERSION": "17.3"}) == "process"
    configured = load_config(None, env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert tracking_uri_for(configured, {"DATABRICKS_APP_NAME": "x"}) == "http://mlflow:5000"


def test_services_builds_the_tracer_and_the_chat_model_from_config(tmp_path: Path) -> None:
    config = load_config(
        None,
        env={},
        overrides={"data_dir": str(tmp_path), "model.provider": "offline", "tracing.enabled": False},
    )
    with Services(config, env={}) as services:
        assert services.chat_model.provider == "offline"
        assert isinstance(services.tracer, DisabledTracer)


def test_a_new_local_trace_store_appears_only_once_fully_created(tmp_path: Path) -> None:
    """A command that gives up waiting for a new store kills the setup thread mid-migration; the store is
    created under a temporary name, so what is left is never a half-migrated ``mlflow.db`` (which no later run
    could open) but nothing, and the next run creates it whole."""
    from mlflow import MlflowClient

    store = tmp_path / "mlflow.db"

    class KilledMidway:
        def __init__(self, tracking_uri: str) -> None:
            self.client = MlflowClient(tracking_uri=tracking_uri)

        def search_experiments(self, **kwargs: Any) -> Any:
            self.client.search_experiments(**kwargs)  # the migrations ran: the temporary file is complete
            raise SystemExit("the process ended here")  # ... but the command exits before it is moved

    with pytest.raises(SystemExit):
        create_store_whole(store, KilledMidway)
    assert not store.exists()
    left_by_the_killed_run = {path.name for path in tmp_path.iterdir()}  # (a later process removes it)

    create_store_whole(store, MlflowClient)
    assert store.stat().st_size > 0 and (store.stat().st_mode & 0o777) == 0o600
    assert {path.name for path in tmp_path.iterdir()} - left_by_the_killed_run == {"mlflow.db"}
    assert MlflowClient(tracking_uri=f"sqlite:///{store}").search_experiments()  # opens: the Default one


def test_an_answered_turn_is_an_ok_trace_whether_or_not_it_streamed(tracer: Tracer, db: Any, config: Any) -> None:
    """``Assistant.turn`` returns at the done event, which closes the turn's event generator: that must not
    land in the trace as an error (it did, as ``GeneratorExit``, for every answered turn). A stream stopped
    before its answer is still an error trace, and its question is marked interrupted."""
    import dataclasses

    from context_assistant.assistant.turn import Assistant
    from context_assistant.llm.offline import OfflineModel
    from context_assistant.storage.memory import ConversationStore

    config = config.replace(
        rag=dataclasses.replace(config.rag, enabled=False), memory=dataclasses.replace(config.memory, recall=False)
    )
    store = ConversationStore(db)
    assistant = Assistant(config, store, OfflineModel(), tracer=tracer)

    answered = assistant.turn("olga", "What is a trace?")
    events = list(assistant.stream_turn("olga", "And a span?", answered.session_id))
    streamed = events[-1].result
    assert streamed is not None
    stopped = assistant.stream_turn("olga", "Stop me.", answered.session_id)
    start = next(stopped)
    next(stopped)  # the sources: the answer has not started
    stopped.close()

    for trace_id in (answered.trace_id, streamed.trace_id):
        trace = read_back(tracer, trace_id)
        assert str(trace.info.state) in ("OK", "TraceState.OK"), trace.info.state
        assert not any(span.events for span in trace.data.spans if span.parent_id is None)
    interrupted = store.get_message("olga", start.data["user_message_id"])
    assert interrupted.failed and interrupted.metadata.get("error_kind") == "interrupted"
    trace = read_back(tracer, interrupted.metadata["trace_id"])
    assert str(trace.info.state) in ("ERROR", "TraceState.ERROR"), trace.info.state
