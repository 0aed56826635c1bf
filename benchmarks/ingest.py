"""Spark ingest on local pysail: a full run vs the incremental cases (nothing changed, all touched, one edit).

    python -m benchmarks.ingest [--copies 1] [--reruns 5]

``--copies N`` lays the fixture documents out N times (``copy-000/``, ``copy-001/``...) to see how the
runs scale with the number of files. Startup of the Spark server is reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import Stats, machine, timed
from context_assistant.ingest import IngestResult, run_ingest, start_local_spark, stop_local_spark

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "docs"


def lay_out(root: Path, copies: int) -> int:
    shutil.rmtree(root, ignore_errors=True)
    for i in range(copies):
        shutil.copytree(FIXTURES, root / f"copy-{i:03d}" if copies > 1 else root)
    return sum(1 for p in root.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--reruns", type=int, default=5)
    args = parser.parse_args()

    base = Path(os.environ.get("BENCH_DIR", tempfile.gettempdir())) / "context-assistant-bench-ingest"
    source, data = base / "docs", base / "data"
    files = lay_out(source, args.copies)
    shutil.rmtree(data, ignore_errors=True)

    started = time.perf_counter()
    spark = start_local_spark(data)
    startup = time.perf_counter() - started

    results: dict[str, IngestResult] = {}

    def run(label: str) -> None:
        results[label] = run_ingest(spark, str(source), str(data / "chunks"), str(data / "documents"))

    full = timed(lambda: run("full"))
    unchanged = Stats.of([timed(lambda: run("unchanged")) for _ in range(args.reruns)])
    for path in source.rglob("*"):
        if path.is_file():
            stat = path.stat()
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = timed(lambda: run("touched"))
    guide = next(source.rglob("deployment-guide.md"))
    guide.write_text(guide.read_text().replace("Monday to Thursday", "Monday to Wednesday"))
    one_edit = timed(lambda: run("one_edit"))
    stop_local_spark()

    print(f"# {machine()}; {files} files")
    print(
        json.dumps(
            {
                "files": files,
                "spark_startup_s": round(startup, 3),
                "full_run_s": round(full, 3),
                "no_change_rerun": unchanged.fmt("s", 1.0),
                "all_touched_rerun_s": round(touched, 3),
                "one_file_edited_s": round(one_edit, 3),
                "results": {label: r.to_json() | {"parsed": r.parsed} for label, r in results.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
