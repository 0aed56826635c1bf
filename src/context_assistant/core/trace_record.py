"""What a turn records for its trace: plain data (no MLflow), shared by both tracers and the exporter's input.

A span is ``[name, span type, parent index, start_ns, end_ns, inputs, outputs, attributes, error]``; a finished
turn is one ``{"op": "trace", ...}`` document (:meth:`TurnTrace._finish`) that :mod:`.trace_export` replays.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from .errors import InvalidInput
from .redact import redact_exception

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

    def __init__(self, tracer: object | None, user: str, session_id: str | None, inputs: Any) -> None:
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
