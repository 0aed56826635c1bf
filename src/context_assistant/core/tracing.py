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
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .config import Config
from .files import private_dir
from .processes import child_python_env
from .trace_export import create_store_whole as create_store_whole  # (public here, as before)
from .trace_record import (
    FEEDBACK_NAME as FEEDBACK_NAME,
)
from .trace_record import (
    MAX_FIELD_CHARS as MAX_FIELD_CHARS,
)
from .trace_record import (
    MLFLOW_TELEMETRY_SWITCH as MLFLOW_TELEMETRY_SWITCH,
)
from .trace_record import (  # the public names of tracing, as before
    SPAN_MEMORY_LOAD as SPAN_MEMORY_LOAD,
)
from .trace_record import (
    SPAN_MEMORY_STORE as SPAN_MEMORY_STORE,
)
from .trace_record import (
    SPAN_MODEL_CALL as SPAN_MODEL_CALL,
)
from .trace_record import (
    SPAN_PROMPT_BUILD as SPAN_PROMPT_BUILD,
)
from .trace_record import (
    SPAN_RECALL as SPAN_RECALL,
)
from .trace_record import (
    SPAN_RETRIEVAL as SPAN_RETRIEVAL,
)
from .trace_record import (
    SPAN_TYPES as SPAN_TYPES,
)
from .trace_record import (
    TOKEN_USAGE_ATTRIBUTE as TOKEN_USAGE_ATTRIBUTE,
)
from .trace_record import (
    TRACE_SESSION_KEY as TRACE_SESSION_KEY,
)
from .trace_record import (
    TRACE_USER_KEY as TRACE_USER_KEY,
)
from .trace_record import (
    TURN_SPAN as TURN_SPAN,
)
from .trace_record import (
    FeedbackError as FeedbackError,
)
from .trace_record import (
    SpanHandle as SpanHandle,
)
from .trace_record import (
    TurnTrace as TurnTrace,
)
from .trace_record import (
    _jsonable as _jsonable,
)
from .trace_record import (
    disable_mlflow_telemetry as disable_mlflow_telemetry,
)
from .trace_record import (
    source_document as source_document,
)
from .tracing_inprocess import InProcessTracer

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_SECONDS = 60.0  # a notebook cell waits at most this long for its turn's trace


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
        self._last_error = ""
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

    def start(self) -> None:
        """Start the exporter now, without waiting for it (it imports MLflow while the caller goes on)."""
        self._ensure_exporter()

    def status(self) -> str:
        """``on`` (with how many traces were dropped, if any), ``starting`` (the exporter is opening the store) or
        ``off: <why>``, for ``/health``."""
        if self._broken:
            return f"off: {self._broken}"
        if self._process is not None and not self._ready.is_set():
            return "starting"
        return f"on ({self.dropped} traces dropped: the exporter fell behind)" if self.dropped else "on"

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

    def flush(self, timeout: float | None = FLUSH_TIMEOUT_SECONDS) -> bool:
        """Wait (at most ``timeout`` seconds; None: as long as it takes) until every trace queued so far is
        written. False if that could not be confirmed: tracing is off, or the store is slow to answer."""
        return self._ask({"op": "flush"}, timeout) is not None

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
                stderr=subprocess.PIPE,  # its last line says why, should it exit
                env=child_python_env(),  # on an App or in a notebook the package is on sys.path, not installed
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
        errors = threading.Thread(
            target=self._read_errors, args=(process,), name="trace-export-errors", daemon=True
        )
        errors.start()
        threading.Thread(
            target=self._read, args=(process, errors), name="trace-export-reader", daemon=True
        ).start()

    def _read_errors(self, process: subprocess.Popen[bytes]) -> None:
        """Keep the exporter's last line of standard error: the reason given if it exits."""
        stderr = process.stderr
        assert stderr is not None
        for line in stderr:
            text = line.decode(errors="replace").strip()
            if text:
                self._last_error = text[:500]

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

    def _read(self, process: subprocess.Popen[bytes], errors: threading.Thread) -> None:
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
        errors.join(timeout=5)  # its standard error read to the end: the last line is the reason, not one before
        if self._closed or self._broken:
            return
        with self._lock:
            if self._starts < 2:
                log.warning(
                    "tracing: the trace exporter exited (code %s%s); starting it again",
                    code,
                    f": {self._last_error}" if self._last_error else "",
                )
                self._process = None
                self._start_exporter()
                return
        last = f": {self._last_error}" if self._last_error else ""
        self._off(f"the trace exporter exited (code {code}){last}")

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

    def start(self) -> None:
        pass

    def status(self) -> str:
        return "off: tracing.enabled is false"

    @contextlib.contextmanager
    def turn(self, user: str, session_id: str | None, inputs: Mapping[str, Any]) -> Iterator[TurnTrace]:
        yield TurnTrace(None, user, session_id, inputs)

    def feedback(self, trace_id: str, user: str, value: bool, comment: str = "") -> str | None:
        return None

    def flush(self, timeout: float | None = None) -> bool:
        return False

    def close(self) -> None:
        pass


AnyTracer = Tracer | InProcessTracer | DisabledTracer


def tracking_uri_for(config: Config, env: Mapping[str, str]) -> str:
    """The configured tracking URI, else ``databricks`` on Databricks, else the SQLite store in data_dir."""
    if config.tracing.tracking_uri:
        return config.tracing.tracking_uri
    if env.get("DATABRICKS_APP_NAME") or env.get("DATABRICKS_RUNTIME_VERSION"):
        return "databricks"
    return f"sqlite:///{config.data_path / 'mlflow.db'}"


def exporter_for(config: Config, env: Mapping[str, str]) -> str:
    """``tracing.exporter``, with ``auto`` resolved: in process in a Databricks notebook or job (its credentials
    live in the notebook's Python session, not in environment variables a child process would inherit), else
    through the exporter process (the web app, also as a Databricks App, and the CLI)."""
    exporter = config.tracing.exporter
    if exporter != "auto":
        return exporter
    on_databricks_compute = bool(env.get("DATABRICKS_RUNTIME_VERSION")) and not env.get("DATABRICKS_APP_NAME")
    return "in_process" if on_databricks_compute else "process"


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
    kind = InProcessTracer if exporter_for(config, env) == "in_process" else Tracer
    return kind(
        uri,
        experiment=config.tracing.experiment,
        experiment_id=config.tracing.experiment_id,
        artifact_location=artifact_location,
        private_store=database,
        setup_timeout_seconds=config.tracing.setup_timeout_seconds,
    )
