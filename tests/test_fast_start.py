"""Issue 14 item 5: commands that do not embed never import the model's libraries; those that do say what they
load (stderr, never the --json stdout); search/recall/chat share a warm embedding service; a finished command
leaves without the interpreter's slow teardown, after its threads, atexit handlers and output are done.
Timings are measured by ``benchmarks/startup.py``, never asserted here."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from context_assistant.core.config import Config, save_config
from context_assistant.retrieval import EmbeddingServiceClient
from context_assistant.storage.memory import ConversationStore
from retrieval_support import document, minilm, write_chunk_table  # noqa: F401

HEAVY = ("torch", "transformers", "sentence_transformers", "mlflow", "pyspark", "sklearn")
PROBE = (
    "import sys\n"
    "from context_assistant.cli import main\n"
    "code = main(sys.argv[1:])\n"
    f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run_probe(config_file: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, "--config", str(config_file), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def heavy_modules(stderr: str) -> list[str]:
    (line,) = [text for text in stderr.splitlines() if text.startswith("HEAVY=")]
    return [name for name in line.removeprefix("HEAVY=").split(",") if name]


@pytest.fixture
def env(pg_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **pg_env}


def test_commands_that_do_not_embed_import_no_model_library(
    config_file: Path, env: dict[str, str], store: ConversationStore, tmp_path: Path
) -> None:
    session = store.create_session("ana")
    store.append("ana", session.id, "user", "hello")
    for argv in (
        ["sessions", "list", "--user", "ana"],
        ["sessions", "show", session.id[:8], "--user", "ana", "--json"],
        ["memory", "export", "-o", str(tmp_path / "out.jsonl")],
        ["db", "status", "--json"],
    ):
        done = run_probe(config_file, env, *argv)
        assert done.returncode == 0, (argv, done.stderr)
        assert heavy_modules(done.stderr) == [], argv
        assert "Loading" not in done.stderr


@pytest.mark.slow
def test_search_says_what_it_loads_on_stderr_and_keeps_json_stdout_clean(
    config: Config, env: dict[str, str], tmp_path: Path
) -> None:
    write_chunk_table(config.data_path / "chunks", document("a.md", "Deploys need two approvals."))
    config_file = save_config(config, tmp_path / "config.yaml")
    synced = run_probe(config_file, env, "sync", "--json")
    assert synced.returncode == 0, synced.stderr
    assert "Loading the embedding model sentence-transformers/all-MiniLM-L6-v2..." in synced.stderr
    done = run_probe(config_file, env, "search", "who approves deploys?", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["hits"][0]["path"] == "a.md"  # stdout is the JSON document alone
    assert done.stderr.count("Loading the embedding model") == 1


@pytest.mark.slow
def test_two_searches_share_one_warm_service_and_the_second_imports_no_model_library(
    config: Config, env: dict[str, str], tmp_path: Path
) -> None:
    """The CLI end to end, as a user runs it: the first `search` starts the warm service (and says so), the
    second finds it running, loads nothing and never imports torch; both get the same hits."""
    write_chunk_table(config.data_path / "chunks", document("a.md", "Deploys need two approvals."))
    config_file = save_config(config, tmp_path / "config.yaml")
    assert run_probe(config_file, env, "sync", "--json").returncode == 0
    warm = {**env, "CONTEXT_ASSISTANT__RAG__EMBEDDING_SERVICE_IDLE_SECONDS": "120"}
    try:
        first = run_probe(config_file, warm, "search", "who approves deploys?", "--json")
        assert first.returncode == 0, first.stderr
        assert "(kept warm for the next commands" in first.stderr
        second = run_probe(config_file, warm, "search", "who approves deploys?", "--json")
        assert second.returncode == 0, second.stderr
        assert "Loading" not in second.stderr
        assert not {"torch", "sentence_transformers", "transformers"} & set(heavy_modules(second.stderr))
        assert json.loads(second.stdout)["hits"] == json.loads(first.stdout)["hits"]
        stopped = run_probe(config_file, warm, "db", "stop")  # the service goes with the database
        assert stopped.returncode == 0, stopped.stderr
        assert "Stopped the embedding service." in stopped.stdout
        assert heavy_modules(stopped.stderr) == []
    finally:
        assert not EmbeddingServiceClient("all-MiniLM-L6-v2", config.data_path, idle_seconds=120).stop()


@pytest.mark.slow
def test_the_warm_embedding_service_gives_the_same_vectors_and_is_shared(
    tmp_path: Path,
    minilm: Any,  # noqa: F811
) -> None:
    data = tmp_path / "data"
    told: list[str] = []
    first = EmbeddingServiceClient("all-MiniLM-L6-v2", data, idle_seconds=60, notice=told.append)
    second = EmbeddingServiceClient("all-MiniLM-L6-v2", data, idle_seconds=60, notice=told.append)
    texts = ["who approves a production deploy?", "the on-call rotation hands over on Tuesdays"]
    try:
        vectors = first.embed(texts)
        assert len(told) == 1 and told[0].startswith(
            "Loading the embedding model sentence-transformers/all-MiniLM-L6-v2 (kept warm"
        )
        assert vectors == minilm.embed(texts)  # the same model and code: the same floats
        assert first.dimension == 384 and first.model_name == minilm.model_name
        alone = second.embed(texts[:1])  # (a batch of one pads differently: equal within float noise)
        assert alone[0] == pytest.approx(vectors[0], abs=1e-6) and len(told) == 1  # reused: nothing loaded
        socket_file = first.socket_path
        assert socket_file.parent == data and stat.S_IMODE(socket_file.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(socket_file.stat().st_mode)
    finally:
        first.close()
        second.close()
        assert first.stop()
    deadline = time.monotonic() + 10
    while socket_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not socket_file.exists()  # it removed its socket on the way out
    assert not first.stop()  # nothing runs any more


@pytest.mark.slow
def test_the_warm_embedding_service_exits_when_idle(tmp_path: Path) -> None:
    client = EmbeddingServiceClient("all-MiniLM-L6-v2", tmp_path / "data", idle_seconds=1)
    try:
        assert client.dimension == 384
    finally:
        client.close()
    deadline = time.monotonic() + 30
    while client.socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not client.socket_path.exists()


def test_fast_exit_joins_threads_runs_atexit_and_flushes(tmp_path: Path) -> None:
    script = (
        "import atexit, sys, threading, time\n"
        "from context_assistant.core.interrupts import fast_exit\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        "def work():\n"
        "    time.sleep(0.3)\n"
        "    print('thread finished')\n"
        "threading.Thread(target=work).start()\n"
        "sys.stdout.write('buffered output')\n"
        "fast_exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "buffered outputthread finished\natexit ran\n"
