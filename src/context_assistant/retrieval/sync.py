"""Keep a search index in step with the chunk table: what to embed, what to delete, what to keep.

The chunk table (Delta, written by the ingest pipeline) is the source of truth. A refresh compares it with
the index by ``chunk_id`` + ``content_hash`` (:func:`plan_sync`): only new or changed chunks are embedded,
chunks that left the table are deleted, everything else is kept untouched. The backend applies the plan in
batches, one transaction per batch, and a document's changes (its new/changed chunks and the removal of its
tail) always land in the same transaction, so after a crash the index holds, per document, either its old
or its new chunks; the next refresh sees the difference and converges. See
:meth:`context_assistant.retrieval.pgvector.PgVectorChunkIndex.refresh`.

The chunk table is read through a :class:`ChunkSource`:

* :class:`DeltaLakeChunkSource`: a local Delta folder, read with the ``deltalake`` package (no Spark needed,
  which keeps ``context-assistant sync`` light);
* :class:`SparkChunkSource`: any table Spark can read, e.g. ``catalog.schema.table`` in the Databricks job;
* :class:`InMemoryChunkSource`: a list of chunks (tests, benchmarks, other producers).

:func:`context_assistant.refresh.refresh_index` is what ``context-assistant sync``, ``ingest`` and the bundle's
``rag_sync_job`` call.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..core.errors import Conflict
from ..ingest.contract import INDEXED_COLUMNS

if TYPE_CHECKING:
    from ..core.config import Config
    from ..ingest.tables import TableRef

SOURCE_COLUMNS = INDEXED_COLUMNS  # the chunk table columns the index reads (ingest.contract)


class SyncError(Conflict):
    """The refresh cannot run (no chunk table, another sync running, ...); nothing was changed."""


@dataclass(frozen=True)
class SourceChunk:
    """One row of the chunk table, as the index needs it."""

    chunk_id: str
    path: str
    chunk_index: int
    text: str
    heading: str
    page: int | None
    content_hash: str


@dataclass(frozen=True)
class Fingerprint:
    """Enough of a chunk to decide whether the index has it: identity, document and content hash."""

    chunk_id: str
    path: str
    content_hash: str


@runtime_checkable
class ChunkSource(Protocol):
    label: str  # what to call the table in messages

    def fingerprints(self) -> Iterable[Fingerprint]:
        """Every chunk's id, path and hash (cheap: no text)."""
        ...

    def read(self, chunk_ids: Collection[str]) -> Iterable[SourceChunk]:
        """The full rows of these chunks, in any order (ids no longer in the table are skipped)."""
        ...


def embedding_text(heading: str, text: str) -> str:
    """What is embedded (and keyword-indexed) for a chunk: its heading path gives short chunks context."""
    heading = (heading or "").strip()
    if heading and not text.lstrip().startswith(heading):
        return f"{heading}\n{text}"
    return text


# ---------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class DocumentFailure:
    path: str
    error: str
    chunks: int  # chunks of this document that could not be embedded (its previous chunks were kept)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error, "chunks": self.chunks}


@dataclass
class SyncResult:
    """What a refresh did. ``to_json()`` is the ``sync --json`` shape (documented in the README)."""

    added: int = 0  # chunks new to the index (embedded)
    updated: int = 0  # chunks whose content changed (re-embedded)
    deleted: int = 0  # chunks removed because they left the chunk table
    kept: int = 0  # chunks already up to date: not embedded, not written
    failed: list[DocumentFailure] = field(default_factory=list)
    rebuilt: bool = False  # the index was recreated first (new index, or the embedding model changed)
    model: str = ""
    dimension: int = 0
    index: str = ""  # the nearest-neighbour index after the run: "hnsw", "ivfflat (lists=N)", "none (exact)"
    seconds: float = 0.0
    turns_embedded: int | None = None  # conversation turns embedded for recall (None: not part of this run)
    embedding: dict[str, Any] | None = None  # where the vectors came from (retrieval.embed_spark.SyncVectors)

    @property
    def embedded(self) -> int:
        return self.added + self.updated

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "embedded": self.embedded,
            "added": self.added,
            "updated": self.updated,
            "deleted": self.deleted,
            "kept": self.kept,
            "failed": [f.to_json() for f in sorted(self.failed, key=lambda f: f.path)],
            "rebuilt": self.rebuilt,
            "model": self.model,
            "dimension": self.dimension,
            "index": self.index,
            "seconds": round(self.seconds, 3),
        }
        if self.turns_embedded is not None:
            out["turns_embedded"] = self.turns_embedded
        if self.embedding is not None:
            out["embedding"] = self.embedding
        return out

    def summary(self) -> str:
        """One line for people."""
        line = (
            f"Embedded {self.embedded} chunks ({self.added} new, {self.updated} changed), deleted {self.deleted}, "
            f"kept {self.kept}"
        )
        if self.rebuilt:
            line += f"; index rebuilt for {self.model} ({self.dimension} dims)"
        if self.turns_embedded:
            line += f"; embedded {self.turns_embedded} conversation turns"
        line += f"; {self.seconds:.1f}s."
        for failure in sorted(self.failed, key=lambda f: f.path):
            line += f"\nFAILED {failure.path}: {failure.error} (previous chunks kept)"
        return line


