"""Get a SparkSession: the Databricks one when running there, else a local Spark Connect server (pysail).

Why pysail locally: it speaks the same Spark Connect protocol as Databricks serverless, so the pipeline code
(DataFrames, SQL ``MERGE INTO``, ``mapInArrow``) exercised by the local CLI and the tests is exactly the code
that runs in the bundle job. It starts in-process in about a second with no JVM.

Order of choice in :func:`get_spark`:

1. ``DATABRICKS_RUNTIME_VERSION`` is set (a notebook, a job task, serverless): the session Databricks made.
2. ``SPARK_REMOTE`` is set: the standard pyspark way to name a Spark Connect server; we connect to it.
3. ``databricks-connect`` is installed and a cluster (``DATABRICKS_CLUSTER_ID``) or serverless compute
   (``DATABRICKS_SERVERLESS_COMPUTE_ID``) is configured: a Databricks Connect session.
4. Otherwise a pysail server bound to 127.0.0.1, started once per process and stopped at exit (or by
   :func:`stop_local_spark`). It runs in a child process of its own session
   (:mod:`context_assistant.ingest.spark_server`), so a Ctrl-C in the terminal interrupts this process's Spark
   operations (:func:`interrupting_spark`) but never kills the server; and its client gives up within a few
   seconds when the server is gone, instead of pyspark's default of retrying for ten minutes.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import Unavailable

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

_lock = threading.Lock()
_server: Any = None  # spark_server.LocalSparkServer while running
_session: SparkSession | None = None
_atexit_registered = False


def running_on_databricks(env: Mapping[str, str] = os.environ) -> bool:
    """True inside Databricks compute (notebooks, jobs, serverless), where a session already exists."""
    return bool(env.get("DATABRICKS_RUNTIME_VERSION"))


def databricks_connect_configured(env: Mapping[str, str] = os.environ) -> bool:
    """True when a Databricks Connect session can be built: the package and a compute target are present."""
    if not (env.get("DATABRICKS_CLUSTER_ID") or env.get("DATABRICKS_SERVERLESS_COMPUTE_ID")):
        return False
    try:
        return importlib.util.find_spec("databricks.connect") is not None
    except ModuleNotFoundError:
        return False


def get_spark(local_dir: str | os.PathLike[str] | None = None) -> SparkSession:
    """The SparkSession to use here; ``local_dir`` only matters for the local server (its warehouse dir)."""
    if running_on_databricks():
        from pyspark.sql import SparkSession

        return SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
    remote = os.environ.get("SPARK_REMOTE")
    if remote:
        from pyspark.sql import SparkSession

        return SparkSession.builder.remote(remote).getOrCreate()
    if databricks_connect_configured():
        from databricks.connect import DatabricksSession

        return DatabricksSession.builder.getOrCreate()
    return start_local_spark(local_dir)


def start_local_spark(local_dir: str | os.PathLike[str] | None = None) -> SparkSession:
    """Start (once per process) a pysail Spark Connect server on 127.0.0.1 and return a session on it.

    ``local_dir`` becomes the parent of ``spark.sql.warehouse.dir`` so that a table created by bare name
    lands in the data directory instead of a relative ``spark-warehouse`` (which pysail rejects); the
    server's log is ``spark-server.log`` there.
    """
    global _server, _session, _atexit_registered
    with _lock:
        if _session is not None and _server is not None and _server.running and not _session_alive(_session):
            # The server ended an idle session; the server itself is fine: forget the session, open another.
            with contextlib.suppress(Exception):
                _session.stop()
            _session = _open_session(_server.url)
        if _session is None or _server is None or not _server.running:
            if importlib.util.find_spec("pysail") is None:
                raise Unavailable(
                    "local Spark needs the 'pysail' package (pip install 'context-assistant[local]'), "
                    "or run on Databricks / configure Databricks Connect"
                )
            from .spark_server import LocalSparkServer

            if _server is not None:
                _server.stop()
            if local_dir is not None:
                log_path = Path(local_dir).expanduser() / "spark-server.log"
            else:
                handle, name = tempfile.mkstemp(prefix="context-assistant-spark-", suffix=".log")
                os.close(handle)
                log_path = Path(name)
            server = LocalSparkServer(log_path)
            server.start()
            _server = server
            _session = _open_session(server.url)
            if not _atexit_registered:
                atexit.register(stop_local_spark)
                _atexit_registered = True
        session = _session
    if local_dir is not None:
        warehouse = Path(local_dir).expanduser().resolve() / "spark-warehouse"
        session.conf.set("spark.sql.warehouse.dir", str(warehouse))
    return session


def _open_session(url: str) -> SparkSession:
    from pyspark.sql import SparkSession

    session = SparkSession.builder.remote(url).create()
    _fail_fast(session)
    # The session time zone otherwise follows the machine's (e.g. "Etc/UTC"), and pysail then refuses to
    # reopen Delta tables whose timestamps were declared under another zone name ("UTC").
    session.conf.set("spark.sql.session.timeZone", "UTC")
    return session


def _session_alive(session: SparkSession) -> bool:
    """Whether the server still knows ``session`` (one config round trip on loopback)."""
    try:
        session.conf.get("spark.sql.session.timeZone")
    except Exception:  # pyspark raises IllegalArgumentException "session … is not running", or a gRPC error
        return False
    return True


def local_spark_running() -> bool:
    """Whether this process has a local pysail server up."""
    return _server is not None and bool(_server.running)


def local_spark_lost() -> str | None:
    """If this process's local server died (killed, out of memory), one line saying so; else None."""
    server = _server
    if server is None or server.running:
        return None
    return (
        f"the local Spark server stopped unexpectedly (its log: {server.log_path}); the next run starts a new one"
    )


def stop_local_spark() -> None:
    """Stop the local session and server, if this process started them; safe to call more than once."""
    global _server, _session
    with _lock:
        session, server = _session, _server
        _session, _server = None, None
    if session is not None:
        # The server may already be gone at interpreter exit; there is nothing left to release then.
        with contextlib.suppress(Exception):
            session.stop()
    if server is not None:
        server.stop()


def _fail_fast(session: SparkSession) -> None:
    """Give the local session's client a short retry policy (pyspark's default retries for ~10 minutes)."""
    from pyspark.sql.connect.client.retries import DefaultPolicy

    # A local server answers within milliseconds; if it does not, it is gone, and waiting longer cannot help.
    policy = DefaultPolicy(max_retries=3, initial_backoff=50, max_backoff=500, backoff_multiplier=4.0)
    session.client.set_retry_policies([policy])


@contextlib.contextmanager
def interrupting_spark(session: Any) -> Iterator[None]:
    """On Ctrl-C inside the block, interrupt the session's running Spark operations, then re-raise.

    Spark Connect operations go on running on the server when the client stops waiting; a half-finished
    ``MERGE`` must not race the next run's (the chat's next ``/refresh``). Delta commits are atomic, so an
    interrupted run leaves the tables as the last completed step wrote them.
    """
    try:
        yield
    except KeyboardInterrupt:
        interrupt = getattr(session, "interruptAll", None)
        if interrupt is not None:
            try:
                interrupt()
            except Exception as error:
                log.debug("could not interrupt the Spark operations: %s", error)
        raise
