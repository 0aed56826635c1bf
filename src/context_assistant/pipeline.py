"""Ingest a folder of team documents into Delta tables with Spark, incrementally, with SQL that runs as is on
Databricks (serverless / Spark Connect, Unity Catalog tables) and locally on pysail (folder-backed tables).

Tables (created if missing; see :data:`CHUNK_COLUMNS` and :data:`DOCUMENT_COLUMNS`):

* chunk table: one row per chunk, keyed by ``chunk_id`` (sha256 of path and position, from
  :mod:`context_assistant.chunking`). Created with ``delta.enableChangeDataFeed = true`` because Vector
  Search Delta Sync needs it; pysail cannot write such tables yet, so locally it is created without (and
  ``progress`` says so).
* documents table: one row per file seen in the source, keyed by ``path``. ``status`` is ``ok`` (parsed,
  its chunks are in the chunk table), ``failed`` (the latest version could not be parsed; ``error`` says
  why; the chunks of the last version that did parse are kept, so a broken upload loses nothing) or
  ``skipped`` (not a format we parse, or larger than ``max_file_bytes``; ``error`` says which; no chunks).
  Inventorying skipped files lets people see why a document never shows up in answers.

``path`` is the file's path relative to the source folder, with ``/`` separators (``teams/a.md``), the same
locally and on Databricks, and unchanged when the Volume is moved or renamed; it is what citations show.

How one run works, and why each step is where it is:

1. List the source with ``binaryFile`` selecting only path/length/modificationTime, so no file is read.
2. Plan on the driver (:func:`plan_ingest`, pure Python) against the documents table: a file whose size,
   modification time and chunking settings all equal the stored ones, and whose chunk rows are all still
   there, is unchanged and is never read. (So deleting the chunk table by hand makes the next run rebuild
   it, and chunks whose path has neither a document row nor a file are deleted.)
3. Read only the remaining candidates' bytes, hash them in Spark SQL (``sha2``), and pass to the parser
   (``mapInArrow``) only files whose hash differs from the stored one: a file that was merely touched is
   hashed but never parsed, and its bytes never reach Python.
4. Materialise the parser output in a staging Delta table (``<chunk table>__ingest_staging``), because
   serverless compute cannot cache and both MERGEs below read it; parsing twice would double the cost.
5. ``MERGE INTO`` the chunk table from a change set (insert / update / delete per ``chunk_id``) computed
   against the chunks of exactly the affected paths: a shortened document loses its tail chunks, chunks
   whose text did not change are not rewritten (so Change Data Feed and the embedding step only see real
   changes), a removed file loses all its chunks.
6. ``MERGE INTO`` the documents table from the full current inventory, with ``WHEN NOT MATCHED BY SOURCE
   THEN DELETE`` removing files that left the source. It runs last: if the job dies before it, the next
   run sees the old hashes and redoes the work, so a partial run never leaves chunks marked done.

Nothing is written when nothing changed (no empty Delta commits). One ingest at a time per table pair.
The staging table is kept between runs (overwritten by each run that parses something; safe to drop).
Files and folders whose names start with ``.`` or ``_`` are ignored, as Spark's file listing does.

Empty files: Spark's ``binaryFile`` (and pysail's) never lists zero-byte files, so a new empty file is
invisible. A known document truncated to zero bytes is found by a ``stat`` (local folder or ``/Volumes``
mount) and marked failed ("empty file") with its chunks kept, rather than treated as deleted.

Local (pysail) differences, handled here so results match Databricks: pysail lists a missing source as
empty (we refuse an empty source unless ``allow_empty_source``), lists a file larger than its 128 MiB
split size once per split (deduplicated; files above ``max_file_bytes``, 64 MiB by default, are skipped
anyway) and cannot create Change Data Feed tables. ``load()`` treats paths as globs and pysail has no
escape for glob characters, so a changed file whose name contains one is read with a filtered scan of the
whole source instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from context_assistant.ai_parse import ai_parse_column
from context_assistant.clock import REAL_CLOCK, Clock
from context_assistant.tables import TableRef, create_table, resolve_table, sql_string

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from context_assistant.tokenization import TokenCounter

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
# Bump when parsing or chunking changes in a way that should re-chunk unchanged files.
# 2: structure-aware parsing (Markdown tables, DOCX headers/footers/notes), contextual chunk headers, token sizes.
PIPELINE_VERSION = 2
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
PARSE_SECONDS = 300.0  # the longest one file may take to parse and chunk
STAGING_SUFFIX = "__ingest_staging"

CHUNK_COLUMNS = (
    "chunk_id STRING NOT NULL, path STRING NOT NULL, chunk_index INT NOT NULL, text STRING NOT NULL, "
    "heading STRING NOT NULL, page INT, content_hash STRING NOT NULL, doc_hash STRING NOT NULL, "
    "modified_at TIMESTAMP NOT NULL, ingested_at TIMESTAMP NOT NULL"
)
"""``doc_hash``/``modified_at``/``ingested_at`` on a chunk describe the document version that last changed
that chunk's text: chunks an edit did not touch are left alone rather than rewritten."""

