"""MLflow tracing inside the process that runs the turn: what ``context-assistant eval`` uses, because
``mlflow.genai.evaluate`` ties each answer to the trace its own process records. Serving (web app, CLI chat)
uses :class:`~.tracing.Tracer`, which exports from a separate process instead. The behaviour is the same: every
MLflow call guarded, the first failure logged as a warning, a store that cannot be opened turns tracing off."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .files import private_file
from .redact import redact_exception
from .trace_export import create_store_whole, resolve_experiment
from .trace_record import (
    FEEDBACK_NAME,
    SPAN_TYPES,
    TOKEN_USAGE_ATTRIBUTE,
    TRACE_SESSION_KEY,
    TRACE_USER_KEY,
    TURN_SPAN,
    FeedbackError,
    _jsonable,
    disable_mlflow_telemetry,
    source_document,
)
from .trace_record import SpanHandle as RecordedSpanHandle
from .trace_record import TurnTrace as RecordedTurnTrace

log = logging.getLogger("context_assistant.core.tracing")


class SpanHandle(RecordedSpanHandle):
    """One step of a turn. All methods are safe: a tracing failure is logged, never raised."""

    def __init__(self, tracer: InProcessTracer | None, span: Any) -> None:
        self._owner = tracer
        self._span = span

    def set_outputs(self, outputs: Any) -> None:
        self._call("set outputs", lambda span: span.set_outputs(_jsonable(outputs)))

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self._call("set attributes", lambda span: span.set_attributes(_jsonable(dict(attributes))))

    def set_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Token usage of a model call, in the attribute MLflow aggregates into the trace's token usage."""
        usage = {
            "input_tokens": int(prompt_tokens),
            "output_tokens": int(completion_tokens),
            "total_tokens": int(prompt_tokens) + int(completion_tokens),
        }
        self._call("set usage", lambda span: span.set_attribute(TOKEN_USAGE_ATTRIBUTE, usage))

    def set_sources(self, sources: Sequence[Any]) -> None:
        """Retrieved passages as the span's outputs, in the document shape MLflow's retriever view shows."""
        self.set_outputs([source_document(source) for source in sources])

    def _call(self, what: str, action: Any) -> None:
        if self._span is None or self._owner is None:
            return
        try:
            action(self._span)
        except Exception as exc:
            self._owner._failed(f"could not {what} on a span", exc)


