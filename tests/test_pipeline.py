"""The Spark ingest pipeline against real Spark (the product's in-process pysail server) and real Delta tables.

End-to-end tests copy ``fixtures/docs`` into a temporary folder (its name has a space and a non-ASCII
letter, like real team folders) so they can edit, shorten, delete and corrupt files between runs, then
read the Delta tables back with the independent ``deltalake`` package to prove they are real Delta.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable

from context_assistant.core.clock import FakeClock
from context_assistant.ingest.chunking import chunk_document, document_hash
from context_assistant.ingest.documents import parse_document
from context_assistant.ingest.plan import IngestResult, KnownDocument, SourceFile, chunking_signature, plan_ingest
from context_assistant.ingest.run import CHUNK_COLUMNS, DOCUMENT_COLUMNS, IngestError, run_ingest
from context_assistant.ingest.source_paths import local_path_of, normalize_root, relative_path_sql
from context_assistant.ingest.spark import (
    databricks_connect_configured,
    get_spark,
    local_spark_running,
    running_on_databricks,
)
from context_assistant.ingest.tables import TableRef, local_table, resolve_table, sql_string
from context_assistant.ingest.worker import make_batch_parser, parse_and_chunk
from spark_support import local_spark  # noqa: F401  (the session-scoped `spark` fixture)

FIXTURE_DOCS = Path(__file__).resolve().parent.parent / "fixtures" / "docs"
SUPPORTED_OK = {  # fixture files that parse; broken.pdf fails, diagram.png and empty.txt are skipped
    "architecture-overview.pdf",
    "data-retention-policy.docx",
    "deployment-guide.md",
    "faq.html",
    "glossary.htm",
    "office-notes-cp1252.txt",
    "oncall-runbook.txt",
    "release-checklist.pdf",
    "teams/platform/onboarding.md",
    "vendor-onboarding.docx",
}
CHUNK_FIELDS = ("chunk_id", "path", "chunk_index", "text", "heading", "page", "content_hash")


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "Team Docs ü"
    shutil.copytree(FIXTURE_DOCS, root)
    return root


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def ingest(spark: Any, source: Path, data: Path, clock: FakeClock, **options: Any) -> IngestResult:
    clock.advance(60)
    return run_ingest(spark, str(source), str(data / "chunks"), str(data / "documents"), clock=clock, **options)


def chunk_table(data: Path) -> dict[str, dict[str, Any]]:
    return {row["chunk_id"]: row for row in DeltaTable(str(data / "chunks")).to_pyarrow_table().to_pylist()}


def documents_table(data: Path) -> dict[str, dict[str, Any]]:
    return {row["path"]: row for row in DeltaTable(str(data / "documents")).to_pyarrow_table().to_pylist()}


def expected_chunks(source: Path, rel: str) -> set[tuple]:
    """What the parser and chunker make of the file right now, computed without Spark."""
    doc = parse_document(rel, (source / rel).read_bytes())
    return {tuple(getattr(c, f) for f in CHUNK_FIELDS) for c in chunk_document(doc, 500, 50)}


def stored_chunks(rows: dict[str, dict[str, Any]], rel: str) -> set[tuple]:
    return {tuple(r[f] for f in CHUNK_FIELDS) for r in rows.values() if r["path"] == rel}


def touch_later(path: Path) -> None:
    """Move the modification time forward so it differs from the stored one whatever the clock resolution."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


# ------------------------------------------------------------------------------- pure planning pieces


