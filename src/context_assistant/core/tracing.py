"""MLflow tracing of assistant turns: one trace per turn, a child span per step, feedback as assessments.

Where traces go: ``tracing.tracking_uri`` (or ``MLFLOW_TRACKING_URI``) if set; otherwise ``databricks`` when
running in a Databricks App or on Databricks compute; otherwise a SQLite store in the data directory
(``sqlite:///<data_dir>/mlflow.db``, view it with ``mlflow ui --backend-store-uri <that uri>``). The experiment is
``tracing.experiment_id`` if set, else ``tracing.experiment`` (created if missing; on Databricks a relative name
becomes ``/Shared/<name>``).

The process that runs a turn does not import MLflow (issue 16: its export cost a turn 70–120 ms on 2 cores;
importing it cost a command seconds). A turn records its spans as plain data with their real times and hands
them to a bounded queue; an exporter process (:mod:`.trace_export`, started on the first turn, at a lower CPU
priority) replays them with MLflow's public API. A turn never waits for it: a full queue drops the trace and
counts it; a store that cannot be opened or an exporter that died twice turns tracing off (``status()``, shown
by the web app's ``/health``). Exceptions raised by the traced code itself always propagate unchanged (and are
recorded, redacted, on the span). The trace id is drawn by the turn (MLflow's ``tr-<OpenTelemetry trace id>``),
so a reply stores it and feedback finds the trace. ``context-assistant eval`` traces in process
(:mod:`.tracing_inprocess`), because ``mlflow.genai.evaluate`` reads the traces its own process records.

Session and user go into the trace metadata keys MLflow documents (``mlflow.trace.session``,
``mlflow.trace.user``); token usage goes on the model span as ``mlflow.chat.tokenUsage``, which MLflow sums into
the trace's ``mlflow.trace.tokenUsage``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .config import Config
from .errors import InvalidInput
from .files import private_dir
from .redact import redact_exception

if TYPE_CHECKING:
    from .tracing_inprocess import InProcessTracer

log = logging.getLogger(__name__)

# The steps of a turn, with the MLflow span type each is recorded as.
SPAN_MEMORY_LOAD = "memory_load"
SPAN_RECALL = "recall"
SPAN_RETRIEVAL = "retrieval"
SPAN_PROMPT_BUILD = "prompt_build"
SPAN_MODEL_CALL = "model_call"
SPAN_MEMORY_STORE = "memory_store"
SPAN_TYPES = {
    SPAN_MEMORY_LOAD: "MEMORY",
    SPAN_RECALL: "MEMORY",
    SPAN_RETRIEVAL: "RETRIEVER",
    SPAN_PROMPT_BUILD: "PARSER",
    SPAN_MODEL_CALL: "CHAT_MODEL",
    SPAN_MEMORY_STORE: "MEMORY",
}
TURN_SPAN = "turn"
FEEDBACK_NAME = "user_feedback"
TRACE_SESSION_KEY = "mlflow.trace.session"
TRACE_USER_KEY = "mlflow.trace.user"
TOKEN_USAGE_ATTRIBUTE = "mlflow.chat.tokenUsage"


class FeedbackError(InvalidInput):
    """Feedback could not be recorded because of the request itself (e.g. an unknown trace id)."""


class SpanHandle:
    """One step of a turn, recorded as plain data (no MLflow here). All methods are safe: never raise."""

    def __init__(self, span: list[Any] | None) -> None:
        self._span = span

    def set_outputs(self, outputs: Any) -> None:
        if self._span is not None:
            self._span[_OUTPUTS] = _bounded(_jsonable(outputs))

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._span is not None:
            self._span[_ATTRIBUTES].update(_bounded(_jsonable(dict(attributes))))

    def set_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Token usage of a model call, in the attribute MLflow aggregates into the trace's token usage."""
        usage = {
            "input_tokens": int(prompt_tokens),
            "output_tokens": int(completion_tokens),
            "total_tokens": int(prompt_tokens) + int(completion_tokens),
        }
        self.set_attributes({TOKEN_USAGE_ATTRIBUTE: usage})

    def set_sources(self, sources: Sequence[Any]) -> None:
        """Retrieved passages as the span's outputs, in the document shape MLflow's retriever view shows."""
        self.set_outputs([source_document(source) for source in sources])


