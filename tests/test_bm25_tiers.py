"""Tiered exact BM25 top-k (storage/bm25_tiers.py) on a real Postgres: on a generated Zipf corpus it must return
exactly what the exhaustive method returns (same rows, same scores, ties aside) for near-stop-word, common,
mixed and all-rare queries, with and without path filters, after the average length drifts, and on an index
written before tier keys existed (which the next sync re-keys)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from context_assistant.retrieval.pgvector import CHUNKS_SPACE, CHUNKS_TABLE, PgVectorChunkIndex
from context_assistant.retrieval.sync import InMemoryChunkSource, SourceChunk
from context_assistant.storage import bm25_tiers
from context_assistant.storage.bm25 import BM25_B, BM25_K1, bm25_rank
from context_assistant.storage.bm25_tiers import TIER_EDGES, TOP, _w_bound, bm25_top, reference_avgdl
from context_assistant.storage.db import Database
from retrieval_support import HashingEmbedder, bm25_stats_consistent, chunk, query_ceiling

WORDS = [f"w{i:03d}x" for i in range(400)]  # stemmer-stable pseudo-words; w000x is the most frequent


def _corpus(n: int, seed: int, long: bool = False) -> list[SourceChunk]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** 1.07 for rank in range(len(WORDS))]
    chunks = []
    for i in range(n):
        length = rng.randint(60, 160) if long else rng.choice((3, 8, 20, 40, 70))
        words = rng.choices(WORDS, weights, k=length)
        if rng.random() < 0.95:  # a near-stop-word: in ~95% of the rows
            words.append("omnipresent")
        chunks.append(chunk(f"{'long' if long else 'dir'}{i % 7}/doc{i // 10:04d}.md", i % 10, " ".join(words)))
    return chunks


QUERIES = [
    "omnipresent",  # near-stop-word alone
    "omnipresent w000x w001x w002x",  # all common
    "w000x w001x w002x w003x",
    "w004x w007x w009x w011x",
    "omnipresent w000x w250x w333x",  # mixed: near-stop-words next to rare words
    "w001x w005x w180x w390x",
    "w200x w301x w377x w399x",  # all rare
    "w150x",
    "w000x w000x w000x",  # a repeated word counts once
    "unknownword w003x",
    # more terms than are enumerated: the weakest count as always present at their maximum
    "omnipresent w000x w001x w002x w003x w004x w005x w006x w007x w008x w009x w010x w150x",
]


def _exhaustive(
    conn: Any, query: str, where: str = "TRUE", params: dict[str, Any] | None = None
) -> dict[str, float]:
    return dict(bm25_rank(conn, CHUNKS_SPACE, CHUNKS_TABLE, "chunk_id", where, params or {}, query, 100_000))


def _assert_same_top(got: list[tuple[str, float]], every: dict[str, float], k: int) -> None:
    """``got`` is the exact top ``k``: the same scores as the exhaustive ranking, each row's score its own."""
    expected = sorted(every.items(), key=lambda item: (-item[1], item[0]))[:k]
    assert len(got) == len(expected)
    for (chunk_id, score), (_, want) in zip(got, expected, strict=True):
        assert score == pytest.approx(want, rel=1e-9)
        assert every[chunk_id] == pytest.approx(score, rel=1e-9)
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


def _check(db: Database, queries: list[str], ks: tuple[int, ...] = (1, 10, 50)) -> list[int]:
    rounds: list[int] = []
    with db.connection() as conn:
        for query in queries:
            every = _exhaustive(conn, query)
            for k in ks:
                got = bm25_top(conn, CHUNKS_SPACE, CHUNKS_TABLE, "chunk_id", "TRUE", {}, query, k, rounds)
                _assert_same_top(got, every, k)
    return rounds


@pytest.fixture
def tiered(db: Database, monkeypatch: pytest.MonkeyPatch) -> tuple[PgVectorChunkIndex, InMemoryChunkSource]:
    # A small corpus: every query's postings fit the all-at-once budget, which would leave the tier rounds
    # untested; a small budget (the rounds' own cut-off) makes these queries take them.
    monkeypatch.setattr(bm25_tiers, "RARE_BUDGET", 300)
    source = InMemoryChunkSource(_corpus(1200, seed=3))
    index = PgVectorChunkIndex(db, HashingEmbedder(), batch_size=400)
    index.refresh(source)
    return index, source


