"""The trace exporter process: replays the turns a serving process recorded into MLflow, off its hot path.

Run as ``python -m context_assistant.core.trace_export '<settings json>'`` by :class:`~.tracing.Tracer`; it is
the only process that imports MLflow for turn traces. Why a process and not a thread: MLflow's export (a store
transaction per span with SQLite, an HTTPS upload on Databricks) costs 16–44 ms of CPU per trace, which in the
serving process competed with the turn for the GIL and 2 cores (issue 16); at ``nice`` it yields to the turn.

Protocol, one JSON document per line. In on stdin: ``{"op": "trace", ...}`` (a finished turn, see
:func:`replay`), ``{"op": "flush", "id": n}`` (answer once everything before it is written), ``{"op":
"feedback", "id": n, ...}``; end of input means "finish what is queued and exit" — so a command that exits right
after its turn loses nothing. Out on stdout: ``ready`` (with the experiment id) or ``broken`` (why the store
cannot be used) once set up, then ``flushed``/``feedback`` answers and at most one ``warning``. Stdin is read by
a thread from the start, before MLflow is even imported, so a parent never waits on a full pipe.

Trace ids: the serving process needs a turn's trace id before the reply is stored, so it draws the OpenTelemetry
trace id itself; MLflow's id is ``tr-<that id in hex>``, and the exporter makes the root span use it. Should an
MLflow version ever name traces differently, the trace is tagged ``context_assistant.turn_id`` with the id the
turn stored, and feedback finds it by that tag.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from .files import private_file

TURN_ID_TAG = "context_assistant.turn_id"
NICE_INCREMENT = 10
INBOX_SIZE = 1000

log = logging.getLogger(__name__)


class _Out:
    """Answers to the parent; once the parent is gone (a CLI that exited) they are dropped."""

    def __init__(self) -> None:
        self._gone = False
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        if self._gone:
            return
        with self._lock:
            try:
                sys.stdout.write(json.dumps(message) + "\n")
                sys.stdout.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._gone = True


def _read_stdin(inbox: queue.Queue[dict[str, Any] | None]) -> None:
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            inbox.put(json.loads(line))
        except ValueError:
            continue
    inbox.put(None)


class _PresetTraceIds:
    """An OpenTelemetry id generator whose next trace id can be set: the id the turn already stored."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback
        self.next: int | None = None

    def generate_span_id(self) -> int:
        return int(self.fallback.generate_span_id())

    def generate_trace_id(self) -> int:
        preset, self.next = self.next, None
        return preset if preset else int(self.fallback.generate_trace_id())

    def is_trace_id_random(self) -> bool:
        return True