# A recorded span: [name, span type, parent index, start_ns, end_ns, inputs, outputs, attributes, error].
_OUTPUTS, _ATTRIBUTES, _ERROR = 6, 7, 8


class TurnTrace:
    """The trace of one turn. ``trace_id`` is None when tracing is off; otherwise it is known from the start
    (drawn here, used by the exporter), so the turn can store it with its messages before the trace is written."""

    def __init__(self, tracer: Tracer | None, user: str, session_id: str | None, inputs: Any) -> None:
        self._tracer = tracer
        self.trace_id: str | None = None
        self._otel_id = ""
        self._metadata: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._spans: list[list[Any]] = []
        if tracer is None:
            return
        otel_id = secrets.randbits(128) or 1
        self._otel_id = f"{otel_id:032x}"
        self.trace_id = f"tr-{self._otel_id}"  # MLflow's id of the trace whose OpenTelemetry id this is
        self._metadata = {TRACE_USER_KEY: user, **({TRACE_SESSION_KEY: session_id} if session_id else {})}
        self._spans.append(_new_span(TURN_SPAN, "CHAIN", None, _jsonable(dict(inputs))))

    @property
    def recording(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def span(self, name: str, inputs: Any = None, *, span_type: str | None = None) -> Iterator[SpanHandle]:
        """A child span around one step; an exception from the step is recorded on it and re-raised."""
        if self._tracer is None:
            yield SpanHandle(None)
            return
        span = _new_span(
            name,
            span_type or SPAN_TYPES.get(name, "UNKNOWN"),
            0,
            _jsonable(inputs) if inputs is not None else None,
        )
        self._spans.append(span)
        try:
            yield SpanHandle(span)
        except BaseException as exc:
            _end(span, exc)
            raise
        _end(span, None)

    def set_outputs(self, outputs: Any) -> None:
        SpanHandle(self._spans[0] if self._spans else None).set_outputs(outputs)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Trace tags (mutable later, e.g. from the UI); values are stored as strings."""
        if self._tracer is not None:
            self._tags.update({str(key): str(value) for key, value in tags.items()})

    def set_session(self, session_id: str) -> None:
        """Record the session once it is known (a turn that starts a new session creates it mid-turn)."""
        if self._tracer is not None:
            self._metadata[TRACE_SESSION_KEY] = session_id

    def _finish(self, exc: BaseException | None) -> dict[str, Any] | None:
        if self._tracer is None:
            return None
        _end(self._spans[0], exc)
        return {
            "op": "trace",
            "trace_id": self.trace_id,
            "otel_id": self._otel_id,
            "metadata": self._metadata,
            "tags": self._tags,
            "spans": self._spans,
        }


def _new_span(name: str, span_type: str, parent: int | None, inputs: Any) -> list[Any]:
    return [name, span_type, parent, time.time_ns(), None, _bounded(inputs), None, {}, None]


def _end(span: list[Any], exc: BaseException | None) -> None:
    span[4] = time.time_ns()
    if exc is not None:
        # Redacted: the raw message and traceback, chained causes included, may echo upstream text (a token).
        message, stack = redact_exception(exc)
        span[_ERROR] = {"message": message, "type": type(exc).__name__, "stacktrace": stack, "time_ns": span[4]}


def _bounded(value: Any) -> Any:
    """Any single text longer than MAX_FIELD_CHARS cut to it: a trace is for reading, not an archive."""
    if isinstance(value, str):
        return value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + "…[cut]"
    if isinstance(value, dict):
        return {key: _bounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_bounded(item) for item in value]
    return value


MAX_FIELD_CHARS = 65536


class Tracer:
    """Traces turns into one MLflow experiment through an exporter process (:mod:`.trace_export`).

    The turn only records plain data and hands it to a bounded queue (never blocking: a full queue drops the
    trace and counts it in ``dropped``); a writer thread feeds the exporter's stdin. The exporter is started on
    the first turn (or :meth:`warm_up`) at a lower CPU priority; if it dies it is restarted once, then tracing is
    off (``status()`` says why; the turns go on). :meth:`close` hands what is queued to the exporter and returns:
    the exporter writes it and exits by itself, so a command can exit right after its turn and lose nothing.
    """

    enabled = True

    def __init__(
        self,
        tracking_uri: str,
        *,
        experiment: str = "context-assistant",
        experiment_id: str = "",
        artifact_location: str | None = None,
        setup_timeout_seconds: float = 30.0,
        private_store: Path | None = None,
        queue_size: int = 1000,
        nice: int = 10,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        self.experiment_id: str | None = experiment_id or None
        self._settings = {
            "tracking_uri": tracking_uri,
            "experiment": experiment,
            "experiment_id": experiment_id,
            "artifact_location": artifact_location,
            "private_store": str(private_store) if private_store is not None else None,
            "nice": nice,
        }
        self._setup_timeout = setup_timeout_seconds
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._writer: threading.Thread | None = None
        self._ready = threading.Event()  # the exporter answered: ready or broken
        self._answers: dict[int, tuple[threading.Event, dict[str, Any]]] = {}
        self._next_id = 0
        self._starts = 0
        self._broken = ""
        self._closed = False
        self._warned_drop = False
        self._warned = False
        self.dropped = 0

    # -- public

    def warm_up(self) -> bool:
        """Start the exporter now and wait (up to the setup timeout) for it to open the store. True if it did."""
        if not self._ensure_exporter():
            return False
        self._ready.wait(self._setup_timeout)
        if not self._ready.is_set():
            log.warning(
                "MLflow trace store %s did not open within %gs; turns are queued for it meanwhile",
                self.tracking_uri,
                self._setup_timeout,
            )
            return False
        return not self._broken

    def status(self) -> str:
        """``on``, ``starting`` (the exporter is opening the store) or ``off: <why>``, for ``/health``."""
        if self._broken:
            return f"off: {self._broken}"
        if self._process is None or not self._ready.is_set():
            return "starting" if self._process is not None else "on"
        return "on"

    @contextlib.contextmanager
    def turn(self, user: str, session_id: str | None, inputs: Mapping[str, Any]) -> Iterator[TurnTrace]:
        """Trace one turn. Exceptions from the body are recorded on the trace and re-raised unchanged."""
        live = not self._broken and not self._closed
        trace = TurnTrace(self if live else None, user, session_id, inputs)
        try:
            yield trace
        except BaseException as exc:
            self._submit(trace, exc)
            raise
        self._submit(trace, None)

    def feedback(self, trace_id: str, user: str, value: bool, comment: str = "") -> str | None:
        """Record a thumbs up (True) or down (False) from ``user`` on a turn's trace, as an MLflow assessment.

        Returns the assessment id, or None if tracing is off or the store failed (logged). Raises
        :class:`FeedbackError` if the trace does not exist. Goes through the exporter after every trace queued
        before it, so feedback on a turn that was just answered finds its trace."""
        if not trace_id:
            raise FeedbackError("no trace id given: this turn was not traced")
        request = {"op": "feedback", "trace_id": trace_id, "user": user, "value": bool(value)}
        answer = self._ask({**request, "name": FEEDBACK_NAME, "comment": comment}, FEEDBACK_TIMEOUT_SECONDS)
        if answer is None:
            return None
        if answer.get("missing"):
            raise FeedbackError(f"trace {trace_id!r} not found in {self.tracking_uri}")
        if "assessment_id" not in answer:
            self._failed("could not record feedback", answer.get("failed", "no answer"))
            return None
        return str(answer["assessment_id"])

    def flush(self) -> None:
        """Wait until every trace queued so far is written (or the exporter is gone)."""
        self._ask({"op": "flush"}, None)

    def close(self) -> None:
        """Hand every queued trace to the exporter and let it finish on its own; no new turns are traced."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            writer = self._writer
        if writer is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=CLOSE_TIMEOUT_SECONDS)
        writer.join(CLOSE_TIMEOUT_SECONDS)

    # -- internals

    def _submit(self, trace: TurnTrace, exc: BaseException | None) -> None:
        try:
            record = trace._finish(exc)
            if record is None or not self._ensure_exporter():
                return
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if not self._warned_drop:
                self._warned_drop = True
                log.warning("tracing: the exporter is behind; traces are dropped (counted) until it catches up")
        except Exception as exc:  # tracing never breaks a turn
            self._failed("could not queue a trace", exc)

    def _ask(self, request: dict[str, Any], timeout: float | None) -> dict[str, Any] | None:
        """Send a request after everything queued and wait for its answer; None if the exporter is not there."""
        if not self._ensure_exporter():
            return None
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            waiter: tuple[threading.Event, dict[str, Any]] = (threading.Event(), {})
            self._answers[ident] = waiter
        try:
            waited = 0.0
            while True:  # behind a full queue: wait while the exporter drains it (or is gone)
                try:
                    self._queue.put({**request, "id": ident}, timeout=1.0)
                    break
                except queue.Full:
                    waited += 1.0
                    if self._broken or (timeout is not None and waited >= timeout):
                        return None
            while not waiter[0].wait(1.0):
                waited += 1.0
                if self._broken or (timeout is not None and waited >= timeout):
                    return None
            return waiter[1] if not self._broken or waiter[1] else None
        finally:
            with self._lock:
                self._answers.pop(ident, None)

    def _ensure_exporter(self) -> bool:
        if self._broken or self._closed:
            return False
        with self._lock:
            if self._process is None:
                self._start_exporter()
        return not self._broken

    def _start_exporter(self) -> None:
        """Start (or restart) the exporter process with its stdin writer and stdout reader (under the lock)."""
        self._starts += 1
        self._ready.clear()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "context_assistant.core.trace_export", json.dumps(self._settings)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal stops the command, not the last traces
            )
        except OSError as exc:
            self._off(f"cannot start the trace exporter: {exc}")
            return
        if self._starts > 1:  # a restart: a new queue for the new writer, with what the old one left, in order
            old, self._queue = self._queue, queue.Queue(maxsize=self._queue.maxsize)
            with contextlib.suppress(queue.Empty, queue.Full):
                while True:
                    item = old.get_nowait()
                    if item is not None:
                        self._queue.put_nowait(item)
            old.put_nowait(None)  # releases the old writer
        self._process = process
        self._writer = threading.Thread(
            target=self._write, args=(process, self._queue), name="trace-export-writer", daemon=True
        )
        self._writer.start()
        threading.Thread(target=self._read, args=(process,), name="trace-export-reader", daemon=True).start()

    def _write(self, process: subprocess.Popen[bytes], items: queue.Queue[dict[str, Any] | None]) -> None:
        stdin = process.stdin
        assert stdin is not None
        while True:
            item = items.get()
            try:
                if item is None:
                    with contextlib.suppress(OSError):
                        stdin.close()
                    return
                stdin.write(json.dumps(item).encode() + b"\n")
                stdin.flush()
            except (OSError, ValueError):
                if item is not None and item.get("op") == "trace":
                    self.dropped += 1
                return  # the reader sees the exporter go and restarts it

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        stdout = process.stdout
        assert stdout is not None
        for line in stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            op = message.get("op")
            if op == "ready":
                self.experiment_id = message.get("experiment_id") or self.experiment_id
                self._ready.set()
            elif op == "broken":
                self._off(f"cannot use the trace store {self.tracking_uri}: {message.get('error')}", store=True)
            elif op == "warning":
                self._failed("the exporter", message.get("message", ""))
            elif "id" in message:
                with self._lock:
                    waiter = self._answers.get(message["id"])
                if waiter is not None:
                    waiter[1].update(message)
                    waiter[0].set()
        code = process.wait()
        if self._closed or self._broken:
            return
        with self._lock:
            if self._starts < 2:
                log.warning("tracing: the trace exporter exited (code %s); starting it again", code)
                self._process = None
                self._start_exporter()
                return
        self._off(f"the trace exporter exited (code {code})")

    def _off(self, why: str, *, store: bool = False) -> None:
        if not self._broken:
            self._broken = why
            hint = ""
            private = self._settings["private_store"]
            if store and private and "already exists" in why:
                hint = (
                    f" — the store was left half-created (by a run stopped while creating it): delete {private} "
                    "and run again"
                )
            log.warning("MLflow tracing is off: %s%s", why, hint)
        self._ready.set()
        with self._lock:
            for event, _ in self._answers.values():
                event.set()

    def _failed(self, what: str, exc: Any) -> None:
        if not self._warned:
            self._warned = True
            log.warning("tracing: %s: %s (the turn goes on; later tracing errors are logged at debug)", what, exc)
        else:
            log.debug("tracing: %s: %s", what, exc)


