"""The pure planning of an ingest run: what to read, what to parse, and what to write, decided in Python.

Nothing here touches Spark or a table, so each decision is unit-testable on plain values:

* :func:`plan_ingest` sorts the listed files into candidates (read and hashed; parsed when the hash
  differs), unchanged (trusted by size and modification time), skipped (unsupported or too large) and
  removed, before any file is read;
* :func:`decide_documents` turns the plan and the parser's summary into the documents table's target rows and
  the paths whose chunks are replaced, counting what happened into an :class:`IngestResult`.

:mod:`context_assistant.ingest.run` executes these decisions with SQL; :mod:`context_assistant.ingest.worker`
is the parsing Spark runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .tokenization import TokenCounter

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
UNCHANGED = "unchanged"  # parser output status for a candidate whose bytes hash to the stored hash
# Bump when parsing or chunking changes in a way that should re-chunk unchanged files.
# 2: structure-aware parsing (Markdown tables, DOCX headers/footers/notes), contextual chunk headers, token sizes.
PIPELINE_VERSION = 2
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
EMPTY_HASH = hashlib.sha256(b"").hexdigest()
EMPTY_FILE = "empty file"


@dataclass
class DocumentCounts:
    added: int = 0  # files answerable for the first time: new, no longer skipped, or fixed before ever parsing
    updated: int = 0  # changed files parsed fine that had chunks before
    deleted: int = 0  # ingested files that left the source
    unchanged: int = 0  # supported files not re-parsed (same size+mtime, or same hash) that parsed last time
    # Files not readable as they are: failed to parse in this run, or failed before with the same bytes
    # (``still_failing``, not retried). Previous chunks, if any, kept.
    failed: int = 0
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
    # Files present but not ingested, with the reason (unsupported type, too large, empty, a link, an odd name).
    skipped: list[Failure] = field(default_factory=list)
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
            "skipped": [{"path": f.path, "reason": f.error} for f in sorted(self.skipped, key=lambda f: f.path)],
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
    from .documents import extension_of, is_supported

    if not is_supported(path):
        ext = extension_of(path)
        return f"unsupported file type {ext!r}" if ext else "unsupported file type (no extension)"
    if size_bytes > max_file_bytes:
        return f"file is {_human_size(size_bytes)}, larger than the {_human_size(max_file_bytes)} limit (rag.max_file_mb)"
    return None


def plan_ingest(
    files: list[SourceFile],
    known: dict[str, KnownDocument],
    chunking: str,
    max_file_bytes: int,
    stored_chunks: Mapping[str, int] | None = None,
    refused: Mapping[str, str] | None = None,
) -> IngestPlan:
    """Sort listed files into candidates / unchanged / skipped and find what left the source.

    A stored document is trusted (may be skipped by size+mtime, or by hash) only if it was cut with the
    same chunking and ``stored_chunks`` (rows per path in the chunk table, when given) still holds its
    ``chunk_count`` chunks: deleting or damaging the chunk table by hand makes the next run rebuild it.
    ``refused`` (path -> reason) are entries the boundary walk would not read (links, loops, odd names):
    skipped with that reason. An empty file is skipped ("empty file"), unless it is a document that had
    content: that one is a candidate, and fails with its last chunks kept rather than vanish.
    """
    plan = IngestPlan()
    listed = set()
    for f in files:
        listed.add(f.path)
        prev = known.get(f.path)
        reason = (refused or {}).get(f.path) or skip_reason(f.path, f.size_bytes, max_file_bytes)
        if reason is None and f.size_bytes == 0 and (prev is None or prev.status == SKIPPED):
            reason = EMPTY_FILE
        if reason is not None:
            plan.skipped.append((f, reason))
            continue
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


SKIPS_SHOWN = 20  # skipped files named in the progress output (the result lists all of them)


def skipped_lines(plan: IngestPlan) -> list[str]:
    """Progress lines naming the skipped files and why (the first :data:`SKIPS_SHOWN` of them)."""
    lines = [f"skipped {f.path!r}: {reason}" for f, reason in plan.skipped[:SKIPS_SHOWN]]
    if len(plan.skipped) > SKIPS_SHOWN:
        lines.append(f"... and {len(plan.skipped) - SKIPS_SHOWN} more skipped (ingest --json lists them all)")
    return lines


def removes_every_document(plan: IngestPlan, known: dict[str, KnownDocument]) -> int:
    """How many ingested documents the plan removes when it removes all of them (else 0): a source that holds
    none of them is usually a wrong ``--source``, refused unless the caller allows it."""
    doomed = sum(d.status != SKIPPED for d in plan.removed)
    return doomed if doomed and doomed == sum(d.status != SKIPPED for d in known.values()) else 0


def decide_documents(
    plan: IngestPlan,
    known: dict[str, KnownDocument],
    stored: dict[str, int],
    parsed: list[ParsedFile],
    chunking: str,
    run_us: int,
    result: IngestResult,
) -> tuple[list[DocumentRow], list[str], list[str]]:
    """The documents table's target rows (each with an op), the paths whose chunks must be replaced, and the
    candidates that vanished before they could be read (left for the next run). Counts go into ``result``.

    A file that fails to parse keeps the chunks of its last good version (and their count); only its
    status, error and hash change, so the next run does not retry the same bytes.
    """
    counts = result.documents
    rows = [DocumentRow.keep(f.path) for f in plan.unchanged]
    replace: list[str] = []
    for f in plan.unchanged:
        prev = known.get(f.path)
        if prev is not None and prev.status == FAILED:
            counts.failed += 1
            result.still_failing.append(Failure(f.path, prev.error or "could not be parsed"))
        else:
            counts.unchanged += 1
    for f, reason in plan.skipped:
        counts.skipped += 1
        result.skipped.append(Failure(f.path, reason))
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
            DocumentRow.keep(f.path)
            if same
            else DocumentRow(f.path, None, SKIPPED, reason, 0, f.size_bytes, f.modified_us, None, run_us, "upsert")
        )
    by_path = {p.path: p for p in parsed}
    vanished: list[str] = []
    for f in plan.candidates:
        p = by_path.get(f.path)
        prev = known.get(f.path)
        if p is None:  # listed, then gone before it could be read: leave it to the next run
            if prev is not None:
                rows.append(DocumentRow.keep(f.path))
            counts.unchanged += 1
            vanished.append(f.path)
        elif p.status == UNCHANGED:  # touched, same bytes: remember the new size/mtime only
            if prev is not None and prev.status == FAILED:
                counts.failed += 1
                result.still_failing.append(Failure(f.path, prev.error or "could not be parsed"))
            else:
                counts.unchanged += 1
            rows.append(DocumentRow(f.path, None, None, None, 0, p.size_bytes, p.modified_us, None, 0, "touch"))
        elif p.status == OK:
            if prev is None or prev.status == SKIPPED or (prev.status == FAILED and not stored.get(f.path)):
                counts.added += 1
            else:
                counts.updated += 1
            replace.append(f.path)
            rows.append(
                DocumentRow(
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
                DocumentRow(
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
    return rows, sorted(set(replace)), vanished


class DocumentRow(NamedTuple):
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
    def keep(cls, path: str) -> DocumentRow:
        """Present and unchanged: in the source only so ``NOT MATCHED BY SOURCE`` does not delete it."""
        return cls(path, None, None, None, 0, 0, 0, None, 0, "keep")


@dataclass(frozen=True)
class ParsedFile:
    """One staging row without its chunks."""

    path: str
    size_bytes: int
    modified_us: int
    doc_hash: str | None
    status: str
    error: str | None
    chunk_count: int


def _human_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
