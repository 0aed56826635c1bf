"""How long the short commands take, end to end, as a user runs them: wall time of the installed
``context-assistant`` console script in a fresh process (imports, model, database, output, exit).

    python -m benchmarks.startup [--runs 5] [--config FILE]

Run it in a project where ``context-assistant ingest`` has run (``make run``): it searches, recalls and asks
one question of the real index, as the user ``startup-bench`` (its sessions are deleted afterwards). Each
command is measured three ways:

* ``warm``: the shared embedding service is running (the usual case after the first command);
* ``service start``: no service yet, so the command starts it and waits for the model (the first command of a
  session, or after ``rag.embedding_service_idle_seconds``);
* ``in-process``: the service switched off (``CONTEXT_ASSISTANT__RAG__EMBEDDING_SERVICE_IDLE_SECONDS=0``):
  the command loads torch and the model itself, as every command did before the service existed.

``sessions list`` (no model at all) is the floor; ``chat --message`` runs twice, traced (the default: the command
hands its spans to an exporter process and exits; that process imports MLflow and writes the trace afterwards)
and with ``tracing.enabled`` false, to show what tracing costs a one-shot turn. ``--only chat`` measures just the
commands whose name contains ``chat``. Medians (and min-max) of ``--runs`` runs; the load average
is printed before and after, because on a shared 2-core machine it moves every figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import machine
from context_assistant.core import load_config
from context_assistant.retrieval import EmbeddingServiceClient

USER = "startup-bench"
QUESTION = "who approves a production deploy?"
OFF = {"CONTEXT_ASSISTANT__RAG__EMBEDDING_SERVICE_IDLE_SECONDS": "0"}


def command() -> list[str]:
    script = shutil.which("context-assistant") or str(Path(sys.executable).parent / "context-assistant")
    return [script]


def run(argv: list[str], config: str | None, extra_env: dict[str, str] | None = None) -> float:
    env = {**os.environ, **(extra_env or {})}
    full = [*command(), *argv, *(["--config", config] if config else [])]
    started = time.perf_counter()
    done = subprocess.run(full, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(full)} failed ({done.returncode}):\n{done.stderr}")
    return elapsed


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--config", help="config file (default: the project's, as the CLI finds it)")
    parser.add_argument("--only", default="", help="measure only the commands whose name contains this text")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    service = EmbeddingServiceClient(
        config.rag.embedding_model, config.data_path, idle_seconds=config.rag.embedding_service_idle_seconds
    )

    load_before = os.getloadavg()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    chat = ["chat", "--user", USER, "--message", QUESTION, "--no-stream"]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "sessions list": (["sessions", "list", "--user", USER], {}),
        "search": (["search", QUESTION], {}),
        "recall": (["recall", QUESTION, "--user", USER], {}),
        "chat --message (one-shot)": (chat, {}),
        # The same turn untraced: what tracing (now: handing the spans to the exporter process) costs it.
        "chat --message, tracing.enabled false": (chat, {"CONTEXT_ASSISTANT__TRACING__ENABLED": "false"}),
    }
    rows: list[tuple[str, str, str, str]] = []
    for name, (cmd, env) in commands.items():
        if args.only not in name:
            continue
        if name == "sessions list":
            floor = [run(cmd, args.config, env) for _ in range(args.runs)]
            rows.append((name, summary(floor), "-", "-"))
            continue
        run(cmd, args.config, env)  # the service is up (or started now) before the warm runs
        warm = [run(cmd, args.config, env) for _ in range(args.runs)]
        cold_service = []
        for _ in range(max(1, args.runs // 2)):
            service.stop()
            time.sleep(0.5)
            cold_service.append(run(cmd, args.config, env))
        in_process = [run(cmd, args.config, {**env, **OFF}) for _ in range(max(1, args.runs // 2))]
        rows.append((name, summary(warm), summary(cold_service), summary(in_process)))
        print(f"{name}: done", file=sys.stderr)
    run(["sessions", "list", "--user", USER, "--json"], args.config)
    cleanup = subprocess.run(
        [
            *command(),
            "sessions",
            "list",
            "--user",
            USER,
            "--json",
            *(["--config", args.config] if args.config else []),
        ],
        capture_output=True,
        text=True,
    )
    import json

    for session in json.loads(cleanup.stdout)["sessions"]:
        run(["sessions", "delete", session["id"], "--user", USER], args.config)

    load_after = os.getloadavg()
    print(f"Run {when}: python -m benchmarks.startup --runs {args.runs}")
    print(f"Machine: {machine()}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print()
    print("| command | warm service | first command (starts the service) | service off (model in-process) |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
