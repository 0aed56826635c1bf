"""Parse files in a child process with a hard wall-clock and memory limit, so no file can stall or sink a run.

The old per-file limit was a SIGALRM, which only fires on a process's main thread; pysail runs ``mapInArrow``
functions on worker threads, so a 174 KB DOCX that expanded to 95 MB of XML ran for 20+ minutes at 2.3 GB and
blocked the file beside it. Now :class:`ParseChild` hands each file to a separate Python process (a fresh
interpreter running :func:`main`: no fork of a threaded server) that:

* caps its own address space with ``resource.setrlimit(RLIMIT_AS)`` (``rag.parse_memory_mb``): a parser that
  needs more gets a ``MemoryError`` (reported as the file's failure) or dies (ditto);
* is killed by the parent when one file takes longer than ``rag.parse_timeout_seconds`` of wall time spent
  waiting for it (time Spark spends taking a group of chunks does not count); the file is reported as failed
  with that reason and a new child takes the remaining files, so a hostile file delays the others by at most
  its limit.

One child serves a whole ``mapInArrow`` partition (started on its first file), one file at a time over its
stdin/stdout (length-prefixed pickles). A file's chunks come back as they are cut, in groups of bounded size
ending with the file's :class:`FileOutcome` (:meth:`ParseChild.stream`), so neither process ever holds all
the chunks of a big file: the pipe's back-pressure keeps the child at most a group or two ahead of Spark.
Where a child cannot be started (no ``resource`` module, a sandbox without ``fork``/``exec``) parsing degrades to the calling thread with the SIGALRM limit where that works;
where ``RLIMIT_AS`` cannot be set, the wall-clock limit still holds. Pure standard library, so it behaves the
same on Databricks' Linux workers as here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from ..core.processes import child_python_env

if TYPE_CHECKING:
    from .tokenization import TokenCounter

log = logging.getLogger(__name__)

DEFAULT_PARSE_SECONDS = 300.0
DEFAULT_PARSE_MEMORY_BYTES = 2048 * 1024 * 1024
_HEADER = struct.Struct("!Q")
_READY = "ready"
_START_SECONDS = 120.0  # a child that has not imported the parsers by then is treated as unable to start


@dataclass(frozen=True)
class ParseLimits:
    """Per-file limits of parsing; ``isolate=False`` parses in the calling thread (tests of the parser only)."""

    seconds: float = DEFAULT_PARSE_SECONDS
    memory_bytes: int = DEFAULT_PARSE_MEMORY_BYTES
    isolate: bool = True


FileResult = tuple[str, "str | None", list]


@dataclass(frozen=True)
class FileOutcome:
    """The last message about a file: ``status`` ok/failed, the reason, how many chunks were sent before it
    (a failed file's earlier chunks are to be discarded)."""

    status: str
    error: str | None
    chunk_count: int


# What a file's stream yields: groups of chunks (lists), then exactly one FileOutcome.
# worker.parse_in_groups: (path, data, chunk_size, chunk_overlap, timeout, counter, ai_parsed) -> events
ParseFunction = Callable[..., Iterator[Any]]


def _failed(error: str) -> FileOutcome:
    from .plan import FAILED

    return FileOutcome(FAILED, error, 0)


class ParseChild:
    """A parent's handle on one parse child; :meth:`parse` never raises for a bad file, never waits longer
    than the limit for one, and restarts the child after it was killed or died."""

    def __init__(
        self,
        chunk_size: int,
        chunk_overlap: int,
        counter: TokenCounter | None,
        limits: ParseLimits,
        parse: ParseFunction,
    ) -> None:
        """``parse`` is :func:`context_assistant.ingest.worker.parse_in_groups` (the child imports it by name)."""
        self.settings = (chunk_size, chunk_overlap, counter)
        self.parse_function = parse
        self.limits = limits
        self._proc: subprocess.Popen[bytes] | None = None
        self._unavailable = not limits.isolate

    def parse(self, path: str, data: bytes, ai_parsed: str | None = None) -> FileResult:
        """The whole file at once, ``(status, error, chunks)``: :meth:`stream` gathered (small files, tests)."""
        from .plan import OK

        chunks: list[Any] = []
        for event in self.stream(path, data, ai_parsed):
            if isinstance(event, FileOutcome):
                return event.status, event.error, chunks if event.status == OK else []
            chunks.extend(event)
        raise AssertionError("a file's stream ends with its outcome")  # pragma: no cover

    def stream(self, path: str, data: bytes, ai_parsed: str | None = None) -> Iterator[Any]:
        """Groups of the file's chunks as the child cuts them, then its :class:`FileOutcome` (always last)."""
        if not self._unavailable and self._proc is None:
            self._start()
        if self._unavailable or self._proc is None:
            yield from self._in_process(path, data, ai_parsed)
            return
        proc = self._proc
        budget = self.limits.seconds if self.limits.seconds > 0 else None
        finished = False
        try:
            _send(proc.stdin, (path, data, ai_parsed))
            del data  # the caller may drop its copy while the chunks stream
            while not finished:
                waited = time.monotonic()
                event = _receive(proc.stdout, budget)
                if budget is not None:
                    budget = max(budget - (time.monotonic() - waited), 1e-3)
                finished = isinstance(event, FileOutcome)
                yield event
        except TimeoutError:
            self.close(kill=True)
            yield _failed(f"parsing took longer than {self.limits.seconds:g}s (a pathological or huge file?)")
        except (OSError, EOFError, pickle.UnpicklingError):
            code = self.close(kill=True)
            yield _failed(self._death(code))
        finally:
            if not finished and self._proc is proc:  # abandoned mid-file: the pipe holds the rest of it
                self.close(kill=True)

    def close(self, kill: bool = False) -> int | None:
        """Stop the child (politely unless ``kill``); returns its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if kill:
            with contextlib.suppress(OSError):
                proc.kill()
        else:
            with contextlib.suppress(OSError):
                _send(proc.stdin, None)
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def _death(self, code: int | None) -> str:
        limit = self.limits.memory_bytes // (1024 * 1024)
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by {name}"
        else:
            how = f"exited with code {code}"
        return (
            f"the parser process {how} on this file (over the {limit} MiB parse memory limit, or a parser crash)"
        )

    def _start(self) -> None:
        env = child_python_env()  # what this worker can import
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"from {__name__} import main; main()",
                    str(self.limits.memory_bytes),
                    f"{self.parse_function.__module__}:{self.parse_function.__qualname__}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        except OSError as error:
            log.warning("cannot start a parse process (%s); parsing in the worker without a memory limit", error)
            self._unavailable = True
            return
        self._proc = proc
        try:
            _send(proc.stdin, self.settings, by_value=True)
            hello = _receive(proc.stdout, _START_SECONDS)
        except (OSError, EOFError, TimeoutError, pickle.UnpicklingError):
            hello = None
        if hello != _READY:
            log.warning("the parse process did not start; parsing in the worker without a memory limit")
            self.close(kill=True)
            self._unavailable = True

    def _in_process(self, path: str, data: bytes, ai_parsed: str | None) -> Iterator[Any]:
        chunk_size, chunk_overlap, counter = self.settings
        return self.parse_function(path, data, chunk_size, chunk_overlap, self.limits.seconds, counter, ai_parsed)

    def __enter__(self) -> ParseChild:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self.close(kill=kind is not None)  # interrupted (Ctrl-C, a cancelled Spark task): do not wait for it


def _send(stream: IO[bytes] | None, value: Any, by_value: bool = False) -> None:
    """Write one message. ``by_value``: with cloudpickle (as Spark ships the UDF), for the token counter, whose
    class may live where the child cannot import it (a notebook, a test module)."""
    assert stream is not None
    dumps: Callable[..., bytes] = pickle.dumps
    if by_value:
        with contextlib.suppress(ImportError):
            from pyspark import cloudpickle

            dumps = cloudpickle.dumps
    payload = dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _receive(stream: IO[bytes] | None, seconds: float | None) -> Any:
    """One message from ``stream``; ``TimeoutError`` when it has not fully arrived within ``seconds``."""
    assert stream is not None
    fd = stream.fileno()
    deadline = None if seconds is None or seconds <= 0 else time.monotonic() + seconds

    def read(count: int) -> bytes:
        parts: list[bytes] = []
        while count:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise TimeoutError
            part = os.read(fd, min(count, 1 << 20))
            if not part:
                raise EOFError
            parts.append(part)
            count -= len(part)
        return b"".join(parts)

    (size,) = _HEADER.unpack(read(_HEADER.size))
    return pickle.loads(read(size))


def _limit_memory(memory_bytes: int) -> None:
    try:
        import resource
    except ImportError:  # not POSIX: the wall-clock limit still holds
        return
    with contextlib.suppress(ValueError, OSError):
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def serve(memory_bytes: int, stdin: IO[bytes], stdout: IO[bytes], target: str) -> None:
    """The child's loop: settings, then one ``(path, data, ai_parsed)`` per request until ``None``, each
    answered by the events of the function ``target`` (``module:name``; imported before the memory limit
    applies): groups of chunks, sent as they come, then the file's :class:`FileOutcome`."""
    module, name = target.split(":")
    parse_in_groups = getattr(importlib.import_module(module), name)

    chunk_size, chunk_overlap, counter = _receive(stdin, None)
    _limit_memory(memory_bytes)
    _send(stdout, _READY)
    while True:
        try:
            request = _receive(stdin, None)
        except EOFError:
            return
        if request is None:
            return
        path, data, ai_parsed = request
        del request
        events = parse_in_groups(path, data, chunk_size, chunk_overlap, 0, counter, ai_parsed)
        del data  # the parser holds what it still needs
        try:
            for event in events:
                _send(stdout, event)
                if isinstance(event, FileOutcome):
                    break
                del event
        except MemoryError:
            _send(
                stdout,
                _failed(f"parsing needed more than the {memory_bytes // (1024 * 1024)} MiB parse memory limit"),
            )
        del events


def _exit_with_parent(parent: int) -> None:
    """Die when the parent does (a Spark worker killed with ``kill -9``), even while stuck in a parser."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    """The child process's entry point (``python -c``): serve on stdin/stdout with the limit in argv[1]."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us if need be
    _exit_with_parent(os.getppid())
    serve(int(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer, sys.argv[2])
