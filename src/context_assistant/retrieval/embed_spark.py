"""Embed chunks on Spark into the embeddings table, and decide per sync where embedding runs (``rag.embed_on``).

:func:`embed_on_spark` is what scales past one machine: the chunk texts that have no vector under the model
yet (an anti-join with the embeddings table, see :mod:`.embed_table`) are embedded by ``mapInArrow`` over
``rag.embed_partitions`` partitions, each partition keeping ``rag.embed_concurrency`` requests to a serving
endpoint in flight (a local model embeds in the worker itself: pysail locally runs exactly this code with
MiniLM). Work goes in rounds, smallest documents first, one Delta append per round, with a progress line
(chunks/s, ETA) after each. A round is sized to take about :data:`ROUND_SECONDS` at the rate the previous one
reached (the first is :data:`FIRST_ROUND_CHUNKS` texts), at most ``rag.embed_round_chunks``: a fast endpoint
gets big rounds, a laptop's CPU model small ones, so progress shows and an interruption keeps all but about a
minute of the work.

:func:`prepare_sync_vectors` is called by the index sync: ``rag.embed_on`` ``spark`` runs the above and
hands the sync an embedder that copies stored vectors; ``driver`` embeds in this process (through the same
table, when it is a local folder, so finished work survives an interruption); ``auto`` picks ``spark`` when
at least ``rag.embed_spark_threshold`` chunks wait and a Spark session can be had.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.console import Progress, quiet
from ..ingest.spark import interrupting_spark
from ..ingest.tables import TableRef, create_table, resolve_table, sql_string
from .embed_table import (
    DeltaLakeEmbeddingStore,
    EmbeddingStore,
    SparkEmbeddingStore,
    StoredVectorsEmbedder,
    append_frame,
    create_local_embeddings_table,
    ensure_embeddings_table,
    rate_line,
    text_key,
)
from .embeddings import (
    DEFAULT_ENDPOINT_BATCH,
    DEFAULT_LOCAL_BATCH,
    Embedder,
    EmbeddingError,
    LocalEmbedder,
    ServingEndpointEmbedder,
    parse_model_spec,
)
from .sync import SyncError, embedding_text

log = logging.getLogger(__name__)

_UDF_SCHEMA = "content_hash STRING, model STRING, dimension INT, embedding ARRAY<FLOAT>, error STRING"
_KEYED_SCHEMA = "path STRING, chunk_index INT, content_hash STRING, input STRING"


# ---------------------------------------------------------------------------------------------------------
# The Spark side


class _StaticConfig:
    """What :class:`ServingEndpointEmbedder` reads of a workspace config, frozen for Spark workers."""

    def __init__(self, host: str, headers: dict[str, str]) -> None:
        self.host = host
        self._headers = dict(headers)

    def authenticate(self) -> dict[str, str]:
        return dict(self._headers)


class _StaticWorkspace:
    def __init__(self, host: str, headers: dict[str, str]) -> None:
        self.config = _StaticConfig(host, headers)


@dataclass(frozen=True)
class WorkerModel:
    """Everything a Spark worker needs to build the embedder (picklable: no clients, no model)."""

    model: str  # the identity stored in the table (the driver embedder's model_name)
    provider: str  # local | endpoint
    name: str  # local model name/path, or endpoint name
    host: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    request_size: int = DEFAULT_ENDPOINT_BATCH
    concurrency: int = 4

    def build(self) -> Embedder:
        if self.provider == "endpoint":
            # The embedder reads only ``.config.host`` and ``.config.authenticate()`` of its workspace.
            workspace: Any = _StaticWorkspace(self.host, self.headers)
            return ServingEndpointEmbedder(self.name, workspace, batch_size=10**9)
        return LocalEmbedder(self.name)


def worker_model(embedder: Embedder, embedding_model: str, workspace: Any, concurrency: int) -> WorkerModel:
    """Freeze the driver's embedder for the workers: an endpoint's host and auth headers are read here, once
    (a token is good for the length of a run), because workers cannot build a workspace client."""
    spec = parse_model_spec(embedding_model)
    if spec.provider != "endpoint":
        return WorkerModel(
            embedder.model_name, "local", spec.name, request_size=DEFAULT_LOCAL_BATCH, concurrency=1
        )
    client = workspace() if callable(workspace) and not hasattr(workspace, "config") else workspace
    if client is None:
        raise EmbeddingError(f"serving endpoint {spec.name!r} needs a Databricks workspace client")
    config = client.config
    try:
        headers = dict(config.authenticate())
    except Exception as exc:
        raise EmbeddingError(f"could not authenticate to Databricks for endpoint {spec.name!r}: {exc}") from exc
    headers["Content-Type"] = "application/json"
    host = (config.host or "").rstrip("/")
    return WorkerModel(embedder.model_name, "endpoint", spec.name, host, headers, concurrency=max(1, concurrency))


def make_partition_embedder(spec: WorkerModel) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The ``mapInArrow`` function: (content_hash, input) batches in, (content_hash, model, dimension,
    embedding, error) out. Requests of ``spec.request_size`` texts, ``spec.concurrency`` in flight; a failed
    request is retried text by text so one bad input fails alone, with its error kept in the row."""

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        embedder = spec.build()

        def embed_part(texts: list[str]) -> list[tuple[list[float] | None, str | None]]:
            try:
                return [(v, None) for v in embedder.embed(texts)]
            except EmbeddingError as exc:
                if len(texts) == 1:
                    return [(None, str(exc))]
            out: list[tuple[list[float] | None, str | None]] = []
            for text in texts:
                try:
                    out.append((embedder.embed([text])[0], None))
                except EmbeddingError as exc:
                    out.append((None, str(exc)))
            return out

        with ThreadPoolExecutor(max_workers=spec.concurrency) as pool:
            for batch in batches:
                keys = batch.column("content_hash").to_pylist()
                texts = batch.column("input").to_pylist()
                parts = [texts[i : i + spec.request_size] for i in range(0, len(texts), spec.request_size)]
                results = [r for part in pool.map(embed_part, parts) for r in part]
                vectors = [v for v, _ in results]
                yield pa.RecordBatch.from_pydict(
                    {
                        "content_hash": keys,
                        "model": [spec.model] * len(keys),
                        "dimension": [len(v) if v is not None else None for v in vectors],
                        "embedding": vectors,
                        "error": [e for _, e in results],
                    },
                    schema=pa.schema(
                        [
                            ("content_hash", pa.string()),
                            ("model", pa.string()),
                            ("dimension", pa.int32()),
                            ("embedding", pa.list_(pa.float32())),
                            ("error", pa.string()),
                        ]
                    ),
                )

    return run


