"""Scale benchmark of the pgvector backend at 100k chunks: search latency (p50/p95) per mode, recall@10 of the
ANN index (hnsw, then ivfflat) against exact search, and the cost of a no-change sync and a 1%-changed sync
relative to the full first sync.

Keyword (BM25) and hybrid search are measured on four query sets: ``zipf`` (4 words drawn from the corpus's
Zipf distribution), ``common`` (4 of the 100 most frequent words: each in 5-100% of the chunks), ``mixed`` (2
of those + 2 of rank 1000+) and ``rare`` (4 of rank 1000+). Each keyword top-10 (and hybrid's keyword side,
its top-``candidate_count(10)``) is compared with an exact BM25 computed independently in numpy from the
stored tsvectors: ``identical_top10`` counts queries whose top 10 scores equal the reference's, ``recall@10``
counts reference rows found (ties at the 10th score count as found).

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
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from context_assistant.ingest import content_hash, make_chunk_id
from context_assistant.retrieval import (
    InMemoryChunkSource,
    PgVectorChunkIndex,
    SourceChunk,
    candidate_count,
    embedding_text,
)
from context_assistant.storage import BM25_B, BM25_K1, bm25_rank, bm25_top

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from retrieval_eval import fresh_database
from scratch import settle

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


def query_sets(vocab: list[str], weights: np.ndarray, zipf: int, n: int = 100) -> dict[str, list[str]]:
    """The keyword query sets (see the module docstring); vocabulary index = frequency rank."""
    rng = np.random.default_rng(99)
    out = {"zipf": [" ".join(vocab[w] for w in rng.choice(len(vocab), size=4, p=weights)) for _ in range(zipf)]}
    r = np.random.default_rng(7)
    tail = np.arange(1000, len(vocab))
    out["common"] = [" ".join(vocab[i] for i in r.choice(100, size=4, replace=False)) for _ in range(n)]
    out["mixed"] = [
        " ".join(
            [vocab[i] for i in r.choice(100, size=2, replace=False)] + [vocab[i] for i in r.choice(tail, size=2)]
        )
        for _ in range(n)
    ]
    out["rare"] = [" ".join(vocab[i] for i in r.choice(tail, size=4, replace=False)) for _ in range(n)]
    return out


class ExactBM25:
    """BM25 (the product's k1, b and idf) in numpy from the stored tsvectors' positions: a reference that shares
    no SQL with the product's ranking. Only the postings of the queries' lexemes are read."""

    def __init__(self, conn: Any, queries: list[str]) -> None:
        self.lexemes = {
            q: conn.execute("SELECT tsvector_to_array(to_tsvector('english', %s))", (q,)).fetchone()[0]
            for q in queries
        }
        wanted = sorted({lex for lexemes in self.lexemes.values() for lex in lexemes})
        rows = conn.execute("SELECT chunk_id, doc_len FROM rag_chunks ORDER BY chunk_id").fetchall()
        self.ids = [r[0] for r in rows]
        position = {chunk_id: i for i, chunk_id in enumerate(self.ids)}
        self.dl = np.array([r[1] for r in rows], dtype=np.float64)
        postings: dict[str, tuple[list[int], list[float]]] = {}
        with conn.cursor(name="postings") as cur:
            cur.itersize = 100_000
            cur.execute(
                """SELECT c.chunk_id, u.lexeme, array_length(u.positions, 1)
                   FROM rag_chunks c, unnest(c.tsv) u JOIN unnest(%s::text[]) AS w(l) ON w.l = u.lexeme
                   WHERE u.positions IS NOT NULL""",
                (wanted,),
            )
            for chunk_id, lexeme, tf in cur:
                docs, tfs = postings.setdefault(lexeme, ([], []))
                docs.append(position[chunk_id])
                tfs.append(tf)
        self.postings = {k: (np.array(d), np.array(t, dtype=np.float64)) for k, (d, t) in postings.items()}

    def top(self, query: str, k: int) -> list[tuple[str, float]]:
        n = len(self.ids)
        avgdl = self.dl.sum() / n
        score = np.zeros(n)
        for lexeme in self.lexemes[query]:
            if lexeme not in self.postings:
                continue
            docs, tf = self.postings[lexeme]
            idf = np.log(1 + (n - len(docs) + 0.5) / (len(docs) + 0.5))
            score[docs] += (
                idf * tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * self.dl[docs] / avgdl))
            )
        hit = np.nonzero(score)[0]
        if len(hit) > k:  # only rows scoring at least the k-th best can be in the top k (ties included)
            hit = hit[score[hit] >= np.partition(score[hit], len(hit) - k)[len(hit) - k]]
        order = sorted(hit, key=lambda i: (-score[i], self.ids[i]))[:k]
        return [(self.ids[i], float(score[i])) for i in order]


def agreement(got: list[tuple[str, float]], exact: list[tuple[str, float]]) -> tuple[bool, float]:
    """(same scores in the same order, recall against the reference with ties at the last score as hits)."""
    same = len(got) == len(exact) and all(
        abs(g[1] - e[1]) <= 1e-9 * max(1.0, e[1]) for g, e in zip(got, exact, strict=True)
    )
    if not exact:
        return same, 1.0
    last = exact[-1][1]
    ref = {chunk_id for chunk_id, _ in exact}
    found = sum(1 for chunk_id, score in got if chunk_id in ref or abs(score - last) <= 1e-9 * max(1.0, last))
    return same, min(found, len(exact)) / len(exact)


def keyword_report(index: PgVectorChunkIndex, db: Any, sets: dict[str, list[str]], k: int = 10) -> dict[str, Any]:
    """Per query set: keyword and hybrid p50/p95 (hybrid with precomputed query vectors: no embedding time),
    and agreement of the keyword top-k and of hybrid's keyword candidates with the exact reference."""
    pool = candidate_count(k)
    every = [q for queries in sets.values() for q in queries]
    with db.connection() as conn:
        exact = ExactBM25(conn, every)
    vectors = {q: vec for q, vec in zip(every, index.embedder.embed(every), strict=True)}
    real = index.embedder

    class Precomputed:  # hybrid without the embedding time
        model_name = real.model_name
        dimension = real.dimension

        def embed(self, texts: list[str]) -> list[list[float]]:
            return [vectors[t] for t in texts]

    index.embedder = Precomputed()  # type: ignore[assignment]
    out: dict[str, Any] = {}
    try:
        for name, queries in sets.items():
            entry: dict[str, Any] = {"queries": len(queries)}
            for mode in ("keyword", "hybrid"):
                timed_searches(index, queries, mode, k)  # unmeasured pass: steady state, not cold pages
                latencies, _ = timed_searches(index, queries, mode, k)
                entry[f"{mode}_p50_ms"] = percentile(latencies, 50)
                entry[f"{mode}_p95_ms"] = percentile(latencies, 95)
            for label, limit in (("top10", k), (f"hybrid_keyword_top{pool}", pool)):
                same, recall, rounds = 0, [], []
                with db.connection() as conn:
                    for q in queries:
                        got = bm25_top(conn, "chunks", "rag_chunks", "chunk_id", "TRUE", {}, q, limit, rounds)
                        ok, r = agreement(got, exact.top(q, limit))
                        same += ok
                        recall.append(r)
                entry[f"identical_{label}"] = f"{same}/{len(queries)}"
                entry[f"recall_{label}"] = statistics.mean(recall)
                entry[f"rounds_{label}"] = dict(sorted(Counter(rounds).items()))
            out[name] = entry
        with db.connection() as conn:  # the exhaustive method on a sample of the common set, same run
            sample = sets["common"][:10]
            latencies = []
            for q in sample:
                started = time.perf_counter()
                bm25_rank(conn, "chunks", "rag_chunks", "chunk_id", "TRUE", {}, q, k)
                latencies.append(1000 * (time.perf_counter() - started))
            out["exhaustive_common_sample"] = {
                "queries": len(sample),
                "p50_ms": percentile(latencies, 50),
                "max_ms": max(latencies),
            }
    finally:
        index.embedder = real
    return out


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
    parser.add_argument("--keyword-queries", type=int, default=100, help="per set: common, mixed, rare")
    parser.add_argument("--database-url")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    say = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))

    report: dict[str, Any] = {"chunks": args.chunks, "queries": args.queries}
    chunks, vocab, weights = make_chunks(args.chunks)
    rng = np.random.default_rng(99)
    queries = [" ".join(vocab[w] for w in rng.choice(len(vocab), size=4, p=weights)) for _ in range(args.queries)]
    sets = query_sets(vocab, weights, args.queries, args.keyword_queries)
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

        # Searches are measured on a settled index: the syncs above leave dead rows and fresh pages that
        # autovacuum (HNSW and GIN clean-up included) works through for a minute or two on 2 cores, and
        # searches measured meanwhile share the cores with it (common-word keyword p50 50 vs 17 ms, same code).
        say("VACUUM ANALYZE (what autovacuum does after a sync, done now so searches do not overlap it)")
        report["vacuum_analyze_seconds"] = settle(db.target.conninfo)
        say("exact neighbours with numpy")
        exact = exact_top(embedder, chunks, queries, 10)
        for mode in ("vector", "keyword", "hybrid"):
            timed_searches(index, queries[:10], mode)  # warm caches
            latencies, results = timed_searches(index, queries, mode)
            entry = {"p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95)}
            if mode == "vector":
                entry["recall@10_vs_exact"] = recall_at_k(results, exact)
            report[f"hnsw_{mode}"] = entry
        say("keyword and hybrid on the common / mixed / rare query sets, against exact BM25 (numpy)")
        report["bm25_sets"] = keyword_report(index, db, sets)

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
