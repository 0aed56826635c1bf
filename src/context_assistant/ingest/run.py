"""Ingest a folder of team documents into Delta tables with Spark, incrementally, with SQL that runs as is on
Databricks (serverless / Spark Connect, Unity Catalog tables) and locally on pysail (folder-backed tables).

Tables (created if missing; their columns are declared in :mod:`context_assistant.ingest.contract`):

* chunk table: one row per chunk, keyed by ``chunk_id`` (sha256 of path and position, from
  :mod:`context_assistant.ingest.chunking`). Created with ``delta.enableChangeDataFeed = true`` because Vector
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
   serverless compute cannot cache and both MERGEs below read it; parsing twice would double the cost. The
   parser streams: one row per chunk, in record batches of bounded size, then a summary row per file
   (:mod:`.worker`), so a big file never travels as one row holding all its chunks.
5. Write the chunk table from a change set (insert / update / delete per ``chunk_id``) computed against the
   chunks of exactly the affected paths: a shortened document loses its tail chunks, chunks whose text did
   not change are not rewritten (so Change Data Feed and the embedding step only see real changes), a removed
   file loses all its chunks. Two statements: a ``MERGE`` that deletes the changed and removed ids, then an
   ``INSERT`` of every fresh chunk the table lacks (the new and the changed). A ``MERGE`` that also inserted
   would carry every new chunk's text through the join; the local engine holds that whole source in memory,
   which for a big new or edited file was several times its text (at 50 MB, the ingest's peak 1.24 GiB; now
   0.74). The price is atomicity: a reader between the two (another job's index sync) misses the changed
   chunks until the insert commits, and if the run dies between them the documents table still holds the
   old hash, so the next run writes the missing chunks. On Databricks, Change Data Feed shows a changed
   chunk as a delete and then an insert of its id (two versions) rather than an update; Vector Search's docs
   do not spell out how one sync applies both, so this is worth a check on a workspace.
6. ``MERGE INTO`` the documents table from the full current inventory, with ``WHEN NOT MATCHED BY SOURCE
   THEN DELETE`` removing files that left the source. It runs last: if the job dies before it, the next
   run sees the old hashes and redoes the work, so a partial run never leaves chunks marked done.

Nothing is written when nothing changed (no empty Delta commits). One ingest at a time per table pair
(:mod:`.lock`: a second local run waits; a Delta write conflict on Databricks is one clear line). The
staging table is kept between runs (overwritten by each run that parses something; safe to drop). Names
starting with ``.`` or ``_`` are ignored, as Spark's file listing does. A local folder is walked in Python
within its boundary (:mod:`.boundary`) and only what it accepts is read; empty files are skipped ("empty
file"; ``binaryFile`` never lists them: on a Volume, known documents are checked with a ``stat``), and a
known document truncated to zero bytes is marked failed with its chunks kept.

On a Volume (Spark's listing): a file larger than pysail's 128 MiB split is listed once per split
(deduplicated), and ``load()`` treats paths as globs (pysail has no escape), so a changed file whose name
has a glob character is read with a filtered scan of the whole source. pysail cannot create Change Data
Feed tables; a missing source lists as empty (refused unless ``allow_empty_source``).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..core.clock import REAL_CLOCK, Clock
from ..core.errors import ContextAssistantError, InvalidInput, UsageError
from .ai_parse import ai_parse_column, check_pdf_parser
from .boundary import SourceScan, check_symlink_policy, is_local_source, read_scanned, scan_source
from .contract import (
    CHUNK_TABLE,
    DOCUMENTS_TABLE,
    FRESH_CHUNK,
    insert_select,
    merge_insert,
    merge_update,
    names,
    null_check,
    schema_ddl,
    staged_schema_ddl,
    table_ddl,
)
from .limits import ParseLimits
from .lock import concurrent_write_error, ingest_lock
from .plan import (
    DEFAULT_MAX_FILE_BYTES,
    EMPTY_HASH,
    OK,
    UNCHANGED,
    ChunkCounts,
    DocumentRow,
    IngestPlan,
    IngestResult,
    KnownDocument,
    ParsedFile,
    SourceFile,
    chunking_signature,
    decide_documents,
    plan_ingest,
    removes_every_document,
    skipped_lines,
)
from .source_paths import (
    GLOB_CHARS,
    SCHEME,
    normalize_root,
    relative_path_sql,
    still_present_but_empty,
    supported_glob,
)
from .tables import TableRef, create_table, resolve_table, sql_string
from .text import human_size
from .worker import make_batch_parser, parse_and_chunk

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from .tokenization import TokenCounter

STAGING_SUFFIX = "__ingest_staging"

# The tables' columns are declared once, in ingest.contract; these are their CREATE TABLE definitions.
CHUNK_COLUMNS = table_ddl(CHUNK_TABLE)
DOCUMENT_COLUMNS = table_ddl(DOCUMENTS_TABLE)

CHANGE_DATA_FEED = {"delta.enableChangeDataFeed": "true"}

_PARSED_SCHEMA = staged_schema_ddl()
_FRESH_SCHEMA = schema_ddl(FRESH_CHUNK)


class IngestError(UsageError):
    """The run cannot proceed (bad source, bad settings); nothing was written. ``str()`` says why. A usage
    error (exit code 2): the source or the settings must change, running again as is does the same."""


class IngestFailed(ContextAssistantError):
    """The run stopped part way (another writer, a parser that broke its contract); ``str()`` says why. What
    it wrote is repaired by the next run."""


def resolve_source(source: str) -> str:
    """A local relative path becomes absolute (the Spark server may not share our working directory)."""
    text = source.strip()
    if not text:
        raise IngestError("source is empty: give a folder (locally) or a Volume path (/Volumes/c/s/v/...)")
    if SCHEME.match(text) or text.startswith("/"):
        return text.rstrip("/") or "/"
    return os.path.abspath(os.path.expanduser(text))


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
    allow_replace_source: bool = False,
    symlinks: str = "never",
    limits: ParseLimits | None = None,
) -> IngestResult:
    """Bring the chunk and documents tables in line with the files under ``source``; see the module doc.

    ``chunk_table``/``documents_table``: ``catalog.schema.table``, a folder path, or a resolved
    :class:`TableRef` (see :func:`context_assistant.ingest.tables.resolve_table`). An empty source is refused
    unless ``allow_empty_source``, one holding none of the ingested documents unless ``allow_replace_source``
    (both would delete every document: usually a wrong path). ``symlinks``: see :mod:`.boundary`; ``limits``
    (per file wall clock and memory): :mod:`.limits`.
    ``chunk_size``/``chunk_overlap`` count tokens of ``counter`` (the embedding model's tokenizer, see
    :func:`context_assistant.retrieval.tokenizer.counter_for_model`), or characters without one.
    ``pdf_parser`` ``ai_parse_document`` parses PDFs with that Databricks AI Function (see
    :mod:`context_assistant.ingest.ai_parse`).
    """
    from .chunking import validate_chunking

    try:
        validate_chunking(chunk_size, chunk_overlap)
    except InvalidInput as error:
        raise IngestError(str(error)) from error
    if max_file_bytes < 1:
        raise IngestError(f"max_file_bytes must be positive, got {max_file_bytes}")
    say = progress or (lambda message: None)
    started = clock.monotonic()
    run_us = _micros(clock.now())
    run = _Run(spark, resolve_source(source), resolve_table(chunk_table), resolve_table(documents_table), say)
    check_pdf_parser(pdf_parser, local_tables=run.chunks.location is not None)  # a ConfigError (exit 2)
    run.pdf_parser = pdf_parser
    run.symlinks = check_symlink_policy(symlinks)
    run.allow_replace = allow_replace_source
    run.max_file_bytes = max_file_bytes
    run.limits = limits or ParseLimits()
    try:
        with ingest_lock(run.chunks, say):
            result = run.execute(chunk_size, chunk_overlap, counter, max_file_bytes, allow_empty_source, run_us)
    except KeyboardInterrupt:
        # No more Spark calls after Ctrl-C: dropping a view is a new operation, which can wait behind the
        # interrupted one for as long as it keeps running. The views are run-private and die with the session.
        raise
    except Exception as error:
        run.drop_views()
        if concurrent_write_error(error):
            raise IngestFailed(
                f"another ingest wrote to {run.chunks.label} or {run.documents.label} at the same time, so this run "
                "stopped; run ingest again to pick up the rest (it also repairs what this run left half written)"
            ) from error
        raise
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
        self.symlinks = "never"
        self.allow_replace = False
        self.max_file_bytes = DEFAULT_MAX_FILE_BYTES
        self.scan: SourceScan | None = None  # a local source, walked in Python within its boundary
        self.limits = ParseLimits()

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
        refused: dict[str, str] = {}
        if is_local_source(self.source):
            self.scan = scan_source(self.source, self.symlinks)
            files, refused, single_file = self.scan.listing(), self.scan.refused, self.scan.single_file
        else:
            files, single_file = self.list_source()
        known = self.known_documents()
        stored = self.stored_chunk_counts()
        if not single_file and self.scan is None:
            listed = {f.path for f in files}
            emptied = still_present_but_empty(self.source, sorted(p for p in known if p not in listed))
            files = sorted([*files, *emptied], key=lambda f: f.path)
        if not files and not allow_empty:
            raise IngestError(
                f"no files found under {self.source} (wrong path, or an empty folder?); refusing to "
                f"remove the {len(known)} ingested document(s); to do that, run ingest with --allow-empty-source"
                if known
                else f"no files found under {self.source} (wrong path, or an empty folder?)"
            )
        plan = plan_ingest(files, known, chunking, max_file_bytes, stored, refused)
        doomed = removes_every_document(plan, known)
        if files and doomed and not self.allow_replace:
            raise IngestError(
                f"none of the {doomed} ingested document(s) is under {self.source} (a different folder?); "
                "refusing to remove them all; pass --allow-replace-source to replace them"
            )
        self.say(
            f"{len(files)} file(s): {len(plan.candidates)} to check, {len(plan.unchanged)} unchanged, "
            f"{len(plan.skipped)} skipped, {len(plan.removed)} removed from the source"
        )
        for line in skipped_lines(plan):
            self.say(line)
        parsed = self.parse_candidates(plan, len(files), single_file, chunk_size, chunk_overlap, counter)
        result = IngestResult(parsed=sum(p.status != UNCHANGED for p in parsed))
        doc_rows, replace_paths, vanished = decide_documents(plan, known, stored, parsed, chunking, run_us, result)
        if vanished:
            self.say(f"{len(vanished)} file(s) disappeared before they could be read, left for the next run")
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
    ) -> list[ParsedFile]:
        """Hash candidates in Spark, parse the changed ones into the staging table; return its summary."""
        previous_hash = dict(plan.previous_hash)
        # An empty file's bytes are known without reading it (and binaryFile cannot see one): decide here.
        decided: list[ParsedFile] = []
        for f in plan.candidates:
            if f.size_bytes == 0:
                status, error, _ = parse_and_chunk(f.path, b"", chunk_size, chunk_overlap, counter=counter)
                if status != OK:
                    if previous_hash[f.path] == EMPTY_HASH:
                        status, error = UNCHANGED, None
                    decided.append(ParsedFile(f.path, 0, f.modified_us, EMPTY_HASH, status, error, 0))
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
        size = human_size(sum(f.size_bytes for f in to_read))
        self.say(f"reading {len(to_read)} file(s), {size}; parsing those whose content changed")
        parsed = to_parse.mapInArrow(
            make_batch_parser(chunk_size, chunk_overlap, counter, self.limits), _PARSED_SCHEMA
        )
        writer = parsed.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        if self.staging.location is not None:
            writer.save(self.staging.location)
            create_table(self.spark, self.staging, None)
        else:
            writer.saveAsTable(self.staging.sql_name)
        summary: dict[str, ParsedFile] = {}
        for r in self.spark.sql(
            "SELECT path, size_bytes, modified_us, doc_hash, status, error, chunk_count "
            f"FROM {self.staging.sql_name} WHERE status IS NOT NULL"  # a file's summary row, not its chunks
        ).collect():
            summary[r.path] = ParsedFile(
                r.path, int(r.size_bytes), int(r.modified_us), r.doc_hash, r.status, r.error, int(r.chunk_count)
            )
        return sorted([*decided, *summary.values()], key=lambda p: p.path)

    def read_content(self, candidates: list[SourceFile], listed: int, single_file: bool) -> DataFrame:
        """The candidates' bytes. A short list is loaded file by file so nothing else is read; a long one
        (the first run) or one with glob characters in a name (``load`` treats paths as globs, and Hadoop
        and pysail escape differently) is a filtered scan of the whole source instead."""
        if self.scan is not None:  # read what the boundary walk accepted, never listing the folder again
            return read_scanned(
                self.spark, self.scan, [c.path for c in candidates], self.source, self.max_file_bytes
            )
        reader = self.spark.read.format("binaryFile")
        if single_file:
            return reader.load(self.source)
        paths = [c.path for c in candidates]
        if len(paths) * 2 <= listed and not any(GLOB_CHARS.search(p) for p in paths):
            base = self.source.rstrip("/")
            return reader.load([f"{base}/{p}" for p in paths])
        # Spark checks the length filter before reading a file, so large unchanged files stay unread.
        return (
            reader.option("recursiveFileLookup", "true")
            .option("pathGlobFilter", supported_glob())
            .load(self.source)
            .where(f"length <= {max(c.size_bytes for c in candidates)}")
        )

    def merge_chunks(self, replace_paths: list[str], run_us: int, has_parsed: bool) -> ChunkCounts:
        """Insert/update/delete chunk rows of exactly ``replace_paths`` to match the staging table."""
        counts = ChunkCounts()
        if not replace_paths:
            return counts
        replace = self.view("replace", self.spark.createDataFrame([(p,) for p in replace_paths], "path STRING"))
        self.drop_doubled_chunks(replace)
        if has_parsed:  # chunk rows of files parsed ok (a file that failed part way may have left some)
            # A Spark listing may read a file twice (one row per split, see the module doc): DISTINCT there.
            fresh = (
                f"SELECT {'' if self.scan else 'DISTINCT '}c.{', c.'.join(names(FRESH_CHUNK))} FROM "
                f"{self.staging.sql_name} c LEFT SEMI JOIN (SELECT path FROM {self.staging.sql_name} "
                f"WHERE status = '{OK}') s ON c.path = s.path WHERE c.chunk_id IS NOT NULL"
            )
        else:  # only removals: nothing new to compare with (the staging table may be stale or absent)
            fresh = "SELECT * FROM " + self.view("no_chunks", self.spark.createDataFrame([], _FRESH_SCHEMA))
        old = (
            f"SELECT t.chunk_id, t.path, t.chunk_index, t.heading, t.page, t.content_hash "
            f"FROM {self.chunks.sql_name} t LEFT SEMI JOIN {replace} r ON t.path = r.path"
        )
        changes = self.view(
            "changes",
            self.spark.sql(
                f"WITH fresh AS ({fresh}), old AS ({old}) "
                "SELECT coalesce(f.chunk_id, o.chunk_id) AS chunk_id, f.path, f.chunk_index, f.text, f.heading, "
                "f.page, f.content_hash, f.doc_hash, f.modified_us, "
                "CASE WHEN f.chunk_id IS NULL THEN 'delete' WHEN o.chunk_id IS NULL THEN 'insert' "
                "ELSE 'update' END AS op "
                "FROM old o FULL OUTER JOIN fresh f ON f.chunk_id = o.chunk_id "  # the lean side is built
                "WHERE f.chunk_id IS NULL OR o.chunk_id IS NULL OR NOT (f.content_hash <=> o.content_hash "
                "AND f.heading <=> o.heading AND f.page <=> o.page AND f.chunk_index <=> o.chunk_index "
                "AND f.path <=> o.path)"
            ),
        )
        by_op, incomplete = {}, 0
        for r in self.spark.sql(
            f"SELECT op, count(*) AS n, count_if(op <> 'delete' AND ({null_check(FRESH_CHUNK)})) AS incomplete "
            f"FROM {changes} GROUP BY op"
        ).collect():
            by_op[r.op], incomplete = int(r.n), incomplete + int(r.incomplete)
        if incomplete:  # the parser's contract broken: stop before writing anything
            raise IngestFailed(f"the parser produced {incomplete} chunk row(s) with a required column empty")
        counts.written = by_op.get("insert", 0) + by_op.get("update", 0)
        counts.deleted = by_op.get("delete", 0)
        if not by_op:
            return counts
        self.say(f"writing chunks: {counts.written} new or changed, {counts.deleted} removed")
        # The source carries times as microseconds; the run's own time stamps what it wrote.
        stamps = {"modified_at": "timestamp_micros(s.modified_us)", "ingested_at": f"timestamp_micros({run_us})"}
        if by_op.keys() - {"insert"}:  # changed and removed chunks go first: deleted by id
            self.spark.sql(
                f"MERGE INTO {self.chunks.sql_name} AS t "
                f"USING (SELECT chunk_id FROM {changes} WHERE op <> 'insert') AS s ON t.chunk_id = s.chunk_id "
                "WHEN MATCHED THEN DELETE"
            ).collect()
        if by_op.keys() - {"delete"}:  # then every fresh chunk the table lacks: the new and the changed ones
            self.spark.sql(
                f"INSERT INTO {self.chunks.sql_name} ({', '.join(names(CHUNK_TABLE))}) "
                f"SELECT {insert_select(CHUNK_TABLE, values=stamps)} "
                f"FROM ({fresh}) s LEFT ANTI JOIN ({old}) o ON s.chunk_id = o.chunk_id"
            ).collect()
        return counts

    def drop_doubled_chunks(self, replace: str) -> None:
        """Delete every chunk row of the paths in ``replace`` that hold a chunk id twice, so the writes that
        follow insert them afresh. Two runs racing on a catalog table (no lock file) can both insert the same
        new chunks when Delta lets both commits through; the documents table's chunk count then disagrees and
        the path is re-cut, but a merge keyed on chunk id alone would keep both copies forever."""
        doubled = self.view(
            "doubled",
            self.spark.sql(
                f"SELECT DISTINCT path FROM (SELECT t.path, t.chunk_id, count(*) AS n FROM {self.chunks.sql_name} t "
                f"LEFT SEMI JOIN {replace} r ON t.path = r.path GROUP BY t.path, t.chunk_id) WHERE n > 1"
            ),
        )
        paths = [r.path for r in self.spark.sql(f"SELECT path FROM {doubled}").collect()]
        if not paths:
            return
        self.say(f"repairing {len(paths)} documents whose chunks were written twice (by two runs at once)")
        self.spark.sql(
            f"MERGE INTO {self.chunks.sql_name} AS t USING {doubled} AS s ON t.path = s.path "
            "WHEN MATCHED THEN DELETE"
        ).collect()

    def merge_documents(self, rows: list[DocumentRow]) -> None:
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
        stamps = {
            "modified_at": "timestamp_micros(s.modified_us)",
            "ingested_at": "timestamp_micros(s.ingested_us)",
        }
        self.spark.sql(
            f"MERGE INTO {self.documents.sql_name} AS t USING {target} AS s ON t.path = s.path "
            f"WHEN MATCHED AND s.op = 'upsert' THEN UPDATE SET {merge_update(DOCUMENTS_TABLE, key='path', values=stamps)} "
            "WHEN MATCHED AND s.op = 'touch' THEN UPDATE SET t.size_bytes = s.size_bytes, "
            "t.modified_at = timestamp_micros(s.modified_us) "
            f"WHEN NOT MATCHED AND s.op = 'upsert' THEN {merge_insert(DOCUMENTS_TABLE, values=stamps)} "
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


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
