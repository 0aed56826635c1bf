"""The side-by-side benchmarks (``python -m benchmarks``) still run: a tiny smoke size of our side on the test
Postgres, plus the pure parts (ratios, the corpus and its expected state). Figures are not asserted — benchmarks
are run by hand — only that every line is produced and every end state checked exactly right.

LangChain's side is installed only in the separate benchmark virtualenv (``benchmarks/requirements.txt``);
when it happens to be importable here, it runs too.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.__main__ import main, parse_args  # noqa: E402
from benchmarks.corpus import Corpus, describe_difference, state_of  # noqa: E402
from benchmarks.report import HIGHER, LOWER, Measure, Report, spread  # noqa: E402
from benchmarks.scratch import sqlalchemy_url  # noqa: E402

PEERS_INSTALLED = all(
    importlib.util.find_spec(name) for name in ("langchain_core", "langchain_postgres", "langchain_classic")
)


def run_smoke(pg_server: Any, tmp_path: Path, *extra: str) -> tuple[int, str, dict[str, Any]]:
    printed: list[str] = []
    out = tmp_path / "results.json"
    code = main(
        [
            "--smoke",
            "--only",
            "memory,indexing,retrieval,turn",
            "--database-url",
            pg_server.admin_uri,
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
            *extra,
        ],
        out=printed.append,
    )
    return code, "\n".join(printed), json.loads(out.read_text())


@pytest.mark.slow
def test_smoke_run_of_our_side_prints_every_line_with_exact_end_states(pg_server: Any, tmp_path: Path) -> None:
    code, table, raw = run_smoke(pg_server, tmp_path, "--ours-only")

    assert code == 0, raw["notes"]
    assert "Peers: not measured — --ours-only given" in table
    sections = {m["section"] for m in raw["measures"]}
    assert sections == {"memory", "indexing", "retrieval", "turn"}
    for measure in raw["measures"]:
        difference = "(on - off" in measure["label"]  # tracing's cost: can be below zero (noise), never absent
        assert measure["ours"] and all(math.isfinite(v) and (difference or v > 0) for v in measure["ours"]), (
            measure
        )
        assert measure["theirs"] is None
    indexing = [m for m in raw["measures"] if m["section"] == "indexing"]
    assert len(indexing) == 7  # full + 3 steps x 2 cleanup modes
    assert all(m["ours_ok"] is True for m in indexing)
    recall = next(m for m in raw["measures"] if m["label"].startswith("recall@10"))
    assert all(0 < v <= 1 for v in recall["ours"])
    assert "| indexing | full index (8 documents" in table


@pytest.mark.slow
@pytest.mark.skipif(not PEERS_INSTALLED, reason="LangChain peers live in the benchmark virtualenv only")
def test_smoke_run_with_langchain_checks_both_end_states(pg_server: Any, tmp_path: Path) -> None:
    code, _, raw = run_smoke(pg_server, tmp_path)

    assert code == 0, raw["notes"]
    by_label = {m["label"]: m for m in raw["measures"]}
    assert by_label['1% of documents deleted (theirs cleanup="full")']["theirs_ok"] is True
    # Documented LangChain behaviour: incremental cleanup never deletes a source missing from the input.
    assert by_label['1% of documents deleted (theirs cleanup="incremental")']["theirs_ok"] is False
    assert all(m["theirs"] for m in raw["measures"] if m["section"] in ("memory", "retrieval"))


def test_ratio_and_verdict_read_the_direction_of_each_line() -> None:
    faster = Measure("x", "latency", "ms", LOWER, [1.0, 2.0, 3.0], [4.0, 4.0, 4.0])
    assert faster.ratio == pytest.approx(0.5)
    assert faster.verdict() == "ours 2.0x"
    slower = Measure("x", "throughput", "msg/s", HIGHER, [100.0], [300.0])
    assert slower.verdict() == "theirs 3.0x"
    assert Measure("x", "same", "ms", LOWER, [1.0], [1.02]).verdict() == "even"
    alone = Measure("x", "ours only", "ms", LOWER, [1.0])
    assert alone.ratio is None and alone.verdict() == ""
    with pytest.raises(ValueError, match="better must be 'lower' or 'higher', got 'faster'"):
        Measure("x", "bad", "ms", "faster", [1.0])


def test_a_side_is_ahead_only_when_every_paired_run_agrees() -> None:
    """Issue 16: single runs on a loaded machine flipped verdicts; with paired (interleaved) runs a line
    reads "ahead" only when every run agrees, else "even" with the spread of the per-run ratios."""
    flipping = Measure("x", "append", "msg/s", HIGHER, [1300.0, 900.0, 1250.0], [1000.0, 1000.0, 1000.0])
    assert flipping.paired_ratios == pytest.approx([1.3, 0.9, 1.25])
    assert flipping.verdict() == "even (0.90–1.30)"
    steady = Measure("x", "append", "msg/s", HIGHER, [1300.0, 1200.0, 1250.0], [1000.0, 1000.0, 1000.0])
    assert steady.verdict() == "ours 1.2x"
    one_tie = Measure("x", "query", "ms", LOWER, [1.0, 1.0, 0.5], [2.0, 1.01, 1.0])
    assert one_tie.verdict() == "even (0.50–0.99)"


def test_table_shows_median_min_max_runs_checks_and_footnotes() -> None:
    report = Report(command="python -m benchmarks", size="full", server="PostgreSQL 18")
    report.add(
        Measure(
            "indexing", "full index", "s", LOWER, [10.0, 12.0, 11.0], [20.0, 22.0, 21.0], "a note", True, False
        )
    )
    report.add(Measure("turn", "overhead", "ms", LOWER, [5.0, 6.0]))
    text = report.render()

    assert (
        "| indexing | full index [1] | s | lower | 11.0 (10.0–12.0) ✓ | 21.0 (20.0–22.0) ✗ WRONG | 0.52 | ours 1.9x | 3 |"
        in text
    )
    assert "| turn | overhead | ms | lower | 5.50 (5.00–6.00) | n/a | — |  | 2 |" in text
    assert "[1] a note" in text
    assert "cores" in text and "Run " in text
    assert "CPU: " in text and " ms" in text.split("CPU: ", 1)[1].splitlines()[0]  # the host-speed reference
    assert spread(None) == "—" and spread([0.001234]) == "0.00123"


def test_corpus_is_deterministic_and_its_expected_state_follows_edits_and_deletions() -> None:
    first, second = Corpus.generate(200), Corpus.generate(200)
    assert first.docs == second.docs
    chunks = first.chunks()
    assert 200 <= len(chunks) <= 600  # one to three sections per document
    before = first.expected_state()

    edited = first.edit(0.01)
    deleted = first.delete(0.01)

    assert len(edited) == 2 and len(deleted) == 2
    after = first.expected_state()
    assert {path for path, _ in before - after} >= set(edited) | set(deleted)
    assert not {path for path, _ in after} & set(deleted)
    assert describe_difference(after, after) == ""
    assert describe_difference(before, after) == (
        f"{sum((after - before).values())} expected chunk(s) missing, {sum((before - after).values())} "
        "unexpected chunk(s) present"
    )
    assert list(state_of([("a", "x"), ("a", "x")]).values()) == [2]  # a multiset: duplicates count


def test_corpus_writes_a_folder_that_matches_it(tmp_path: Path) -> None:
    corpus = Corpus.generate(20)
    corpus.write(tmp_path)
    corpus.delete(0.1)
    corpus.write(tmp_path)
    on_disk = {str(p.relative_to(tmp_path)): p.read_text() for p in tmp_path.rglob("*.md")}
    assert on_disk == corpus.docs


def test_sqlalchemy_url_for_a_socket_and_for_tcp() -> None:
    assert (
        sqlalchemy_url("postgresql://postgres:@/bench?host=/tmp/pg%20dir")
        == "postgresql+psycopg://postgres@/bench?host=%2Ftmp%2Fpg+dir"
    )
    assert sqlalchemy_url("host=db.example port=5433 user=ana password=s3 dbname=x") == (
        "postgresql+psycopg://ana:s3@db.example:5433/x"
    )


def test_unknown_section_is_refused_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--only", "memory,speed"])
    assert (
        "unknown section(s) speed; choose from memory, indexing, retrieval, turn, import, web"
        in capsys.readouterr().err
    )


@pytest.mark.slow
def test_smoke_run_of_the_import_section(pg_server: Any, tmp_path: Path) -> None:
    """The first turns after a ``memory import`` (issue 13, item 8), through the command's own code."""
    code, table, raw = run_smoke(pg_server, tmp_path, "--ours-only", "--only", "import")
    assert code == 0, raw["notes"]
    labels = [m["label"] for m in raw["measures"] if m["section"] == "import"]
    assert labels == [
        "first turn after importing 100 messages",
        "tenth turn after the import",
        "first - tenth (target: within 2 s)",
    ]
    assert "first turn after importing 100 messages" in table


