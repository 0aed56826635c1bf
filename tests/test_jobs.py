"""The bundle's job entry points (context-assistant-ingest / -sync), run locally end to end.

The same functions the python_wheel_task calls, on the fixture documents: real local Spark (pysail) writing
Delta tables, the real test Postgres with pgvector, the real local embedding model. The Lakebase branch
lookup goes through the real databricks-sdk against a loopback server that speaks the documented
``/api/2.0/postgres/.../endpoints`` REST shape.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config as SdkConfig

from context_assistant.core.config import load_config, save_config
from context_assistant.jobs import (
    ingest_main,
    parse_settings,
    run_ingest_job,
    run_sync_job,
)
from context_assistant.storage.targets import DatabaseError, resolve_lakebase_branch, with_lakebase
from fake_databricks import Response

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "fixtures" / "docs"
BRANCH = "projects/context-assistant/branches/production"


def run(job: Any, argv: list[str], **kwargs: Any) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = job(argv, out=out, **kwargs)
    (line,) = out.getvalue().splitlines()
    return code, json.loads(line)


@pytest.fixture
def job_config(make_config, tmp_path: Path) -> Path:
    """A config file on the test database and a temporary data folder, as a job would get with --config."""
    config = make_config(rag__embedding_model="all-MiniLM-L6-v2", memory__recall=True)
    return save_config(config, tmp_path / "job-config.yaml")


def test_ingest_then_sync_end_to_end_on_the_fixtures(spark, job_config, pg_env, tmp_path):
    tables = tmp_path / "tables"
    ingest_args = [
        "--config", str(job_config),
        "--source", str(DOCS),
        "--chunk-table", str(tables / "chunks"),
        "--documents-table", str(tables / "documents"),
        "--set", "rag.chunk_size=256",
        "--set", "rag.chunk_overlap=32",
    ]  # fmt: skip
    # A size from before chunk sizes counted tokens is refused before anything is read (exit 2, the fix named).
    old = [*ingest_args[:-4], "--set", "rag.chunk_size=500", "--set", "rag.chunk_overlap=50"]
    code, summary = run(run_ingest_job, old, env=pg_env, spark_factory=lambda config: spark)
    assert code == 2 and "used to count characters" in summary["error"], summary
    code, summary = run(run_ingest_job, ingest_args, env=pg_env, spark_factory=lambda config: spark)
    assert code == 0, summary
    assert summary["ok"] is True
    assert summary["source"] == str(DOCS)
    documents = summary["result"]["documents"]
    assert documents["added"] >= 8 and documents["failed"] >= 1  # broken.pdf fails; the run still completes
    assert any(f["path"] == "broken.pdf" for f in summary["result"]["failures"])
    written = summary["result"]["chunks"]["written"]
    assert written > 0

    sync_args = ["--config", str(job_config), "--chunk-table", str(tables / "chunks")]
    code, summary = run(run_sync_job, sync_args, env=pg_env)
    assert code == 0, summary
    assert summary["backend"] == "pgvector" and summary["embedding_model"] == "all-MiniLM-L6-v2"
    assert summary["result"]["added"] == written and summary["result"]["failed"] == []
    assert summary["result"]["dimension"] == 384

    # Nothing changed: the ingest reads no file again and the sync embeds nothing.
    code, summary = run(run_ingest_job, ingest_args, env=pg_env, spark_factory=lambda config: spark)
    assert code == 0 and summary["result"]["chunks"] == {"written": 0, "deleted": 0}
    code, summary = run(run_sync_job, sync_args, env=pg_env)
    assert code == 0 and summary["result"]["embedded"] == 0 and summary["result"]["kept"] == written


def test_ingest_that_cannot_run_exits_2_with_the_reason(spark, job_config, pg_env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["--config", str(job_config), "--source", str(empty), "--chunk-table", str(tmp_path / "c")]
    code, summary = run(run_ingest_job, argv, env=pg_env, spark_factory=lambda config: spark)
    assert code == 2  # the source (its configuration) must change: a usage error, as on the command line
    assert summary["ok"] is False and "empty" in summary["error"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sauce", "x"], "unrecognized arguments: --sauce x"),
        (["--set", "chunk_size"], "--set 'chunk_size': expected section.key=value"),
        (["--set", "rag.chunk_size=lots"], "rag.chunk_size (from command line): 'lots' is not an integer"),
        (
            ["--set", "rag.chunk_sise=5"],
            "rag.chunk_sise (from command line): unknown key (did you mean rag.chunk_size?)",
        ),
    ],
)
def test_bad_parameters_exit_2(argv, message, capsys, tmp_path):
    code, summary = run(run_ingest_job, ["--source", str(tmp_path), *argv], env={})
    assert code == 2
    assert message in summary["error"]
    assert message in capsys.readouterr().err


def test_console_script_raises_system_exit_only_on_failure(capsys):
    with pytest.raises(SystemExit) as stopped:
        ingest_main(["--set", "nonsense"])
    assert stopped.value.code == 2
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_parse_settings():
    assert parse_settings(["rag.top_k=8", "database.name=a=b", "data_dir=/tmp/x"]) == {
        "rag.top_k": "8",
        "database.name": "a=b",
        "data_dir": "/tmp/x",
    }


# ------------------------------------------------------------------------------------------ Lakebase


def _endpoint(kind: str, host: str | None, endpoint_id: str) -> dict[str, Any]:
    status: dict[str, Any] = {"endpoint_type": kind, "current_state": "ACTIVE"}
    if host:
        status["hosts"] = {"host": host}
    return {"name": f"{BRANCH}/endpoints/{endpoint_id}", "endpoint_id": endpoint_id, "status": status}


@pytest.fixture
def workspace(fake_databricks) -> WorkspaceClient:
    return WorkspaceClient(
        config=SdkConfig(
            host=fake_databricks.url, token="t", auth_type="pat", retry_timeout_seconds=5, http_timeout_seconds=5
        )
    )


def test_lakebase_branch_resolves_to_its_read_write_endpoint(fake_databricks, workspace):
    fake_databricks.on(
        "GET",
        rf"/api/2.0/postgres/{BRANCH}/endpoints",
        {
            "endpoints": [
                _endpoint("ENDPOINT_TYPE_READ_ONLY", "ro.example", "replica"),
                _endpoint("ENDPOINT_TYPE_READ_WRITE", "ep-1.database.example", "primary"),
            ]
        },
    )
    assert resolve_lakebase_branch(workspace, BRANCH + "/") == (
        f"{BRANCH}/endpoints/primary",
        "ep-1.database.example",
    )
    config = with_lakebase(load_config(None, env={}), BRANCH, lambda: workspace)
    assert (config.database.host, config.database.endpoint) == (
        "ep-1.database.example",
        f"{BRANCH}/endpoints/primary",
    )
    assert config.database.name == "databricks_postgres" and config.database.sslmode == "require"


def test_lakebase_branch_without_a_read_write_endpoint(fake_databricks, workspace):
    fake_databricks.on(
        "GET",
        rf"/api/2.0/postgres/{BRANCH}/endpoints",
        {"endpoints": [_endpoint("ENDPOINT_TYPE_READ_WRITE", None, "primary")]},
    )
    with pytest.raises(DatabaseError, match=rf"Lakebase branch {BRANCH} has no read-write endpoint with a host"):
        resolve_lakebase_branch(workspace, BRANCH)


def test_lakebase_branch_lookup_failure_stops_the_sync_with_exit_1(fake_databricks, workspace, tmp_path):
    not_found = Response(404, {"error_code": "NOT_FOUND", "message": "Project context-assistant does not exist"})
    fake_databricks.on("GET", rf"/api/2.0/postgres/{BRANCH}/endpoints", not_found)
    argv = ["--chunk-table", str(tmp_path / "c"), "--lakebase-branch", BRANCH, "--set", f"data_dir={tmp_path}"]
    code, summary = run(run_sync_job, argv, env={}, workspace_factory=lambda: workspace)
    assert code == 1
    assert summary["error"].startswith(f"could not list the endpoints of Lakebase branch {BRANCH}:")


def test_a_configured_host_wins_over_the_branch_lookup():
    config = load_config(None, env={"PGHOST": "db.internal"})
    assert with_lakebase(config, BRANCH, lambda: pytest.fail("no lookup expected")) is config


def test_a_malformed_branch_name_is_a_usage_error_before_any_workspace_call(tmp_path):
    argv = [
        "--chunk-table",
        str(tmp_path / "c"),
        "--lakebase-branch",
        "production",
        "--set",
        f"data_dir={tmp_path}",
    ]
    code, summary = run(
        run_sync_job, argv, env={}, workspace_factory=lambda: pytest.fail("no workspace call expected")
    )
    assert code == 2
    assert summary["error"] == "Lakebase branch 'production': expected projects/<project>/branches/<branch>"
