"""``context-assistant chat`` end to end: the REPL driven in a pseudo-terminal (pexpect), and one-shot mode.

Everything is real except two Databricks-only services, which are a loopback server speaking their documented
REST shapes (tests/fake_databricks.py), reached through the real clients:

* the embedding serving endpoint (``rag.embedding_model: endpoint:test-embeddings``, databricks-sdk auth +
  httpx) answers with hashed bag-of-words vectors, so each chat process starts in a second instead of loading
  a sentence-transformers model (retrieval quality with the real model is tested in the retrieval tests);
* the chat model, in the failure tests, is an OpenAI-compatible server (the real ``openai`` client) that
  answers 503 until it "recovers", or streams part of an answer and then stalls.

The documents go through the real ingest (local Spark, Delta tables) into pgvector on the test Postgres, both
for the initial index and for ``/refresh`` inside the chat process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pexpect
import pytest

from cli_support import SESSIONS_HINT
from context_assistant.cli import main
from context_assistant.cli.chat import parse_command, source_line
from context_assistant.core.config import Config, os_user, save_config
from context_assistant.storage.memory import ConversationStore
from fake_databricks import FakeDatabricks, Request, Response, sse
from retrieval_support import HashingEmbedder

REPO = Path(__file__).resolve().parent.parent
FIXTURE_DOCS = REPO / "fixtures" / "docs"
EMBEDDINGS = "test-embeddings"
PROMPT = "you> "
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")


# ---------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A small documents folder: two of the fixture documents."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("deployment-guide.md", "oncall-runbook.txt"):
        shutil.copy(FIXTURE_DOCS / name, folder / name)
    return folder


@pytest.fixture
def embedding_endpoint(fake_databricks: FakeDatabricks) -> FakeDatabricks:
    hashing = HashingEmbedder()

    def embed(request: Request) -> dict[str, Any]:
        vectors = hashing.embed(request.json["input"])
        return {"object": "list", "data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}

    fake_databricks.on("POST", f"/serving-endpoints/{EMBEDDINGS}/invocations", embed)
    # The SDK's discovery probe (answered, so that no warning lands in the chat's output).
    fake_databricks.on(
        "GET", r"/\.well-known/databricks-config", lambda r: {"oidc_endpoint": f"{fake_databricks.url}/oidc"}
    )
    return fake_databricks


@pytest.fixture
def config(make_config: Callable[..., Config], docs: Path, embedding_endpoint: FakeDatabricks) -> Config:
    """The test config (written by conftest's ``config_file``): the docs folder and the embedding endpoint."""
    return make_config(rag__source=str(docs), rag__embedding_model=f"endpoint:{EMBEDDINGS}")


@pytest.fixture
def env(pg_env: dict[str, str], embedding_endpoint: FakeDatabricks) -> dict[str, str]:
    """The chat process's environment: the test Postgres password and the loopback workspace."""
    return {
        **os.environ,
        **pg_env,
        "HF_HUB_OFFLINE": "1",
        "TERM": "dumb",
        "DATABRICKS_HOST": embedding_endpoint.url,
        "DATABRICKS_TOKEN": "dapi-test-token",
    }


@pytest.fixture
def indexed(
    config_file: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any, spark: Any
) -> dict:
    """Ingest the docs folder with the real pipeline (in this process, on the shared local Spark)."""
    for key in ("PGPASSWORD", "DATABRICKS_HOST", "DATABRICKS_TOKEN"):
        monkeypatch.setenv(key, env[key])
    code = main(["--config", str(config_file), "ingest", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out)
    assert result["documents"]["added"] == 2 and result["sync"]["embedded"] > 0
    return result


@pytest.fixture
def model_server(fake_databricks: FakeDatabricks) -> Iterator[ModelServer]:
    server = ModelServer(fake_databricks)
    yield server
    server.release.set()  # never leave a stalled handler behind


class ModelServer:
    """An OpenAI-compatible chat server on the loopback fake: down (503), up, or streaming then stalling."""

    ANSWER = "Production deploys run Monday to Thursday, 09:00-15:00 UTC."

    def __init__(self, fake: FakeDatabricks) -> None:
        self.fake = fake
        self.mode = "up"  # "up" | "down" | "stall"
        self.release = threading.Event()
        fake.on("POST", "/v1/chat/completions", self.handle)

    @property
    def base_url(self) -> str:
        return self.fake.url + "/v1"

    def handle(self, request: Request) -> Response:
        if self.mode == "down":
            return Response(503, {"error": {"message": "the model server is overloaded", "type": "overloaded"}})
        words = self.ANSWER.split(" ")
        if not request.json.get("stream"):
            return Response(
                body={
                    "id": "c-1",
                    "object": "chat.completion",
                    "created": 1767225600,
                    "model": "test-model",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.ANSWER},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19},
                }
            )
        deltas = [w + " " for w in words[:-1]] + [words[-1]]
        if self.mode == "stall":
            return Response(body=self._stalled(deltas))
        return Response(body=sse([*(chunk(d) for d in deltas), chunk(None, "stop")]))

    def _stalled(self, deltas: list[str]) -> Iterator[bytes]:
        yield from sse([chunk("Partial answer: ")], done=False)
        self.release.wait(30)
        yield from sse([*(chunk(d) for d in deltas), chunk(None, "stop")])


