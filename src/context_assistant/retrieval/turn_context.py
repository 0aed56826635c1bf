"""What recall indexes for one conversation turn: the turn in its conversation, not a lone message.

A remembered fact is often spread over a question and its answer ("What did you do yesterday?" / "Went to
the support group"), told relative to a date ("yesterday") and asked about by name ("When did Caroline go
to ...?"). So each turn is indexed as a small document with fields:

* **text** -- the message itself (BM25 weight A, full weight);
* **speaker** -- ``metadata.speaker`` (or ``metadata.name``) when the message carries one, e.g. imported
  transcripts; live chat messages have none (their speaker is the user or the assistant);
* **date** -- the message's day written out ("Monday 8 May 2023"), and **temporal cues**: relative
  expressions in the text resolved against that day ("yesterday" -> "7 May 2023", "last year" -> "2022"),
  so a question naming a date, month or year finds turns that only said "yesterday";
* **context** -- the neighbouring turns of the same session (:data:`CONTEXT_BEFORE` before,
  :data:`CONTEXT_AFTER` after), BM25 weight D, so they help a turn match without outranking the turns that
  say it.

The embedding reads the turn (with its speaker) followed by its neighbours; the date is left to BM25.

Neighbours change when messages arrive, so :func:`affected_neighbours` names the turns whose context a new
message changes; recall re-indexes them with it (incremental: a new message re-embeds at most
``CONTEXT_BEFORE + CONTEXT_AFTER`` others).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

CONTEXT_BEFORE = 1
CONTEXT_AFTER = 1
CONTEXT_CHARS = 300  # of each neighbour
TEXT_CHARS = 2000  # of the turn itself, for the embedding (the model truncates anyway); BM25 reads it all
VERSION = "ctx2"  # recorded with the turn index: a change of what is indexed rebuilds it
BM25_WEIGHTS = {"A": 1.0, "B": 0.6, "C": 0.5, "D": 0.25}  # text, speaker, date/cues, context


@dataclass(frozen=True)
class Turn:
    message_id: int
    session_id: str
    role: str
    content: str
    timestamp: datetime
    metadata: Mapping[str, Any]

    @property
    def speaker(self) -> str:
        for key in ("speaker", "name"):
            value = self.metadata.get(key) if isinstance(self.metadata, Mapping) else None
            if isinstance(value, str) and value.strip():
                return " ".join(value.split())[:100]
        return ""


@dataclass(frozen=True)
class TurnDocument:
    """The fields of one turn as indexed: ``embed`` for the model, the rest for weighted BM25."""

    embed: str
    text: str
    speaker: str
    when: str
    context: str


def day_words(moment: datetime) -> str:
    """ "Monday 8 May 2023": the forms people ask with (weekday, day, month name, year)."""
    return f"{moment:%A} {moment.day} {moment:%B} {moment.year}"


def _day(value: date) -> str:
    return f"{value.day} {value:%B} {value.year}"


_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "few": 3, "couple": 2}
_CUES = re.compile(
    r"\b(?:(yesterday|today|tonight|tomorrow|this morning|last night)"
    r"|(last|next|this) (week|weekend|month|year|summer|winter|spring|fall|autumn|monday|tuesday|wednesday"
    r"|thursday|friday|saturday|sunday)"
    r"|(\d+|a|an|one|two|three|four|five|six|few|a few|couple|a couple of) (day|week|month|year)s? ago)\b",
    re.IGNORECASE,
)
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def temporal_cues(text: str, moment: datetime) -> list[str]:
    """Relative time expressions in ``text`` resolved against ``moment`` (the message's time), as words."""
    today = moment.date()
    found: list[str] = []
    for match in _CUES.finditer(text):
        single, which, unit, count, ago_unit = (match.group(i) for i in range(1, 6))
        if single:
            word = single.lower()
            offset = {"yesterday": -1, "tomorrow": 1, "last night": -1}.get(word, 0)
            found.append(_day(today + timedelta(days=offset)))
        elif which:
            which, unit = which.lower(), unit.lower()
            step = {"last": -1, "next": 1, "this": 0}[which]
            if unit in ("week", "weekend"):
                found.append(f"week of {_day(today + timedelta(weeks=step))}")
            elif unit == "month":
                month = (today.month - 1 + step) % 12 + 1
                year = today.year + (today.month - 1 + step) // 12
                found.append(f"{date(year, month, 1):%B} {year}")
            elif unit == "year":
                found.append(str(today.year + step))
            elif unit in _WEEKDAYS:
                delta = (_WEEKDAYS.index(unit) - today.weekday()) % 7
                delta = delta - 7 if step < 0 and delta >= 0 else delta
                found.append(_day(today + timedelta(days=delta or (7 * step))))
            else:  # a season: its year is enough
                found.append(f"{unit} {today.year + (step if step < 0 and unit != 'winter' else 0)}")
        elif count and ago_unit:
            n = int(count) if count.isdigit() else _NUMBERS.get(count.lower().split()[-1].rstrip("of").strip(), 2)
            n = max(1, min(n, 100))
            unit = ago_unit.lower()
            if unit == "day":
                found.append(_day(today - timedelta(days=n)))
            elif unit == "week":
                found.append(f"week of {_day(today - timedelta(weeks=n))}")
            elif unit == "month":
                months = today.year * 12 + today.month - 1 - n
                found.append(f"{date(months // 12, months % 12 + 1, 1):%B} {months // 12}")
            else:
                found.append(str(today.year - n))
    return list(dict.fromkeys(found))


def build_document(turn: Turn, before: Sequence[Turn], after: Sequence[Turn]) -> TurnDocument:
    """The indexed fields of ``turn`` with its neighbours (oldest first in ``before``, nearest first in
    ``after``)."""
    cues = temporal_cues(turn.content, turn.timestamp)
    when = " ".join([day_words(turn.timestamp), *cues])
    context_parts = [_clip(t.content, CONTEXT_CHARS) for t in (*before, *after)]
    own = _clip(turn.content, TEXT_CHARS)
    if turn.speaker and not turn.content.startswith(turn.speaker):
        own = f"{turn.speaker}: {own}"
    # The turn first, then its neighbours: a mean-pooled embedding leans on what comes first less than on
    # what is repeated, but a leading date or question drowns a short turn (measured on LoCoMo: the turn
    # first found 0.57 of the evidence alone, date and previous turn first 0.44). Dates are a BM25 field.
    embed_parts = [own, *(_clip(t.content, CONTEXT_CHARS) for t in (*before, *after))]
    return TurnDocument(
        embed="\n".join(embed_parts),
        text=turn.content,
        speaker=turn.speaker,
        when=when,
        context="\n".join(context_parts),
    )


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"