def test_tiered_top_k_equals_the_exhaustive_ranking(db: Database, tiered: Any) -> None:
    rounds = _check(db, QUERIES)
    assert sum(1 for r in rounds if r >= 1) >= len(rounds) // 2, f"the tiered path answered too rarely: {rounds}"


def test_path_filters_stay_exact(db: Database, tiered: Any) -> None:
    with db.connection() as conn:
        for prefix in ("dir3/", "dir3/doc000", "nowhere/"):
            where, params = "c.path LIKE %(prefix)s", {"prefix": prefix + "%"}
            for query in QUERIES[:7]:
                every = _exhaustive(conn, query, where, params)
                for k in (1, 10):
                    got = bm25_top(conn, CHUNKS_SPACE, CHUNKS_TABLE, "chunk_id", where, params, query, k)
                    _assert_same_top(got, every, k)


def test_search_uses_the_tiers_and_matches_the_exhaustive_scores(db: Database, tiered: Any) -> None:
    index, _ = tiered
    with db.connection() as conn:
        every = _exhaustive(conn, QUERIES[1])
    hits = index.search(QUERIES[1], top_k=10, mode="keyword")
    _assert_same_top([(h.chunk_id, h.score) for h in hits], every, 10)
    hits = index.search(QUERIES[4], top_k=5, mode="keyword", path_prefix="dir2/")
    assert hits and all(h.path.startswith("dir2/") for h in hits)


def test_exact_after_the_average_length_drifts_and_rekeyed_beyond_it(db: Database, tiered: Any) -> None:
    index, source = tiered
    before = reference_avgdl_of(db)
    source.put(_corpus(80, seed=4, long=True))  # longer rows: the average moves, less than the re-key bound
    index.refresh(source)
    assert reference_avgdl_of(db) == before
    _check(db, QUERIES, ks=(10,))
    source.put(_corpus(900, seed=5, long=True))  # far longer: the sync re-keys every row
    lines: list[str] = []
    index.refresh(source, progress=lines.append)
    (line,) = [line for line in lines if line.startswith("writing BM25 impact-tier keys")]
    assert "the average chunk length moved" in line and "0.8–1.25×" in line and "once" not in line
    after = reference_avgdl_of(db)
    assert after is not None and before is not None and after > before * 1.25
    _check(db, QUERIES, ks=(10,))
    bm25_stats_consistent(db, CHUNKS_SPACE, CHUNKS_TABLE)


def reference_avgdl_of(db: Database) -> float | None:
    with db.connection() as conn:
        return reference_avgdl(conn, CHUNKS_SPACE)


def test_an_index_without_tier_keys_answers_exactly_and_the_next_sync_rekeys_it(db: Database, tiered: Any) -> None:
    index, source = tiered
    with db.connection() as conn:  # as an index written before the tiers existed
        conn.execute(
            f"""UPDATE {CHUNKS_TABLE} SET tsv = ts_delete(tsv, ARRAY(SELECT p.lexeme FROM unnest(tsv) p
                WHERE p.positions IS NULL))"""
        )
        conn.execute("UPDATE bm25_stats SET ref_avgdl = NULL WHERE space = %s", (CHUNKS_SPACE,))
    assert set(_check(db, QUERIES[:3], ks=(10,))) == {0}  # the exhaustive method answered
    lines: list[str] = []
    index.refresh(source, progress=lines.append)  # nothing changed in the documents: the sync only re-keys
    assert any("(once: the index was written before tiers existed)" in line for line in lines)
    assert reference_avgdl_of(db) is not None
    assert any(r >= 1 for r in _check(db, QUERIES[:3], ks=(10,)))
    bm25_stats_consistent(db, CHUNKS_SPACE, CHUNKS_TABLE)


def test_rounds_run_out_into_the_exhaustive_method(
    db: Database, tiered: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bm25_tiers, "MAX_ROUNDS", 0)
    monkeypatch.setattr(bm25_tiers, "RARE_BUDGET", 0)
    assert set(_check(db, QUERIES[:2], ks=(10,))) == {0}


