"""A warm local embedding model that short CLI commands share, so ``search`` does not wait for torch each time.

Loading all-MiniLM-L6-v2 in a new process costs ~5-15 s on 2 cores (importing sentence-transformers and torch
is most of it); embedding one question then takes milliseconds. So ``search``, ``recall`` and ``chat`` ask a
small service for their vectors: the first such command starts it (and says so on stderr), later ones reuse it,
and it exits by itself after ``rag.embedding_service_idle_seconds`` without a request (0 turns it off: every
command then loads the model itself, as ``ingest``/``sync`` always do; the web app runs its own in a child
process, model_process.py).

* Where: a Unix socket in the data folder (``embedding-<digest>.sock``; the digest names the model, so a
  changed ``rag.embedding_model`` gets a service of its own), ``0600`` inside the private data folder, and the
  service answers only processes of its own user (``SO_PEERCRED``). A data folder whose path is too long for a
  socket name uses a private ``0700`` folder in the temporary directory instead.
* Protocol: one JSON object per line. ``{"texts": [...]}`` → ``{"vectors": [[...], ...]}`` (the exact floats
  the model gave: JSON round-trips doubles), ``{"hello": true}`` → ``{"model_name", "dimension", "pid"}``,
  ``{"stop": true}`` ends it. Errors come back as ``{"error": "..."}``.
* Lifetime: started detached (its own session, so a Ctrl-C in the terminal never reaches it), under a lock so
  two commands never start two; it exits when idle, or when its socket file is removed or replaced.
* Failure: if the service cannot be started or stops answering, the command loads the model itself and says
  so; nothing fails because the service is missing. Vectors are identical either way (same model, same code).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..core.config import RagConfig
from ..core.files import private_dir, private_file
from ..core.interrupts import fast_exit
from .embeddings import (
    CachingEmbedder,
    Embedder,
    EmbeddingError,
    LocalEmbedder,
    parse_model_spec,
    resolve_local_model,
)

log = logging.getLogger(__name__)

MAX_SOCKET_PATH = 100  # AF_UNIX paths are at most 107 bytes on Linux, 103 on macOS
START_TIMEOUT_SECONDS = 180.0
REQUEST_TIMEOUT_SECONDS = 120.0
TICK_SECONDS = 2.0
LOG_NAME = "embedding-service.log"


def socket_path(data_dir: Path, model: str) -> Path:
    """Where the service for ``model`` (a ``rag.embedding_model`` value) and this data folder listens."""
    _, target = resolve_local_model(model)  # names and the file system only: no model is loaded
    digest = hashlib.sha256(f"{Path(data_dir).resolve()}\0{target}".encode()).hexdigest()[:16]
    path = Path(data_dir).resolve() / f"embedding-{digest}.sock"
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return _private_temp_dir(Path(tempfile.gettempdir()) / f"context-assistant-{uid}") / path.name


def warm_embedder(
    rag_config: RagConfig, data_dir: Path, notice: Callable[[str], None] | None = None
) -> Embedder | None:
    """The embedder a short CLI command uses: the shared warm service for a local ``rag.embedding_model``;
    None (load it the usual way, :func:`~.embedder_choice.make_embedder`) for a serving endpoint, when
    ``rag.embedding_service_idle_seconds`` is 0, or where there are no Unix sockets."""
    if (
        parse_model_spec(rag_config.embedding_model).provider == "endpoint"
        or rag_config.embedding_service_idle_seconds <= 0
        or os.name != "posix"  # Unix sockets, flock and SO_PEERCRED
    ):
        return None
    client = EmbeddingServiceClient(
        rag_config.embedding_model, data_dir, idle_seconds=rag_config.embedding_service_idle_seconds, notice=notice
    )
    return CachingEmbedder(client)


def stop_embedding_service(rag_config: RagConfig, data_dir: Path) -> bool:
    """Ask this data folder's warm service (if any runs) to exit; True if one did. Loads no model."""
    if parse_model_spec(rag_config.embedding_model).provider == "endpoint" or os.name != "posix":
        return False
    try:
        path = socket_path(data_dir, rag_config.embedding_model)
    except Exception:  # a model that cannot be resolved here never had a service
        return False
    if not path.exists():
        return False
    client = EmbeddingServiceClient(rag_config.embedding_model, data_dir, idle_seconds=0)
    if not client.stop():
        return False
    deadline = time.monotonic() + 2 * TICK_SECONDS  # it notices within one tick, then removes its socket
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def _private_temp_dir(folder: Path) -> Path:
    private_dir(folder)
    info = folder.lstat()
    if (hasattr(os, "getuid") and info.st_uid != os.getuid()) or not folder.is_dir() or folder.is_symlink():
        raise EmbeddingError(f"{folder} is not a private folder of this user; cannot put a socket there")
    return folder


