"""Exact BM25 top-k at scale: impact tiers as extra keys of the indexed tsvector, and a threshold-driven query.

Scoring every row that contains a common query word is what makes SQL BM25 slow (a 4-word query of common
words scores most of a 100k-chunk corpus). Here each row's ``tsv`` also holds, for every lexeme, position-less
keys ``'lexeme 1'`` .. ``'lexeme t'`` where ``t`` is the posting's *impact tier*: its BM25 term-frequency part
``tf·(k1+1) / (tf + k1·(1 − b + b·dl/A0))`` at a reference average length ``A0`` (``bm25_stats.ref_avgdl``),
cut at :data:`TIER_EDGES`. The keys are cumulative, so "tier ≥ j" is one GIN key, and the statement triggers
that keep ``bm25_terms`` count them like any lexeme: ``df('lexeme j')`` is the number of rows where the
lexeme reaches tier j. A space separates lexeme and tier because no parser lexeme contains whitespace, so a
key never collides with a word; keys carry no positions, so term frequencies and ``doc_len`` are unchanged
and the scores stay exactly :func:`context_assistant.storage.bm25.bm25_rank`'s.

:func:`bm25_top` (the MaxScore / threshold idea, in SQL): a row can reach the k-th score θ only if the sum of
its per-term upper bounds does (term present at tier j → at most ``idf · bound(tier j's upper edge)``). It
picks θ from the tier frequencies, enumerates the minimal tier assignments whose bounds reach θ, and scores
exactly (same statement as the exhaustive method) only the rows matching one of them — each assignment a
conjunction of keys, which a GIN index intersects cheaply. If ``k`` scored rows reach θ the answer is exact
(every other row scores below θ); otherwise θ is lowered and the round repeats, at most :data:`MAX_ROUNDS`
times before the exhaustive method answers. The stored tiers use ``A0``; queries score with the current
average length, and :func:`_w_bound` bounds the current part from the stored tier exactly whatever the drift,
so results stay exact as the corpus changes; only pruning weakens, which a re-key (:func:`ensure_tier_keys`,
run by every sync) fixes when the average length moved by more than :data:`RETIER_DRIFT`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from ..core.console import Progress, quiet
from .bm25 import (
    BM25_B,
    BM25_K1,
    DOC_LEN_SQL,
    TEXT_SEARCH_CONFIG,
    bm25_ceiling,
    bm25_rank,
    idf,
    score_sql,
    tsquery_or,
)

# Lower edges of tiers 1..5 of the term-frequency part (in [0, k1 + 1)); tier 0 is below the first edge. With
# k1 0.9 / b 0.4 a single occurrence in a row of average length scores 1.0: the edges split tf=1 postings by
# row length, then separate tf 2, 3, 5+.
TIER_EDGES = (0.85, 1.2, 1.45, 1.6, 1.75)
TIERS = len(TIER_EDGES)
TOP = BM25_K1 + 1  # the supremum of the term-frequency part
MAX_ROUNDS = 4  # threshold rounds before the exhaustive query answers
MAX_ENUMERATED_TERMS = 8  # weaker terms beyond these count as always present at their maximum
# More minimal assignments than this: the exhaustive query answers. A round's statement ORs one GIN
# intersection per conjunction (through the index, see :func:`_bitmap_scan_only`); past a hundred or so the
# bitmap OR costs more than scoring every row with a query word. Measured 2026-12-02 on SciFact's first 300
# claims at 10k chunks (8-15 lexemes each; top 10, idle 2 cores): p50 / p95 12 / 87 ms with 128 or 256,
# 11 / 3,019 ms with 512; on 4-word queries at 100k chunks 128 and 512 are alike.
MAX_CONJUNCTIONS = 128
# All query terms together in at most this many rows: score them all at once (~20 µs a posting on 2 cores).
RARE_BUDGET = 1_000
# The first θ expects max(TARGET_ROWS, TARGET_PER_RESULT × wanted) rows to reach it (bounds exceed scores) ...
# ... or just the wanted number, when that θ is tiny (rare words next to near-stop-words). A second round scores
# only rows the first did not, so a low first guess costs little: at 100k chunks (retrieval_scale's query sets,
# idle 2 cores, 2026-12-02) the top 50 of hybrid's keyword side had p95 41 / 46 / 20 ms (zipf / common / mixed)
# with 3 per result against 49 / 49 / 53 with 10, while the top 10 was best near 100 rows.
TARGET_ROWS = 100
TARGET_PER_RESULT = 3
THETA_BINS = 256
RETIER_DRIFT = (0.8, 1.25)  # re-key when current / reference average length leaves this range

# The row's tsvector with its tier keys (idempotent: existing position-less keys are dropped first).
# Placeholders: {tsv} the tsvector (with positions), {dl} its doc_len, {a0} the reference average length.
KEYED_TSV_SQL = """(SELECT b.tsv || coalesce((
        SELECT array_to_tsvector(array_agg(u.lexeme || ' ' || j))
        FROM unnest(b.tsv) u
        CROSS JOIN LATERAL (SELECT array_length(u.positions, 1)::float8 AS tf) f
        CROSS JOIN LATERAL unnest(%(tier_edges)s::float8[]) WITH ORDINALITY AS e(edge, j)
        WHERE f.tf * {top} / (f.tf + {k1} * (1 - {b} + {b} * {dl} / {a0})) >= e.edge), ''::tsvector)
    FROM (SELECT ts_delete({tsv}, ARRAY(SELECT p.lexeme FROM unnest({tsv}) p WHERE p.positions IS NULL)) AS tsv) b)"""


def keyed_tsv_sql(tsv: str, dl: str, a0: str) -> str:
    """:data:`KEYED_TSV_SQL` for these expressions (needs the ``tier_edges`` parameter: :func:`tier_params`)."""
    return KEYED_TSV_SQL.format(tsv=tsv, dl=dl, a0=a0, top=TOP, k1=BM25_K1, b=BM25_B)


def tier_params() -> dict[str, Any]:
    return {"tier_edges": list(TIER_EDGES)}


def reference_avgdl(conn: psycopg.Connection, space: str) -> float | None:
    row = conn.execute("SELECT ref_avgdl FROM bm25_stats WHERE space = %s", (space,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def set_reference_avgdl(conn: psycopg.Connection, space: str, a0: float) -> None:
    """Record ``a0`` as the space's reference (after its first rows were written: the trigger made the row)."""
    conn.execute(
        """INSERT INTO bm25_stats (space, ref_avgdl) VALUES (%s, %s)
           ON CONFLICT (space) DO UPDATE SET ref_avgdl = EXCLUDED.ref_avgdl""",
        (space, a0),
    )


