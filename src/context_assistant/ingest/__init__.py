"""Files → chunks: parse documents (``documents``, with ``html_parser``, ``docx_parser`` and
``markdown_tables``; ``ai_parse`` for Databricks' ``ai_parse_document``), cut them into chunks sized in the
embedding model's tokens (``chunking``, ``tokenization``), and keep the Delta chunk and documents tables in
step with a folder or Volume, with Spark. ``plan`` decides in plain Python, ``worker`` is what Spark runs on
its workers, ``run`` executes the SQL; ``contract`` declares the tables' columns once."""

from .ai_parse import ai_parse_column, check_pdf_parser, sections_from_ai_parse
from .chunking import Chunk, chunk_document, content_hash, fit_header, make_chunk_id, split_text, validate_chunking
from .contract import CHUNK_TABLE, DOCUMENTS_TABLE, HIT_COLUMNS, INDEXED_COLUMNS
from .documents import SUPPORTED_EXTENSIONS, ParsedDocument, UnsupportedFormat, parse_document
from .plan import IngestPlan, IngestResult, chunking_signature, plan_ingest
from .run import IngestError, IngestFailed, ensure_tables, run_ingest
from .spark import get_spark, start_local_spark, stop_local_spark
from .tables import TableRef, resolve_table
from .text import ParseError, Section
from .tokenization import (
    ChunkingConfigError,
    EstimatedCounter,
    TokenCounter,
    WordPieceCounter,
    check_chunk_settings,
    count_tokens,
)
from .worker import parse_and_chunk

__all__ = [
    "CHUNK_TABLE",
    "DOCUMENTS_TABLE",
    "HIT_COLUMNS",
    "INDEXED_COLUMNS",
    "SUPPORTED_EXTENSIONS",
    "Chunk",
    "ChunkingConfigError",
    "EstimatedCounter",
    "IngestError",
    "IngestFailed",
    "IngestPlan",
    "IngestResult",
    "ParseError",
    "ParsedDocument",
    "Section",
    "TableRef",
    "TokenCounter",
    "UnsupportedFormat",
    "WordPieceCounter",
    "ai_parse_column",
    "check_chunk_settings",
    "check_pdf_parser",
    "chunk_document",
    "chunking_signature",
    "content_hash",
    "count_tokens",
    "ensure_tables",
    "fit_header",
    "get_spark",
    "make_chunk_id",
    "parse_and_chunk",
    "parse_document",
    "plan_ingest",
    "resolve_table",
    "run_ingest",
    "sections_from_ai_parse",
    "split_text",
    "start_local_spark",
    "stop_local_spark",
    "validate_chunking",
]
