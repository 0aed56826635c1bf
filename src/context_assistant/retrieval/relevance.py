"""The relevance floor shared by document search and memory recall (``rag.min_similarity``,
``memory.recall_min_similarity``).

The vector side always has a nearest neighbour, and hybrid fusion ranks whatever candidates it gets, so without a
floor the closest passages and turns reach every prompt, even for a question unrelated to anything stored. A
candidate whose cosine similarity to the question is below the floor is not a vector candidate (vector and
hybrid modes). When no candidate is close in meaning, hybrid mode also asks a keyword match to cover at least
:data:`KEYWORD_COVERAGE` of the question's BM25 weight: alone in the fusion, one common word shared with a
longer question would otherwise come first. When the vector side does find candidates, the keyword side
is fused as it is (measured: applied always, the share cost SciFact's hybrid nDCG@10 0.0037, while the
similarity floor alone moved it by 0.0003). Keyword mode ranks every BM25 match, as asked (sharing a word is
its own floor), and so does hybrid when the question could not be embedded. ``auto`` takes the similarity floor measured for a known embedding
model (:data:`MIN_SIMILARITY_BY_MODEL`) and none for others, whose similarity scales differ (the keyword part
holds for every model); ``off`` turns both parts off; a number is the similarity floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..core.config import parse_min_similarity
from .embeddings import MINILM

K = TypeVar("K")

# MiniLM, LoCoMo dev (benchmarks/quality.py): 2 of 496 evidence turns in the vector top 10 score below 0.3, while
# the nearest turn to 4 of 100 general questions unrelated to the conversations scores above it (their median
# 0.14; a question's evidence turns' median 0.47). SciFact's figures with it are in the README.
MIN_SIMILARITY_BY_MODEL = {MINILM: 0.3}
# A candidate found only by keyword must score at least this share of the question's BM25 weight (the sum of
# its terms' idf: what a row of average length holding each once scores): "good" alone in "Translate good
# morning into Finnish" is not a match. LoCoMo dev: hybrid evidence recall@10 0.781 with it and without it;
# unrelated questions that recall nothing 0.46 with the similarity floor alone -> 0.84 (0.20: 0.784 / 0.71;
# 0.35: 0.763 / 0.89).
KEYWORD_COVERAGE = 0.25


@dataclass(frozen=True)
class RelevanceFloor:
    similarity: float | None = None  # a vector candidate's least cosine similarity; None: any
    keyword_coverage: float = 0.0  # a keyword match's least share of the question's BM25 weight

    def vector(self, ranked: Sequence[tuple[K, float]]) -> list[tuple[K, float]]:
        """The ``(key, similarity)`` candidates at or above the floor, in their order."""
        if self.similarity is None:
            return list(ranked)
        return [(key, similarity) for key, similarity in ranked if similarity >= self.similarity]

    def keyword_share(self, vector_searched: bool, vector_candidates: Sequence[object]) -> float:
        """The share of the question's BM25 weight a keyword match must cover: :data:`KEYWORD_COVERAGE` when
        the vector side was searched and found nothing close in meaning, else 0 (see the module docstring)."""
        return self.keyword_coverage if vector_searched and not vector_candidates else 0.0


NO_FLOOR = RelevanceFloor()


def relevance_floor(setting: str, model_name: str) -> RelevanceFloor:
    """The floor for ``model_name`` under ``setting`` (auto, off or a number; see the module docstring)."""
    value = parse_min_similarity(setting)
    if value is None:
        return NO_FLOOR
    similarity = MIN_SIMILARITY_BY_MODEL.get(model_name) if value == "auto" else float(value)
    return RelevanceFloor(similarity, KEYWORD_COVERAGE)
