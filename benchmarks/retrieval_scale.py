"""Scale benchmark of the pgvector backend at 100k chunks: search latency (p50/p95) per mode, recall@10 of the
ANN index (hnsw, then ivfflat) against exact search, and the cost of a no-change sync and a 1%-changed sync
relative to the full first sync.

Synthetic data, because embedding 100k real chunks with all-MiniLM-L6-v2 takes over an hour on 2 cores:
chunk texts are ~60 pseudo-words drawn from a Zipf distribution over a 20k-word vocabulary (so BM25 sees
realistic common and rare terms), and vectors come from :class:`ClusteredEmbedder`, a deterministic
stand-in that maps each text to a noisy point around one of 1000 cluster centres in 384 dimensions (so the
ANN index faces neighbourhood structure, not uniform noise). Sync timings therefore measure everything
except the model; the report adds what MiniLM itself would cost, measured on a sample.

    python benchmarks/retrieval_scale.py [--chunks 100000] [--queries 200] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from context_assistant.ingest import content_hash, make_chunk_id
from context_assistant.retrieval import InMemoryChunkSource, PgVectorChunkIndex, SourceChunk, embedding_text

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from retrieval_eval import fresh_database

DIM = 384
CLUSTERS = 1000
SYLLABLES = [a + b for a in "bdfgklmnprstvz" for b in ("a", "e", "i", "o", "u", "ai", "ou")]


class ClusteredEmbedder:
    """Deterministic synthetic vectors: hash(text) picks a cluster centre and seeds the noise around it."""

    model_name = "synthetic-clustered-384"
    dimension = DIM

    def __init__(self, seed: int = 7, spread: float = 0.35) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(CLUSTERS, DIM))
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.spread = spread
        self.seconds = 0.0
        self.texts = 0

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        rng = np.random.default_rng(seed)
        noise = rng.normal(size=DIM)
        v = self.centres[seed % CLUSTERS] + self.spread * noise / np.sqrt(DIM) * 3
        return v / np.linalg.norm(v)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        started = time.monotonic()
        out = [self.vector(t).tolist() for t in texts]
        self.seconds += time.monotonic() - started
        self.texts += len(texts)
        return out


def vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES, size=rng.integers(2, 5))))
    return sorted(words)


def make_chunks(n: int, seed: int = 1) -> tuple[list[SourceChunk], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    vocab = vocabulary(20_000, rng)
    ranks = np.arange(1, len(vocab) + 1)
    weights = 1 / ranks**1.07
    weights /= weights.sum()
    chunks = []
    per_doc = 10
    for i in range(n):
        words = rng.choice(len(vocab), size=int(rng.integers(40, 80)), p=weights)
        text = " ".join(vocab[w] for w in words)
        path = f"docs/{i // per_doc:06d}.md"
        chunks.append(
            SourceChunk(make_chunk_id(path, i % per_doc), path, i % per_doc, text, "", None, content_hash(text))
        )
    return chunks, vocab, weights


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def timed_searches(index: PgVectorChunkIndex, queries: list[str], mode: str, k: int = 10) -> tuple[list, list]:
    latencies, results = [], []
    for q in queries:
        started = time.perf_counter()
        hits = index.search(q, top_k=k, mode=mode)
        latencies.append(1000 * (time.perf_counter() - started))
        results.append([h.chunk_id for h in hits])
    return latencies, results


def exact_top(
    embedder: ClusteredEmbedder, chunks: list[SourceChunk], queries: list[str], k: int
) -> list[list[str]]:
    matrix = np.vstack([embedder.vector(embedding_text(c.heading, c.text)) for c in chunks])
    ids = [c.chunk_id for c in chunks]
    out = []
    for q in queries:
        sims = matrix @ embedder.vector(q)
        top = np.argpartition(-sims, k)[:k]
        out.append([ids[i] for i in top[np.argsort(-sims[top])]])
    return out


def recall_at_k(approx: list[list[str]], exact: list[list[str]], k: int = 10) -> float:
    return statistics.mean(len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact, strict=True))


def minilm_rate(chunks: list[SourceChunk], sample: int = 128) -> float | None:
    """Chunks per second all-MiniLM-L6-v2 embeds here (None when it is not installed)."""
    try:
        from context_assistant.retrieval import LocalEmbedder

        model = LocalEmbedder("all-MiniLM-L6-v2")
        model.embed(["warm up"])
        texts = [c.text for c in chunks[:sample]]
        started = time.monotonic()
        model.embed(texts)
        return len(texts) / (time.monotonic() - started)
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--database-url")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    say = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))

    report: dict[str, Any] = {"chunks": args.chunks, "queries": args.queries}
    chunks, vocab, weights = make_chunks(args.chunks)
    rng = np.random.default_rng(99)
    queries = [" ".join(vocab[w] for w in rng.choice(len(vocab), size=4, p=weights)) for _ in range(args.queries)]
    embedder = ClusteredEmbedder()
    db = fresh_database(args.database_url and args.database_url)
    try:
        source = InMemoryChunkSource(chunks)
        index = PgVectorChunkIndex(db, embedder, index_type="hnsw", hnsw_ef_search=40)

        say(f"full sync of {len(chunks)} chunks")
        full = index.refresh(source, progress=say)
        report["sync_full"] = {
            "seconds": full.seconds,
            "embedded": full.embedded,
            "embed_seconds": embedder.seconds,
        }

        embedder.texts = 0
        nochange = index.refresh(source, progress=say)
        report["sync_no_change"] = {"seconds": nochange.seconds, "embedded": embedder.texts}

        changed = rng.choice(len(chunks), size=len(chunks) // 100, replace=False)
        for i in changed:
            c = chunks[i]
            text = c.text + " edited"
            chunks[i] = SourceChunk(c.chunk_id, c.path, c.chunk_index, text, c.heading, c.page, content_hash(text))
        source.put(chunks[i] for i in changed)
        embedder.texts = 0
        one_percent = index.refresh(source, progress=say)
        report["sync_1pct"] = {"seconds": one_percent.seconds, "embedded": embedder.texts}
        for key in ("sync_no_change", "sync_1pct"):
            report[key]["relative_to_full"] = report[key]["seconds"] / full.seconds
        rate = minilm_rate(chunks)
        if rate:
            report["minilm_chunks_per_second"] = rate
            report["minilm_full_sync_estimate_seconds"] = len(chunks) / rate
            report["minilm_1pct_sync_estimate_seconds"] = len(changed) / rate

        say("exact neighbours with numpy")
        exact = exact_top(embedder, chunks, queries, 10)
        for mode in ("vector", "keyword", "hybrid"):
            timed_searches(index, queries[:10], mode)  # warm caches
            latencies, results = timed_searches(index, queries, mode)
            entry = {"p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95)}
            if mode == "vector":
                entry["recall@10_vs_exact"] = recall_at_k(results, exact)
            report[f"hnsw_{mode}"] = entry

        say("switching to ivfflat")
        ivf = PgVectorChunkIndex(db, embedder, index_type="ivfflat", ivfflat_probes=10)
        started = time.monotonic()
        report["ivfflat_index"] = ivf.refresh(source, progress=say).index
        report["ivfflat_build_seconds"] = time.monotonic() - started
        for probes in (10, 40):
            ivf.ivfflat_probes = probes
            timed_searches(ivf, queries[:10], "vector")
            latencies, results = timed_searches(ivf, queries, "vector")
            report[f"ivfflat_probes{probes}_vector"] = {
                "p50_ms": percentile(latencies, 50),
                "p95_ms": percentile(latencies, 95),
                "recall@10_vs_exact": recall_at_k(results, exact),
            }
    finally:
        db.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