def test_benchmarks_wait_only_for_the_trace_exporters_of_their_own_folders(tmp_path: Path) -> None:
    """An exporter outlives its server by design; the next run waits for the one writing into its folders."""
    import subprocess
    import time

    from benchmarks.common import TRACE_EXPORTER_MODULE, running_trace_exporters, wait_for_trace_exporters

    settings = json.dumps({"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", TRACE_EXPORTER_MODULE, settings]
    )
    try:
        for _ in range(100):  # its command line is readable once it has started
            if stand_in.pid in running_trace_exporters([tmp_path]):
                break
            time.sleep(0.05)
        assert stand_in.pid in running_trace_exporters([tmp_path])
        assert stand_in.pid not in running_trace_exporters([tmp_path / "elsewhere"])
        ticks = iter(range(1000))
        waited = wait_for_trace_exporters(tmp_path, timeout=3, clock=lambda: next(ticks), sleep=lambda _: None)
        assert waited >= 3  # gave up at the timeout while it ran
    finally:
        stand_in.kill()
        stand_in.wait()
    assert stand_in.pid not in running_trace_exporters([tmp_path])
    assert wait_for_trace_exporters(tmp_path) < 1


def test_settling_the_server_checkpoints_and_returns_once_no_autovacuum_runs(pg_server: Any) -> None:
    """The step before each timed section (benchmarks/scratch.py): a real CHECKPOINT on the test Postgres, then
    the wait for autovacuum workers, which ends at once on an idle server."""
    from benchmarks.scratch import ScratchServer

    server = ScratchServer(pg_server.admin_uri)
    assert server.settle(timeout=30) < 30