def chunk(content: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {"role": "assistant", "content": content} if content is not None else {}
    return {
        "id": "c-1",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class Chat:
    """A chat process in a pseudo-terminal. ``send`` returns what it printed up to the next prompt."""

    def __init__(self, config_file: Path, env: dict[str, str], *args: str) -> None:
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "context_assistant", "--config", str(config_file), "chat", *args],
            env=env,
            encoding="utf-8",
            timeout=60,
            dimensions=(40, 250),
        )
        self.banner = self.until_prompt()

    def until_prompt(self) -> str:
        self.child.expect_exact(PROMPT)
        return clean(self.child.before)

    def send(self, line: str) -> str:
        self.child.sendline(line)
        output = self.until_prompt()
        echoed, _, rest = output.partition("\n")  # the terminal echoes the line typed
        assert echoed.strip() == line
        return rest

    def expect(self, text: str) -> str:
        self.child.expect_exact(text)
        return clean(self.child.before)

    def close(self) -> int:
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus


def clean(text: str) -> str:
    return ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "")


# ---------------------------------------------------------------------------------------------------------
# the REPL


def test_a_conversation_with_sources_sessions_history_and_refresh(
    config_file: Path, env: dict[str, str], indexed: dict, docs: Path, store: ConversationStore
) -> None:
    chat = Chat(config_file, env, "--user", "ana")
    assert "context-assistant chat — user ana, new session" in chat.banner
    assert "Model: offline (model.provider is offline)" in chat.banner
    chunks = indexed["sync"]["embedded"]
    assert f"Documents: {chunks} chunks indexed (pgvector, {EMBEDDINGS})" in chat.banner

    answer = chat.send("When are production deploys allowed?")
    assert answer.startswith("I'm running without a language model")
    assert "Monday to Thursday" in answer
    sources = answer.split("\nSources:\n", 1)[1]
    assert re.match(r"  \[1\] deployment-guide\.md, Deployment Guide > [^\n—]+\n", sources)  # no score

    full = chat.send("/sources")
    assert full.startswith("[1] deployment-guide.md, Deployment Guide")
    assert "    Production deploys are allowed Monday to Thursday between 09:00 and 15:00 UTC." in full

    history = chat.send("/history")
    assert "] you:\nWhen are production deploys allowed?\n" in history
    assert "] assistant:\nI'm running without a language model" in history
    (first,) = store.list_sessions("ana")

    assert chat.send("/new").strip() == "New conversation: your next message starts it."
    assert chat.send("/history").strip() == "Nothing yet: this conversation starts with your next message."

    # A new document in the source: /refresh ingests and indexes it, and the next question finds it.
    (docs / "cafeteria.md").write_text(
        "# Cafeteria\n\nThe cafeteria serves pelican pie every Friday at noon.\n", encoding="utf-8"
    )
    refreshed = chat.send("/refresh")
    assert f"Refreshing documents from {docs}" in refreshed
    assert "Documents: 1 added, 0 updated, 0 deleted, 2 unchanged, 0 failed" in refreshed
    assert re.search(r"Embedded 1 chunks \(1 new, 0 changed\), deleted 0, kept \d+", refreshed)
    answer = chat.send("What does the cafeteria serve on Friday?")
    assert "pelican pie" in answer
    assert re.search(r"\n  \[1\] cafeteria\.md, Cafeteria\n", answer)
    assert chat.send("refresh").count("Documents: 0 added, 0 updated, 0 deleted, 3 unchanged") == 1  # seed word

    listed = chat.send("/sessions").splitlines()
    assert len(listed) == 3 and listed[2].startswith("/resume ID")
    assert listed[0].startswith("* ") and listed[0].endswith("What does the cafeteria serve on Friday?")
    assert listed[1].startswith(f"  {first.id[:8]} ") and listed[1].endswith(
        "When are production deploys allowed?"
    )

    resumed = chat.send(f"/resume {first.id[:6]}")
    assert resumed.strip() == (
        f'Resumed session {first.id} "When are production deploys allowed?" (2 messages). /history shows it.'
    )
    history = chat.send("/history")
    assert "When are production deploys allowed?" in history and "cafeteria" not in history
    assert chat.send("/resume nope").strip() == "error: no session of yours matches 'nope' (see /sessions)"
    assert chat.send("/resume").strip() == "error: /resume needs a session id (see /sessions)"
    assert chat.send("/sources").strip().startswith("[1] deployment-guide.md")  # stored with the answer

    assert "/retry" in chat.send("/help")
    assert chat.send("/frobnicate").strip() == "error: unknown command /frobnicate; /help lists the commands"
    chat.child.sendline("/exit")
    assert chat.close() == 0

    sessions = store.list_sessions("ana")
    assert [s.message_count for s in sessions] == [2, 2]


