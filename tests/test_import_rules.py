"""Issue 13 item 11 (and 5, for import lines): ``memory import`` applies the rules the rest of the project
applies to the same text, line by line and all or nothing: a user message no longer than the web accepts,
session ids the API can route, and text Postgres can store (no NUL, no unpaired surrogate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from context_assistant.cli import main
from context_assistant.core.errors import InvalidInput
from context_assistant.core.text import check_message, check_session_id, check_text
from context_assistant.storage.memory import ConversationStore


@pytest.fixture
def cli(config_file: Path, pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--config", str(config_file), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def line(content: str = "hello", role: str = "user", session_id: str = "s-1", **extra: Any) -> str:
    row = {
        "session_id": session_id,
        "user_id": "ana",
        "role": role,
        "content": content,
        "timestamp": "2026-03-01T10:00:00Z",
        **extra,
    }
    return json.dumps(row) + "\n"


def test_a_user_message_longer_than_the_web_accepts_is_refused_with_its_line(  # a 60 MB one too
    cli: Any, tmp_path: Path, store: ConversationStore, config: Any
) -> None:
    limit = config.web.max_message_chars
    path = tmp_path / "big.jsonl"
    path.write_text(line("fine") + line("x" * (limit + 1)) + line("y" * 60_000_000), encoding="utf-8")
    code, _, err = cli("memory", "import", str(path))
    assert code == 1 and "nothing imported: 2 problem(s)" in err
    assert (
        f"line 2: 'content': the message is {limit + 1} characters; the limit is {limit} (web.max_message_chars)"
        in err
    )
    assert "line 3: 'content': the message is 60000000 characters" in err
    assert store.list_sessions("ana") == []  # all or nothing

    # An assistant's reply is not a user's message: an export of a long answer imports back unchanged.
    path.write_text(line("question") + line("z" * (limit + 10), role="assistant"), encoding="utf-8")
    code, out, err = cli("memory", "import", str(path), "--json")
    assert code == 0, err
    assert json.loads(out) == {"imported": 2, "skipped": 0, "sessions_created": 1}


@pytest.mark.parametrize(
    ("session_id", "problem"),
    [
        ("team/ana", "contains a slash, which cannot be part of a URL path segment (/api/sessions/{id})"),
        ("back\\slash", "contains a slash"),
        ("..", "is '.', '..'"),
        ("tab\there", "contains a control character"),
        (" padded", "starts or ends with white space"),
    ],
)
def test_session_ids_the_api_cannot_route_are_refused(
    cli: Any, tmp_path: Path, session_id: str, problem: str
) -> None:
    path = tmp_path / "ids.jsonl"
    path.write_text(line(session_id="ok-1") + line(session_id=session_id), encoding="utf-8")
    code, _, err = cli("memory", "import", str(path))
    assert code == 1 and "line 2: 'session_id'" in err and problem in err, err


def test_nul_and_unpaired_surrogates_are_a_line_not_a_traceback(
    cli: Any, tmp_path: Path, store: ConversationStore
) -> None:
    path = tmp_path / "odd.jsonl"
    lines = [
        line("fine"),
        line("before\u0000after"),
        '{"session_id": "s-1", "user_id": "ana", "role": "user", "content": "half \\ud83d pair", '
        '"timestamp": "2026-03-01T10:00:00Z"}\n',
        line("ok", metadata={"note": "nul\u0000here"}),
        '{"session_id": "s-2", "user_id": "\\udc00", "role": "user", "content": "x", '
        '"timestamp": "2026-03-01T10:00:00Z"}\n',
        line(session_id="nul\u0000id"),
    ]
    path.write_text("".join(lines), encoding="utf-8")
    code, _, err = cli("memory", "import", str(path))
    assert code == 1 and "Traceback" not in err
    assert "nothing imported: 5 problem(s)" in err
    assert "line 2: 'content' contains a NUL character (at position 6), which cannot be stored" in err
    assert (
        "line 3: 'content' contains an unpaired surrogate (U+D83D at position 5), which is not valid Unicode"
        in err
    )
    assert "line 4: 'metadata' contains a NUL character" in err
    assert "line 5: 'user_id' contains an unpaired surrogate (U+DC00 at position 0)" in err
    assert "line 6: 'session_id'" in err and "NUL" in err
    assert store.list_sessions("ana") == []


def test_the_shared_text_checks() -> None:
    """core.text is what the web routes, the CLI and import share (one rule, one wording)."""
    check_text("message", "plain ✓ text 🚀")
    with pytest.raises(InvalidInput, match="'message' contains a NUL character"):
        check_text("message", "a\x00b")
    with pytest.raises(InvalidInput, match="'title' contains an unpaired surrogate"):
        check_text("title", {"nested": ["\ud800"]})
    with pytest.raises(InvalidInput, match="the message is empty"):
        check_message("   ", 10)
    with pytest.raises(InvalidInput, match="the limit is 10"):
        check_message("x" * 11, 10)
    with pytest.raises(InvalidInput, match="'message' contains a NUL"):
        check_message("a\x00", 10)
    check_session_id("0f3c9a1e2b7d4c5e8f6a1b2c3d4e5f60")
    with pytest.raises(InvalidInput, match="slash"):
        check_session_id("a/b")
    with pytest.raises(InvalidInput, match="longer than 255"):
        check_session_id("s" * 256)


def test_a_session_cannot_be_created_with_an_unroutable_id(store: ConversationStore) -> None:
    with pytest.raises(InvalidInput, match="slash"):
        store.create_session("ana", session_id="a/b")


def test_a_line_with_several_problems_lists_them_all_and_the_count_is_of_problems(
    cli: Any, tmp_path: Path, store: ConversationStore
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        line("fine")
        + json.dumps({"session_id": "a/b", "user_id": "ana", "role": "bot", "content": "hi", "timestamp": "soon"})
        + "\n"
        + line("also fine", role="narrator"),
        encoding="utf-8",
    )
    code, _, err = cli("memory", "import", str(path))
    assert code == 1 and "nothing imported: 4 problem(s) on 2 line(s)" in err
    (two,) = [row for row in err.splitlines() if row.startswith("line 2: ")]
    assert "'session_id' 'a/b'" in two and "'role' 'bot' is not one of" in two and "'timestamp' 'soon'" in two
    assert "line 3: 'role' 'narrator' is not one of" in err
    assert store.list_sessions("ana") == []
