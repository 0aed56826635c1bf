"""The retrieval interface both index backends implement, what the assistant codes against, and the
pieces they share.

A backend (``retrieval.pgvector.PgVectorChunkIndex``, ``retrieval.vector_search.VectorSearchIndex``) is a
:class:`ChunkIndex`:

* ``search(query, top_k=None, mode=None, path_prefix=None) -> list[Hit]`` (the :class:`Retriever` the
  assistant uses): best first. ``mode`` is one of :data:`SEARCH_MODES` (None = the configured
  ``rag.search_mode``); ``path_prefix`` keeps only chunks whose ``path`` starts with that string (a plain
  string prefix: ``teams/`` matches ``teams/a.md``). Raises :class:`RetrievalError` (e.g.
  :class:`IndexNotReady`) with a message meant for the user.
* ``refresh(source, full=False, *, progress=None) -> IndexReport``: bring the index in step with the chunk
  table. The pgvector index fills itself, reading the table through ``source`` (a
  :class:`context_assistant.retrieval.sync.ChunkSource`; ``full`` re-embeds everything; failures of single
  documents are reported, their previous chunks stay searchable; an error that stops the whole run
  raises). Vector Search reads the Delta table itself, so it takes no source (``needs_source`` is False)
  and returns its own report. :func:`context_assistant.refresh.refresh_index` calls whichever is configured.
* ``status()`` for people, and ``passage(chunk_id)``, the text of a cited chunk.

Memory recall is a :class:`Recaller` returning :class:`RecalledTurn` s.

``Hit.score`` is "higher is better" and comparable only within one result list: cosine similarity in
``vector`` mode, the BM25 score in ``keyword`` mode, the fused score in ``hybrid`` mode (``rag.fusion``: with
``convex`` a weighted mean of the cosine similarity and BM25's share of its ceiling; see :mod:`.fusion`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from ..core.config import SEARCH_MODES
from ..core.console import Progress
from ..core.errors import ContextAssistantError, InvalidInput, NotFound, Unavailable, UpstreamError

if TYPE_CHECKING:
    from .sync import ChunkSource

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


class PassageUnavailable(NotFound, RetrievalError):
    """A chunk's text cannot be shown: not in the index (any more), or not kept by this backend."""


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


@dataclass(frozen=True)
class RecalledTurn:
    """A message from one of the user's earlier sessions, found relevant to the question."""

    message_id: int
    session_id: str
    role: str
    content: str
    timestamp: datetime
    score: float  # the rank's score (hybrid: fused, min-max normalised over the candidates, so the last may be 0)
    similarity: float | None = None  # cosine similarity to the question (None: not a vector candidate)
    keyword: float | None = None  # BM25 score for the question (None: no keyword match)

    def to_json(self) -> dict[str, Any]:
        """One hit of ``recall --json`` / ``recall --batch``."""
        return {
            "message_id": self.message_id,
            "session_id": self.session_id,
            "role": self.role,
            "content": self.content,
            "timestamp": self.timestamp.isoformat(),
            "score": round(self.score, 6),
            "similarity": None if self.similarity is None else round(self.similarity, 6),
            "keyword": None if self.keyword is None else round(self.keyword, 6),
        }


@runtime_checkable
class Retriever(Protocol):
    def search(
        self, query: str, top_k: int | None = None, mode: str | None = None, path_prefix: str | None = None
    ) -> list[Hit]: ...


class IndexReport(Protocol):
    """What a refresh of either backend did: ``ok``, ``to_json()`` (the ``sync --json`` shape), ``summary()``."""

    @property
    def ok(self) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...

    def summary(self) -> str: ...


@runtime_checkable
class ChunkIndex(Retriever, Protocol):
    """A document index both backends implement (see the module docstring)."""

    needs_source: bool  # False: the index reads the chunk table itself (Vector Search Delta Sync)

    def refresh(
        self, source: ChunkSource | None = None, full: bool = False, *, progress: Progress | None = None
    ) -> IndexReport: ...

    def status(self) -> dict[str, Any]: ...

    def passage(self, chunk_id: str) -> Hit:
        """The indexed chunk ``chunk_id`` (its text for a source of an earlier answer); raises
        :class:`PassageUnavailable`."""
        ...


class Recaller(Protocol):
    """Memory recall as the assistant uses it: the user's earlier turns most relevant to a question."""

    def recall(
        self,
        user: str,
        query: str,
        top_k: int | None = None,
        exclude_session: str | None = None,
        mode: str | None = None,
    ) -> list[RecalledTurn]: ...

    def index_later(self, user: str) -> None:
        """Index the user's new turns off the turn's path (a turn calls this after storing its reply)."""


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
