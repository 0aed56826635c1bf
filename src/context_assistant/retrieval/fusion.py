"""Fusing a vector ranking and a keyword (BM25) ranking into one hybrid ranking.

Three learned-free methods (``rag.fusion``), all but ``rrf`` a convex combination
``fused = w * vector + (1 - w) * keyword`` with ``w = rag.hybrid_weight`` (Bruch et al., "An Analysis of
Fusion Functions for Hybrid Retrieval", 2023). Keeping score gaps is what makes them track the better side
of each query rather than average the two sides' ranks. They differ in how the two sides' scores are put
on one scale:

* ``convex`` (default) -- each side on its own fixed scale, as measured: the vector side is the cosine
  similarity, the keyword side the BM25 score as a share of its question's ceiling, ``(k1 + 1) * sum(idf)``
  of the question's words, which no row reaches
  (:func:`~context_assistant.storage.bm25.bm25_ceiling`; the caller passes those shares). So a side whose
  best candidate is a weak match stays weak in the fusion. A key absent from one side's list gets what the
  list says of it: at most its last score if the list was cut at ``depth`` (and that is what it gets), else
  0 (the list held every candidate that qualified). Better still, the chunk index and recall give the
  keyword-only candidates their own cosine similarity, read by key, so nothing on the vector side is
  estimated (:func:`fuse_chunks`; ``_with_own_similarity`` in :mod:`.recall`). SciFact dev: nDCG@10 0.738
  with ``minmax`` -> 0.745 (README, *Quality*).
* ``minmax`` -- each side min-max normalised over its own candidate list, a key absent from a list 0 there
  (the default until 2026-12-03): the best candidate of each side scores 1 however weak it is, and the
  normalisation depends on how deep the lists go.
* ``rrf`` -- reciprocal rank fusion (Cormack et al. 2009): ``sum(1 / (60 + rank))``. Uses ranks only, so it
  throws away how *much* better the first hit is than the tenth; when one side is much weaker than the other
  on a corpus it drags the fused ranking towards it.

All return ``(key, score)`` best first, ties broken by first appearance (vector list first).

**Document-aware fusion** (``rag.document_fusion``, on by default; :func:`fuse_by_document`): a document cut
into several chunks often matches the question's *meaning* best in one chunk and its *words* best in another;
chunk by chunk, each of those two chunks gets only one side's evidence and the document falls behind a
one-chunk document that has both. So a document's evidence on each side is its best chunk's score there
(the usual "document = its best passage" rule, applied per side), and the document's best chunk carries that
document-level fused score; its other chunks keep their own, which is never higher. One passage per document
moves; the list is still chunks (what a turn quotes), and a one-chunk document scores exactly as before.
Score fusions only (``rrf`` is left as it is).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from psycopg import sql

from ..core.config import FUSIONS
from ..core.errors import ConfigError
from ..storage.vector_spaces import QueryVector
from .base import rrf_fuse

K = TypeVar("K")
D = TypeVar("D", bound=Hashable)
DEFAULT_WEIGHT = 0.5


SCORE_FUSIONS = ("convex", "minmax")  # the convex combinations (rrf fuses ranks)


def _normalised(ranked: Sequence[tuple[K, float]]) -> dict[K, float]:
    if not ranked:
        return {}
    scores = [score for _, score in ranked]
    low, high = min(scores), max(scores)
    if high == low:
        return {key: 1.0 for key, _ in ranked}
    return {key: (score - low) / (high - low) for key, score in ranked}


def _evidence(ranked: Sequence[tuple[K, float]], method: str, cut: bool) -> tuple[dict[K, float], float]:
    """One side's scores on the fusion's scale, and what a key absent from its list gets there: with
    ``convex``, the list's last score when the list was ``cut`` (the absent ranked below it), else 0."""
    if method == "minmax":
        return _normalised(ranked), 0.0
    return dict(ranked), (min(score for _, score in ranked) if cut and ranked else 0.0)


def _sides(
    vector: Sequence[tuple[K, float]], keyword: Sequence[tuple[K, float]], method: str, depth: int | None
) -> tuple[tuple[dict[K, float], float], tuple[dict[K, float], float]]:
    """Both sides' evidence. A list ``depth`` long was cut there: a key absent from it ranked below its last
    score. A shorter list holds every candidate that qualified (a vector list cut by the relevance floor: the
    rest is not close in meaning; a keyword list: the rest shares no word with the question): absent is 0."""

    def cut(ranked: Sequence[tuple[K, float]]) -> bool:
        return depth is not None and len(ranked) >= depth

    return _evidence(vector, method, cut(vector)), _evidence(keyword, method, cut(keyword))


def convex_fuse(
    vector: Sequence[tuple[K, float]],
    keyword: Sequence[tuple[K, float]],
    weight: float = DEFAULT_WEIGHT,
    method: str = "convex",
    depth: int | None = None,
) -> list[tuple[K, float]]:
    """``weight * vector + (1 - weight) * keyword`` on ``method``'s scale (``convex``: the scores as given,
    cosine similarities and BM25 shares of the ceiling; ``minmax``: min-max normalised per list). ``depth``:
    how many candidates each side was asked for (see the module docstring)."""
    (v, v_absent), (k, k_absent) = _sides(vector, keyword, method, depth)
    keys = list(dict.fromkeys([*(key for key, _ in vector), *(key for key, _ in keyword)]))
    first = {key: i for i, key in enumerate(keys)}
    fused = [(key, weight * v.get(key, v_absent) + (1 - weight) * k.get(key, k_absent)) for key in keys]
    return sorted(fused, key=lambda item: (-item[1], first[item[0]]))