def _key_batches(batches: Iterator[Any]) -> Iterator[Any]:
    """``mapInArrow``: chunk rows -> (path, chunk_index, content_hash = embedding key, input text)."""
    import pyarrow as pa

    for batch in batches:
        headings = batch.column("heading").to_pylist()
        texts = batch.column("text").to_pylist()
        inputs = [embedding_text(h or "", t) for h, t in zip(headings, texts, strict=True)]
        yield pa.RecordBatch.from_pydict(
            {
                "path": batch.column("path"),
                "chunk_index": batch.column("chunk_index"),
                "content_hash": [text_key(i) for i in inputs],
                "input": inputs,
            }
        )


ROUND_SECONDS = 60.0  # the time a round should take, at the rate the previous round reached
FIRST_ROUND_CHUNKS = 500  # the first round's size, before any rate is known


def next_round_size(done: int, seconds: float, most: int) -> int:
    """Texts for the next round: what the last one's rate (``done`` in ``seconds``) embeds in
    :data:`ROUND_SECONDS`, between :data:`FIRST_ROUND_CHUNKS` (or ``most``, if smaller) and ``most``."""
    rate = done / max(seconds, 1e-3)
    least = min(FIRST_ROUND_CHUNKS, most)
    return max(least, min(most, int(rate * ROUND_SECONDS)))


@dataclass
class SparkEmbedReport:
    """What :func:`embed_on_spark` did; ``to_json()`` goes into ``sync --json`` as ``spark_embedding``."""

    pending: int = 0  # distinct texts without a vector under the model when the run started
    embedded: int = 0
    failed: int = 0
    rounds: int = 0
    partitions: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # a few distinct failure messages

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "embedded": self.embedded,
            "failed": self.failed,
            "rounds": self.rounds,
            "partitions": self.partitions,
            "seconds": round(self.seconds, 3),
            "errors": self.errors,
        }


