"""Hybrid fusion: convex combination of min-max normalised scores, and reciprocal rank fusion."""

from __future__ import annotations

import pytest

from context_assistant.retrieval.fusion import convex_fuse, fuse


def test_convex_keeps_score_gaps_that_ranks_lose() -> None:
    # The vector side is sure of "a" (far ahead); the keyword side barely prefers "b" over "a".
    vector = [("a", 0.9), ("b", 0.2), ("c", 0.1)]
    keyword = [("b", 10.0), ("a", 9.9), ("c", 1.0)]
    assert next(k for k, _ in fuse(vector, keyword, "convex", 0.5)) == "a"
    assert next(k for k, _ in fuse(vector, keyword, "rrf")) in ("a", "b")  # a tie on ranks alone


def test_convex_weights_normalisation_and_missing_keys() -> None:
    fused = dict(convex_fuse([("a", 0.8), ("b", 0.4)], [("c", 5.0), ("a", 1.0)], weight=0.25))
    assert fused["a"] == pytest.approx(0.25 * 1.0 + 0.75 * 0.0)
    assert fused["b"] == pytest.approx(0.0)
    assert fused["c"] == pytest.approx(0.75)
    assert convex_fuse([], [("x", 2.0)]) == [("x", 0.5)]  # a single score normalises to 1
    assert [k for k, _ in convex_fuse([("a", 1.0), ("b", 1.0)], [])] == ["a", "b"]  # ties: first seen first


def test_weight_one_and_zero_are_each_side_alone() -> None:
    vector = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    keyword = [("c", 9.0), ("b", 5.0), ("a", 1.0)]
    assert [k for k, _ in convex_fuse(vector, keyword, 1.0)] == ["a", "b", "c"]
    assert [k for k, _ in convex_fuse(vector, keyword, 0.0)] == ["c", "b", "a"]
    with pytest.raises(ValueError, match="is not one of convex, rrf"):
        fuse(vector, keyword, "sum")
