"""Writing embedded chunks into the pgvector chunk table: COPY into a temporary staging table, then one
upsert that also computes each row's keyword index columns (the same text as embedded), then the documents'
dropped chunks deleted. Kept apart from :mod:`.pgvector`, which decides what to write and when to commit."""

from __future__ import annotations

import psycopg
from psycopg import sql

from ..storage.bm25 import TEXT_SEARCH_CONFIG
from ..storage.bm25_tiers import index_columns_sql, tier_params, written_reference
from .sync import DocumentChange, SourceChunk

_STAGE_COLUMNS = ("chunk_id", "path", "chunk_index", "heading", "page", "text", "content_hash", "embedding")
_STAGE_TYPES = ("text", "text", "int4", "text", "int4", "text", "text", "vector")


def write_chunk_rows(
    conn: psycopg.Connection,
    space: str,
    table: str,
    written: list[tuple[DocumentChange, list[list[float]]]],
    by_id: dict[str, SourceChunk],
) -> None:
    """Upsert the documents' embedded chunks and delete their dropped ones, in the open transaction."""
    import numpy as np

    conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS ca_stage_chunks (
               chunk_id text, path text, chunk_index int, heading text, page int, text text,
               content_hash text, embedding vector) ON COMMIT DELETE ROWS"""
    )
    conn.execute("TRUNCATE ca_stage_chunks")  # a big document writes several slices in one transaction
    with conn.cursor() as cur:
        with cur.copy(f"COPY ca_stage_chunks ({', '.join(_STAGE_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(_STAGE_TYPES))
            for change, vectors in written:
                for chunk_id, vector in zip(change.upserts, vectors, strict=True):
                    c = by_id[chunk_id]
                    copy.write_row(
                        (
                            c.chunk_id,
                            c.path,
                            c.chunk_index,
                            c.heading or "",
                            c.page,
                            c.text,
                            c.content_hash,
                            np.asarray(vector, dtype=np.float32),
                        )
                    )
        # The same text that is embedded: a chunk that starts with its heading path is not given it twice.
        tsv = (
            f"to_tsvector('{TEXT_SEARCH_CONFIG}', CASE WHEN s.heading = '' OR starts_with(s.text, s.heading) "
            "THEN s.text ELSE s.heading || E'\\n' || s.text END)"
        )
        a0 = written_reference(conn, space, "v.tsv", f"FROM ca_stage_chunks s, {tsv} v(tsv)")
        cur.execute(
            sql.SQL(
                "INSERT INTO {table} AS r (chunk_id, path, chunk_index, heading, page, text, content_hash, "
                "tsv, doc_len, embedding, indexed_at) "
                "SELECT s.chunk_id, s.path, s.chunk_index, s.heading, s.page, s.text, s.content_hash, "
                "{columns}, s.embedding, now() "
                "FROM ca_stage_chunks s CROSS JOIN LATERAL (SELECT " + tsv + " AS tsv) v "
                "ORDER BY s.chunk_id "
                "ON CONFLICT (chunk_id) DO UPDATE SET path = EXCLUDED.path, chunk_index = EXCLUDED.chunk_index, "
                "heading = EXCLUDED.heading, page = EXCLUDED.page, text = EXCLUDED.text, "
                "content_hash = EXCLUDED.content_hash, tsv = EXCLUDED.tsv, doc_len = EXCLUDED.doc_len, "
                "embedding = EXCLUDED.embedding, indexed_at = EXCLUDED.indexed_at"
            ).format(table=sql.Identifier(table), columns=sql.SQL(index_columns_sql("v.tsv"))),
            {**tier_params(), "a0": a0},
        )
        deletes = [chunk_id for change, _ in written for chunk_id in change.deletes]
        if deletes:
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE chunk_id = ANY(%s)").format(sql.Identifier(table)),
                (deletes,),
            )
