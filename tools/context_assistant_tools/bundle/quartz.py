"""Check a Quartz cron expression (what Databricks job schedules use) before the Jobs API rejects it.

Quartz differs from Unix cron: a leading seconds field, an optional trailing year, and exactly one of
day-of-month / day-of-week must be ``?``. ``check_quartz`` returns the first problem as a sentence, or None.
"""

from __future__ import annotations

import re

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]

# name, lowest, highest, names (value = index + offset), extra tokens allowed in the field
_FIELDS = (
    ("seconds", 0, 59, None, ()),
    ("minutes", 0, 59, None, ()),
    ("hours", 0, 23, None, ()),
    ("day-of-month", 1, 31, None, ("?", "L", "W")),
    ("month", 1, 12, MONTHS, ()),
    ("day-of-week", 1, 7, DAYS, ("?", "L", "#")),
    ("year", 1970, 2199, None, ()),
)


def check_quartz(expression: str) -> str | None:
    """None if ``expression`` is a valid Quartz cron expression, else what is wrong with it."""
    fields = expression.split()
    if len(fields) not in (6, 7):
        return (
            f"has {len(fields)} fields; a Quartz cron expression has 6 or 7 "
            "(seconds minutes hours day-of-month month day-of-week [year]), e.g. '0 0 2 * * ?'"
        )
    for text, (name, low, high, names, extras) in zip(fields, _FIELDS, strict=False):
        problem = _check_field(text, name, low, high, names, extras)
        if problem:
            return problem
    day_of_month, day_of_week = fields[3], fields[5]
    if (day_of_month == "?") == (day_of_week == "?"):
        return "exactly one of day-of-month and day-of-week must be '?' (e.g. '0 0 2 * * ?')"
    return None


def _check_field(
    text: str, name: str, low: int, high: int, names: list[str] | None, extras: tuple[str, ...]
) -> str | None:
    if text == "?":
        return None if "?" in extras else f"{name} cannot be '?'"
    for part in text.split(","):
        problem = _check_part(part.upper(), name, low, high, names, extras)
        if problem:
            return f"{name} field {text!r}: {problem}"
    return None


def _value(token: str, low: int, high: int, names: list[str] | None) -> int | None:
    if names and token in names:
        return names.index(token) + low
    if token.isdigit():
        number = int(token)
        return number if low <= number <= high else None
    return None


def _check_part(
    part: str, name: str, low: int, high: int, names: list[str] | None, extras: tuple[str, ...]
) -> str | None:
    if not part:
        return "empty list item"
    if "L" in extras and re.fullmatch(r"L(-\d+)?|LW|\d{0,2}L", part):
        return None
    if "W" in extras and re.fullmatch(r"\d{1,2}W", part):
        return None if 1 <= int(part[:-1]) <= 31 else f"{part!r} is out of range"
    if "#" in extras and "#" in part:
        day, _, nth = part.partition("#")
        if _value(day, low, high, names) is None or nth not in {"1", "2", "3", "4", "5"}:
            return f"{part!r} is not day#n with n from 1 to 5"
        return None
    base, _, step = part.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        return f"step {step!r} is not a positive number"
    if base == "*":
        return None
    start, dash, end = base.partition("-")
    for token in (start, end) if dash else (start,):
        if _value(token, low, high, names) is None:
            allowed = f"{low}-{high}" + (f" or {names[0]}-{names[-1]}" if names else "")
            return f"{token!r} is not in {allowed}"
    return None