class Exporter:
    """MLflow set up once, then one turn at a time (single-threaded: no locks around MLflow's state)."""

    def __init__(self, settings: dict[str, Any], out: _Out) -> None:
        self.settings = settings
        self.out = out
        self.uri: str = settings["tracking_uri"]
        self.experiment_id: str = ""
        self.aliases: dict[str, str] = {}  # our trace id -> MLflow's, if they ever differ
        self.warned = False
        self.mlflow: Any = None

    def set_up(self) -> None:
        from .trace_record import disable_mlflow_telemetry

        disable_mlflow_telemetry()
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")  # this process is the async part
        store = self.settings.get("private_store")
        import mlflow
        from mlflow import MlflowClient

        for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracing.export.async_export_queue"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if store:
            private_file(Path(store))  # before SQLite creates it with the umask's mode: it holds every prompt
            create_store_whole(Path(store), MlflowClient)
        client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = resolve_experiment(
            client,
            self.uri,
            name=self.settings.get("experiment") or "context-assistant",
            experiment_id=self.settings.get("experiment_id") or "",
            artifact_location=self.settings.get("artifact_location"),
        )
        mlflow.set_tracking_uri(self.uri)
        self.mlflow = mlflow

    def _preset(self, otel_id: int) -> None:
        from mlflow.tracing.provider import provider
        from opentelemetry.sdk.trace import TracerProvider

        provider.get_or_init_tracer(__name__)
        tracer_provider = provider.get()
        if isinstance(tracer_provider, TracerProvider):
            if not isinstance(tracer_provider.id_generator, _PresetTraceIds):
                tracer_provider.id_generator = _PresetTraceIds(tracer_provider.id_generator)  # type: ignore[assignment]
            tracer_provider.id_generator.next = otel_id  # type: ignore[attr-defined]

    def replay(self, record: dict[str, Any]) -> None:
        """Write one turn: spans ``[name, type, parent index, start_ns, end_ns, inputs, outputs, attributes,
        error]`` with the root first and parents before children, at their recorded times."""
        from mlflow.entities import SpanEvent, SpanStatus, SpanStatusCode

        mlflow = self.mlflow
        spans = record["spans"]
        trace_id: str = record["trace_id"]
        with contextlib.suppress(Exception):
            self._preset(int(record["otel_id"], 16))
        name, span_type, _, start, _, inputs, _, attributes, _ = spans[0]
        root = mlflow.start_span_no_context(
            name,
            span_type=span_type,
            inputs=inputs,
            attributes=attributes or None,
            metadata=record.get("metadata") or None,
            tags=record.get("tags") or None,
            experiment_id=self.experiment_id,
            start_time_ns=start,
        )
        if root.trace_id != trace_id:  # an MLflow that names traces differently: find it by our id instead
            self.aliases[trace_id] = root.trace_id
            with self.trace_of(root):
                mlflow.update_current_trace(tags={TURN_ID_TAG: trace_id})
        live = [root]
        for name, span_type, parent, start, _, inputs, _, attributes, _ in spans[1:]:
            live.append(
                mlflow.start_span_no_context(
                    name,
                    span_type=span_type,
                    parent_span=live[parent],
                    inputs=inputs,
                    attributes=attributes or None,
                    start_time_ns=start,
                )
            )
        for index in range(len(spans) - 1, -1, -1):  # children end before their parents
            _, _, _, _, end, _, outputs, _, error = spans[index]
            span = live[index]
            if outputs is not None:
                span.set_outputs(outputs)
            if error:
                span.add_event(
                    SpanEvent(  # type: ignore[abstract]
                        name="exception",
                        timestamp=error["time_ns"],
                        attributes={
                            "exception.message": error["message"],
                            "exception.type": error["type"],
                            "exception.stacktrace": error["stacktrace"],
                        },
                    )
                )
                status = SpanStatus(SpanStatusCode.ERROR, description=f"{error['type']}: {error['message']}")
                span.end(status=status, end_time_ns=end)
            else:
                span.end(end_time_ns=end)

    @contextlib.contextmanager
    def trace_of(self, root: Any) -> Any:
        from mlflow.tracing.provider import safe_set_span_in_context

        with safe_set_span_in_context(root):
            yield

    def feedback(self, request: dict[str, Any]) -> dict[str, Any]:
        from mlflow.entities import AssessmentSource

        trace_id = self.resolve(request["trace_id"])
        if trace_id is None:
            return {"missing": True}
        try:
            assessment = self.mlflow.log_feedback(
                trace_id=trace_id,
                name=request["name"],
                value=bool(request["value"]),
                rationale=request.get("comment") or None,
                source=AssessmentSource(source_type="HUMAN", source_id=request["user"]),
            )
        except Exception as exc:
            return {"failed": f"{type(exc).__name__}: {exc}"}
        return {"assessment_id": assessment.assessment_id}

    def resolve(self, trace_id: str) -> str | None:
        """MLflow's id of the trace a turn stored as ``trace_id``, or None if there is no such trace."""
        trace_id = self.aliases.get(trace_id, trace_id)
        with contextlib.suppress(Exception):
            if self.mlflow.get_trace(trace_id) is not None:
                return trace_id
        with contextlib.suppress(Exception):
            found = self.mlflow.search_traces(
                locations=[self.experiment_id],
                filter_string=f"tag.`{TURN_ID_TAG}` = '{trace_id.replace(chr(39), '')}'",
                return_type="list",
                max_results=1,
            )
            if found:
                return str(found[0].info.trace_id)
        return None

    def failed(self, what: str, exc: BaseException) -> None:
        if not self.warned:
            self.warned = True
            self.out.send({"op": "warning", "message": f"{what}: {type(exc).__name__}: {exc}"})