def fuse(
    vector: Sequence[tuple[K, float]],
    keyword: Sequence[tuple[K, float]],
    method: str = "convex",
    weight: float = DEFAULT_WEIGHT,
    depth: int | None = None,
) -> list[tuple[K, float]]:
    """Hybrid ranking of two ``(key, score)`` lists (best first) by ``method`` (see the module docstring)."""
    if method == "rrf":
        return rrf_fuse([[key for key, _ in vector], [key for key, _ in keyword]])
    if method in SCORE_FUSIONS:
        return convex_fuse(vector, keyword, weight, method, depth)
    raise ConfigError(f"rag.fusion: {method!r} is not one of {', '.join(FUSIONS)}")


def fuse_by_document(
    vector: Sequence[tuple[K, float]],
    keyword: Sequence[tuple[K, float]],
    document_of: Callable[[K], D],
    method: str = "convex",
    weight: float = DEFAULT_WEIGHT,
    depth: int | None = None,
) -> list[tuple[K, float]]:
    """Like :func:`fuse`, but each document's best chunk is scored with the document's evidence: per side,
    the best score of any of its chunks on the fusion's scale; see the module docstring. Score fusions only:
    ``rrf`` returns :func:`fuse`'s ranking unchanged (ranks carry no per-side evidence; lifting by document ranks
    measured worse on SciFact).

    ``document_of`` maps a key (chunk) to its document (e.g. its path). Other chunks keep their own fused
    score, which is at most their document's, so ranking documents by their best chunk is document-level
    fusion, while a passage that matched neither side stays where it was.
    """
    own = fuse(vector, keyword, method, weight, depth)
    if method not in SCORE_FUSIONS or not own:  # rrf: ranks carry no per-side evidence (and measured worse)
        return own
    (v, v_absent), (k, k_absent) = _sides(vector, keyword, method, depth)
    best_v: dict[D, float] = {}
    best_k: dict[D, float] = {}
    for key, score in v.items():
        doc = document_of(key)
        best_v[doc] = max(best_v.get(doc, v_absent), score)
    for key, score in k.items():
        doc = document_of(key)
        best_k[doc] = max(best_k.get(doc, k_absent), score)
    document_score = {
        d: weight * best_v.get(d, v_absent) + (1 - weight) * best_k.get(d, k_absent) for d in {*best_v, *best_k}
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


def keyword_only(vector: Sequence[tuple[K, float]], keyword: Iterable[K]) -> list[K]:
    """The keyword candidates the vector list lacks (in keyword order): whose own similarity convex fusion reads."""
    listed = {key for key, _ in vector}
    return [key for key in keyword if key not in listed]


def with_own_similarity(
    vector: Sequence[tuple[K, float]], distances: Iterable[tuple[K, float]]
) -> list[tuple[K, float]]:
    """The vector list completed with more keys' own cosine distances (as similarities), best first."""
    completed = [*vector, *((key, 1.0 - float(distance)) for key, distance in distances)]
    return sorted(completed, key=lambda item: -item[1])


def fuse_chunks(
    conn: Any,
    table: str,
    vector: Sequence[tuple[str, float]],
    keyword: Sequence[tuple[str, float]],
    rows: Mapping[str, Sequence[Any]] | None,
    settings: Any,
    depth: int | None = None,
    own_similarity: tuple[str, Sequence[float]] | None = None,
) -> list[tuple[str, float]]:
    """Hybrid ranking of a chunk table's candidates with ``settings.fusion`` and ``settings.hybrid_weight``:
    :func:`fuse_by_document` when ``rows`` (``chunk_id -> (chunk_id, path, ...)``, the candidates' rows
    already read, e.g. the vector hits') is given, plain :func:`fuse` when it is None. ``depth``: the
    candidates asked of each side.

    The keyword hits' missing paths are read from ``table`` by primary key in one round trip on ``conn``; a
    chunk deleted since counts as its own document. With ``convex`` and ``own_similarity`` (the SQL of a row's
    cosine distance to the question, with ``%(qvec)s`` for the question's vector, and that vector), the same
    statement reads the keyword-only candidates' own similarity: the vector side then estimates nothing.
    (``minmax`` is not given them: its normalisation would stretch over their lower similarities, measured
    worse on SciFact.)
    """
    method, weight = settings.fusion, settings.hybrid_weight
    paths = {chunk_id: str(row[1]) for chunk_id, row in rows.items()} if rows is not None else {}
    if method == "convex" and own_similarity is not None:
        # Missing from the vector list (not from `rows`, which also holds the vector hits below the floor).
        others = keyword_only(vector, (chunk_id for chunk_id, _ in keyword))
        distance, qvec = own_similarity
        query = sql.SQL("SELECT chunk_id, path, {} FROM {} WHERE chunk_id = ANY(%(others)s)").format(
            sql.SQL(distance), sql.Identifier(table)
        )
        found = conn.execute(query, {"qvec": QueryVector(qvec), "others": others}).fetchall() if others else []
        paths.update((chunk_id, str(path)) for chunk_id, path, _ in found)
        vector = with_own_similarity(vector, ((chunk_id, d) for chunk_id, _, d in found))
    if rows is None:
        return fuse(vector, keyword, method, weight, depth)
    missing = [chunk_id for chunk_id, _ in keyword if chunk_id not in paths]
    if missing:
        query = sql.SQL("SELECT chunk_id, path FROM {} WHERE chunk_id = ANY(%s)").format(sql.Identifier(table))
        found_paths = dict(conn.execute(query, (missing,)).fetchall())
        paths.update({chunk_id: found_paths.get(chunk_id, chunk_id) for chunk_id in missing})
    return fuse_by_document(vector, keyword, paths.__getitem__, method, weight, depth)
