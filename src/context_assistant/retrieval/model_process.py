"""The web app's local embedding model, run in a child process of its own.

Why: in one process the model and the requests share one GIL. Under load (32 clients on 2 cores) the app
process could not use more than about one core, and the batcher's model calls, which hold the GIL between
torch operators, took ~190 ms for a batch of 13 questions that costs ~45 ms alone. With the model in a child
(one torch thread, fed by the batcher of retrieval/batching.py), the same benchmark went from ~66 to ~86 req/s
and the app's own CPU per request from ~13 to ~6 ms (README, Performance).

* Protocol: one JSON document per line. The child starts by loading the model and writing ``{"model_name",
  "dimension", "pid"}``; then each ``{"texts": [...]}`` on its stdin gets ``{"shape": [n, d], "f8": "..."}``
  (the exact floats the model gave, as base64 of little-endian doubles: 384 floats written and read as JSON
  text cost each process ~0.3 ms a vector, ~2% of the app's CPU under load) or
  ``{"error": "..."}``. End of input ends it, so the child never outlives its parent, however the parent ends.
* Threads: one torch thread for a call of up to :data:`SMALL_CALL` texts (questions, a recalled turn), torch's
  default for a bigger one (a document refresh started from the web app).
* Failure: a child that dies is started again for the next call; one that cannot be started (or dies again at
  once) is replaced by the model in this process, with a warning: nothing fails because the child is missing.
  A call that the model itself refuses comes back as :class:`EmbeddingError`, and the child goes on.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

import numpy as np

from ..core.interrupts import fast_exit
from ..core.processes import child_python_env
from .embedding_service import requested_texts
from .embeddings import EmbeddingError, LocalEmbedder, one_model_thread, resolve_local_model, validate_vectors

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 180.0  # importing torch and loading the model on a busy 2-core machine
CALL_TIMEOUT_SECONDS = 300.0  # a refresh's biggest call, at torch's default threads
SMALL_CALL = 64  # texts: up to this many run on one torch thread (rag.embedding_batch_max_texts' default)


class _ChildGone(Exception):
    """The child exited, closed its pipes or did not answer in time."""


class ModelProcessEmbedder:
    """An :class:`~context_assistant.retrieval.embeddings.Embedder` whose local model runs in a child process.

    Calls are answered one at a time (the child runs one model call at a time anyway); the child is started on
    the first call (the app's warm-up makes that call at start-up)."""

    def __init__(
        self,
        model: str,
        *,
        start_timeout: float = START_TIMEOUT_SECONDS,
        call_timeout: float = CALL_TIMEOUT_SECONDS,
        command: Sequence[str] | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.model_name, _ = resolve_local_model(model)  # names and the file system only: nothing is loaded
        self._model = model
        self._start_timeout = start_timeout
        self._call_timeout = call_timeout
        self._command = list(command or [sys.executable, "-m", __name__, "--model", model])
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._dimension: int | None = None
        self._fallback: LocalEmbedder | None = None
        self._notice = notice  # told once, before the first (slow) start
        self.starts = 0  # children started, for tests and the benchmark's probe

    @property
    def dimension(self) -> int:
        with self._lock:
            if self._fallback is None:
                try:
                    self._running()
                except _ChildGone as exc:
                    self._fall_back(str(exc))
                else:
                    assert self._dimension is not None
                    return self._dimension
            assert self._fallback is not None
            return self._fallback.dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        request = {"texts": list(texts)}
        with self._lock:
            for attempt in (1, 2):
                if self._fallback is not None:
                    break
                try:
                    answer = self._ask(self._running(), request)
                except _ChildGone as exc:
                    self._stop()
                    if attempt == 1 and self._dimension is not None:  # it had started: start it again
                        log.warning("the embedding model process stopped (%s); starting it again", exc)
                        continue
                    self._fall_back(str(exc))
                    break
                if "error" in answer:
                    raise EmbeddingError(f"local model {self.model_name!r} failed: {answer['error']}")
                return validate_vectors(
                    decode_vectors(answer, self.model_name),
                    len(texts),
                    self._dimension,
                    f"local model {self.model_name!r}",
                )
            assert self._fallback is not None
        return self._fallback.embed(texts)

    def close(self) -> None:
        """End the child (end of input, then a kill if it does not go) and wait for it."""
        with self._lock:
            self._stop()

    # -- the child

    def _running(self) -> subprocess.Popen[bytes]:
        if self._child is not None:
            code = self._child.poll()
            if code is None:
                return self._child
            log.warning(
                "the embedding model process exited (code %s) since the last call; starting it again", code
            )
        self._stop()
        try:
            child = subprocess.Popen(
                self._command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=child_python_env(),
                start_new_session=True,  # a Ctrl-C in the terminal is the app's to handle, not the child's
                close_fds=True,
            )
        except OSError as exc:
            raise _ChildGone(f"could not start {self._command[0]}: {exc}") from exc
        self._child = child
        if self.starts == 0 and self._notice is not None:
            self._notice(f"Loading the embedding model {self.model_name} (in a child process)...")
        self.starts += 1
        try:
            hello = self._read(child, self._start_timeout, "loading the model")
            self._dimension = int(hello["dimension"])
        except _ChildGone:
            self._stop()  # a child that hangs or exits is ended, not left behind
            raise
        except (KeyError, TypeError, ValueError) as exc:
            self._stop()
            raise _ChildGone(f"its hello was not understood: {exc!r}") from exc
        return child

    def _ask(self, child: subprocess.Popen[bytes], request: dict[str, Any]) -> dict[str, Any]:
        assert child.stdin is not None
        try:
            child.stdin.write(json.dumps(request).encode() + b"\n")
            child.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise _ChildGone(f"it stopped reading ({exc})") from exc
        return self._read(child, self._call_timeout, "embedding")

    def _read(self, child: subprocess.Popen[bytes], timeout: float, doing: str) -> dict[str, Any]:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], timeout)
        line = child.stdout.readline() if ready else b""
        if not line:
            if not ready:
                raise _ChildGone(f"no answer within {timeout:g} s while {doing}")
            code = child.wait(10)
            raise _ChildGone(f"it exited with code {code} while {doing} (its messages are in the app's log)")
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError as exc:
            raise _ChildGone(f"it answered something other than JSON: {line[:80]!r}") from exc
        return answer

    def _stop(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        for stream in (child.stdin, child.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)

    def _fall_back(self, why: str) -> None:
        log.warning(
            "the embedding model process is not available (%s): loading %s in this process instead",
            why,
            self.model_name,
        )
        one_model_thread()  # as the child would: requests and the model share this process's cores
        self._fallback = LocalEmbedder(self._model, notice=self._notice)


# ---------------------------------------------------------------------------------------------------------
# The child


def encode_vectors(vectors: Sequence[Sequence[float]]) -> dict[str, Any]:
    """The child's answer for a call: the vectors' shape and their doubles, base64 (see the protocol above)."""
    array = np.asarray(vectors, dtype="<f8")
    return {"shape": list(array.shape), "f8": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_vectors(answer: dict[str, Any], model_name: str) -> list[list[float]]:
    """The vectors of an answer from :func:`encode_vectors`."""
    try:
        array = np.frombuffer(base64.b64decode(answer["f8"], validate=True), dtype="<f8")
        vectors: list[list[float]] = array.reshape([int(n) for n in answer["shape"]]).tolist()
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise EmbeddingError(
            f"local model {model_name!r}: its process answered vectors that cannot be read ({exc}); "
            "this is a bug, please report it"
        ) from exc
    return vectors


def serve(model: str, source: IO[bytes], sink: IO[bytes]) -> None:
    """Load ``model``, say hello on ``sink``, then answer each line of ``source`` until it ends (or until
    nobody reads the answers: an app stopped in the middle of a call is a normal end, not a failure)."""
    import torch

    embedder = LocalEmbedder(model)
    default_threads = torch.get_num_threads()
    hello = {"model_name": embedder.model_name, "dimension": embedder.dimension, "pid": os.getpid()}
    sink.write(json.dumps(hello).encode() + b"\n")
    sink.flush()
    for line in source:
        try:
            texts = requested_texts(json.loads(line))
            torch.set_num_threads(1 if len(texts) <= SMALL_CALL else default_threads)
            answer: dict[str, Any] = encode_vectors(embedder.embed(texts))
        except Exception as exc:  # one bad call never ends the child
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            sink.write(json.dumps(answer).encode() + b"\n")
            sink.flush()
        except BrokenPipeError:  # the app ended while this call was in flight: nobody is waiting for it
            return


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it by closing its input
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The protocol gets the real stdout; anything a library prints goes to stderr (the app's log) instead.
    sink = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        serve(args.model, sys.stdin.buffer, sink)
    except Exception as exc:
        log.error("the embedding model process failed: %s: %s", type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a child process by ModelProcessEmbedder
    # Without the interpreter's teardown: with torch's threads alive it can abort after the answers are out.
    fast_exit(main())


__all__ = ["ModelProcessEmbedder", "serve"]
