"""BM25 keyword search in plain SQL, over any vector space's table (chunks and conversation turns).

Real BM25 (k1=0.9, b=0.4: Anserini's defaults for passage collections; Lucene's idf
``ln(1 + (N - df + 0.5) / (df + 0.5))``) computed in plain SQL, so it runs on Lakebase where no BM25
extension can be assumed: candidates are the rows whose ``tsv`` matches the OR of the query's lexemes (a GIN
index scan); term frequencies come from the tsvector's positions (or their weights: a fielded BM25).
``bm25_terms`` / ``bm25_stats`` (migration 3) hold the document frequency per lexeme and the document
count/total length per space, kept exact by statement-level triggers on the space's table (same
transaction as the rows; see :func:`context_assistant.storage.vector_spaces.reset_space`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

# Anserini's BM25 defaults for BEIR-style collections (short passages): k1 0.9, b 0.4; Lucene's 1.2 / 0.75
# over-penalise long passages and saturate term frequency later.
BM25_K1 = 0.9
BM25_B = 0.4
TEXT_SEARCH_CONFIG = "english"
NOMINAL_AVGDL = 32.0  # the average length assumed for an empty space (unknown_terms)
BM25_CANDIDATE_BUDGET = 5000  # rows (by document frequency) scored in the first, pruned phase of BM25
TF_SQL = "coalesce(array_length(u.positions, 1), 1)::float8"  # a term's frequency: its number of positions


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
    weights: Mapping[str, float] | None = None,
    unknown_terms: bool = False,
    min_coverage: float = 0.0,
    ceiling: list[float] | None = None,
) -> list[tuple[Any, float]]:
    """The top ``limit`` rows of ``table`` (alias ``c``, filtered by ``where`` with ``params``) by BM25 for
    ``query``: ``(key, score)`` best first, exactly as if every matching row were scored.

    ``weights`` makes it a fielded BM25 (BM25F-style): each occurrence of a term counts the weight of the
    tsvector weight class (``A``-``D``) its position carries, e.g. ``{"A": 1, "D": 0.25}`` for a turn's own
    text and its neighbours. The row's ``doc_len`` must then be weighted the same way
    (:data:`WEIGHTED_DOC_LEN_SQL`). Without weights every occurrence counts 1.

    ``unknown_terms`` scores rows that are not in the space's statistics yet (``table`` may be a subquery,
    e.g. conversation turns not indexed yet): a query lexeme the statistics do not know counts as the rarest
    (df 0) instead of matching nothing, and an empty space scores with a nominal average length.

    Rows are scored from their ``tsv`` (term frequency = number of positions of the lexeme) and ``doc_len``,
    with ``df`` per lexeme and the document count and average length of ``space`` from ``bm25_terms`` /
    ``bm25_stats``. Scoring every row that contains a very common query term is what makes naive SQL BM25
    slow, so this runs in two phases (the MaxScore idea): first only rows containing one of the query's
    rarer terms (together at most :data:`BM25_CANDIDATE_BUDGET` rows by document frequency) are scored; a
    row containing none of them can score at most ``(k1 + 1) * sum(idf)`` of the remaining common terms,
    so if the ``limit``-th score already reaches that bound the answer is exact. Otherwise every row
    matching any query term is scored.

    ``min_coverage`` drops rows scoring below that share of the query's weight (the sum of its lexemes' idf:
    what a row of average length containing each lexeme once scores), so a row that shares only a common
    word with a longer question is not a match (the idea of Lucene's ``minimum_should_match``, by idf).

    ``ceiling`` (a list) gets the query's :func:`bm25_ceiling` appended when any of its words is known: a
    score divided by it is what hybrid fusion puts beside a cosine similarity.
    """
    stats = conn.execute("SELECT doc_count, total_length FROM bm25_stats WHERE space = %s", (space,)).fetchone()
    if not stats or not stats[0]:
        if not unknown_terms:
            return []
        stats = (0, 0)
    n = float(stats[0])
    avgdl = max(float(stats[1]) / n, 1.0) if n else NOMINAL_AVGDL
    if unknown_terms:
        terms = conn.execute(
            f"""SELECT q.lexeme, coalesce(t.df, 0)
                FROM unnest(tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', %s))) AS q(lexeme)
                LEFT JOIN bm25_terms t ON t.space = %s AND t.lexeme = q.lexeme
                ORDER BY 2, 1""",
            (query, space),
        ).fetchall()
    else:
        terms = conn.execute(
            f"""SELECT t.lexeme, t.df FROM bm25_terms t
                WHERE t.space = %s AND t.lexeme = ANY (tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', %s)))
                ORDER BY t.df, t.lexeme""",
            (space, query),
        ).fetchall()
    if not terms:
        return []
    lexemes = [lexeme for lexeme, _ in terms]
    idfs = [idf(n, df) for _, df in terms]
    essential = 1
    budget = terms[0][1]
    while essential < len(terms) and budget + terms[essential][1] <= BM25_CANDIDATE_BUDGET:
        budget += terms[essential][1]
        essential += 1
    floor = min_coverage * sum(idfs)
    scoring = {**params, "lexemes": lexemes, "idfs": idfs, "avgdl": avgdl, "limit": limit}
    if weights:
        scoring.update({f"w_{k}": float(weights.get(k, 1.0)) for k in "ABCD"})
    sql_text = score_sql(table, key, where, "c.tsv @@ %(candidates)s::tsquery", weighted=bool(weights))
    if ceiling is not None:
        ceiling.append(bm25_ceiling(idfs))
    if essential < len(terms):
        bound = (BM25_K1 + 1) * sum(idfs[essential:])
        rows = conn.execute(sql_text, {**scoring, "candidates": tsquery_or(lexemes[:essential])}).fetchall()
        if len(rows) >= limit and rows[-1][1] >= bound:
            return [(row[0], float(row[1])) for row in rows if row[1] >= floor]
    rows = conn.execute(sql_text, {**scoring, "candidates": tsquery_or(lexemes)}).fetchall()
    return [(row[0], float(row[1])) for row in rows if row[1] >= floor]


# The row's entries for the query's lexemes, with their positions (and weights), read out of its tsvector.
# Unweighted: mark the query's lexemes with weight A and keep the A entries (two passes in C, no arrays built;
# other A entries are dropped by the join with the query's lexemes): a third less time per scored row than
# the general form, which deletes "every other lexeme" and so keeps each position's own weight.
QUERY_ENTRIES_SQL = "unnest(ts_filter(setweight(c.tsv, 'A', %(lexemes)s::text[]), '{a}'))"
QUERY_ENTRIES_WEIGHTED_SQL = "unnest(ts_delete(c.tsv, tsvector_to_array(ts_delete(c.tsv, %(lexemes)s::text[]))))"


# A fielded term frequency: each position counts its weight class's weight (parameters w_A .. w_D).
WEIGHTED_TF_SQL = (
    "coalesce((SELECT sum(CASE w WHEN 'A' THEN %(w_A)s WHEN 'B' THEN %(w_B)s WHEN 'C' THEN %(w_C)s "
    "ELSE %(w_D)s END) FROM unnest(u.weights) AS w), 1)::float8"
)


def score_sql(table: str, key: str, where: str, match: str, weighted: bool = False) -> str:
    """The BM25 scoring statement (one formula for every caller): the rows of ``table`` (alias ``c``) matching
    ``match`` and ``where``, best first, ``%(limit)s`` of them; parameters ``lexemes``, ``idfs``, ``avgdl``
    (and ``w_A`` .. ``w_D`` when ``weighted``: a fielded BM25, see :func:`bm25_rank`)."""
    entries, tf_sql = (QUERY_ENTRIES_WEIGHTED_SQL, WEIGHTED_TF_SQL) if weighted else (QUERY_ENTRIES_SQL, TF_SQL)
    return f"""
        SELECT c.{key}, sum(
                   t.idf * f.tf * ({BM25_K1} + 1)
                   / (f.tf + {BM25_K1} * (1 - {BM25_B} + {BM25_B} * c.doc_len / %(avgdl)s))) AS score
        FROM {table} c
        -- Only the query's lexemes of the row, with their positions, picked out in C (QUERY_ENTRIES_SQL): far
        -- cheaper than unnesting the whole tsvector and joining.
        CROSS JOIN LATERAL {entries} AS u(lexeme, positions, weights)
        JOIN unnest(%(lexemes)s::text[], %(idfs)s::float8[]) AS t(lexeme, idf) ON t.lexeme = u.lexeme
        CROSS JOIN LATERAL (SELECT {tf_sql} AS tf) f
        WHERE ({match}) AND {where}
        GROUP BY c.{key}
        ORDER BY score DESC, c.{key}
        LIMIT %(limit)s"""


def idf(n: float, df: int) -> float:
    """Lucene's BM25 idf."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def bm25_ceiling(idfs: Sequence[float]) -> float:
    """A query's BM25 ceiling: ``(k1 + 1) * sum(idf)`` over its lexemes, which no row reaches (a term's part
    ``tf * (k1 + 1) / (tf + k1 * norm)`` stays below ``k1 + 1`` at any frequency and length). Scores divided
    by it are shares of the best possible match, comparable across queries and with cosine similarity."""
    return max((BM25_K1 + 1) * sum(idfs), 1e-9)


DOC_LEN_SQL = "(SELECT coalesce(sum(coalesce(array_length(u.positions, 1), 1)), 0) FROM unnest({tsv}) u)::int"
# The length of a fielded document: each position counts its weight class's weight (see bm25_rank).
WEIGHTED_DOC_LEN_SQL = (
    "ceil((SELECT coalesce(sum(CASE w WHEN 'A' THEN {A} WHEN 'B' THEN {B} WHEN 'C' THEN {C} ELSE {D} END), 0) "
    "FROM unnest({tsv}) u, unnest(u.weights) AS w))::int"
)