FEEDBACK_TIMEOUT_SECONDS = 60.0
CLOSE_TIMEOUT_SECONDS = 30.0


class DisabledTracer:
    """``tracing.enabled: false``: the same interface, recording nothing."""

    enabled = False
    tracking_uri = ""
    experiment_id = None

    def warm_up(self) -> bool:
        return False

    dropped = 0

    def status(self) -> str:
        return "off: tracing.enabled is false"

    @contextlib.contextmanager
    def turn(self, user: str, session_id: str | None, inputs: Mapping[str, Any]) -> Iterator[TurnTrace]:
        yield TurnTrace(None, user, session_id, inputs)

    def feedback(self, trace_id: str, user: str, value: bool, comment: str = "") -> str | None:
        return None

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


AnyTracer = Union[Tracer, "InProcessTracer", DisabledTracer]


def tracking_uri_for(config: Config, env: Mapping[str, str]) -> str:
    """The configured tracking URI, else ``databricks`` on Databricks, else the SQLite store in data_dir."""
    if config.tracing.tracking_uri:
        return config.tracing.tracking_uri
    if env.get("DATABRICKS_APP_NAME") or env.get("DATABRICKS_RUNTIME_VERSION"):
        return "databricks"
    return f"sqlite:///{config.data_path / 'mlflow.db'}"