def test_plan_trusts_size_and_mtime_then_hash_and_finds_removed_files() -> None:
    chunking = chunking_signature(500, 50)
    known = {
        "same.md": KnownDocument("same.md", "h1", "ok", None, 3, 10, 100, chunking),
        "touched.md": KnownDocument("touched.md", "h2", "ok", None, 3, 10, 100, chunking),
        "broken.pdf": KnownDocument("broken.pdf", "h3", "failed", "bad", 0, 5, 100, chunking),
        "gone.txt": KnownDocument("gone.txt", "h4", "ok", None, 1, 5, 100, chunking),
        "rechunk.txt": KnownDocument("rechunk.txt", "h5", "ok", None, 1, 5, 100, "size=900,overlap=0,v=1"),
    }
    files = [
        SourceFile("same.md", 10, 100),
        SourceFile("touched.md", 10, 200),
        SourceFile("broken.pdf", 5, 100),
        SourceFile("new.html", 7, 100),
        SourceFile("photo.JPG", 7, 100),
        SourceFile("huge.pdf", 2048, 100),
        SourceFile("rechunk.txt", 5, 100),
    ]
    stored = {"same.md": 3, "touched.md": 3, "gone.txt": 1, "rechunk.txt": 1, "ghost.md": 2}
    plan = plan_ingest(files, known, chunking, max_file_bytes=1024, stored_chunks=stored)
    assert [f.path for f in plan.unchanged] == ["same.md", "broken.pdf"]
    assert [f.path for f in plan.candidates] == ["touched.md", "new.html", "rechunk.txt"]
    # Only a hash from the same chunking settings may spare a candidate from parsing.
    assert plan.previous_hash == {"touched.md": "h2", "new.html": None, "rechunk.txt": None}
    assert [(f.path, reason) for f, reason in plan.skipped] == [
        ("photo.JPG", "unsupported file type '.jpg'"),
        ("huge.pdf", "file is 2.0 KiB, larger than the 1.0 KiB limit (rag.max_file_mb)"),
    ]
    assert [d.path for d in plan.removed] == ["gone.txt"]
    assert plan.orphans == ["ghost.md"]  # chunks without a document row or a file: to be deleted

    damaged = plan_ingest(files, known, chunking, 1024, stored_chunks={**stored, "same.md": 1})
    assert "same.md" in [f.path for f in damaged.candidates] and damaged.previous_hash["same.md"] is None


def test_parse_and_chunk_turns_a_corrupt_file_into_a_reason_not_an_exception() -> None:
    status, error, chunks = parse_and_chunk("broken.pdf", b"%PDF-1.4 not really", 500, 50)
    assert (status, chunks) == ("failed", [])
    assert error is not None and error.startswith("not a valid PDF file")
    status, error, chunks = parse_and_chunk("a.md", b"# Title\n\nSome text.", 500, 50)
    assert (status, error, [c.text for c in chunks]) == ("ok", None, ["Title\n\nSome text."])


def test_sources_visible_to_python_are_checked_for_emptied_files() -> None:
    assert local_path_of("dbfs:/Volumes/main/rag/docs") == "/Volumes/main/rag/docs"
    assert local_path_of("/Volumes/main/rag/docs") == "/Volumes/main/rag/docs"
    assert local_path_of("file:///tmp/docs") == "/tmp/docs"
    assert local_path_of("s3://bucket/docs") is None


def test_result_json_has_exactly_the_documented_shape() -> None:
    result = IngestResult(seconds=1.5)
    result.documents.added = 2
    result.chunks.written = 7
    assert result.to_json() == {
        "documents": {"added": 2, "updated": 0, "deleted": 0, "unchanged": 0, "failed": 0, "skipped": 0},
        "failures": [],
        "still_failing": [],
        "skipped": [],
        "chunks": {"written": 7, "deleted": 0},
        "seconds": 1.5,
    }


def test_table_values_map_to_catalog_names_or_registered_folders(tmp_path: Path) -> None:
    assert resolve_table("main.rag.chunks") == TableRef("`main`.`rag`.`chunks`", None, "main.rag.chunks")
    assert resolve_table("chunks").sql_name == "`chunks`"  # no local dir: the session's current schema
    local = resolve_table("chunks", tmp_path)
    assert local.location == str(tmp_path / "chunks")
    assert local == resolve_table(str(tmp_path / "chunks"))  # same folder, same session name
    assert local.sql_name.startswith("`ca_chunks_")
    assert local.sibling("__ingest_staging").location == str(tmp_path / "chunks__ingest_staging")
    assert resolve_table("main.rag.chunks").sibling("_x").sql_name == "`main`.`rag`.`chunks_x`"
    assert local_table(tmp_path / "it's").location == str(tmp_path / "it's")
    assert sql_string("it's a \\ path") == "'it\\'s a \\\\ path'"
    with pytest.raises(ValueError, match="neither a table name"):
        resolve_table("a.b.c.d")


