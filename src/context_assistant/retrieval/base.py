"""The retrieval interface every index backend implements, and the pieces they share.

A backend is a :class:`Retriever` (``search``) that can also be refreshed from the chunk table:

* ``search(query, top_k=None, mode=None, path_prefix=None) -> list[Hit]``: best first. ``mode`` is one of
  :data:`SEARCH_MODES` (None = the configured ``rag.search_mode``); ``path_prefix`` keeps only chunks whose
  ``path`` starts with that string (a plain string prefix: ``teams/`` matches ``teams/a.md``). Raises
  :class:`RetrievalError` (e.g. :class:`IndexNotReady`) with a message meant for the user.
* refresh: :class:`ChunkIndex` ``refresh(source, full=False) -> SyncResult`` for indexes we fill ourselves
  (``retrieval.pgvector.PgVectorChunkIndex``): bring the index in step with the chunk table read through
  ``source`` (a :class:`context_assistant.retrieval.sync.ChunkSource`); ``full`` re-embeds everything. Failures of
  single documents are reported in ``SyncResult.failed`` (their previous chunks stay searchable); an error
  that stops the whole run raises. Databricks Vector Search (``retrieval.vector_search.VectorSearchIndex``)
  reads the Delta table itself, so its ``refresh(full=False)`` takes no source and returns its own report;
  :func:`context_assistant.retrieval.sync.refresh_index` calls whichever the configured backend has.

``Hit.score`` is "higher is better" and comparable only within one result list: cosine similarity in
``vector`` mode, the BM25 score in ``keyword`` mode, the reciprocal-rank-fusion score in ``hybrid`` mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from ..core.errors import ContextAssistantError, InvalidInput, Unavailable, UpstreamError

if TYPE_CHECKING:
    from .sync import ChunkSource, SyncResult

SEARCH_MODES = ("vector", "keyword", "hybrid")
RRF_K = 60  # the constant from Cormack et al. (2009); it damps the weight of the very top ranks
KNOWN_FILTERS = ("path_prefix",)

K = TypeVar("K")


class RetrievalError(ContextAssistantError):
    """A search could not run as asked (an empty query, an unknown mode); ``str()`` is one line for the user.

    Raised as it is, the request was at fault (its HTTP status and kind are :class:`InvalidInput`'s); the
    subclasses below say when the index or a service is.
    """

    http_status = InvalidInput.http_status
    kind = InvalidInput.kind


class IndexNotReady(Unavailable, RetrievalError):
    """The index is missing, or was built with another embedding model: run ``context-assistant sync``."""

    retryable = False  # not until someone runs the sync


class RetrievalFailed(UpstreamError, RetrievalError):
    """A service the search needs (the embedding model, Vector Search) failed."""


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    path: str
    heading: str
    page: int | None
    text: str
    score: float

    def to_json(self) -> dict[str, Any]:
        """The shape of one hit in ``search --json`` and ``search --batch`` output."""
        return {
            "chunk_id": self.chunk_id,
            "path": self.path,
            "heading": self.heading,
            "page": self.page,
            "text": self.text,
            "score": round(self.score, 6),
        }


@runtime_checkable
class Retriever(Protocol):
    def search(
        self, query: str, top_k: int | None = None, mode: str | None = None, path_prefix: str | None = None
    ) -> list[Hit]: ...


@runtime_checkable
class ChunkIndex(Retriever, Protocol):
    def refresh(self, source: ChunkSource, full: bool = False) -> SyncResult: ...


def check_mode(mode: str) -> str:
    if mode not in SEARCH_MODES:
        raise RetrievalError(f"search mode {mode!r} is not one of {', '.join(SEARCH_MODES)}")
    return mode


def check_query(query: str) -> str:
    if not isinstance(query, str) or not query.strip():
        raise RetrievalError("the query is empty")
    return query


def retrieve(
    retriever: Retriever,
    query: str,
    top_k: int | None = None,
    filters: Mapping[str, Any] | None = None,
    mode: str | None = None,
) -> list[Hit]:
    """``retriever.search`` with filters given as a mapping (``{"path_prefix": "teams/"}``)."""
    filters = dict(filters or {})
    unknown = sorted(set(filters) - set(KNOWN_FILTERS))
    if unknown:
        raise RetrievalError(f"unknown filter(s): {', '.join(unknown)}; known: {', '.join(KNOWN_FILTERS)}")
    return retriever.search(query, top_k=top_k, mode=mode, path_prefix=filters.get("path_prefix") or None)


def rrf_fuse(rankings: Iterable[Sequence[K]], k: int = RRF_K) -> list[tuple[K, float]]:
    """Reciprocal rank fusion: each key scores ``sum(1 / (k + rank))`` over the lists it appears in (rank
    from 1); best first, ties broken by the order of first appearance (so the first list wins ties)."""
    scores: dict[K, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    order = {key: i for i, key in enumerate(scores)}
    return sorted(scores.items(), key=lambda item: (-item[1], order[item[0]]))


def candidate_count(top_k: int) -> int:
    """How many candidates each side of a hybrid search contributes before fusion."""
    return max(50, 4 * top_k)
