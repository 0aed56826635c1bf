"""A big text file through the parse + chunk side of ingest: peak memory and chunks per second.

    python -m benchmarks.big_file [--mb 50] [--before-mb 5] [--units tokens|chars] [--spark | --embed]

Each measurement runs in a fresh Python process (what the ingest's parse child is), reading the file and
calling :func:`context_assistant.ingest.worker.parse_and_chunk` with the production settings (256 tokens of
all-MiniLM-L6-v2, overlap 32). Peak RSS is that process's ``ru_maxrss``. The peer is this project's previous
way, the whole file normalised and chunked as one piece (``chunking.WINDOW_CHARS`` and
``documents.NORMALIZE_BLOCK_CHARS`` set beyond the file size), run at
``--before-mb`` because at 50 MB it needs several GB (it runs under a 6 GiB address-space limit; a run over
it is reported as such).

``--spark`` measures the whole ingest instead (no embedding): a folder holding the big file and a small one,
ingested by :func:`context_assistant.ingest.run_ingest` on a local Spark server of its own (listing, parse
child, staging table, chunk and document writes), then run again unchanged, then again after a paragraph is
added at the top of the big file (every chunk after it changes: the edit's peak is reported on its own).

``--embed`` runs ``context-assistant ingest`` itself, embedding included (local MiniLM, ``rag.embed_on:
auto``, so Spark embeds past 5,000 chunks), at both sizes: the peak RSS of the command's process tree shows
whether embedding memory grows with the file. Peak RSS there is the sum over
the process tree (client, Spark server with its Python workers, parse child), sampled four times a second.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine

WORDS = [
    "the",
    "deploy",
    "pipeline",
    "runs",
    "nightly",
    "and",
    "the",
    "on-call",
    "engineer",
    "checks",
    "the",
    "dashboards",
    "before",
    "the",
    "release",
    "window",
    "opens",
    "while",
    "retention",
    "policies",
    "keep",
    "audit",
    "logs",
    "for",
    "seven",
    "years",
    "in",
    "cold",
    "storage",
]

CHILD = r"""
import json, resource, sys, time
from context_assistant.ingest import chunking, documents
from context_assistant.ingest.worker import parse_and_chunk
from context_assistant.retrieval.tokenizer import counter_for_model
path, units, whole = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if whole:
    chunking.WINDOW_CHARS = documents.NORMALIZE_BLOCK_CHARS = 1 << 40
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, resource.RLIM_INFINITY))
counter = counter_for_model("all-MiniLM-L6-v2") if units == "tokens" else None
size, overlap = (256, 32) if counter else (1000, 100)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = open(path, "rb").read()
started = time.perf_counter()
try:
    status, error, chunks = parse_and_chunk("big.txt", data, size, overlap, 0, counter)
except MemoryError:
    status, error, chunks = "failed", "over the 6 GiB address-space limit", []
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"status": status, "error": error, "chunks": len(chunks), "seconds": seconds,
                  "peak_rss_mib": peak / 1024, "before_read_mib": base / 1024}))
"""

SPARK_CHILD = r"""
import json, os, sys, threading, time
from context_assistant.ingest import run_ingest, start_local_spark, stop_local_spark
from context_assistant.retrieval.tokenizer import counter_for_model
from benchmarks.big_file import process_tree_kib as tree_rss
source, data, units = sys.argv[1], sys.argv[2], sys.argv[3]
counter = counter_for_model("all-MiniLM-L6-v2") if units == "tokens" else None
size, overlap = (256, 32) if counter else (1000, 100)

spark = start_local_spark(data)
base_total, _ = tree_rss(os.getpid())
peak = {"total": 0, "one": 0}
stop = threading.Event()
def sample():
    while not stop.is_set():
        total, one = tree_rss(os.getpid())
        peak["total"], peak["one"] = max(peak["total"], total), max(peak["one"], one)
        stop.wait(0.25)
threading.Thread(target=sample, daemon=True).start()
started = time.perf_counter()
result = run_ingest(spark, source, os.path.join(data, "chunks"), os.path.join(data, "documents"),
                    chunk_size=size, chunk_overlap=overlap, counter=counter)
seconds = time.perf_counter() - started
again = time.perf_counter()
rerun = run_ingest(spark, source, os.path.join(data, "chunks"), os.path.join(data, "documents"),
                   chunk_size=size, chunk_overlap=overlap, counter=counter)