# ---------------------------------------------------------------------------------------------------------
# Planning


@dataclass
class DocumentChange:
    """Everything to do for one document (path) whose chunks need embedding."""

    path: str
    upserts: list[str] = field(default_factory=list)  # chunk ids to (re-)embed: new or changed
    deletes: list[str] = field(default_factory=list)  # its chunk ids that left the table (shortened)
    added: int = 0
    updated: int = 0


@dataclass
class SyncPlan:
    changes: dict[str, DocumentChange] = field(default_factory=dict)  # documents with chunks to embed
    deletes: list[str] = field(default_factory=list)  # chunks to delete that belong to no embedding document
    kept: int = 0

    @property
    def upsert_count(self) -> int:
        return sum(len(c.upserts) for c in self.changes.values())


def plan_sync(
    source: Iterable[Fingerprint], indexed: Mapping[str, tuple[str, str]], *, full: bool = False
) -> SyncPlan:
    """Diff the chunk table against the index (``chunk_id -> (path, content_hash)``).

    ``full`` re-embeds every chunk. Deletions of a document that also has chunks to embed travel with it
    (applied together, or not at all if its embedding fails); the rest are independent.
    """
    plan = SyncPlan()
    seen: set[str] = set()
    for fp in source:
        if fp.chunk_id in seen:
            raise SyncError(f"the chunk table has chunk_id {fp.chunk_id} more than once; re-run the ingest")
        seen.add(fp.chunk_id)
        current = indexed.get(fp.chunk_id)
        if current is not None and current[1] == fp.content_hash and not full:
            plan.kept += 1
            continue
        change = plan.changes.get(fp.path)
        if change is None:
            change = plan.changes[fp.path] = DocumentChange(fp.path)
        change.upserts.append(fp.chunk_id)
        if current is None:
            change.added += 1
        else:
            change.updated += 1
    for chunk_id, (path, _) in indexed.items():
        if chunk_id in seen:
            continue
        change = plan.changes.get(path)
        (change.deletes if change is not None else plan.deletes).append(chunk_id)
    return plan


def document_batches(changes: Iterable[DocumentChange], batch_size: int) -> Iterator[list[DocumentChange]]:
    """Whole documents, grouped until a group has at least ``batch_size`` chunks to embed. A document that
    would push a group past ``batch_size`` starts the next one, so small documents are not held in the
    transaction of a big one."""
    batch: list[DocumentChange] = []
    size = 0
    for change in changes:
        if batch and size + len(change.upserts) > batch_size:
            yield batch
            batch, size = [], 0
        batch.append(change)
        size += len(change.upserts)
        if size >= batch_size:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------------------
# Sources


class InMemoryChunkSource:
    """Chunks held in a dict; ``put``/``remove_path`` edit it like an ingest would."""

    def __init__(self, chunks: Iterable[SourceChunk] = (), label: str = "in-memory chunks") -> None:
        self.label = label
        self.chunks: dict[str, SourceChunk] = {}
        self.put(chunks)

    def put(self, chunks: Iterable[SourceChunk]) -> None:
        for chunk in chunks:
            self.chunks[chunk.chunk_id] = chunk

    def replace_document(self, path: str, chunks: Iterable[SourceChunk]) -> None:
        """Make ``chunks`` the document's only chunks (what an ingest of an edited file does)."""
        self.remove_path(path)
        self.put(chunks)

    def remove_path(self, path: str) -> None:
        for chunk_id in [c.chunk_id for c in self.chunks.values() if c.path == path]:
            del self.chunks[chunk_id]

    def fingerprints(self) -> list[Fingerprint]:
        return [Fingerprint(c.chunk_id, c.path, c.content_hash) for c in self.chunks.values()]

    def read(self, chunk_ids: Collection[str]) -> list[SourceChunk]:
        return [self.chunks[i] for i in chunk_ids if i in self.chunks]


