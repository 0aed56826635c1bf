"""Tables as Markdown, the way every parser writes them: cells laid out on a grid with row and column spans
expanded (a spanning cell's text repeated in every position it covers, so each row reads complete on its
own), then one Markdown table whose first row is the header. HTML and DOCX tables, and the tables
``ai_parse_document`` answers as HTML, all end up here.
"""

from __future__ import annotations

from typing import Any

MAX_SPAN = 1000


def cell_span(value: Any) -> int:
    """A ``rowspan``/``colspan``/``gridSpan`` value as a count from 1 to :data:`MAX_SPAN` (junk counts 1)."""
    try:
        return max(1, min(int(str(value).strip() or 1), MAX_SPAN))
    except ValueError:
        return 1


def markdown_cell(text: str) -> str:
    """Cell text that cannot break a Markdown table row."""
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(grid: list[list[str]]) -> str:
    """Rows of cells as a Markdown table; the first row is the header (Markdown tables need one)."""
    width = max((len(row) for row in grid), default=0)
    if not width:
        return ""
    lines = []
    for index, row in enumerate(grid):
        cells = [*row, *[""] * (width - len(row))]
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append("|" + "|".join([" --- "] * width) + "|")
    return "\n".join(lines)


def expand_spans(rows: list[list[tuple[str, int, int]]]) -> list[list[str]]:
    """Lay ``(text, rowspan, colspan)`` cells out on a grid, repeating a spanning cell's text in every
    position it covers (so each row reads complete on its own, as a reader of the table sees it)."""
    grid: dict[tuple[int, int], str] = {}
    for r, cells in enumerate(rows):
        c = 0
        for text, rowspan, colspan in cells:
            while (r, c) in grid:
                c += 1
            for dr in range(min(rowspan, len(rows) - r)):
                for dc in range(colspan):
                    grid[(r + dr, c + dc)] = text
            c += colspan
    width = max((c for _, c in grid), default=-1) + 1
    return [[grid.get((r, c), "") for c in range(width)] for r in range(len(rows))]
