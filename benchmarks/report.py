"""The results table: every figure as a median with min/max over repeated runs, and the ratio ours / theirs.

A :class:`Measure` is one line: the values of each run for our side and (when the peer has the feature)
LangChain's, its unit and whether lower or higher is better. :class:`Report` renders them as a Markdown table
(ready for the README) with the date, the machine, the load, the Postgres server and the package versions,
and as JSON with every raw value.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from benchmarks.common import cpu_reference, machine

LOWER, HIGHER = "lower", "higher"
SAME_WITHIN = 0.05  # ratios within 5% of 1 are called even


@dataclass
class Measure:
    section: str  # memory | indexing | retrieval | turn | import | web
    label: str
    unit: str
    better: str  # LOWER or HIGHER
    ours: list[float]
    theirs: list[float] | None = None  # None: the peer has no such feature (ours only)
    note: str = ""  # a footnote for this line (what exactly was measured, caveats)
    ours_ok: bool | None = None  # end state checked and exactly right (None: not a state-changing step)
    theirs_ok: bool | None = None

    def __post_init__(self) -> None:
        if self.better not in (LOWER, HIGHER):
            raise ValueError(f"better must be {LOWER!r} or {HIGHER!r}, got {self.better!r}")

    @property
    def ratio(self) -> float | None:
        """ours / theirs of the medians (None when there is no peer figure or it is zero)."""
        if not self.ours or not self.theirs:
            return None
        theirs = statistics.median(self.theirs)
        return statistics.median(self.ours) / theirs if theirs else None

    @property
    def paired_ratios(self) -> list[float] | None:
        """ours / theirs run by run, when both sides ran the same runs (interleaved, same load); else None."""
        if not self.ours or not self.theirs or len(self.ours) != len(self.theirs) or len(self.ours) < 2:
            return None
        if any(t == 0 for t in self.theirs):
            return None
        return [o / t for o, t in zip(self.ours, self.theirs, strict=True)]

    def verdict(self) -> str:
        """Who is ahead on this line, reading the ratio the right way round.

        With paired runs a side is called ahead only when every run agrees (by more than ``SAME_WITHIN``);
        otherwise the line is "even" with the spread of the per-run ratios, so one lucky run on a loaded
        machine cannot make a verdict."""
        ratio = self.ratio
        if ratio is None:
            return ""
        paired = self.paired_ratios
        if paired is not None:
            ours_wins = [self._ours_ahead(r) for r in paired]
            if all(w is True for w in ours_wins) or all(w is False for w in ours_wins):
                ratio = statistics.median(paired)
            else:
                return f"even ({min(paired):.2f}–{max(paired):.2f})"
        if abs(ratio - 1) <= SAME_WITHIN:
            return "even"
        factor = 1 / ratio if ratio < 1 else ratio
        return f"{'ours' if self._ours_ahead(ratio) else 'theirs'} {factor:.1f}x"

    def _ours_ahead(self, ratio: float) -> bool | None:
        """True: ours ahead by this ratio; False: theirs; None: within ``SAME_WITHIN`` of even."""
        if abs(ratio - 1) <= SAME_WITHIN:
            return None
        return ratio < 1 if self.better == LOWER else ratio > 1


def spread(values: list[float] | None, digits: int = 3) -> str:
    """``median (min–max)`` with a precision that fits the magnitude; ``—`` for no values."""
    if not values:
        return "—"
    med, lo, hi = statistics.median(values), min(values), max(values)
    if len(values) == 1:
        return _num(med, digits)
    return f"{_num(med, digits)} ({_num(lo, digits)}–{_num(hi, digits)})"


def _num(value: float, digits: int) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.{digits}g}"


def _check(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗ WRONG")


def package_versions(names: tuple[str, ...]) -> str:
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


PACKAGES = (
    "context-assistant",
    "langchain-postgres",
    "langchain-core",
    "langchain-classic",
    "pgvector",
    "psycopg",
    "sqlalchemy",
    "sentence-transformers",
    "torch",
)


@dataclass
class Report:
    command: str
    size: str
    server: str = ""
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    finished: datetime | None = None
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)
    cpu: str = field(default_factory=cpu_reference)
    load_after: tuple[float, float, float] | None = None
    measures: list[Measure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    peers: str = ""  # why the peer side is missing, or "" when it ran

    def add(self, measure: Measure) -> Measure:
        self.measures.append(measure)
        return measure

    def finish(self) -> None:
        self.finished = datetime.now(timezone.utc)
        self.load_after = os.getloadavg()

    def header(self) -> list[str]:
        load = ", ".join(f"{x:.2f}" for x in self.load_before)
        lines = [
            f"Run {self.started:%Y-%m-%d %H:%M} UTC"
            + (f" ({(self.finished - self.started).total_seconds() / 60:.0f} min)" if self.finished else "")
            + f": `{self.command}` ({self.size} size)",
            f"Machine: {machine()}; load average before {load}"
            + (f", after {', '.join(f'{x:.2f}' for x in self.load_after)}" if self.load_after else ""),
            f"CPU: {self.cpu}",
            f"Server: {self.server}",
            f"Packages: {package_versions(PACKAGES)}",
        ]
        if self.peers:
            lines.append(f"Peers: not measured — {self.peers}")
        return lines

    def table(self) -> list[str]:
        rows = [
            "| | measure | unit | better | ours | LangChain | ours / theirs | ahead | runs |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        marks: list[str] = []
        for m in self.measures:
            mark = ""
            if m.note:
                marks.append(m.note)
                mark = f" [{len(marks)}]"
            runs = str(len(m.ours))
            if m.theirs and len(m.theirs) != len(m.ours):
                runs += f"/{len(m.theirs)}"
            ratio = m.ratio
            rows.append(
                f"| {m.section} | {m.label}{mark} | {m.unit} | {m.better} "
                f"| {spread(m.ours)}{_check(m.ours_ok)} "
                f"| {spread(m.theirs) if m.theirs is not None else 'n/a'}{_check(m.theirs_ok)} "
                f"| {f'{ratio:.2f}' if ratio is not None else '—'} | {m.verdict()} | {runs} |"
            )
        footnotes = [f"[{i}] {text}" for i, text in enumerate(marks, start=1)]
        return [*rows, "", *footnotes] if footnotes else rows

    def render(self) -> str:
        parts = [*self.header(), "", *self.table()]
        if self.notes:
            parts += ["", *(f"- {note}" for note in self.notes)]
        parts += [
            "",
            "Each cell: median (min–max) over the runs of that line; latency lines are per-run percentiles "
            "(p50/p95 of one run's queries), then the median of those over runs. ✓ = end state checked "
            "exactly right; ✗ = it was not. n/a = the peer has no such feature. With two or more runs of both "
            'sides, "ahead" needs every run\'s ours/theirs ratio to agree; otherwise "even" with the range '
            "of the per-run ratios.",
        ]
        return "\n".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "size": self.size,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "machine": machine(),
            "cpu": self.cpu,
            "load_before": self.load_before,
            "load_after": self.load_after,
            "server": self.server,
            "packages": package_versions(PACKAGES),
            "peers": self.peers,
            "measures": [
                asdict(m) | {"ratio": m.ratio, "paired_ratios": m.paired_ratios, "ahead": m.verdict()}
                for m in self.measures
            ],
            "notes": self.notes,
        }

    def save(self, path: str) -> None:
        with open(path, "w") as out:
            json.dump(self.to_json(), out, indent=2)
