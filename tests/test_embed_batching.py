"""Micro-batching of embedding calls (retrieval/batching.py): concurrent callers share one model call.

Real threads throughout. Batches are made deterministic without timing: the model's first call is held open
(a gate) while the other callers queue, so when it is released the queued callers must form the next call.
The vectors are compared with the real all-MiniLM-L6-v2 model's unbatched ones.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from context_assistant.core.config import RagConfig
from context_assistant.retrieval.batching import BatchingEmbedder
from context_assistant.retrieval.embedder_choice import make_embedder
from context_assistant.retrieval.embeddings import CachingEmbedder, EmbeddingError, LocalEmbedder
from context_assistant.retrieval.model_process import ModelProcessEmbedder
from retrieval_support import HashingEmbedder, minilm  # noqa: F401
from web_support import wait_for


class GatedModel:
    """Wraps an embedder: records each call (texts, thread); the first call waits for ``release`` (so the
    callers that come meanwhile queue), and a call may be told to fail."""

    def __init__(self, inner: Any, fail_call: int | None = None) -> None:
        self.inner = inner
        self.calls: list[tuple[list[str], str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_call = fail_call
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return str(self.inner.model_name)

    @property
    def dimension(self) -> int:
        return int(self.inner.dimension)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            self.calls.append((list(texts), threading.current_thread().name))
            number = len(self.calls)
        if number == 1:
            self.entered.set()
            assert self.release.wait(60), "the test never released the first call"
        if number == self.fail_call:
            raise EmbeddingError("the model failed (test)")
        return list(self.inner.embed(texts))


def queue_behind_first_call(batcher: BatchingEmbedder, model: GatedModel, texts: list[str]) -> list[Any]:
    """Call 1 embeds "first" and is held; then one caller per text queues; returns their futures (plus the
    first's at index 0) once every caller is waiting in the queue."""
    pool = ThreadPoolExecutor(len(texts) + 1)
    futures = [pool.submit(batcher.embed, ["first"])]
    assert model.entered.wait(60)
    futures += [pool.submit(batcher.embed, [text]) for text in texts]
    wait_for(lambda: batcher._queue.qsize() == len(texts), "every caller to queue")
    model.release.set()
    pool.shutdown(wait=False)
    return futures


def test_concurrent_callers_share_one_model_call_and_get_their_own_vectors() -> None:
    model = GatedModel(HashingEmbedder())
    batcher = BatchingEmbedder(model, max_wait=0.001, max_texts=64)
    texts = [f"question number {i} about deploys" for i in range(12)]
    futures = queue_behind_first_call(batcher, model, texts)
    results = [f.result(60) for f in futures]

    assert len(model.calls) == 2  # the held call, then ONE call for all twelve queued callers
    assert sorted(model.calls[1][0]) == sorted(texts) and model.calls[1][1] == "embed-batcher"
    reference = HashingEmbedder()
    for text, (vector,) in zip(["first", *texts], results, strict=True):
        assert vector == reference.embed([text])[0]  # each caller its own vector, not a neighbour's
    assert batcher.calls == 2 and batcher.texts == 13
    batcher.close()


def test_a_failed_model_call_reaches_every_caller_of_that_batch_and_the_batcher_goes_on() -> None:
    model = GatedModel(HashingEmbedder(), fail_call=2)
    batcher = BatchingEmbedder(model, max_wait=0.001)
    texts = ["alpha", "beta", "gamma", "delta"]
    futures = queue_behind_first_call(batcher, model, texts)

    assert futures[0].result(60) == HashingEmbedder().embed(["first"])
    for future in futures[1:]:
        with pytest.raises(EmbeddingError, match="the model failed"):
            future.result(60)
    assert len(model.calls) == 2 and sorted(model.calls[1][0]) == sorted(texts)
    # The next call is a new batch and works.
    assert batcher.embed(["epsilon"]) == HashingEmbedder().embed(["epsilon"])
    batcher.close()


def test_a_batch_never_exceeds_max_texts_and_large_calls_bypass_the_queue() -> None:
    model = GatedModel(HashingEmbedder())
    batcher = BatchingEmbedder(model, max_wait=0.001, max_texts=4)
    pool = ThreadPoolExecutor(4)
    held = pool.submit(batcher.embed, ["first"])
    assert model.entered.wait(60)
    # A sync-sized call goes straight to the model on its own thread, even while the batcher is busy.
    big = [f"chunk {i}" for i in range(5)]
    assert batcher.embed(big) == HashingEmbedder().embed(big)
    assert model.calls[1] == (big, threading.current_thread().name)
    # Callers of 3 + 3 texts queue: they do not fit one batch of 4, so they are two model calls.
    a = pool.submit(batcher.embed, ["a1", "a2", "a3"])
    b = pool.submit(batcher.embed, ["b1", "b2", "b3"])
    wait_for(lambda: batcher._queue.qsize() == 2, "both callers to queue")
    model.release.set()
    assert a.result(60) == HashingEmbedder().embed(["a1", "a2", "a3"])
    assert b.result(60) == HashingEmbedder().embed(["b1", "b2", "b3"])
    held.result(60)
    assert sorted(len(texts) for texts, _ in model.calls[2:]) == [3, 3]
    pool.shutdown()
    batcher.close()


def test_close_embeds_what_is_queued_and_later_calls_go_straight_to_the_model() -> None:
    model = GatedModel(HashingEmbedder())
    batcher = BatchingEmbedder(model, max_wait=0.001)
    futures = queue_behind_first_call(batcher, model, ["queued"])
    batcher.close()
    assert [f.result(60) for f in futures] == [
        HashingEmbedder().embed(["first"]),
        HashingEmbedder().embed(["queued"]),
    ]
    assert batcher.embed(["after"]) == HashingEmbedder().embed(["after"])
    assert model.calls[-1][1] == threading.current_thread().name
    assert batcher.embed([]) == []


def test_make_embedder_batches_a_local_model_under_the_cache() -> None:
    assert isinstance(make_embedder(RagConfig()).inner, LocalEmbedder)  # only a serving process batches
    embedder = make_embedder(RagConfig(), serving=True)
    assert isinstance(embedder, CachingEmbedder) and isinstance(embedder.inner, BatchingEmbedder)
    assert isinstance(embedder.inner.inner, ModelProcessEmbedder)  # test_model_process
    assert embedder.inner.max_wait == pytest.approx(0.003) and embedder.inner.max_texts == 64
    off = make_embedder(RagConfig(embedding_batch_wait_ms=0), serving=True)
    assert isinstance(off, CachingEmbedder) and isinstance(off.inner, ModelProcessEmbedder)


def test_a_cached_question_never_reaches_the_batcher() -> None:
    model = GatedModel(HashingEmbedder())
    model.release.set()
    batcher = BatchingEmbedder(model, max_wait=0.001)
    cached = CachingEmbedder(batcher)
    first = cached.embed(["How long is data retained?"])
    assert cached.embed(["How long is data retained?"]) == first
    assert len(model.calls) == 1 and batcher.calls == 1
    cached.close()


def test_minilm_vectors_of_a_batch_equal_the_unbatched_ones(minilm: LocalEmbedder) -> None:  # noqa: F811
    """The real model: twelve concurrent questions in one batched call get the vectors each gets alone (up
    to float rounding: a batch sums in another order)."""
    questions = [
        "When does the on-call rotation hand over?",
        "How long is data retained?",
        "Who has to review a production deploy?",
        "What is in the architecture overview?",
        "How do I request a new laptop?",
        "What does the glossary say about SLAs?",
        "Which days can we deploy to production?",
        "What happens when a page is not acknowledged?",
        "Is there a freeze before holidays?",
        "Where are the runbooks kept?",
        "Who approves access to production data?",
        "ok",
    ]
    alone = {q: np.array(minilm.embed([q])[0]) for q in ["first", *questions]}
    model = GatedModel(minilm)
    batcher = BatchingEmbedder(model, max_wait=0.001)
    futures = queue_behind_first_call(batcher, model, questions)
    results = [f.result(120)[0] for f in futures]
    assert len(model.calls) == 2 and len(model.calls[1][0]) == len(questions)
    for question, vector in zip(["first", *questions], results, strict=True):
        np.testing.assert_allclose(vector, alone[question], atol=1e-5)
        assert float(np.dot(vector, alone[question])) > 0.99999
    batcher.close()


def test_long_texts_bypass_the_queue_and_the_thread_setup_runs_on_the_batcher() -> None:
    """A turn indexed for recall (hundreds of characters) would cost the questions queued behind it as much
    as a batch of them: it goes straight to the model. The set-up hook (one torch thread) runs on the batcher."""
    model = GatedModel(HashingEmbedder())
    ran_on: list[str] = []
    batcher = BatchingEmbedder(
        model, max_wait=0.001, thread_setup=lambda: ran_on.append(threading.current_thread().name)
    )
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(batcher.embed, ["first"])
        assert model.entered.wait(60)
        long_text = "an earlier turn with its neighbours " * 20
        assert batcher.embed([long_text]) == HashingEmbedder().embed([long_text])
        assert model.calls[1] == ([long_text], threading.current_thread().name)
        model.release.set()
        held.result(60)
    assert ran_on == ["embed-batcher"]
    batcher.close()
