"""Test doubles and helpers for the retrieval tests (embeddings, index, sync, recall, CLI).

``HashingEmbedder`` is a test double used for speed: it implements the ``Embedder`` protocol with a hashed
bag of words (64 dims), so sync and index mechanics are tested in milliseconds. Texts sharing words get
similar vectors, which is enough for mechanics; retrieval *quality* (paraphrases) is tested with the real
all-MiniLM-L6-v2 model through the ``minilm`` fixture, loaded once per test session.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from context_assistant.ingest.chunking import content_hash, make_chunk_id
from context_assistant.retrieval.embeddings import EmbeddingError, LocalEmbedder
from context_assistant.retrieval.sync import SourceChunk

_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Deterministic hashed bag-of-words vectors (a fast stand-in for a model; see module docstring)."""

    def __init__(self, dimension: int = 64, model_name: str = "test-hashing-64") -> None:
        self._dimension = dimension
        self.model_name = model_name

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            vector = [0.0] * self._dimension
            words = _WORD.findall(text.lower()) or ["<empty>"]
            for word in words:
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                index = int.from_bytes(digest[:4], "little") % self._dimension
                vector[index] += 1.0 if digest[4] & 1 else -1.0
            if not any(vector):
                vector[0] = 1.0
            norm = math.sqrt(sum(x * x for x in vector))
            out.append([x / norm for x in vector])
        return out


class CountingEmbedder:
    """Wraps an embedder and counts calls and texts (to prove a no-change sync embeds nothing)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.calls = 0
        self.texts: list[str] = []

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        self.texts.extend(texts)
        return self.inner.embed(texts)


class SimulatedCrash(BaseException):
    """Not an Exception: like a kill, nothing in the sync may catch it."""


class CrashingEmbedder(CountingEmbedder):
    """Embeds ``batches`` calls normally, then raises :class:`SimulatedCrash` (a process dying mid-sync)."""

    def __init__(self, inner: Any, batches: int) -> None:
        super().__init__(inner)
        self.batches = batches

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.calls >= self.batches:
            raise SimulatedCrash(f"crash after {self.batches} batches")
        return super().embed(texts)


class PoisonEmbedder(CountingEmbedder):
    """Fails (EmbeddingError) on any batch containing ``poison``; other texts embed normally."""

    def __init__(self, inner: Any, poison: str) -> None:
        super().__init__(inner)
        self.poison = poison

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        if any(self.poison in t for t in texts):
            raise EmbeddingError(f"endpoint rejected the input containing {self.poison!r}")
        return self.inner.embed(texts)


def chunk(path: str, index: int, text: str, heading: str = "", page: int | None = None) -> SourceChunk:
    """A chunk-table row with the pipeline's id and hash rules."""
    return SourceChunk(make_chunk_id(path, index), path, index, text, heading, page, content_hash(text))


def document(path: str, *texts: str, heading: str = "") -> list[SourceChunk]:
    return [chunk(path, i, text, heading) for i, text in enumerate(texts)]


def query_ceiling(conn: Any, space: str, query: str, unknown_terms: bool = False) -> float:
    """The question's BM25 ceiling, ``(k1 + 1) * sum(idf)`` over its lexemes, recomputed here from the space's
    statistics: the lexemes the space knows, or (``unknown_terms``, as recall scores) every lexeme, an unknown
    one at df 0. What hybrid fusion divides BM25 scores by."""
    from context_assistant.storage.bm25 import bm25_ceiling, idf

    n = conn.execute("SELECT doc_count FROM bm25_stats WHERE space = %s", (space,)).fetchone()[0]
    join = "LEFT JOIN" if unknown_terms else "JOIN"
    dfs = conn.execute(
        f"""SELECT coalesce(t.df, 0) FROM unnest(tsvector_to_array(to_tsvector('english', %s))) AS q(lexeme)
            {join} bm25_terms t ON t.space = %s AND t.lexeme = q.lexeme""",
        (query, space),
    ).fetchall()
    return bm25_ceiling([idf(n, df) for (df,) in dfs])


def bm25_stats_consistent(db: Any, space: str, table: str) -> None:
    """Assert the trigger-maintained BM25 statistics equal a recount from the table."""
    with db.connection() as conn:
        expected_df = dict(
            conn.execute(
                f"SELECT l, count(*)::int FROM {table}, unnest(tsvector_to_array(tsv)) AS l GROUP BY l"
            ).fetchall()
        )
        actual_df = dict(conn.execute("SELECT lexeme, df FROM bm25_terms WHERE space = %s", (space,)).fetchall())
        docs, length = conn.execute(f"SELECT count(*), coalesce(sum(doc_len), 0) FROM {table}").fetchone()
        stats = conn.execute(
            "SELECT doc_count, total_length FROM bm25_stats WHERE space = %s", (space,)
        ).fetchone() or (0, 0)
    assert actual_df == expected_df
    assert tuple(stats) == (docs, length)


def write_chunk_table(location: Path, chunks: list[SourceChunk], mode: str = "overwrite") -> None:
    """Write chunks as the pipeline's Delta chunk table (its column set; pipeline.CHUNK_COLUMNS)."""
    from datetime import datetime, timezone

    import pyarrow as pa
    from deltalake import write_deltalake

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    schema = pa.schema(
        [
            ("chunk_id", pa.string(), False),
            ("path", pa.string(), False),
            ("chunk_index", pa.int32(), False),
            ("text", pa.string(), False),
            ("heading", pa.string(), False),
            ("page", pa.int32()),
            ("content_hash", pa.string(), False),
            ("doc_hash", pa.string(), False),
            ("modified_at", pa.timestamp("us", tz="UTC"), False),
            ("ingested_at", pa.timestamp("us", tz="UTC"), False),
        ]
    )
    rows = [
        {
            "chunk_id": c.chunk_id,
            "path": c.path,
            "chunk_index": c.chunk_index,
            "text": c.text,
            "heading": c.heading,
            "page": c.page,
            "content_hash": c.content_hash,
            "doc_hash": "d-" + c.path,
            "modified_at": now,
            "ingested_at": now,
        }
        for c in chunks
    ]
    write_deltalake(str(location), pa.Table.from_pylist(rows, schema=schema), mode=mode)


@pytest.fixture(scope="session")
def minilm() -> LocalEmbedder:
    """The real default model, loaded once for the whole test run (the loader caches it per process)."""
    embedder = LocalEmbedder("all-MiniLM-L6-v2")
    assert embedder.dimension == 384
    return embedder
