"""Answer quality on public development splits, measured through the product's own code paths.

* **SciFact** (document retrieval, nDCG@10): each abstract is written as a Markdown file (``# title`` then
  the text) into a work folder, ingested with the real ingest (local Spark via pysail into the Delta chunk
  table, then the sync that embeds into pgvector), and every claim is searched with the retriever the CLI's
  ``search --batch`` uses, in each mode. A document's rank is the rank of its best chunk.
* **LoCoMo** (conversation memory, evidence recall@10): each conversation is one user's memory, each LoCoMo
  session one session, each turn a message ``"speaker: text"`` stamped with its session's date; they go in
  through ``memory import`` (``ConversationStore.import_jsonl``) and questions are answered by
  ``TurnRecall.recall`` (what ``recall --batch`` runs), scoped to that user. Score: the share of a
  question's evidence turns among the top 10 recalled turns, over categories 1 (multi-hop), 2 (temporal)
  and 4 (single-hop).
* **Parsing fidelity** (token recall): documents generated with known content (``benchmarks/fidelity.py``:
  PDF by reportlab, DOCX by python-docx with merged cells, headers, footers, a footnote and a text box, HTML
  with row/column spans and a long page, Markdown) are ingested the same way and the chunk table's text is
  compared with the known content.

The data sets are not part of the project (their licences allow evaluation only): pass the folder that
holds ``scifact-dev/`` and ``locomo-dev/``::

    python -m benchmarks.quality ../shared/eval                 # everything (~10 min on 2 cores)
    python -m benchmarks.quality ../shared/eval --only locomo   # one part
    python -m benchmarks.quality ../shared/eval --queries 100   # a quick look at the first 100 claims
    python -m benchmarks.quality ../shared/eval --only scifact --reranker sentences   # the hybrid+rerank line
    python -m benchmarks.quality ../shared/eval --only scifact --fusion minmax        # another rag.fusion

Settings come from the project's ``config.yaml`` (the shipped defaults) and these flags (``--fusion``,
``--recall-fusion``, ``--min-similarity``, ``--reranker``) only: environment variables (``CONTEXT_ASSISTANT__...``,
``$CONTEXT_ASSISTANT_CONFIG``) are not read, so a run measures what it says. The report names the settings it
ran with.

State (the SciFact files, Delta tables, the scratch databases ``quality_scifact``/``quality_locomo`` on the
benchmarks' embedded Postgres) lives under ``$BENCH_DIR`` (default /tmp); a re-run reuses the ingested and
embedded SciFact corpus (a no-change ingest), ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from context_assistant.core import FUSIONS, Config, load_config
from context_assistant.retrieval import distinct_paths, ndcg_at_k, recall_at_k
from context_assistant.services import Services

SCIFACT_MODES = ("keyword", "vector", "hybrid", "hybrid+rerank")
LOCOMO_MODES = ("keyword", "vector", "hybrid")
LOCOMO_CATEGORIES = (1, 2, 4)
SEARCH_DEPTH = 40  # chunks per search; enough for 10 distinct abstracts
REFERENCES = {
    "scifact": {
        "keyword": "BM25 (bm25s, this split) 0.694",
        "vector": "all-MiniLM-L6-v2 dense 0.645 (test split, published)",
        "hybrid": "target 0.74; RRF of the two ~0.72 (test split, published)",
        "hybrid+rerank": "the first stage's hybrid line",
    },
    "locomo": {
        "keyword": "BM25 per conversation (bm25s, this split) 0.519",
        "vector": "MiniLM dense: below BM25",
        "hybrid": "plain RRF: little above BM25; target 0.70",
    },
}


def work_dir() -> Path:
    return Path(os.environ.get("BENCH_DIR", tempfile.gettempdir())) / "context-assistant-quality"


SETTINGS: dict[str, Any] = {}  # config keys every part runs with (main's --min-similarity)


def bench_config(name: str, **overrides: Any) -> Config:
    """A config on the benchmarks' embedded Postgres (one server under $BENCH_DIR), database ``name``."""
    base = Path(os.environ.get("BENCH_DIR", tempfile.gettempdir())) / "context-assistant-bench"
    base.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {"data_dir": str(base), "database.name": name, "tracing.enabled": False}
    values.update(SETTINGS)
    values.update(overrides)
    return load_config(None, env={}, overrides=values)


