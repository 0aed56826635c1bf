"""The code Spark runs on its Python workers: parse and chunk the bytes of changed files.

:func:`make_batch_parser` is the ``mapInArrow`` function of an ingest run (:mod:`context_assistant.ingest.run`).
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

from .contract import CHUNK_FIELDS, names, parsed_arrow_schema
from .limits import ParseChild, ParseLimits
from .plan import FAILED, OK, UNCHANGED

if TYPE_CHECKING:
    import pyarrow as pa

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
    stop or stall the run. Sizes count tokens of ``counter`` (characters without one); ``ai_parsed``, when
    given, is the JSON answer of ``ai_parse_document`` for this PDF (``rag.pdf_parser``), parsed instead of
    the bytes."""
    from .chunking import chunk_document
    from .documents import ParsedDocument, UnsupportedFormat, parse_document
    from .text import ParseError

    try:
        with time_limit(timeout):
            if ai_parsed is not None:
                from .ai_parse import sections_from_ai_parse

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
    chunk_size: int, chunk_overlap: int, counter: TokenCounter | None = None, limits: ParseLimits | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: rows with NULL ``content`` (hash unchanged) pass through unparsed; rows
    may carry ``ai_parsed``, the JSON answer of ``ai_parse_document`` for a PDF, parsed instead. Parsing runs
    in a child process with ``limits`` (see :mod:`context_assistant.ingest.limits`)."""
    limits = limits or ParseLimits()

    def parse_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        with ParseChild(chunk_size, chunk_overlap, counter, limits, parse_and_chunk) as child:
            yield from _parse_batches(batches, child)

    def _parse_batches(batches: Iterator[pa.RecordBatch], child: ParseChild) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        schema = parsed_arrow_schema()
        for batch in batches:
            out: list[dict[str, Any]] = []
            for row in batch.to_pylist():
                record = {k: row[k] for k in ("path", "size_bytes", "modified_us", "doc_hash")}
                if row["content"] is None:
                    record.update(status=UNCHANGED, error=None, chunk_count=0, chunks=[])
                else:
                    status, error, chunks = child.parse(row["path"], row["content"], row.get("ai_parsed"))
                    record.update(
                        status=status,
                        error=error,
                        chunk_count=len(chunks),
                        chunks=[{name: getattr(c, name) for name in CHUNK_FIELD_NAMES} for c in chunks],
                    )
                out.append(record)
            yield pa.RecordBatch.from_pylist(out, schema=schema)

    return parse_batches
