"""Hybrid fusion: convex combination of min-max normalised scores, and reciprocal rank fusion."""

from __future__ import annotations

import pytest

from context_assistant.retrieval.fusion import convex_fuse, fuse, fuse_by_document


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


def test_a_documents_best_chunk_carries_its_best_evidence_from_each_side() -> None:
    # Document "a" matches the meaning in chunk a1 and the words in chunk a2; "b" has both in one chunk,
    # each a little weaker. Chunk by chunk "b" wins; by document, "a" has the stronger evidence on both sides.
    vector = [("a1", 0.90), ("b1", 0.85), ("c1", 0.10)]
    keyword = [("a2", 9.0), ("b1", 8.5), ("c1", 1.0)]
    document = {"a1": "a", "a2": "a", "b1": "b", "c1": "c"}.__getitem__
    assert [k for k, _ in fuse(vector, keyword)][:1] == ["b1"]
    fused = fuse_by_document(vector, keyword, document)
    assert [k for k, _ in fused] == ["a1", "b1", "a2", "c1"]  # a's best chunk moves up; a2 keeps its own score
    scores = dict(fused)
    assert scores["a1"] == pytest.approx(0.5 * 1.0 + 0.5 * 1.0)
    assert scores["a2"] == pytest.approx(dict(fuse(vector, keyword))["a2"])
    assert scores["b1"] == pytest.approx(dict(fuse(vector, keyword))["b1"])


def test_one_chunk_documents_and_rrf_are_left_as_plain_fusion() -> None:
    vector = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    keyword = [("c", 9.0), ("b", 5.0), ("d", 1.0)]
    same = str  # every chunk its own document
    assert fuse_by_document(vector, keyword, same) == fuse(vector, keyword)
    assert fuse_by_document(vector, keyword, lambda k: "one", "rrf") == fuse(vector, keyword, "rrf")
    assert fuse_by_document([], [], same) == []