def make_tracer(config: Config, env: Mapping[str, str]) -> AnyTracer:
    """The tracer ``config`` asks for: exporting from a separate process, or (``tracing.exporter:
    in_process``, what an evaluation needs) from this one."""
    if not config.tracing.enabled:
        return DisabledTracer()
    uri = tracking_uri_for(config, env)
    artifact_location = None
    database = None
    if uri.startswith("sqlite:///"):
        # Without this MLflow puts artifacts in ./mlruns of whatever directory the process started in.
        database = Path(uri.removeprefix("sqlite:///"))
        artifacts = database.parent / "mlflow-artifacts"
        with contextlib.suppress(OSError):  # traces hold every prompt and reply: private (core.files)
            private_dir(database.parent)
            private_dir(artifacts)
        artifact_location = artifacts.as_uri()
    kind = in_process_tracer() if config.tracing.exporter == "in_process" else Tracer
    return kind(
        uri,
        experiment=config.tracing.experiment,
        experiment_id=config.tracing.experiment_id,
        artifact_location=artifact_location,
        private_store=database,
        setup_timeout_seconds=config.tracing.setup_timeout_seconds,
    )


def in_process_tracer() -> type[InProcessTracer]:
    from .tracing_inprocess import InProcessTracer

    return InProcessTracer