class TurnTrace(RecordedTurnTrace):
    """The trace of one turn. ``trace_id`` is None when tracing is off or failed to start."""

    def __init__(self, tracer: InProcessTracer | None, root: Any) -> None:
        self._owner = tracer
        self._root = root
        self.trace_id: str | None = getattr(root, "trace_id", None) if root is not None else None

    @property
    def recording(self) -> bool:
        return self._root is not None

    @contextlib.contextmanager
    def span(self, name: str, inputs: Any = None, *, span_type: str | None = None) -> Iterator[SpanHandle]:
        """A child span around one step; an exception from the step is recorded on it and re-raised."""
        tracer = self._owner
        if tracer is None or self._root is None:
            yield SpanHandle(None, None)
            return
        span = tracer._guard(
            f"start span {name}",
            lambda: tracer._mlflow.start_span_no_context(
                name,
                span_type=span_type or SPAN_TYPES.get(name, "UNKNOWN"),
                parent_span=self._root,
                inputs=_jsonable(inputs) if inputs is not None else None,
            ),
        )
        handle = SpanHandle(tracer, span)
        try:
            yield handle
        except BaseException as exc:
            tracer._end_span(span, exc)
            raise
        tracer._end_span(span, None)

    def set_outputs(self, outputs: Any) -> None:
        SpanHandle(self._owner, self._root).set_outputs(outputs)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Trace tags (mutable later, e.g. from the UI); values are stored as strings."""
        tracer = self._owner
        if tracer is None or self._root is None or self.trace_id is None:
            return
        trace_id = self.trace_id
        for key, value in tags.items():
            tracer._guard(
                f"set tag {key}", lambda k=key, v=value: tracer._mlflow.set_trace_tag(trace_id, k, str(v))
            )

    def set_session(self, session_id: str) -> None:
        """Record the session once it is known (a turn that starts a new session creates it mid-turn)."""
        tracer = self._owner
        if tracer is None or self._root is None:
            return

        def update() -> None:
            # update_current_trace works on the active span; make the root active just for this call.
            from mlflow.tracing.provider import safe_set_span_in_context

            with safe_set_span_in_context(self._root):
                tracer._mlflow.update_current_trace(metadata={TRACE_SESSION_KEY: session_id})

        tracer._guard("set the session", update)


class InProcessTracer:
    """Traces turns into one MLflow experiment. Cheap to build: MLflow is set up on the first turn."""

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
    ) -> None:
        self.tracking_uri = tracking_uri
        self._private_store = private_store  # a local SQLite store: created 0600 (it holds every prompt)
        self.experiment_name = experiment
        self.experiment_id: str | None = experiment_id or None
        self._given_experiment_id = bool(experiment_id)
        self._artifact_location = artifact_location
        self._setup_timeout = setup_timeout_seconds
        self._lock = threading.Lock()
        self._setup_thread: threading.Thread | None = None
        self._started = False
        self._broken = False
        self._warned = False
        self._warned_slow = False
        self._mlflow: Any = None
        self._no_op_trace_id = ""

    # -- public

    def warm_up(self) -> bool:
        """Open the store now (e.g. at app start-up) instead of on the first turn. True if tracing works."""
        return self._ensure_started()

    def start(self) -> None:
        """Begin opening the store in the background (:meth:`warm_up` later waits for it)."""
        if not self._broken and not self._started:
            with self._lock:
                if self._setup_thread is None:
                    self._setup_thread = threading.Thread(
                        target=self._set_up, name="mlflow-tracing-setup", daemon=True
                    )
                    self._setup_thread.start()

    dropped = 0  # nothing is queued here: a turn waits for its own export

    def status(self) -> str:
        return "off: the trace store cannot be used (see the log)" if self._broken else "on"

    @contextlib.contextmanager
    def turn(self, user: str, session_id: str | None, inputs: Mapping[str, Any]) -> Iterator[TurnTrace]:
        """Trace one turn. Exceptions from the body are recorded on the trace and re-raised unchanged."""
        root = None
        if self._ensure_started():
            metadata = {TRACE_USER_KEY: user}
            if session_id:
                metadata[TRACE_SESSION_KEY] = session_id
            root = self._guard(
                "start a trace",
                lambda: self._mlflow.start_span_no_context(
                    TURN_SPAN,
                    span_type="CHAIN",
                    inputs=_jsonable(dict(inputs)),
                    metadata=metadata,
                    experiment_id=self.experiment_id,
                ),
            )
            if root is not None and getattr(root, "trace_id", None) in (None, "", self._no_op_trace_id):
                root = None  # MLflow handed back a no-op span: it failed (and logged why) or sampled this out
        trace = TurnTrace(self if root is not None else None, root)
        try:
            yield trace
        except BaseException as exc:
            self._end_span(root, exc)
            raise
        self._end_span(root, None)

    def feedback(self, trace_id: str, user: str, value: bool, comment: str = "") -> str | None:
        """Record a thumbs up (True) or down (False) from ``user`` on a turn's trace, as an MLflow assessment.

        Returns the assessment id, or None if tracing is off or the store failed (logged). Raises
        :class:`FeedbackError` if the trace does not exist.
        """
        if not trace_id:
            raise FeedbackError("no trace id given: this turn was not traced")
        if not self._ensure_started():
            return None
        from mlflow.entities import AssessmentSource
        from mlflow.exceptions import MlflowException

        def log_feedback() -> Any:
            return self._mlflow.log_feedback(
                trace_id=trace_id,
                name=FEEDBACK_NAME,
                value=bool(value),
                rationale=comment or None,
                source=AssessmentSource(source_type="HUMAN", source_id=user),
            )

        def missing(exc: Exception) -> bool:
            """Whether the failure is an unknown trace. Stores say so differently (MLflow 3.10's SQL store fails
            on its foreign key instead), so when the error does not say, ask for the trace itself."""
            if isinstance(exc, MlflowException) and (
                exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower()
            ):
                return True
            try:
                return self._mlflow.get_trace(trace_id) is None
            except Exception:
                return False

        for attempt in range(2):
            try:
                return log_feedback().assessment_id
            except Exception as exc:
                if not missing(exc):
                    self._failed("could not record feedback", exc)
                    return None
                if attempt == 0:  # the trace may still be in the async export queue
                    self._guard("flush traces", self._mlflow.flush_trace_async_logging)
                    continue
                raise FeedbackError(f"trace {trace_id!r} not found in {self.tracking_uri}") from None
        return None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for traces queued for asynchronous export to be written (MLflow's own wait: ``timeout`` is not
        used). False if tracing is not working."""
        if self._started and not self._broken:
            self._guard("flush traces", self._mlflow.flush_trace_async_logging)
            return not self._broken
        return False

    def close(self) -> None:
        self.flush()

    # -- internals

    def _ensure_started(self) -> bool:
        """Set MLflow up once. A store that does not answer holds a turn up for at most the setup timeout:
        setup goes on in the background and later turns are traced once it is done."""
        if self._broken:
            return False
        if self._started:
            self._guard("point MLflow at the trace store", self._point_mlflow_here)
            return True
        with self._lock:
            if self._setup_thread is None:
                self._setup_thread = threading.Thread(
                    target=self._set_up, name="mlflow-tracing-setup", daemon=True
                )
                self._setup_thread.start()
        self._setup_thread.join(self._setup_timeout)
        if self._started:
            return True
        if not self._broken and not self._warned_slow:
            self._warned_slow = True
            log.warning(
                "MLflow trace store %s did not open within %gs; turns are not traced until it does",
                self.tracking_uri,
                self._setup_timeout,
            )
        return False

    def _set_up(self) -> None:
        try:
            self._start()
            self._started = True
        except Exception as exc:
            self._broken = True
            hint = ""
            if self._private_store is not None and "already exists" in str(exc):
                hint = (
                    f" — the store was left half-created (by a run stopped while creating it): delete "
                    f"{self._private_store} and run again"
                )
            log.warning("MLflow tracing is off: cannot use the trace store %s: %s%s", self.tracking_uri, exc, hint)

    def _start(self) -> None:
        disable_mlflow_telemetry()
        if self._private_store is not None:
            private_file(self._private_store)  # before SQLite creates it with the umask's mode (0644)
        import mlflow
        from mlflow import MlflowClient

        quiet = [logging.getLogger(name) for name in ("alembic", "mlflow.store.db.utils")]
        levels = [logger.level for logger in quiet]
        for logger in quiet:  # schema migrations on first use are not news for a CLI user
            logger.setLevel(logging.WARNING)
        try:
            if self._private_store is not None:
                create_store_whole(self._private_store, MlflowClient)
            client = MlflowClient(tracking_uri=self.tracking_uri)
            self.experiment_id = resolve_experiment(
                client,
                self.tracking_uri,
                name=self.experiment_name,
                experiment_id=(self.experiment_id or "") if self._given_experiment_id else "",
                artifact_location=self._artifact_location,
            )
        finally:
            for logger, level in zip(quiet, levels, strict=True):
                logger.setLevel(level)
        # At exit MLflow announces it is flushing queued traces; that is not news for a CLI user either.
        logging.getLogger("mlflow.tracing.export.async_export_queue").setLevel(logging.WARNING)
        from mlflow.entities.span import NO_OP_SPAN_TRACE_ID

        self._no_op_trace_id = NO_OP_SPAN_TRACE_ID
        self._mlflow = mlflow
        self._point_mlflow_here()

    def _point_mlflow_here(self) -> None:
        """Traces are exported to MLflow's global tracking URI; make sure it is ours (cheap when it is)."""
        if self._mlflow.get_tracking_uri() != self.tracking_uri:
            self._mlflow.set_tracking_uri(self.tracking_uri)

    def _end_span(self, span: Any, exc: BaseException | None) -> None:
        if span is None:
            return

        def end() -> None:
            if exc is not None:
                # Not span.record_exception(exc): its event keeps the raw message and traceback, chained
                # causes included, where upstream text (an echoed token) would end up in the trace store.
                from mlflow.entities import SpanEvent, SpanStatus, SpanStatusCode

                message, stack = redact_exception(exc)
                span.add_event(
                    SpanEvent(  # type: ignore[abstract]
                        name="exception",
                        attributes={
                            "exception.message": message,
                            "exception.type": type(exc).__name__,
                            "exception.stacktrace": stack,
                        },
                    )
                )
                span.end(status=SpanStatus(SpanStatusCode.ERROR, description=f"{type(exc).__name__}: {message}"))
            else:
                span.end()

        self._guard("end a span", end)

    def _guard(self, what: str, action: Any) -> Any:
        try:
            return action()
        except Exception as exc:
            self._failed(f"could not {what}", exc)
            return None

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("tracing: %s: %s (the turn goes on; later tracing errors are logged at debug)", what, exc)
        else:
            log.debug("tracing: %s: %s", what, exc, exc_info=exc)
