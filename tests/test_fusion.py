"""Hybrid fusion: convex combinations of calibrated scores (cosine, BM25's share of its ceiling) and of min-max
normalised ones, and reciprocal rank fusion."""

from __future__ import annotations

import pytest

from context_assistant.retrieval.fusion import convex_fuse, fuse, fuse_by_document


def test_score_fusions_keep_score_gaps_that_ranks_lose() -> None:
    # The vector side is sure of "a" (far ahead); the keyword side barely prefers "b" over "a".
    vector = [("a", 0.9), ("b", 0.2), ("c", 0.1)]
    keyword = [("b", 0.50), ("a", 0.49), ("c", 0.05)]
    assert next(k for k, _ in fuse(vector, keyword, "convex", 0.5)) == "a"
    assert next(k for k, _ in fuse(vector, keyword, "minmax", 0.5)) == "a"
    assert next(k for k, _ in fuse(vector, keyword, "rrf")) in ("a", "b")  # a tie on ranks alone


def test_convex_takes_each_side_on_its_own_scale_and_absent_keys_at_most_what_they_can_have() -> None:
    """Calibrated scores are fused as they are: a side whose best candidate is a weak match stays weak (minmax
    lifts it to 1). A key absent from a list cut at ``depth`` gets that list's last score (it ranked below
    it); absent from a shorter list, which held every candidate that qualified, it gets 0."""
    vector = [("a", 0.62), ("b", 0.55)]
    keyword = [("c", 0.08), ("a", 0.02)]  # "c" shares one common word: 8% of what the question could match
    fused = dict(convex_fuse(vector, keyword, 0.5))
    assert fused == pytest.approx({"a": 0.5 * 0.62 + 0.5 * 0.02, "b": 0.5 * 0.55, "c": 0.5 * 0.08})
    assert [k for k, _ in convex_fuse(vector, keyword, 0.5)] == ["a", "b", "c"]
    assert dict(convex_fuse(vector, keyword, 0.5, depth=3)) == pytest.approx(fused)  # neither list cut
    cut = dict(convex_fuse(vector, keyword, 0.5, depth=2))  # both cut at 2: "b" may score up to 0.02, "c" 0.55
    assert cut == pytest.approx(
        {"a": 0.5 * 0.62 + 0.5 * 0.02, "b": 0.5 * 0.55 + 0.5 * 0.02, "c": 0.5 * 0.55 + 0.5 * 0.08}
    )
    minmax = dict(convex_fuse(vector, keyword, 0.5, "minmax"))
    assert minmax == pytest.approx({"a": 0.5, "b": 0.0, "c": 0.5})  # the weak keyword match counts as much as a
    assert convex_fuse([("a", 0.4)], [], 0.5) == [("a", 0.2)]
    assert convex_fuse([], [("x", 0.3)], 0.5) == [("x", 0.15)]  # nothing close in meaning: the vector side adds 0


def test_minmax_weights_normalisation_and_missing_keys() -> None:
    fused = dict(convex_fuse([("a", 0.8), ("b", 0.4)], [("c", 5.0), ("a", 1.0)], weight=0.25, method="minmax"))
    assert fused["a"] == pytest.approx(0.25 * 1.0 + 0.75 * 0.0)
    assert fused["b"] == pytest.approx(0.0)
    assert fused["c"] == pytest.approx(0.75)
    assert convex_fuse([], [("x", 2.0)], method="minmax") == [("x", 0.5)]  # a single score normalises to 1
    assert [k for k, _ in convex_fuse([("a", 1.0), ("b", 1.0)], [])] == ["a", "b"]  # ties: first seen first


def test_weight_one_and_zero_are_each_side_alone() -> None:
    vector = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    keyword = [("c", 9.0), ("b", 5.0), ("a", 1.0)]
    assert [k for k, _ in convex_fuse(vector, keyword, 1.0)] == ["a", "b", "c"]
    assert [k for k, _ in convex_fuse(vector, keyword, 0.0)] == ["c", "b", "a"]
    assert [k for k, _ in convex_fuse(vector, keyword, 1.0, "minmax")] == ["a", "b", "c"]
    assert [k for k, _ in convex_fuse(vector, keyword, 0.0, "minmax")] == ["c", "b", "a"]
    with pytest.raises(ValueError, match="is not one of convex, minmax, rrf"):
        fuse(vector, keyword, "sum")


@pytest.mark.parametrize(
    ("method", "best"), [("convex", 0.5 * 0.90 + 0.5 * 0.45), ("minmax", 0.5 * 1.0 + 0.5 * 1.0)]
)
def test_a_documents_best_chunk_carries_its_best_evidence_from_each_side(method: str, best: float) -> None:
    # Document "a" matches the meaning in chunk a1 and the words in chunk a2; "b" has both in one chunk,
    # each a little weaker. Chunk by chunk "b" wins; by document, "a" has the stronger evidence on both sides.
    vector = [("a1", 0.90), ("b1", 0.85), ("c1", 0.10)]
    keyword = [("a2", 0.45), ("b1", 0.425), ("c1", 0.05)]
    document = {"a1": "a", "a2": "a", "b1": "b", "c1": "c"}.__getitem__
    plain = dict(fuse(vector, keyword, method))
    assert [k for k, _ in fuse(vector, keyword, method)][:1] == ["b1"]
    fused = fuse_by_document(vector, keyword, document, method)
    assert [k for k, _ in fused] == ["a1", "b1", "a2", "c1"]  # a's best chunk moves up; a2 keeps its own score
    scores = dict(fused)
    assert scores["a1"] == pytest.approx(best)
    assert scores["a2"] == pytest.approx(plain["a2"])
    assert scores["b1"] == pytest.approx(plain["b1"])


def test_one_chunk_documents_and_rrf_are_left_as_plain_fusion() -> None:
    vector = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    keyword = [("c", 9.0), ("b", 5.0), ("d", 1.0)]
    same = str  # every chunk its own document
    assert fuse_by_document(vector, keyword, same) == fuse(vector, keyword)
    assert fuse_by_document(vector, keyword, same, "minmax", depth=3) == fuse(vector, keyword, "minmax", depth=3)
    assert fuse_by_document(vector, keyword, same, depth=3) == fuse(vector, keyword, depth=3)
    assert fuse_by_document(vector, keyword, lambda k: "one", "rrf") == fuse(vector, keyword, "rrf")
    assert fuse_by_document([], [], same) == []