def resolve_experiment(
    client: Any, tracking_uri: str, *, name: str, experiment_id: str, artifact_location: str | None
) -> str:
    """The id of the experiment traces go to: the given id (which must exist), else the named one, created if
    missing (on Databricks a relative name becomes ``/Shared/<name>``)."""
    from mlflow.exceptions import MlflowException

    if experiment_id:
        return str(client.get_experiment(experiment_id).experiment_id)
    if tracking_uri.startswith("databricks") and not name.startswith("/"):
        name = f"/Shared/{name}"
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location))
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # created concurrently by another process
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def create_store_whole(store: Path, client_class: Any) -> None:
    """Create a new local SQLite trace store under a temporary name and move it into place only once MLflow's
    schema migrations are done. A command that gives up waiting for the store and exits kills the setup thread;
    done in place, that left a half-migrated ``mlflow.db`` that no later run could open ("table ... already
    exists"). An existing store is used as it is."""
    if store.exists() and store.stat().st_size > 0:
        return
    for stale in store.parent.glob(f".{store.name}.*.creating"):  # left by a process killed while creating
        pid = stale.name.split(".")[-3]
        if pid.isdigit() and not _process_alive(int(pid)):
            with contextlib.suppress(OSError):
                stale.unlink()
    # A new name each time: MLflow caches its store per URI, so a name must never be reused in a process.
    partial = store.with_name(f".{store.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.creating")
    private_file(partial)
    client_class(tracking_uri=f"sqlite:///{partial}").search_experiments(max_results=1)  # runs the migrations
    with contextlib.closing(sqlite3.connect(partial)) as conn:  # MLflow writes in WAL mode: fold the log in
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    try:
        if store.exists():  # an empty file (made private before SQLite opened it): replace it
            os.replace(partial, store)
        else:
            os.link(partial, store)  # never over a store another process finished meanwhile
    except FileExistsError:
        pass
    finally:
        for leftover in (
            partial,
            partial.with_name(partial.name + "-wal"),
            partial.with_name(partial.name + "-shm"),
        ):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def main(argv: list[str]) -> int:
    settings = json.loads(argv[0])
    with contextlib.suppress(OSError):
        os.nice(int(settings.get("nice", NICE_INCREMENT)))  # the serving process wins every contended core
    out = _Out()
    # Bounded: a store that cannot keep up fills this, then the pipe, then the serving process's queue, which
    # drops (and counts) rather than grow without end.
    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=INBOX_SIZE)
    threading.Thread(target=_read_stdin, args=(inbox,), name="trace-export-stdin", daemon=True).start()
    exporter = Exporter(settings, out)
    try:
        exporter.set_up()
    except Exception as exc:
        out.send({"op": "broken", "error": str(exc) or type(exc).__name__})
        return 1
    out.send({"op": "ready", "experiment_id": exporter.experiment_id})
    while (message := inbox.get()) is not None:
        op = message.get("op")
        try:
            if op == "trace":
                exporter.replay(message)
            elif op == "flush":
                out.send({"op": "flushed", "id": message["id"]})
            elif op == "feedback":
                out.send({"op": "feedback", "id": message["id"], **exporter.feedback(message)})
        except Exception as exc:
            exporter.failed(f"could not export a {op}", exc)
            if op in ("flush", "feedback"):
                out.send({"op": op if op == "feedback" else "flushed", "id": message["id"], "failed": str(exc)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
