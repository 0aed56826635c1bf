"""``context-assistant ingest`` from the command line: a source that would remove every document is refused with
one line naming the flag (issue 13.10), empty files and links show in ``--json`` (issues 14.4, 13.1). Real
Spark (pysail), Delta, Postgres + pgvector and the embedding model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from context_assistant.cli import main


@pytest.fixture
def ingest(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], spark: Any
) -> Any:
    monkeypatch.setenv("PGPASSWORD", "unused-trust-auth")

    def run(source: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
        code = main(["--config", str(config_file), "ingest", "--source", str(source), "--json", *extra])
        out, err = capsys.readouterr()
        return code, json.loads(out) if out.strip() else {}, err

    return run


def test_another_source_needs_the_flag_and_empty_files_and_links_are_listed(ingest: Any, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "deploy.md").write_text("# Deploy\n\nPress the blue button to deploy.\n")
    (first / "empty.md").write_bytes(b"")
    (first / "elsewhere.md").symlink_to(second / "other.md")
    (second / "other.md").write_text("Another team's notes.\n")

    code, result, _ = ingest(first)
    assert code == 0 and result["documents"]["added"] == 1
    assert result["skipped"] == [
        {"path": "elsewhere.md", "reason": result["skipped"][0]["reason"]},
        {"path": "empty.md", "reason": "empty file"},
    ]
    assert result["skipped"][0]["reason"].startswith("symbolic link, not followed")

    code, result, err = ingest(second)  # with --json the error is one JSON object on stdout
    assert code == 2 and "Traceback" not in err and result["kind"] == "usage"  # the source must change
    assert "none of the 1 ingested document(s) is under" in result["error"]
    assert "--allow-replace-source" in result["error"]

    code, result, _ = ingest(second, "--allow-replace-source")
    assert code == 0
    assert (result["documents"]["added"], result["documents"]["deleted"]) == (1, 1)