rerun_s = time.perf_counter() - again
first_peak = dict(peak)
peak["total"] = peak["one"] = 0
big = max((os.path.join(source, n) for n in os.listdir(source)), key=os.path.getsize)
with open(big, "rb") as f:
    body = f.read()
with open(big + ".new", "wb") as f:  # a new first paragraph: every chunk boundary after it moves
    f.write(b"A new first paragraph, added by an edit at the top of the file.\n\n" + body)
del body
os.replace(big + ".new", big)
edited_at = time.perf_counter()
edit = run_ingest(spark, source, os.path.join(data, "chunks"), os.path.join(data, "documents"),
                  chunk_size=size, chunk_overlap=overlap, counter=counter)
edit_s = time.perf_counter() - edited_at
stop.set()
stop_local_spark()
print(json.dumps({"chunks": result.chunks.written, "seconds": seconds, "peak_tree_mib": first_peak["total"] / 1024,
                  "peak_one_process_mib": first_peak["one"] / 1024, "idle_tree_mib": base_total / 1024,
                  "rerun_written": rerun.chunks.written, "rerun_s": rerun_s, "edit_written": edit.chunks.written,
                  "edit_s": edit_s, "edit_peak_tree_mib": peak["total"] / 1024}))
"""


def measure_spark(path: Path, units: str) -> dict[str, object]:
    """The whole ingest of a folder holding ``path``: listing, parse child, staging table, chunk MERGE (no
    embedding), in a fresh process with its own local Spark server; RSS of that process tree sampled 4×/s."""
    with tempfile.TemporaryDirectory(prefix="ca-bench-big-spark-", dir=path.parent) as work:
        source, data = Path(work) / "docs", Path(work) / "data"
        source.mkdir()
        os.link(path, source / path.name)
        (source / "small.md").write_text("# Small\n\nA small document beside the big one.\n")
        done = subprocess.run(
            [sys.executable, "-c", SPARK_CHILD, str(source), str(data), units],
            cwd=Path(__file__).resolve().parent.parent,  # the child imports benchmarks.big_file
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    if done.returncode != 0:
        return {"status": "crashed", "error": done.stderr.strip().splitlines()[-3:] or [str(done.returncode)]}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def process_tree_kib(root: int) -> tuple[int, int]:
    """RSS (KiB) of ``root`` and every descendant, from /proc, and of the largest of them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    total, largest, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            continue
        total, largest = total + rss, max(largest, rss)
    return total, largest


