"""The pgvector chunk index on a real Postgres + pgvector: BM25 in SQL, hybrid fusion, filters, ANN index
types and rebuilding on a model change. Mechanics use the hashing test double (``retrieval_support``);
retrieval quality (a paraphrase found by meaning) uses the real all-MiniLM-L6-v2 model."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import psycopg
import pytest

from context_assistant.retrieval.base import Hit, IndexNotReady, RetrievalError, retrieve, rrf_fuse
from context_assistant.retrieval.embeddings import LocalEmbedder
from context_assistant.retrieval.pgvector import CHUNKS_TABLE, PgVectorChunkIndex
from context_assistant.retrieval.sync import InMemoryChunkSource, embedding_text
from context_assistant.storage import bm25
from context_assistant.storage.db import Database
from context_assistant.storage.vector_spaces import (
    QueryVector,
    ivfflat_lists,
    like_prefix,
    query_vector_sql,
    vector_literal,
)
from retrieval_support import HashingEmbedder, bm25_stats_consistent, document, minilm, query_ceiling  # noqa: F401

CORPUS = [
    *document(
        "ops/deploy.md",
        "Deploy the bundle with databricks bundle deploy --target prod after the release checklist passes.",
        "A failed deployment is rolled back by redeploying the previous wheel version.",
        heading="Deployment",
    ),
    *document(
        "ops/oncall.md",
        "The on-call engineer hands over the pager every Monday at 10:00 during the team standup.",
        "Escalate incidents that last more than thirty minutes to the platform lead.",
        heading="On-call",
    ),
    *document(
        "policy/retention.md",
        "Raw event data is kept for 400 days; aggregated tables are kept for seven years.",
        "Personal data is deleted within 30 days of an erasure request, tracked in ticket queue PRIV.",
        heading="Retention",
    ),
    *document(
        "policy/access.md",
        "Access to production catalogs is granted through the ACCESS-REQ form and approved by a data steward.",
        "Service principals never get personal workspace access.",
    ),
    *document(
        "teams/a_b/notes.md",
        "Team notes: the ERR_QUOTA_7731 error means the warehouse hit its concurrency quota.",
    ),
    *document("teams/axb/notes.md", "Unrelated notes about lunch orders and the office plants."),
]


@pytest.fixture
def index(db: Database) -> PgVectorChunkIndex:
    idx = PgVectorChunkIndex(db, HashingEmbedder(), top_k=3)
    idx.refresh(InMemoryChunkSource(CORPUS))
    return idx


def _paths(hits: list[Hit]) -> list[str]:
    return [h.path for h in hits]


def test_search_before_any_sync_says_what_to_do(db: Database) -> None:
    idx = PgVectorChunkIndex(db, HashingEmbedder())
    for mode in ("vector", "keyword", "hybrid"):
        with pytest.raises(IndexNotReady, match=r"no documents are indexed in .*: run `context-assistant ingest`"):
            idx.search("anything", mode=mode)


def test_bad_queries(index: PgVectorChunkIndex) -> None:
    with pytest.raises(RetrievalError, match="the query is empty"):
        index.search("   ")
    with pytest.raises(RetrievalError, match="search mode 'fuzzy' is not one of vector, keyword, hybrid"):
        index.search("deploy", mode="fuzzy")
    with pytest.raises(RetrievalError, match="top_k must be at least 1"):
        index.search("deploy", top_k=0)
    with pytest.raises(RetrievalError, match="unknown filter\\(s\\): author; known: path_prefix"):
        retrieve(index, "deploy", filters={"author": "x"})


def test_hits_carry_the_chunk(index: PgVectorChunkIndex) -> None:
    (hit,) = index.search("erasure request personal data", top_k=1, mode="keyword")
    source = {c.chunk_id: c for c in CORPUS}[hit.chunk_id]
    assert (hit.path, hit.heading, hit.page, hit.text) == (source.path, "Retention", None, source.text)
    assert hit.score > 0
    assert hit.to_json()["chunk_id"] == hit.chunk_id


def _reference_bm25(db: Database, query: str, k1: float = 0.9, b: float = 0.4) -> dict[str, float]:
    """BM25 computed in Python from the stored tsvectors: the SQL must agree with the textbook formula."""
    with db.connection() as conn:
        docs = {
            chunk_id: Counter(
                {
                    lex: len(pos)
                    for lex, pos, _ in conn.execute(
                        "SELECT lexeme, positions, weights FROM unnest((SELECT tsv FROM rag_chunks WHERE chunk_id = %s))",
                        (chunk_id,),
                    ).fetchall()
                    if pos  # the words; position-less entries are BM25 impact-tier keys (storage/bm25_tiers.py)
                }
            )
            for (chunk_id,) in conn.execute("SELECT chunk_id FROM rag_chunks").fetchall()
        }
        terms = set(conn.execute("SELECT tsvector_to_array(to_tsvector('english', %s))", (query,)).fetchone()[0])
    n = len(docs)
    avgdl = sum(sum(c.values()) for c in docs.values()) / n
    scores: dict[str, float] = {}
    for chunk_id, tf in docs.items():
        dl = sum(tf.values())
        score = 0.0
        for term in terms:
            if term in tf:
                df = sum(1 for c in docs.values() if term in c)
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * dl / avgdl))
        if score:
            scores[chunk_id] = score
    return scores


@pytest.mark.parametrize(
    "query",
    [
        "data deleted erasure request",
        "deploy deployment deployed the previous wheel",
        "production access steward",
        "the of and",  # stop words only: no lexemes, no keyword hits
    ],
)
def test_keyword_scores_are_bm25(index: PgVectorChunkIndex, db: Database, query: str) -> None:
    expected = _reference_bm25(db, query)
    hits = index.search(query, top_k=50, mode="keyword")
    assert {h.chunk_id: pytest.approx(h.score, rel=1e-9) for h in hits} == expected
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("budget", [1, 10, 5000])
def test_pruned_bm25_is_exact(db: Database, monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """Scoring first only the rows with the rarer query terms must not change the top-k (any budget)."""
    monkeypatch.setattr(bm25, "BM25_CANDIDATE_BUDGET", budget)
    docs = [
        *(c for i in range(40) for c in document(f"common/{i:02d}.md", f"common words {'filler ' * (i % 7)}{i}")),
        *document("rare/one.md", "common rare"),
        *document("rare/two.md", "rare rare and a long tail of other words here"),
        *document("both/three.md", "common common common sometimes"),
    ]
    idx = PgVectorChunkIndex(db, HashingEmbedder())
    idx.refresh(InMemoryChunkSource(docs))
    candidate_sets: list[list[str]] = []
    real_tsquery_or = bm25.tsquery_or
    monkeypatch.setattr(bm25, "tsquery_or", lambda lex: candidate_sets.append(list(lex)) or real_tsquery_or(lex))
    for query, k in (("common rare", 1), ("common rare", 2), ("common rare", 3), ("common words", 5), ("rare", 1)):
        expected = sorted(_reference_bm25(db, query).items(), key=lambda item: (-item[1], item[0]))[:k]
        with db.connection() as conn:  # the exhaustive method (recall; the chunk index's fallback)
            hits = bm25.bm25_rank(conn, "chunks", CHUNKS_TABLE, "chunk_id", "TRUE", {}, query, k)
        assert [(chunk_id, pytest.approx(score, rel=1e-9)) for chunk_id, score in hits] == expected
    if budget == 10:
        # "common rare" top 1 and 2: answered from the rows with "rare" alone; top 3 needs the fallback.
        assert candidate_sets[:4] == [["rare"], ["rare"], ["rare"], ["rare", "common"]]


def test_bm25_prefers_rare_terms_and_short_documents(db: Database) -> None:
    idx = PgVectorChunkIndex(db, HashingEmbedder())
    filler = " ".join(f"word{i}" for i in range(40))
    idx.refresh(
        InMemoryChunkSource(
            [
                *document("common1.md", "pipeline pipeline runs nightly"),
                *document("common2.md", "pipeline runs hourly"),
                *document("common3.md", "pipeline is green"),
                *document("rare.md", "zebra appears once"),
                *document("long.md", f"zebra {filler}"),
            ]
        )
    )
    hits = idx.search("pipeline zebra", top_k=5, mode="keyword")
    paths = _paths(hits)
    assert paths[0] == "rare.md"  # the rare term outweighs the common one (even repeated)
    assert paths.index("rare.md") < paths.index("long.md")  # the short document beats the long one


def test_bm25_statistics_follow_every_write(db: Database) -> None:
    idx = PgVectorChunkIndex(db, HashingEmbedder())
    source = InMemoryChunkSource(CORPUS)
    idx.refresh(source)
    bm25_stats_consistent(db, "chunks", CHUNKS_TABLE)
    source.replace_document("ops/deploy.md", document("ops/deploy.md", "Deploys happen on Tuesdays only."))
    source.remove_path("policy/access.md")
    idx.refresh(source)
    bm25_stats_consistent(db, "chunks", CHUNKS_TABLE)
    idx.refresh(source, full=True)  # updates of unchanged text
    bm25_stats_consistent(db, "chunks", CHUNKS_TABLE)


def test_path_prefix_filters_every_mode(index: PgVectorChunkIndex) -> None:
    for mode in ("vector", "keyword", "hybrid"):
        hits = index.search("data production deploy notes", top_k=10, mode=mode, path_prefix="policy/")
        assert hits and set(_paths(hits)) <= {"policy/retention.md", "policy/access.md"}
        # LIKE wildcards in the prefix are literal: "a_b" must not match "axb".
        hits = retrieve(
            index, "notes error quota lunch", top_k=10, filters={"path_prefix": "teams/a_b"}, mode=mode
        )
        assert set(_paths(hits)) == {"teams/a_b/notes.md"}
    assert like_prefix("a_b%\\") == "a\\_b\\%\\\\%"


def test_vector_scores_are_cosine_similarities(index: PgVectorChunkIndex) -> None:
    chunk = CORPUS[2]
    (hit,) = index.search(embedding_text(chunk.heading, chunk.text), top_k=1, mode="vector")
    assert hit.chunk_id == CORPUS[2].chunk_id and hit.score == pytest.approx(1.0, abs=1e-5)


def test_hybrid_fuses_both_rankings(index: PgVectorChunkIndex) -> None:
    query = "ERR_QUOTA_7731 concurrency quota"
    hybrid = index.search(query, top_k=3, mode="hybrid")
    keyword = index.search(query, top_k=3, mode="keyword")
    assert hybrid[0].chunk_id == keyword[0].chunk_id
    # convex fusion (the default): the top hit of both sides scores w * 1 + (1 - w) * 1 = 1
    assert 0.5 <= hybrid[0].score <= 1.0 and all(0.0 <= h.score <= 1.0 for h in hybrid)
    assert rrf_fuse([["a", "b"], ["b", "c"]]) == [("b", 1 / 62 + 1 / 61), ("a", 1 / 61), ("c", 1 / 62)]
    index.fusion = "rrf"
    rrf = index.search(query, top_k=3, mode="hybrid")
    assert rrf[0].chunk_id == keyword[0].chunk_id
    assert rrf[0].score == pytest.approx(2 / 61) or rrf[0].score == pytest.approx(1 / 61 + 1 / 62)


def test_hybrid_finds_exact_keywords_and_paraphrases_with_minilm(db: Database, minilm: LocalEmbedder) -> None:  # noqa: F811
    idx = PgVectorChunkIndex(db, minilm, top_k=3)
    idx.refresh(InMemoryChunkSource(CORPUS))
    # A paraphrase sharing no word with the chunk: only the vector side can find it.
    paraphrase = "who carries the beeper and when does that duty switch to someone else?"
    oncall = CORPUS[2].chunk_id
    assert oncall not in [h.chunk_id for h in idx.search(paraphrase, top_k=3, mode="keyword")]
    assert idx.search(paraphrase, top_k=3, mode="hybrid")[0].chunk_id == oncall
    # An exact identifier: the keyword side pins it to the top.
    hits = idx.search("ERR_QUOTA_7731", top_k=3, mode="hybrid")
    assert hits[0].path == "teams/a_b/notes.md"
    hits = idx.search("ACCESS-REQ form", top_k=3, mode="hybrid")
    assert hits[0].path == "policy/access.md"


def test_a_question_unrelated_to_every_document_gets_no_passage(db: Database, minilm: LocalEmbedder) -> None:  # noqa: F811
    """rag.min_similarity auto (0.3 for MiniLM): the nearest chunk is not a passage by itself, so a turn about
    something no document covers is not given (or shown) unrelated passages; related questions still are."""
    floored = PgVectorChunkIndex(db, minilm, top_k=3, min_similarity="auto")
    floored.refresh(InMemoryChunkSource(CORPUS))
    for mode in ("vector", "hybrid"):
        assert floored.search("What is the capital of Mongolia?", mode=mode) == []
        assert floored.search("zebra quantum astrophysics", mode=mode) == []
        beeper = "who carries the beeper and when does that duty switch to someone else?"
        assert floored.search(beeper, mode=mode)[0].chunk_id == CORPUS[2].chunk_id
    assert len(PgVectorChunkIndex(db, minilm, top_k=3).search("What is the capital of Mongolia?")) == 3  # off
    # Hybrid: one common word shared with a longer question is not a keyword match; keyword mode ranks it.
    unrelated = "Which form does a Finnish paper mill fill in to import pulp from Brazil every winter?"
    assert floored.search(unrelated, mode="hybrid") == []
    assert floored.search(unrelated, mode="keyword")[0].path == "policy/access.md"


# ---------------------------------------------------------------------------------------------------------
# ANN index types and model changes


def _indexes(db: Database) -> dict[str, str]:
    with db.connection() as conn:
        return dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", (CHUNKS_TABLE,)
            ).fetchall()
        )


def _space(db: Database) -> tuple[Any, ...]:
    with db.connection() as conn:
        return conn.execute(
            "SELECT model, dimension, index_type, index_lists, index_rows FROM vector_spaces WHERE space = 'chunks'"
        ).fetchone()


def _many(n: int, start: int = 0) -> list[Any]:
    return [
        c
        for i in range(start, start + n)
        for c in document(f"bulk/{i:05d}.md", f"bulk chunk {i} about topic{i % 17}")
    ]


def test_hnsw_is_the_default_and_is_used(index: PgVectorChunkIndex, db: Database) -> None:
    indexes = _indexes(db)
    assert "USING hnsw (embedding vector_cosine_ops)" in indexes["rag_chunks_embedding_hnsw"]
    assert _space(db)[2] == "hnsw"
    assert index.status()["index_type"] == "hnsw"
    with db.connection() as conn:
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT chunk_id FROM rag_chunks ORDER BY embedding <=> %s::vector(64) LIMIT 5",
                ("[" + ",".join(["0.125"] * 64) + "]",),
            )
        )
    assert "rag_chunks_embedding_hnsw" in plan


def test_ivfflat_waits_for_rows_then_builds_and_rebuilds_on_growth(db: Database) -> None:
    source = InMemoryChunkSource(_many(30))
    idx = PgVectorChunkIndex(db, HashingEmbedder(), index_type="ivfflat", ivfflat_min_rows=50, ivfflat_probes=10)
    result = idx.refresh(source)
    assert result.index == "none (exact search until 50 rows, then ivfflat)"
    assert not any("ivfflat" in name for name in _indexes(db))
    assert len(idx.search("bulk chunk 7", top_k=5, mode="vector")) == 5

    source.put(_many(30, start=30))  # 60 rows: build
    result = idx.refresh(source)
    assert result.index == "ivfflat (lists=10)" == f"ivfflat (lists={ivfflat_lists(60)})"
    assert "WITH (lists='10')" in _indexes(db)["rag_chunks_embedding_ivfflat"]
    assert _space(db)[2:] == ("ivfflat", 10, 60)
    assert idx.search("bulk chunk 7 topic7", top_k=1, mode="vector")[0].path == "bulk/00007.md"

    source.put(_many(100, start=60))  # 160 rows: < 4x, kept
    idx.refresh(source)
    assert _space(db)[2:] == ("ivfflat", 10, 60)
    source.put(_many(100, start=160))  # 260 rows: >= 4x, rebuilt
    idx.refresh(source)
    assert _space(db)[2:] == ("ivfflat", 10, 260)

    # Switching the configured type replaces the index.
    hnsw = PgVectorChunkIndex(db, HashingEmbedder(), index_type="hnsw")
    assert hnsw.refresh(source).index == "hnsw"
    names = set(_indexes(db))
    assert "rag_chunks_embedding_hnsw" in names and "rag_chunks_embedding_ivfflat" not in names


def test_ivfflat_lists_follow_the_row_count() -> None:
    assert ivfflat_lists(5_000) == 10
    assert ivfflat_lists(250_000) == 250
    assert ivfflat_lists(1_000_000) == 1000
    assert ivfflat_lists(4_000_000) == 2000  # sqrt above 1M


def test_model_change_rebuilds_instead_of_mixing(db: Database) -> None:
    source = InMemoryChunkSource(CORPUS)
    old = PgVectorChunkIndex(db, HashingEmbedder(64, "model-a"))
    old.refresh(source)
    new = PgVectorChunkIndex(db, HashingEmbedder(32, "model-b"))
    with pytest.raises(IndexNotReady, match=r"built with model-a but rag\.embedding_model is now model-b"):
        new.search("deploy", mode="hybrid")
    assert new.search("deploy", mode="keyword")  # keyword search needs no vectors
    result = new.refresh(source)
    assert (result.rebuilt, result.added, result.kept, result.dimension) == (True, len(CORPUS), 0, 32)
    with db.connection() as conn:
        column_type = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'rag_chunks'::regclass AND attname = 'embedding'"
        ).fetchone()[0]
    assert column_type == "vector(32)"
    assert _space(db)[:2] == ("model-b", 32)
    assert new.fingerprints() == {c.chunk_id: c.content_hash for c in CORPUS}
    bm25_stats_consistent(db, "chunks", CHUNKS_TABLE)
    assert new.search("deploy the bundle", mode="hybrid")
    with pytest.raises(IndexNotReady, match="built with model-b"):
        old.search("deploy", mode="vector")


def test_wide_vectors_index_as_halfvec(db: Database) -> None:
    idx = PgVectorChunkIndex(db, HashingEmbedder(2500, "wide"))
    assert idx.refresh(InMemoryChunkSource(CORPUS)).index == "hnsw"
    assert "halfvec_cosine_ops" in _indexes(db)["rag_chunks_embedding_hnsw"]
    text = CORPUS[4].text
    assert idx.search(text, top_k=1, mode="vector")[0].chunk_id == CORPUS[4].chunk_id


def test_hybrid_search_fuses_per_document_by_default(db: Database) -> None:
    """The search path gives each document's best chunk its document's best evidence from each side
    (``rag.document_fusion``), exactly :func:`fuse_by_document` over the two sides' candidate lists (the
    keyword side as shares of the query's BM25 ceiling); with it off, plain chunk-by-chunk fusion; with
    ``minmax``, the same over min-max normalised scores."""
    from context_assistant.retrieval.fusion import fuse, fuse_by_document

    chunks = [
        *document("trial.md", "alendronate weekly dosing trial", "bone fractures fell in women"),
        *document("review.md", "a review of alendronate and bone density"),
        *document("other.md", "pager rotation on mondays"),
    ]
    index = PgVectorChunkIndex(db, HashingEmbedder())
    index.refresh(InMemoryChunkSource(chunks))
    assert index.document_fusion is True
    query = "alendronate bone fractures"
    vector = [(h.chunk_id, h.score) for h in index.search(query, top_k=50, mode="vector")]
    keyword = [(h.chunk_id, h.score) for h in index.search(query, top_k=50, mode="keyword")]
    with db.connection() as conn:
        ceiling = query_ceiling(conn, "chunks", query)
    shares = [(k, s / ceiling) for k, s in keyword]
    assert 0 < shares[0][1] < 1
    path = {c.chunk_id: c.path for c in chunks}
    expected = fuse_by_document(vector, shares, path.__getitem__)
    got = [(h.chunk_id, h.score) for h in index.search(query, top_k=4, mode="hybrid")]
    assert [k for k, _ in got] == [k for k, _ in expected][:4]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected][:4])
    index.fusion = "minmax"
    got = [(h.chunk_id, h.score) for h in index.search(query, top_k=4, mode="hybrid")]
    normalised = fuse_by_document(vector, keyword, path.__getitem__, "minmax")[:4]
    assert [k for k, _ in got] == [k for k, _ in normalised]
    assert [s for _, s in got] == pytest.approx([s for _, s in normalised])
    index.fusion = "convex"
    index.document_fusion = False
    plain = [h.chunk_id for h in index.search(query, top_k=4, mode="hybrid")]
    assert plain == [k for k, _ in fuse(vector, shares)][:4]


def test_convex_hybrid_gives_keyword_only_candidates_their_own_similarity(db: Database) -> None:
    """A chunk the keyword side found and the vector side did not (here: below the relevance floor) enters the
    convex fusion with its own cosine similarity, read with its row in one statement, not an estimate."""
    from context_assistant.retrieval.fusion import fuse_by_document
    from context_assistant.retrieval.relevance import RelevanceFloor

    chunks = [
        *document("trial.md", "alendronate weekly dosing trial", "bone fractures fell in women"),
        *document("review.md", "a review of alendronate and bone density"),
        *document("other.md", "pager rotation on mondays and bone"),
    ]
    index = PgVectorChunkIndex(db, HashingEmbedder())
    index.refresh(InMemoryChunkSource(chunks))
    query = "alendronate bone fractures"
    every = [(h.chunk_id, h.score) for h in index.search(query, top_k=50, mode="vector")]
    assert len(every) == len(chunks)
    floor = sorted(s for _, s in every)[len(every) // 2]  # half the chunks fall below it
    keyword = index.search(query, top_k=50, mode="keyword")
    index.floor = RelevanceFloor(floor, 0.25)
    above = [(k, s) for k, s in every if s >= floor]
    keyword_only = [h.chunk_id for h in keyword if h.chunk_id not in dict(above)]
    assert keyword_only, "the example needs a keyword hit below the floor"
    with db.connection() as conn:
        ceiling = query_ceiling(conn, "chunks", query)
    shares = [(h.chunk_id, h.score / ceiling) for h in keyword]
    completed = sorted([*above, *((k, s) for k, s in every if k in keyword_only)], key=lambda item: -item[1])
    path = {c.chunk_id: c.path for c in chunks}
    expected = fuse_by_document(completed, shares, path.__getitem__, depth=50)
    got = index.search(query, top_k=len(chunks), mode="hybrid")
    assert [h.chunk_id for h in got] == [k for k, _ in expected]
    assert [h.score for h in got] == pytest.approx([s for _, s in expected])
    assert {h.chunk_id: h.text for h in got} == {
        c.chunk_id: c.text for c in chunks if c.chunk_id in dict(expected)
    }


@pytest.mark.parametrize("dimension", [3, 384, 2500])
def test_query_vector_goes_binary_and_means_what_its_text_form_means(db: Database, dimension: int) -> None:
    """The query vector travels in pgvector's binary form (no text formatting, no type lookup): the server
    reads the same numbers as from the text form, through the ``::vector(n)`` cast and the wide spaces'
    ``::halfvec(n)`` one, and a vector of the wrong size is refused by the cast with a clear message."""
    values = [math.sin(i + 1) / 3 for i in range(dimension)]
    other = vector_literal([math.cos(i) for i in range(dimension)])
    cast = query_vector_sql(dimension)
    statement = f"SELECT ({cast})::text, {cast} <=> {cast.replace('qvec', 'other')}"  # the other, cast alike
    with db.connection() as conn:
        binary, text = (
            conn.execute(statement, {"qvec": qvec, "other": other}).fetchone()
            for qvec in (QueryVector(values), vector_literal(values))
        )
    assert binary == text
    with db.connection() as conn:  # as a prepared statement too (psycopg prepares a statement's 5th execution)
        for _ in range(2):
            prepared = conn.execute(
                f"SELECT ({cast})::text", {"qvec": QueryVector(values)}, prepare=True
            ).fetchone()
            assert prepared is not None and text is not None and prepared[0] == text[0]
    with db.connection() as conn, pytest.raises(psycopg.errors.DataException, match=f"expected {dimension + 1}"):
        conn.execute(f"SELECT %(qvec)s::vector({dimension + 1})", {"qvec": QueryVector(values)})
    with pytest.raises(ValueError, match="one row of numbers"), db.connection() as conn:
        conn.execute(f"SELECT %(qvec)s::vector({dimension})", {"qvec": QueryVector([values, values])})  # type: ignore[list-item]
