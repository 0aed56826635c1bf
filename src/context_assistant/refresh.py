"""Bring the assistant's knowledge up to date: documents → chunk table → index. The one home of that order.

``context-assistant ingest``, the chat's ``/refresh`` and the web app's refresh button all call
:func:`refresh_documents`. Where Spark is available (a laptop with the local Spark, a notebook or job on
Databricks) it parses and chunks the changed documents and then syncs the index, in this process. A Databricks
App has no Spark, so there ``rag.refresh_job_id`` names the bundle's ingestion job and the refresh runs that
job (which does the same two steps on serverless) and follows its run.

:func:`refresh_index` is the second step alone: ``context-assistant sync`` and the bundle's sync task call
it. Progress goes to the ``progress`` argument of each call; nothing built is reconfigured for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core.clock import REAL_CLOCK, Clock
from .core.config import Config
from .core.console import Progress, quiet
from .core.errors import Conflict, ContextAssistantError, Unavailable
from .ingest.plan import IngestResult
from .ingest.run import IngestError, run_ingest
from .ingest.spark import get_spark, interrupting_spark, local_spark_lost
from .ingest.tables import TableRef, resolve_table
from .retrieval.base import IndexReport
from .retrieval.embed_spark import SyncVectors, pending_count, prepare_sync_vectors
from .retrieval.pgvector import PgVectorChunkIndex
from .retrieval.sync import ChunkSource, SyncResult
from .retrieval.tokenizer import chunking_from_config
from .services import Services

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# What a user does about a document that failed to parse (a new user read "FAILED x.pdf: not a valid PDF file"
# and wondered what then); the documents keep their previous chunks meanwhile.
FAILED_FILES_NEXT_STEP = (
    "Replace each failed file with a readable copy (re-export or re-save it) or remove it, then run again; "
    "until then a failed file keeps the chunks of its last good version, if it had one."
)

# Chunks per index write when Spark made the vectors: the sync only copies them, one table lookup per batch.
COPY_BATCH_SIZE = 5000
TERMINAL_LIFE_CYCLE_STATES = {"TERMINATED", "SKIPPED", "INTERNAL_ERROR"}


class RefreshError(Unavailable):
    """The refresh could not complete (the ingestion job could not start, failed or ran too long); ``str()``
    is one line for the user."""


class RefreshDisabled(Conflict, RefreshError):
    """There is nothing to refresh: document search is turned off."""


@dataclass
class RefreshResult:
    ingest: IngestResult | None = None
    sync: IndexReport | None = None  # a SyncResult, or the Vector Search backend's report
    job_run: dict[str, Any] | None = None  # when the refresh ran as a Databricks job

    @property
    def ok(self) -> bool:
        if self.job_run is not None:
            return self.job_run.get("result_state") == "SUCCESS"
        return self.sync is None or self.sync.ok

    def to_json(self) -> dict[str, Any]:
        """The ``ingest --json`` shape: the pipeline's summary (``documents``, ``failures``, ``chunks``,
        ``seconds``) plus ``sync`` (what the index sync did); or ``{"job_run": {...}}`` for a job run."""
        out: dict[str, Any] = self.ingest.to_json() if self.ingest is not None else {}
        if self.sync is not None:
            out["sync"] = self.sync.to_json()
        if self.job_run is not None:
            out["job_run"] = self.job_run
        return out

    def summary(self) -> str:
        lines = []
        if self.ingest is not None:
            d = self.ingest.to_json()["documents"]
            lines.append(
                f"Documents: {d['added']} added, {d['updated']} updated, {d['deleted']} deleted, "
                f"{d['unchanged']} unchanged, {d['failed']} failed, {d['skipped']} skipped "
                f"({self.ingest.chunks.written} chunks written, {self.ingest.chunks.deleted} deleted)."
            )
            lines += [f"FAILED {f.path}: {f.error}" for f in sorted(self.ingest.failures, key=lambda f: f.path)]
            lines += [
                f"STILL FAILING {f.path}: {f.error} (unchanged since it failed)"
                for f in sorted(self.ingest.still_failing, key=lambda f: f.path)
            ]
            if self.ingest.failures or self.ingest.still_failing:
                lines.append(FAILED_FILES_NEXT_STEP)
        if self.sync is not None:
            lines.append(self.sync.summary())
        if self.job_run is not None:
            run = self.job_run
            lines.append(
                f"Job run {run['run_id']}: {run.get('result_state') or run.get('state')} {run.get('url', '')}"
            )
        return "\n".join(lines)


def source_location(config: Config, source: str | None = None) -> str:
    """``source`` (default ``rag.source``) as the pipeline reads it: Volume paths and URIs as given, local
    folders resolved against the config's folder."""
    source = config.rag.source if source is None else source
    if source.startswith("/Volumes/") or "://" in source:
        return source
    return str(config.resolve_path(source))