DOCUMENT_COLUMNS = (
    "path STRING NOT NULL, doc_hash STRING, status STRING NOT NULL, error STRING, chunk_count INT NOT NULL, "
    "size_bytes BIGINT NOT NULL, modified_at TIMESTAMP NOT NULL, chunking STRING, "
    "ingested_at TIMESTAMP NOT NULL"
)
"""``doc_hash`` is the sha256 of the bytes last read (NULL for skipped files); ``chunk_count`` the number of
chunks in the chunk table for the path; ``chunking`` the settings they were cut with; ``ingested_at`` the
run that last parsed the file or changed its status."""

CHANGE_DATA_FEED = {"delta.enableChangeDataFeed": "true"}

_PARSED_SCHEMA = (
    "path STRING, size_bytes BIGINT, modified_us BIGINT, doc_hash STRING, status STRING, error STRING, "
    "chunk_count INT, chunks ARRAY<STRUCT<chunk_id: STRING, chunk_index: INT, text: STRING, heading: STRING, "
    "page: INT, content_hash: STRING>>"
)
_FRESH_SCHEMA = (
    "chunk_id STRING, path STRING, chunk_index INT, text STRING, heading STRING, page INT, content_hash STRING, "
    "doc_hash STRING, modified_us BIGINT"
)
_UNCHANGED = "unchanged"  # parser output status for a candidate whose bytes hash to the stored hash
EMPTY_HASH = hashlib.sha256(b"").hexdigest()
_GLOB_CHARS = re.compile(r"[*?\[\]{}\\]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


class IngestError(Exception):
    """The run cannot proceed (bad source, bad settings); nothing was written. ``str()`` says why."""


@dataclass
class DocumentCounts:
    added: int = 0  # new files (or files no longer skipped) parsed fine
    updated: int = 0  # changed files parsed fine
    deleted: int = 0  # ingested files that left the source
    unchanged: int = 0  # supported files not re-parsed (same size+mtime, or same hash)
    failed: int = 0  # files that failed to parse in this run (previous chunks, if any, kept)
    skipped: int = 0  # files present but not ingested (unsupported type, too large)


@dataclass
class ChunkCounts:
    written: int = 0  # chunk rows inserted or updated (text, heading or page changed)
    deleted: int = 0  # chunk rows removed (tail of a shortened file, removed or now skipped files)


@dataclass(frozen=True)
class Failure:
    path: str
    error: str


@dataclass
class IngestResult:
    """What a run did; ``to_json()`` is the shape the CLI prints and the job logs.

    A file listed in ``failures`` keeps the chunks of its last version that parsed (if it ever did), so
    answers still cite it; its documents row says ``failed`` with the same error until its bytes change.
    """

    documents: DocumentCounts = field(default_factory=DocumentCounts)
    failures: list[Failure] = field(default_factory=list)
    # Unchanged files that failed in an earlier run and were not retried (same bytes): still not answerable.
    still_failing: list[Failure] = field(default_factory=list)
    chunks: ChunkCounts = field(default_factory=ChunkCounts)
    seconds: float = 0.0
    parsed: int = 0  # files handed to the parser (not in to_json: a diagnostic for tests and benchmarks)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps`` it); failures sorted by path."""
        d = self.documents
        return {
            "documents": {
                "added": d.added,
                "updated": d.updated,
                "deleted": d.deleted,
                "unchanged": d.unchanged,
                "failed": d.failed,
                "skipped": d.skipped,
            },
            "failures": [{"path": f.path, "error": f.error} for f in sorted(self.failures, key=lambda f: f.path)],
            "still_failing": [
                {"path": f.path, "error": f.error} for f in sorted(self.still_failing, key=lambda f: f.path)
            ],
            "chunks": {"written": self.chunks.written, "deleted": self.chunks.deleted},
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class SourceFile:
    """A file as listed: ``path`` relative to the source root; ``modified_us`` microseconds since epoch."""

    path: str
    size_bytes: int
    modified_us: int


@dataclass(frozen=True)
class KnownDocument:
    """A row of the documents table as the planner needs it."""

    path: str
    doc_hash: str | None
    status: str
    error: str | None
    chunk_count: int
    size_bytes: int
    modified_us: int
    chunking: str | None


@dataclass
class IngestPlan:
    """What to do with each file, decided before any file is read."""

    candidates: list[SourceFile] = field(default_factory=list)  # read + hash, parse if the hash differs
    previous_hash: dict[str, str | None] = field(default_factory=dict)  # per candidate; None: always parse
    unchanged: list[SourceFile] = field(default_factory=list)  # trusted unchanged by size+mtime
    skipped: list[tuple[SourceFile, str]] = field(default_factory=list)  # (file, reason)
    removed: list[KnownDocument] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # paths with chunks but no document row and no file


def chunking_signature(
    chunk_size: int, chunk_overlap: int, counter: TokenCounter | None = None, pdf_parser: str = "builtin"
) -> str:
    """Stored per document so that changing chunk settings, the tokenizer they are counted in (the embedding
    model), the PDF parser or the pipeline re-chunks unchanged files."""
    unit = f"tokens={counter.name}" if counter is not None else "chars"
    parser = "" if pdf_parser == "builtin" else f",pdf={pdf_parser}"
    return f"size={chunk_size},overlap={chunk_overlap},{unit}{parser},v={PIPELINE_VERSION}"


def skip_reason(path: str, size_bytes: int, max_file_bytes: int) -> str | None:
    """Why a file is not ingested, or None when it should be."""
    from context_assistant.documents import extension_of, is_supported

    if not is_supported(path):
        ext = extension_of(path)
        return f"unsupported file type {ext!r}" if ext else "unsupported file type (no extension)"
    if size_bytes > max_file_bytes:
        return f"file is {_human_size(size_bytes)}, larger than the {_human_size(max_file_bytes)} limit"
    return None


def plan_ingest(
    files: list[SourceFile],
    known: dict[str, KnownDocument],
    chunking: str,
    max_file_bytes: int,
    stored_chunks: Mapping[str, int] | None = None,
) -> IngestPlan:
    """Sort listed files into candidates / unchanged / skipped and find what left the source.

    A stored document is trusted (may be skipped by size+mtime, or by hash) only if it was cut with the
    same chunking and ``stored_chunks`` (rows per path in the chunk table, when given) still holds its
    ``chunk_count`` chunks: deleting or damaging the chunk table by hand makes the next run rebuild it.
    """
    plan = IngestPlan()
    listed = set()
    for f in files:
        listed.add(f.path)
        reason = skip_reason(f.path, f.size_bytes, max_file_bytes)
        if reason is not None:
            plan.skipped.append((f, reason))
            continue
        prev = known.get(f.path)
        trusted = (
            prev is not None
            and prev.status in (OK, FAILED)
            and prev.chunking == chunking
            and (stored_chunks is None or stored_chunks.get(f.path, 0) == prev.chunk_count)
        )
        if trusted and prev is not None and (prev.size_bytes, prev.modified_us) == (f.size_bytes, f.modified_us):
            plan.unchanged.append(f)
        else:
            plan.candidates.append(f)
            plan.previous_hash[f.path] = prev.doc_hash if trusted and prev is not None else None
    plan.removed = [doc for path, doc in sorted(known.items()) if path not in listed]
    plan.orphans = sorted(p for p in (stored_chunks or {}) if p not in known and p not in listed)
    return plan


class ParseTimeout(BaseException):
    """Parsing one file took longer than ``PARSE_SECONDS``. A BaseException, like KeyboardInterrupt, so the
    parsers' own ``except Exception`` wrappers cannot swallow it half way."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`ParseTimeout` in this block after ``seconds`` of wall time.

    Uses SIGALRM, so it only works in a process's main thread on POSIX — which is where Spark's Python
    workers run a ``mapInArrow`` function. Elsewhere (threads, Windows) the block runs without a limit.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise ParseTimeout(f"parsing took longer than {seconds:g}s (a pathological or huge file?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_and_chunk(
    path: str,
    data: bytes,
    chunk_size: int,
    chunk_overlap: int,
    timeout: float = PARSE_SECONDS,
    counter: TokenCounter | None = None,
    ai_parsed: str | None = None,
) -> tuple[str, str | None, list]:
    """Parse and chunk one file: ``(status, error, chunks)``. Never raises for bad input: a parser crash on a
    hostile file becomes a ``failed`` status with the reason, and a parser stuck on one (pure-Python parsers
    can loop for a very long time on crafted PDFs) is stopped after ``timeout`` seconds, so one file cannot
    stop or stall the run."""
    from context_assistant.chunking import chunk_document
    from context_assistant.documents import ParseError, UnsupportedFormat, parse_document

    try:
        with time_limit(timeout):
            if ai_parsed is not None:  # rag.pdf_parser: ai_parse_document answered for this PDF
                from context_assistant.ai_parse import sections_from_ai_parse
                from context_assistant.documents import ParsedDocument

                doc = ParsedDocument(path, sections_from_ai_parse(ai_parsed))
                if not doc.sections:
                    raise ParseError("ai_parse_document found no text")
            else:
                doc = parse_document(path, data)
            chunks = chunk_document(doc, chunk_size=chunk_size, chunk_overlap=chunk_overlap, counter=counter)
    except ParseTimeout as error:
        return FAILED, str(error), []
    except ParseError as error:
        return FAILED, str(error) or "could not be parsed", []
    except UnsupportedFormat as error:
        return FAILED, f"unsupported format: {error}", []
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:
        return FAILED, f"unexpected {type(error).__name__} while parsing: {error}", []
    return OK, None, chunks


def make_batch_parser(
    chunk_size: int, chunk_overlap: int, counter: TokenCounter | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Rows may carry ``ai_parsed``, the JSON answer of ``ai_parse_document`` for a PDF, parsed instead."""
    """The ``mapInArrow`` function: rows with NULL ``content`` (hash unchanged) pass through unparsed."""

    def parse_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        schema = _parsed_arrow_schema()
        for batch in batches:
            out: list[dict[str, Any]] = []
            for row in batch.to_pylist():
                record = {k: row[k] for k in ("path", "size_bytes", "modified_us", "doc_hash")}
                if row["content"] is None:
                    record.update(status=_UNCHANGED, error=None, chunk_count=0, chunks=[])
                else:
                    status, error, chunks = parse_and_chunk(
                        row["path"],
                        row["content"],
                        chunk_size,
                        chunk_overlap,
                        counter=counter,
                        ai_parsed=row.get("ai_parsed"),
                    )
                    record.update(
                        status=status,
                        error=error,
                        chunk_count=len(chunks),
                        chunks=[
                            {
                                "chunk_id": c.chunk_id,
                                "chunk_index": c.chunk_index,
                                "text": c.text,
                                "heading": c.heading,
                                "page": c.page,
                                "content_hash": c.content_hash,
                            }
                            for c in chunks
                        ],
                    )
                out.append(record)
            yield pa.RecordBatch.from_pylist(out, schema=schema)

    return parse_batches


def _parsed_arrow_schema() -> pa.Schema:
    import pyarrow as pa

    chunk = pa.struct(
        [
            ("chunk_id", pa.string()),
            ("chunk_index", pa.int32()),
            ("text", pa.string()),
            ("heading", pa.string()),
            ("page", pa.int32()),
            ("content_hash", pa.string()),
        ]
    )
    return pa.schema(
        [
            ("path", pa.string()),
            ("size_bytes", pa.int64()),
            ("modified_us", pa.int64()),
            ("doc_hash", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("chunk_count", pa.int32()),
            ("chunks", pa.list_(chunk)),
        ]
    )


# --------------------------------------------------------------------------------------------- paths


def normalize_root(source: str) -> str:
    """The source as the path prefix ``binaryFile`` reports (scheme and leading/trailing slashes dropped).

    Mirrors :func:`relative_path_sql`: Databricks reports ``dbfs:/Volumes/c/s/v/a.md``, pysail
    ``tmp/docs/a.md`` (no leading slash); both normalise to a scheme-less, slash-less prefix.
    """
    return _SCHEME.sub("", source).strip("/")


def relative_path_sql(column: str, root: str) -> str:
    """SQL for the path relative to ``root`` (from :func:`normalize_root`); a single-file source yields
    its file name."""
    norm = f"regexp_replace(regexp_replace({column}, '^[A-Za-z][A-Za-z0-9+.-]+:', ''), '^/+', '')"
    if not root:
        return norm
    prefix = sql_string(root + "/")
    return (
        f"CASE WHEN substr({norm}, 1, {len(root) + 1}) = {prefix} THEN substr({norm}, {len(root) + 2}) "
        f"WHEN {norm} = {sql_string(root)} THEN regexp_extract({norm}, '[^/]+$', 0) ELSE {norm} END"
    )


def resolve_source(source: str) -> str:
    """A local relative path becomes absolute (the Spark server may not share our working directory)."""
    text = source.strip()
    if not text:
        raise IngestError("source is empty: give a folder (locally) or a Volume path (/Volumes/c/s/v/...)")
    if _SCHEME.match(text) or text.startswith("/"):
        return text.rstrip("/") or "/"
    return os.path.abspath(os.path.expanduser(text))


def local_path_of(source: str) -> str | None:
    """Where the source can be seen by this Python process, if at all: a local folder, or a Volume through
    its ``/Volumes`` mount on Databricks. ``None`` for object-store URLs (``s3://``, ``abfss://``...)."""
    if source.startswith("dbfs:/Volumes/"):
        return source[len("dbfs:") :]
    if source.startswith("file:"):
        return "/" + source[len("file:") :].lstrip("/")
    return None if _SCHEME.match(source) else source


def still_present_but_empty(source: str, paths: list[str]) -> list[SourceFile]:
    """Those of ``paths`` (missing from the listing) that still exist as zero-byte files.

    Spark's file sources (and pysail) leave empty files out of ``binaryFile`` listings, so a document
    truncated to nothing would otherwise look deleted and lose its chunks; it is reported as failed
    ("empty file") instead. Only known documents are checked, one ``stat`` each, never a folder walk.
    """
    root = local_path_of(source)
    if root is None:
        return []
    found = []
    for path in paths:
        try:
            stat = os.stat(os.path.join(root, *path.split("/")))
        except OSError:
            continue
        if stat.st_size == 0 and not os.path.isdir(os.path.join(root, *path.split("/"))):
            found.append(SourceFile(path, 0, stat.st_mtime_ns // 1000))
    return found


def _supported_glob() -> str:
    """A case-insensitive ``pathGlobFilter`` for the parsed extensions (Hadoop and pysail globs agree)."""
    from context_assistant.documents import SUPPORTED_EXTENSIONS

    def insensitive(ext: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext.lstrip("."))

    return "*.{" + ",".join(insensitive(e) for e in sorted(SUPPORTED_EXTENSIONS)) + "}"


# --------------------------------------------------------------------------------------------- the run


def run_ingest(
    spark: SparkSession,
    source: str,
    chunk_table: str | TableRef,
    documents_table: str | TableRef,
    *,
    chunk_size: int = 500,
    chunk_overlap: int = 50,
    counter: TokenCounter | None = None,
    pdf_parser: str = "builtin",
    progress: Callable[[str], None] | None = None,
    clock: Clock = REAL_CLOCK,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    allow_empty_source: bool = False,
) -> IngestResult:
    """Bring the chunk and documents tables in line with the files under ``source``; see the module doc.

    ``chunk_table``/``documents_table``: ``catalog.schema.table``, a folder path, or a resolved
    :class:`TableRef` (see :func:`context_assistant.tables.resolve_table`). An empty source is refused
    unless ``allow_empty_source`` (it would delete every ingested document, usually a wrong path).
    ``chunk_size``/``chunk_overlap`` count tokens of ``counter`` (the embedding model's tokenizer, see
    :func:`context_assistant.tokenization.counter_for_model`), or characters without one. ``pdf_parser``
    ``ai_parse_document`` parses PDFs with that Databricks AI Function (see :mod:`context_assistant.ai_parse`).
    """
    from context_assistant.chunking import validate_chunking

    try:
        validate_chunking(chunk_size, chunk_overlap)
    except ValueError as error:
        raise IngestError(str(error)) from error
    if max_file_bytes < 1:
        raise IngestError(f"max_file_bytes must be positive, got {max_file_bytes}")
    say = progress or (lambda message: None)
    started = clock.monotonic()
    run_us = _micros(clock.now())
    run = _Run(spark, resolve_source(source), resolve_table(chunk_table), resolve_table(documents_table), say)
    from context_assistant.ai_parse import check_pdf_parser

    check_pdf_parser(pdf_parser, local_tables=run.chunks.location is not None)  # a ConfigError (exit 2)
    run.pdf_parser = pdf_parser
    try:
        result = run.execute(chunk_size, chunk_overlap, counter, max_file_bytes, allow_empty_source, run_us)
    finally:
        run.drop_views()
    result.seconds = round(clock.monotonic() - started, 3)
    say(f"done in {result.seconds:.1f}s")
    return result


def ensure_tables(spark: SparkSession, chunks: TableRef, documents: TableRef) -> list[str]:
    """Create (or, locally, register) both tables; returns notes about properties the engine refused."""
    notes = []
    dropped = create_table(spark, chunks, CHUNK_COLUMNS, CHANGE_DATA_FEED)
    if dropped:
        notes.append(
            f"this Spark engine cannot write {', '.join(dropped)}; {chunks.label} created without it "
            "(fine locally; on Databricks Vector Search Delta Sync needs Change Data Feed)"
        )
    create_table(spark, documents, DOCUMENT_COLUMNS)
    return notes


class _Run:
    """One ingest run's state; split into steps so each SQL statement has one job."""

    def __init__(
        self, spark: SparkSession, source: str, chunks: TableRef, documents: TableRef, say: Callable[[str], None]
    ) -> None:
        self.spark = spark
        self.source = source
        self.root = normalize_root(source)
        self.chunks = chunks
        self.documents = documents
        self.staging = chunks.sibling(STAGING_SUFFIX)
        self.say = say
        self._views: list[str] = []
        self._tag = uuid.uuid4().hex[:10]
        self.pdf_parser = "builtin"

    # -- steps --------------------------------------------------------------------------------------

    def execute(
        self,
        chunk_size: int,
        chunk_overlap: int,
        counter: TokenCounter | None,
        max_file_bytes: int,
        allow_empty: bool,
        run_us: int,
    ) -> IngestResult:
        for note in ensure_tables(self.spark, self.chunks, self.documents):
            self.say(note)
        chunking = chunking_signature(chunk_size, chunk_overlap, counter, self.pdf_parser)
        self.say(f"listing {self.source}")
        files, single_file = self.list_source()
        known = self.known_documents()
        stored = self.stored_chunk_counts()
        if not single_file:
            listed = {f.path for f in files}
            emptied = still_present_but_empty(self.source, sorted(p for p in known if p not in listed))
            files = sorted([*files, *emptied], key=lambda f: f.path)
        if not files and not allow_empty:
            raise IngestError(
                f"no files found under {self.source} (wrong path, or an empty folder?); refusing to "
                f"remove the {len(known)} ingested document(s); pass allow_empty_source to do that"
                if known
                else f"no files found under {self.source} (wrong path, or an empty folder?)"
            )
        plan = plan_ingest(files, known, chunking, max_file_bytes, stored)
        self.say(
            f"{len(files)} file(s): {len(plan.candidates)} to check, {len(plan.unchanged)} unchanged, "
            f"{len(plan.skipped)} skipped, {len(plan.removed)} removed from the source"
        )
        parsed = self.parse_candidates(plan, len(files), single_file, chunk_size, chunk_overlap, counter)
        result = IngestResult(parsed=sum(p.status != _UNCHANGED for p in parsed))
        doc_rows, replace_paths = self.decide_documents(plan, known, stored, parsed, chunking, run_us, result)
        result.chunks = self.merge_chunks(replace_paths, run_us, has_parsed=any(p.status == OK for p in parsed))
        if plan.removed or any(row.op != "keep" for row in doc_rows):
            self.merge_documents(doc_rows)
        return result

    def list_source(self) -> tuple[list[SourceFile], bool]:
        """Every file under the source (hidden ``.``/``_`` names excluded by Spark), without reading it."""
        frame = (
            self.spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .load(self.source)
            .selectExpr(
                f"{relative_path_sql('path', self.root)} AS rel_path",
                "length",
                "unix_micros(modificationTime) AS modified_us",
                f"regexp_replace(regexp_replace(path, '^[A-Za-z][A-Za-z0-9+.-]+:', ''), '^/+', '') = "
                f"{sql_string(self.root)} AS is_root",
            )
        )
        by_path: dict[str, SourceFile] = {}
        single_file = False
        try:
            listed = frame.collect()
        except Exception as error:  # Spark: [PATH_NOT_FOUND]; pysail lists a missing folder as empty
            if "PATH_NOT_FOUND" in str(error) or "does not exist" in str(error):
                raise IngestError(f"source not found: {self.source}") from error
            raise
        # pysail lists a file bigger than its split size once per split: keep one row per path.
        for row in listed:
            by_path[row.rel_path] = SourceFile(row.rel_path, int(row.length), int(row.modified_us))
            single_file = single_file or bool(row.is_root)
        return [by_path[p] for p in sorted(by_path)], single_file

    def known_documents(self) -> dict[str, KnownDocument]:
        rows = self.spark.sql(
            "SELECT path, doc_hash, status, error, chunk_count, size_bytes, unix_micros(modified_at) AS "
            f"modified_us, chunking FROM {self.documents.sql_name}"
        ).collect()
        return {
            r.path: KnownDocument(
                r.path,
                r.doc_hash,
                r.status,
                r.error,
                int(r.chunk_count),
                int(r.size_bytes),
                int(r.modified_us),
                r.chunking,
            )
            for r in rows
        }

    def stored_chunk_counts(self) -> dict[str, int]:
        """Chunk rows per path as the chunk table really holds them (checked against the documents table)."""
        rows = self.spark.sql(f"SELECT path, count(*) AS n FROM {self.chunks.sql_name} GROUP BY path").collect()
        return {r.path: int(r.n) for r in rows}

    def parse_candidates(
        self,
        plan: IngestPlan,
        listed: int,
        single_file: bool,
        chunk_size: int,
        chunk_overlap: int,
        counter: TokenCounter | None = None,
    ) -> list[_Parsed]:
        """Hash candidates in Spark, parse the changed ones into the staging table; return its summary."""
        previous_hash = dict(plan.previous_hash)
        # An empty file's bytes are known without reading it (and binaryFile cannot see one): decide here.
        decided: list[_Parsed] = []
        for f in plan.candidates:
            if f.size_bytes == 0:
                status, error, _ = parse_and_chunk(f.path, b"", chunk_size, chunk_overlap, counter=counter)
                if status != OK:
                    if previous_hash[f.path] == EMPTY_HASH:
                        status, error = _UNCHANGED, None
                    decided.append(_Parsed(f.path, 0, f.modified_us, EMPTY_HASH, status, error, 0))
                    del previous_hash[f.path]
        if not previous_hash:
            return decided
        candidates = self.view(
            "candidates",
            self.spark.createDataFrame(sorted(previous_hash.items()), "path STRING, previous_hash STRING"),
        )
        to_read = [f for f in plan.candidates if f.path in previous_hash]
        content = self.read_content(to_read, listed, single_file)
        hashed = content.selectExpr(
            f"{relative_path_sql('path', self.root)} AS path",
            "length AS size_bytes",
            "unix_micros(modificationTime) AS modified_us",
            "sha2(content, 256) AS doc_hash",
            "content",
        )
        self.view("hashed", hashed)
        to_parse = self.spark.sql(
            f"SELECT h.path, h.size_bytes, h.modified_us, h.doc_hash, "
            f"CASE WHEN h.doc_hash <=> c.previous_hash THEN NULL ELSE h.content END AS content "
            f"FROM {self.view_name('hashed')} h JOIN {candidates} c ON h.path = c.path"
        )
        if self.pdf_parser == "ai_parse_document":
            to_parse = to_parse.selectExpr("*", f"{ai_parse_column()} AS ai_parsed")
        self.say(f"reading {len(to_read)} file(s); parsing those whose content changed")
        parsed = to_parse.mapInArrow(make_batch_parser(chunk_size, chunk_overlap, counter), _PARSED_SCHEMA)
        writer = parsed.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        if self.staging.location is not None:
            writer.save(self.staging.location)
            create_table(self.spark, self.staging, None)
        else:
            writer.saveAsTable(self.staging.sql_name)
        summary: dict[str, _Parsed] = {}
        for r in self.spark.sql(
            "SELECT path, size_bytes, modified_us, doc_hash, status, error, chunk_count "
            f"FROM {self.staging.sql_name}"
        ).collect():
            summary[r.path] = _Parsed(
                r.path, int(r.size_bytes), int(r.modified_us), r.doc_hash, r.status, r.error, int(r.chunk_count)
            )
        return sorted([*decided, *summary.values()], key=lambda p: p.path)

    def read_content(self, candidates: list[SourceFile], listed: int, single_file: bool) -> DataFrame:
        """The candidates' bytes. A short list is loaded file by file so nothing else is read; a long one
        (the first run) or one with glob characters in a name (``load`` treats paths as globs, and Hadoop
        and pysail escape differently) is a filtered scan of the whole source instead."""
        reader = self.spark.read.format("binaryFile")
        if single_file:
            return reader.load(self.source)
        paths = [c.path for c in candidates]
        if len(paths) * 2 <= listed and not any(_GLOB_CHARS.search(p) for p in paths):
            base = self.source.rstrip("/")
            return reader.load([f"{base}/{p}" for p in paths])
        # Spark checks the length filter before reading a file, so large unchanged files stay unread.
        return (
            reader.option("recursiveFileLookup", "true")
            .option("pathGlobFilter", _supported_glob())
            .load(self.source)
            .where(f"length <= {max(c.size_bytes for c in candidates)}")
        )

    def decide_documents(
        self,
        plan: IngestPlan,
        known: dict[str, KnownDocument],
        stored: dict[str, int],
        parsed: list[_Parsed],
        chunking: str,
        run_us: int,
        result: IngestResult,
    ) -> tuple[list[_DocumentRow], list[str]]:
        """The documents table's target rows (each with an op) and the paths whose chunks must be replaced.

        A file that fails to parse keeps the chunks of its last good version (and their count); only its
        status, error and hash change, so the next run does not retry the same bytes.
        """
        counts = result.documents
        rows = [_DocumentRow.keep(f.path) for f in plan.unchanged]
        replace: list[str] = []
        counts.unchanged += len(plan.unchanged)
        for f in plan.unchanged:
            prev = known.get(f.path)
            if prev is not None and prev.status == FAILED:
                result.still_failing.append(Failure(f.path, prev.error or "could not be parsed"))
        for f, reason in plan.skipped:
            counts.skipped += 1
            prev = known.get(f.path)
            if stored.get(f.path):
                replace.append(f.path)  # it had chunks; a file we no longer ingest must not be answered from
            same = (
                prev is not None
                and prev.status == SKIPPED
                and prev.error == reason
                and (prev.size_bytes, prev.modified_us) == (f.size_bytes, f.modified_us)
            )
            rows.append(
                _DocumentRow.keep(f.path)
                if same
                else _DocumentRow(
                    f.path, None, SKIPPED, reason, 0, f.size_bytes, f.modified_us, None, run_us, "upsert"
                )
            )
        by_path = {p.path: p for p in parsed}
        vanished: list[str] = []
        for f in plan.candidates:
            p = by_path.get(f.path)
            prev = known.get(f.path)
            if p is None:  # listed, then gone before it could be read: leave it to the next run
                if prev is not None:
                    rows.append(_DocumentRow.keep(f.path))
                counts.unchanged += 1
                vanished.append(f.path)
            elif p.status == _UNCHANGED:  # touched, same bytes: remember the new size/mtime only
                counts.unchanged += 1
                if prev is not None and prev.status == FAILED:
                    result.still_failing.append(Failure(f.path, prev.error or "could not be parsed"))
                rows.append(
                    _DocumentRow(f.path, None, None, None, 0, p.size_bytes, p.modified_us, None, 0, "touch")
                )
            elif p.status == OK:
                if prev is None or prev.status == SKIPPED:
                    counts.added += 1
                else:
                    counts.updated += 1
                replace.append(f.path)
                rows.append(
                    _DocumentRow(
                        f.path,
                        p.doc_hash,
                        OK,
                        None,
                        p.chunk_count,
                        p.size_bytes,
                        p.modified_us,
                        chunking,
                        run_us,
                        "upsert",
                    )
                )
            else:
                counts.failed += 1
                error = p.error or "could not be parsed"
                result.failures.append(Failure(f.path, error))
                kept = stored.get(f.path, 0)  # the last good version's chunks stay
                rows.append(
                    _DocumentRow(
                        f.path,
                        p.doc_hash,
                        FAILED,
                        error,
                        kept,
                        p.size_bytes,
                        p.modified_us,
                        chunking,
                        run_us,
                        "upsert",
                    )
                )
        for doc in plan.removed:
            replace.append(doc.path)
            if doc.status != SKIPPED:
                counts.deleted += 1
        replace.extend(plan.orphans)
        if vanished:
            self.say(f"{len(vanished)} file(s) disappeared before they could be read, left for the next run")
        return rows, sorted(set(replace))

    def merge_chunks(self, replace_paths: list[str], run_us: int, has_parsed: bool) -> ChunkCounts:
        """Insert/update/delete chunk rows of exactly ``replace_paths`` to match the staging table."""
        counts = ChunkCounts()
        if not replace_paths:
            return counts
        replace = self.view("replace", self.spark.createDataFrame([(p,) for p in replace_paths], "path STRING"))
        if has_parsed:
            fresh = (
                "SELECT DISTINCT c.chunk_id, s.path, c.chunk_index, c.text, c.heading, c.page, c.content_hash, "
                f"s.doc_hash, s.modified_us FROM {self.staging.sql_name} s LATERAL VIEW inline(s.chunks) c "
                f"WHERE s.status = '{OK}'"
            )
        else:  # only removals: nothing new to compare with (the staging table may be stale or absent)
            fresh = "SELECT * FROM " + self.view("no_chunks", self.spark.createDataFrame([], _FRESH_SCHEMA))
        changes = self.view(
            "changes",
            self.spark.sql(
                f"WITH fresh AS ({fresh}), "
                f"old AS (SELECT t.chunk_id, t.path, t.chunk_index, t.heading, t.page, t.content_hash "
                f"FROM {self.chunks.sql_name} t LEFT SEMI JOIN {replace} r ON t.path = r.path) "
                "SELECT coalesce(f.chunk_id, o.chunk_id) AS chunk_id, f.path, f.chunk_index, f.text, f.heading, "
                "f.page, f.content_hash, f.doc_hash, f.modified_us, "
                "CASE WHEN f.chunk_id IS NULL THEN 'delete' WHEN o.chunk_id IS NULL THEN 'insert' "
                "ELSE 'update' END AS op "
                "FROM fresh f FULL OUTER JOIN old o ON f.chunk_id = o.chunk_id "
                "WHERE f.chunk_id IS NULL OR o.chunk_id IS NULL OR NOT (f.content_hash <=> o.content_hash "
                "AND f.heading <=> o.heading AND f.page <=> o.page AND f.chunk_index <=> o.chunk_index "
                "AND f.path <=> o.path)"
            ),
        )
        by_op = {
            r.op: int(r.n)
            for r in self.spark.sql(f"SELECT op, count(*) AS n FROM {changes} GROUP BY op").collect()
        }
        counts.written = by_op.get("insert", 0) + by_op.get("update", 0)
        counts.deleted = by_op.get("delete", 0)
        if not by_op:
            return counts
        self.say(f"writing chunks: {counts.written} new or changed, {counts.deleted} removed")
        ingested = f"timestamp_micros({run_us})"
        self.spark.sql(
            f"MERGE INTO {self.chunks.sql_name} AS t USING {changes} AS s ON t.chunk_id = s.chunk_id "
            "WHEN MATCHED AND s.op = 'delete' THEN DELETE "
            "WHEN MATCHED AND s.op = 'update' THEN UPDATE SET t.path = s.path, t.chunk_index = s.chunk_index, "
            "t.text = s.text, t.heading = s.heading, t.page = s.page, t.content_hash = s.content_hash, "
            f"t.doc_hash = s.doc_hash, t.modified_at = timestamp_micros(s.modified_us), t.ingested_at = {ingested} "
            "WHEN NOT MATCHED AND s.op = 'insert' THEN INSERT (chunk_id, path, chunk_index, text, heading, page, "
            "content_hash, doc_hash, modified_at, ingested_at) VALUES (s.chunk_id, s.path, s.chunk_index, s.text, "
            f"s.heading, s.page, s.content_hash, s.doc_hash, timestamp_micros(s.modified_us), {ingested})"
        ).collect()
        return counts

    def merge_documents(self, rows: list[_DocumentRow]) -> None:
        """Mirror the source inventory: upsert changed rows, touch re-hashed ones, delete departed files."""
        self.say("writing document statuses")
        target = self.view(
            "documents",
            self.spark.createDataFrame(
                [tuple(row) for row in rows],
                "path STRING, doc_hash STRING, status STRING, error STRING, chunk_count INT, size_bytes BIGINT, "
                "modified_us BIGINT, chunking STRING, ingested_us BIGINT, op STRING",
            ),
        )
        self.spark.sql(
            f"MERGE INTO {self.documents.sql_name} AS t USING {target} AS s ON t.path = s.path "
            "WHEN MATCHED AND s.op = 'upsert' THEN UPDATE SET t.doc_hash = s.doc_hash, t.status = s.status, "
            "t.error = s.error, t.chunk_count = s.chunk_count, t.size_bytes = s.size_bytes, "
            "t.modified_at = timestamp_micros(s.modified_us), t.chunking = s.chunking, "
            "t.ingested_at = timestamp_micros(s.ingested_us) "
            "WHEN MATCHED AND s.op = 'touch' THEN UPDATE SET t.size_bytes = s.size_bytes, "
            "t.modified_at = timestamp_micros(s.modified_us) "
            "WHEN NOT MATCHED AND s.op = 'upsert' THEN INSERT (path, doc_hash, status, error, chunk_count, "
            "size_bytes, modified_at, chunking, ingested_at) VALUES (s.path, s.doc_hash, s.status, s.error, "
            "s.chunk_count, s.size_bytes, timestamp_micros(s.modified_us), s.chunking, "
            "timestamp_micros(s.ingested_us)) "
            "WHEN NOT MATCHED BY SOURCE THEN DELETE"
        ).collect()

    # -- temp views -----------------------------------------------------------------------------------

    def view_name(self, role: str) -> str:
        return f"`ca_ingest_{self._tag}_{role}`"

    def view(self, role: str, frame: DataFrame) -> str:
        """Register ``frame`` as a run-private temp view (dropped at the end) and return its SQL name."""
        name = self.view_name(role)
        frame.createOrReplaceTempView(name.strip("`"))
        self._views.append(name.strip("`"))
        return name

    def drop_views(self) -> None:
        for name in self._views:
            with contextlib.suppress(Exception):  # best effort: a dead session has no views left to leak
                self.spark.catalog.dropTempView(name)
        self._views.clear()


class _DocumentRow(NamedTuple):
    """A documents-table row as the MERGE source sees it; ``op``: upsert | touch (size/mtime) | keep."""

    path: str
    doc_hash: str | None
    status: str | None
    error: str | None
    chunk_count: int
    size_bytes: int
    modified_us: int
    chunking: str | None
    ingested_us: int
    op: str

    @classmethod
    def keep(cls, path: str) -> _DocumentRow:
        """Present and unchanged: in the source only so ``NOT MATCHED BY SOURCE`` does not delete it."""
        return cls(path, None, None, None, 0, 0, 0, None, 0, "keep")


@dataclass(frozen=True)
class _Parsed:
    """One staging row without its chunks."""

    path: str
    size_bytes: int
    modified_us: int
    doc_hash: str | None
    status: str
    error: str | None
    chunk_count: int


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _human_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