@pytest.mark.parametrize("rounds_allowed", [True, False])
def test_relative_scores_are_shares_of_the_questions_ceiling(
    db: Database, tiered: Any, monkeypatch: pytest.MonkeyPatch, rounds_allowed: bool
) -> None:
    """``relative`` (what hybrid fusion asks for): each score divided by ``(k1 + 1) * sum(idf)`` of the question's
    known words, the same ranking, every share below 1, from the tiered path and the exhaustive one alike
    (``bm25_rank`` tells its ceiling); a word no row holds is not part of the ceiling."""
    if not rounds_allowed:
        monkeypatch.setattr(bm25_tiers, "MAX_ROUNDS", 0)
        monkeypatch.setattr(bm25_tiers, "RARE_BUDGET", 0)
    with db.connection() as conn:
        for query in [*QUERIES[:5], QUERIES[0] + " zzyzxunknownword"]:
            ceiling = query_ceiling(conn, CHUNKS_SPACE, query)
            raw = bm25_top(conn, CHUNKS_SPACE, CHUNKS_TABLE, "chunk_id", "TRUE", {}, query, 10)
            shares = bm25_top(conn, CHUNKS_SPACE, CHUNKS_TABLE, "chunk_id", "TRUE", {}, query, 10, relative=True)
            told: list[float] = []
            exhaustive = bm25_rank(
                conn, CHUNKS_SPACE, CHUNKS_TABLE, "chunk_id", "TRUE", {}, query, 10, ceiling=told
            )
            assert told == pytest.approx([ceiling], rel=1e-12)
            assert raw and [k for k, _ in shares] == [k for k, _ in raw] == [k for k, _ in exhaustive]
            assert [s for _, s in shares] == pytest.approx([s / ceiling for _, s in raw], rel=1e-9)
            assert [s for _, s in exhaustive] == pytest.approx([s for _, s in raw], rel=1e-9)
            assert all(0 < s < 1 for _, s in shares)


def test_tier_keys_never_change_what_is_scored(db: Database, tiered: Any) -> None:
    """Keys have no positions and a space no lexeme holds: doc_len and every word's df stay the text's."""
    with db.connection() as conn:
        keys, words, bad_len = conn.execute(
            f"""SELECT count(*) FILTER (WHERE u.positions IS NULL),
                       count(*) FILTER (WHERE u.positions IS NOT NULL AND u.lexeme LIKE '%% %%'),
                       (SELECT count(*) FROM {CHUNKS_TABLE} c WHERE c.doc_len <> (SELECT
                            coalesce(sum(array_length(p.positions, 1)), 0) FROM unnest(c.tsv) p))
                FROM {CHUNKS_TABLE}, unnest(tsv) u"""
        ).fetchone()
    assert keys > 0 and words == 0 and bad_len == 0


@pytest.mark.parametrize("ratio", [0.5, 0.8, 1.0, 1.25, 2.0, 4.0])
def test_the_drift_bound_holds_for_any_posting(ratio: float) -> None:
    rng = random.Random(int(ratio * 100))
    a0 = 30.0
    a = a0 * ratio
    edges = (0.0, *TIER_EDGES, TOP)

    def w(tf: int, dl: float, avgdl: float) -> float:
        return tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * dl / avgdl))

    for _ in range(5000):
        tf, dl = rng.randint(1, 20), rng.uniform(1, 400)
        tier = max(j for j, edge in enumerate(edges[:-1]) if w(tf, dl, a0) >= edge)
        assert w(tf, dl, a) <= _w_bound(edges[tier + 1], a0, a)


def _brute_force_minimal(terms: list[list[float]], theta: float) -> set[tuple[tuple[int, int], ...]]:
    """Every assignment (term → level or absent) reaching θ from which lowering any chosen term by one level
    (level 0: dropping it) falls below θ — by trying all of them."""
    import itertools

    found = set()
    for levels in itertools.product(*[range(-1, len(t)) for t in terms]):
        chosen = tuple((i, j) for i, j in enumerate(levels) if j >= 0)
        total = sum(terms[i][j] for i, j in chosen)
        if total < theta:
            continue
        if all(total - terms[i][j] + (terms[i][j - 1] if j > 0 else 0.0) < theta for i, j in chosen):
            found.add(chosen)
    return found


