"""BM25 keyword search in plain SQL, over any vector space's table (chunks and conversation turns).

Real BM25 (k1=1.2, b=0.75, Lucene's idf ``ln(1 + (N - df + 0.5) / (df + 0.5))``) computed in plain SQL, so
it runs on Lakebase where no BM25 extension can be assumed: candidates are the rows whose ``tsv`` matches
the OR of the query's lexemes (a GIN index scan); term frequencies come from the tsvector's positions.
``bm25_terms`` / ``bm25_stats`` (migration 3) hold the document frequency per lexeme and the document
count/total length per space, kept exact by statement-level triggers on the space's table (same
transaction as the rows; see :func:`context_assistant.storage.vector_spaces.reset_space`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import psycopg

BM25_K1 = 1.2
BM25_B = 0.75
TEXT_SEARCH_CONFIG = "english"
BM25_CANDIDATE_BUDGET = 5000  # rows (by document frequency) scored in the first, pruned phase of BM25


def tsquery_or(lexemes: Sequence[str]) -> str:
    """A tsquery (text form) matching any of these already-normalised lexemes."""
    return " | ".join("'" + lex.replace("\\", "\\\\").replace("'", "''") + "'" for lex in lexemes)


def bm25_rank(
    conn: psycopg.Connection,
    space: str,
    table: str,
    key: str,
    where: str,
    params: dict[str, Any],
    query: str,
    limit: int,
) -> list[tuple[Any, float]]:
    """The top ``limit`` rows of ``table`` (alias ``c``, filtered by ``where`` with ``params``) by BM25 for
    ``query``: ``(key, score)`` best first, exactly as if every matching row were scored.

    Rows are scored from their ``tsv`` (term frequency = number of positions of the lexeme) and ``doc_len``,
    with ``df`` per lexeme and the document count and average length of ``space`` from ``bm25_terms`` /
    ``bm25_stats``. Scoring every row that contains a very common query term is what makes naive SQL BM25
    slow, so this runs in two phases (the MaxScore idea): first only rows containing one of the query's
    rarer terms (together at most :data:`BM25_CANDIDATE_BUDGET` rows by document frequency) are scored; a
    row containing none of them can score at most ``(k1 + 1) * sum(idf)`` of the remaining common terms,
    so if the ``limit``-th score already reaches that bound the answer is exact. Otherwise every row
    matching any query term is scored.
    """
    stats = conn.execute("SELECT doc_count, total_length FROM bm25_stats WHERE space = %s", (space,)).fetchone()
    if not stats or not stats[0]:
        return []
    n, total = float(stats[0]), float(stats[1])
    avgdl = max(total / n, 1.0)
    terms = conn.execute(
        f"""SELECT t.lexeme, t.df FROM bm25_terms t
            WHERE t.space = %s AND t.lexeme = ANY (tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', %s)))
            ORDER BY t.df, t.lexeme""",
        (space, query),
    ).fetchall()
    if not terms:
        return []
    lexemes = [lexeme for lexeme, _ in terms]
    idfs = [math.log(1 + (n - df + 0.5) / (df + 0.5)) for _, df in terms]
    essential = 1
    budget = terms[0][1]
    while essential < len(terms) and budget + terms[essential][1] <= BM25_CANDIDATE_BUDGET:
        budget += terms[essential][1]
        essential += 1
    scoring = {**params, "lexemes": lexemes, "idfs": idfs, "avgdl": avgdl, "limit": limit}
    sql_text = f"""
        SELECT c.{key}, sum(
                   t.idf * f.tf * ({BM25_K1} + 1)
                   / (f.tf + {BM25_K1} * (1 - {BM25_B} + {BM25_B} * c.doc_len / %(avgdl)s))) AS score
        FROM {table} c
        -- Only the query's lexemes of the row, with their positions: deleting "every other lexeme" in C is
        -- far cheaper than unnesting the whole tsvector and joining.
        CROSS JOIN LATERAL unnest(ts_delete(c.tsv, tsvector_to_array(ts_delete(c.tsv, %(lexemes)s::text[]))))
            AS u(lexeme, positions, weights)
        JOIN unnest(%(lexemes)s::text[], %(idfs)s::float8[]) AS t(lexeme, idf) ON t.lexeme = u.lexeme
        CROSS JOIN LATERAL (SELECT coalesce(array_length(u.positions, 1), 1)::float8 AS tf) f
        WHERE c.tsv @@ %(candidates)s::tsquery AND {where}
        GROUP BY c.{key}
        ORDER BY score DESC, c.{key}
        LIMIT %(limit)s"""
    if essential < len(terms):
        bound = (BM25_K1 + 1) * sum(idfs[essential:])
        rows = conn.execute(sql_text, {**scoring, "candidates": tsquery_or(lexemes[:essential])}).fetchall()
        if len(rows) >= limit and rows[-1][1] >= bound:
            return [(row[0], float(row[1])) for row in rows]
    rows = conn.execute(sql_text, {**scoring, "candidates": tsquery_or(lexemes)}).fetchall()
    return [(row[0], float(row[1])) for row in rows]


DOC_LEN_SQL = "(SELECT coalesce(sum(coalesce(array_length(u.positions, 1), 1)), 0) FROM unnest({tsv}) u)::int"