def test_table_schemas_keep_the_columns_downstream_readers_use() -> None:
    for column in ("chunk_id", "path", "chunk_index", "text", "heading", "page", "content_hash", "doc_hash"):
        assert f"{column} " in CHUNK_COLUMNS
    for column in ("modified_at", "ingested_at"):
        assert f"{column} TIMESTAMP" in CHUNK_COLUMNS
    for column in ("path", "doc_hash", "status", "error", "chunk_count", "modified_at"):
        assert f"{column} " in DOCUMENT_COLUMNS


# --------------------------------------------------------------------------- Spark transformations


def test_get_spark_reuses_the_one_local_server_and_recognises_databricks(spark: Any) -> None:
    assert get_spark() is spark and local_spark_running()
    assert running_on_databricks({"DATABRICKS_RUNTIME_VERSION": "16.4"})
    assert not running_on_databricks({})
    assert not databricks_connect_configured({})  # no cluster or serverless compute named


def test_relative_paths_are_the_same_for_databricks_and_pysail_listings(spark: Any) -> None:
    raw = spark.createDataFrame(
        [
            ("dbfs:/Volumes/main/rag/docs/team/a.md",),  # Databricks binaryFile on a Volume
            ("Volumes/main/rag/docs/b c.pdf",),  # pysail drops the leading slash
            ("file:///Volumes/main/rag/docs/ü/x[1].txt",),
            ("/Volumes/main/rag/docs",),  # the source itself is one file
        ],
        "path STRING",
    )
    root = normalize_root("/Volumes/main/rag/docs/")
    actual = raw.selectExpr(f"{relative_path_sql('path', root)} AS rel")
    expected = spark.createDataFrame([("team/a.md",), ("b c.pdf",), ("ü/x[1].txt",), ("docs",)], "rel STRING")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_batch_parser_parses_changed_bytes_and_passes_unchanged_ones_through(spark: Any) -> None:
    rows = [
        ("notes.md", 20, 1, "h-new", bytearray(b"# Notes\n\nHello there.")),
        ("same.md", 20, 1, "h-same", None),  # hash matched the stored one: content withheld
        ("bad.docx", 3, 1, "h-bad", bytearray(b"PK\x03")),
    ]
    frame = spark.createDataFrame(
        rows, "path STRING, size_bytes BIGINT, modified_us BIGINT, doc_hash STRING, content BINARY"
    )
    from context_assistant.ingest.run import _PARSED_SCHEMA

    parsed = frame.mapInArrow(make_batch_parser(500, 50), _PARSED_SCHEMA)
    # A summary row per file, then one row per chunk (never an array of them: a big file streams).
    summaries = parsed.where("status IS NOT NULL").select("path", "status", "chunk_count")
    expected = spark.createDataFrame(
        [("notes.md", "ok", 1), ("same.md", "unchanged", 0), ("bad.docx", "failed", 0)],
        "path STRING, status STRING, chunk_count INT",
    )
    assert_df_equality(summaries, expected, ignore_row_order=True, ignore_nullable=True)
    chunk_rows = parsed.where("chunk_id IS NOT NULL").select("path", "chunk_index", "text", "doc_hash")
    expected = spark.createDataFrame(
        [("notes.md", 0, "Notes\n\nHello there.", "h-new")],
        "path STRING, chunk_index INT, text STRING, doc_hash STRING",
    )
    assert_df_equality(chunk_rows, expected, ignore_nullable=True)
    errors = {r.path: r.error for r in parsed.select("path", "error").collect()}
    assert errors["bad.docx"] == "not a valid DOCX file: not a zip archive (an old .doc renamed?)"


# ------------------------------------------------------------------------------------------ end to end