def test_a_failed_model_call_keeps_the_chat_alive_and_retry_answers_it(
    make_config: Callable[..., Config],
    tmp_path: Path,
    env: dict[str, str],
    model_server: ModelServer,
    store: ConversationStore,
) -> None:
    config = make_config(
        model__provider="openai",
        model__base_url=model_server.base_url,
        model__endpoint="test-model",
        model__max_retries=0,
        rag__enabled=False,
        memory__recall=False,
        web__max_message_chars=100,
    )
    config_file = save_config(config, tmp_path / "model.yaml")
    chat = Chat(config_file, env, "--user", "ana")
    assert "Model: openai:test-model (model.provider is openai)" in chat.banner
    assert "Documents: off (rag.enabled is false)" in chat.banner
    assert chat.send("/retry").strip() == "Nothing to retry: the last message was answered."
    refused = chat.send("x" * 101).strip()
    assert refused == "error: the message is 101 characters; the limit is 100 (web.max_message_chars)"
    assert store.list_sessions("ana") == []  # refused before anything was stored, no empty session left

    model_server.mode = "down"
    failed = chat.send("When can we deploy?").strip()
    assert failed.startswith("error: ") and "503" in failed and "overloaded" in failed
    assert failed.endswith("— your message is kept; type /retry to try again")
    assert "[failed: unavailable]" in chat.send("/history")

    model_server.mode = "up"
    assert chat.send("/retry").strip() == ModelServer.ANSWER
    history = chat.send("/history")
    assert history.count("When can we deploy?") == 1 and history.count(ModelServer.ANSWER) == 1
    assert "[failed" not in history

    # Ctrl-C at the prompt is not a way out; while an answer streams in, it stops that answer only.
    chat.child.sendintr()
    chat.expect("(Ctrl-D or /exit leaves)")
    chat.until_prompt()
    model_server.mode = "stall"
    chat.child.sendline("Who approves production deploys?")
    chat.expect("Partial answer:")  # the first delta is on screen while the server still holds the rest
    chat.child.sendintr()
    stopped = chat.expect("[stopped — the answer was not saved; /retry asks again]")
    model_server.release.set()
    chat.until_prompt()
    assert "Traceback" not in stopped
    assert "[failed: interrupted]" in chat.send("/history")
    model_server.mode = "up"
    assert chat.send("/retry").strip() == ModelServer.ANSWER
    history = chat.send("/history")
    assert history.count("Who approves production deploys?") == 1 and "[failed" not in history

    chat.child.sendeof()  # Ctrl-D leaves
    assert chat.close() == 0


