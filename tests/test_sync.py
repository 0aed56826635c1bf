"""Incremental index sync on real Postgres + pgvector: the index must equal the chunk table (ids and content
hashes) after adds, edits, shortened and deleted documents, after a crash mid-sync and a re-run, and a
document whose chunks cannot be embedded keeps its previous chunks. Chunk tables are real Delta tables
(``deltalake``) where the source matters; mechanics use the hashing embedder test double."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from context_assistant.retrieval.embeddings import LocalEmbedder
from context_assistant.retrieval.pgvector import CHUNKS_SPACE, CHUNKS_TABLE, SYNC_LOCK_KEY, PgVectorChunkIndex
from context_assistant.retrieval.sync import (
    DeltaLakeChunkSource,
    Fingerprint,
    InMemoryChunkSource,
    SyncError,
    SyncResult,
    document_batches,
    make_chunk_source,
    plan_sync,
)
from context_assistant.storage.db import Database
from retrieval_support import (
    CountingEmbedder,
    CrashingEmbedder,
    HashingEmbedder,
    PoisonEmbedder,
    SimulatedCrash,
    bm25_stats_consistent,
    chunk,
    document,
    minilm,  # noqa: F401
    write_chunk_table,
)
from spark_support import local_spark  # noqa: F401


def _table(source: InMemoryChunkSource) -> dict[str, str]:
    return {c.chunk_id: c.content_hash for c in source.chunks.values()}


def _library(docs: int = 6, chunks: int = 4) -> InMemoryChunkSource:
    return InMemoryChunkSource(
        c
        for d in range(docs)
        for c in document(f"doc{d}.md", *(f"document {d} part {i} words w{d}x{i}" for i in range(chunks)))
    )


def test_add_change_shorten_delete_keeps_index_equal_to_table(db: Database) -> None:
    embedder = CountingEmbedder(HashingEmbedder())
    index = PgVectorChunkIndex(db, embedder, batch_size=5)
    source = _library()
    first = index.refresh(source)
    assert (first.added, first.updated, first.deleted, first.kept, first.rebuilt) == (24, 0, 0, 0, True)
    assert index.fingerprints() == _table(source)

    # doc0 edited in its middle, doc1 shortened to one chunk, doc2 deleted, doc9 added.
    edited = document(
        "doc0.md",
        "document 0 part 0 words w0x0",
        "an edited second chunk",
        *(f"document 0 part {i} words w0x{i}" for i in (2, 3)),
    )
    source.replace_document("doc0.md", edited)
    source.replace_document("doc1.md", document("doc1.md", "document 1 part 0 words w1x0"))
    source.remove_path("doc2.md")
    source.put(document("doc9.md", "a brand new document", "with two chunks"))
    embedder.texts.clear()
    result = index.refresh(source)
    assert (result.added, result.updated, result.deleted) == (2, 1, 3 + 4)
    assert result.kept == 3 + 1 + 12
    assert sorted(embedder.texts) == sorted(["an edited second chunk", "a brand new document", "with two chunks"])
    assert index.fingerprints() == _table(source)
    bm25_stats_consistent(db, "chunks", CHUNKS_TABLE)
    assert result.ok and result.to_json()["failed"] == []


def test_a_second_run_without_changes_embeds_nothing(db: Database, minilm: LocalEmbedder) -> None:  # noqa: F811
    embedder = CountingEmbedder(minilm)
    index = PgVectorChunkIndex(db, embedder)
    source = _library(docs=3, chunks=2)
    index.refresh(source)
    calls = embedder.calls
    assert calls >= 1
    again = index.refresh(source)
    assert embedder.calls == calls  # not a single call to the model
    assert (again.embedded, again.deleted, again.kept, again.rebuilt) == (0, 0, 6, False)
    full = index.refresh(source, full=True)
    assert (full.updated, full.kept) == (6, 0) and embedder.calls > calls
    assert index.fingerprints() == _table(source)


def test_crash_mid_sync_leaves_whole_documents_and_a_rerun_converges(db: Database) -> None:
    source = _library(docs=8, chunks=3)
    PgVectorChunkIndex(db, HashingEmbedder()).refresh(source)
    old = _table(source)
    old_docs = {f"doc{d}.md": _doc_hashes(source, f"doc{d}.md") for d in range(8)}

    # Every document changes (and some shrink); the process "dies" after two write batches.
    for d in range(8):
        path = f"doc{d}.md"
        source.replace_document(path, document(path, *(f"version two of {d} chunk {i}" for i in range(3 - d % 2))))
    crashing = CrashingEmbedder(HashingEmbedder(), batches=2)
    with pytest.raises(SimulatedCrash):
        PgVectorChunkIndex(db, crashing, batch_size=6).refresh(source)

    indexed = PgVectorChunkIndex(db, HashingEmbedder()).fingerprints()
    new_docs = {path: _doc_hashes(source, path) for path in old_docs}
    by_doc: dict[str, dict[str, str]] = {}
    for chunk_id, content_hash in indexed.items():
        path = next(p for p, hashes in {**old_docs}.items() if chunk_id in hashes or chunk_id in new_docs[p])
        by_doc.setdefault(path, {})[chunk_id] = content_hash
    states = [
        ("new" if by_doc[p] == new_docs[p] else "old" if by_doc[p] == old_docs[p] else "mixed") for p in old_docs
    ]
    assert "mixed" not in states  # each document is entirely its old or its new version
    # Documents have 3, 2, 3, 2, ... chunks and go smallest first; a batch closes at 6 chunks or before a document
    # that would overflow it: [doc1, doc3, doc5] then [doc7, doc0] were written before the crash.
    assert states == ["new", "new", "old", "new", "old", "new", "old", "new"]
    bm25_stats_consistent(db, "chunks", CHUNKS_TABLE)
    assert indexed != old

    counting = CountingEmbedder(HashingEmbedder())
    rerun = PgVectorChunkIndex(db, counting, batch_size=6).refresh(source)  # the lock was released
    assert len(counting.texts) == sum(
        len(new_docs[p]) for p, s in zip(old_docs, states, strict=True) if s == "old"
    )
    assert rerun.ok and PgVectorChunkIndex(db, HashingEmbedder()).fingerprints() == _table(source)
    bm25_stats_consistent(db, "chunks", CHUNKS_TABLE)


def _doc_hashes(source: InMemoryChunkSource, path: str) -> dict[str, str]:
    return {c.chunk_id: c.content_hash for c in source.chunks.values() if c.path == path}


def test_embedding_failure_keeps_the_old_chunks_and_reports_the_document(db: Database) -> None:
    source = _library(docs=4, chunks=3)
    PgVectorChunkIndex(db, HashingEmbedder()).refresh(source)
    before = _doc_hashes(source, "doc1.md")

    source.replace_document("doc1.md", document("doc1.md", "POISON new text", "shorter now"))
    source.replace_document("doc2.md", document("doc2.md", "doc two rewritten"))
    index = PgVectorChunkIndex(db, PoisonEmbedder(HashingEmbedder(), "POISON"), batch_size=100)
    result = index.refresh(source)

    assert [(f.path, f.chunks) for f in result.failed] == [("doc1.md", 2)]
    assert result.failed[0].error == "endpoint rejected the input containing 'POISON'"
    assert not result.ok
    indexed = index.fingerprints()
    assert {k: v for k, v in indexed.items() if k in before or k in _doc_hashes(source, "doc1.md")} == before
    assert _doc_hashes(source, "doc2.md").items() <= indexed.items()  # the other document went through
    assert (result.updated, result.deleted) == (1, 2)
    assert (
        "FAILED doc1.md: endpoint rejected the input containing 'POISON' (previous chunks kept)"
        in result.summary()
    )

    # Fixed upstream: the next run converges.
    source.replace_document("doc1.md", document("doc1.md", "clean new text", "shorter now"))
    assert index.refresh(source).ok
    assert index.fingerprints() == _table(source)


def test_a_failing_model_stops_the_run_after_a_few_documents(db: Database) -> None:
    source = InMemoryChunkSource(c for d in range(6) for c in document(f"d{d}.md", f"POISON {d}"))
    result = PgVectorChunkIndex(db, PoisonEmbedder(HashingEmbedder(), "POISON"), batch_size=1).refresh(
        InMemoryChunkSource([chunk("seed.md", 0, "seed")])
    )
    assert result.ok
    poison = PoisonEmbedder(HashingEmbedder(), "POISON")
    result = PgVectorChunkIndex(db, poison, batch_size=1).refresh(source)
    errors = [f.error for f in sorted(result.failed, key=lambda f: f.path)]
    assert len(errors) == 6 and poison.calls == 3
    assert errors[3:] == ["not attempted: 3 documents in a row failed to embed"] * 3


def test_one_sync_at_a_time(db: Database) -> None:
    with db.connection() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SYNC_LOCK_KEY,))
        conn.commit()
        try:
            with pytest.raises(SyncError, match="another sync of the chunk index is running"):
                PgVectorChunkIndex(db, HashingEmbedder()).refresh(_library())
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SYNC_LOCK_KEY,))


def test_plan_sync_groups_work_by_document() -> None:
    indexed = {"a0": ("a.md", "h0"), "a1": ("a.md", "h1"), "a2": ("a.md", "h2"), "b0": ("b.md", "h")}
    source = [
        Fingerprint("a0", "a.md", "h0"),
        Fingerprint("a1", "a.md", "CHANGED"),
        Fingerprint("c0", "c.md", "x"),
    ]
    plan = plan_sync(source, indexed)
    assert plan.kept == 1
    assert plan.changes["a.md"].upserts == ["a1"] and plan.changes["a.md"].deletes == ["a2"]
    assert plan.changes["c.md"].upserts == ["c0"] and plan.changes["c.md"].added == 1
    assert plan.deletes == ["b0"]  # b.md left the table: deleted on its own
    with pytest.raises(SyncError, match="the chunk table has chunk_id a0 more than once"):
        plan_sync([*source, Fingerprint("a0", "a.md", "h0")], indexed)
    sizes = [sum(len(c.upserts) for c in b) for b in document_batches(plan_sync(source, {}).changes.values(), 2)]
    assert sizes == [2, 1]


def test_sync_result_json_shape() -> None:
    result = SyncResult(
        added=1, updated=2, deleted=3, kept=4, model="m", dimension=8, index="hnsw", seconds=1.23456
    )
    assert result.to_json() == {
        "embedded": 3,
        "added": 1,
        "updated": 2,
        "deleted": 3,
        "kept": 4,
        "failed": [],
        "rebuilt": False,
        "model": "m",
        "dimension": 8,
        "index": "hnsw",
        "seconds": 1.235,
    }


# ---------------------------------------------------------------------------------------------------------
# Chunk sources: a real Delta table


def test_delta_table_source_syncs_exactly(db: Database, tmp_path: Path) -> None:
    table = tmp_path / "chunks"
    memory = _library(docs=3, chunks=3)
    memory.put([chunk("pdf/a.pdf", 0, "page text", heading="Intro", page=2)])
    write_chunk_table(table, list(memory.chunks.values()))
    source = DeltaLakeChunkSource(table)
    assert sorted(source.read(["nope", memory.chunks[next(iter(memory.chunks))].chunk_id]), key=str) == [
        next(iter(memory.chunks.values()))
    ]
    index = PgVectorChunkIndex(db, HashingEmbedder())
    index.refresh(source)
    assert index.fingerprints() == _table(memory)
    (hit,) = index.search("page text", top_k=1, mode="keyword")
    assert (hit.path, hit.heading, hit.page) == ("pdf/a.pdf", "Intro", 2)

    memory.replace_document("doc0.md", document("doc0.md", "rewritten"))
    write_chunk_table(table, list(memory.chunks.values()))
    result = index.refresh(DeltaLakeChunkSource(table))
    assert (result.updated, result.deleted) == (1, 2)
    assert index.fingerprints() == _table(memory)


def test_missing_chunk_table_is_a_clear_error(tmp_path: Path, make_config: Any) -> None:
    with pytest.raises(
        SyncError, match=r"the chunk table .* does not exist yet .*run `context-assistant ingest` first"
    ):
        DeltaLakeChunkSource(tmp_path / "nothing-here")
    config = make_config()
    with pytest.raises(SyncError, match=r"the chunk table /.*/data/chunks does not exist yet"):
        make_chunk_source(config)
    write_chunk_table(config.data_path / "chunks", document("a.md", "x"))
    assert isinstance(make_chunk_source(config), DeltaLakeChunkSource)


def test_chunk_table_without_needed_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    write_deltalake(str(tmp_path / "t"), pa.table({"chunk_id": ["a"], "path": ["p"]}))
    with pytest.raises(SyncError, match="lacks column\\(s\\) chunk_index, text, heading, page, content_hash"):
        list(DeltaLakeChunkSource(tmp_path / "t").fingerprints())


@pytest.mark.spark
def test_spark_source_reads_the_same_table(tmp_path: Path, spark: Any) -> None:
    from context_assistant.ingest.tables import local_table
    from context_assistant.retrieval.sync import SparkChunkSource

    memory = _library(docs=2, chunks=2)
    write_chunk_table(tmp_path / "chunks", list(memory.chunks.values()))
    source = SparkChunkSource(spark, local_table(tmp_path / "chunks"))
    assert {f.chunk_id: f.content_hash for f in source.fingerprints()} == _table(memory)
    wanted = list(memory.chunks)[:3]
    assert sorted(source.read(wanted), key=lambda c: c.chunk_id) == sorted(
        (memory.chunks[i] for i in wanted), key=lambda c: c.chunk_id
    )


def test_an_interrupted_full_reembedding_is_resumed_by_the_next_plain_sync(db: Database) -> None:
    """``ingest --full`` re-embeds every chunk (same model, e.g. after a change to what is embedded); stopped
    half-way, the next plain ``ingest`` re-embeds the rest (and only the rest) instead of keeping old vectors."""
    source = _library(docs=6, chunks=3)
    PgVectorChunkIndex(db, HashingEmbedder(), batch_size=6).refresh(source)

    crashing = CrashingEmbedder(HashingEmbedder(), batches=1)
    with pytest.raises(SimulatedCrash):
        PgVectorChunkIndex(db, crashing, batch_size=6).refresh(source, full=True)
    done_before = len(crashing.texts)
    assert 0 < done_before < 18

    lines: list[str] = []
    counting = CountingEmbedder(HashingEmbedder())
    resumed = PgVectorChunkIndex(db, counting, batch_size=6).refresh(source, progress=lines.append)
    assert any("resuming the full re-embedding (ingest --full)" in line for line in lines), lines
    assert len(counting.texts) == 18 - done_before and resumed.updated == 18 - done_before
    assert resumed.ok and resumed.kept == done_before

    counting.texts.clear()
    lines.clear()
    again = PgVectorChunkIndex(db, counting).refresh(source, progress=lines.append)
    assert counting.texts == [] and again.kept == 18  # finished: nothing left to resume
    assert not any("resuming" in line for line in lines)


def test_a_document_bigger_than_a_batch_is_written_in_slices_and_still_all_or_nothing(db: Database) -> None:
    """A big document's vectors are never all in memory: it is embedded and written a batch at a time in one
    transaction, so a slice that fails leaves the whole previous version, and one that succeeds is all there."""
    source = InMemoryChunkSource()
    source.replace_document("big.md", document("big.md", *(f"part {n} of a long manual" for n in range(25))))
    source.replace_document("small.md", document("small.md", "a small note"))
    counting = CountingEmbedder(HashingEmbedder())
    lines: list[str] = []
    result = PgVectorChunkIndex(db, counting, batch_size=10).refresh(source, progress=lines.append)
    assert result.ok and result.added == 26
    index = PgVectorChunkIndex(db, HashingEmbedder())
    assert index.fingerprints() == _table(source)
    assert counting.calls == 4  # small.md, then big.md in slices of 10, 10 and 5
    assert [line for line in lines if line.startswith("big.md: ")] == [
        "big.md: 10/25 chunks written (committed when all are)",
        "big.md: 20/25 chunks written (committed when all are)",
    ]
    before = index.fingerprints()

    texts = [f"part {n} revised" for n in range(22)]
    texts[15] = "POISON in the second slice"
    source.replace_document("big.md", document("big.md", *texts))  # shorter, and the second slice fails
    failed = PgVectorChunkIndex(db, PoisonEmbedder(HashingEmbedder(), "POISON"), batch_size=10).refresh(source)
    assert [(f.path, f.chunks) for f in failed.failed] == [("big.md", 22)]
    assert index.fingerprints() == before  # the first slice was rolled back with it; the tail is still there
    assert (failed.added, failed.updated, failed.deleted) == (0, 0, 0)

    texts[15] = "part 15 revised"
    source.replace_document("big.md", document("big.md", *texts))
    fixed = PgVectorChunkIndex(db, HashingEmbedder(), batch_size=10).refresh(source)
    assert fixed.ok and (fixed.updated, fixed.deleted) == (22, 3)
    assert index.fingerprints() == _table(source)
    bm25_stats_consistent(db, CHUNKS_SPACE, CHUNKS_TABLE)