def ensure_tier_keys(conn: psycopg.Connection, space: str, table: str, say: Progress = quiet) -> bool:
    """Re-key every row of ``table`` (in the open transaction) when its rows have no tier keys yet (an index
    written before tiers existed: ``ref_avgdl`` NULL with rows present) or the average length drifted out of
    :data:`RETIER_DRIFT` of the reference. Returns whether it re-keyed. Search stays exact meanwhile."""
    row = conn.execute(
        "SELECT doc_count, total_length, ref_avgdl FROM bm25_stats WHERE space = %s", (space,)
    ).fetchone()
    if row is None or not row[0]:
        return False
    avgdl = max(float(row[1]) / float(row[0]), 1.0)
    if row[2] is not None and RETIER_DRIFT[0] <= avgdl / float(row[2]) <= RETIER_DRIFT[1]:
        return False
    say(
        f"writing BM25 impact-tier keys for {row[0]} rows of {table} ("
        + (
            "once: the index was written before tiers existed)"
            if row[2] is None
            else f"the average chunk length moved {row[2]:.1f} → {avgdl:.1f} tokens since they were written; "
            f"they are rewritten when it moves out of {RETIER_DRIFT[0]:g}–{RETIER_DRIFT[1]:g}× of that)"
        )
    )
    conn.execute(
        sql.SQL("UPDATE {} c SET tsv = " + keyed_tsv_sql("c.tsv", "c.doc_len", "%(a0)s")).format(
            sql.Identifier(table)
        ),
        {**tier_params(), "a0": avgdl},
    )
    set_reference_avgdl(conn, space, avgdl)
    return True


# ---------------------------------------------------------------------------------------------------------
# The query

