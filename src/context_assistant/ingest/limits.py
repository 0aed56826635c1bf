"""Parse files in a child process with a hard wall-clock and memory limit, so no file can stall or sink a run.

The old per-file limit was a SIGALRM, which only fires on a process's main thread; pysail runs ``mapInArrow``
functions on worker threads, so a 174 KB DOCX that expanded to 95 MB of XML ran for 20+ minutes at 2.3 GB and
blocked the file beside it. Now :class:`ParseChild` hands each file to a separate Python process (a fresh
interpreter running :func:`main`: no fork of a threaded server) that:

* caps its own address space with ``resource.setrlimit(RLIMIT_AS)`` (``rag.parse_memory_mb``): a parser that
  needs more gets a ``MemoryError`` (reported as the file's failure) or dies (ditto);
* is killed by the parent when one file takes longer than ``rag.parse_timeout_seconds`` of wall time; the
  file is reported as failed with that reason and a new child takes the remaining files, so a hostile file
  delays the others by at most its limit.

One child serves a whole ``mapInArrow`` partition (started on its first file), one file at a time over its
stdin/stdout (length-prefixed pickles). Where a child cannot be started (no ``resource`` module, a sandbox
without ``fork``/``exec``) parsing degrades to the calling thread with the SIGALRM limit where that works;
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

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
# parse_and_chunk's signature: (path, data, chunk_size, chunk_overlap, timeout, counter, ai_parsed) -> result
ParseFunction = Callable[..., FileResult]


def _failed(error: str) -> FileResult:
    from .plan import FAILED

    return FAILED, error, []


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
        """``parse`` is :func:`context_assistant.ingest.worker.parse_and_chunk` (the child imports it by name)."""
        self.settings = (chunk_size, chunk_overlap, counter)
        self.parse_function = parse
        self.limits = limits
        self._proc: subprocess.Popen[bytes] | None = None
        self._unavailable = not limits.isolate

    def parse(self, path: str, data: bytes, ai_parsed: str | None = None) -> FileResult:
        if not self._unavailable and self._proc is None:
            self._start()
        if self._unavailable or self._proc is None:
            return self._in_process(path, data, ai_parsed)
        proc = self._proc
        try:
            _send(proc.stdin, (path, data, ai_parsed))
            answer = _receive(proc.stdout, self.limits.seconds)
        except TimeoutError:
            self.close(kill=True)
            return _failed(f"parsing took longer than {self.limits.seconds:g}s (a pathological or huge file?)")
        except (OSError, EOFError, pickle.UnpicklingError):
            code = self.close(kill=True)
            return _failed(self._death(code))
        return answer

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
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # what this worker can import
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

    def _in_process(self, path: str, data: bytes, ai_parsed: str | None) -> FileResult:
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
    answered by the function ``target`` (``module:name``; imported before the memory limit applies)."""
    module, name = target.split(":")
    parse_and_chunk = getattr(importlib.import_module(module), name)

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
        try:
            answer = parse_and_chunk(path, data, chunk_size, chunk_overlap, 0, counter, ai_parsed)
        except MemoryError:
            answer = _failed(
                f"parsing needed more than the {memory_bytes // (1024 * 1024)} MiB parse memory limit"
            )
        del data, request
        _send(stdout, answer)


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
