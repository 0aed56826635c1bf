"""One ingest at a time per chunk table: a second run waits for the first, or stops with one clear line.

Two ``ingest`` runs at once used to both MERGE their chunks, and the loser died with a traceback (a
``SyncError`` or Spark's "Failed to commit transaction"). Now:

* **Local tables** (folders in the data folder): :func:`ingest_lock` takes an exclusive ``flock`` on
  ``.ingest.lock`` beside the chunk table before anything is read or written. A second run says who holds it
  ("another ingest (pid N, since T) is running on <folder>; waiting for it to finish") and waits; Ctrl-C
  stops the wait. The kernel releases the lock when its holder exits, even by ``kill -9``, so a crashed run
  never leaves a stale lock behind.
* **Catalog tables on Databricks**: there is no shared file system between a job, a notebook and the app,
  so Delta's own optimistic concurrency is the guard: a run whose MERGE conflicts with another's commit gets
  Delta's conflict error, which :func:`concurrent_write_error` turns into one :class:`IngestFailed` line.
  Nothing is half done: the documents table is written last, so the stopped run's work is redone (and
  converges) on the next run.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

from .tables import TableRef

LOCK_NAME = ".ingest.lock"
_CONFLICT_MARKERS = (
    "DELTA_CONCURRENT",
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "MetadataChangedException",
    "ProtocolChangedException",
    "Failed to commit transaction",
    "commit conflict",
    "version already exists",
)


def lock_path(chunks: TableRef) -> str | None:
    """The lock file of a local chunk table (in its parent folder, the data folder); None for catalog tables."""
    if chunks.location is None:
        return None
    return os.path.join(os.path.dirname(chunks.location.rstrip("/")) or ".", LOCK_NAME)


@contextlib.contextmanager
def ingest_lock(chunks: TableRef, say: Callable[[str], None]) -> Iterator[None]:
    """Hold the ingest lock of ``chunks`` for the block, waiting (with a message) while another run has it."""
    path = lock_path(chunks)
    try:
        import fcntl
    except ImportError:  # not POSIX: Delta's conflict check remains the guard
        path = None
    if path is None:
        yield
        return
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            say(f"another ingest ({holder}) is running on {os.path.dirname(path)}; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)  # Ctrl-C interrupts the wait (KeyboardInterrupt)
            say("the other ingest finished; continuing")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, since {stamp}".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def concurrent_write_error(error: BaseException) -> bool:
    """Whether ``error`` is Delta refusing a commit because another writer changed the table meanwhile."""
    text = str(error)
    return any(marker.lower() in text.lower() for marker in _CONFLICT_MARKERS)
