"""The embeddings table: every vector ever computed, keyed by (content_hash, model), in Delta.

Why a table: at a million chunks, embedding in one Python process (one endpoint call after another) takes
hours, and an interruption loses the work of the transaction in flight. With this table

* Spark embeds the chunks that have no vector yet, in parallel (:func:`embed_on_spark`: ``mapInArrow`` over
  ``rag.embed_partitions`` partitions, each calling the model with ``rag.embed_concurrency`` requests in
  flight), one round of ``rag.embed_round_chunks`` chunks at a time, each round one Delta commit: an
  interruption keeps every finished round, and small documents are embedded first, so a big one does not hold
  them back;
* the pgvector sync then only copies vectors, looked up by content hash (:class:`StoredVectorsEmbedder`);
* the same text is never embedded twice (not by a re-run, not for a copy of a document, not for a document
  that moved), and a new ``rag.embedding_model`` finds no vectors under its name, so it embeds everything.

``content_hash`` here is the sha256 of the exact text the model saw (:func:`embedding_key`: the chunk text
with its heading, as :func:`~context_assistant.retrieval.sync.embedding_text` builds it), so two chunks share
a vector only when the model would have seen the same input. Rows whose embedding failed keep ``embedding``
NULL and say why in ``error``; they are retried by the next run and never read as vectors.

Databricks Vector Search (``rag.vector_search_embeddings: self_managed``) needs the vectors in its source table
(an ``embedding`` column, Change Data Feed on): a table made from the chunk table joined to this one on the
key is such a source; the README's "Embedding at scale" section shows the SQL. It is not wired into the
Vector Search backend yet.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..core.console import Progress, quiet
from ..ingest.tables import TableRef, create_table, sql_string
from .embeddings import (
    Embedder,
)
from .sync import embedding_text

log = logging.getLogger(__name__)

EMBEDDINGS_DDL = (
    "content_hash STRING NOT NULL, model STRING NOT NULL, dimension INT, embedding ARRAY<FLOAT>, "
    "error STRING, run_id STRING, embedded_at TIMESTAMP"
)


def embedding_key(heading: str, text: str) -> str:
    """The embeddings table's key for a chunk: sha256 hex of the text the model is given."""
    return text_key(embedding_text(heading, text))


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rate_line(done: int, total: int, started: float, now: float) -> str:
    """``done/total chunks, R chunks/s, ETA Ns`` for progress lines (no ETA before the first chunk)."""
    elapsed = max(now - started, 1e-9)
    rate = done / elapsed
    line = f"{done}/{total} chunks, {rate:.1f} chunks/s"
    if done and total > done:
        line += f", ETA {_duration((total - done) / rate)}"
    return line


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


# ---------------------------------------------------------------------------------------------------------
# Reading and appending vectors


class EmbeddingStore(Protocol):
    label: str

    def lookup(self, model: str, keys: Sequence[str]) -> dict[str, list[float]]:
        """The stored vectors of these keys under ``model`` (keys without one are left out)."""
        ...

    def append(self, model: str, rows: Sequence[tuple[str, list[float]]]) -> None:
        """Store ``(key, vector)`` pairs computed on the driver (one commit)."""
        ...

    def dimension(self, model: str) -> int | None:
        """The dimension of the model's stored vectors, if there are any."""
        ...


def _arrow_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("dimension", pa.int32()),
            pa.field("embedding", pa.list_(pa.field("element", pa.float32()))),
            pa.field("error", pa.string()),
            pa.field("run_id", pa.string()),
            pa.field("embedded_at", pa.timestamp("us", tz="UTC")),
        ]
    )


