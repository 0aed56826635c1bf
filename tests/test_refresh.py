"""``context-assistant ingest`` and the shared refresh: documents → Delta chunk table → pgvector, end to end.

Real local Spark (pysail), real Delta tables, real Postgres + pgvector, the real MiniLM embedding model.
The Databricks Jobs API used by an app's refresh is a loopback stand-in speaking the documented REST shape.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from context_assistant.cli import main
from context_assistant.core.clock import FakeClock
from context_assistant.core.console import TerminalProgress
from context_assistant.refresh import FAILED_FILES_NEXT_STEP, RefreshError, run_refresh_job
from context_assistant.services import Services
from fake_databricks import FakeDatabricks

FIXTURE_DOCS = Path(__file__).resolve().parent.parent / "fixtures" / "docs"


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    target = tmp_path / "docs"
    shutil.copytree(FIXTURE_DOCS, target)
    return target


@pytest.fixture
def ingest(
    config_file: Path, docs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], spark
):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PGPASSWORD", "unused-trust-auth")

    def run(*extra: str) -> tuple[int, dict, str]:
        code = main(["--config", str(config_file), "ingest", "--source", str(docs), "--json", *extra])
        out, err = capsys.readouterr()
        return code, json.loads(out) if out.strip() else {}, err

    return run


def test_ingest_parses_chunks_and_indexes_then_reruns_as_a_no_op(
    ingest, docs: Path, config_file: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    code, first, _ = ingest()
    assert code == 0
    assert first["documents"]["added"] == 10 and first["documents"]["failed"] == 1
    assert first["failures"] == [{"path": "broken.pdf", "error": first["failures"][0]["error"]}]
    assert first["failures"][0]["error"].startswith("not a valid PDF file")
    assert first["chunks"]["written"] > 0
    assert first["sync"]["embedded"] == first["chunks"]["written"] and first["sync"]["deleted"] == 0

    code, again, _ = ingest()
    assert code == 0
    # The broken file counts as failed, not unchanged: it is still not answerable.
    assert again["documents"]["unchanged"] == 10 and again["documents"]["failed"] == 1
    assert again["chunks"] == {"written": 0, "deleted": 0}
    assert again["sync"]["embedded"] == 0 and again["sync"]["kept"] == first["chunks"]["written"]
    # The broken file was not retried (same bytes), but it is still reported as not answerable.
    assert again["failures"] == [] and again["still_failing"] == first["failures"]
    # In words, the list ends with what to do about a failed file.
    assert main(["--config", str(config_file), "ingest", "--source", str(docs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"STILL FAILING broken.pdf: {first['failures'][0]['error']} (unchanged since it failed)" in lines
    assert (
        lines[lines.index(next(x for x in lines if x.startswith("STILL FAILING"))) + 1] == FAILED_FILES_NEXT_STEP
    )

    # Edit one document: only its chunks are re-embedded; delete another: its chunks leave the index.
    runbook = docs / "oncall-runbook.txt"
    runbook.write_text(runbook.read_text() + "\nThe pager password rotates every 30 days.\n")
    (docs / "faq.html").unlink()
    # A readable copy replaces the broken PDF: it never parsed, so it is added (answerable for the first time).
    shutil.copyfile(docs / "release-checklist.pdf", docs / "broken.pdf")
    code, changed, _ = ingest()
    assert changed["documents"]["updated"] == 1 and changed["documents"]["deleted"] == 1
    assert changed["documents"]["added"] == 1 and changed["documents"]["failed"] == 0
    assert changed["still_failing"] == []
    assert 0 < changed["sync"]["embedded"] <= changed["chunks"]["written"]
    assert changed["sync"]["deleted"] >= 1

    code = main(["--config", str(config_file), "search", "pager password rotation", "--json"])
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["path"] == "oncall-runbook.txt" and "30 days" in hits[0]["text"]
    assert all(h["path"] != "faq.html" for h in hits)


def test_ingest_of_a_missing_source_is_one_clear_line(
    config_file: Path, tmp_path: Path, monkeypatch, capsys, spark
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PGPASSWORD", "unused-trust-auth")
    code = main(["--config", str(config_file), "ingest", "--source", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err  # a usage error: the source must change
    assert (
        err.strip()
        == f"usage error: the documents folder does not exist: {tmp_path / 'nowhere'} (rag.source or --source)"
    )


def test_local_spark_session_uses_utc(spark) -> None:  # type: ignore[no-untyped-def]
    """Delta timestamps are declared in the session zone; a machine zone such as Etc/UTC must not leak in."""
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"


def test_progress_draws_a_bar_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = TerminalProgress(stream)
    progress("batch 1/4: 25/100 chunks")
    assert "[######..................]  25% batch 1/4" in stream.getvalue()
    progress.done()
    assert stream.getvalue().endswith("\r\033[K")

    plain = io.StringIO()
    TerminalProgress(plain)("listing docs")
    assert plain.getvalue() == "listing docs\n"
    quiet = io.StringIO()
    TerminalProgress(quiet, quiet=True)("listing docs")
    assert quiet.getvalue() == ""


def jobs_api(fake: FakeDatabricks, states: list[dict]) -> None:
    fake.on("POST", "/api/2.[0-9]/jobs/run-now", {"run_id": 77, "number_in_job": 1})
    responses = [{"run_id": 77, "run_page_url": "https://example/run/77", "state": state} for state in states]
    from fake_databricks import Response

    fake.on("GET", "/api/2.[0-9]/jobs/runs/get", [Response(body=r) for r in responses])


def test_app_refresh_runs_the_ingestion_job_and_follows_it(make_config, fake_databricks: FakeDatabricks) -> None:  # type: ignore[no-untyped-def]
    jobs_api(
        fake_databricks,
        [
            {"life_cycle_state": "PENDING"},
            {"life_cycle_state": "RUNNING"},
            {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS"},
        ],
    )
    services = Services(make_config(rag__refresh_job_id="123"), workspace_factory=fake_databricks.workspace_client)
    clock = FakeClock()
    run = run_refresh_job(services, clock=clock, poll_seconds=5)
    assert run == {
        "job_id": 123,
        "run_id": 77,
        "state": "TERMINATED",
        "result_state": "SUCCESS",
        "url": "https://example/run/77",
    }
    assert fake_databricks.calls("/api/2.[0-9]/jobs/run-now")[0].json == {"job_id": 123}
    assert clock.sleeps == [5, 5]


def test_app_refresh_reports_a_failed_job_run(make_config, fake_databricks: FakeDatabricks) -> None:  # type: ignore[no-untyped-def]
    jobs_api(
        fake_databricks,
        [{"life_cycle_state": "TERMINATED", "result_state": "FAILED", "state_message": "Task ingest failed"}],
    )
    services = Services(make_config(rag__refresh_job_id="123"), workspace_factory=fake_databricks.workspace_client)
    with pytest.raises(RefreshError, match=r"run 77 ended FAILED: Task ingest failed \(https://example/run/77\)"):
        run_refresh_job(services, clock=FakeClock())