def embed_on_spark(
    spark: Any,
    chunk_table: TableRef,
    embeddings_table: TableRef,
    spec: WorkerModel,
    *,
    partitions: int = 2,
    round_chunks: int = 10000,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SparkEmbedReport:
    """Embed, on Spark, every chunk text that has no vector under ``spec.model`` in the embeddings table.

    The texts to embed are listed once, in a staging table next to the embeddings table (``<name>_pending``),
    numbered smallest documents first, and taken in rounds of at most ``round_chunks`` texts, each sized by
    :func:`next_round_size`; each round is one append (one Delta commit), so an interruption keeps the finished
    rounds and the next run starts where this one stopped. A text that fails is kept as a row without a vector
    (``error`` says why) and tried again by the next run.
    """
    say = progress or quiet
    started = clock()
    most = max(1, int(round_chunks))
    run_id = uuid.uuid4().hex[:12]
    report = SparkEmbedReport(partitions=max(1, partitions))
    ensure_embeddings_table(spark, embeddings_table)
    try:
        if chunk_table.location is not None:
            if not (Path(chunk_table.location) / "_delta_log").is_dir():
                raise SyncError(
                    f"the chunk table {chunk_table.label} does not exist yet; run `context-assistant ingest` first"
                )
            create_table(spark, chunk_table, None)  # registers the folder under chunk_table.sql_name
        chunks = spark.table(chunk_table.sql_name).select("path", "chunk_index", "heading", "text")
    except SyncError:
        raise
    except Exception as exc:
        raise SyncError(f"could not read the chunk table {chunk_table.label}: {str(exc).splitlines()[0]}") from exc
    keyed_view = f"ca_embed_keyed_{run_id}"
    chunks.mapInArrow(_key_batches, _KEYED_SCHEMA).createOrReplaceTempView(keyed_view)
    model = sql_string(spec.model)
    pending_sql = (
        # One row per distinct text, with the size of its (smallest) document: small documents go first.
        f"WITH sized AS (SELECT k.*, count(*) OVER (PARTITION BY k.path) AS doc_chunks FROM {keyed_view} k), "
        "todo AS (SELECT content_hash, min(input) AS input, min(doc_chunks) AS doc_chunks, "
        "min(path) AS path, min(chunk_index) AS chunk_index FROM sized GROUP BY content_hash), "
        "pending AS (SELECT t.* FROM todo t "
        f"LEFT ANTI JOIN (SELECT content_hash FROM {embeddings_table.sql_name} WHERE model = {model} "
        "AND embedding IS NOT NULL) e ON t.content_hash = e.content_hash) "
        "SELECT content_hash, input, "
        "row_number() OVER (ORDER BY doc_chunks, path, chunk_index) - 1 AS position FROM pending"
    )
    # The work list is written once per run (the chunk table is scanned and keyed once); each round then reads
    # its slice of it.
    staging = embeddings_table.sibling("_pending")
    writer = spark.sql(pending_sql).write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if staging.location is not None:
        writer.save(staging.location)
        create_table(spark, staging, None)
    else:
        writer.saveAsTable(staging.sql_name)
    report.pending = int(spark.sql(f"SELECT count(*) AS n FROM {staging.sql_name}").collect()[0].n)
    if not report.pending:
        report.seconds = clock() - started
        return report
    say(
        f"embedding {report.pending} chunk text(s) on Spark ({report.partitions} partition(s), "
        f"{spec.concurrency} request(s) in flight each, rounds of about a minute, at most {most})"
    )
    embed = make_partition_embedder(spec)
    start, size = 0, min(FIRST_ROUND_CHUNKS, most)
    while start < report.pending:
        report.rounds += 1
        round_id = f"{run_id}-{report.rounds}"
        round_started = clock()
        batch = spark.sql(
            f"SELECT content_hash, input FROM {staging.sql_name} "
            f"WHERE position >= {start} AND position < {start + size}"
        ).repartition(report.partitions)
        out = batch.mapInArrow(embed, _UDF_SCHEMA).selectExpr(
            "*", f"{sql_string(round_id)} AS run_id", "current_timestamp() AS embedded_at"
        )
        append_frame(out, embeddings_table)
        row = spark.sql(
            "SELECT count(embedding) AS ok, count(*) - count(embedding) AS bad, "
            "slice(collect_set(error), 1, 3) AS errors "
            f"FROM {embeddings_table.sql_name} WHERE run_id = {sql_string(round_id)}"
        ).collect()[0]
        report.embedded += int(row.ok)
        report.failed += int(row.bad)
        for error in row.errors or []:
            if error and error not in report.errors and len(report.errors) < 5:
                report.errors.append(error)
        done = report.embedded + report.failed
        say(f"round {report.rounds}: {rate_line(done, report.pending, started, clock())}")
        taken = min(size, report.pending - start)
        start += size
        size = next_round_size(taken, clock() - round_started, most)
    report.seconds = clock() - started
    return report


def pending_count(source_fingerprints: Iterable[Any], indexed: dict[str, str], full: bool) -> int:
    """How many chunks the index sync would embed (``rag.embed_on: auto`` compares it with the threshold)."""
    if full:
        return sum(1 for _ in source_fingerprints)
    return sum(1 for fp in source_fingerprints if indexed.get(fp.chunk_id) != fp.content_hash)


@dataclass
class SyncVectors:
    """How the index sync gets its vectors this run: ``embedder`` to hand it, and where they came from."""

    embedder: Embedder
    embed_on: str  # spark | driver
    spark: SparkEmbedReport | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"embed_on": self.embed_on}
        if isinstance(self.embedder, StoredVectorsEmbedder):
            out["vectors_reused"] = self.embedder.reused
            out["vectors_computed_on_driver"] = self.embedder.computed
        if self.spark is not None:
            out["spark"] = self.spark.to_json()
        return out


