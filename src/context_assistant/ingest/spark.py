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
   :func:`stop_local_spark`).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import Unavailable

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_lock = threading.Lock()
_server: Any = None  # pysail.spark.SparkConnectServer while running
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
    lands in the data directory instead of a relative ``spark-warehouse`` (which pysail rejects).
    """
    global _server, _session, _atexit_registered
    with _lock:
        if _session is None or _server is None or not _server.running:
            # Quiet the Rust server's logging (it warns about aborted tasks on every clean shutdown; set
            # RUST_LOG to see more) and keep everything on loopback; UDF workers must use this interpreter
            # so they can import context_assistant.
            os.environ.setdefault("RUST_LOG", "error")
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            try:
                from pysail.spark import SparkConnectServer
            except ImportError as error:
                raise Unavailable(
                    "local Spark needs the 'pysail' package (pip install 'context-assistant[local]'), "
                    "or run on Databricks / configure Databricks Connect"
                ) from error
            from pyspark.sql import SparkSession

            server = SparkConnectServer(ip="127.0.0.1", port=0)
            server.start(background=True)
            host, port = server.listening_address
            _server = server
            _session = SparkSession.builder.remote(f"sc://{host}:{port}").create()
            # The session time zone otherwise follows the machine's (e.g. "Etc/UTC"), and pysail then refuses
            # to reopen Delta tables whose timestamps were declared under another zone name ("UTC").
            _session.conf.set("spark.sql.session.timeZone", "UTC")
            if not _atexit_registered:
                atexit.register(stop_local_spark)
                _atexit_registered = True
        session = _session
    if local_dir is not None:
        warehouse = Path(local_dir).expanduser().resolve() / "spark-warehouse"
        session.conf.set("spark.sql.warehouse.dir", str(warehouse))
    return session


def local_spark_running() -> bool:
    """Whether this process has a local pysail server up."""
    return _server is not None and bool(_server.running)


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
    if server is not None and server.running:
        server.stop()
