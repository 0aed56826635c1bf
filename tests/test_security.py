"""Issue 13 items 3 and 4: what holds conversation text is private (0600 files, 0700 folders, whatever the
umask), and no token or password an upstream server echoes back reaches the user, the logs, the stored
messages or the MLflow traces.

The chat model here is a real HTTP server on loopback that speaks the OpenAI chat-completions error shape and,
like some proxies do, echoes the request's Authorization header into its error body; the CLI talks to it
through the real ``openai`` client, in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from context_assistant.cli import main
from context_assistant.cli.terminal import line_editing
from context_assistant.core.config import Config, save_config
from context_assistant.core.files import open_private, private_dir, private_dir_mode, private_file
from context_assistant.core.redact import (
    REDACTED,
    install_log_redaction,
    redact,
    redact_exception,
    register_secret,
)
from context_assistant.core.tracing import Tracer, make_tracer
from context_assistant.core.upstream import error_detail, exception_line
from context_assistant.storage.memory import ConversationStore

API_KEY = "sk-test-0123456789abcdefghij"
DATABRICKS_TOKEN = "dapi0123456789abcdef0123456789abcdef"
DB_PASSWORD = "pg-secret-hunter2"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)  # the usual default: files 0644, folders 0755 unless we say otherwise
    yield
    os.umask(previous)


# ------------------------------------------------------------------------------------------- file modes


def test_private_files_and_folders_whatever_the_umask(tmp_path: Path, umask_022: None) -> None:
    folder = private_dir(tmp_path / "data" / "nested")
    assert mode(folder) == private_dir_mode()
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    assert mode(private_dir(loose)) == private_dir_mode()  # an existing folder is tightened
    file = private_file(tmp_path / "data" / "store.db")
    assert mode(file) == 0o600
    existing = tmp_path / "export.jsonl"
    existing.write_text("old", encoding="utf-8")
    os.chmod(existing, 0o644)
    with open_private(existing) as out:
        out.write("new")
    assert mode(existing) == 0o600 and existing.read_text(encoding="utf-8") == "new"


def test_memory_export_is_0600(
    config_file: Path,
    pg_env: dict[str, str],
    monkeypatch: Any,
    store: ConversationStore,
    tmp_path: Path,
    umask_022: None,
    capsys: Any,
) -> None:
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)
    session = store.create_session("ana")
    store.append("ana", session.id, "user", "my private question")
    target = tmp_path / "all-users.jsonl"
    assert main(["--config", str(config_file), "memory", "export", "-o", str(target)]) == 0
    assert mode(target) == 0o600 and "my private question" in target.read_text(encoding="utf-8")


def test_the_trace_store_its_artifacts_and_the_chat_history_are_private(config: Config, umask_022: None) -> None:
    # (the exporter process runs niced: on a loaded machine opening the store may take minutes)
    traced = config.replace(tracing=config.tracing.__class__(enabled=True, setup_timeout_seconds=900))
    tracer = make_tracer(traced, {})
    assert tracer.warm_up()  # MLflow creates its SQLite store
    with tracer.turn("ana", "s-1", {"message": "private words"}) as trace:
        trace.set_outputs({"reply": "private answer"})
    tracer.flush()
    data = traced.data_path
    assert mode(data) == private_dir_mode()
    assert mode(data / "mlflow.db") == 0o600
    assert mode(data / "mlflow-artifacts") == private_dir_mode()

    history = data / "chat_history"
    with line_editing(history, ["/exit"]):
        import readline

        readline.add_history("what I typed")
    assert mode(history) == 0o600


def test_the_local_spark_servers_tables_and_log_are_private(tmp_path: Path, umask_022: None) -> None:
    """The real local Spark server (pysail, a child process) writes a Delta table of chunk text: its files
    are 0600 and its folders 0700 whatever this process's umask, and so is the server's log."""
    from pyspark.sql import SparkSession

    from context_assistant.ingest.spark_server import LocalSparkServer

    server = LocalSparkServer(tmp_path / "spark-server.log")
    server.start()
    try:
        spark = SparkSession.builder.remote(server.url).create()  # its own session: the shared one stays
        table = tmp_path / "chunks"
        spark.createDataFrame([("a.md", "private text")], "path STRING, text STRING").write.format("delta").save(
            str(table)
        )
        spark.stop()
    finally:
        server.stop()
    written = [p for p in table.rglob("*")]
    assert any(p.suffix == ".parquet" for p in written)
    assert {mode(p) for p in written if p.is_file()} == {0o600}
    assert {mode(p) for p in [table, *written] if p.is_dir()} == {0o700}
    assert mode(tmp_path / "spark-server.log") == 0o600


# ---------------------------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("upstream said: Authorization: Bearer abc.def-ghi_123", "abc.def-ghi_123"),
        ('{"headers": {"authorization": "Basic dXNlcjpwYXNz"}}', "dXNlcjpwYXNz"),
        ("token dapi0123456789abcdef0123456789abcdef-2 expired", "dapi0123456789abcdef0123456789abcdef"),
        ("could not connect to postgresql://app:s3cr3t-pw@db.example.com:5432/x", "s3cr3t-pw"),
        ("GET https://me:hunter22@example.com/api failed", "hunter22"),
        ("conninfo: host=db password=hunter22 sslmode=require", "hunter22"),
        ('{"api_key": "sk-abcdefghijklmnopqrstuv"}', "sk-abcdefghijklmnopqrstuv"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijklmnop", "eyJhbGciOiJIUzI1NiJ9"),
    ],
)
def test_redact_removes_tokens_and_passwords(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned and REDACTED in cleaned


def test_redact_leaves_ordinary_text_alone() -> None:
    for text in (
        "max_tokens=1024 and context_tokens: 32000",
        "bearer tokens are explained in the docs",
        "password authentication failed for user ana",
        "the basic idea of a token bucket",
        "https://example.com/path?q=1",
    ):
        assert redact(text) == text


def test_configured_secrets_are_removed_wherever_they_appear(monkeypatch: Any) -> None:
    monkeypatch.setenv("PGPASSWORD", DB_PASSWORD)
    assert redact(f"the server said {DB_PASSWORD}!") == f"the server said {REDACTED}!"
    register_secret("a-registered-model-key-42")
    assert "a-registered-model-key-42" not in redact("key a-registered-model-key-42 rejected")
    monkeypatch.setenv("PGPASSWORD", "pw")  # too short to replace everywhere: only the patterns apply
    assert redact("pw is a word") == "pw is a word"


def test_upstream_helpers_errors_logs_and_exceptions_are_redacted(caplog: Any) -> None:
    from context_assistant.core.errors import UpstreamError

    body = {"error": {"message": f"bad header Authorization: Bearer {DATABRICKS_TOKEN}"}}
    assert DATABRICKS_TOKEN not in error_detail(body)
    assert DATABRICKS_TOKEN not in exception_line(RuntimeError(f"token {DATABRICKS_TOKEN}"))
    assert DATABRICKS_TOKEN not in str(UpstreamError(f"failed with {DATABRICKS_TOKEN}"))
    try:
        try:
            raise ValueError(f"cause with {DATABRICKS_TOKEN}")
        except ValueError as cause:
            raise RuntimeError("wrapper") from cause
    except RuntimeError as exc:
        message, stack = redact_exception(exc)
    assert DATABRICKS_TOKEN not in stack and "cause with" in stack and message == "wrapper"

    install_log_redaction()
    log = logging.getLogger("context_assistant.test")
    with caplog.at_level(logging.INFO):
        log.info("calling with %s", f"Authorization: Bearer {DATABRICKS_TOKEN}")
        try:
            raise RuntimeError(f"boom {DATABRICKS_TOKEN}")
        except RuntimeError:
            log.exception("failed")
    assert DATABRICKS_TOKEN not in caplog.text


class EchoingModelServer:
    """A chat-completions server that fails every request with the request's Authorization header (and a
    database URL with a password) in its error body."""

    def __init__(self, status: int) -> None:
        outer = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                message = (
                    f"invalid credentials: Authorization: {self.headers.get('Authorization')} "
                    f"(upstream postgresql://svc:{DB_PASSWORD}@10.0.0.1/db)"
                )
                body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [401, 500])
def test_an_echoed_token_reaches_no_output_no_stored_message_and_no_trace(
    config: Config, store: ConversationStore, tmp_path: Path, pg_env: dict[str, str], status: int
) -> None:
    server = EchoingModelServer(status)
    try:
        settings = config.replace(
            model=config.model.__class__(
                provider="openai", base_url=server.url, endpoint="m", api_key_env="TEST_MODEL_KEY", max_retries=0
            ),
            tracing=config.tracing.__class__(enabled=True),
        )
        config_file = save_config(settings, tmp_path / "config.yaml")
        env = {**os.environ, **pg_env, "TEST_MODEL_KEY": API_KEY, "PGPASSWORD": DB_PASSWORD}
        # Create the trace store first, however loaded the machine (the chat's exporter then opens it at once).
        store_file = private_dir(settings.data_path) / "mlflow.db"
        assert Tracer(f"sqlite:///{store_file}", setup_timeout_seconds=900, private_store=store_file).warm_up()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "context_assistant",
                "chat",
                "--user",
                "ana",
                "--message",
                "hi",
                "--json",
                "--config",
                str(config_file),
                "--debug",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        server.close()
    assert server.requests >= 1
    assert done.returncode == 1, done.stderr
    error = json.loads(done.stdout)
    assert error["kind"] in ("permission", "unavailable") and REDACTED in error["error"]
    for secret in (API_KEY, DB_PASSWORD):
        assert secret not in done.stdout and secret not in done.stderr  # --debug logs included

    (session,) = store.list_sessions("ana")
    (message,) = store.messages("ana", session.id)
    assert message.metadata["status"] == "failed" and REDACTED in message.metadata["error"]
    assert API_KEY not in json.dumps(message.metadata) and DB_PASSWORD not in json.dumps(message.metadata)

    database = settings.data_path / "mlflow.db"
    # The command handed its trace to the exporter process and exited; wait for the exporter to write it.
    from mlflow import MlflowClient

    client, trace = MlflowClient(tracking_uri=f"sqlite:///{database}"), None
    deadline = time.monotonic() + 900  # a bound for a loaded machine, not a speed check
    while trace is None and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            trace = client.get_trace(message.metadata["trace_id"])
        time.sleep(0.5)
    assert trace is not None, "the exporter never wrote the failed turn's trace"
    with sqlite3.connect(database) as conn:
        rows = [
            str(value)
            for table in ("spans", "trace_info", "trace_tags", "trace_request_metadata")
            for row in conn.execute(f"SELECT * FROM {table}")
            for value in row
        ]
    dump = "\n".join(rows)
    assert "invalid credentials" in dump  # the error is traced...
    assert API_KEY not in dump and DB_PASSWORD not in dump  # ...without the secrets
    assert API_KEY.encode() not in database.read_bytes()
