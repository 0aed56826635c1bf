"""The web app's local model in a child process (retrieval/model_process.py).

Real child processes running the real all-MiniLM-L6-v2 (and the real app, served both ways, on the test
Postgres); their vectors are compared with the same model's in this process. Failures are real too: a child killed mid-life, a command that exits or hangs instead of starting, a
parent that dies without closing anything.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from context_assistant.core.config import Config, RagConfig, save_config
from context_assistant.retrieval.batching import BatchingEmbedder
from context_assistant.retrieval.embedder_choice import make_embedder
from context_assistant.retrieval.embeddings import CachingEmbedder, EmbeddingError, LocalEmbedder
from context_assistant.retrieval.model_process import SMALL_CALL, ModelProcessEmbedder, decode_vectors, serve
from retrieval_support import minilm  # noqa: F401  (session fixture)
from web_support import wait_for

REPO = Path(__file__).resolve().parent.parent

TEXTS = ["When does the on-call rotation hand over?", "How long is data retained?", "déjà vu — naïve café"]


@pytest.fixture(scope="module")
def child_model() -> Iterator[ModelProcessEmbedder]:
    notices: list[str] = []
    embedder = ModelProcessEmbedder("all-MiniLM-L6-v2", notice=notices.append)
    assert embedder.dimension == 384  # starts the child and waits for its hello
    assert notices == [
        "Loading the embedding model sentence-transformers/all-MiniLM-L6-v2 (in a child process)..."
    ]
    yield embedder
    embedder.close()


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """The in-process fallback sets torch to one thread for the whole process: put it back for later tests."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_child_gives_the_vectors_the_model_gives_in_process(
    child_model: ModelProcessEmbedder,
    minilm: LocalEmbedder,  # noqa: F811
) -> None:
    np.testing.assert_allclose(child_model.embed(TEXTS), minilm.embed(TEXTS), atol=1e-6)
    many = [f"question number {i} about retention" for i in range(SMALL_CALL + 6)]  # torch's default threads
    np.testing.assert_allclose(child_model.embed(many), minilm.embed(many), atol=1e-6)
    assert child_model.embed([]) == []
    assert child_model._child is not None and child_model._child.poll() is None


