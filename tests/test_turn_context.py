"""What recall indexes per turn: the day written out, relative dates resolved, speaker and neighbours."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from context_assistant.retrieval.turn_context import Turn, build_document, day_words, temporal_cues

MAY_8 = datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)  # a Monday


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I went there yesterday!", ["7 May 2023"]),
        ("Today was great, tomorrow too", ["8 May 2023", "9 May 2023"]),
        ("We moved last year", ["2022"]),
        ("It starts next month", ["June 2023"]),
        ("I painted it last month", ["April 2023"]),
        ("two weeks ago I ran", ["week of 24 April 2023"]),
        ("3 days ago", ["5 May 2023"]),
        ("a few years ago", ["2020"]),
        ("last Friday we met", ["5 May 2023"]),
        ("next weekend we go", ["week of 15 May 2023"]),
        ("nothing temporal here", []),
    ],
)
def test_temporal_cues_resolve_against_the_message_day(text: str, expected: list[str]) -> None:
    assert temporal_cues(text, MAY_8) == expected


def test_months_wrap_across_years() -> None:
    december = datetime(2023, 12, 20, tzinfo=timezone.utc)
    assert temporal_cues("see you next month", december) == ["January 2024"]
    assert temporal_cues("back in last month", datetime(2024, 1, 3, tzinfo=timezone.utc)) == ["December 2023"]


def test_document_fields() -> None:
    def turn(i: int, text: str, speaker: str = "") -> Turn:
        return Turn(i, "s", "user", text, MAY_8, {"speaker": speaker} if speaker else {})

    doc = build_document(
        turn(2, "I went yesterday.", "Caroline"), [turn(1, "What did you do?")], [turn(3, "Cool!")]
    )
    assert day_words(MAY_8) == "Monday 8 May 2023"
    assert doc.when == "Monday 8 May 2023 7 May 2023"
    assert doc.speaker == "Caroline" and doc.text == "I went yesterday."
    assert doc.context == "What did you do?\nCool!"
    assert doc.embed == "Caroline: I went yesterday.\nWhat did you do?\nCool!"  # the turn first
    # a transcript line that already starts with its speaker is not prefixed twice
    assert "Caroline: Caroline:" not in build_document(turn(4, "Caroline: hi", "Caroline"), [], []).embed
