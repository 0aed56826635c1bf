"""The documents folder is a boundary (issue 13.1), empty files are reported (issue 14.4), and a source that
would delete every known document needs a flag (issue 13.10): real files, real links, real Spark and Delta."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from context_assistant.core.clock import FakeClock
from context_assistant.ingest.boundary import scan_source
from context_assistant.ingest.plan import IngestResult
from context_assistant.ingest.run import IngestError, run_ingest
from spark_support import local_spark  # noqa: F401  (the session-scoped `spark` fixture)

SECRET = "The launch code of the outside world is swordfish."


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A documents folder with one normal file and every kind of entry that used to leak or abort a run."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text(SECRET)
    root = tmp_path / "docs"
    (root / "teams").mkdir(parents=True)
    (root / "guide.md").write_text("# Guide\n\nDeploy with the blue button.\n")
    (root / "teams" / "notes.txt").write_text("Team notes about the rota.\n")
    (root / "leak.md").symlink_to(outside / "secret.md")  # a link out of the folder
    (root / "outside-dir").symlink_to(outside, target_is_directory=True)
    (root / "teams" / "loop").symlink_to(root, target_is_directory=True)  # a loop
    (root / "dangling.md").symlink_to(root / "missing.md")  # dangling, inside
    (root / "alias.md").symlink_to(root / "guide.md")  # stays inside
    (root / "new\nline.md").write_text("A name with a newline.\n")
    (root / "empty.txt").write_bytes(b"")
    return root


def ingest(spark: Any, source: Path, data: Path, clock: FakeClock, **options: Any) -> IngestResult:
    clock.advance(60)
    return run_ingest(spark, str(source), str(data / "chunks"), str(data / "documents"), clock=clock, **options)


def documents(data: Path) -> dict[str, dict[str, Any]]:
    return {row["path"]: row for row in DeltaTable(str(data / "documents")).to_pyarrow_table().to_pylist()}


def chunk_texts(data: Path) -> str:
    return "\n".join(row["text"] for row in DeltaTable(str(data / "chunks")).to_pyarrow_table().to_pylist())


def test_scan_reports_each_link_loop_and_odd_name_and_lists_the_rest(hostile: Path) -> None:
    scan = scan_source(str(hostile))
    assert [f.path for f in scan.files] == ["empty.txt", "guide.md", "teams/notes.txt"]
    assert scan.refused["leak.md"].startswith("symbolic link, not followed")
    assert scan.refused["new\nline.md"].startswith("its name contains a control character")

    inside = scan_source(str(hostile), symlinks="inside")
    assert [f.path for f in inside.files] == ["alias.md", "empty.txt", "guide.md", "teams/notes.txt"]
    assert inside.refused["leak.md"] == "symbolic link to outside the documents folder, not followed"
    assert inside.refused["outside-dir"] == "symbolic link to outside the documents folder, not followed"
    assert inside.refused["teams/loop"].startswith("symbolic link loop")
    assert inside.refused["dangling.md"].startswith("cannot be read")


def test_links_out_of_the_folder_are_never_ingested_and_odd_names_do_not_abort_the_run(
    spark: Any, hostile: Path, tmp_path: Path, clock: FakeClock
) -> None:
    data = tmp_path / "data"
    lines: list[str] = []

    result = ingest(spark, hostile, data, clock, symlinks="inside", progress=lines.append)

    assert result.documents.added == 3  # guide.md, alias.md (inside), teams/notes.txt
    assert SECRET not in chunk_texts(data)
    docs = documents(data)
    assert {p for p, d in docs.items() if d["status"] == "ok"} == {"guide.md", "alias.md", "teams/notes.txt"}
    assert docs["leak.md"]["status"] == "skipped"
    assert docs["leak.md"]["error"] == "symbolic link to outside the documents folder, not followed"
    assert docs["teams/loop"]["error"].startswith("symbolic link loop")
    assert docs["new\nline.md"]["status"] == "skipped"
    skipped = {entry["path"]: entry["reason"] for entry in result.to_json()["skipped"]}
    assert skipped["empty.txt"] == "empty file"
    assert skipped["outside-dir"] == "symbolic link to outside the documents folder, not followed"
    assert "skipped 'empty.txt': empty file" in lines

    again = ingest(spark, hostile, data, clock, symlinks="inside")  # a second run changes nothing
    assert (again.documents.added, again.documents.updated, again.chunks.written) == (0, 0, 0)


def test_empty_file_is_skipped_with_its_reason_and_a_document_emptied_later_keeps_its_chunks(
    spark: Any, tmp_path: Path, clock: FakeClock
) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("Alpha text.\n")
    (root / "empty.md").write_bytes(b"")
    data = tmp_path / "data"

    result = ingest(spark, root, data, clock)

    assert result.documents.skipped == 1
    assert documents(data)["empty.md"]["status"] == "skipped"
    assert documents(data)["empty.md"]["error"] == "empty file"
    (root / "a.md").write_bytes(b"")
    os.utime(root / "a.md", ns=(0, 5_000_000_000))
    later = ingest(spark, root, data, clock)
    assert [f.path for f in later.failures] == ["a.md"] and documents(data)["a.md"]["error"] == "empty file"
    assert "Alpha text." in chunk_texts(data)


def test_a_source_holding_none_of_the_known_documents_needs_a_flag(
    spark: Any, tmp_path: Path, clock: FakeClock
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, name in ((first, "a.md"), (first, "b.md"), (second, "other.md")):
        folder.mkdir(exist_ok=True)
        (folder / name).write_text(f"Text of {name}.\n")
    data = tmp_path / "data"
    ingest(spark, first, data, clock)

    with pytest.raises(
        IngestError, match=r"none of the 2 ingested document\(s\) is under .*pass --allow-replace-source"
    ):
        ingest(spark, second, data, clock)
    assert set(documents(data)) == {"a.md", "b.md"}

    (first / "b.md").unlink()  # losing some documents is a normal change
    assert ingest(spark, first, data, clock).documents.deleted == 1
    replaced = ingest(spark, second, data, clock, allow_replace_source=True)
    assert (replaced.documents.added, replaced.documents.deleted) == (1, 1)
    assert set(documents(data)) == {"other.md"}


def test_only_a_local_folder_is_walked_here_and_volumes_stay_with_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    from context_assistant.ingest.boundary import is_local_source

    assert is_local_source("/home/team/docs")
    assert not is_local_source("/Volumes/main/rag/docs")
    assert not is_local_source("dbfs:/Volumes/main/rag/docs")
    assert not is_local_source("s3://bucket/docs")
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert not is_local_source("/Workspace/Users/me/docs")