def _chunk_from_row(row: Mapping[str, Any]) -> SourceChunk:
    return SourceChunk(
        chunk_id=row["chunk_id"],
        path=row["path"],
        chunk_index=int(row["chunk_index"]),
        text=row["text"],
        heading=row["heading"] or "",
        page=None if row["page"] is None else int(row["page"]),
        content_hash=row["content_hash"],
    )


class DeltaLakeChunkSource:
    """A Delta table in a local folder, read with ``deltalake`` (delta-rs) and pyarrow."""

    def __init__(self, location: str | os.PathLike[str], label: str | None = None) -> None:
        self.location = str(location)
        self.label = label or self.location
        if not (Path(self.location) / "_delta_log").is_dir():
            raise SyncError(
                f"the chunk table {self.label} does not exist yet (no Delta table at {self.location}); "
                "run `context-assistant ingest` first"
            )

    def _dataset(self) -> Any:
        try:
            from deltalake import DeltaTable
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise SyncError("reading a local Delta table needs the 'deltalake' package") from exc
        dataset = DeltaTable(self.location).to_pyarrow_dataset()
        missing = [c for c in SOURCE_COLUMNS if c not in dataset.schema.names]
        if missing:
            raise SyncError(f"the chunk table {self.label} lacks column(s) {', '.join(missing)}")
        return dataset

    def fingerprints(self) -> Iterator[Fingerprint]:
        for batch in self._dataset().to_batches(columns=["chunk_id", "path", "content_hash"]):
            ids, paths, hashes = (batch.column(i).to_pylist() for i in range(3))
            for chunk_id, path, content_hash in zip(ids, paths, hashes, strict=True):
                yield Fingerprint(chunk_id, path, content_hash)

    def read(self, chunk_ids: Collection[str]) -> Iterator[SourceChunk]:
        if not chunk_ids:
            return
        import pyarrow as pa
        import pyarrow.dataset as ds

        wanted = pa.array(list(chunk_ids), type=pa.string())
        for batch in self._dataset().to_batches(
            columns=list(SOURCE_COLUMNS), filter=ds.field("chunk_id").isin(wanted)
        ):
            for row in batch.to_pylist():
                yield _chunk_from_row(row)


class SparkChunkSource:
    """Any table Spark reads: ``catalog.schema.table`` on Databricks, or a local folder via pysail."""

    def __init__(self, spark: Any, table: TableRef) -> None:
        self.spark = spark
        self.table = table
        self.label = table.label
        if table.location is not None:
            if not (Path(table.location) / "_delta_log").is_dir():
                raise SyncError(
                    f"the chunk table {table.label} does not exist yet (no Delta table at {table.location}); "
                    "run `context-assistant ingest` first"
                )
            from ..ingest.tables import create_table

            create_table(spark, table, None)  # registers the folder under table.sql_name

    def fingerprints(self) -> Iterator[Fingerprint]:
        try:
            rows = self.spark.sql(f"SELECT chunk_id, path, content_hash FROM {self.table.sql_name}").collect()
        except Exception as exc:
            raise SyncError(f"could not read the chunk table {self.label}: {str(exc).splitlines()[0]}") from exc
        for row in rows:
            yield Fingerprint(row.chunk_id, row.path, row.content_hash)

    def read(self, chunk_ids: Collection[str]) -> Iterator[SourceChunk]:
        if not chunk_ids:
            return
        wanted = self.spark.createDataFrame([(i,) for i in chunk_ids], "chunk_id STRING")
        view = f"ca_sync_wanted_{os.getpid()}"
        wanted.createOrReplaceTempView(view)
        columns = ", ".join(f"c.{c}" for c in SOURCE_COLUMNS)
        frame = self.spark.sql(
            f"SELECT {columns} FROM {self.table.sql_name} c JOIN {view} w ON c.chunk_id = w.chunk_id"
        )
        for row in frame.collect():
            yield _chunk_from_row(row.asDict())


def make_chunk_source(config: Config, spark_factory: Callable[[], Any] | None = None) -> ChunkSource:
    """The chunk table ``rag.chunk_table`` names: a local folder (read with deltalake when installed) or a
    catalog table (read with Spark)."""
    from ..ingest.tables import resolve_table

    table = resolve_table(config.rag.chunk_table, local_dir=config.data_path)
    if table.location is not None:
        try:
            import deltalake  # noqa: F401
        except ImportError:
            pass
        else:
            return DeltaLakeChunkSource(table.location, label=table.label)
    if spark_factory is None:
        from ..ingest.spark import get_spark

        def spark_factory() -> Any:
            return get_spark(config.data_path)

    return SparkChunkSource(spark_factory(), table)
