"""Issue 14's "no silent surprises", one test each: what a newcomer ran into, run the way they ran it (real
subprocesses where the process boundary is the point, a real Postgres, real files)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cli_support import SESSIONS_HINT
from context_assistant.cli import main
from context_assistant.core.config import find_project_root, load_config
from context_assistant.core.tracing import disable_mlflow_telemetry
from context_assistant.jobs import ingest_parser, sync_parser
from context_assistant.refresh import table_ref
from context_assistant.storage.memory import ConversationStore

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "context_assistant"]


@pytest.fixture
def cli(config_file: Path, pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    """The CLI in-process on the test database, the config given AFTER the command."""
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--config", str(config_file)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CONTEXT_ASSISTANT_CONFIG"}
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------- global options


def test_config_and_debug_work_before_or_after_the_command(
    cli: Any, config_file: Path, store: ConversationStore
) -> None:
    store.create_session("ana", title="First")
    code, out, _ = cli("sessions", "list", "--user", "ana", "--json")  # --config after the command
    assert code == 0 and [s["title"] for s in json.loads(out)["sessions"]] == ["First"]
    code, out, _ = cli("sessions", "--debug", "list", "--user", "ana")  # --debug between the words
    assert code == 0 and "First" in out
    code = main(["--config", str(config_file), "--debug", "sessions", "list", "--user", "ana", "--json"])
    assert code == 0
    # --debug after the command shows the traceback too, as before it; the line and exit code stay the same.
    code, _, err = cli("sessions", "show", "nope", "--user", "ana", "--debug")
    assert code == 1 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == "error: session not found: nope" + SESSIONS_HINT


# ------------------------------------------------------------------------------------- the data folder


def test_the_project_root_is_found_from_a_sub_folder_like_git(tmp_path: Path, monkeypatch: Any) -> None:
    project = tmp_path / "project"
    deep = project / "docs" / "drafts"
    deep.mkdir(parents=True)
    (project / "config.yaml").write_text("data_dir: state\n", encoding="utf-8")
    monkeypatch.delenv("CONTEXT_ASSISTANT_CONFIG", raising=False)
    monkeypatch.delenv("CONTEXT_ASSISTANT_DATA_DIR", raising=False)
    monkeypatch.chdir(deep)
    assert find_project_root() == project
    assert load_config().data_path == project / "state"

    # A project without config.yaml is found by its data folder.
    other = tmp_path / "other"
    (other / ".context-assistant").mkdir(parents=True)
    (other / "sub").mkdir()
    monkeypatch.chdir(other / "sub")
    assert load_config().data_path == other / ".context-assistant"

    # Nowhere: the working directory, as before (and the commands then say which database they used).
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    monkeypatch.chdir(lonely)
    assert find_project_root() is None or find_project_root() not in (project, other)


@pytest.mark.slow
def test_a_new_embedded_database_is_announced_with_its_folder_and_db_stop_is_quiet(tmp_path: Path) -> None:
    """Run from a folder that is no project: the embedded Postgres that gets created says where it is, the
    empty answer names it, its folders are private, and `db stop` prints no platformdirs warning."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = subprocess_env()
    env.pop("XDG_RUNTIME_DIR", None)  # what makes platformdirs warn
    env.pop("PGPASSWORD", None)
    try:
        done = subprocess.run(
            [*CLI, "sessions", "list", "--user", "ana"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
        data = elsewhere / ".context-assistant"
        assert f"creating a new embedded Postgres in {data / 'postgres'} (normal on a first run;" in done.stderr
        assert "pass --config" in done.stderr and "db stop` here stops this one" in done.stderr
        assert done.stdout.strip() == f"No sessions for ana in embedded Postgres in {data / 'postgres'}."
        expected = 0o710 if os.geteuid() == 0 else 0o700  # as root the server's own user passes through
        assert stat.S_IMODE(data.stat().st_mode) == expected
        assert stat.S_IMODE((data / "postgres").stat().st_mode) == 0o700
    finally:
        stop = subprocess.run(
            [*CLI, "db", "stop"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
        )
    assert stop.returncode == 0 and stop.stdout.strip() == "Stopped the embedded Postgres."
    assert stop.stderr == "", stop.stderr


def test_the_readme_job_example_writes_the_tables_the_cli_uses(tmp_path: Path) -> None:
    """The README's job entry-point example must not write to .context-assistant/.context-assistant/..."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Running the job entry points locally", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(c) for c in block.replace("\\\n", " ").strip().splitlines() if c.strip()]
    config = load_config(None, env={}, overrides={"data_dir": str(tmp_path / "data")})
    cli_tables = {table_ref(config, config.rag.chunk_table).sql_name, table_ref(config, "documents").sql_name}
    seen = set()
    for command in commands:
        parser = {"context-assistant-ingest": ingest_parser, "context-assistant-sync": sync_parser}[command[0]]()
        args = parser.parse_args(command[1:])
        for table in (args.chunk_table, getattr(args, "documents_table", None)):
            if table:
                ref = table_ref(config, table)
                assert ".context-assistant/.context-assistant" not in ref.label
                seen.add(ref.sql_name)
    assert seen == cli_tables


# ------------------------------------------------------------------------------------------- sessions


def test_sessions_show_takes_an_id_prefix_as_chat_session_does(cli: Any, store: ConversationStore) -> None:
    session = store.create_session("ana", title="Deploys", session_id="a1b2c3d4e5f6")
    store.append("ana", session.id, "user", "When can we deploy?")
    store.create_session("ana", title="Other", session_id="a1ffff")
    code, out, _ = cli("sessions", "show", "a1b2", "--user", "ana", "--json")
    assert code == 0 and json.loads(out)["session"]["id"] == "a1b2c3d4e5f6"
    code, _, err = cli("sessions", "show", "a1", "--user", "ana")
    assert code == 1 and "matches more than one session (a1b2c3d4e5f6, a1ffff)" in err
    code, _, err = cli("sessions", "show", "a1b2", "--user", "eve")  # never another user's
    assert code == 1 and err.strip() == "error: session not found: a1b2" + SESSIONS_HINT


def test_sessions_delete_takes_a_unique_prefix_and_names_what_it_deleted(
    cli: Any, store: ConversationStore
) -> None:
    keep = store.create_session("ana", title="Keep", session_id="a1ffff")
    gone = store.create_session("ana", title="Deploys", session_id="a1b2c3d4e5f6")
    store.append("ana", gone.id, "user", "When can we deploy?")
    code, _, err = cli("sessions", "delete", "a1", "--user", "ana")  # ambiguous: nothing deleted
    assert code == 1 and "matches more than one session" in err
    code, _, err = cli("sessions", "delete", "a1b2", "--user", "eve")  # never another user's
    assert code == 1 and "session not found: a1b2" in err
    assert {s.id for s in store.list_sessions("ana")} == {keep.id, gone.id}
    code, out, _ = cli("sessions", "delete", "a1b2", "--user", "ana", "--json")
    assert code == 0 and json.loads(out) == {"deleted": "a1b2c3d4e5f6"}
    assert [s.id for s in store.list_sessions("ana")] == [keep.id]


def test_chat_with_an_unknown_session_prints_a_json_error(config_file: Path, pg_env: dict[str, str]) -> None:
    done = subprocess.run(
        [*CLI, "chat", "--session", "BAD", "--json", "--message", "hello", "--config", str(config_file)],
        env=subprocess_env(**pg_env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1  # the documented exit code of a failed turn
    assert json.loads(done.stdout) == {
        "error": "session not found: BAD",
        "kind": "not_found",
        "retryable": False,
        "session_id": "BAD",
        "user_message_id": None,
    }
    assert done.stderr.strip() == "error: session not found: BAD" + SESSIONS_HINT


def test_every_json_command_prints_its_error_as_json(cli: Any) -> None:
    code, out, err = cli("sessions", "show", "nope", "--json")
    assert code == 1 and json.loads(out) == {
        "error": "session not found: nope",
        "kind": "not_found",
        "retryable": False,
    }
    assert err.strip() == "error: session not found: nope" + SESSIONS_HINT


# --------------------------------------------------------------------------------------------- bundle


def test_bundle_validate_with_an_unknown_target_exits_2_from_any_sub_folder() -> None:
    done = subprocess.run(
        [*CLI, "bundle", "validate", "-t", "nosuch"],
        cwd=REPO / "src",  # the bundle is found upwards, as the Databricks CLI finds it
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "usage error: unknown target 'nosuch' (targets in databricks.yml: dev, prod)"


# --------------------------------------------------------------------------------------------- ingest


def test_ingest_source_that_is_a_file_says_exactly_that(cli: Any, tmp_path: Path) -> None:
    document = tmp_path / "notes.md"
    document.write_text("# Notes\n", encoding="utf-8")
    code, out, err = cli("ingest", "--source", str(document))
    assert code == 2 and out == ""  # a usage error: the source must change
    assert err.startswith(f"usage error: {document} is a file, not a folder: the source (rag.source or --source)")
    assert "folder does not exist" not in err
    code, _, err = cli("ingest", "--source", str(tmp_path / "missing"))
    assert code == 2 and err.strip() == (
        f"usage error: the documents folder does not exist: {tmp_path / 'missing'} (rag.source or --source)"
    )


def test_the_empty_source_hint_names_an_option_ingest_has() -> None:
    source = (REPO / "src/context_assistant/ingest/run.py").read_text(encoding="utf-8")
    (hint,) = re.findall(r"to do that, run ingest with (--[a-z-]+)", source)
    help_text = subprocess.run(
        [*CLI, "ingest", "--help"], env=subprocess_env(), capture_output=True, text=True, timeout=60
    ).stdout
    assert hint == "--allow-empty-source" and hint in help_text
    assert ingest_parser().parse_args([hint]).allow_empty_source  # the job entry point has it too


# ----------------------------------------------------------------------------------- MLflow telemetry


def test_mlflow_telemetry_is_off_unless_the_user_turns_it_on() -> None:
    env: dict[str, str] = {}
    disable_mlflow_telemetry(env)
    assert env == {"MLFLOW_DISABLE_TELEMETRY": "true"}
    mine = {"MLFLOW_DISABLE_TELEMETRY": "false"}
    disable_mlflow_telemetry(mine)
    assert mine == {"MLFLOW_DISABLE_TELEMETRY": "false"}  # an explicit choice is kept


def test_chat_never_reaches_for_the_mlflow_telemetry_host(
    config: Any, tmp_path: Path, pg_env: dict[str, str]
) -> None:
    """A traced one-shot chat, outside CI and pytest (MLflow skips telemetry there by itself), with every
    DNS lookup recorded: no MLflow telemetry host is looked up, and MLflow's telemetry client is off."""
    from context_assistant.core.config import save_config

    traced = config.replace(tracing=config.tracing.__class__(enabled=True))
    config_file = save_config(traced, tmp_path / "config.yaml")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    lookups = tmp_path / "lookups.txt"
    (hooks / "sitecustomize.py").write_text(
        "import socket\n"
        "_real = socket.getaddrinfo\n"
        "def _recording(host, *args, **kwargs):\n"
        f"    with open({str(lookups)!r}, 'a') as f:\n"
        "        f.write(str(host) + '\\n')\n"
        "    if host not in ('localhost', '127.0.0.1', '::1') and not str(host).startswith('/'):\n"
        "        raise socket.gaierror('no network in this test')\n"
        "    return _real(host, *args, **kwargs)\n"
        "socket.getaddrinfo = _recording\n",
        encoding="utf-8",
    )
    probe = (
        "import os, sys\n"
        "from context_assistant.cli import main\n"
        "from context_assistant.core.config import load_config\n"
        "from context_assistant.core.tracing import Tracer, tracking_uri_for\n"
        # Create the store first, however loaded the machine: the chat's tracer then opens it at once.
        "uri = tracking_uri_for(load_config(sys.argv[2]), os.environ)\n"
        "assert Tracer(uri, setup_timeout_seconds=900).warm_up()\n"
        "code = main(sys.argv[1:])\n"
        "from mlflow.telemetry.client import get_telemetry_client\n"
        "print('telemetry client:', get_telemetry_client(), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CI", "PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
        and not k.startswith("GITHUB")
    }
    env.update(pg_env, PYTHONPATH=os.pathsep.join([str(hooks), env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", probe, "--config", str(config_file), "chat", "--message", "hello", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # creating the MLflow store took minutes on the loaded shared machine
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    trace_id = json.loads(done.stdout)["trace_id"]
    assert trace_id, done.stderr  # MLflow is in use (in the exporter process, which inherits the lookup hook)
    from mlflow import MlflowClient

    client, trace = MlflowClient(tracking_uri=f"sqlite:///{traced.data_path / 'mlflow.db'}"), None
    deadline = time.monotonic() + 900  # the exporter writes the trace after the command exited; wait for it
    while trace is None and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            trace = client.get_trace(trace_id)
        time.sleep(0.5)
    assert trace is not None, "the exporter never wrote the chat's trace"
    assert "telemetry client: None" in done.stderr
    hosts = lookups.read_text(encoding="utf-8").split() if lookups.exists() else []
    assert not [h for h in hosts if "mlflow" in h or "cloudfront" in h], hosts


# ------------------------------------------------------------------------------------ argument text


def test_arguments_that_are_not_valid_text_are_one_line_before_anything_runs(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 in argv become unpaired surrogates in Python: refused, naming the argument,
    before the database is even looked for (the folder stays empty)."""
    done = subprocess.run(
        [*CLI, "sessions", "show", b"caf\xe9", "--user", "ana"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "error: 'session_id' contains an unpaired surrogate (U+DCE9 at position 3), which is not valid Unicode"
    )
    assert list(tmp_path.iterdir()) == []  # nothing created: no data folder, no database


def test_a_chat_message_with_a_nul_is_refused_and_nothing_is_stored(cli: Any, store: ConversationStore) -> None:
    code, out, err = cli("chat", "--user", "ana", "--message", "line one\x00line two", "--json")
    assert code == 1
    assert err.strip() == "error: '--message' contains a NUL character (at position 8), which cannot be stored"
    assert json.loads(out) == {
        "error": "'--message' contains a NUL character (at position 8), which cannot be stored",
        "kind": "bad_input",
        "retryable": False,
    }
    code, _, err = cli("search", "caf\udce9", "--top-k", "3")
    assert code == 1 and "'query' contains an unpaired surrogate (U+DCE9 at position 3)" in err
    assert store.list_sessions("ana") == []


@pytest.mark.slow
def test_make_mlflow_ui_serves_the_local_traces(tmp_path: Path) -> None:
    """`mlflow ui` in the project's venv fails (mlflow-skinny has no server); `make mlflow-ui` runs
    scripts/mlflow_ui.sh, which installs the full mlflow once into .venv-mlflow-ui (pip, from PyPI or its cache)
    and serves the data folder's store: a real server on a free port, asked over real HTTP."""
    import socket
    import time
    import urllib.request

    from context_assistant.core.tracing import Tracer

    if sys.prefix == sys.base_prefix:
        pytest.skip("the script sets up next to the project's virtualenv; these tests run outside one")
    data = tmp_path / "data"
    data.mkdir()
    store_file = data / "mlflow.db"
    assert Tracer(f"sqlite:///{store_file}", setup_timeout_seconds=900, private_store=store_file).warm_up()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = subprocess_env(VENV=sys.prefix, DATA_DIR=str(data), PORT=str(port))
    log = tmp_path / "mlflow-ui.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "mlflow_ui.sh")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the script's server and its workers: one process group to stop
        )
    try:
        deadline = time.monotonic() + 600  # the first run installs mlflow
        page = ""
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
                    page = answer.read().decode("utf-8", "replace")
                break
            except OSError:
                time.sleep(1)
        assert server.poll() is None and page, log.read_text(errors="replace")
        assert "<title>MLflow</title>" in page or "mlflow" in page.lower()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
            data=json.dumps({"max_results": 10}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            names = [e["name"] for e in json.loads(answer.read())["experiments"]]
        assert "context-assistant" in names  # the store the project wrote
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def test_output_piped_to_a_reader_that_stops_early_is_not_an_error() -> None:
    """``context-assistant ... | head -1``: the reader closing the pipe ends the command quietly (exit 0, no
    traceback), as it does for other command-line tools."""
    process = subprocess.Popen(
        [sys.executable, "-m", "context_assistant", "bundle", "validate", "--json"],
        cwd=REPO,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the command writes anything
    err = process.stderr.read()
    assert process.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_mistyped_option_is_answered_with_the_one_it_resembles(capsys: Any) -> None:
    """Python 3.11's argparse only says "unrecognized arguments"; a newcomer typed --topk for --top-k."""
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "deploys", "--topk", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --topk 3 (did you mean --top-k?)" in err
    with pytest.raises(SystemExit):
        main(["sessions", "list", "--jsn", "--debg"])
    assert "(did you mean --json for --jsn, --debug for --debg?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["search", "deploys", "--frobnicate"])
    assert capsys.readouterr().err.rstrip().endswith("unrecognized arguments: --frobnicate")
    with pytest.raises(SystemExit) as exit_info:
        main(["serch", "deploys"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'serch'" in (err := capsys.readouterr().err) and "(did you mean 'search'?)" in err
    with pytest.raises(SystemExit):
        main(["sessions", "lsit"])
    assert "(did you mean 'list'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "did you mean" not in capsys.readouterr().err
