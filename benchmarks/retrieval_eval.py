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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from context_assistant.retrieval import (
    InMemoryChunkSource,
    LabelledDocument,
    LabelledQuery,
    LocalEmbedder,
    PgVectorChunkIndex,
    corpus_chunks,
    load_corpus,
    load_queries,
    make_embedder,
)
from context_assistant.retrieval import evaluate as score_modes
from context_assistant.storage import Database, EmbeddedPostgres, Target

EVAL_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "eval"
MODES = ("vector", "keyword", "hybrid")


def load_set(folder: Path = EVAL_DIR) -> tuple[list[LabelledDocument], list[LabelledQuery]]:
    return load_corpus(folder / "corpus.jsonl"), load_queries(folder / "queries.jsonl")


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


def evaluate(db: Database, embedder: Any, corpus: list[LabelledDocument], queries: list[LabelledQuery]) -> dict:
    from context_assistant.core import load_config

    index = PgVectorChunkIndex.from_config(db, embedder, load_config(None, env={}).rag)  # a user's defaults
    started = time.monotonic()
    index.refresh(InMemoryChunkSource(corpus_chunks(corpus)))
    indexed_seconds = time.monotonic() - started
    report: dict[str, Any] = {"documents": len(corpus), "queries": len(queries), "index_seconds": indexed_seconds}
    embedder.embed(["warm up"])  # the first call pays one-time costs; keep them out of the latencies
    report.update(score_modes(index, queries, modes=MODES))
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