def test_first_run_writes_every_chunk_and_a_status_per_file_into_real_delta(
    spark: Any, source: Path, data: Path, clock: FakeClock
) -> None:
    messages: list[str] = []
    result = ingest(spark, source, data, clock, progress=messages.append)

    assert result.to_json()["documents"] == {
        "added": 10, "updated": 0, "deleted": 0, "unchanged": 0, "failed": 1, "skipped": 2,
    }  # fmt: skip
    assert result.to_json()["skipped"] == [
        {"path": "diagram.png", "reason": "unsupported file type '.png'"},
        {"path": "empty.txt", "reason": "empty file"},
    ]
    assert [(f.path, f.error) for f in result.failures] == [
        ("broken.pdf", "not a valid PDF file: Stream has ended unexpectedly")
    ]
    chunks = chunk_table(data)
    assert result.chunks.written == len(chunks) and result.chunks.deleted == 0
    for rel in SUPPORTED_OK:
        assert stored_chunks(chunks, rel) == expected_chunks(source, rel), rel
    docs = documents_table(data)
    # Spark's binaryFile does not list zero-byte files; the boundary walk of a local folder does.
    assert set(docs) == SUPPORTED_OK | {"broken.pdf", "diagram.png", "empty.txt"}
    assert (docs["empty.txt"]["status"], docs["empty.txt"]["error"]) == ("skipped", "empty file")
    guide = docs["deployment-guide.md"]
    assert guide["status"] == "ok" and guide["error"] is None
    assert guide["doc_hash"] == document_hash((source / "deployment-guide.md").read_bytes())
    assert guide["chunk_count"] == len(expected_chunks(source, "deployment-guide.md"))
    assert guide["ingested_at"] == clock.now()
    assert docs["diagram.png"]["status"] == "skipped"
    assert docs["diagram.png"]["error"] == "unsupported file type '.png'"
    assert docs["broken.pdf"]["status"] == "failed" and docs["broken.pdf"]["chunk_count"] == 0
    assert all(row["doc_hash"] == docs[row["path"]]["doc_hash"] for row in chunks.values())
    # pysail cannot create Change Data Feed tables: the run says so instead of failing.
    assert any("delta.enableChangeDataFeed" in m for m in messages)


def test_rerun_without_changes_reads_parses_and_writes_nothing(
    spark: Any, source: Path, data: Path, clock: FakeClock
) -> None:
    ingest(spark, source, data, clock)
    versions = (DeltaTable(str(data / "chunks")).version(), DeltaTable(str(data / "documents")).version())

    again = ingest(spark, source, data, clock)

    assert again.parsed == 0
    assert again.to_json()["documents"] == {
        "added": 0, "updated": 0, "deleted": 0, "unchanged": 10, "failed": 1, "skipped": 2,
    }  # fmt: skip
    assert again.to_json()["chunks"] == {"written": 0, "deleted": 0}
    # broken.pdf was not retried (same bytes) and counts as failed: it is still not answerable.
    assert again.failures == [] and [f.path for f in again.still_failing] == ["broken.pdf"]
    # No empty commits either.
    assert (DeltaTable(str(data / "chunks")).version(), DeltaTable(str(data / "documents")).version()) == versions


def test_touched_file_is_hashed_but_not_parsed(spark: Any, source: Path, data: Path, clock: FakeClock) -> None:
    ingest(spark, source, data, clock)
    chunk_version = DeltaTable(str(data / "chunks")).version()
    touch_later(source / "faq.html")

    result = ingest(spark, source, data, clock)

    assert result.parsed == 0 and result.documents.unchanged == 10 and result.documents.failed == 1
    assert DeltaTable(str(data / "chunks")).version() == chunk_version
    staged = DeltaTable(str(data / "chunks__ingest_staging")).to_pyarrow_table().to_pylist()
    assert [(r["path"], r["status"]) for r in staged] == [("faq.html", "unchanged")]
    stored_mtime = documents_table(data)["faq.html"]["modified_at"].timestamp()
    assert stored_mtime == pytest.approx((source / "faq.html").stat().st_mtime, abs=1e-5)
    assert ingest(spark, source, data, clock).parsed == 0  # and the new mtime is trusted next time


