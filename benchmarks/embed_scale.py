"""Embedding at scale on local Spark (pysail): chunks/s with 1 vs 2 partitions, and endpoint calls per run.

    python -m benchmarks.embed_scale [--chunks 2000] [--latency-ms 50] [--skip-local]

Three parts, each on a synthetic chunk table (documents of 20 chunks) written as a real Delta table:

1. ``local``: the bundled MiniLM embedding inside the Spark workers (``embed_on_spark`` with a local model),
   1 vs 2 partitions, against the single-process driver path (``LocalEmbedder.embed``) on the same texts. On a
   2-core machine the model already uses both cores, so this shows the overhead of the Spark path more than a
   speed-up; the speed-up is for an I/O-bound endpoint (part 2) and for clusters.
2. ``endpoint``: a loopback HTTP server speaking the serving endpoint's REST shape, answering each request
   after ``--latency-ms`` (a stand-in for the network and the model), called by the project's real endpoint
   client from the Spark workers: chunks/s with 1 vs 2 partitions x 1 vs 4 requests in flight.
3. ``calls``: endpoint requests and inputs for a first run, a no-change re-run (0) and a run after 1% of the
   chunks changed (~1%), then for a new model (everything again).

Prints JSON (machine, load and every figure) to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.common import machine
from context_assistant.ingest import (
    content_hash,
    make_chunk_id,
    resolve_table,
    start_local_spark,
    stop_local_spark,
)
from context_assistant.retrieval import LocalEmbedder, ServingEndpointEmbedder, embed_on_spark, worker_model

DIM = 16


class Endpoint:
    """A loopback serving endpoint: ``POST /serving-endpoints/NAME/invocations`` -> ``{"data": [...]}``."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.requests = 0
        self.inputs = 0
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                texts = body["input"]
                with endpoint.lock:
                    endpoint.requests += 1
                    endpoint.inputs += len(texts)
                time.sleep(endpoint.latency)
                data = [
                    {"index": i, "embedding": [1.0 + b / 255 for b in hashlib.sha256(t.encode()).digest()[:DIM]]}
                    for i, t in enumerate(texts)
                ]
                payload = json.dumps({"object": "list", "data": data}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def client(self) -> Any:
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.core import Config

        return WorkspaceClient(config=Config(host=self.url, token="dapi-bench", auth_type="pat"))

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.requests, self.inputs


def texts_for(n: int, edit: set[int] = frozenset()) -> list[tuple[str, int, str]]:  # type: ignore[assignment]
    words = [
        "spark",
        "delta",
        "table",
        "chunk",
        "vector",
        "search",
        "embedding",
        "endpoint",
        "catalog",
        "volume",
        "job",
        "index",
    ]
    out = []
    for i in range(n):
        doc, pos = divmod(i, 20)
        text = f"Document {doc} passage {pos}: " + " ".join(words[(i * 7 + k) % len(words)] for k in range(40))
        if i in edit:
            text += " (edited)"
        out.append((f"doc{doc:05d}.md", pos, text))
    return out


def write_chunks(location: Path, rows: list[tuple[str, int, str]]) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    table = pa.Table.from_pylist(
        [
            {
                "chunk_id": make_chunk_id(path, pos),
                "path": path,
                "chunk_index": pos,
                "text": text,
                "heading": "",
                "page": None,
                "content_hash": content_hash(text),
                "doc_hash": "d",
                "modified_at": now,
                "ingested_at": now,
            }
            for path, pos, text in rows
        ],
        schema=pa.schema(
            [
                ("chunk_id", pa.string()),
                ("path", pa.string()),
                ("chunk_index", pa.int32()),
                ("text", pa.string()),
                ("heading", pa.string()),
                ("page", pa.int32()),
                ("content_hash", pa.string()),
                ("doc_hash", pa.string()),
                ("modified_at", pa.timestamp("us", tz="UTC")),
                ("ingested_at", pa.timestamp("us", tz="UTC")),
            ]
        ),
    )
    write_deltalake(str(location), table, mode="overwrite")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--skip-local", action="store_true", help="skip the MiniLM part (the slow one)")
    args = parser.parse_args()

    base = Path(os.environ.get("BENCH_DIR", tempfile.gettempdir())) / "context-assistant-bench-embed"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    load_before = os.getloadavg()
    spark = start_local_spark(base / "spark")
    chunks = base / "chunks"
    rows = texts_for(args.chunks)
    write_chunks(chunks, rows)
    out: dict[str, Any] = {"chunks": args.chunks}

    def run(spec: Any, table: str, partitions: int) -> dict[str, Any]:
        started = time.perf_counter()
        report = embed_on_spark(
            spark,
            resolve_table(str(chunks)),
            resolve_table(str(base / table)),
            spec,
            partitions=partitions,
            progress=say,
        )
        seconds = time.perf_counter() - started
        return {
            "embedded": report.embedded,
            "seconds": round(seconds, 2),
            "chunks_per_s": round(report.embedded / seconds, 1),
        }

    if not args.skip_local:
        minilm = LocalEmbedder("all-MiniLM-L6-v2")
        spec = worker_model(minilm, "all-MiniLM-L6-v2", None, 1)
        write_chunks(base / "warm", rows[:4])
        embed_on_spark(
            spark, resolve_table(str(base / "warm")), resolve_table(str(base / "warm-emb")), spec
        )  # load the model there
        local: dict[str, Any] = {}
        for partitions in (1, 2):
            say(f"local MiniLM on Spark, {partitions} partition(s)")
            local[f"spark_{partitions}_partitions"] = run(spec, f"emb-local-{partitions}", partitions)
        minilm.embed(["warm up"])
        started = time.perf_counter()
        minilm.embed([text for _, _, text in rows])
        seconds = time.perf_counter() - started
        local["driver_single_process"] = {
            "seconds": round(seconds, 2),
            "chunks_per_s": round(len(rows) / seconds, 1),
        }
        out["local_minilm"] = local

    endpoint = Endpoint(args.latency_ms / 1000)
    client = endpoint.client()
    remote: dict[str, Any] = {"latency_ms": args.latency_ms}
    for partitions in (1, 2):
        for concurrency in (1, 4):
            say(f"endpoint, {partitions} partition(s) x {concurrency} in flight")
            spec = worker_model(ServingEndpointEmbedder("bench", client), "endpoint:bench", client, concurrency)
            remote[f"{partitions}_partitions_x_{concurrency}_in_flight"] = run(
                spec, f"emb-ep-{partitions}-{concurrency}", partitions
            )
    out["endpoint"] = remote

    spec = worker_model(ServingEndpointEmbedder("bench", client), "endpoint:bench", client, 4)
    calls: dict[str, Any] = {}

    def counted(label: str, model_spec: Any = spec) -> None:
        before = endpoint.counts()
        report = embed_on_spark(
            spark, resolve_table(str(chunks)), resolve_table(str(base / "emb-calls")), model_spec, partitions=2
        )
        after = endpoint.counts()
        calls[label] = {
            "requests": after[0] - before[0],
            "inputs": after[1] - before[1],
            "embedded": report.embedded,
        }

    counted("first_run")
    counted("no_change")
    changed = set(range(0, args.chunks, 100))  # 1%
    write_chunks(chunks, texts_for(args.chunks, changed))
    counted(f"one_percent_changed ({len(changed)} chunks)")
    other = worker_model(ServingEndpointEmbedder("bench-v2", client), "endpoint:bench-v2", client, 4)
    counted("new_model", other)
    out["endpoint_calls"] = calls

    stop_local_spark()
    out["machine"] = machine()
    out["load_before"] = [round(x, 2) for x in load_before]
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
