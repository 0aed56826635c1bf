"""Retrieval quality on the labelled set in ``fixtures/eval``: recall@5 and nDCG@10 for vector, keyword (BM25)
and hybrid (RRF) search through the real pgvector index.

The set: 62 short team-handbook documents, original text written for this purpose (``corpus.jsonl``: id, title, text; one chunk each, the title as
the heading) and 52 queries (``queries.jsonl``: id, query, relevant document ids, and ``kind``: ``keyword``
when the query uses the document's own terms, ``paraphrase`` when it asks in other words).

Run (starts a throwaway embedded Postgres under /tmp unless --database-url is given)::

    python benchmarks/retrieval_eval.py [--model all-MiniLM-L6-v2] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from context_assistant.chunking import content_hash
from context_assistant.db import Database, EmbeddedPostgres, Target
from context_assistant.embeddings import LocalEmbedder, make_embedder
from context_assistant.index_pgvector import PgVectorChunkIndex
from context_assistant.sync import InMemoryChunkSource, SourceChunk

EVAL_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "eval"
MODES = ("vector", "keyword", "hybrid")


def load_set(folder: Path = EVAL_DIR) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines() if line.strip()]
    queries = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines() if line.strip()]
    return corpus, queries


def recall_at(ranked: list[str], relevant: set[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant)


def ndcg_at(ranked: list[str], relevant: set[str], k: int) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, doc in enumerate(ranked[:k]) if doc in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal


def fresh_database(url: str | None) -> Database:
    if url is None:
        server = EmbeddedPostgres(Path(tempfile.gettempdir()) / "context-assistant-bench")
        admin = server.start("postgres")
        url = psycopg.conninfo.make_conninfo(admin, dbname="retrieval_eval")
    admin_url = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    db = Database(Target("postgres", url, f"database {name}"), max_size=2)
    db.migrate(vector=True)
    return db


def evaluate(db: Database, embedder: Any, corpus: list[dict[str, Any]], queries: list[dict[str, Any]]) -> dict:
    chunks = [
        SourceChunk(d["id"], d["id"], 0, d["text"], d["title"], None, content_hash(d["text"])) for d in corpus
    ]
    index = PgVectorChunkIndex(db, embedder)
    started = time.monotonic()
    index.refresh(InMemoryChunkSource(chunks))
    indexed_seconds = time.monotonic() - started
    report: dict[str, Any] = {"documents": len(corpus), "queries": len(queries), "index_seconds": indexed_seconds}
    kinds = sorted({q["kind"] for q in queries})
    embedder.embed(["warm up"])  # the first call pays one-time costs; keep them out of the latencies
    for mode in MODES:
        per_kind: dict[str, list[tuple[float, float]]] = {kind: [] for kind in ["all", *kinds]}
        started = time.monotonic()
        for q in queries:
            ranked = [h.path for h in index.search(q["query"], top_k=10, mode=mode)]
            relevant = set(q["relevant"])
            scores = (recall_at(ranked, relevant, 5), ndcg_at(ranked, relevant, 10))
            per_kind["all"].append(scores)
            per_kind[q["kind"]].append(scores)
        report[mode] = {
            kind: {
                "recall@5": sum(s[0] for s in values) / len(values),
                "ndcg@10": sum(s[1] for s in values) / len(values),
                "n": len(values),
            }
            for kind, values in per_kind.items()
        }
        report[mode]["ms_per_query"] = 1000 * (time.monotonic() - started) / len(queries)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="rag.embedding_model to evaluate")
    parser.add_argument("--database-url", help="a Postgres with pgvector (default: embedded, under /tmp)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    corpus, queries = load_set()

    class Rag:
        embedding_model = args.model

    embedder = make_embedder(Rag()) if not args.model.startswith("all-MiniLM") else LocalEmbedder(args.model)
    db = fresh_database(args.database_url)
    try:
        report = evaluate(db, embedder, corpus, queries)
    finally:
        db.close()
    report["model"] = embedder.model_name
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['documents']} documents, {report['queries']} queries, model {report['model']}")
    kinds = [k for k in report["vector"] if k != "ms_per_query"]
    header = f"{'mode':<8}" + "".join(f"{k + ' R@5':>17}{k + ' nDCG@10':>19}" for k in kinds) + f"{'ms/query':>10}"
    print(header)
    for mode in MODES:
        row = report[mode]
        cells = "".join(f"{row[k]['recall@5']:>17.3f}{row[k]['ndcg@10']:>19.3f}" for k in kinds)
        print(f"{mode:<8}{cells}{row['ms_per_query']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