def choose_embed_on(setting: str, pending: Callable[[], int], threshold: int, spark_possible: bool) -> str:
    """``rag.embed_on`` resolved: ``auto`` is ``spark`` when at least ``threshold`` chunks wait (and Spark can
    run here), else ``driver``."""
    if setting in ("spark", "driver"):
        return setting
    if not spark_possible:
        return "driver"
    return "spark" if pending() >= threshold else "driver"


def prepare_sync_vectors(
    rag: Any,
    data_path: str | Path,
    embedder: Embedder,
    workspace: Any,
    *,
    pending: Callable[[], int],
    full: bool = False,
    spark_factory: Callable[[], Any] | None = None,
    progress: Progress | None = None,
) -> SyncVectors:
    """Decide where this sync embeds (``rag.embed_on``), run the Spark embedding if that is where, and return
    the embedder the index sync should use: one that reads the embeddings table first."""
    say = progress or quiet
    table = resolve_table(rag.embeddings_table, local_dir=data_path)
    mode = choose_embed_on(rag.embed_on, pending, rag.embed_spark_threshold, spark_factory is not None)
    if mode == "spark":
        if spark_factory is None:
            raise SyncError("rag.embed_on is 'spark' but no Spark session is available to this command")
        try:
            spark = spark_factory()
        except Exception as exc:
            if rag.embed_on == "spark":
                raise
            say(
                f"no Spark session ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): embedding here"
            )
            return _driver_vectors(embedder, table, full, say)
        spec = worker_model(embedder, rag.embedding_model, workspace, rag.embed_concurrency)
        with interrupting_spark(spark):  # Ctrl-C stops the round on the server too; finished rounds stay
            report = embed_on_spark(
                spark,
                resolve_table(rag.chunk_table, local_dir=data_path),
                table,
                spec,
                partitions=rag.embed_partitions,
                round_chunks=rag.embed_round_chunks,
                progress=say,
            )
        store: EmbeddingStore = (
            DeltaLakeEmbeddingStore(table.location)
            if table.location is not None
            else SparkEmbeddingStore(spark, table)
        )
        # Vectors Spark could not make are tried once more on the driver, so the failure is reported per document.
        return SyncVectors(StoredVectorsEmbedder(embedder, store, progress=say), "spark", report)
    return _driver_vectors(embedder, table, full, say)


def _driver_vectors(embedder: Embedder, table: TableRef, full: bool, say: Progress) -> SyncVectors:
    if table.location is None:  # a catalog table without Spark: embed directly, as before the table existed
        return SyncVectors(embedder, "driver")
    local = DeltaLakeEmbeddingStore(table.location)
    if not local.exists():
        create_local_embeddings_table(table.location)
    # --full re-embeds on the driver (reuse=False) and stores the new vectors.
    return SyncVectors(StoredVectorsEmbedder(embedder, local, reuse=not full, progress=say), "driver")


__all__ = [
    "SparkEmbedReport",
    "SyncVectors",
    "WorkerModel",
    "choose_embed_on",
    "embed_on_spark",
    "make_partition_embedder",
    "pending_count",
    "prepare_sync_vectors",
    "worker_model",
]