def test_editing_one_file_changes_only_its_changed_chunks(
    spark: Any, source: Path, data: Path, clock: FakeClock
) -> None:
    ingest(spark, source, data, clock)
    before = chunk_table(data)
    guide = source / "deployment-guide.md"
    guide.write_text(guide.read_text().replace("Monday to Thursday", "Monday to Wednesday"))

    result = ingest(spark, source, data, clock)

    after = chunk_table(data)
    assert result.documents.updated == 1 and result.documents.unchanged == 9 and result.parsed == 1
    assert stored_chunks(after, "deployment-guide.md") == expected_chunks(source, "deployment-guide.md")
    changed = {cid for cid in after if after[cid] != before.get(cid)}
    assert result.chunks.written == len(changed) == 1
    (changed_id,) = changed
    assert "Monday to Wednesday" in after[changed_id]["text"]
    assert after[changed_id]["ingested_at"] == clock.now()
    assert {cid: row for cid, row in after.items() if cid != changed_id} == {
        cid: row for cid, row in before.items() if cid != changed_id
    }


def test_an_edit_that_shifts_every_chunk_deletes_the_changed_ids_then_appends_their_new_rows(
    spark: Any, source: Path, data: Path, clock: FakeClock
) -> None:
    """The chunk writes are a delete by id and an append, never a MERGE that carries chunk text (the local
    engine holds such a MERGE's whole source in memory: several times a big file's text)."""
    runbook = source / "oncall-runbook.txt"
    runbook.write_text("\n\n".join(f"Step {n}: check the {n}th dashboard and page the owner." for n in range(60)))
    ingest(spark, source, data, clock)
    before = chunk_table(data)
    runbook.write_text("A new first line that moves every chunk boundary.\n\n" + runbook.read_text())
    versions = len(DeltaTable(str(data / "chunks")).history())

    result = ingest(spark, source, data, clock)

    after = chunk_table(data)
    assert stored_chunks(after, "oncall-runbook.txt") == expected_chunks(source, "oncall-runbook.txt")
    changed = {cid for cid in after if after[cid] != before.get(cid)}
    gone = before.keys() - after.keys()
    assert len(changed) > 3 and result.chunks.written == len(changed)
    assert result.chunks.deleted == len(gone)
    assert all(after[cid]["path"] == "oncall-runbook.txt" for cid in changed)
    assert {cid: row for cid, row in after.items() if cid not in changed} == {
        cid: row for cid, row in before.items() if cid in after and cid not in changed
    }
    operations = [h["operation"] for h in DeltaTable(str(data / "chunks")).history()[: -versions or None]]
    assert [op.split()[0].upper() for op in operations] == ["WRITE", "MERGE"], operations  # newest first


def test_shortened_file_loses_its_tail_chunks(spark: Any, source: Path, data: Path, clock: FakeClock) -> None:
    ingest(spark, source, data, clock)
    old_count = len(stored_chunks(chunk_table(data), "deployment-guide.md"))
    guide = source / "deployment-guide.md"
    guide.write_text(guide.read_text().split("## Install")[0])

    result = ingest(spark, source, data, clock)

    new_chunks = stored_chunks(chunk_table(data), "deployment-guide.md")
    assert new_chunks == expected_chunks(source, "deployment-guide.md")
    assert 0 < len(new_chunks) < old_count
    assert result.chunks.deleted == old_count - len(new_chunks)
    assert documents_table(data)["deployment-guide.md"]["chunk_count"] == len(new_chunks)


def test_deleted_file_loses_its_chunks_and_document_row(
    spark: Any, source: Path, data: Path, clock: FakeClock
) -> None:
    ingest(spark, source, data, clock)
    before = chunk_table(data)
    (source / "teams" / "platform" / "onboarding.md").unlink()
    (source / "diagram.png").unlink()

    result = ingest(spark, source, data, clock)

    gone = {cid for cid, row in before.items() if row["path"] == "teams/platform/onboarding.md"}
    assert gone and result.chunks.deleted == len(gone) and result.chunks.written == 0
    assert result.documents.deleted == 1  # skipped files are inventory only, not counted as deletions
    assert chunk_table(data) == {cid: row for cid, row in before.items() if cid not in gone}
    assert {"teams/platform/onboarding.md", "diagram.png"}.isdisjoint(documents_table(data))