def test_a_killed_child_is_started_again_for_the_next_call(
    child_model: ModelProcessEmbedder,
    minilm: LocalEmbedder,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    child = child_model._child
    assert child is not None
    starts = child_model.starts
    child.kill()
    child.wait(10)
    np.testing.assert_allclose(child_model.embed(TEXTS[:1]), minilm.embed(TEXTS[:1]), atol=1e-6)
    assert child_model.starts == starts + 1 and child_model._fallback is None
    assert "exited (code -9) since the last call; starting it again" in caplog.text


def test_the_child_loop_answers_a_bad_call_with_an_error_and_goes_on() -> None:
    """The child's own loop (``serve``), fed in memory: a malformed line and a line of non-strings each get an
    error, and the good call after them still gets its vector."""
    lines = [
        b"not json\n",
        json.dumps({"texts": [1, 2]}).encode() + b"\n",
        json.dumps({"texts": TEXTS[:1]}).encode(),
    ]
    sink = io.BytesIO()
    serve("all-MiniLM-L6-v2", io.BytesIO(b"".join(lines)), sink)
    hello, bad_json, not_strings, good = (json.loads(line) for line in sink.getvalue().splitlines())
    assert hello["dimension"] == 384 and hello["pid"] == os.getpid()
    assert "JSONDecodeError" in bad_json["error"]
    assert not_strings == {"error": "ValueError: 'texts' must be a list of strings"}
    (vector,) = decode_vectors(good, "all-MiniLM-L6-v2")
    assert len(vector) == 384 and vector == LocalEmbedder("all-MiniLM-L6-v2").embed(TEXTS[:1])[0]  # exact


def test_an_app_that_stops_during_a_call_ends_the_child_quietly() -> None:
    """The app stopped (its end of the pipe closed) while the child was embedding: the child exits with code 0
    and logs nothing, instead of an ERROR with a BrokenPipeError traceback in the app's log on every such stop."""
    child = subprocess.Popen(
        [sys.executable, "-m", "context_assistant.retrieval.model_process", "--model", "all-MiniLM-L6-v2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    assert json.loads(child.stdout.readline())["dimension"] == 384
    child.stdout.close()  # the reader is gone before the answer is written
    child.stdin.write(json.dumps({"texts": TEXTS}).encode() + b"\n")
    child.stdin.close()
    assert child.stderr is not None
    stderr = child.stderr.read()  # until the child exits
    assert child.wait(60) == 0
    assert b"ERROR" not in stderr and b"BrokenPipe" not in stderr, stderr.decode()


def test_an_error_answer_is_an_embedding_error_and_the_child_stays() -> None:
    """A child that answers with an error (here a stand-in speaking the protocol) makes the call fail with the
    child's reason; the next call goes to the same child."""
    script = textwrap.dedent(
        """
        import json, sys
        from context_assistant.retrieval.model_process import encode_vectors
        print(json.dumps({"model_name": "m", "dimension": 2, "pid": 0}), flush=True)
        for n, line in enumerate(sys.stdin):
            answer = {"error": "ValueError: no"} if n == 0 else encode_vectors([[0.6, 0.8]])
            if n == 2:
                answer = {"shape": [1, 2], "f8": "not base64!"}
            print(json.dumps(answer), flush=True)
        """
    )
    embedder = ModelProcessEmbedder("all-MiniLM-L6-v2", command=[sys.executable, "-c", script])
    try:
        with pytest.raises(EmbeddingError, match=r"all-MiniLM-L6-v2.*failed: ValueError: no"):
            embedder.embed(["x"])
        assert embedder.embed(["y"]) == [[0.6, 0.8]]
        with pytest.raises(EmbeddingError, match=r"answered vectors that cannot be read"):
            embedder.embed(["z"])
        assert embedder.starts == 1
    finally:
        embedder.close()


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ("import sys; sys.exit(3)", "exited with code 3 while loading the model"),
        ("import time; time.sleep(60)", "no answer within 1 s while loading the model"),
    ],
)
def test_a_child_that_cannot_start_leaves_the_model_in_process(
    script: str,
    why: str,
    minilm: LocalEmbedder,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    torch_threads: None,
) -> None:
    embedder = ModelProcessEmbedder("all-MiniLM-L6-v2", start_timeout=1, command=[sys.executable, "-c", script])
    try:
        np.testing.assert_allclose(embedder.embed(TEXTS), minilm.embed(TEXTS), atol=1e-6)
        assert embedder.dimension == 384
        assert embedder._fallback is not None and embedder._child is None  # the hung one was ended
        assert (
            why in caplog.text and "loading sentence-transformers/all-MiniLM-L6-v2 in this process" in caplog.text
        )
    finally:
        embedder.close()


def test_a_child_whose_hello_is_not_understood_is_ended_and_the_model_runs_in_process(
    caplog: pytest.LogCaptureFixture, torch_threads: None
) -> None:
    embedder = ModelProcessEmbedder(
        "all-MiniLM-L6-v2", start_timeout=1, command=[sys.executable, "-c", "print('{}', flush=True)"]
    )
    try:
        assert embedder.dimension == 384
        assert embedder._child is None and "its hello was not understood" in caplog.text
    finally:
        embedder.close()


def test_the_child_ends_when_its_parent_dies_without_closing_anything(tmp_path: object) -> None:
    parent = textwrap.dedent(
        """
        import os, sys
        from context_assistant.retrieval.model_process import ModelProcessEmbedder
        embedder = ModelProcessEmbedder("all-MiniLM-L6-v2")
        embedder.embed(["hello"])
        print(embedder._child.pid, flush=True)
        os._exit(9)  # no close(), no interpreter teardown: as if killed
        """
    )
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr
    child_pid = int(done.stdout.split()[-1])
    wait_for(lambda: not _alive(child_pid), "the orphaned child to end", timeout=30)


def test_close_ends_the_child() -> None:
    embedder = ModelProcessEmbedder("all-MiniLM-L6-v2")
    embedder.embed(["hello"])
    child = embedder._child
    assert child is not None
    embedder.close()
    assert child.poll() == 0 and embedder._child is None


def test_a_serving_process_batches_into_the_child_and_others_keep_the_model_in_process() -> None:
    served = make_embedder(RagConfig(), serving=True)
    assert isinstance(served, CachingEmbedder) and isinstance(served.inner, BatchingEmbedder)
    assert isinstance(served.inner.inner, ModelProcessEmbedder) and served.inner.inner.starts == 0
    unbatched = make_embedder(RagConfig(embedding_batch_wait_ms=0), serving=True)
    assert isinstance(unbatched.inner, ModelProcessEmbedder)
    assert isinstance(make_embedder(RagConfig()).inner, LocalEmbedder)


@pytest.mark.parametrize("entry", ["serve", "app.py"])
def test_both_ways_of_serving_the_app_run_the_model_in_a_child_that_ends_with_it(
    entry: str, make_config: Callable[..., Config], pg_env: dict[str, str], tmp_path: Path
) -> None:
    """``context-assistant serve`` is the same web app as ``python app.py``: its warm-up starts the model's child
    process (it once built a non-serving app, with the model in process and no batching); Ctrl-C ends both."""
    config_file = save_config(make_config(rag__enabled=False, memory__recall=True), tmp_path / "web.yaml")
    where = ["--host", "127.0.0.1", "--port", "0"]
    argv = (
        [sys.executable, "-m", "context_assistant", "--config", str(config_file), "serve", *where]
        if entry == "serve"
        else [sys.executable, str(REPO / "app.py"), "--config", str(config_file), *where]
    )
    env = {**os.environ, **pg_env, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        child = wait_for(lambda: _child_running(server.pid, "model_process"), "the model's child process", 180)
        server.send_signal(signal.SIGINT)
        assert server.wait(60) == 130
        wait_for(lambda: not _alive(child), "the model's child to end with the app", timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def _child_running(parent: int, marker: str) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if ppid == parent and marker.encode() in command:
            return int(entry)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") if os.path.exists(f"/proc/{pid}/stat") else io.StringIO("x (x) Z") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
