"""Top-10 vector search at 100k chunks: latency and recall@10 against exact search, on synthetic vectors.

Embedding 100k chunks with all-MiniLM-L6-v2 would take hours on 2 cores, so both sides get the same
precomputed synthetic data from ``benchmarks/retrieval_scale.py``: Zipf-distributed pseudo-word texts and
:class:`ClusteredEmbedder` vectors (a fixed-seed noisy point around one of 1,000 cluster centres, 384 dims),
for the chunks and for the queries. The exact top 10 is computed with numpy; recall@10 is the overlap of a
side's answer with it. Both sides use an HNSW index with pgvector's defaults (m=16, ef_construction=64) and
ef_search=40, cosine distance.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.retrieval_scale import ClusteredEmbedder, exact_top, make_chunks, recall_at_k
from benchmarks.scratch import ScratchServer, ours_database
from context_assistant.retrieval import InMemoryChunkSource, PgVectorChunkIndex, SourceChunk
from context_assistant.storage import Database

HNSW_EF_SEARCH = 40
WARM_UP_QUERIES = 10


@dataclass
class Dataset:
    chunks: list[SourceChunk]
    queries: list[str]
    exact: list[list[str]]  # exact top-10 chunk ids per query
    embedder: ClusteredEmbedder

    @classmethod
    def build(cls, chunks: int, queries: int, seed: int = 99) -> Dataset:
        items, vocab, weights = make_chunks(chunks)
        rng = np.random.default_rng(seed)
        texts = [" ".join(vocab[w] for w in rng.choice(len(vocab), size=4, p=weights)) for _ in range(queries)]
        embedder = ClusteredEmbedder()
        return cls(items, texts, exact_top(embedder, items, texts, 10), embedder)


def chunk_uuid(chunk_id: str) -> str:
    """LangChain's store keys rows by UUID: a stable one per chunk id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, chunk_id))


def timed_queries(search: Any, queries: list[str]) -> tuple[list[float], list[list[str]]]:
    """Seconds per ``search(query) -> ids`` and the ids, after a few warm-up queries."""
    for q in queries[:WARM_UP_QUERIES]:
        search(q)
    latencies, results = [], []
    for q in queries:
        started = time.perf_counter()
        ids = search(q)
        latencies.append(time.perf_counter() - started)
        results.append(ids)
    return latencies, results


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


class OursAnn:
    """Our pgvector index filled with the dataset (the normal sync path, synthetic vectors)."""

    def __init__(self, server: ScratchServer, dbname: str, data: Dataset) -> None:
        self.url = server.fresh(dbname)
        self.db: Database = ours_database(self.url)
        self.index = PgVectorChunkIndex(self.db, data.embedder, index_type="hnsw", hnsw_ef_search=HNSW_EF_SEARCH)
        started = time.perf_counter()
        result = self.index.refresh(InMemoryChunkSource(data.chunks))
        self.load_seconds = time.perf_counter() - started
        if result.embedded != len(data.chunks) or result.index != "hnsw":
            raise AssertionError(f"our index holds {result.embedded} chunks ({result.index})")

    def search(self, query: str) -> list[str]:
        return [hit.chunk_id for hit in self.index.search(query, top_k=10, mode="vector")]

    def close(self) -> None:
        self.db.close()


class TheirsAnn:
    """``PGVectorStore`` filled with the same vectors through ``add_embeddings``, then ``apply_vector_index``."""

    def __init__(self, server: ScratchServer, dbname: str, data: Dataset) -> None:
        from benchmarks.peers import LangChainVectorStore
        from context_assistant.retrieval import embedding_text

        self.url = server.fresh(dbname)
        self.vs = LangChainVectorStore(self.url, data.embedder, data.embedder.dimension, record_manager=False)
        texts = [embedding_text(c.heading, c.text) for c in data.chunks]
        started = time.perf_counter()
        vectors = [data.embedder.vector(t).tolist() for t in texts]
        self.vs.add_embeddings(texts, vectors, [chunk_uuid(c.chunk_id) for c in data.chunks])
        self.vs.apply_hnsw()
        self.load_seconds = time.perf_counter() - started
        self.ids = {chunk_uuid(c.chunk_id): c.chunk_id for c in data.chunks}

    def search(self, query: str) -> list[str]:
        return [self.ids[i] for i in self.vs.search_ids(query, k=10)]

    def close(self) -> None:
        self.vs.close()


def measure(side: Any, data: Dataset) -> dict[str, float]:
    """One run: p50/p95 latency (ms) over the queries and mean recall@10 against exact search."""
    latencies, results = timed_queries(side.search, data.queries)
    return {
        "p50_ms": 1000 * percentile(latencies, 50),
        "p95_ms": 1000 * percentile(latencies, 95),
        "recall@10": recall_at_k(results, data.exact),
    }