def drop_database(config: Config) -> None:
    from context_assistant.storage import EmbeddedPostgres

    admin = EmbeddedPostgres(config.data_path).start("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{config.database.name}" WITH (FORCE)')


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


# ---------------------------------------------------------------------------------------------------------
# SciFact


def write_abstracts(corpus: Iterable[dict[str, Any]], folder: Path) -> int:
    """One Markdown file per abstract; unchanged files are left alone so a re-run ingests nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for doc in corpus:
        body = f"# {' '.join(str(doc.get('title') or '').split())}\n\n{doc['text'].strip()}\n"
        path = folder / f"{doc['_id']}.md"
        if not path.exists() or path.read_text(encoding="utf-8") != body:
            path.write_text(body, encoding="utf-8")
        count += 1
    return count


def run_scifact(eval_dir: Path, *, limit: int | None, fresh: bool, say: Any, reranker: str = "") -> dict[str, Any]:
    from context_assistant.refresh import refresh_documents

    data = eval_dir / "scifact-dev"
    corpus = read_jsonl(data / "corpus.jsonl")
    queries = read_jsonl(data / "queries.jsonl")
    relevant: dict[str, set[str]] = {}
    for line in (data / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        query_id, doc_id, score = line.split("\t")[:3]
        if int(score) > 0:
            relevant.setdefault(query_id, set()).add(doc_id)
    queries = [q for q in queries if q["_id"] in relevant][: limit or None]
    root = work_dir() / "scifact"
    config = bench_config(
        "quality_scifact",
        **{
            "rag.source": str(root / "docs"),
            "rag.chunk_table": str(root / "chunks"),
            "rag.documents_table": str(root / "documents"),
            "memory.recall": False,
            "rag.reranker": reranker,
        },
    )
    if fresh:
        import shutil

        drop_database(config)
        for table in ("chunks", "documents", "chunks__ingest_staging"):
            shutil.rmtree(root / table, ignore_errors=True)
    say(f"SciFact: {write_abstracts(corpus, root / 'docs')} abstracts in {root / 'docs'}")
    report: dict[str, Any] = {"documents": len(corpus), "queries": len(queries)}
    with Services(config) as services:
        started = time.monotonic()
        say("SciFact: ingesting and embedding (a first run: ~10-20 min on 2 cores; a re-run: seconds)")
        result = refresh_documents(services, progress=lambda message: say(f"  {message}"))
        report["ingest"] = {
            "seconds": round(time.monotonic() - started, 1),
            "chunks_written": result.ingest.chunks.written if result.ingest else None,
            "embedded": result.sync.embedded if result.sync else None,
        }
        report["chunks"] = services.chunk_index.status()["chunks"]
        say(f"SciFact: ingest + sync {report['ingest']}; {report['chunks']} chunks indexed")
        retriever = services.retriever
        for mode in SCIFACT_MODES:
            search_mode, rerank = mode.removesuffix("+rerank"), mode.endswith("+rerank")
            if rerank and getattr(retriever, "reranker", None) is None:
                report[mode] = {"skipped": "no reranker configured (rag.reranker)"}
                continue
            started = time.monotonic()
            scores, recalls = [], []
            for q in queries:
                hits = _search(retriever, q["text"], search_mode, rerank)
                ranked = [p.removesuffix(".md") for p in distinct_paths(hits)]
                scores.append(ndcg_at_k(ranked, relevant[q["_id"]], 10))
                recalls.append(recall_at_k(ranked, relevant[q["_id"]], 10))
            report[mode] = {
                "ndcg@10": round(sum(scores) / len(scores), 4),
                "recall@10": round(sum(recalls) / len(recalls), 4),
                "ms_per_query": round(1000 * (time.monotonic() - started) / len(queries), 1),
            }
            say(f"SciFact {mode}: nDCG@10 {report[mode]['ndcg@10']:.3f}")
    return report


def _search(retriever: Any, query: str, mode: str, rerank: bool) -> list[Any]:
    if hasattr(retriever, "reranker"):  # the reranking wrapper: choose with or without its second stage
        return retriever.search(query, top_k=SEARCH_DEPTH, mode=mode, rerank=rerank)
    return retriever.search(query, top_k=SEARCH_DEPTH, mode=mode)


# ---------------------------------------------------------------------------------------------------------
# LoCoMo


# Questions about nothing the LoCoMo speakers talk about, asked of every conversation: recall should bring
# nothing (memory.recall_min_similarity) unless a word matches. Written for this benchmark, not drawn from LoCoMo.
UNRELATED_QUESTIONS = (
    "What is the capital of Mongolia?",
    "How do I invert a matrix in numpy?",
    "zebra quantum astrophysics",
    "What is the boiling point of nitrogen?",
    "Explain the Krebs cycle",
    "How many bytes are in a kilobyte?",
    "Who wrote the Critique of Pure Reason?",
    "What does a Delta table MERGE statement do?",
    "How do I configure a Kubernetes ingress?",
    "What is the derivative of sin(x)?",
    "Translate good morning into Finnish",
    "What is the GDP of Brazil?",
    "How does TCP congestion control work?",
    "What is the half-life of carbon-14?",
    "Summarise the plot of Hamlet",
    "What is ef_search in an HNSW index?",
    "Which planet has the most moons?",
    "How do I reset my router password?",
    "What is the tax rate on capital gains in Germany?",
    "How do transformers use attention?",
)


def session_time(session_date: str) -> datetime:
    """LoCoMo's "1:56 pm on 8 May, 2023" as an aware datetime (UTC)."""
    return datetime.strptime(session_date.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=timezone.utc)


def locomo_messages(turns: Sequence[dict[str, Any]]) -> tuple[list[str], dict[tuple[str, datetime], str]]:
    """Import lines (JSONL) for ``memory import`` and a map (session, timestamp) -> dia_id."""
    first_speaker: dict[str, str] = {}
    lines: list[str] = []
    where: dict[tuple[str, datetime], str] = {}
    for turn in turns:
        conv = turn["conv_id"]
        first_speaker.setdefault(conv, turn["speaker"])
        session_id = f"{conv}-session-{turn['session']}"
        stamp = session_time(turn["session_date"]) + timedelta(seconds=30 * int(turn["turn_index"]))
        lines.append(
            json.dumps(
                {
                    "session_id": session_id,
                    "user_id": conv,
                    "role": "user" if turn["speaker"] == first_speaker[conv] else "assistant",
                    "content": f"{turn['speaker']}: {turn['text']}",
                    "timestamp": stamp.isoformat(),
                    "metadata": {"speaker": turn["speaker"]},
                }
            )
        )
        where[(session_id, stamp)] = turn["dia_id"]
    return lines, where


def run_locomo(eval_dir: Path, *, fresh: bool, say: Any, modes: Sequence[str] = LOCOMO_MODES) -> dict[str, Any]:
    data = eval_dir / "locomo-dev"
    turns = read_jsonl(data / "locomo-dev_turns.jsonl")
    questions = [
        q
        for q in read_jsonl(data / "locomo-dev_questions.jsonl")
        if q["category"] in LOCOMO_CATEGORIES and q.get("evidence")
    ]
    config = bench_config("quality_locomo", **{"rag.enabled": False})
    if fresh:
        drop_database(config)  # otherwise the import skips what is there and recall indexes only what is new
    lines, where = locomo_messages(turns)
    report: dict[str, Any] = {"turns": len(turns), "questions": len(questions)}
    with Services(config) as services:
        started = time.monotonic()
        imported = services.store.import_jsonl(lines)
        embedded = services.recall.index_pending()
        report["import"] = {
            **imported.to_json(),
            "embedded": embedded,
            "seconds": round(time.monotonic() - started, 1),
        }
        say(f"LoCoMo: {report['import']}")
        with services.db.connection() as conn:
            dia_of = {
                message_id: where[(session_id, stamp)]
                for message_id, session_id, stamp in conn.execute(
                    "SELECT id, session_id, timestamp FROM conversations"
                )
            }
        for mode in modes:
            started = time.monotonic()
            per_category: dict[int, list[float]] = {c: [] for c in LOCOMO_CATEGORIES}
            for q in questions:
                hits = services.recall.recall(q["conv_id"], q["question"], top_k=10, mode=mode)
                found = {dia_of[h.message_id] for h in hits}
                evidence = set(q["evidence"])
                per_category[q["category"]].append(len(found & evidence) / len(evidence))
            every = [s for values in per_category.values() for s in values]
            report[mode] = {
                "recall@10": round(sum(every) / len(every), 4),
                **{f"category {c}": round(sum(v) / len(v), 4) for c, v in per_category.items() if v},
                "ms_per_query": round(1000 * (time.monotonic() - started) / len(questions), 1),
            }
            conversations = sorted({q["conv_id"] for q in questions})
            asked = [(c, u) for c in conversations for u in UNRELATED_QUESTIONS]
            silent = sum(1 for c, u in asked if not services.recall.recall(c, u, top_k=3, mode=mode))
            report[mode]["unrelated_silent"] = round(silent / len(asked), 3)
            say(
                f"LoCoMo {mode}: recall@10 {report[mode]['recall@10']:.3f}; "
                f"unrelated questions that recall nothing {report[mode]['unrelated_silent']:.2f}"
            )
    return report


# ---------------------------------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    print(f"\nRun {report['date']} on {report['machine']}")
    print("Settings: " + ", ".join(f"{k} {v!r}" for k, v in report.get("settings", {}).items()))
    if "scifact" in report:
        s = report["scifact"]
        print(f"\nSciFact dev ({s['queries']} claims, {s['documents']} abstracts, {s['chunks']} chunks): nDCG@10")
        for mode in SCIFACT_MODES:
            value = s[mode].get("ndcg@10")
            cell = f"{value:.3f}" if value is not None else s[mode].get("skipped", "")
            extra = f"(recall@10 {s[mode]['recall@10']:.3f}) " if value is not None else ""
            print(f"  {mode:<15} {cell:<8} {extra}reference: {REFERENCES['scifact'][mode]}")
    if "locomo" in report:
        s = report["locomo"]
        print(
            f"\nLoCoMo dev ({s['questions']} questions, categories 1/2/4; {s['turns']} turns): evidence recall@10"
        )
        for mode in [m for m in LOCOMO_MODES if m in s]:
            row = s[mode]
            cats = ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("category"))
            print(
                f"  {mode:<15} {row['recall@10']:.3f}    ({cats}; unrelated questions recalling nothing "
                f"{row['unrelated_silent']:.2f}) reference: {REFERENCES['locomo'][mode]}"
            )
    if "fidelity" in report:
        f = report["fidelity"]
        print(
            f"\nParsing fidelity (generated documents, token recall of the chunk table): {f['token_recall']:.3f}"
        )
        for name, value in f["documents"].items():
            print(f"  {name:<28} {value:.3f}")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dir", type=Path, help="folder with scifact-dev/ and locomo-dev/")
    parser.add_argument("--only", default="scifact,locomo,fidelity", help="comma-separated parts")
    parser.add_argument("--queries", type=int, help="only the first N SciFact claims (quick looks)")
    parser.add_argument("--fresh", action="store_true", help="re-ingest, re-import and re-embed from scratch")
    parser.add_argument("--locomo-modes", help="comma-separated recall modes (default: all)")
    parser.add_argument("--reranker", default="", help="rag.reranker for the hybrid+rerank line, e.g. sentences")
    parser.add_argument(
        "--min-similarity",
        help="rag.min_similarity and memory.recall_min_similarity (default: the config's, auto); off to compare",
    )
    parser.add_argument("--fusion", choices=FUSIONS, help="rag.fusion for SciFact (default: the config's, convex)")
    parser.add_argument(
        "--recall-fusion", choices=FUSIONS, help="memory.recall_fusion for LoCoMo (default: the config's, minmax)"
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if args.fusion:
        SETTINGS["rag.fusion"] = args.fusion
    if args.recall_fusion:
        SETTINGS["memory.recall_fusion"] = args.recall_fusion
    if args.min_similarity:
        SETTINGS.update(
            {"rag.min_similarity": args.min_similarity, "memory.recall_min_similarity": args.min_similarity}
        )
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"scifact", "locomo", "fidelity"}
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    settings = bench_config("quality_settings")
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_before": os.getloadavg(),
        "settings": {
            "rag.fusion": settings.rag.fusion,
            "rag.hybrid_weight": settings.rag.hybrid_weight,
            "rag.min_similarity": settings.rag.min_similarity,
            "rag.reranker": args.reranker,
            "memory.recall_fusion": settings.memory.recall_fusion,
            "memory.recall_min_similarity": settings.memory.recall_min_similarity,
        },
    }
    if "fidelity" in parts:
        from benchmarks.fidelity import run_fidelity

        report["fidelity"] = run_fidelity(work_dir() / "fidelity", say=say)
    if "scifact" in parts:
        report["scifact"] = run_scifact(
            args.eval_dir, limit=args.queries, fresh=args.fresh, say=say, reranker=args.reranker
        )
    if "locomo" in parts:
        modes = tuple(m for m in (args.locomo_modes or ",".join(LOCOMO_MODES)).split(",") if m)
        report["locomo"] = run_locomo(args.eval_dir, fresh=args.fresh, say=say, modes=modes)
    report["load_after"] = os.getloadavg()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