@pytest.mark.parametrize("seed", range(40))
def test_the_enumeration_finds_exactly_the_minimal_conjunctions(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk stops at the first level that reaches θ (everything past it is not minimal); it must still
    find every minimal conjunction, each once."""
    monkeypatch.setattr(bm25_tiers, "MAX_CONJUNCTIONS", 10_000)
    rng = random.Random(seed)
    terms = [sorted(rng.uniform(0.1, 3.0) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 5))]
    theta = rng.uniform(0.2, 0.8) * sum(t[-1] for t in terms)
    got = bm25_tiers._minimal_assignments(terms, theta)
    assert got is not None
    assert len(got) == len(set(got))
    assert set(got) == _brute_force_minimal(terms, theta)


def test_the_enumeration_gives_up_past_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm25_tiers, "MAX_CONJUNCTIONS", 3)
    terms = [[1.0, 2.0, 3.0]] * 6
    assert bm25_tiers._minimal_assignments(terms, 6.0) is None


@pytest.mark.parametrize("in_transaction", [True, False])
def test_the_tier_rounds_leave_the_planner_settings_as_they_were(
    db: Database, tiered: Any, in_transaction: bool
) -> None:
    """A round rules out the sequential scan for its own statement only: inside a caller's transaction the
    setting is back afterwards, and outside one it never outlives the search."""
    with db.connection() as conn:
        conn.autocommit = not in_transaction
        try:
            rounds: list[int] = []
            bm25_top(conn, CHUNKS_SPACE, CHUNKS_TABLE, "chunk_id", "TRUE", {}, QUERIES[2], 10, rounds)
            assert rounds[0] >= 1, "the query must take the tier rounds for this test to mean anything"
            assert conn.execute(
                "SELECT current_setting('enable_seqscan'), current_setting('enable_indexscan')"
            ).fetchone() == ("on", "on")
        finally:
            if not in_transaction:
                conn.autocommit = False


def test_a_long_dnf_is_answered_through_the_index(db: Database, tiered: Any) -> None:
    """Many conjunctions make the planner's estimate favour evaluating them all on every row (seconds on a
    real corpus); the round's statement must use the GIN index however long its DNF is."""
    plans: list[str] = []
    conjunctions: list[int] = []
    with db.connection() as conn:
        real_execute = conn.execute

        def explaining(query: Any, params: Any = None, **kwargs: Any) -> Any:
            if isinstance(query, str) and "%(dnf0)s" in query:
                plan = real_execute("EXPLAIN " + query, params, **kwargs).fetchall()
                plans.append("\n".join(row[0] for row in plan))
                conjunctions.append(query.count("%(dnf"))
            return real_execute(query, params, **kwargs)

        conn.execute = explaining  # type: ignore[method-assign]
        for query in QUERIES:
            bm25_top(conn, CHUNKS_SPACE, CHUNKS_TABLE, "chunk_id", "TRUE", {}, query, 10, [])
    assert plans, "the query must take the tier rounds for this test to mean anything"
    assert max(conjunctions) >= 5, conjunctions  # a long one among them
    for plan in plans:
        assert "Seq Scan" not in plan and "Bitmap Index Scan" in plan, plan


def test_a_later_round_scores_only_rows_no_earlier_round_scored(db: Database, tiered: Any) -> None:
    """Each round's statement returns every row it scored; across one query's rounds they never overlap (a row's
    tsvector is read and scored once), and the answer is still the exhaustive top k."""
    multi_round = 0
    with db.connection() as conn:
        real_execute = conn.execute
        scored: list[list[str]] = []

        def recording(query: Any, params: Any = None, **kwargs: Any) -> Any:
            cursor = real_execute(query, params, **kwargs)
            if isinstance(query, str) and "%(dnf0)s" in query:
                rows = cursor.fetchall()
                scored.append([row[0] for row in rows])
                cursor = real_execute(
                    "SELECT * FROM unnest(%s::text[], %s::float8[])", ([r[0] for r in rows], [r[1] for r in rows])
                )
            return cursor

        conn.execute = recording  # type: ignore[method-assign]
        for query in QUERIES:
            every = _exhaustive(conn, query)
            for k in (10, 50):
                scored.clear()
                rounds: list[int] = []
                got = bm25_top(conn, CHUNKS_SPACE, CHUNKS_TABLE, "chunk_id", "TRUE", {}, query, k, rounds)
                _assert_same_top(got, every, k)
                keys = [key for round_keys in scored for key in round_keys]
                assert len(keys) == len(set(keys)), f"a row was scored twice for {query!r} (k={k})"
                multi_round += len(scored) >= 2
    assert multi_round, "some query must take two rounds for this test to mean anything"