def ingest_limits(config: Config) -> dict[str, Any]:
    """``run_ingest``'s limit and boundary arguments from the ``rag`` settings."""
    from .ingest.limits import ParseLimits

    rag = config.rag
    return {
        "max_file_bytes": int(rag.max_file_mb * 1024 * 1024),
        "symlinks": rag.symlinks,
        "limits": ParseLimits(seconds=rag.parse_timeout_seconds, memory_bytes=rag.parse_memory_mb * 1024 * 1024),
    }


def table_ref(config: Config, name: str) -> TableRef:
    """A chunk/documents table setting: ``catalog.schema.table``, or a folder under the data directory."""
    return resolve_table(name, local_dir=config.data_path)


def refresh_documents(
    services: Services,
    *,
    source: str | None = None,
    full: bool = False,
    progress: Progress | None = None,
    spark_factory: Callable[[], SparkSession] | None = None,
    wait: bool = True,
    clock: Clock = REAL_CLOCK,
    allow_empty_source: bool = False,
    allow_replace_source: bool = False,
) -> RefreshResult:
    """Ingest changed documents and sync the index; or, with ``rag.refresh_job_id``, run that job.

    ``source`` replaces ``rag.source`` for this run (``ingest --source``); the ``allow_*`` flags let it remove
    every ingested document (see :func:`context_assistant.ingest.run.run_ingest`).
    """
    config = services.config
    if not config.rag.enabled:
        raise RefreshDisabled("RAG is disabled (rag.enabled: false): there are no documents to refresh")
    if config.rag.refresh_job_id:
        return RefreshResult(job_run=run_refresh_job(services, wait=wait, clock=clock, progress=progress))

    chunk_size, chunk_overlap, counter = chunking_from_config(config.rag)  # a bad size is a ConfigError
    location = source_location(config, source)
    check_local_source(location)
    say = progress or quiet
    spark = spark_factory() if spark_factory is not None else get_spark(config.data_path)
    try:
        with interrupting_spark(spark):  # Ctrl-C stops the server's work too, not just our waiting for it
            ingest = run_ingest(
                spark,
                location,
                table_ref(config, config.rag.chunk_table),
                table_ref(config, config.rag.documents_table),
                chunk_size=chunk_size,
                chunk_overlap=chunk_overlap,
                counter=counter,
                pdf_parser=config.rag.pdf_parser,
                progress=say,
                allow_empty_source=allow_empty_source,
                allow_replace_source=allow_replace_source,
                **ingest_limits(config),
            )
    except ContextAssistantError:
        raise
    except Exception as exc:  # a gRPC error from a dead local server says nothing useful: say what happened
        lost = local_spark_lost()
        if lost is None:
            raise
        raise RefreshError(lost) from exc
    say("Syncing the index with the chunk table...")
    sync = refresh_index(services, full=full, progress=say, spark_factory=lambda: spark)
    return RefreshResult(ingest=ingest, sync=sync)


def check_local_source(location: str) -> None:
    """A local source must be a folder that exists; say exactly what is wrong when it is not. (A Volume path
    or URI is checked by Spark's listing.)"""
    if "://" in location or location.startswith("/Volumes/"):
        return
    path = Path(location)
    if path.is_dir():
        return
    if path.is_file():
        raise IngestError(
            f"{location} is a file, not a folder: the source (rag.source or --source) is the folder of documents "
            "the index mirrors, and anything not under it is removed from the index. Put the file in your "
            "documents folder and run ingest on that folder"
        )
    if path.exists():
        raise IngestError(f"{location} is not a folder (rag.source or --source must name a folder of documents)")
    raise IngestError(f"the documents folder does not exist: {location} (rag.source or --source)")