def measure_embedding(path: Path) -> dict[str, object]:
    """``context-assistant ingest`` of a folder holding ``path``, the way a user runs it (its own data folder,
    the local MiniLM model, ``rag.embed_on: auto``), with the RSS of the command's process tree (the CLI, its
    local Spark server, the parse child) sampled 4×/s. The embedded Postgres is a daemon, not counted."""
    with tempfile.TemporaryDirectory(prefix="ca-bench-big-embed-", dir=path.parent) as work:
        source, config = Path(work) / "docs", Path(work) / "config.yaml"
        source.mkdir()
        os.link(path, source / path.name)
        config.write_text(
            f"data_dir: {Path(work) / 'data'}\nrag:\n  source: {source}\nmemory:\n  recall: false\n"
            "tracing:\n  enabled: false\n"
        )
        command = [sys.executable, "-m", "context_assistant", "--config", str(config)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        peak, started = 0, time.monotonic()
        run = subprocess.Popen(
            [*command, "ingest", "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        while run.poll() is None:
            peak = max(peak, process_tree_kib(run.pid)[0])
            time.sleep(0.25)
        seconds = time.monotonic() - started
        out = run.stdout.read() if run.stdout else b""
        subprocess.run([*command, "db", "stop"], capture_output=True, env=env, check=False)
    if run.returncode != 0:
        return {"status": "crashed", "error": [f"exit {run.returncode}"]}
    result = json.loads(out)
    return {
        "chunks": result["sync"]["embedded"],
        "seconds": seconds,
        "peak_tree_mib": peak / 1024,
        "embed_on": (result["sync"].get("embedding") or {}).get("embed_on", "driver"),
    }


def write_text(path: Path, mb: float, seed: int = 7) -> int:
    """Plain prose, paragraphs of 3-8 sentences: one section of ``mb`` MiB, as a big .txt export is."""
    rng = random.Random(seed)
    target = int(mb * 1024 * 1024)
    written = 0
    with path.open("w") as out:
        while written < target:
            sentences = (
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "."
                for _ in range(rng.randint(3, 8))
            )
            paragraph = " ".join(sentences) + "\n\n"
            out.write(paragraph)
            written += len(paragraph)
    return path.stat().st_size


def measure(path: Path, units: str, whole: bool) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), units, "1" if whole else "0"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if done.returncode != 0:
        return {"status": "crashed", "error": done.stderr.strip().splitlines()[-1:] or [str(done.returncode)]}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def text_file(work: str, mb: float) -> Path:
    """The generated ``mb`` MB text file in ``work``, written on first use (the modes share it)."""
    path = Path(work) / f"big-{mb:g}.txt"
    if not path.exists():
        write_text(path, mb)
    return path


def failed(label: str, mb: float, result: dict[str, object]) -> bool:
    """Print a measurement that gave no chunk count (its status and error); whether it did."""
    if "chunks" in result and result.get("status", "ok") == "ok":
        return False
    print(f"{label:26s} {mb:6g} MB: {result.get('status')}: {result.get('error')}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--before-mb", type=float, default=5.0)
    parser.add_argument("--units", choices=("tokens", "chars"), default="tokens")
    parser.add_argument(
        "--spark",
        action="store_true",
        help="instead, the whole ingest (Spark + Delta, no embedding) at both sizes",
    )
    parser.add_argument(
        "--embed",
        action="store_true",
        help="instead, `context-assistant ingest` with embedding (local MiniLM) at both sizes: peak RSS, chunks/s",
    )
    args = parser.parse_args()
    print(f"machine: {machine()}; load: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="ca-bench-big-") as work:
        rows = []
        for label, mb, whole in (
            ("windowed (this version)", args.before_mb, False),
            ("whole section (before)", args.before_mb, True),
            ("windowed (this version)", args.mb, False),
        ):
            if args.spark or args.embed:
                break
            result = measure(text_file(work, mb), args.units, whole)
            rows.append((label, mb, result))
            if not failed(label, mb, result):
                rate = float(result["chunks"]) / float(result["seconds"])  # type: ignore[arg-type]
                print(
                    f"{label:26s} {mb:6g} MB: {result['chunks']:>7} chunks in {result['seconds']:.1f}s "
                    f"({rate:.0f} chunks/s), peak RSS {result['peak_rss_mib']:.0f} MiB "
                    f"(interpreter + tokenizer before reading: {result['before_read_mib']:.0f} MiB)"
                )
        for mb in sorted({args.before_mb, args.mb}) if args.embed else ():
            result = measure_embedding(text_file(work, mb))
            if failed("ingest with embedding", mb, result):
                continue
            rate = float(result["chunks"]) / float(result["seconds"])  # type: ignore[arg-type]
            print(
                f"{'ingest with embedding':26s} {mb:6g} MB: {result['chunks']:>7} chunks embedded "
                f"(on {result['embed_on']}) in {result['seconds']:.0f}s ({rate:.1f} chunks/s), peak RSS of the "
                f"command's process tree {result['peak_tree_mib']:.0f} MiB; load {os.getloadavg()[0]:.1f}"
            )
        for mb in sorted({args.before_mb, args.mb}) if args.spark else ():
            result = measure_spark(text_file(work, mb), args.units)
            if failed("whole ingest (Spark)", mb, result):
                continue
            rate = float(result["chunks"]) / float(result["seconds"])  # type: ignore[arg-type]
            print(
                f"{'whole ingest (Spark)':26s} {mb:6g} MB: {result['chunks']:>7} chunks in {result['seconds']:.1f}s "
                f"({rate:.0f} chunks/s), peak RSS of the process tree {result['peak_tree_mib']:.0f} MiB "
                f"(largest process {result['peak_one_process_mib']:.0f} MiB; idle server and client "
                f"{result['idle_tree_mib']:.0f} MiB); no-change re-run {result['rerun_s']:.1f}s, "
                f"{result['rerun_written']} chunks written; an edit at the top: {result['edit_written']} chunks "
                f"rewritten in {result['edit_s']:.1f}s, peak RSS {result['edit_peak_tree_mib']:.0f} MiB; "
                f"load {os.getloadavg()[0]:.1f}"
            )


if __name__ == "__main__":
    main()
