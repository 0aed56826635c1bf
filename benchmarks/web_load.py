"""Web app load: requests/s and latency of ``POST /api/chat`` under concurrent clients, then nothing lost.

    python -m benchmarks.web_load [--clients 32] [--requests 640] [--embedder minilm|hashing|none]

The app runs in its own process (uvicorn, one worker, as on Databricks Apps) on a scratch embedded Postgres,
with the offline model and an index of the fixture documents (parsed and chunked in-process, no Spark).
``--embedder`` picks what embeds questions: the real local all-MiniLM-L6-v2 (default, what a local install
uses), the test suite's hashing stand-in (isolates the web, memory and search cost), or none (RAG and
recall off). Each client is its own user (X-Forwarded-Email, the app trusting the header as behind the Apps
proxy) continuing one session, so history and recall grow as in real use. Afterwards every request's user
message and reply are looked up in the database by the ids the API returned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from benchmarks.common import Stats, machine, scratch_config, wait_for_trace_exporters
from context_assistant.core import Config
from context_assistant.storage import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "When does the on-call rotation hand over?",
    "How long is data retained?",
    "Who has to review a production deploy?",
    "What is in the architecture overview?",
    "How do I request a new laptop?",
    "What does the glossary say about SLAs?",
    "Which days can we deploy to production?",
    "What happens when a page is not acknowledged?",
]


def fixture_chunks(config: Config) -> list[Any]:
    """The fixture documents parsed and chunked as the pipeline would (unparseable ones are skipped)."""
    from context_assistant.ingest import chunk_document, parse_document
    from context_assistant.retrieval import SourceChunk

    chunks = []
    for path in sorted((REPO / "fixtures" / "docs").iterdir()):
        try:
            doc = parse_document(path.name, path.read_bytes())
        except Exception:
            continue
        for c in chunk_document(doc, config.rag.chunk_size, config.rag.chunk_overlap):
            chunks.append(
                SourceChunk(c.chunk_id, c.path, c.chunk_index, c.text, c.heading, c.page, c.content_hash)
            )
    return chunks


def serve(config: Config, port: int, embedder: str, ready: Any) -> None:
    """The app process: build the index, then serve until terminated."""
    import uvicorn

    from context_assistant.refresh import refresh_index
    from context_assistant.retrieval import InMemoryChunkSource
    from context_assistant.services import Services
    from context_assistant.web import create_app

    services = Services(config, env={}, serving=True)
    if embedder == "hashing":
        sys.path.insert(0, str(REPO / "tests"))
        from retrieval_support import HashingEmbedder

        services.embedder = HashingEmbedder()
    if config.rag.enabled:
        services.chunk_source = InMemoryChunkSource(fixture_chunks(config))
        result = refresh_index(services)
        print(f"server: indexed {result.embedded} chunks with {result.model}", flush=True)
    app = create_app(services, warm_up=False)
    services.assistant.turn("warm-up", "warm up")  # load the model and open the pool before timing

    @app.get("/bench/stats", include_in_schema=False)
    def stats() -> dict[str, Any]:
        """The benchmark's own probe: pool checkouts and model calls so far (read before and after the load)."""
        pool = services.db.pool.get_stats()
        batcher = getattr(services.embedder, "inner", None)
        return {
            "checkouts": pool.get("requests_num", 0),
            "queued": pool.get("requests_queued", 0),
            "wait_ms": pool.get("requests_wait_ms", 0),
            "model_calls": getattr(batcher, "calls", None),
            "model_texts": getattr(batcher, "texts", None),
            "model_seconds": getattr(batcher, "model_seconds", None),
            "threads": threading.active_count(),
            "cpu_seconds": time.process_time(),  # the app process, all its threads
        }

    ready.put(True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def client_loop(
    client: httpx.AsyncClient, number: int, count: int, latencies: list[float], records: list[dict[str, Any]]
) -> int:
    user = f"load{number}@example.com"
    errors = 0
    session_id = None
    for i in range(count):
        body: dict[str, Any] = {"message": f"{QUESTIONS[(i + number) % len(QUESTIONS)]} (#{i})"}
        if session_id:
            body["session_id"] = session_id
        started = time.perf_counter()
        response = await client.post("/api/chat", json=body, headers={"X-Forwarded-Email": user})
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            errors += 1
            print(f"{user}: HTTP {response.status_code}: {response.text[:200]}", file=sys.stderr)
            continue
        data = response.json()
        session_id = data["session_id"]
        records.append({"user": user, "message": body["message"], **data})
    return errors


async def run_load(url: str, clients: int, requests: int) -> dict[str, Any]:
    per_client = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    latencies: list[float] = []
    records: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        before = (await client.get("/bench/stats")).json()
        started = time.perf_counter()
        errors = await asyncio.gather(
            *(client_loop(client, i, n, latencies, records) for i, n in enumerate(per_client))
        )
        seconds = time.perf_counter() - started
        after = (await client.get("/bench/stats")).json()
    done = max(1, len(records))
    server = {
        "checkouts_per_request": round((after["checkouts"] - before["checkouts"]) / done, 2),
        "checkouts_queued_pct": round(
            100 * (after["queued"] - before["queued"]) / max(1, after["checkouts"] - before["checkouts"]), 1
        ),
        "pool_wait_ms_per_request": round((after["wait_ms"] - before["wait_ms"]) / done, 1),
    }
    if after["model_calls"] is not None:
        calls = after["model_calls"] - before["model_calls"]
        server["batched_model_calls"] = calls
        server["texts_per_batched_call"] = round((after["model_texts"] - before["model_texts"]) / max(1, calls), 2)
        server["ms_per_batched_call"] = round(
            1000 * (after["model_seconds"] - before["model_seconds"]) / max(1, calls)
        )
    server["server_threads"] = after["threads"]
    server["app_cpu_ms_per_request"] = round(1000 * (after["cpu_seconds"] - before["cpu_seconds"]) / done, 1)
    return {
        "seconds": seconds,
        "latencies": latencies,
        "records": records,
        "errors": sum(errors),
        "server": server,
    }


def verify(config: Config, records: list[dict[str, Any]]) -> dict[str, int]:
    """Every returned turn is in the database: the user message and the reply, with the right content."""
    from context_assistant.storage import ConversationStore, open_database

    missing = wrong = 0
    with open_database(config) as db:
        store = ConversationStore(db)
        for record in records:
            try:
                question = store.get_message(record["user"], record["user_message_id"])
                reply = store.get_message(record["user"], record["message_id"])
            except LookupError:
                missing += 1
                continue
            if (
                question.content != record["message"]
                or reply.content != record["reply"]
                or reply.metadata.get("in_reply_to") != question.id
                or question.session_id != record["session_id"]
            ):
                wrong += 1
        with db.connection() as conn:
            stored = conn.execute(
                "SELECT count(*) FROM conversations WHERE user_id LIKE 'load%%@example.com'"
            ).fetchone()[0]
            failed = conn.execute(
                """SELECT count(*) FROM conversations WHERE user_id LIKE 'load%%@example.com'
                   AND metadata @> '{"status": "failed"}'"""
            ).fetchone()[0]
    return {"missing": missing, "wrong": wrong, "stored_messages": stored, "failed_messages": failed}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--embedder", choices=("minilm", "hashing", "none"), default="minilm")
    parser.add_argument("--pool", type=int, default=10, help="database.pool_max_size of the app")
    parser.add_argument(
        "--tracing", choices=("on", "off"), default="on", help="MLflow tracing of every turn (local sqlite store)"
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=None,
        help="rag.embedding_batch_wait_ms of the app (default: the config's; 0: no micro-batching)",
    )
    args = parser.parse_args()

    rag = args.embedder != "none"
    with scratch_config(
        "bench_web",
        **{
            "model.provider": "offline",
            "rag.enabled": rag,
            "memory.recall": rag,
            "web.forwarded_identity": "trust",
            "database.pool_max_size": args.pool,
            "tracing.enabled": args.tracing == "on",
            **({} if args.batch_wait_ms is None else {"rag.embedding_batch_wait_ms": args.batch_wait_ms}),
        },
    ) as config:
        admin = EmbeddedPostgres(config.data_path).start("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier("bench_web")))
        port = free_port()
        context = multiprocessing.get_context("spawn")
        ready = context.Queue()
        server = context.Process(target=serve, args=(config, port, args.embedder, ready), daemon=True)
        server.start()
        try:
            ready.get(timeout=600)
            result = asyncio.run(run_load(f"http://127.0.0.1:{port}", args.clients, args.requests))
        finally:
            server.terminate()
            server.join(15)
            if server.is_alive():  # still draining requests stuck on a dead database: no need to wait
                server.kill()
                server.join(5)
        checked = verify(config, result["records"])
        # The run's traces, written after the load: not in its timings.
        drained = wait_for_trace_exporters(config.data_path)

    latency = Stats.of(result["latencies"])
    ok = len(result["records"])
    summary = {
        "machine": machine(),
        "clients": args.clients,
        "requests": args.requests,
        "embedder": args.embedder,
        "tracing": args.tracing,
        "batch_wait_ms": config.rag.embedding_batch_wait_ms,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "ok": ok,
        "errors": result["errors"],
        "seconds": round(result["seconds"], 2),
        "requests_per_second": round(ok / result["seconds"], 2),
        "latency_ms": {
            "median": round(latency.median * 1000, 1),
            "p95": round(latency.p95 * 1000, 1),
            "max": round(latency.maximum * 1000, 1),
        },
        **checked,
        **result["server"],
        "trace_export_drain_seconds": round(drained, 1),
    }
    print(machine())
    print(
        f"POST /api/chat, offline model, embedder {args.embedder}, tracing {args.tracing}, "
        f"micro-batching {config.rag.embedding_batch_wait_ms:g} ms, {args.clients} concurrent clients: "
        f"{ok}/{args.requests} ok in {result['seconds']:.1f} s = {summary['requests_per_second']} req/s; "
        f"latency {latency.fmt()}"
    )
    print(f"server: {json.dumps(result['server'])}; load average after {summary['load_average']}")
    print(
        f"database: {checked['stored_messages']} messages stored for {ok} turns, {checked['missing']} missing, "
        f"{checked['wrong']} wrong, {checked['failed_messages']} failed"
    )
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / f"web_load_{args.embedder}.json").write_text(json.dumps(summary, indent=2))
    lost = checked["missing"] or checked["wrong"] or checked["stored_messages"] != 2 * ok or result["errors"]
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    main()
