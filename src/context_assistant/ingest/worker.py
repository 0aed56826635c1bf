"""The code Spark runs on its Python workers: parse and chunk the bytes of changed files.

:func:`make_batch_parser` is the ``mapInArrow`` function of an ingest run (:mod:`context_assistant.ingest.run`).
A file's chunks leave it one row each, in record batches of bounded size while the file is still being cut,
so a big file never sits in memory as a list of its chunks (or as one row holding them all).
The parsers' libraries (pypdf, python-docx, BeautifulSoup) are imported only when a file of their format
is parsed, so a worker loads what its files need. One file can neither stop nor stall the run: a parser crash
becomes a ``failed`` status with the reason, and each file is parsed in a child process with a hard
wall-clock and memory limit (:mod:`context_assistant.ingest.limits`), so a parser stuck on a file, or one
inflating it to gigabytes, is stopped and the file reported as failed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .contract import CHUNK_FIELDS, names, staged_arrow_schema
from .limits import FileOutcome, ParseChild, ParseLimits
from .plan import FAILED, OK, UNCHANGED

if TYPE_CHECKING:
    import pyarrow as pa

    from .chunking import Chunk
    from .tokenization import TokenCounter

PARSE_SECONDS = 300.0  # the longest one file may take to parse and chunk
CHUNK_FIELD_NAMES = names(CHUNK_FIELDS)


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


GROUP_CHARS = 4 * 1024 * 1024  # a group of chunks sent on at once holds at most about this much text
GROUP_CHUNKS = 4096  # ... and at most this many chunks


def parse_and_chunk(
    path: str,
    data: bytes,
    chunk_size: int,
    chunk_overlap: int,
    timeout: float = PARSE_SECONDS,
    counter: TokenCounter | None = None,
    ai_parsed: str | None = None,
) -> tuple[str, str | None, list]:
    """Parse and chunk one file: ``(status, error, chunks)``; :func:`parse_in_groups` gathered (a failed
    file has no chunks). Never raises for bad input."""
    chunks: list[Chunk] = []
    for event in parse_in_groups(path, data, chunk_size, chunk_overlap, timeout, counter, ai_parsed):
        if isinstance(event, FileOutcome):
            return event.status, event.error, chunks if event.status == OK else []
        chunks.extend(event)
    raise AssertionError("parse_in_groups ends with the file's outcome")  # pragma: no cover


def parse_in_groups(
    path: str,
    data: bytes,
    chunk_size: int,
    chunk_overlap: int,
    timeout: float = PARSE_SECONDS,
    counter: TokenCounter | None = None,
    ai_parsed: str | None = None,
) -> Iterator[list[Chunk] | FileOutcome]:
    """Parse and chunk one file, yielding its chunks in groups of at most :data:`GROUP_CHUNKS` chunks /
    :data:`GROUP_CHARS` characters as they are cut, then its :class:`FileOutcome` (always, exactly once).

    Never raises for bad input: a parser crash on a hostile file becomes a ``failed`` outcome with the
    reason (the groups before it are then to be discarded), and with ``timeout`` > 0 a parser stuck on a file
    (pure-Python parsers can loop for a very long time on crafted PDFs) is stopped after that many seconds,
    so one file cannot stop or stall the run; in that mode the chunks are cut under the limit first and
    grouped after (SIGALRM must not fire while the consumer runs). The parse child passes 0: its parent
    enforces the limit, and the groups stream. Sizes count tokens of ``counter`` (characters without one);
    ``ai_parsed``, when given, is the JSON answer of ``ai_parse_document`` for this PDF (``rag.pdf_parser``),
    parsed instead of the bytes."""
    from .chunking import iter_chunks
    from .documents import ParsedDocument, UnsupportedFormat, parse_document
    from .text import ParseError

    count = 0
    try:
        with time_limit(timeout):
            if ai_parsed is not None:
                from .ai_parse import sections_from_ai_parse

                doc = ParsedDocument(path, sections_from_ai_parse(ai_parsed))
                if not doc.sections:
                    raise ParseError("ai_parse_document found no text")
            else:
                doc = parse_document(path, data)
            del data
            chunks: Iterator[Chunk] = iter_chunks(doc, chunk_size, chunk_overlap, counter)
            if timeout > 0:
                chunks = iter(list(chunks))
        group: list[Chunk] = []
        chars = 0
        for chunk in chunks:
            group.append(chunk)
            chars += len(chunk.text)
            if len(group) >= GROUP_CHUNKS or chars >= GROUP_CHARS:
                count += len(group)
                yield group
                group, chars = [], 0
        if group:
            count += len(group)
            yield group
    except ParseTimeout as error:
        yield FileOutcome(FAILED, str(error), 0)
        return
    except ParseError as error:
        yield FileOutcome(FAILED, str(error) or "could not be parsed", 0)
        return
    except UnsupportedFormat as error:
        yield FileOutcome(FAILED, f"unsupported format: {error}", 0)
        return
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:
        yield FileOutcome(FAILED, f"unexpected {type(error).__name__} while parsing: {error}", 0)
        return
    yield FileOutcome(OK, None, count)


def make_batch_parser(
    chunk_size: int, chunk_overlap: int, counter: TokenCounter | None = None, limits: ParseLimits | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function. Out come rows of the staging table (:func:`.contract.staged_schema_ddl`):
    a changed file's chunks, one row each, in record batches of bounded size as the parse child cuts them,
    then one summary row per file (``status`` set, chunk columns NULL). Rows with NULL ``content`` (hash
    unchanged) give a summary row ``unchanged`` only; rows may carry ``ai_parsed``, the JSON answer of
    ``ai_parse_document`` for a PDF, parsed instead. Parsing runs in a child process with ``limits`` (see
    :mod:`context_assistant.ingest.limits`); a file that fails part way has chunk rows before its ``failed``
    summary, which the MERGE ignores (it takes chunks of ``ok`` files only)."""
    limits = limits or ParseLimits()

    def parse_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        with ParseChild(chunk_size, chunk_overlap, counter, limits, parse_in_groups) as child:
            yield from _parse_batches(batches, child)

    def _parse_batches(batches: Iterator[pa.RecordBatch], child: ParseChild) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        schema = staged_arrow_schema()
        rows: list[dict[str, Any]] = []  # chunk and summary rows not yet sent, at most about one group's worth
        chars = 0
        for batch in batches:
            ai_column = batch.column("ai_parsed") if "ai_parsed" in batch.schema.names else None
            for i in range(batch.num_rows):
                record = {k: batch.column(k)[i].as_py() for k in ("path", "size_bytes", "modified_us", "doc_hash")}
                content = batch.column("content")[i].as_py()
                if content is None:
                    rows.append(_summary(record, UNCHANGED, None, 0))
                    continue
                ai_parsed = ai_column[i].as_py() if ai_column is not None else None
                events = child.stream(record["path"], content, ai_parsed)
                del content  # the child has it (the stream drops its own reference once it is sent)
                for event in events:
                    if isinstance(event, FileOutcome):
                        rows.append(_summary(record, event.status, event.error, event.chunk_count))
                        continue
                    size = sum(len(chunk.text) for chunk in event)
                    if rows and (len(rows) + len(event) > GROUP_CHUNKS or chars + size > GROUP_CHARS):
                        yield pa.RecordBatch.from_pylist(rows, schema=schema)  # a batch: one group at most
                        rows, chars = [], 0
                    rows.extend(_chunk_row(record, chunk) for chunk in event)
                    chars += size
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=schema)

    return parse_batches


def _summary(record: dict[str, Any], status: str, error: str | None, chunk_count: int) -> dict[str, Any]:
    return {**record, "status": status, "error": error, "chunk_count": chunk_count}


def _chunk_row(record: dict[str, Any], chunk: Chunk) -> dict[str, Any]:
    row = {"path": record["path"], "modified_us": record["modified_us"], "doc_hash": record["doc_hash"]}
    row.update((name, getattr(chunk, name)) for name in CHUNK_FIELD_NAMES)
    return row
