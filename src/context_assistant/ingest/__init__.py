"""Files → chunks: parse documents, cut them into chunks, and keep the Delta chunk and documents tables in
step with a folder or Volume, with Spark. ``plan`` decides in plain Python, ``worker`` is what Spark runs on
its workers, ``run`` executes the SQL; ``contract`` declares the tables' columns once."""

from .chunking import Chunk, chunk_document, content_hash, make_chunk_id, split_text, validate_chunking
from .contract import CHUNK_TABLE, DOCUMENTS_TABLE, HIT_COLUMNS, INDEXED_COLUMNS
from .documents import SUPPORTED_EXTENSIONS, ParsedDocument, UnsupportedFormat, parse_document
from .plan import IngestPlan, IngestResult, plan_ingest
from .run import IngestError, ensure_tables, run_ingest
from .spark import get_spark, start_local_spark, stop_local_spark
from .tables import TableRef, resolve_table
from .text import ParseError, Section
from .worker import parse_and_chunk

__all__ = [
    "CHUNK_TABLE",
    "DOCUMENTS_TABLE",
    "HIT_COLUMNS",
    "INDEXED_COLUMNS",
    "SUPPORTED_EXTENSIONS",
    "Chunk",
    "IngestError",
    "IngestPlan",
    "IngestResult",
    "ParseError",
    "ParsedDocument",
    "Section",
    "TableRef",
    "UnsupportedFormat",
    "chunk_document",
    "content_hash",
    "ensure_tables",
    "get_spark",
    "make_chunk_id",
    "parse_and_chunk",
    "parse_document",
    "plan_ingest",
    "resolve_table",
    "run_ingest",
    "split_text",
    "start_local_spark",
    "stop_local_spark",
    "validate_chunking",
]