# ---------------------------------------------------------------------------------------------------------
# The client (an Embedder)


class EmbeddingServiceClient:
    """An :class:`~context_assistant.retrieval.embeddings.Embedder` whose model runs in the warm service."""

    def __init__(
        self,
        model: str,
        data_dir: Path,
        *,
        idle_seconds: float,
        notice: Callable[[str], None] | None = None,
        start_timeout: float = START_TIMEOUT_SECONDS,
    ) -> None:
        self.model_name, self._target = resolve_local_model(model)
        self._model = model
        self.data_dir = Path(data_dir)
        self.idle_seconds = idle_seconds
        self._notice = notice or (lambda message: None)
        self._start_timeout = start_timeout
        self._path = socket_path(self.data_dir, model)
        self._lock = threading.Lock()
        self._conn: socket.socket | None = None
        self._reader: Any = None
        self._dimension: int | None = None
        self._fallback: LocalEmbedder | None = None

    @property
    def socket_path(self) -> Path:
        return self._path

    @property
    def dimension(self) -> int:
        if self._fallback is not None:
            return self._fallback.dimension
        if self._dimension is None:
            answer = self._ask({"hello": True})
            if answer is None:
                return self._local().dimension
            self._dimension = int(answer["dimension"])
        return self._dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if self._fallback is None:
            answer = self._ask({"texts": list(texts)})
            if answer is not None:
                vectors: list[list[float]] = answer["vectors"]
                return vectors
        return self._local().embed(texts)

    def stop(self) -> bool:
        """Ask the service to exit (tests, ``db stop``); True if one was running."""
        with self._lock:
            try:
                conn, reader = self._connect()
            except OSError:
                return False
            with contextlib.suppress(OSError):
                conn.sendall(b'{"stop": true}\n')
                reader.readline()
            self._close()
            conn.close()
            return True

    def close(self) -> None:
        with self._lock:
            self._close()

    # -- internals

    def _ask(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The service's answer, starting it when needed; None when it cannot be had (use the local model)."""
        payload = (json.dumps(request) + "\n").encode()
        with self._lock:
            for attempt in range(2):
                try:
                    if self._conn is None:
                        self._conn, self._reader = self._connect_or_start()
                    self._conn.sendall(payload)
                    line = self._reader.readline()
                    if not line:
                        raise ConnectionError("the embedding service closed the connection")
                    answer: dict[str, Any] = json.loads(line)
                except (OSError, ValueError) as exc:
                    self._close()
                    if attempt == 0:
                        continue
                    self._notice(
                        f"Embedding service unavailable ({exc}); loading {self.model_name} here instead..."
                    )
                    return None
                if "error" in answer:
                    raise EmbeddingError(f"embedding service: {answer['error']}")
                return answer
        return None

    def _connect(self) -> tuple[socket.socket, Any]:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(REQUEST_TIMEOUT_SECONDS)
            conn.connect(os.fspath(self._path))
        except OSError:
            conn.close()
            raise
        return conn, conn.makefile("rb")

    def _connect_or_start(self) -> tuple[socket.socket, Any]:
        with contextlib.suppress(OSError):
            return self._connect()
        private_dir(self.data_dir)
        lock_path = self._path.with_suffix(".lock")
        import fcntl

        with open(private_file(lock_path), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others then find it running
            with contextlib.suppress(OSError):
                return self._connect()
            process = self._spawn()
            deadline = time.monotonic() + self._start_timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    return self._connect()
                if process.poll() is not None:
                    raise ConnectionError(f"it exited at start ({self._log_tail()})")
                time.sleep(0.1)
            raise TimeoutError(f"it did not start within {self._start_timeout:g}s ({self._log_tail()})")

    def _spawn(self) -> subprocess.Popen[bytes]:
        minutes = self.idle_seconds / 60
        self._notice(
            f"Loading the embedding model {self.model_name} (kept warm for the next commands, "
            f"{minutes:g} min; rag.embedding_service_idle_seconds)..."
        )
        log_file = private_file(self.data_dir / LOG_NAME)
        command = [
            sys.executable,
            "-m",
            "context_assistant.retrieval.embedding_service",
            "--socket",
            os.fspath(self._path),
            "--model",
            self._model,
            "--idle-seconds",
            str(self.idle_seconds),
        ]
        with open(log_file, "ab") as out:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # a Ctrl-C in the terminal is the command's, not the service's
                close_fds=True,
            )

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = (self.data_dir / LOG_NAME).read_text(errors="replace").strip().splitlines()
            return lines[-1] if lines else "no log"
        return "no log"

    def _local(self) -> LocalEmbedder:
        if self._fallback is None:
            self._fallback = LocalEmbedder(self._model, notice=self._notice)
        return self._fallback

    def _close(self) -> None:
        closables: list[Any] = [self._reader, self._conn]
        for closable in closables:
            if closable is not None:
                with contextlib.suppress(OSError):
                    closable.close()
        self._conn = self._reader = None


# ---------------------------------------------------------------------------------------------------------
# The service


def serve(path: Path, model: str, idle_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
    """Load the model, listen on ``path`` and answer until idle for ``idle_seconds`` (or the socket is gone)."""
    os.umask(0o077)  # the socket file is created by bind(): 0600 from the first moment
    embedder = LocalEmbedder(model)
    dimension = embedder.dimension  # load now: the first request should not wait
    encode_lock = threading.Lock()
    last_used = [clock()]
    stopping = threading.Event()

    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a service that died (the starter holds the lock)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(os.fspath(path))
    os.chmod(path, 0o600)
    server.listen(16)
    server.settimeout(TICK_SECONDS)
    inode = path.stat().st_ino
    log.info("embedding service for %s on %s (pid %d)", embedder.model_name, path, os.getpid())

    def handle(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            if not _same_user(conn):
                conn.sendall(b'{"error": "refused: another user"}\n')
                return
            for line in reader:
                last_used[0] = clock()
                try:
                    request = json.loads(line)
                    if request.get("stop"):
                        conn.sendall(b'{"stopped": true}\n')
                        stopping.set()
                        return
                    if request.get("hello"):
                        answer: dict[str, Any] = {
                            "model_name": embedder.model_name,
                            "dimension": dimension,
                            "pid": os.getpid(),
                        }
                    else:
                        texts = requested_texts(request)
                        with encode_lock:
                            answer = {"vectors": embedder.embed(texts)}
                except Exception as exc:  # one bad request never ends the service
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                conn.sendall((json.dumps(answer) + "\n").encode())
                last_used[0] = clock()

    try:
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                if clock() - last_used[0] > idle_seconds or not _still_ours(path, inode):
                    break
                continue
            conn.settimeout(None)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
    finally:
        server.close()
        if _still_ours(path, inode):
            with contextlib.suppress(OSError):
                path.unlink()


def requested_texts(request: dict[str, Any]) -> list[str]:
    """The texts of an embedding request (this service's protocol, and the web app's model process's)."""
    texts = request["texts"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError("'texts' must be a list of strings")
    return texts


def _same_user(conn: socket.socket) -> bool:
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None or not hasattr(os, "getuid"):
        return True  # the socket file's 0600 mode inside a private folder is the check there
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i")))
    return uid == os.getuid()


def _still_ours(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m context_assistant.retrieval.embedding_service")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--idle-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        serve(Path(args.socket), args.model, args.idle_seconds)
    except Exception as exc:
        log.error("embedding service failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a child process by EmbeddingServiceClient
    # Without the interpreter's teardown: with torch's threads alive it can abort ("terminate called without
    # an active exception") after the service has already closed its socket.
    fast_exit(main())


__all__ = ["EmbeddingServiceClient", "serve", "socket_path", "warm_embedder"]
