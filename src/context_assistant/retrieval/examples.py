"""Example questions for a new conversation, drawn from the indexed documents' headings.

A document's headings say what it covers, so a question about one of them shows a new user what can be asked
(and finds that document). One question per document; documents without headings only fill up, by file
name. Chosen at random each time, so the chat page shows the breadth of the documents over visits.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ..storage.db import Database
from .pgvector import CHUNKS_TABLE

EXAMPLE_HEADING_MAX_CHARS = 80


def example_questions(db: Database, limit: int = 3) -> list[dict[str, Any]]:
    """Up to ``limit`` questions, each from a different document of the pgvector index in ``db``:
    ``{question, path, heading}``. Empty when the index has not been built yet."""
    query = sql.SQL(
        """SELECT path, heading FROM (
               SELECT DISTINCT ON (path) path, heading FROM {}
               WHERE char_length(heading) <= %s
               ORDER BY path, heading = '', random()
           ) one_per_document
           ORDER BY heading = '', random() LIMIT %s"""
    ).format(sql.Identifier(CHUNKS_TABLE))
    with db.connection() as conn:
        try:
            rows = conn.execute(query, (EXAMPLE_HEADING_MAX_CHARS * 4, limit)).fetchall()
        except psycopg.errors.UndefinedTable:
            return []
    return [{"question": _question(path, heading), "path": path, "heading": heading} for path, heading in rows]


def _question(path: str, heading: str) -> str:
    parts = [part.strip() for part in heading.split(" > ") if part.strip()]
    if not parts:
        return f"What is in {path.rsplit('/', 1)[-1]}?"
    leaf = _clip(parts[-1])
    if len(parts) == 1:
        return f"What should I know about “{leaf}”?"
    return f"What should I know about “{leaf}” in {_clip(parts[0])}?"


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_HEADING_MAX_CHARS else text[: EXAMPLE_HEADING_MAX_CHARS - 1] + "…"


__all__ = ["example_questions"]