def refresh_index(
    services: Services,
    full: bool = False,
    *,
    progress: Progress | None = None,
    spark_factory: Callable[[], SparkSession] | None = None,
) -> IndexReport:
    """Sync the document index from the chunk table, then embed conversation turns still waiting for recall.

    The entry point shared by ``context-assistant sync``/``ingest`` and the ``rag_sync_job``. The pgvector
    index is filled from the chunk table (read through ``services.chunk_source``) and returns a
    :class:`SyncResult`; Vector Search reads the Delta table itself and returns its own report. Both have
    ``ok``, ``to_json()`` and ``summary()``. The pgvector sync's vectors come from the embeddings table,
    filled on Spark or in this process as ``rag.embed_on`` says (:func:`sync_vectors`); ``spark_factory``
    gives the session for that (default: :func:`get_spark`, only called when Spark is chosen).
    """
    config = services.config
    if not config.rag.enabled:
        result: IndexReport = SyncResult()
    else:
        index = services.chunk_index
        source = services.chunk_source if index.needs_source else None
        started = REAL_CLOCK.monotonic()
        vectors = sync_vectors(services, index, source, full, progress, spark_factory)
        if vectors is None:
            result = index.refresh(source, full=full, progress=progress)
        else:
            assert isinstance(index, PgVectorChunkIndex)
            sync = index.refresh(
                source,
                full=full,
                progress=progress,
                embedder=vectors.embedder,
                batch_size=COPY_BATCH_SIZE if vectors.embed_on == "spark" else None,
            )
            sync.embedding = vectors.to_json()
            sync.seconds = REAL_CLOCK.monotonic() - started  # the whole sync: the Spark embedding before it too
            result = sync
    if config.memory.recall and isinstance(result, SyncResult):
        result.turns_embedded = services.recall.index_pending()
    return result


def sync_vectors(
    services: Services,
    index: Any,
    source: ChunkSource | None,
    full: bool,
    progress: Progress | None,
    spark_factory: Callable[[], SparkSession] | None,
) -> SyncVectors | None:
    """For the pgvector index: where this sync embeds and the embedder that reads the embeddings table."""
    if not isinstance(index, PgVectorChunkIndex) or source is None:
        return None
    config = services.config

    def pending() -> int:
        return pending_count(source.fingerprints(), index.fingerprints(), full)

    return prepare_sync_vectors(
        config.rag,
        config.data_path,
        services.embedder,
        lambda: services.workspace,
        pending=pending,
        full=full,
        spark_factory=spark_factory or (lambda: get_spark(config.data_path)),
        progress=progress,
    )


def run_refresh_job(
    services: Services,
    *,
    wait: bool = True,
    clock: Clock = REAL_CLOCK,
    poll_seconds: float = 10.0,
    timeout_seconds: float = 3600.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Start the ingestion job (``rag.refresh_job_id``) and, with ``wait``, follow it to the end."""
    job_id = int(services.config.rag.refresh_job_id)
    jobs = services.workspace.jobs
    try:
        started = jobs.run_now(job_id=job_id)
        run_id = started.bind()["run_id"]  # the SDK binds the new run's id to the waiter it returns
    except Exception as exc:
        raise RefreshError(f"could not start the ingestion job {job_id}: {exc}") from exc
    say = progress or quiet
    say(f"Started job {job_id}, run {run_id}.")
    deadline = clock.monotonic() + timeout_seconds
    while True:
        run = jobs.get_run(run_id=run_id)
        state = run.state
        life = state.life_cycle_state.value if state and state.life_cycle_state else "UNKNOWN"
        result = state.result_state.value if state and state.result_state else None
        info = {"job_id": job_id, "run_id": run_id, "state": life, "result_state": result, "url": run.run_page_url}
        if life in TERMINAL_LIFE_CYCLE_STATES or not wait:
            if life in TERMINAL_LIFE_CYCLE_STATES and result != "SUCCESS":
                message = (state.state_message if state else "") or "no message"
                raise RefreshError(
                    f"the ingestion job run {run_id} ended {result or life}: {message} ({run.run_page_url})"
                )
            return info
        if clock.monotonic() > deadline:
            raise RefreshError(f"the ingestion job run {run_id} did not finish within {timeout_seconds:g}s")
        say(f"Job run {run_id}: {life}...")
        clock.sleep(poll_seconds)


__all__ = [
    "RefreshDisabled",
    "RefreshError",
    "RefreshResult",
    "refresh_documents",
    "refresh_index",
    "run_refresh_job",
    "source_location",
    "sync_vectors",
    "table_ref",
]