def test_corrupt_file_is_reported_and_a_broken_update_keeps_the_last_good_chunks(
    spark: Any, source: Path, data: Path, clock: FakeClock
) -> None:
    ingest(spark, source, data, clock)
    before = chunk_table(data)
    (source / "new-scan.pdf").write_bytes(b"%PDF-1.7\n% truncated upload")
    (source / "vendor-onboarding.docx").write_bytes(b"PK\x03\x04 half a zip")
    (source / "oncall-runbook.txt").write_bytes(b"")  # binaryFile does not even list empty files

    result = ingest(spark, source, data, clock)

    assert result.documents.failed == 4 and result.documents.unchanged == 8  # broken.pdf still fails
    errors = {f.path: f.error for f in result.failures}
    assert set(errors) == {"new-scan.pdf", "vendor-onboarding.docx", "oncall-runbook.txt"}
    assert errors["oncall-runbook.txt"] == "empty file"
    assert errors["new-scan.pdf"].startswith("not a valid PDF file")
    assert errors["vendor-onboarding.docx"] == "not a valid DOCX file: not a zip archive (an old .doc renamed?)"
    assert chunk_table(data) == before  # nothing lost, nothing else touched
    docs = documents_table(data)
    vendor = docs["vendor-onboarding.docx"]
    assert (vendor["status"], vendor["error"]) == ("failed", errors["vendor-onboarding.docx"])
    assert vendor["chunk_count"] == len(stored_chunks(before, "vendor-onboarding.docx")) > 0
    assert docs["new-scan.pdf"]["status"] == "failed"
    runbook = docs["oncall-runbook.txt"]
    assert (runbook["status"], runbook["size_bytes"]) == ("failed", 0)
    assert runbook["chunk_count"] == len(stored_chunks(before, "oncall-runbook.txt")) > 0
    # The same broken bytes are not retried on the next run.
    assert ingest(spark, source, data, clock).parsed == 0


def test_deleting_the_chunk_table_by_hand_makes_the_next_run_rebuild_it(
    spark: Any, source: Path, data: Path, clock: FakeClock
) -> None:
    ingest(spark, source, data, clock)
    before = {cid: {k: v for k, v in row.items() if k != "ingested_at"} for cid, row in chunk_table(data).items()}
    shutil.rmtree(data / "chunks")

    result = ingest(spark, source, data, clock)

    after = {cid: {k: v for k, v in row.items() if k != "ingested_at"} for cid, row in chunk_table(data).items()}
    assert after == before
    assert (result.documents.updated, result.documents.unchanged, result.chunks.written) == (10, 0, len(before))
    assert result.documents.failed == 1  # broken.pdf, not retried


def test_glob_characters_and_non_ascii_names_round_trip(
    spark: Any, source: Path, data: Path, clock: FakeClock
) -> None:
    odd = source / "drafts ü" / "plan [v2] {final}.md"
    odd.parent.mkdir()
    odd.write_text("# Plan\n\nShip it on Tuesday.\n")
    ingest(spark, source, data, clock)
    odd.write_text("# Plan\n\nShip it on Thursday.\n")

    result = ingest(spark, source, data, clock)  # a glob character forces the filtered full scan

    assert (result.documents.updated, result.parsed) == (1, 1)
    assert stored_chunks(chunk_table(data), "drafts ü/plan [v2] {final}.md") == expected_chunks(
        source, "drafts ü/plan [v2] {final}.md"
    )


def test_changing_chunk_settings_rechunks_unchanged_files(
    spark: Any, source: Path, data: Path, clock: FakeClock
) -> None:
    ingest(spark, source, data, clock)
    result = ingest(spark, source, data, clock, chunk_size=300, chunk_overlap=0)
    assert result.documents.updated == 10 and result.parsed == 11
    doc = parse_document("faq.html", (source / "faq.html").read_bytes())
    expected = {tuple(getattr(c, f) for f in CHUNK_FIELDS) for c in chunk_document(doc, 300, 0)}
    assert stored_chunks(chunk_table(data), "faq.html") == expected


