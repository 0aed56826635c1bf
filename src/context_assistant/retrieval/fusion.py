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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from ..core.config import FUSIONS
from ..core.errors import ConfigError
from .base import rrf_fuse

K = TypeVar("K")
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