_TERMS_SQL = f"""
    WITH q AS (SELECT DISTINCT l FROM unnest(tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', %(q)s))) AS l)
    SELECT s.doc_count, s.total_length, s.ref_avgdl, (SELECT count(*) FROM q), t.lexeme, t.df
    FROM bm25_stats s JOIN bm25_terms t ON t.space = s.space
    WHERE s.space = %(space)s
      AND t.lexeme IN (SELECT l FROM q UNION ALL SELECT l || ' ' || j FROM q, generate_series(1, {TIERS}) AS j)"""

Levels = list[float]  # per term: the bound of its contribution when present at tier >= j, j = 0..highest


def _w_bound(w0: float, a0: float, a: float) -> float:
    """Upper bound of the term-frequency part at average length ``a`` of a posting whose part at ``a0`` is
    at most ``w0`` (exact for any tf and doc length; a tiny margin absorbs rounding)."""
    if w0 <= 0:
        return 0.0
    if w0 >= TOP:
        return TOP
    rho = a0 / a
    if rho <= 1:
        bound = TOP / (1 + rho * (TOP / w0 - 1))
    else:  # the worst case is tf = 1
        denominator = 1 + rho * (TOP / w0 - 1) + BM25_K1 * (1 - BM25_B) * (1 - rho)
        if denominator <= 1.0:  # (also when non-positive) no bound below the supremum
            return TOP
        bound = TOP / denominator
    return min(TOP, bound * (1 + 1e-6))


def _levels(term_idf: float, highest: int, a0: float, a: float) -> Levels:
    """A term's contribution bound per level (present at tier >= j), up to its highest occurring tier."""
    edges = (*TIER_EDGES, TOP)
    return [term_idf * _w_bound(edges[j], a0, a) for j in range(highest + 1)]


def _minimal_assignments(terms: list[Levels], theta: float) -> list[tuple[tuple[int, int], ...]] | None:
    """The minimal conjunctions (term → level) whose bounds sum to θ or more: a row matching none of them
    scores below θ. None when there are more than :data:`MAX_CONJUNCTIONS`."""
    n = len(terms)
    suffix = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        suffix[i] = suffix[i + 1] + terms[i][-1]
    out: list[tuple[tuple[int, int], ...]] = []

    def walk(i: int, acc: float, chosen: list[tuple[int, int]]) -> bool:
        if acc >= theta:  # reached: any further term would make the conjunction non-minimal
            for ti, j in chosen:  # minimal: lowering any chosen term by one level falls below θ
                lower = terms[ti][j - 1] if j > 0 else 0.0
                if acc - terms[ti][j] + lower >= theta:
                    return True
            out.append(tuple(chosen))
            return len(out) <= MAX_CONJUNCTIONS
        if i == n or acc + suffix[i] < theta:
            return True
        if not walk(i + 1, acc, chosen):
            return False
        for j, u in enumerate(terms[i]):
            if not walk(i + 1, acc + u, [*chosen, (i, j)]):
                return False
            if acc + u >= theta:  # this term's higher levels reach θ too: not minimal
                break
        return True

    return out if walk(0, 0.0, []) else None


def _estimate_theta(terms: list[Levels], dfs: list[list[int]], n: float, target: float, least: float) -> float:
    """The highest θ at which the expected number of rows whose bound reaches θ is ``target`` (terms treated
    as independent: a histogram convolution of each term's level probabilities from its tier frequencies)."""
    top = sum(lv[-1] for lv in terms)
    if top <= 0:
        return 0.0
    step = top / (THETA_BINS - 1)
    dist = np.zeros(THETA_BINS)
    dist[0] = 1.0
    for lv, df in zip(terms, dfs, strict=True):
        ge = [d / n for d in df[: len(lv)]] + [0.0]  # P(level >= j)
        p = np.zeros(THETA_BINS)
        p[0] = 1 - ge[0]
        for j, u in enumerate(lv):
            p[min(THETA_BINS - 1, round(u / step))] += max(ge[j] - ge[j + 1], 0.0)
        dist = np.convolve(dist, p)[:THETA_BINS]
    expected = n * np.cumsum(dist[::-1])[::-1]  # rows with bound >= each bin
    reach = np.nonzero(expected >= target)[0]
    theta = float(reach[-1] * step) if len(reach) else 0.0
    if theta < 0.05 * top:  # few rows can score high: aim at a handful rather than at "everything"
        reach = np.nonzero(expected >= least)[0]
        theta = float(reach[-1] * step) if len(reach) else 0.0
    return theta


