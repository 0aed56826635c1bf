"""The text of a cited passage, for sources of answers reloaded from memory.

Replies are stored with their sources' ids, paths and scores but not their text (the index already holds
it), so the chat page asks for the text when someone expands a source of an older answer. The pgvector
index is read directly; the Vector Search backend has no lookup by id here, so there the text is only shown
for answers given in the current page view (it comes with the streamed answer).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from .index_pgvector import CHUNKS_TABLE


class PassageUnavailable(LookupError):
    pass


def passage(services: Any, chunk_id: str) -> dict[str, Any]:
    """``{chunk_id, path, heading, page, text}`` of an indexed chunk, or :class:`PassageUnavailable`."""
    config = services.config
    if not config.rag.enabled:
        raise PassageUnavailable("document search is turned off (rag.enabled: false)")
    if config.rag.backend != "pgvector":
        raise PassageUnavailable(
            "the passage text of earlier answers is not available with the vector_search backend"
        )
    with services.db.connection() as conn:
        try:
            row = conn.execute(
                sql.SQL("SELECT chunk_id, path, heading, page, text FROM {} WHERE chunk_id = %s").format(
                    sql.Identifier(CHUNKS_TABLE)
                ),
                (chunk_id,),
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
    if row is None:
        raise PassageUnavailable(
            f"passage {chunk_id} is no longer in the document index (its document changed or was removed)"
        )
    chunk_id, path, heading, page, text = row
    return {"chunk_id": chunk_id, "path": path, "heading": heading or "", "page": page, "text": text}


EXAMPLE_HEADING_MAX_CHARS = 80


def example_questions(services: Any, limit: int = 3) -> list[dict[str, Any]]:
    """Up to ``limit`` questions for the chat page's empty state, each from a different indexed document:
    ``{question, path, heading}``. A document's headings say what it covers, so a question about one of
    them shows a new user what can be asked (and finds that document). Documents without headings are
    used only to fill up, by file name. Chosen at random each time, so the page shows the breadth of the
    documents over visits. Empty when document search is off or the index is not in this Postgres."""
    config = services.config
    if not config.rag.enabled or config.rag.backend != "pgvector":
        return []
    query = sql.SQL(
        """SELECT path, heading FROM (
               SELECT DISTINCT ON (path) path, heading FROM {}
               WHERE char_length(heading) <= %s
               ORDER BY path, heading = '', random()
           ) one_per_document
           ORDER BY heading = '', random() LIMIT %s"""
    ).format(sql.Identifier(CHUNKS_TABLE))
    with services.db.connection() as conn:
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
