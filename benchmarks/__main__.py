"""Benchmarks against peers, in one run: this project vs LangChain's Postgres stack, on the same server and data.

    python -m benchmarks                # full size (what the README reports; 16 min on 2 idle cores)
    python -m benchmarks --quick        # a few minutes: every line, small sizes
    python -m benchmarks --ours-only    # skip the LangChain side (also automatic when it is not installed)

Run it from the benchmark virtualenv (``.venv-bench``, see README "Performance") to include the peers. Sections
(``--only`` picks some): ``memory`` (append throughput; last 20 messages among 1M), ``indexing`` (full index of
~5,000 documents, no-change re-run, 1% edited, 1% deleted; end states checked), ``retrieval`` (top-10 latency
and recall@10 at 100k chunks, synthetic vectors), ``turn`` (assistant turn overhead without the model; ours
only), ``import`` (the first and the tenth turn after a ``memory import`` of 10,000 messages; ours only,
via ``benchmarks/import_turns.py``) and ``web`` (POST /api/chat under 32 clients, via ``benchmarks/web_load.py``; ours only).

The table (Markdown, ratios ours / theirs) goes to stdout; progress to stderr; every raw value to
``benchmarks/results/peers-<size>.json`` (or ``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("memory", "indexing", "retrieval", "turn", "import", "web")


@dataclass(frozen=True)
class Sizes:
    name: str
    runs: int  # repetitions of every cheap line (each a median over its own samples)
    index_runs: int  # repetitions of the indexing steps (each embeds the whole corpus, per side)
    appends: int  # messages appended one per call
    batched: int  # messages appended in calls of `batch`
    batch: int
    history_rows: int
    history_sessions: int
    fetches: int  # history fetches per run
    documents: int
    spark_runs: int  # repetitions of the Spark ingest path (0: skip it)
    ann_chunks: int
    ann_queries: int  # vector queries per run: enough that each run's p95 rests on dozens of samples
    keyword_queries: int  # keyword / hybrid queries per query set
    turn_chunks: int
    turn_messages: int
    turns: int  # turns per run
    turn_warm_up: int
    web_clients: int
    web_requests: int
    import_messages: int  # messages imported before the first turns (issue 13: 10,000)


SIZES = {
    "full": Sizes(
        "full", runs=3, index_runs=2, appends=4_000, batched=50_000, batch=100, history_rows=1_000_000,
        history_sessions=20_000, fetches=300, documents=5_000, spark_runs=1, ann_chunks=100_000, ann_queries=1_000, keyword_queries=200,
        turn_chunks=10_000, turn_messages=100_000, turns=20, turn_warm_up=3, web_clients=32, web_requests=640, import_messages=10_000,
    ),
    "quick": Sizes(
        "quick", runs=3, index_runs=2, appends=300, batched=3_000, batch=100, history_rows=50_000,
        history_sessions=1_000, fetches=100, documents=100, spark_runs=2, ann_chunks=5_000, ann_queries=200, keyword_queries=50,
        turn_chunks=500, turn_messages=5_000, turns=5, turn_warm_up=3, web_clients=8, web_requests=64, import_messages=2_000,
    ),
    # For the CI smoke test: proves every code path runs, measures nothing worth reading.
    "smoke": Sizes(
        "smoke", runs=1, index_runs=1, appends=20, batched=100, batch=10, history_rows=2_000,
        history_sessions=40, fetches=10, documents=8, spark_runs=0, ann_chunks=300, ann_queries=10, keyword_queries=10,
        turn_chunks=40, turn_messages=500, turns=2, turn_warm_up=1, web_clients=2, web_requests=4, import_messages=100,
    ),
}  # fmt: skip


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median_of(values: list[float]) -> float:
    return statistics.median(values)


class Suite:
    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        from benchmarks import peers
        from benchmarks.report import Report
        from benchmarks.scratch import ScratchServer

        self.args = args
        self.sizes = sizes
        self.peers_missing = "--ours-only given" if args.ours_only else peers.missing()
        self.with_peers = not self.peers_missing
        self.server = ScratchServer(args.database_url)
        self.report = Report(command=" ".join(["python -m benchmarks", *args.argv]), size=sizes.name)
        self.report.server = self.server.describe()
        self.report.peers = self.peers_missing
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ca-bench-"))
        self._embedder: Any = None
        self.failed: list[str] = []

    @property
    def embedder(self) -> Any:
        """all-MiniLM-L6-v2, one instance for both sides (same weights, same batch size of 32)."""
        if self._embedder is None:
            from context_assistant.retrieval import LocalEmbedder

            self._embedder = LocalEmbedder("all-MiniLM-L6-v2")
            self._embedder.embed(["warm up"])
        return self._embedder

    def run(self, sections: list[str]) -> int:
        from benchmarks.common import wait_for_trace_exporters
        from benchmarks.scratch import default_data_dir

        for name in sections:
            waited = wait_for_trace_exporters(self.workdir, default_data_dir())  # an earlier section's traces
            if waited >= 1:
                say(f"waited {waited:.0f} s for trace exporters still draining")
            settled = self.server.settle()  # and the server's checkpoint and autovacuum after the last one
            if settled >= 1:
                say(f"waited {settled:.0f} s for the server's checkpoint and autovacuum")
            load = os.getloadavg()[0]
            say(f"== {name} (load average {load:.2f})")
            started = time.perf_counter()
            try:
                getattr(self, f"section_{name}")()
            except Exception as exc:  # one broken section must not hide the others' figures
                traceback.print_exc()
                self.failed.append(name)
                self.report.notes.append(f"section {name} FAILED: {type(exc).__name__}: {exc}")
            say(
                f"== {name} done in {time.perf_counter() - started:.0f} s (load average now {os.getloadavg()[0]:.2f})"
            )
        self.report.finish()
        return 1 if self.failed else 0

    # -- memory -----------------------------------------------------------------------------------------

    def section_memory(self) -> None:
        from benchmarks import memory, peers
        from benchmarks.report import HIGHER, LOWER, Measure

        s, server = self.sizes, self.server
        single = Measure(
            "memory", "append, 1 message per call", "msg/s", HIGHER, [], [] if self.with_peers else None
        )
        batched = Measure(
            "memory",
            f"append, {s.batch} messages per call",
            "msg/s",
            HIGHER,
            [],
            [] if self.with_peers else None,
            note="ours: `ConversationStore.append` for one message (one INSERT … SELECT with scalar parameters) and "
            "`ConversationStore.append_many` for 100 (one INSERT … SELECT FROM json_to_recordset), each autocommitted: one round "
            "trip; theirs: `PostgresChatMessageHistory.add_messages` (executemany, one commit). Both sides in each run: "
            "a few untimed calls, then 10 slices of their calls, alternating side by side (ABBA).",
        )

        for run in range(s.runs):
            say(f"memory append run {run + 1}/{s.runs}")
            for measure, messages, batch in ((single, s.appends, 1), (batched, s.batched, s.batch)):
                # Both sides at once, slice by slice (memory.interleaved_append_rates): a load change between the
                # two sides' turns, not the code, flipped single runs' ratios when each side ran whole in turn.
                trials = [memory.our_appends(server.fresh("bench_ours_append"), messages, batch)]
                if self.with_peers:
                    trials.append(peers.their_appends(server.fresh("bench_lc_append"), messages, batch))
                try:
                    rates = memory.interleaved_append_rates(trials)
                finally:
                    for trial in trials:
                        trial.close()
                measure.ours.append(rates[0])
                if measure.theirs is not None:
                    measure.theirs.append(rates[1])
        self.report.add(single)
        self.report.add(batched)
        server.drop("bench_ours_append")
        server.drop("bench_lc_append")

        say(f"memory: filling {s.history_rows:,} messages over {s.history_sessions:,} sessions per side")
        from benchmarks.scratch import ours_database

        db = ours_database(server.fresh("bench_ours_history"))
        try:
            fill = memory.fill_history(db, s.history_rows, s.history_sessions)
            theirs_url = server.fresh("bench_lc_history") if self.with_peers else None
            theirs_fill = (
                peers.fill_history(theirs_url, s.history_rows, s.history_sessions) if theirs_url else None
            )
            same = None
            if theirs_url:
                probe = 3 % s.history_sessions
                same = memory.last_messages(db, probe) == peers.check_last_messages(theirs_url, probe)
            per_session = s.history_rows // s.history_sessions
            label = f"last 20 messages of a session among {s.history_rows:,}"
            p50 = Measure(
                "memory",
                f"{label}, p50",
                "ms",
                LOWER,
                [],
                [] if theirs_url else None,
                note=f"{s.history_sessions:,} sessions of {per_session} messages. Ours: `recent_messages(max_messages=20)`, "
                "an index scan on (user_id, session_id, timestamp, id) with LIMIT; theirs: `get_messages()`, which "
                f"returns the whole session ({per_session} messages, parsed into message objects; it is the only read "
                "the class has) ordered by id via its index on session_id, then sliced to the last 20. "
                + ("Both return the same 20 messages (checked)." if same else "")
                + ("" if same in (None, True) else "THE TWO SIDES RETURNED DIFFERENT MESSAGES."),
            )
            p95 = Measure("memory", f"{label}, p95", "ms", LOWER, [], [] if theirs_url else None)
            for run in range(s.runs):
                say(f"memory history fetch run {run + 1}/{s.runs}")
                from benchmarks.ann import percentile

                times = memory.fetch_last(db, s.history_sessions, s.fetches, seed=run)
                p50.ours.append(1000 * percentile(times, 50))
                p95.ours.append(1000 * percentile(times, 95))
                if theirs_url:
                    times = peers.fetch_last(theirs_url, s.history_sessions, s.fetches, seed=run)
                    p50.theirs.append(1000 * percentile(times, 50))
                    p95.theirs.append(1000 * percentile(times, 95))
            self.report.add(p50)
            self.report.add(p95)
            self.report.notes.append(
                f"memory: {s.fetches} fetches per run; table filled by SQL in {fill:.0f} s (ours)"
                + (f" / {theirs_fill:.0f} s (theirs)" if theirs_fill is not None else "")
                + "."
            )
        finally:
            db.close()
        server.drop("bench_ours_history")
        server.drop("bench_lc_history")

    # -- indexing ---------------------------------------------------------------------------------------

    def section_indexing(self) -> None:
        from benchmarks import indexing, peers
        from benchmarks.corpus import Corpus
        from benchmarks.report import LOWER, Measure

        s, server = self.sizes, self.server
        say(f"indexing: generating and chunking {s.documents:,} documents")
        corpus = Corpus.generate(s.documents)
        chunks = len(corpus.chunks())
        batch = 256
        ours_runs: list[dict[str, indexing.Step]] = []
        theirs_runs: list[dict[str, Any]] = []
        spark_runs: list[dict[str, indexing.Step]] = []
        for run in range(s.index_runs):
            say(f"indexing run {run + 1}/{s.index_runs}: ours (sync)")
            ours_runs.append(indexing.sync_steps(server, "bench_ours_index", corpus, self.embedder, batch))
            say(f"  ours: { {k: round(v.seconds, 2) for k, v in ours_runs[-1].items()} }")
            if self.with_peers:
                say(f"indexing run {run + 1}/{s.index_runs}: LangChain index()")
                theirs_runs.append(peers.index_steps(server, "bench_lc_index", corpus, self.embedder, batch))
                say(f"  theirs full: {theirs_runs[-1]['full'].seconds:.2f} s")
            if run < s.spark_runs and not self.args.no_spark:
                say(f"indexing run {run + 1}/{s.index_runs}: ours (Spark ingest + sync)")
                spark_runs.append(
                    indexing.ingest_steps(
                        server, "bench_ours_ingest", corpus, self.embedder, batch, self.workdir / "ingest"
                    )
                )
                say(f"  ours ingest: { {k: round(v.seconds, 2) for k, v in spark_runs[-1].items()} }")
        for name in ("bench_ours_index", "bench_lc_index", "bench_ours_ingest"):
            server.drop(name)

        def seconds(runs: list[dict[str, Any]], step: str) -> list[float]:
            return [r[step].seconds for r in runs]

        def ok(runs: list[dict[str, Any]], step: str) -> bool | None:
            return all(r[step].ok for r in runs) if runs else None

        def theirs(mode: str, step: str) -> tuple[list[float] | None, bool | None]:
            if not theirs_runs:
                return None, None
            picked = [r[mode] for r in theirs_runs]
            return seconds(picked, step), ok(picked, step)

        what = f"{s.documents:,} documents, {chunks:,} chunks"
        full_theirs = [r["full"] for r in theirs_runs]
        self.report.add(
            Measure(
                "indexing",
                f"full index ({what})",
                "s",
                LOWER,
                seconds(ours_runs, "full"),
                [r.seconds for r in full_theirs] if theirs_runs else None,
                note="Chunk table → index, embedding with the same all-MiniLM-L6-v2 instance (batches of 256 texts, "
                "model batch 32) on both sides; includes building the HNSW index. Ours: `PgVectorChunkIndex.refresh` "
                "(also maintains the BM25 keyword index); theirs: `index(docs, SQLRecordManager, PGVectorStore, "
                "batch_size=256)` then `apply_vector_index(HNSWIndex())`.",
                ours_ok=ok(ours_runs, "full"),
                theirs_ok=all(r.ok for r in full_theirs) if theirs_runs else None,
            )
        )
        labels = {
            "no_change": "no-change re-run",
            "changed_1pct": "1% of documents edited",
            "deleted_1pct": "1% of documents deleted",
        }
        for step, label in labels.items():
            for mode, mode_label in (("incremental", 'cleanup="incremental"'), ("full_cleanup", 'cleanup="full"')):
                values, theirs_ok = theirs(mode, step)
                note = ""
                if step == "deleted_1pct" and mode == "incremental":
                    note = (
                        'LangChain `index(cleanup="incremental")` only removes old versions of the sources present '
                        "in its input; a source that disappeared is never deleted (its chunks stay searchable), as "
                        'documented. Deleting needs `cleanup="full"` (next line) or `"scoped_full"`.'
                    )
                if step == "no_change" and mode == "full_cleanup":
                    note = (
                        'With `cleanup="full"` every run must be given the whole corpus (it deletes whatever it was '
                        "not given), and it re-hashes all of it; ours compares stored chunk hashes the same way."
                    )
                self.report.add(
                    Measure(
                        "indexing",
                        f"{label} (theirs {mode_label})",
                        "s",
                        LOWER,
                        seconds(ours_runs, step),
                        values,
                        note=note,
                        ours_ok=ok(ours_runs, step),
                        theirs_ok=theirs_ok,
                    )
                )
        if spark_runs:
            for step, label in (("full", "full ingest"), *labels.items()):
                self.report.add(
                    Measure(
                        "indexing",
                        f"`context-assistant ingest` path: {label}",
                        "s",
                        LOWER,
                        seconds(spark_runs, step),
                        None,
                        note=(
                            "Ours only (LangChain has no parsing/chunking pipeline): local Spark (pysail) lists the "
                            "folder, parses and chunks new/changed files into the Delta chunk table, then the same "
                            "sync. Ingest / sync split (median s): "
                            + ", ".join(
                                f"{k}: {median_of([r[k].extra['ingest_seconds'] for r in spark_runs]):.1f} / "
                                f"{median_of([r[k].extra['sync_seconds'] for r in spark_runs]):.1f}"
                                for k in indexing.STEPS
                            )
                        )
                        if step == "full"
                        else "",
                        ours_ok=ok(spark_runs, step),
                    )
                )
        for runs, who in ((ours_runs, "ours"), (spark_runs, "ours (ingest)")):
            for r in runs:
                for step, result in r.items():
                    if not result.ok:
                        self.report.notes.append(f"indexing {who} {step}: END STATE WRONG: {result.detail}")
        for r in theirs_runs:
            for mode in ("incremental", "full_cleanup"):
                for step, result in r[mode].items():
                    if not result.ok and not (mode == "incremental" and step == "deleted_1pct"):
                        self.report.notes.append(
                            f"indexing LangChain {mode} {step}: END STATE WRONG: {result.detail}"
                        )
        if theirs_runs:
            wrong = theirs_runs[0]["incremental"]["deleted_1pct"]
            self.report.notes.append(
                f'indexing, LangChain cleanup="incremental" after deleting 1%: {wrong.detail}.'
            )

    # -- retrieval --------------------------------------------------------------------------------------

    def section_retrieval(self) -> None:
        from benchmarks.ann import Dataset, OursAnn, TheirsAnn, measure
        from benchmarks.report import HIGHER, LOWER, Measure
        from benchmarks.scratch import settle

        s, server = self.sizes, self.server
        say(
            f"retrieval: building {s.ann_chunks:,} synthetic chunks and {s.ann_queries} queries (exact top 10 by numpy)"
        )
        data = Dataset.build(s.ann_chunks, s.ann_queries)
        say("retrieval: loading our index")
        ours = OursAnn(server, "bench_ours_ann", data)
        theirs = None
        try:
            if self.with_peers:
                say("retrieval: loading LangChain's PGVectorStore")
                theirs = TheirsAnn(server, "bench_lc_ann", data)
            say("retrieval: VACUUM ANALYZE on each side's database (what autovacuum does after a load)")
            for side in (ours, theirs):
                if side is not None:
                    settle(side.url)
            for side in (ours, theirs):  # one untimed pass each: both indexes equally warm
                if side is not None:
                    for query in data.queries:
                        side.search(query)
            results: dict[str, list[dict[str, float]]] = {"ours": [], "theirs": []}
            for run in range(s.runs):
                say(f"retrieval run {run + 1}/{s.runs}")
                # Interleaved, alternating who goes first (ABBA), as the memory lines are.
                order = [("ours", ours), ("theirs", theirs)]
                for name, side in order if run % 2 == 0 else order[::-1]:
                    if side is not None:
                        results[name].append(measure(side, data))
            what = f"{s.ann_chunks:,} chunks"
            for key, label, unit, better in (
                ("p50_ms", f"top-10 vector query at {what}, p50", "ms", LOWER),
                ("p95_ms", f"top-10 vector query at {what}, p95", "ms", LOWER),
                ("recall@10", f"recall@10 vs exact search at {what}", "", HIGHER),
            ):
                self.report.add(
                    Measure(
                        "retrieval",
                        label,
                        unit,
                        better,
                        [r[key] for r in results["ours"]],
                        [r[key] for r in results["theirs"]] if theirs is not None else None,
                        note=(
                            f"SYNTHETIC vectors (clustered, fixed seed, 384 dims) for chunks and queries, identical on "
                            f"both sides; {s.ann_queries} queries per run, end to end through each API (query "
                            "'embedding' is a hash lookup). HNSW m=16, ef_construction=64, ef_search=40, cosine. Ours: "
                            '`PgVectorChunkIndex.search(mode="vector")`; theirs: `PGVectorStore.similarity_search` '
                            "(which also returns each row's embedding). Load time (insert + HNSW build): ours "
                            f"{ours.load_seconds:.0f} s (also builds the BM25 index)"
                            + (f", theirs {theirs.load_seconds:.0f} s" if theirs is not None else "")
                            + "."
                        )
                        if key == "p50_ms"
                        else "",
                    )
                )
            self.keyword_lines(ours, what)
        finally:
            ours.close()
            if theirs is not None:
                theirs.close()
            server.drop("bench_ours_ann")
            server.drop("bench_lc_ann")

    def keyword_lines(self, ours: Any, what: str) -> None:
        """Keyword (BM25) and hybrid p95 on our side of the same index, per query set of
        ``benchmarks.retrieval_scale`` (the peer's store has no BM25)."""
        from benchmarks.ann import percentile, timed_queries
        from benchmarks.report import LOWER, Measure
        from benchmarks.retrieval_scale import make_chunks, query_sets

        s = self.sizes
        _, vocab, weights = make_chunks(1)  # the vocabulary and its Zipf weights (seeded as the dataset's)
        sets = query_sets(vocab, weights, s.keyword_queries, s.keyword_queries)
        for mode in ("keyword", "hybrid"):
            for name, queries in sets.items():
                runs = []
                for _ in range(s.runs):
                    latencies, _ = timed_queries(lambda q, m=mode: ours.index.search(q, top_k=10, mode=m), queries)
                    runs.append(1000 * percentile(latencies, 95))
                self.report.add(
                    Measure(
                        "retrieval",
                        f"top-10 {mode} query at {what}, p95, {name} queries",
                        "ms",
                        LOWER,
                        runs,
                        None,
                        note=(
                            "Ours only (`PGVectorStore` has no BM25). The same index, after the VACUUM ANALYZE; "
                            f"{s.keyword_queries} queries per set: zipf (4 words drawn from the corpus's Zipf "
                            "distribution), common (4 of the 100 most frequent words), mixed (2 of those + 2 of rank "
                            "1000+), rare (4 of rank 1000+). Exact BM25 top 10 (impact tiers; checked against a numpy "
                            "BM25 by `python -m benchmarks.retrieval_scale`); hybrid's keyword side asks for 50, query "
                            "vectors are a hash lookup. Targets: keyword p95 ≤ 50 ms, hybrid ≤ 60 ms."
                        )
                        if mode == "keyword" and name == "zipf"
                        else "",
                    )
                )

    # -- turn -------------------------------------------------------------------------------------------

    def section_turn(self) -> None:
        from benchmarks.ann import percentile
        from benchmarks.report import LOWER, Measure
        from benchmarks.turn import TurnBench

        s = self.sizes
        say(f"turn: {s.turn_chunks:,} chunks indexed, {s.turn_messages:,} messages stored")
        bench = TurnBench(
            self.server,
            "bench_ours_turn",
            self.embedder,
            s.turn_chunks,
            s.turn_messages,
            self.workdir / "turn",
            warm_up=s.turn_warm_up,
        )
        try:
            p50, p95, bare, bare_off, cost = [], [], [], [], []
            for run in range(s.runs):
                say(f"turn run {run + 1}/{s.runs}")
                both = bench.run_both(s.turns)
                times = both[True]
                p50.append(1000 * percentile([t for t, _ in times], 50))
                p95.append(1000 * percentile([t for t, _ in times], 95))
                bare.append(1000 * percentile([t - e for t, e in times], 50))
                bare_off.append(1000 * percentile([t - e for t, e in both[False]], 50))
                cost.append(bare[-1] - bare_off[-1])
            what = f"{bench.chunks:,} chunks, {bench.messages:,} messages"
            self.report.add(
                Measure(
                    "turn",
                    f"turn overhead excluding the chat model, median ({what})",
                    "ms",
                    LOWER,
                    p50,
                    None,
                    note=f"`Assistant.turn` with the offline model, time inside the model subtracted; {s.turns} traced "
                    f"turns per run in one session, alternated with {s.turns} untraced ones. Includes storing both "
                    "messages, history + rolling summary, recall over the user's other sessions, hybrid retrieval, "
                    "the prompt, MLflow tracing (recorded in the turn, exported by a separate process into a local "
                    "sqlite store), and the local embedding model "
                    "behind the production cache: the question is embedded once for retrieval and recall. Recall "
                    "embeds the turn's messages on its background thread, waited for between turns (untimed; "
                    "offline replies are not embedded). The stored chunks/messages carry synthetic vectors, so the "
                    "relevance floors (calibrated on real MiniLM vectors) are off: they filter rows the same "
                    "statements return, and would drop every synthetic candidate.",
                )
            )
            self.report.add(
                Measure("turn", f"turn overhead excluding the chat model, p95 ({what})", "ms", LOWER, p95, None)
            )
            self.report.add(
                Measure(
                    "turn",
                    "... of which not in the embedding model, median",
                    "ms",
                    LOWER,
                    bare,
                    None,
                    note="The same turns with the time inside all-MiniLM-L6-v2 also subtracted: Postgres, prompt, "
                    "tracing and Python.",
                )
            )
            self.report.add(Measure("turn", "... the same, tracing off, median", "ms", LOWER, bare_off, None))
            self.report.add(
                Measure(
                    "turn",
                    "cost of tracing on the median turn (on - off, same run)",
                    "ms",
                    LOWER,
                    cost,
                    None,
                    note="Traced and untraced turns alternate in each run; the traced turns are exported by a "
                    "separate process (niced; `core.trace_export`) into the local sqlite store while the run goes "
                    f"on. Traces written / traced turns: {bench.exported()}.",
                )
            )
        finally:
            bench.close()
            self.server.drop("bench_ours_turn")

    # -- import -----------------------------------------------------------------------------------------

    def section_import(self) -> None:
        from benchmarks.import_turns import first_turns_after_import
        from benchmarks.report import LOWER, Measure

        n = self.sizes.import_messages
        first, tenth, gap = [], [], []
        try:
            for run in range(self.sizes.runs):
                say(f"import run {run + 1}/{self.sizes.runs}: {n:,} messages, then 10 turns")
                result = first_turns_after_import(self.server, "bench_ours_import", n, self.workdir / "import")
                first.append(result.turn_seconds[0])
                tenth.append(result.turn_seconds[-1])
                gap.append(result.first_minus_tenth)
                say(
                    f"import: turns {', '.join(f'{t:.2f}' for t in result.turn_seconds)} s; {result.pending_after:,} still pending"
                )
        finally:
            self.server.drop("bench_ours_import")
        note = (
            f"`memory import` of {n:,} messages of one user (`context-assistant memory import FILE`, in-process), then that user's first ten "
            "turns in a new session: offline model, local all-MiniLM-L6-v2, recall and tracing on, retrieval off; "
            "one turn of another user warmed the process first. Recall embeds the import on its background "
            "thread while the turns run (same cores) and finds the pending messages by keyword meanwhile."
        )
        self.report.add(
            Measure("import", f"first turn after importing {n:,} messages", "s", LOWER, first, None, note=note)
        )
        self.report.add(Measure("import", "tenth turn after the import", "s", LOWER, tenth, None))
        self.report.add(Measure("import", "first - tenth (target: within 2 s)", "s", LOWER, gap, None))

    # -- web --------------------------------------------------------------------------------------------

    def section_web(self) -> None:
        from benchmarks.report import HIGHER, LOWER, Measure

        s = self.sizes
        script = REPO / "benchmarks" / "web_load.py"
        if not script.exists():
            raise RuntimeError("benchmarks/web_load.py is missing")
        rates, p95s, lost, drains = [], [], [], []
        for run in range(s.runs):
            say(f"web run {run + 1}/{s.runs}: {s.web_requests} requests, {s.web_clients} clients")
            self.server.settle()  # the previous run's database writes are not this run's to pay for
            result = REPO / "benchmarks" / "results" / "web_load_minilm.json"
            result.unlink(missing_ok=True)
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.web_load",
                    "--clients",
                    str(s.web_clients),
                    "--requests",
                    str(s.web_requests),
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=3600,
            )
            if not result.exists():
                raise RuntimeError(f"web_load gave no result (exit {done.returncode}): {done.stderr[-800:]}")
            data = json.loads(result.read_text())
            drains.append(data["trace_export_drain_seconds"])
            rates.append(data["requests_per_second"])
            p95s.append(data["latency_ms"]["p95"])
            lost.append(
                data["missing"] + data["wrong"] + data["errors"] + (2 * data["ok"] - data["stored_messages"])
            )
        nothing_lost = not any(lost)
        self.report.add(
            Measure(
                "web",
                f"POST /api/chat throughput, {s.web_clients} concurrent clients",
                "req/s",
                HIGHER,
                rates,
                None,
                note=f"`benchmarks/web_load.py`: the app (uvicorn, one worker) with the offline model and all-MiniLM-L6-v2 "
                f"embedding each question (in a child process of the app, one torch thread; concurrent questions "
                f"micro-batched, rag.embedding_batch_wait_ms), tracing on "
                f"(exported by a separate process into a local sqlite store, at low priority: it went on writing the "
                f"run's traces for {min(drains):.0f}–{max(drains):.0f} s after the load, and each run starts once "
                "it has finished, and once the database server has run a CHECKPOINT and no autovacuum is running), "
                f"{s.web_requests} requests per run; afterwards every turn is looked up in the "
                "database: " + ("nothing lost." if nothing_lost else f"LOST OR WRONG: {lost}."),
                ours_ok=nothing_lost,
            )
        )
        self.report.add(Measure("web", "POST /api/chat latency, p95", "ms", LOWER, p95s, None))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_const", dest="size", const="quick", help="small sizes, a few minutes"
    )
    size.add_argument(
        "--smoke", action="store_const", dest="size", const="smoke", help="tiny sizes (CI smoke test)"
    )
    parser.add_argument("--only", help=f"comma-separated sections to run: {', '.join(SECTIONS)}")
    parser.add_argument("--ours-only", action="store_true", help="skip the LangChain side")
    parser.add_argument(
        "--no-spark", action="store_true", help="skip the Spark ingest path of the indexing section"
    )
    parser.add_argument("--runs", type=int, help="override the number of repeated runs")
    parser.add_argument(
        "--database-url", help="admin URL of a Postgres with pgvector (default: embedded, under /tmp)"
    )
    parser.add_argument("--workdir", help="scratch folder for Delta tables and traces (default: a new temp dir)")
    parser.add_argument("--json", help="write every raw value here (default benchmarks/results/peers-SIZE.json)")
    args = parser.parse_args(argv)
    args.size = args.size or "full"
    args.argv = argv
    sections = [s.strip() for s in (args.only or ",".join(SECTIONS)).split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = sections
    return args


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sizes = SIZES[args.size]
    if args.runs:
        sizes = replace(sizes, runs=args.runs, index_runs=args.runs, spark_runs=min(sizes.spark_runs, args.runs))
    suite = Suite(args, sizes)
    if suite.peers_missing:
        say(f"LangChain side skipped: {suite.peers_missing}")
    code = suite.run(args.sections)
    out(suite.report.render())
    path = Path(args.json) if args.json else REPO / "benchmarks" / "results" / f"peers-{sizes.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    suite.report.save(str(path))
    say(f"raw values in {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
