"""The local Spark Connect server (pysail) in a child process of its own, so Ctrl-C cannot kill it.

Why a child process in its own session: pysail's server, started inside the CLI's process, shuts itself down
on SIGINT, and a terminal sends SIGINT to every process of the foreground job. Ctrl-C during ``ingest`` (or at
the chat prompt after ``/refresh``) then left the Spark Connect client retrying a dead server for ~10 minutes.
Here the server runs as ``python -m <this module>`` with ``start_new_session``: a terminal's
Ctrl-C reaches the CLI only, which interrupts its Spark operations and exits (or, in the chat, goes on using
the same server). The server lives exactly as long as the process that started it: it reads its stdin, a
pipe from the parent, and stops when that pipe closes — on a normal exit, a Ctrl-C or a ``kill -9`` alike —
within :data:`STOP_SECONDS`, even when a task is still running in it (an abandoned embedding round).

Protocol: the child prints one JSON line ``{"host", "port", "pid"}`` on stdout once it listens (on
127.0.0.1, a free port), then waits for EOF on stdin. Its log (pysail's, at ``RUST_LOG=error`` unless set)
goes to ``log_path``, whose tail is quoted if it fails to start.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from ..core.errors import Unavailable
from ..core.files import private_file

START_SECONDS = 120.0  # a loaded 2-core machine can take a while to import pysail and bind
STOP_SECONDS = 2.0
IDLE_SESSION_SECONDS = 7 * 24 * 3600


class LocalSparkServerError(Unavailable):
    """The local Spark server could not be started; ``str()`` says why and quotes its log."""


class LocalSparkServer:
    """A pysail Spark Connect server in a child process (own session), stopped when this process ends."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def url(self) -> str:
        return f"sc://{self.host}:{self.port}"

    def start(self, timeout: float = START_SECONDS) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "error")  # pysail warns about aborted tasks on every clean shutdown
        env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        env.setdefault("PYSPARK_PYTHON", sys.executable)  # UDFs must be able to import context_assistant
        # glibc gives each thread that allocates its own arena and keeps freed memory in it: with pysail's
        # threads and torch's embedding inside one process that held ~1 GB more at the same speed
        # (benchmarks/big_file.py --embed: 6 MB file, peak 2.9-3.4 GiB -> 2.0 GiB).
        env.setdefault("MALLOC_ARENA_MAX", "2")
        # pysail ends a session that has been idle for a few minutes; this server has one client, this
        # process, which keeps its session between uses (the chat's second /refresh, a benchmark's later
        # section), so only a long idle week ends it (start_local_spark then opens a new one).
        env.setdefault("SAIL_SPARK__SESSION_TIMEOUT_SECS", str(IDLE_SESSION_SECONDS))
        private_file(self.log_path)  # it may quote what a query held
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__],  # this module, wherever the package puts it
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,  # not in the terminal's foreground job: Ctrl-C does not reach it
                close_fds=True,
                umask=0o077,  # the Delta tables it writes hold the documents' text: 0600 files, 0700 folders
            )
        assert self.process.stdout is not None
        line = _read_line(self.process.stdout, timeout)
        try:
            address = json.loads(line)
            self.host, self.port = str(address["host"]), int(address["port"])
        except (ValueError, KeyError, TypeError):
            self.stop()
            answer = repr(line) if line else f"no answer within {timeout:g}s"
            raise LocalSparkServerError(
                f"the local Spark server did not start ({answer}); "
                f"its log {self.log_path} ends with:\n{_tail(self.log_path)}"
            ) from None

    def stop(self, wait: float = STOP_SECONDS) -> None:
        """Close the pipe (the child stops its server and exits); after ``wait`` seconds, terminate it."""
        process, self.process = self.process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                process.kill()


def _read_line(stream: IO[bytes], timeout: float) -> str:
    """One line from the child's stdout, or "" if none came within ``timeout`` (or the child died)."""
    deadline = time.monotonic() + timeout
    data = b""
    fd = stream.fileno()
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def serve(stdin: Any = None, stdout: Any = None) -> int:
    """The child: start pysail on 127.0.0.1, announce its address, stop when stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the parent decides when this server stops
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout
    from pysail.spark import SparkConnectServer

    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    host, port = server.listening_address
    stdout.write(json.dumps({"host": host, "port": port, "pid": os.getpid()}) + "\n")
    stdout.flush()
    while stdin.read(65536):  # the parent never writes: this returns b"" when it closes the pipe or dies
        pass
    # pysail's stop waits for running tasks; one the parent abandoned (a Ctrl-C in an embedding round) can run
    # for minutes, and its result has no reader any more. Give a graceful stop STOP_SECONDS, then exit anyway.
    stopping = threading.Thread(target=server.stop, name="spark-server-stop", daemon=True)
    stopping.start()
    stopping.join(STOP_SECONDS)
    return 0


if __name__ == "__main__":
    code = serve()
    sys.stdout.flush()
    os._exit(code)  # don't wait for pysail's runtime threads to wind down