class DeltaLakeEmbeddingStore:
    """The embeddings table in a local folder, read and appended with ``deltalake`` (no Spark needed)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.label = location

    def exists(self) -> bool:
        return (Path(self.location) / "_delta_log").is_dir()

    def _dataset(self) -> Any:
        from deltalake import DeltaTable

        return DeltaTable(self.location).to_pyarrow_dataset()

    def lookup(self, model: str, keys: Sequence[str]) -> dict[str, list[float]]:
        if not keys or not self.exists():
            return {}
        import pyarrow as pa
        import pyarrow.dataset as ds

        wanted = pa.array(list(set(keys)), type=pa.string())
        table = self._dataset().to_table(
            columns=["content_hash", "embedding"],
            filter=(ds.field("model") == model)
            & ds.field("content_hash").isin(wanted)
            & ds.field("embedding").is_valid(),
        )
        return dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))

    def append(self, model: str, rows: Sequence[tuple[str, list[float]]]) -> None:
        if not rows:
            return
        import datetime as dt

        import pyarrow as pa
        from deltalake import write_deltalake

        now = dt.datetime.now(dt.timezone.utc)
        run_id = f"driver-{uuid.uuid4().hex[:12]}"
        table = pa.Table.from_pylist(
            [
                {
                    "content_hash": key,
                    "model": model,
                    "dimension": len(vector),
                    "embedding": vector,
                    "error": None,
                    "run_id": run_id,
                    "embedded_at": now,
                }
                for key, vector in rows
            ],
            schema=_arrow_schema(),
        )
        write_deltalake(self.location, table, mode="append")

    def dimension(self, model: str) -> int | None:
        if not self.exists():
            return None
        import pyarrow.dataset as ds

        scanner = self._dataset().scanner(
            columns=["dimension"], filter=(ds.field("model") == model) & ds.field("embedding").is_valid()
        )
        for batch in scanner.to_batches():
            if batch.num_rows:
                return int(batch.column(0)[0].as_py())
        return None


class SparkEmbeddingStore:
    """The embeddings table through Spark: a catalog table on Databricks, or a local folder via pysail."""

    def __init__(self, spark: Any, table: TableRef) -> None:
        self.spark = spark
        self.table = table
        self.label = table.label

    def lookup(self, model: str, keys: Sequence[str]) -> dict[str, list[float]]:
        if not keys:
            return {}
        wanted = self.spark.createDataFrame([(k,) for k in set(keys)], "content_hash STRING")
        view = f"ca_embed_wanted_{uuid.uuid4().hex[:8]}"
        wanted.createOrReplaceTempView(view)
        rows = self.spark.sql(
            f"SELECT e.content_hash, e.embedding FROM {self.table.sql_name} e JOIN {view} w "
            f"ON e.content_hash = w.content_hash WHERE e.model = {sql_string(model)} AND e.embedding IS NOT NULL"
        ).collect()
        return {row.content_hash: list(row.embedding) for row in rows}

    def append(self, model: str, rows: Sequence[tuple[str, list[float]]]) -> None:
        if not rows:
            return
        run_id = f"driver-{uuid.uuid4().hex[:12]}"
        frame = self.spark.createDataFrame(
            [(key, model, len(vector), [float(x) for x in vector], None, run_id) for key, vector in rows],
            "content_hash STRING, model STRING, dimension INT, embedding ARRAY<FLOAT>, error STRING, run_id STRING",
        ).selectExpr("*", "current_timestamp() AS embedded_at")
        append_frame(frame, self.table)

    def dimension(self, model: str) -> int | None:
        rows = self.spark.sql(
            f"SELECT dimension FROM {self.table.sql_name} WHERE model = {sql_string(model)} "
            "AND embedding IS NOT NULL LIMIT 1"
        ).collect()
        return int(rows[0].dimension) if rows else None


def append_frame(frame: Any, table: TableRef) -> None:
    writer = frame.write.format("delta").mode("append")
    if table.location is not None:
        writer.save(table.location)
    else:
        writer.saveAsTable(table.sql_name)


def ensure_embeddings_table(spark: Any, table: TableRef) -> None:
    """Create the embeddings table if missing (or register the local folder)."""
    if table.location is not None and (Path(table.location) / "_delta_log").is_dir():
        create_table(spark, table, None)
    else:
        create_table(spark, table, EMBEDDINGS_DDL)


def create_local_embeddings_table(location: str) -> None:
    """Create an empty local embeddings table with ``deltalake`` (the driver path needs no Spark)."""
    from deltalake import write_deltalake

    write_deltalake(location, _arrow_schema().empty_table(), mode="append")


# ---------------------------------------------------------------------------------------------------------
# The driver side: an Embedder that reads stored vectors first


class StoredVectorsEmbedder:
    """An :class:`Embedder` that takes vectors from the embeddings table and embeds only what is missing.

    Missing vectors are embedded by ``inner`` ``commit_every`` texts at a time and, with ``write_through``,
    appended to the table after each of those steps (one commit each): an interrupted big document keeps the
    vectors already computed, and the next run only looks them up. ``reuse=False`` (``sync --full``) embeds
    everything again and stores the new vectors. ``computed`` counts the texts ``inner`` embedded here.
    """

    def __init__(
        self,
        inner: Embedder,
        store: EmbeddingStore,
        *,
        reuse: bool = True,
        write_through: bool = True,
        commit_every: int = 512,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.store = store
        self.reuse = reuse
        self.write_through = write_through
        self.commit_every = max(1, commit_every)
        self.say = progress or quiet
        self.clock = clock
        self.reused = 0
        self.computed = 0
        self.warned = False

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def dimension(self) -> int:
        # Always the model's own answer (an endpoint is probed once, and only when the index is created or the
        # model changed): an endpoint that now serves another model under the same name must not be sized from
        # the old vectors.
        return self.inner.dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        keys = [text_key(t) for t in texts]
        found = self._lookup(keys) if self.reuse else {}
        expected = {len(v) for v in found.values()}
        if len(expected) > 1 or (expected and expected != {self.inner.dimension}):
            found = {}  # vectors of another size under this name: the endpoint changed models; embed again
        out: dict[str, list[float]] = {k: list(v) for k, v in found.items()}
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in out:
                missing.setdefault(key, text)
        self.reused += len(texts) - sum(1 for k in keys if k in missing)
        todo = list(missing.items())
        started = self.clock()
        for start in range(0, len(todo), self.commit_every):
            part = todo[start : start + self.commit_every]
            vectors = self.inner.embed([text for _, text in part])
            self.computed += len(part)
            pairs = [(key, vector) for (key, _), vector in zip(part, vectors, strict=True)]
            if self.write_through:
                self._append(pairs)
            out.update(pairs)
            if len(todo) > self.commit_every:  # a big call: say how far it got (small ones stay quiet)
                done = start + len(part)
                self.say(f"  embedded {rate_line(done, len(todo), started, self.clock())}")
        return [out[k] for k in keys]

    # The table saves work; failing to read or write it must not fail the sync (the vectors are in hand).

    def _lookup(self, keys: list[str]) -> dict[str, list[float]]:
        try:
            return self.store.lookup(self.model_name, keys)
        except Exception as exc:
            self._warn("read", exc)
            return {}

    def _append(self, pairs: list[tuple[str, list[float]]]) -> None:
        try:
            self.store.append(self.model_name, pairs)
        except Exception as exc:
            self._warn("write", exc)

    def _warn(self, action: str, exc: Exception) -> None:
        message = f"could not {action} the embeddings table {self.store.label}: {type(exc).__name__}: {exc}"
        log.warning("%s", message)
        if not self.warned:
            self.warned = True
            self.say(f"warning: {message} (embedding without it)")

    def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if closer is not None:
            closer()


__all__ = [
    "DeltaLakeEmbeddingStore",
    "EmbeddingStore",
    "SparkEmbeddingStore",
    "StoredVectorsEmbedder",
    "append_frame",
    "create_local_embeddings_table",
    "embedding_key",
    "ensure_embeddings_table",
    "rate_line",
    "text_key",
]