def _note(rounds: list[int] | None, used: int) -> None:
    if rounds is not None:
        rounds.append(used)


def _quoted(lexeme: str, level: int) -> str:
    return tsquery_or([lexeme if level == 0 else f"{lexeme} {level}"])


@contextlib.contextmanager
def _bitmap_scan_only(conn: psycopg.Connection) -> Iterator[None]:
    """Sequential and plain index scans off for the statements inside (what is left is the GIN bitmap scan; a
    plain index scan would be the primary key's, reading every row in key order). Outside a transaction the
    block is one, whose end undoes the settings; inside the caller's, they are set back as they were (after
    an error the caller's rollback does it)."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        with conn.transaction():
            conn.execute(
                "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_indexscan', 'off', true)"
            )
            yield
        return
    row = conn.execute(
        "SELECT current_setting('enable_seqscan'), current_setting('enable_indexscan'), "
        "set_config('enable_seqscan', 'off', true), set_config('enable_indexscan', 'off', true)"
    ).fetchone()
    yield
    conn.execute(
        "SELECT set_config('enable_seqscan', %s, true), set_config('enable_indexscan', %s, true)",
        (row[0], row[1]) if row else ("on", "on"),
    )


def bm25_top(
    conn: psycopg.Connection,
    space: str,
    table: str,
    key: str,
    where: str,
    params: dict[str, Any],
    query: str,
    limit: int,
    rounds: list[int] | None = None,
    min_coverage: float = 0.0,
    relative: bool = False,
) -> list[tuple[Any, float]]:
    """:func:`~context_assistant.storage.bm25.bm25_rank`'s answer (same scores, same order) for a space whose
    rows carry tier keys, scoring only rows that can reach the top ``limit``. Falls back to the exhaustive
    method when the space has no tier keys yet or the rounds run out. ``rounds`` (tests, benchmarks) gets the
    number of threshold rounds used (0: answered by the exhaustive method).

    ``min_coverage`` drops rows scoring below that share of the question's weight: the idf of each of its
    lexemes, a lexeme no row holds counting as the rarest (bm25_rank's ``min_coverage``, where unknown words
    are left out of the weight unless ``unknown_terms``). ``relative``: scores as shares of the query's
    :func:`~context_assistant.storage.bm25.bm25_ceiling` (bm25_rank's ``relative``)."""
    rows = conn.execute(_TERMS_SQL, {"q": query, "space": space}).fetchall()
    if not rows:
        return []
    n, a0 = float(rows[0][0]), rows[0][2]
    known = {lexeme: df for *_, lexeme, df in rows if " " not in lexeme}  # tier keys hold a space
    floor = 0.0
    if min_coverage > 0:
        floor = min_coverage * (sum(idf(n, df) for df in known.values()) + idf(n, 0) * (rows[0][3] - len(known)))
    scale = 1 / bm25_ceiling([idf(n, df) for df in known.values()]) if relative else 1.0

    def kept(ranked: list[tuple[Any, float]]) -> list[tuple[Any, float]]:
        return [(k, v * scale) for k, v in ranked if v >= floor]

    if not n or a0 is None:
        _note(rounds, 0)
        return kept(bm25_rank(conn, space, table, key, where, params, query, limit))
    a = max(float(rows[0][1]) / n, 1.0)
    dfs: dict[str, list[int]] = {}
    for *_, lexeme, df in rows:
        base, _, tier = lexeme.rpartition(" ")
        if base:
            dfs.setdefault(base, [0] * (TIERS + 1))[int(tier)] = df
        else:
            dfs.setdefault(lexeme, [0] * (TIERS + 1))[0] = df
    lexemes = sorted(lex for lex, df in dfs.items() if df[0] > 0)
    if not lexemes:
        return []
    idfs = [idf(n, dfs[lex][0]) for lex in lexemes]
    terms = [
        _levels(i, max(j for j, d in enumerate(dfs[lex]) if d > 0), float(a0), a)
        for i, lex in zip(idfs, lexemes, strict=True)
    ]
    scoring = {**params, "lexemes": lexemes, "idfs": idfs, "avgdl": a}
    scored: dict[Any, float] = {}  # every row scored so far: a later round scores only rows it has not seen

    def best() -> list[tuple[Any, float]]:
        """The top ``limit`` scored so far, in the statement's order (score, then key) continued across rounds:
        keys are hex ids, which sort the same in Python as in any collation."""
        return sorted(scored.items(), key=lambda item: (-item[1], item[0]))[:limit]

    def score(dnf: Sequence[str], last: bool = False) -> list[tuple[Any, float]]:
        """Score the rows matching ``dnf`` that no earlier round scored; all of them (a later round must know
        them), or only the top ``limit`` when no round can follow (``last``)."""
        # One GIN intersection per conjunction, ORed as bitmaps. The planner's estimate for many ORed `@@`s
        # favours evaluating them all on every row: SciFact's claims at 10k chunks took 1,067 ms that way for
        # 183 conjunctions, 19 ms through the index. Never a prepared statement: the generic plan of
        # `tsv @@ $1` is a sequential scan too. Rows an earlier round scored are filtered out by key before
        # scoring (reading and unpacking a row's tsvector is most of what a row costs).
        match = "(" + " OR ".join(f"c.tsv @@ %(dnf{i})s::tsquery" for i in range(len(dnf))) + ")"
        if scored:
            match += f" AND NOT (c.{key} = ANY(%(scored)s))"
        with _bitmap_scan_only(conn):
            got = conn.execute(
                score_sql(table, key, where, match),
                {
                    **scoring,
                    **{f"dnf{i}": d for i, d in enumerate(dnf)},
                    "scored": list(scored),
                    "limit": limit if last else None,
                },
                prepare=False,
            ).fetchall()
        scored.update((row[0], float(row[1])) for row in got)
        return best()

    if sum(dfs[lex][0] for lex in lexemes) <= RARE_BUDGET:  # every term rare: score them all, one round
        _note(rounds, 1)
        return kept(score([tsquery_or(lexemes)], last=True))
    order = sorted(range(len(terms)), key=lambda i: -terms[i][-1])
    essential = order[:MAX_ENUMERATED_TERMS]
    slack = sum(terms[i][-1] for i in order[MAX_ENUMERATED_TERMS:])
    ess_terms = [terms[i] for i in essential]
    ess_dfs = [dfs[lexemes[i]] for i in essential]
    target = max(TARGET_ROWS, TARGET_PER_RESULT * limit)
    theta = _estimate_theta(ess_terms, ess_dfs, n, target, limit) + slack
    for round_number in range(1, MAX_ROUNDS + 1):
        conjunctions = _minimal_assignments(ess_terms, theta - slack) if theta > slack else None
        if conjunctions is None:
            break
        dnf = ["(" + " & ".join(_quoted(lexemes[essential[t]], j) for t, j in c) + ")" for c in conjunctions]
        ranked = score(dnf) if dnf else best()
        if len(ranked) >= limit and ranked[limit - 1][1] >= theta:
            _note(rounds, round_number)
            return kept(ranked)
        if len(ranked) >= limit:  # the k-th best seen: the next round is exact
            theta = ranked[limit - 1][1]
        else:
            estimate = _estimate_theta(ess_terms, ess_dfs, n, target * 8**round_number, limit) + slack
            theta = min(estimate, theta * 0.85)
    _note(rounds, 0)
    return kept(bm25_rank(conn, space, table, key, where, params, query, limit))


def written_reference(conn: psycopg.Connection, space: str, tsv: str, from_sql: str) -> float:
    """The reference average length to key a batch of new rows with: the space's, or (first batch of an empty
    space) the batch's mean length (the rows' tsvector ``tsv`` over ``from_sql``), recorded now."""
    a0 = reference_avgdl(conn, space)
    if a0 is None:
        mean = conn.execute(f"SELECT avg({DOC_LEN_SQL.format(tsv=tsv)}) {from_sql}").fetchone()
        a0 = max(float(mean[0] or 0.0), 1.0) if mean else 1.0
        set_reference_avgdl(conn, space, a0)
    return a0


def index_columns_sql(tsv: str) -> str:
    """``tsv`` (with its tier keys at ``%(a0)s``) and ``doc_len`` of a new row whose tsvector is ``tsv``."""
    doc_len = DOC_LEN_SQL.format(tsv=tsv)
    return f"{keyed_tsv_sql(tsv, doc_len, '%(a0)s')}, {doc_len}"
