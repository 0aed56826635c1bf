"""Our side of the indexing benchmark: keep the pgvector index equal to a changing corpus.

Two paths, both on the corpus of :mod:`benchmarks.corpus`:

* **sync** — the chunk table → index step alone (:meth:`PgVectorChunkIndex.refresh` from an in-memory chunk
  table). This is what LangChain's ``index()`` does (it has no parsing step), so it is the like-for-like line.
* **ingest** — what ``context-assistant ingest`` runs (:func:`context_assistant.refresh.refresh_documents`):
  Spark (local pysail) lists the folder, parses and chunks new/changed files and MERGEs them into the Delta
  chunk table, then the same sync reads the Delta table and updates the index.

Each step is timed and the end state is checked: the set of (source path, sha256 of the embedded text) in the
index must equal what the corpus says, exactly.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.corpus import Corpus, describe_difference, state_of
from benchmarks.scratch import ScratchServer, ours_database
from context_assistant.retrieval import CHUNKS_TABLE, InMemoryChunkSource, PgVectorChunkIndex, embedding_text
from context_assistant.storage import Database

STEPS = ("full", "no_change", "changed_1pct", "deleted_1pct")


@dataclass
class Step:
    seconds: float
    ok: bool
    detail: str  # what the step did (counts), or how the end state was wrong
    extra: dict[str, float] | None = None  # e.g. the ingest/sync split of the Spark path


def index_state(db: Database) -> Counter[tuple[str, str]]:
    with db.connection() as conn:
        rows = conn.execute(f"SELECT path, heading, text FROM {CHUNKS_TABLE}").fetchall()
    return state_of((path, embedding_text(heading, text)) for path, heading, text in rows)


def checked(seconds: float, db: Database, corpus: Corpus, detail: str, extra: dict | None = None) -> Step:
    problem = describe_difference(index_state(db), corpus.expected_state())
    return Step(seconds, not problem, problem or detail, extra)


def sync_steps(
    server: ScratchServer, dbname: str, corpus: Corpus, embedder: Any, batch_size: int
) -> dict[str, Step]:
    """Full sync, no-change sync, sync after 1% of documents edited, sync after 1% deleted."""
    corpus = corpus.copy()
    db = ours_database(server.fresh(dbname))
    try:
        index = PgVectorChunkIndex(db, embedder, index_type="hnsw", batch_size=batch_size)
        source = InMemoryChunkSource(corpus.chunks())
        steps: dict[str, Step] = {}

        def run(name: str) -> None:
            result = index.refresh(source)
            if result.failed:
                raise AssertionError(f"our sync failed documents: {result.failed[:3]}")
            steps[name] = checked(
                result.seconds,
                db,
                corpus,
                f"embedded {result.embedded}, deleted {result.deleted}, kept {result.kept}",
            )

        run("full")
        run("no_change")
        for path in corpus.edit(0.01):
            source.replace_document(path, corpus.chunks_of(path))
        run("changed_1pct")
        for path in corpus.delete(0.01):
            source.remove_path(path)
        run("deleted_1pct")
        return steps
    finally:
        db.close()


def ingest_steps(
    server: ScratchServer, dbname: str, corpus: Corpus, embedder: Any, batch_size: int, workdir: Path
) -> dict[str, Step]:
    """The same four steps through ``refresh_documents`` (Spark ingest of a folder, then the sync)."""
    from context_assistant.core import load_config
    from context_assistant.ingest import start_local_spark
    from context_assistant.refresh import refresh_documents
    from context_assistant.services import Services

    corpus = corpus.copy()
    shutil.rmtree(workdir, ignore_errors=True)
    folder = workdir / "docs"
    corpus.write(folder)
    config = load_config(
        None,
        env={},
        overrides={
            "data_dir": str(workdir / "data"),
            "rag.source": str(folder),
            "memory.recall": False,
            "tracing.enabled": False,
        },
    )
    db = ours_database(server.fresh(dbname))
    services = Services(config, env={})
    # The scratch database and the shared model instance, instead of what the config would open.
    services.db = db
    services.embedder = embedder
    services.chunk_index = PgVectorChunkIndex(db, embedder, index_type="hnsw", batch_size=batch_size)
    spark = start_local_spark(config.data_path)
    steps: dict[str, Step] = {}
    try:

        def run(name: str) -> None:
            started = time.perf_counter()
            result = refresh_documents(services, spark_factory=lambda: spark)
            seconds = time.perf_counter() - started
            sync = result.sync
            if result.ingest.failures or sync.failed:
                raise AssertionError(f"ingest failures: {result.ingest.failures[:3]} / {sync.failed[:3]}")
            docs = result.ingest.to_json()["documents"]
            steps[name] = checked(
                seconds,
                db,
                corpus,
                f"documents {docs}; embedded {sync.embedded}, deleted {sync.deleted}",
                {"ingest_seconds": float(result.ingest.seconds), "sync_seconds": sync.seconds},
            )

        run("full")
        run("no_change")
        corpus.edit(0.01)
        corpus.write(folder)
        run("changed_1pct")
        corpus.delete(0.01)
        corpus.write(folder)
        run("deleted_1pct")
        return steps
    finally:
        services.close()  # closes only what it opened itself: the scratch database is ours
        db.close()
