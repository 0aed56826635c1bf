"""``context-assistant sync | search | recall``: run in-process through ``cli.main`` (so the real MiniLM model
is loaded once for the test session, as the batch modes load it once per process), against the test
Postgres and a real Delta chunk table; one subprocess test checks the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from context_assistant.cli import build_parser, main
from context_assistant.core.config import Config
from context_assistant.services import Services
from retrieval_support import HashingEmbedder, PoisonEmbedder, document, minilm, write_chunk_table  # noqa: F401

DOCS = [
    *document(
        "guides/deploy.md",
        "Deploy the bundle with databricks bundle deploy --target prod once the release checklist passes.",
        "Roll back a failed deployment by redeploying the previous wheel.",
        heading="Deploying",
    ),
    *document(
        "guides/oncall.md",
        "The on-call engineer hands over the pager every Monday at 10:00.",
        heading="On-call",
    ),
    *document("policies/retention.md", "Raw event data is kept for 400 days, aggregates for seven years."),
]


@pytest.fixture
def cli(config_file: Path, pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--config", str(config_file), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def chunk_table(config: Config) -> Path:
    location = config.data_path / "chunks"
    write_chunk_table(location, DOCS)
    return location


def test_sync_then_search_and_batch_search(cli: Any, chunk_table: Path, tmp_path: Path, minilm: Any) -> None:  # noqa: F811
    code, out, _ = cli("sync", "--json")
    assert code == 0
    result = json.loads(out)
    assert (result["embedded"], result["added"], result["deleted"], result["kept"]) == (4, 4, 0, 0)
    assert (result["model"], result["dimension"], result["index"]) == (
        "sentence-transformers/all-MiniLM-L6-v2",
        384,
        "hnsw",
    )
    assert result["failed"] == [] and result["turns_embedded"] == 0 and result["rebuilt"] is True

    code, out, _ = cli("sync")
    assert code == 0 and out.startswith("Embedded 0 chunks (0 new, 0 changed), deleted 0, kept 4")

    code, out, _ = cli("search", "who has the pager this week?", "--top-k", "2", "--json")
    assert code == 0
    found = json.loads(out)
    assert found["query"] == "who has the pager this week?" and found["mode"] == "hybrid"
    # Only the on-call guide is related: the other chunks are below the relevance floor (rag.min_similarity).
    assert len(found["hits"]) == 1 and found["hits"][0]["path"] == "guides/oncall.md"
    assert set(found["hits"][0]) == {"chunk_id", "path", "heading", "page", "text", "score"}

    code, out, _ = cli("search", "how long are raw events kept", "--top-k", "1")
    assert code == 0 and out.startswith("1. policies/retention.md  [score ")

    code, out, _ = cli("search", "deploy", "--mode", "keyword", "--path-prefix", "policies/", "--json")
    assert code == 0 and json.loads(out)["hits"] == []

    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        '{"id": "q1", "query": "rolling back a deployment"}\n\n{"id": 2, "query": "retention of raw events"}\n'
    )
    code, out, _ = cli("search", "--batch", str(queries), "--top-k", "1")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["id"] for line in lines] == ["q1", 2]
    assert [line["hits"][0]["path"] for line in lines] == ["guides/deploy.md", "policies/retention.md"]


def test_recall_and_batch_recall(cli: Any, tmp_path: Path, minilm: Any) -> None:  # noqa: F811
    memory = tmp_path / "memory.jsonl"
    rows = [
        ("s1", "ana", "user", "How do I get access to the finance catalog?"),
        ("s1", "ana", "assistant", "File an ACCESS-REQ form; a data steward approves it."),
        ("s2", "bob", "user", "How do I get access to the finance catalog?"),
    ]
    memory.write_text(
        "".join(
            json.dumps(
                {
                    "session_id": s,
                    "user_id": u,
                    "role": r,
                    "content": c,
                    "timestamp": f"2026-01-0{i + 1}T09:00:00Z",
                }
            )
            + "\n"
            for i, (s, u, r, c) in enumerate(rows)
        )
    )
    assert cli("memory", "import", str(memory))[0] == 0

    code, out, _ = cli(
        "recall", "requesting permission for finance data", "--user", "ana", "--json", "--top-k", "5"
    )
    assert code == 0
    result = json.loads(out)
    assert result["user"] == "ana" and {h["session_id"] for h in result["hits"]} == {"s1"}
    assert set(result["hits"][0]) == {
        "message_id", "session_id", "role", "content", "timestamp", "score", "similarity", "keyword",
    }  # fmt: skip

    code, out, _ = cli("recall", "finance catalog access", "--user", "bob")
    # The raw evidence, not the fused score (normalised over the candidates, it can read 0 for a good match).
    assert code == 0 and "session s2 user" in out and "keyword " in out and "[score" not in out

    code, out, _ = cli("recall", "finance", "--user", "ana", "--exclude-session", "s1")
    assert code == 0 and out.startswith("Nothing relevant in ana's earlier conversations (in ")

    queries = tmp_path / "recall.jsonl"
    queries.write_text(
        '{"id": 1, "user": "ana", "query": "finance access"}\n{"id": 2, "user": "zoe", "query": "x"}\n'
    )
    code, out, _ = cli("recall", "--batch", str(queries))
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(line["id"], line["user"], len(line["hits"]) > 0) for line in lines] == [
        (1, "ana", True),
        (2, "zoe", False),
    ]


def test_sync_that_completes_with_failed_documents_exits_0_and_lists_them(
    config: Config, pg_env: dict[str, str], chunk_table: Path, capsys: Any
) -> None:
    """Like ``ingest`` and the sync job: the run completed, so exit 0 with the failed documents listed (their
    previous chunks kept). ``PoisonEmbedder`` (a test double) rejects every text mentioning the pager."""
    for argv in (["sync"], ["sync", "--json"]):
        services = Services(config, env=pg_env)
        services.embedder = PoisonEmbedder(HashingEmbedder(), "pager")
        args = build_parser().parse_args(argv)
        try:
            code = args.handler(args, services)
        finally:
            services.close()
        out = capsys.readouterr().out
        assert code == 0
        if "--json" in argv:
            (failure,) = json.loads(out)["failed"]
            assert failure["path"] == "guides/oncall.md"
        else:
            assert "FAILED guides/oncall.md: endpoint rejected the input containing 'pager'" in out


def test_errors_are_one_clear_line(cli: Any, tmp_path: Path) -> None:
    code, out, err = cli("search")
    assert (code, out, err) == (2, "", "usage error: search: give either a QUERY or --batch FILE\n")
    code, _, err = cli("recall", "x", "--batch", "q.jsonl")
    assert code == 2 and err == "usage error: recall: give either a QUERY or --batch FILE\n"
    code, _, err = cli("recall", "  ", "--user", "ana")
    assert (
        code == 2
        and err == "usage error: recall: the query is empty; give the words to look for, or --batch FILE\n"
    )

    code, out, err = cli("search", "anything")
    assert (code, out) == (1, "")
    assert "error: no documents are indexed in Postgres at " in err  # the test database (which one it used)
    assert err.endswith(
        ": run `context-assistant ingest` (or `sync`) there first, or pass --config to use another project's data folder\n"
    )

    code, out, err = cli("sync")
    assert code == 1 and out == ""
    assert err.startswith("error: the chunk table ") and err.endswith("run `context-assistant ingest` first\n")

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": 1, "query": "fine"}\n{"id": 2}\nnot json\n[1]\n{"id": true, "query": "x"}\n{"id": 3, "query": ""}\n'
    )
    code, out, err = cli("search", "--batch", str(bad))
    assert (code, out) == (1, "")
    assert err == (
        f"error: {bad}: nothing run, 5 bad line(s)\n"
        "line 2: missing 'query'\n"
        "line 3: not valid JSON (Expecting value at column 1)\n"
        "line 4: expected a JSON object\n"
        "line 5: 'id' must be a string or an integer\n"
        "line 6: 'query' must be a non-empty string\n"
    )
    code, _, err = cli("recall", "--batch", str(tmp_path / "missing.jsonl"))
    assert code == 1 and err == f"error: no such file: {tmp_path / 'missing.jsonl'}\n"


def test_entry_point_in_a_subprocess(config_file: Path, pg_env: dict[str, str], tmp_path: Path) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "context_assistant", "--config", str(config_file), *argv],
            capture_output=True,
            text=True,
            env={**pg_env, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
            timeout=120,
        )

    done = run("search", "--batch", str(tmp_path / "nope.jsonl"))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"error: no such file: {tmp_path / 'nope.jsonl'}\n"
    done = run("search", "x", "--top-k", "0")
    assert done.returncode == 2 and "--top-k: must be at least 1, got 0" in done.stderr


def test_switched_off_features_say_so(
    make_config: Any, tmp_path: Path, pg_env: dict[str, str], monkeypatch: Any, capsys: Any
) -> None:
    import dataclasses

    import yaml

    data = dataclasses.asdict(make_config(rag__enabled=False, memory__recall=False))
    data.pop("base_dir")
    path = tmp_path / "off.yaml"
    path.write_text(yaml.safe_dump(data))
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)
    assert main(["--config", str(path), "search", "x"]) == 1
    assert capsys.readouterr().err == "error: document search is off (rag.enabled: false in the config)\n"
    assert main(["--config", str(path), "recall", "x"]) == 1
    assert capsys.readouterr().err == "error: memory recall is off (memory.recall: false in the config)\n"
    assert main(["--config", str(path), "sync", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] == 0


def test_a_search_hit_quotes_the_sentences_that_match_the_query() -> None:
    """A new user's first search showed a hit cut at 240 characters just before the sentence that answered it."""
    from context_assistant.cli.commands import _hit_lines
    from context_assistant.retrieval.base import Hit

    text = (
        "Deployment Guide > Deploying to production\n\n"
        + "Deploys go out from the main branch through the shipit pipeline, which builds, tests and signs the "
        "image before anything reaches a cluster. Staging receives every merge within minutes. "
        "Every production deploy needs approval from two reviewers, one of whom must be outside the author's "
        "team. A deploy starts as a canary."
    )
    hit = Hit("c1", "deployment-guide.md", "Deployment Guide > Deploying to production", None, text, 0.5)
    line = _hit_lines(1, hit, "who approves a production deploy?")
    assert line.startswith("1. deployment-guide.md › Deployment Guide > Deploying to production  [score 0.5000]\n")
    assert "   Every production deploy needs approval from two reviewers" in line
    # No sentence shares a word: the passage's start, without its heading header (shown on the first line).
    other = _hit_lines(2, hit, "zebra quantum")
    assert other.split("\n")[1].startswith("   Deploys go out from the main branch") and other.endswith("…")