# ---------------------------------------------------------------------------------------------------------
# one-shot mode


def run_chat(
    config_file: Path, env: dict[str, str], *args: str, script: bool = False
) -> subprocess.CompletedProcess:
    """One chat command; ``script`` runs it as ``python assistant.py`` (the seed's entry point)."""
    entry = [str(REPO / "assistant.py")] if script else ["-m", "context_assistant"]
    argv = [sys.executable, *entry, "--config", str(config_file)]
    argv += [] if script else ["chat"]
    return subprocess.run(
        [*argv, *args], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def test_one_shot_json_answers_with_sources_and_continues_a_session(
    config_file: Path, env: dict[str, str], indexed: dict, store: ConversationStore
) -> None:
    done = run_chat(config_file, env, "--message", "When are production deploys allowed?", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {"session_id", "reply", "sources", "trace_id"} <= set(result)
    assert result["trace_id"] is None  # tracing is off in the test config
    assert result["model"] == "offline" and "Monday to Thursday" in result["reply"]
    assert result["sources"][0]["path"] == "deployment-guide.md" and result["sources"][0]["index"] == 1
    assert "Production deploys are allowed" in "".join(s["text"] for s in result["sources"])

    # The default user is the OS user; --session continues the conversation (a prefix is enough).
    session = result["session_id"]
    (owned,) = store.list_sessions(os_user())
    assert owned.id == session
    again = run_chat(config_file, env, "--session", session[:10], "--message", "Who must approve them?")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("I'm running without a language model")
    assert "\nSources:\n  [1] " in again.stdout
    assert again.stderr.strip() == f"(session {session}; continue it with --session)"
    assert [m.role for m in store.messages(os_user(), session)] == ["user", "assistant"] * 2


def test_a_traced_one_shot_chat_exits_and_its_trace_arrives_afterwards(
    config: Config, tmp_path: Path, env: dict[str, str], indexed: dict
) -> None:
    """The command hands its turn to a detached exporter process and exits without waiting for MLflow; the
    exporter writes the trace after the command is gone. (Waits for the trace, asserts nothing about time.)"""
    traced = save_config(config.replace(tracing=replace(config.tracing, enabled=True)), tmp_path / "traced.yaml")
    done = run_chat(traced, env, "--message", "When are production deploys allowed?", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["trace_id"] and result["trace_id"].startswith("tr-")

    from mlflow import MlflowClient

    store = config.data_path / "mlflow.db"  # created whole by the exporter: opened once it is there
    deadline = time.monotonic() + 900  # a generous bound on a loaded machine, not a speed check
    trace = None

    def complete(found: Any) -> bool:
        """MLflow's SQL store writes each span as it ends (the trace shows as IN_PROGRESS, without its metadata)
        and the trace's info and metadata once the root ends: only then is the trace whole."""
        return found is not None and "mlflow.trace.session" in found.info.trace_metadata

    while not complete(trace) and time.monotonic() < deadline:
        if store.exists() and store.stat().st_size > 0:
            with contextlib.suppress(Exception):
                trace = MlflowClient(tracking_uri=f"sqlite:///{store}").get_trace(result["trace_id"])
        if not complete(trace):
            time.sleep(0.5)
    assert complete(trace), f"the exporter never finished the one-shot chat's trace: {trace}"
    assert trace is not None
    assert trace.info.trace_metadata["mlflow.trace.session"] == result["session_id"]
    assert {"retrieval", "model_call", "memory_store"} <= {span.name for span in trace.data.spans}


def test_one_shot_failure_exits_1_with_the_error_as_json_then_retry_succeeds(
    make_config: Callable[..., Config], tmp_path: Path, env: dict[str, str], model_server: ModelServer
) -> None:
    """Through ``python assistant.py`` (= ``context-assistant chat``)."""
    config = make_config(
        model__provider="openai",
        model__base_url=model_server.base_url,
        model__endpoint="test-model",
        model__max_retries=0,
        rag__enabled=False,
        memory__recall=False,
    )
    config_file = save_config(config, tmp_path / "model.yaml")
    model_server.mode = "down"
    failed = run_chat(config_file, env, "--user", "bo", "--message", "When can we deploy?", "--json", script=True)
    assert failed.returncode == 1
    error = json.loads(failed.stdout)
    assert error["kind"] == "unavailable" and error["retryable"] is True and "overloaded" in error["error"]
    message_id = error["user_message_id"]
    assert failed.stderr.strip().startswith("error: ")
    assert failed.stderr.strip().endswith(f"(message {message_id} kept; send it again with --retry {message_id})")

    model_server.mode = "up"
    retried = run_chat(config_file, env, "--user", "bo", "--retry", str(message_id), "--json", script=True)
    assert retried.returncode == 0, retried.stderr
    result = json.loads(retried.stdout)
    assert result["reply"] == ModelServer.ANSWER and result["user_message_id"] == message_id
    assert result["session_id"] == error["session_id"] and result["sources"] == []


def test_bad_usage_and_bad_input_are_one_clear_line(
    config_file: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("PGPASSWORD", env["PGPASSWORD"])

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--config", str(config_file), "chat", *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("--json")
    assert (code, out) == (2, "")
    assert (
        err.strip()
        == "usage error: chat: --json needs --message TEXT (or --retry ID): the interactive chat is for people"
    )
    code, _, err = run("--message", "hi", "--retry", "3")
    assert code == 2 and err.strip() == "usage error: chat: --message and --retry cannot be combined"
    code, _, err = run("--session", "nope", "--message", "hi")
    assert code == 1 and err.strip() == "error: session not found: nope" + SESSIONS_HINT
    # An empty --session is not "start a new conversation" (a new user's script passed "$SESSION" unset).
    code, _, err = run("--session", " ", "--message", "hi")
    assert code == 2 and err.strip().startswith("usage error: chat: --session is empty; give a session id")
    blank = "chat: --message is empty; give the question as TEXT, or '-' to read it from stdin"
    for text in ("", "   "):  # a usage error like the others above, refused before the database is opened
        code, out, err = run("--message", text, "--json")
        assert code == 2 and json.loads(out) == {"error": blank, "kind": "usage", "retryable": False}
        assert err.strip() == f"usage error: {blank}"
    # The same for an empty stdin (it used to be exit 1, "the message is empty"), and nothing is stored.
    empty_stdin = "chat: the message read from stdin is empty; pipe the question in, or give it as TEXT"
    for json_flag in ((), ("--json",)):
        monkeypatch.setattr("sys.stdin", io.StringIO(" \n"))
        code, out, err = run("--user", "nobody-yet", "--message", "-", *json_flag)
        assert code == 2 and err.strip() == f"usage error: {empty_stdin}"
        if json_flag:
            assert json.loads(out) == {"error": empty_stdin, "kind": "usage", "retryable": False}
    assert main(["--config", str(config_file), "sessions", "list", "--user", "nobody-yet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sessions"] == []
    code, out, err = run("--retry", "999999", "--json")
    assert code == 1 and json.loads(out) == {
        "error": "message not found: 999999",
        "kind": "not_found",
        "retryable": False,
        "session_id": None,
        "user_message_id": None,
    }


# ---------------------------------------------------------------------------------------------------------
# pieces


def test_parse_command_knows_slash_commands_and_the_seed_words() -> None:
    assert parse_command("/resume  ab12 ") == parse_command("/RESUME ab12")
    assert parse_command("/resume ab12").argument == "ab12"
    assert parse_command("refresh").name == "refresh" and parse_command(" Quit ").name == "exit"
    assert parse_command("exit").name == "exit"
    assert parse_command("how do I refresh the index?") is None
    assert parse_command("/usr/bin is on the PATH?") is not None  # a slash word is a command (unknown: said so)
    assert parse_command("/ leading slash and space") is None and parse_command("/") is None
    assert parse_command("/2 is a fraction") is None


def test_source_line_names_path_page_and_heading_without_a_score() -> None:
    source = {"index": 2, "path": "guide.pdf", "page": 3, "heading": "Setup > VPN", "score": 0.0}
    assert source_line(source) == "[2] guide.pdf, page 3, Setup > VPN"
    assert source_line({"index": 1, "path": "a.txt", "page": None, "heading": "", "score": 1}) == "[1] a.txt"
