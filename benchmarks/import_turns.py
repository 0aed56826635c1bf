"""The first turns after a big ``memory import`` (issue 13, item 8: the first within 2 s of the tenth).

    python -m benchmarks --only import            # 10,000 messages (what the README reports)
    python -m benchmarks.import_turns --messages 2000

The import is ``context-assistant memory import FILE`` (the CLI's ``main``, in this process), then
the imported user asks ten questions in a new session through :attr:`Services.assistant` — the offline chat
model, the local all-MiniLM-L6-v2 behind the production cache, recall on, tracing on, retrieval off (it is the
same with or without an import). Recall must not embed the imported messages inside a turn: the first turn
hands them to the background indexer and finds them by keyword meanwhile, so turns 1..10 run while the
indexer embeds the import on the same 2 cores (which is what a user sees). Before the import, one turn of
another user loads the model and MLflow, so turn 1 measures the import's effect, not the process's start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.corpus import SYSTEMS, sentence
from benchmarks.memory import BENCH_USER, START
from benchmarks.scratch import ScratchServer
from benchmarks.turn import question

TURNS = 10


@dataclass(frozen=True)
class ImportTurns:
    messages: int
    import_seconds: float
    warm_up_seconds: float  # the process's first turn (another user, before the import)
    turn_seconds: list[float]  # the imported user's turns 1..TURNS, right after the import
    recalled_first: int  # turns recalled by the first turn (keyword search over the pending import)
    pending_after: int  # imported messages still waiting for the background indexer after the last turn

    @property
    def first_minus_tenth(self) -> float:
        return self.turn_seconds[0] - self.turn_seconds[-1]


def export_lines(messages: int, per_session: int = 50) -> str:
    """``memory export`` lines of one user: sessions of ``per_session`` alternating messages whose words the
    benchmark's questions share (so the first turn's keyword recall has pending turns to find)."""
    rng = random.Random(10_000)
    lines = []
    for i in range(messages):
        session = i // per_session
        text = f"On the {SYSTEMS[session % len(SYSTEMS)]}: {sentence(rng)}"
        role = "user" if i % 2 == 0 else "assistant"
        when = (START + timedelta(seconds=i)).isoformat()
        record = {"session_id": f"imported-{session}", "user_id": BENCH_USER, "role": role, "content": text}
        lines.append(json.dumps({**record, "timestamp": when, "metadata": {}}))
    return "\n".join(lines) + "\n"


def first_turns_after_import(
    server: ScratchServer, dbname: str, messages: int, workdir: Path, turns: int = TURNS
) -> ImportTurns:
    import psycopg

    from context_assistant.cli import main as cli
    from context_assistant.core import load_config, save_config
    from context_assistant.services import Services

    workdir.mkdir(parents=True, exist_ok=True)
    where = psycopg.conninfo.conninfo_to_dict(server.fresh(dbname))
    config = load_config(
        None,
        env={},
        overrides={
            "data_dir": str(workdir),
            "database.host": str(where.get("host") or "localhost"),
            "database.port": int(where.get("port") or 5432),
            "database.user": str(where.get("user") or "postgres"),
            "database.name": dbname,
            "database.sslmode": "disable",
            "model.provider": "offline",
            "rag.enabled": False,
            "memory.recall": True,
            "tracing.enabled": True,
        },
    )
    config_file = save_config(config, workdir / "config.yaml")
    # A password makes it a plain Postgres target (the scratch server trusts local connections).
    password = {"PGPASSWORD": str(where.get("password") or "unused-trust-auth")}
    services = Services(config, env={**os.environ, **password})
    try:
        assistant = services.assistant
        rng = random.Random(13)
        started = time.perf_counter()
        assistant.turn("warm-up", question(rng))
        warm_up = time.perf_counter() - started
        services.recall.wait_for_indexing(timeout=120)

        export = workdir / "import.jsonl"
        export.write_text(export_lines(messages), encoding="utf-8")
        started = time.perf_counter()
        previous = os.environ.get("PGPASSWORD")
        os.environ.update(password)  # the command as a user runs it, in this process
        try:
            with contextlib.redirect_stdout(sys.stderr):  # its one-line summary, not the table
                code = cli(["memory", "import", str(export), "--config", str(config_file)])
        finally:
            if previous is None:
                os.environ.pop("PGPASSWORD", None)
            else:
                os.environ["PGPASSWORD"] = previous
        if code != 0:
            raise RuntimeError(f"memory import exited with {code}")
        imported = time.perf_counter() - started

        times: list[float] = []
        recalled_first = 0
        session: str | None = None
        for i in range(turns):
            started = time.perf_counter()
            result = assistant.turn(BENCH_USER, question(rng), session)
            times.append(time.perf_counter() - started)
            session = result.session_id
            if i == 0:
                recalled_first = len(result.recalled)
        pending = services.recall.pending_count(BENCH_USER)
        return ImportTurns(messages, imported, warm_up, times, recalled_first, pending)
    finally:
        services.close()  # stops the background indexer between batches, then closes the pool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--database-url", help="admin URL of a Postgres with pgvector (default: embedded)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tempfile

    server = ScratchServer(args.database_url)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ca-bench-import-") as work:
        result: Any = first_turns_after_import(server, "bench_ours_import", args.messages, Path(work))
    server.drop("bench_ours_import")
    print(f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(f"import of {result.messages:,} messages: {result.import_seconds:.1f} s")
    print(f"process's first turn (warm-up, another user): {result.warm_up_seconds:.2f} s")
    for i, seconds in enumerate(result.turn_seconds, 1):
        print(f"turn {i} after the import: {seconds:.2f} s")
    print(f"first - tenth: {result.first_minus_tenth:.2f} s (target: within 2 s)")
    print(
        f"recalled by the first turn: {result.recalled_first}; still pending after the last: {result.pending_after}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
