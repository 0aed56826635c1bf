"""Fusing a vector ranking and a keyword (BM25) ranking into one hybrid ranking.

Two learned-free methods (``rag.fusion``):

* ``rrf`` -- reciprocal rank fusion (Cormack et al. 2009): ``sum(1 / (60 + rank))``. Uses ranks only, so it
  throws away how *much* better the first hit is than the tenth; when one side is much weaker than the other
  on a corpus it drags the fused ranking towards it.
* ``convex`` (default) -- a convex combination of normalised scores (Bruch et al., "An Analysis of Fusion
  Functions for Hybrid Retrieval", 2023): each side's scores are min-max normalised over its own candidate
  list, a candidate missing from one list gets 0 for that side, and ``fused = w * vector + (1 - w) * bm25``
  with ``w = rag.hybrid_weight``. Keeping score gaps is what makes it track the better side of each query
  rather than average the two sides' ranks.

Both return ``(key, score)`` best first, ties broken by first appearance (vector list first).

**Document-aware fusion** (``rag.document_fusion``, on by default; :func:`fuse_by_document`): a document cut
into several chunks often matches the question's *meaning* best in one chunk and its *words* best in another;
chunk by chunk, each of those two chunks gets only one side's evidence and the document falls behind a
one-chunk document that has both. So a document's evidence on each side is its best chunk's score there
(the usual "document = its best passage" rule, applied per side), and the document's best chunk carries that
document-level fused score; its other chunks keep their own, which is never higher. One passage per document
moves; the list is still chunks (what a turn quotes), and a one-chunk document scores exactly as before.
Convex fusion only (``rrf`` is left as it is).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

from psycopg import sql

from ..core.config import FUSIONS
from ..core.errors import ConfigError
from .base import rrf_fuse

K = TypeVar("K")
D = TypeVar("D", bound=Hashable)
DEFAULT_WEIGHT = 0.5


def _normalised(ranked: Sequence[tuple[K, float]]) -> dict[K, float]:
    if not ranked:
        return {}
    scores = [score for _, score in ranked]
    low, high = min(scores), max(scores)
    if high == low:
        return {key: 1.0 for key, _ in ranked}
    return {key: (score - low) / (high - low) for key, score in ranked}


def convex_fuse(
    vector: Sequence[tuple[K, float]], keyword: Sequence[tuple[K, float]], weight: float = DEFAULT_WEIGHT
) -> list[tuple[K, float]]:
    """``weight * minmax(vector) + (1 - weight) * minmax(keyword)``; absent from a list counts 0 there."""
    v, k = _normalised(vector), _normalised(keyword)
    keys = list(dict.fromkeys([*(key for key, _ in vector), *(key for key, _ in keyword)]))
    first = {key: i for i, key in enumerate(keys)}
    fused = [(key, weight * v.get(key, 0.0) + (1 - weight) * k.get(key, 0.0)) for key in keys]
    return sorted(fused, key=lambda item: (-item[1], first[item[0]]))


def fuse(
    vector: Sequence[tuple[K, float]],
    keyword: Sequence[tuple[K, float]],
    method: str = "convex",
    weight: float = DEFAULT_WEIGHT,
) -> list[tuple[K, float]]:
    """Hybrid ranking of two ``(key, score)`` lists (best first) by ``method`` (see the module docstring)."""
    if method == "rrf":
        return rrf_fuse([[key for key, _ in vector], [key for key, _ in keyword]])
    if method == "convex":
        return convex_fuse(vector, keyword, weight)
    raise ConfigError(f"rag.fusion: {method!r} is not one of {', '.join(FUSIONS)}")


def fuse_by_document(
    vector: Sequence[tuple[K, float]],
    keyword: Sequence[tuple[K, float]],
    document_of: Callable[[K], D],
    method: str = "convex",
    weight: float = DEFAULT_WEIGHT,
) -> list[tuple[K, float]]:
    """Like :func:`fuse`, but each document's best chunk is scored with the document's evidence: per side,
    the best normalised score of any of its chunks; see the module docstring. Convex fusion only: ``rrf``
    returns :func:`fuse`'s ranking unchanged (ranks carry no per-side evidence; lifting by document ranks
    measured worse on SciFact).

    ``document_of`` maps a key (chunk) to its document (e.g. its path). Other chunks keep their own fused
    score, which is at most their document's, so ranking documents by their best chunk is document-level
    fusion, while a passage that matched neither side stays where it was.
    """
    own = fuse(vector, keyword, method, weight)
    if method != "convex" or not own:  # rrf: ranks carry no per-side evidence to lift (and measured worse)
        return own
    v, k = _normalised(vector), _normalised(keyword)
    best_v: dict[D, float] = {}
    best_k: dict[D, float] = {}
    for key, score in v.items():
        doc = document_of(key)
        best_v[doc] = max(best_v.get(doc, 0.0), score)
    for key, score in k.items():
        doc = document_of(key)
        best_k[doc] = max(best_k.get(doc, 0.0), score)
    document_score = {
        d: weight * best_v.get(d, 0.0) + (1 - weight) * best_k.get(d, 0.0) for d in {*best_v, *best_k}
    }
    first = {key: i for i, (key, _) in enumerate(own)}
    promoted: set[D] = set()
    scored = []
    for key, score in own:  # best first: the first chunk seen of a document is its best one
        doc = document_of(key)
        if doc not in promoted:
            promoted.add(doc)
            score = max(score, document_score.get(doc, score))
        scored.append((key, score))
    return sorted(scored, key=lambda item: (-item[1], first[item[0]]))


def fuse_chunks(
    conn: Any,
    table: str,
    vector: Sequence[tuple[str, float]],
    keyword: Sequence[tuple[str, float]],
    rows: Mapping[str, Sequence[Any]] | None,
    settings: Any,
) -> list[tuple[str, float]]:
    """Hybrid ranking of a chunk table's candidates with ``settings.fusion`` and ``settings.hybrid_weight``:
    :func:`fuse_by_document` when ``rows`` (``chunk_id -> (chunk_id, path, ...)``, the candidates' rows
    already read, e.g. the vector hits') is given, plain :func:`fuse` when it is None.

    The keyword hits' missing paths are read from ``table`` by primary key in one round trip on ``conn``; a
    chunk deleted since counts as its own document.
    """
    method, weight = settings.fusion, settings.hybrid_weight
    if rows is None:
        return fuse(vector, keyword, method, weight)
    paths = {chunk_id: str(row[1]) for chunk_id, row in rows.items()}
    missing = [chunk_id for chunk_id, _ in keyword if chunk_id not in paths]
    if missing:
        query = sql.SQL("SELECT chunk_id, path FROM {} WHERE chunk_id = ANY(%s)").format(sql.Identifier(table))
        found = dict(conn.execute(query, (missing,)).fetchall())
        paths.update({chunk_id: found.get(chunk_id, chunk_id) for chunk_id in missing})
    return fuse_by_document(vector, keyword, paths.__getitem__, method, weight)
