"""The sessions / memory / db commands, run as a user runs them, against a real Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import SESSIONS_HINT
from context_assistant.cli import main
from context_assistant.storage.migrations import LATEST_VERSION


@pytest.fixture
def cli(config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run the CLI in-process on the test database; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("PGPASSWORD", "unused-trust-auth")

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--config", str(config_file), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_import_show_list_delete(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [
        {
            "session_id": "s-1",
            "user_id": "ana",
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"message {i}",
            "timestamp": f"2026-03-01T10:{i // 60:02d}:{i % 60:02d}Z",
            "metadata": {},
        }
        for i in range(120)
    ]
    rows.append(
        {
            "session_id": "s-2",
            "user_id": "ana",
            "role": "user",
            "content": "Second chat",
            "timestamp": "2026-03-02T08:00:00Z",
        }
    )
    path = write_jsonl(tmp_path / "in.jsonl", rows)

    code, out, _ = cli("memory", "import", str(path), "--json")
    assert code == 0 and json.loads(out) == {"imported": 121, "skipped": 0, "sessions_created": 2}

    code, out, _ = cli("sessions", "list", "--user", "ana", "--json")
    listed = json.loads(out)
    assert [s["id"] for s in listed["sessions"]] == ["s-2", "s-1"]
    assert listed["sessions"][1]["message_count"] == 120 and listed["sessions"][1]["title"] == "message 0"

    code, out, _ = cli("sessions", "show", "s-1", "--user", "ana", "--json")
    shown = json.loads(out)
    assert [m["content"] for m in shown["messages"]] == [f"message {i}" for i in range(120)]

    code, out, _ = cli("sessions", "show", "s-1", "--user", "ana")
    assert code == 0 and out.index("message 0") < out.index("message 119")

    # Another user can neither see nor delete it.
    code, _, err = cli("sessions", "show", "s-1", "--user", "eve")
    assert code == 1 and err.strip() == "error: session not found: s-1" + SESSIONS_HINT
    code, _, err = cli("sessions", "delete", "s-1", "--user", "eve")
    assert code == 1 and "session not found" in err

    code, out, _ = cli("sessions", "delete", "s-1", "--user", "ana", "--json")
    assert code == 0 and json.loads(out) == {"deleted": "s-1"}
    code, out, _ = cli("sessions", "list", "--user", "ana", "--json")
    assert [s["id"] for s in json.loads(out)["sessions"]] == ["s-2"]


def test_import_of_bad_file_reports_line_numbers_and_imports_nothing(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps(
            {
                "session_id": "s",
                "user_id": "u",
                "role": "user",
                "content": "ok",
                "timestamp": "2026-01-01T00:00:00Z",
            }
        )
        + "\n"
        + "not json\n"
        + json.dumps(
            {
                "session_id": "s",
                "user_id": "u",
                "role": "robot",
                "content": "x",
                "timestamp": "2026-01-01T00:00:00Z",
            }
        )
        + "\n",
        encoding="utf-8",
    )
    code, out, err = cli("memory", "import", str(path))
    assert code == 1
    assert "nothing imported: 2 problem(s)" in err
    assert (
        "line 2: not valid JSON" in err and "line 3: 'role' 'robot' is not one of user, assistant, system" in err
    )
    code, out, _ = cli("sessions", "list", "--user", "u", "--json")
    assert json.loads(out)["sessions"] == []


def test_the_session_list_stays_aligned_with_ids_longer_than_the_apps(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    long_id = "imported-from-another-tool-" + "x" * 30
    rows = [
        {"session_id": sid, "user_id": "al", "role": "user", "content": f"about {sid}", "timestamp": ts}
        for sid, ts in ((long_id, "2026-03-01T10:00:00Z"), ("short", "2026-03-02T10:00:00Z"))
    ]
    assert cli("memory", "import", str(write_jsonl(tmp_path / "in.jsonl", rows)))[0] == 0
    code, out, _ = cli("sessions", "list", "--user", "al")
    header, *lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    columns = {line.index(" 2026-") for line in lines} | {header.index(" UPDATED")}
    assert columns == {len(long_id)}  # every UPDATED column starts right after the longest id


def test_import_of_missing_or_non_utf8_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("memory", "import", str(tmp_path / "missing.jsonl"))
    assert code == 1 and "no such file" in err
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"content": "caf\xe9"}\n'.encode("latin-1"))
    code, _, err = cli("memory", "import", str(latin))
    assert code == 1 and "is not UTF-8 text" in err and "nothing imported" in err


def test_export_writes_jsonl(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [
        {
            "session_id": "x",
            "user_id": "ana",
            "role": "user",
            "content": "hello",
            "timestamp": "2026-01-01T00:00:00Z",
        },
        {
            "session_id": "y",
            "user_id": "bo",
            "role": "user",
            "content": "hi",
            "timestamp": "2026-01-01T00:00:00Z",
        },
    ]
    cli("memory", "import", str(write_jsonl(tmp_path / "in.jsonl", rows)))
    out_file = tmp_path / "out.jsonl"
    code, _, err = cli("memory", "export", "--user", "ana", "--output", str(out_file))
    assert code == 0 and "Exported 1 messages" in err
    exported = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert exported == [
        {
            "session_id": "x",
            "user_id": "ana",
            "role": "user",
            "content": "hello",
            "timestamp": "2026-01-01T00:00:00+00:00",
            "metadata": {},
        }
    ]
    code, out, _ = cli("memory", "export")
    assert len(out.splitlines()) == 2


def test_db_status(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("db", "status", "--json")
    status = json.loads(out)
    assert code == 0
    assert set(status) >= {"kind", "target", "server_version", "pgvector_version", "schema_version"}
    assert status["schema"] == "context_assistant" and status["problem"] is None
    code, out, _ = cli("db", "status")
    assert "PostgreSQL 18" in out and "pgvector:  0.8" in out
    schema_line = (
        f"Schema:    context_assistant, version {LATEST_VERSION} (latest {LATEST_VERSION}), owner postgres"
    )
    assert schema_line in out and "Problem:" not in out


def test_module_entry_point_runs(config_file: Path) -> None:
    env = {**os.environ, "PGPASSWORD": "unused"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "context_assistant",
            "--config",
            str(config_file),
            "sessions",
            "list",
            "--user",
            "z",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"user": "z", "sessions": []}
