"""Two ingests at once (issue 13.9): the second waits for the first with a message, never a double MERGE, never
a traceback. Real processes: a lock holder and two real ``context-assistant-ingest`` job processes, each with
its own local Spark server, on the same tables."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

import context_assistant.ingest.run as run_module
from context_assistant.ingest.lock import concurrent_write_error, lock_path
from context_assistant.ingest.run import IngestFailed
from context_assistant.ingest.tables import local_table
from spark_support import local_spark  # noqa: F401  (the session-scoped `spark` fixture)

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "fixtures" / "docs"
WAITING = "waiting for it to finish"

HOLDER = """
import sys
from context_assistant.ingest.lock import ingest_lock
from context_assistant.ingest.tables import local_table
with ingest_lock(local_table(sys.argv[1]), print):
    print("held", flush=True)
    sys.stdin.readline()
"""


def wait_for(condition, what: str, seconds: float = 300.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def test_a_second_ingest_waits_for_the_first_and_the_tables_see_one_write(tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    chunks = tables / "chunks"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(chunks)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    runs = []
    for name in ("b", "c"):
        work = tmp_path / name
        work.mkdir()
        err = (work / "stderr.txt").open("w")
        command = [
            str(Path(sys.executable).with_name("context-assistant-ingest")),
            "--source", str(DOCS),
            "--chunk-table", str(chunks),
            "--documents-table", str(tables / "documents"),
            "--set", f"data_dir={work / 'data'}",
        ]  # fmt: skip
        runs.append((subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=err, text=True), work))
    try:
        for _, work in runs:  # both are blocked behind the holder, and say so
            wait_for(lambda work=work: WAITING in (work / "stderr.txt").read_text(), "the waiting message")
        assert not chunks.exists()  # nothing was read or written while they waited
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
        outputs = [proc.communicate(timeout=600)[0] for proc, _ in runs]
    finally:
        for proc, _ in runs:
            if proc.poll() is None:
                proc.kill()
    for (proc, work), out in zip(runs, outputs, strict=True):
        assert proc.returncode == 0, (work / "stderr.txt").read_text()
        assert json.loads(out)["ok"] is True
        assert "Traceback" not in (work / "stderr.txt").read_text()
    added = sorted(json.loads(out)["result"]["documents"]["added"] for out in outputs)
    assert added[0] == 0 and added[1] > 0  # one run did the work; the other found it done
    operations = [str(h.get("operation", "")).upper() for h in DeltaTable(str(chunks)).history()]
    writes = [op for op in operations if "CREATE" not in op]
    assert len(writes) == 1, operations  # the first run's one append of new chunks; nothing from the second


def test_the_lock_lives_in_the_data_folder_and_delta_conflicts_are_recognised(tmp_path: Path) -> None:
    assert lock_path(local_table(str(tmp_path / "data" / "chunks"))) == str(tmp_path / "data" / ".ingest.lock")
    assert concurrent_write_error(RuntimeError("[DELTA_CONCURRENT_APPEND] ConcurrentAppendException: Files were"))
    assert concurrent_write_error(RuntimeError("Failed to commit transaction: version 7 already exists"))
    assert not concurrent_write_error(RuntimeError("[PATH_NOT_FOUND] Path does not exist"))


def test_without_the_file_lock_delta_conflicts_end_in_one_line_and_the_next_run_converges(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catalog tables on Databricks have no shared lock file: Delta's own conflict check is the guard. The file
    lock is switched off here (as it is for catalog tables) and two runs race on real Delta tables."""
    monkeypatch.setattr(run_module, "ingest_lock", lambda chunks, say: contextlib.nullcontext())
    source, data = tmp_path / "docs", tmp_path / "data"
    source.mkdir()
    for i in range(40):
        (source / f"d{i}.md").write_text(f"# Doc {i}\n\n" + "Some text about deploys. " * 200)
    outcomes: list[str] = []

    def ingest() -> None:
        try:
            run_module.run_ingest(spark, str(source), str(data / "chunks"), str(data / "documents"))
            outcomes.append("ok")
        except IngestFailed as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=ingest) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert "ok" in outcomes
    for outcome in outcomes:
        assert outcome == "ok" or (
            outcome.startswith("another ingest wrote to ") and "run ingest again" in outcome
        )
    # The next run repairs whatever the race left (a document whose chunk count no longer matches is re-cut,
    # so it may count as updated); the run after it finds everything unchanged.
    final = run_module.run_ingest(spark, str(source), str(data / "chunks"), str(data / "documents"))
    assert final.documents.failed == 0
    assert final.documents.added + final.documents.updated + final.documents.unchanged == 40
    settled = run_module.run_ingest(spark, str(source), str(data / "chunks"), str(data / "documents"))
    assert settled.documents.unchanged == 40
    rows = DeltaTable(str(data / "chunks")).to_pyarrow_table().to_pylist()
    assert len({r["chunk_id"] for r in rows}) == len(rows)  # no chunk twice
    assert {r["path"] for r in rows} == {f"d{i}.md" for i in range(40)}


def test_chunks_written_twice_are_repaired_by_the_next_run(spark: Any, tmp_path: Path) -> None:
    """What a lost race can leave on a catalog table: every chunk of a document twice (both runs inserted
    them). The next run sees the count disagree with the documents table, re-cuts that document and keeps one
    copy of each chunk; the run after it finds everything unchanged. Real Delta tables, written by hand with
    deltalake to stand in for the second run."""
    from deltalake import write_deltalake

    source, data = tmp_path / "docs", tmp_path / "data"
    source.mkdir()
    for i in range(3):
        (source / f"d{i}.md").write_text(f"# Doc {i}\n\n" + "Some text about deploys. " * 100)
    chunks, documents = str(data / "chunks"), str(data / "documents")
    run_module.run_ingest(spark, str(source), chunks, documents)
    table = DeltaTable(chunks).to_pyarrow_table()
    one_doc = table.filter(table.column("path").to_numpy(zero_copy_only=False) == "d1.md")
    write_deltalake(chunks, one_doc, mode="append")

    said: list[str] = []
    repaired = run_module.run_ingest(spark, str(source), chunks, documents, progress=said.append)
    assert (repaired.documents.updated, repaired.documents.unchanged) == (1, 2)
    assert any("repairing 1 documents whose chunks were written twice" in line for line in said), said
    rows = DeltaTable(chunks).to_pyarrow_table().to_pylist()
    assert len({r["chunk_id"] for r in rows}) == len(rows)
    assert sum(r["path"] == "d1.md" for r in rows) == one_doc.num_rows
    settled = run_module.run_ingest(spark, str(source), chunks, documents)
    assert settled.documents.unchanged == 3