def disable_mlflow_telemetry(env: MutableMapping[str, str] | None = None) -> None:
    """Keep MLflow from sending usage telemetry to its vendor's host (it does by default since 3.x): set
    ``MLFLOW_DISABLE_TELEMETRY=true`` unless the user set it themselves. Must run before ``import mlflow``
    (MLflow reads it when it starts its telemetry client); the package does it when it is imported."""
    env = os.environ if env is None else env
    env.setdefault(MLFLOW_TELEMETRY_SWITCH, "true")


MLFLOW_TELEMETRY_SWITCH = "MLFLOW_DISABLE_TELEMETRY"


def source_document(source: Any) -> dict[str, Any]:
    """A retrieved passage (Hit, NumberedSource or dict) as an MLflow retriever Document."""

    def get(name: str, default: Any = None) -> Any:
        return source.get(name, default) if isinstance(source, Mapping) else getattr(source, name, default)

    metadata = {"doc_uri": get("path", ""), "chunk_id": get("chunk_id", ""), "score": get("score")}
    for optional in ("index", "heading", "page"):
        if get(optional) not in (None, ""):
            metadata[optional] = get(optional)
    return {"page_content": get("text", ""), "metadata": metadata, "id": get("chunk_id", "")}


def _jsonable(value: Any) -> Any:
    """Inputs/outputs as plain JSON-able data (dataclasses and datetimes included), for span serialisation."""
    import dataclasses
    from datetime import date, datetime

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
