"""A big text file through the parse + chunk side of ingest: peak memory and chunks per second.

    python -m benchmarks.big_file [--mb 50] [--before-mb 5] [--units tokens|chars]

Each measurement runs in a fresh Python process (what the ingest's parse child is), reading the file and
calling :func:`context_assistant.ingest.worker.parse_and_chunk` with the production settings (256 tokens of
all-MiniLM-L6-v2, overlap 32). Peak RSS is that process's ``ru_maxrss``. The peer is this project's previous
way, the whole file normalised and chunked as one piece (``chunking.WINDOW_CHARS`` and
``documents.NORMALIZE_BLOCK_CHARS`` set beyond the file size), run at
``--before-mb`` because at 50 MB it needs several GB (it runs under a 6 GiB address-space limit; a run over
it is reported as such). The Spark/Delta side (staging write, MERGE) is not included: see ``benchmarks.ingest``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--before-mb", type=float, default=5.0)
    parser.add_argument("--units", choices=("tokens", "chars"), default="tokens")
    args = parser.parse_args()
    print(f"machine: {machine()}; load: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="ca-bench-big-") as work:
        rows = []
        for label, mb, whole in (
            ("windowed (this version)", args.before_mb, False),
            ("whole section (before)", args.before_mb, True),
            ("windowed (this version)", args.mb, False),
        ):
            path = Path(work) / f"big-{mb:g}.txt"
            if not path.exists():
                write_text(path, mb)
            result = measure(path, args.units, whole)
            rows.append((label, mb, result))
            if result.get("status") == "ok":
                rate = float(result["chunks"]) / float(result["seconds"])  # type: ignore[arg-type]
                print(
                    f"{label:26s} {mb:6g} MB: {result['chunks']:>7} chunks in {result['seconds']:.1f}s "
                    f"({rate:.0f} chunks/s), peak RSS {result['peak_rss_mib']:.0f} MiB "
                    f"(interpreter + tokenizer before reading: {result['before_read_mib']:.0f} MiB)"
                )
            else:
                print(f"{label:26s} {mb:6g} MB: {result.get('status')}: {result.get('error')}")


if __name__ == "__main__":
    main()
