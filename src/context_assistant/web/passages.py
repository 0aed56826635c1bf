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

from ..core.errors import NotFound
from ..retrieval.pgvector import CHUNKS_TABLE


class PassageUnavailable(NotFound):
    """The passage text cannot be shown: not in the index (any more), or not kept by this backend."""


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
