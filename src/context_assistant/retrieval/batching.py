"""Micro-batching of embedding calls across threads: the questions of concurrent turns share one model call.

On a small machine a local model is the web app's bottleneck under load: with each request thread calling the
model on its own, 20+ threads run inside it at once and every call takes ~20x as long as it does alone, while
one call for 32 questions costs ~6x one question (issue 16). :class:`BatchingEmbedder` turns concurrent small
calls into one: callers put their texts on a queue and wait; one ``embed-batcher`` thread per embedder takes
the first request, waits at most ``max_wait`` seconds (or until ``max_texts`` texts are queued) for more, makes
ONE call to the model (one per group of similar lengths: a short question is not padded to a long text's
length) and hands every caller its own vectors. A failed call fails every caller of that batch
with the model's error (each caller's texts were in it). Calls of more than ``max_texts`` texts (the index
sync, bulk re-embedding) go straight to the model: they are batches already; so do calls with a text longer
than ``max_chars`` (the turns recall indexes in the background, with their neighbours): one of them costs as
much as a batch of questions, and the questions queued behind it would wait for it. (In the web app the model
is a child process answering one call at a time, retrieval/model_process.py: there such a call still waits
for the batch before it, and the next batch for it.)

It sits under :class:`~context_assistant.retrieval.embeddings.CachingEmbedder`, so a question already embedded
(retrieval and recall of the same turn, the next turn's recall indexing) never queues.

Vectors are the model's own: a text embedded in a batch gets the vector it gets alone, up to float rounding
(different matrix shapes sum in a different order; the difference is ~1e-7, far below what changes a ranking).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # embedder_choice.py wires this module in (make_embedder); no import cycle at run time
    from .embeddings import Embedder

log = logging.getLogger(__name__)

DEFAULT_MAX_WAIT_SECONDS = 0.003
DEFAULT_MAX_TEXTS = 64
# Longer texts are not questions: a call with one goes straight to the model (one 256-token text costs as much
# as ~20 questions, and everyone queued behind it would wait).
DEFAULT_MAX_CHARS = 400
# Texts of a batch share a model call while the longest is at most factor x the shortest + slack characters.
SAME_LENGTH_FACTOR = 2
SAME_LENGTH_SLACK = 64

# One caller's texts and the future it waits on; None on the queue stops the batcher.
_Request = tuple[list[str], "Future[list[list[float]]]"]


class BatchingEmbedder:
    """An :class:`~context_assistant.retrieval.embeddings.Embedder` that batches concurrent small calls to
    ``inner`` (see the module docstring). Thread-safe; the batcher thread starts on the first small call."""

    def __init__(
        self,
        inner: Embedder,
        *,
        max_wait: float = DEFAULT_MAX_WAIT_SECONDS,
        max_texts: int = DEFAULT_MAX_TEXTS,
        max_chars: int = DEFAULT_MAX_CHARS,
        thread_setup: Callable[[], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_texts < 1:
            raise ValueError("max_texts must be at least 1")
        self.inner = inner
        self.max_wait = max(0.0, max_wait)
        self.max_texts = max_texts
        self.max_chars = max_chars
        self._thread_setup = thread_setup  # run once on the batcher thread before its first model call
        self._monotonic = monotonic
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._carry: _Request | None = None  # taken from the queue but did not fit the batch: first of the next
        self._stopping = False  # the batcher has taken the stop from the queue
        # What the batcher did (for logs, benchmarks and tests): model calls made, texts embedded through them.
        self.calls = 0
        self.texts = 0
        self.model_seconds = 0.0

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if len(texts) > self.max_texts or any(len(text) > self.max_chars for text in texts):
            # A batch already, or long texts (turns indexed for recall in the background, a pasted page): straight
            # to the model, on the caller's thread, so they never hold up the questions behind them.
            return self.inner.embed(texts)
        future: Future[list[list[float]]] = Future()
        with self._lock:
            if self._closed:
                return self.inner.embed(texts)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="embed-batcher", daemon=True)
                self._thread.start()
            self._queue.put((list(texts), future))
        return future.result()

    def close(self, timeout: float = 10.0) -> None:
        """Embed what is queued, stop the batcher thread, then close the inner embedder. Later calls go
        straight to the model."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout)
        closer = getattr(self.inner, "close", None)
        if closer is not None:
            closer()

    # -- the batcher thread

    def _run(self) -> None:
        if self._thread_setup is not None:
            try:
                self._thread_setup()
            except Exception as exc:  # a tuning step: the batcher works without it
                log.warning("embedding batcher: thread set-up failed: %s", exc)
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._embed_batch(batch)

    def _collect(self) -> list[_Request] | None:
        """The next batch: the first request, then whatever arrives within ``max_wait`` (or until the batch
        holds ``max_texts`` texts). None once the embedder is closed and every request before that is done."""
        if self._carry is not None:
            first: _Request | None = self._carry
            self._carry = None
        elif self._stopping:
            return None
        else:
            first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        count = len(first[0])
        deadline = self._monotonic() + self.max_wait
        while count < self.max_texts and not self._stopping:
            left = deadline - self._monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._stopping = True  # this batch is the last
            elif count + len(item[0]) > self.max_texts:
                self._carry = item  # the first of the next batch
                break
            else:
                batch.append(item)
                count += len(item[0])
        return batch

    def _embed_batch(self, batch: list[_Request]) -> None:
        texts = [text for request_texts, _ in batch for text in request_texts]
        try:
            vectors = self._embed_by_length(texts)
        except BaseException as exc:  # every caller of this batch hears it; the batcher goes on
            for _, future in batch:
                future.set_exception(exc)
            return
        self.texts += len(texts)
        start = 0
        for request_texts, future in batch:
            future.set_result(vectors[start : start + len(request_texts)])
            start += len(request_texts)

    def _embed_by_length(self, texts: list[str]) -> list[list[float]]:
        """One model call per group of similar lengths: a model pads every text of a call to the longest, so
        one long text (a turn indexed for recall, 256 tokens) in a call of short questions would make each
        question cost as much as it. Questions are similar in length: they stay one call."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        groups: list[list[int]] = []
        for i in order:
            if groups and len(texts[i]) <= SAME_LENGTH_FACTOR * len(texts[groups[-1][0]]) + SAME_LENGTH_SLACK:
                groups[-1].append(i)
            else:
                groups.append([i])
        vectors: list[list[float]] = [[] for _ in texts]
        for group in groups:
            started = self._monotonic()
            got = self.inner.embed([texts[i] for i in group])
            self.model_seconds += self._monotonic() - started
            if len(got) != len(group):
                raise ValueError(f"the embedding model returned {len(got)} vectors for {len(group)} texts")
            self.calls += 1
            for i, vector in zip(group, got, strict=True):
                vectors[i] = vector
        return vectors


__all__ = ["DEFAULT_MAX_TEXTS", "DEFAULT_MAX_WAIT_SECONDS", "BatchingEmbedder"]