def test_token_sized_chunks_rerun_does_nothing_and_a_new_unit_or_tokenizer_rechunks(
    spark: Any, source: Path, data: Path, clock: FakeClock
) -> None:
    """Sizes counted in all-MiniLM-L6-v2 tokens: a no-change re-run parses and writes nothing; switching the
    unit (characters to tokens) or the tokenizer (another embedding model) re-chunks every document."""
    from context_assistant.ingest.tokenization import EstimatedCounter, count_tokens
    from context_assistant.retrieval.tokenizer import counter_for_model

    minilm = counter_for_model("all-MiniLM-L6-v2")
    ingest(spark, source, data, clock)  # characters
    result = ingest(spark, source, data, clock, chunk_size=256, chunk_overlap=32, counter=minilm)
    assert result.documents.updated == 10 and result.parsed == 11
    texts = [row["text"] for row in chunk_table(data).values()]
    assert texts and all(count_tokens(minilm, t) + 2 <= 256 for t in texts)
    again = ingest(spark, source, data, clock, chunk_size=256, chunk_overlap=32, counter=minilm)
    assert (again.parsed, again.chunks.written, again.chunks.deleted) == (0, 0, 0)
    other = ingest(spark, source, data, clock, chunk_size=256, chunk_overlap=32, counter=EstimatedCounter())
    assert other.documents.updated == 10 and other.parsed == 11


def test_oversized_file_is_skipped_with_its_reason(spark: Any, source: Path, data: Path, clock: FakeClock) -> None:
    result = ingest(spark, source, data, clock, max_file_bytes=30_000)
    docs = documents_table(data)
    assert docs["data-retention-policy.docx"]["status"] == "skipped"
    assert (
        docs["data-retention-policy.docx"]["error"]
        == "file is 36.8 KiB, larger than the 29.3 KiB limit (rag.max_file_mb)"
    )
    assert result.documents.skipped == 4  # two too large, the .png and the empty file


def test_single_file_source(spark: Any, source: Path, data: Path, clock: FakeClock) -> None:
    result = ingest(spark, source / "faq.html", data, clock)
    assert result.documents.added == 1
    assert set(documents_table(data)) == {"faq.html"}
    assert stored_chunks(chunk_table(data), "faq.html") == expected_chunks(source, "faq.html")


def test_empty_or_missing_source_is_refused_before_anything_is_deleted(
    spark: Any, source: Path, data: Path, tmp_path: Path, clock: FakeClock
) -> None:
    with pytest.raises(IngestError, match=r"no files found under .*nowhere \(wrong path, or an empty folder\?\)$"):
        ingest(spark, tmp_path / "nowhere", data, clock)
    ingest(spark, source, data, clock)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestError, match=r"refusing to remove the 13 ingested document.*--allow-empty-source"):
        ingest(spark, empty, data, clock)
    assert len(documents_table(data)) == 13

    result = ingest(spark, empty, data, clock, allow_empty_source=True)

    assert result.documents.deleted == 11 and chunk_table(data) == {} and documents_table(data) == {}


def test_bad_chunk_settings_are_refused_with_the_reason(spark: Any, source: Path, data: Path) -> None:
    with pytest.raises(IngestError, match=r"chunk_overlap \(500\) must be smaller than chunk_size \(500\)"):
        run_ingest(spark, str(source), str(data / "c"), str(data / "d"), chunk_size=500, chunk_overlap=500)
    assert not data.exists()


def test_a_parser_stuck_on_one_file_is_stopped_and_reported() -> None:
    """A file whose parsing outlasts the limit fails with the reason instead of stalling the run."""
    import time

    from context_assistant.ingest.worker import ParseTimeout, parse_and_chunk, time_limit

    with pytest.raises(ParseTimeout, match=r"parsing took longer than 0.05s"), time_limit(0.05):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a parser looping on a crafted file
            pass
    big = ("A sentence about deploys. " * 200_000).encode()
    status, error, chunks = parse_and_chunk("huge.txt", big, 500, 50, timeout=0.001)
    assert (status, chunks) == ("failed", [])
    assert error == "parsing took longer than 0.001s (a pathological or huge file?)"
    assert parse_and_chunk("small.txt", b"Fine text.", 500, 50, timeout=5)[0] == "ok"
