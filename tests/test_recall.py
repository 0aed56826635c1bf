"""Memory recall on real Postgres + pgvector: turns embedded off the recall path (live and imported), hybrid search scoped
to one user, excluded sessions, failed turns, deletion, model changes and a failing model. Mechanics use the
hashing embedder test double; one test checks a paraphrase with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from context_assistant.core import ConfigError
from context_assistant.retrieval.base import RetrievalError
from context_assistant.retrieval.embeddings import MINILM, LocalEmbedder
from context_assistant.retrieval.recall import TURNS_TABLE, TurnRecall
from context_assistant.retrieval.relevance import KEYWORD_COVERAGE, NO_FLOOR, RelevanceFloor, relevance_floor
from context_assistant.storage.memory import ConversationStore
from retrieval_support import (
    CountingEmbedder,
    HashingEmbedder,
    PoisonEmbedder,
    bm25_stats_consistent,
    minilm,  # noqa: F401  (the fixture)
    query_ceiling,
)


def _conversation(store: ConversationStore, user: str, session: str, *turns: str) -> list[Any]:
    store.create_session(user, session_id=session)
    return [
        store.append(user, session, "user" if i % 2 == 0 else "assistant", text) for i, text in enumerate(turns)
    ]


@pytest.fixture
def seeded(store: ConversationStore) -> ConversationStore:
    _conversation(
        store,
        "ana",
        "ana-1",
        "How do I rotate the warehouse credentials?",
        "Rotate them in the secrets scope team-creds, then restart the job cluster.",
    )
    _conversation(
        store, "ana", "ana-2", "What is our data retention for raw events?", "Raw events are kept 400 days."
    )
    _conversation(
        store,
        "bob",
        "bob-1",
        "Rotate the warehouse credentials for me",
        "Bob's credentials live in the scope bob-private.",
    )
    return store


def test_recall_finds_the_users_own_turns_and_never_anothers(seeded: ConversationStore) -> None:
    recall = TurnRecall(seeded.db, HashingEmbedder(), top_k=5)
    recall.index_pending()
    for mode in ("vector", "keyword", "hybrid"):
        turns = recall.recall("ana", "rotate warehouse credentials secrets scope", mode=mode)
        assert turns and {t.session_id for t in turns} <= {"ana-1", "ana-2"}
        assert turns[0].session_id == "ana-1"
        assert all("bob" not in t.content.lower() for t in turns)
    bob = recall.recall("bob", "credentials scope", top_k=10)
    assert {t.session_id for t in bob} == {"bob-1"}
    assert recall.recall("carol", "credentials") == []


def test_hits_carry_the_turn(seeded: ConversationStore) -> None:
    recall = TurnRecall(seeded.db, HashingEmbedder())
    recall.index_pending()
    turn = recall.recall("ana", "secrets scope team-creds", top_k=1, mode="keyword")[0]
    stored = seeded.get_message("ana", turn.message_id)
    assert (turn.session_id, turn.role, turn.content, turn.timestamp) == (
        stored.session_id,
        "assistant",
        stored.content,
        stored.timestamp,
    )
    assert set(turn.to_json()) == {
        "message_id", "session_id", "role", "content", "timestamp", "score", "similarity", "keyword",
    }  # fmt: skip
    json.dumps(turn.to_json())
    # Keyword mode: the raw BM25 evidence, and no vector side; hybrid carries both sides' raw evidence.
    assert turn.keyword == turn.score > 0 and turn.similarity is None
    (both,) = recall.recall("ana", "secrets scope team-creds", top_k=1, mode="hybrid")
    assert both.keyword is not None and both.similarity is not None and -1 <= both.similarity <= 1


def test_exclude_session_leaves_out_the_current_conversation(seeded: ConversationStore) -> None:
    recall = TurnRecall(seeded.db, HashingEmbedder(), top_k=10)
    recall.index_pending()
    turns = recall.recall("ana", "rotate credentials retention", exclude_session="ana-1")
    assert turns and {t.session_id for t in turns} == {"ana-2"}


def test_failed_turns_are_never_recalled(seeded: ConversationStore) -> None:
    failed = seeded.append("ana", "ana-2", "assistant", "half an answer about credentials", {"status": "failed"})
    recall = TurnRecall(seeded.db, HashingEmbedder(), top_k=10)
    recall.index_pending()
    assert failed.id not in {t.message_id for t in recall.recall("ana", "credentials answer")}
    # A turn marked failed after it was embedded disappears too.
    good = seeded.messages("ana", "ana-1")[1]
    assert good.id in {t.message_id for t in recall.recall("ana", "secrets scope team-creds")}
    seeded.update_metadata("ana", good.id, {"status": "failed"})
    for mode in ("vector", "keyword", "hybrid"):
        assert good.id not in {t.message_id for t in recall.recall("ana", "secrets scope team-creds", mode=mode)}


def test_turns_are_embedded_in_the_background_once(seeded: ConversationStore) -> None:
    embedder = CountingEmbedder(HashingEmbedder())
    recall = TurnRecall(seeded.db, embedder, batch_size=2)
    recall.index_pending("carol")  # creates the turn index (nobody's turns in it yet)
    assert recall.pending_count() == 6
    # Recall itself never embeds stored turns (a turn must not wait for that): it embeds the query and finds
    # the pending turns by keyword.
    turns = recall.recall("ana", "rotate warehouse credentials")
    assert len(embedder.texts) == 1 and turns and turns[0].session_id == "ana-1"
    recall.index_later("ana")
    assert recall.wait_for_indexing(timeout=60)
    assert recall.pending_count("ana") == 0 and recall.pending_count("bob") == 2  # only ana's were asked for
    texts = len(embedder.texts)
    assert texts == 1 + 4  # the query and ana's four turns
    recall.recall("ana", "credentials")
    assert len(embedder.texts) == texts + 1  # just the query
    assert recall.index_pending() == 2  # everyone else's (what `sync` does)
    assert recall.index_pending() == 0
    bm25_stats_consistent(seeded.db, "turns", TURNS_TABLE)


def test_imported_turns_are_recalled(store: ConversationStore) -> None:
    lines = [
        {
            "session_id": "old-1",
            "user_id": "dana",
            "role": role,
            "content": content,
            "timestamp": f"2025-05-0{i + 1}T10:00:00Z",
        }
        for i, (role, content) in enumerate(
            [
                ("user", "Which cluster policy do interns get?"),
                ("assistant", "Interns use the policy intern-small."),
            ]
        )
    ]
    store.import_jsonl(json.dumps(line) for line in lines)
    recall = TurnRecall(store.db, HashingEmbedder())
    recall.index_pending()
    turns = recall.recall("dana", "cluster policy for interns", top_k=2)
    assert [t.content for t in turns][:1] in (["Interns use the policy intern-small."], [lines[0]["content"]])
    assert {t.session_id for t in turns} == {"old-1"}


def test_deleting_a_session_removes_its_turns(seeded: ConversationStore) -> None:
    recall = TurnRecall(seeded.db, HashingEmbedder(), top_k=10)
    recall.index_pending()
    assert any(t.session_id == "ana-1" for t in recall.recall("ana", "credentials rotate"))
    seeded.delete_session("ana", "ana-1")
    assert all(t.session_id != "ana-1" for t in recall.recall("ana", "credentials rotate"))
    bm25_stats_consistent(seeded.db, "turns", TURNS_TABLE)


def test_model_change_rebuilds_the_turn_index(seeded: ConversationStore) -> None:
    TurnRecall(seeded.db, HashingEmbedder(64, "model-a")).index_pending()
    recall = TurnRecall(seeded.db, HashingEmbedder(16, "model-b"), top_k=2)
    recall.index_pending()  # what sync does after a model change
    assert recall.recall("ana", "rotate warehouse credentials", mode="vector")[0].session_id == "ana-1"
    with seeded.db.connection() as conn:
        assert conn.execute("SELECT model, dimension FROM vector_spaces WHERE space = 'turns'").fetchone() == (
            "model-b#ctx2",  # the model and the version of what is indexed per turn
            16,
        )
    bm25_stats_consistent(seeded.db, "turns", TURNS_TABLE)


def test_a_failing_model_falls_back_to_keywords(seeded: ConversationStore) -> None:
    TurnRecall(seeded.db, HashingEmbedder()).index_pending()
    seeded.append("ana", "ana-2", "user", "a new turn about credentials")  # pending, and cannot be embedded
    broken = TurnRecall(seeded.db, PoisonEmbedder(HashingEmbedder(), ""), top_k=3)  # every call fails
    turns = broken.recall("ana", "secrets scope team-creds")
    assert turns and turns[0].session_id == "ana-1"
    with pytest.raises(RetrievalError, match="recall could not embed the query: endpoint rejected the input"):
        broken.recall("ana", "secrets", mode="vector")


def test_before_anything_is_embedded_recall_finds_turns_by_keyword(seeded: ConversationStore) -> None:
    """Nothing indexed yet, not even the turn space (a new install whose indexer has not finished its first
    round, or whose embedding service has never answered): every turn is pending, and recall scores them by
    keyword instead of answering nothing (a CI run caught the assistant test losing this race)."""
    recall = TurnRecall(seeded.db, HashingEmbedder(), top_k=5)
    assert recall.pending_count() == 6
    for mode in ("keyword", "hybrid"):
        turns = recall.recall("ana", "rotate warehouse credentials secrets scope", mode=mode)
        assert turns and turns[0].session_id == "ana-1", mode
        assert {t.session_id for t in turns} <= {"ana-1", "ana-2"}
        assert recall.recall("ana", "credentials", exclude_session="ana-1", mode=mode) == []
    assert recall.recall("ana", "rotate warehouse credentials", mode="vector") == []  # nothing has a vector
    broken = TurnRecall(seeded.db, PoisonEmbedder(HashingEmbedder(), ""), top_k=3)  # the service never answers
    assert broken.recall("ana", "secrets scope team-creds")[0].session_id == "ana-1"
    recall.index_pending()  # once the space exists the same query goes through the index
    assert recall.recall("ana", "rotate warehouse credentials secrets scope")[0].session_id == "ana-1"


def test_bad_recall_arguments(seeded: ConversationStore) -> None:
    recall = TurnRecall(seeded.db, HashingEmbedder())
    with pytest.raises(RetrievalError, match="the query is empty"):
        recall.recall("ana", " ")
    with pytest.raises(RetrievalError, match="recall needs a user"):
        recall.recall("", "credentials")
    assert recall.recall("ana", "credentials", top_k=0) == []


def test_recall_finds_a_paraphrase_with_minilm(seeded: ConversationStore, minilm: LocalEmbedder) -> None:  # noqa: F811
    recall = TurnRecall(seeded.db, minilm, top_k=1)
    recall.index_pending()
    (turn,) = recall.recall("ana", "how long do we store unprocessed clickstream logs?")
    assert turn.session_id == "ana-2"


def test_a_question_unrelated_to_anything_said_recalls_nothing(
    seeded: ConversationStore,
    minilm: LocalEmbedder,  # noqa: F811
) -> None:
    """The nearest turn is not a match by itself: below the model's similarity floor it is left out (a new
    user's "capital of Mongolia" brought back their credential turns), while related questions still recall."""
    recall = TurnRecall(seeded.db, minilm, top_k=3, min_similarity="auto")
    assert recall.floor == RelevanceFloor(0.3, KEYWORD_COVERAGE)  # auto, measured for MiniLM
    recall.index_pending()
    for mode in ("vector", "keyword", "hybrid"):  # (keyword: no word in common)
        assert recall.recall("ana", "What is the capital of Mongolia?", mode=mode) == []
        assert recall.recall("ana", "zebra quantum astrophysics", mode=mode) == []
        assert recall.recall("ana", "how long are raw events kept?", mode=mode)[0].session_id == "ana-2"
    unfloored = TurnRecall(seeded.db, minilm, top_k=3)  # the class's default; the config's is auto
    assert unfloored.floor == NO_FLOOR
    assert len(unfloored.recall("ana", "What is the capital of Mongolia?", mode="vector")) == 3
    assert (
        TurnRecall(seeded.db, minilm, min_similarity="0.9").recall("ana", "raw event retention", mode="vector")
        == []
    )


def test_one_common_word_shared_with_a_longer_question_is_not_a_hybrid_match(seeded: ConversationStore) -> None:
    """In hybrid recall a turn found by keyword must cover a share of the question's weight (KEYWORD_COVERAGE):
    "raw" alone in a long unrelated question is not enough, the turn's own words are. Keyword mode ranks every
    match, as asked. (A floor of 0.99 keeps the hashing test double's vectors out of it.)"""
    recall = TurnRecall(seeded.db, HashingEmbedder(), top_k=3, min_similarity="0.99")
    recall.index_pending()
    unrelated = "Which raw materials does a Finnish paper mill import from Brazil every winter?"
    assert recall.recall("ana", unrelated, mode="hybrid") == []
    assert recall.recall("ana", unrelated, mode="keyword")[0].session_id == "ana-2"
    assert recall.recall("ana", "raw", mode="hybrid")[0].session_id == "ana-2"
    assert recall.recall("ana", "retention of raw events", mode="hybrid")[0].session_id == "ana-2"
    assert TurnRecall(seeded.db, HashingEmbedder(), min_similarity="off").recall("ana", unrelated, mode="hybrid")


def test_hybrid_recall_fuses_cosine_with_bm25s_share_and_reads_keyword_only_turns_own_similarity(
    seeded: ConversationStore,
) -> None:
    """``convex`` hybrid recall: ``w * cosine + (1 - w) * BM25 / ceiling``, where a turn found only by keyword
    (here every turn: the floor keeps all out of the vector side) takes its own cosine similarity from the turn
    index, not an estimate; the evidence a turn shows stays each side's own finding (``similarity`` absent,
    ``keyword`` the BM25 score). ``minmax`` (``memory.recall_fusion``'s default) gives its normalised scores."""
    query = "rotate warehouse credentials secrets scope"
    plain = TurnRecall(seeded.db, HashingEmbedder(), top_k=10, min_similarity="off")
    plain.index_pending()
    cosine = {t.message_id: t.similarity for t in plain.recall("ana", query, mode="vector")}
    keyword = {t.message_id: t.keyword for t in plain.recall("ana", query, mode="keyword")}
    with seeded.db.connection() as conn:
        ceiling = query_ceiling(conn, "turns", query, unknown_terms=True)
    recall = TurnRecall(seeded.db, HashingEmbedder(), top_k=10, min_similarity="0.99", fusion="convex")
    turns = recall.recall("ana", query, mode="hybrid")
    assert turns and {t.message_id for t in turns} == set(keyword)
    for turn in turns:
        assert turn.similarity is None and turn.keyword == pytest.approx(keyword[turn.message_id])
        share = keyword[turn.message_id] / ceiling
        assert 0 < share < 1
        assert turn.score == pytest.approx(0.5 * cosine[turn.message_id] + 0.5 * share)
    assert all(t.session_id.startswith("ana-") for t in turns)
    minmax = TurnRecall(seeded.db, HashingEmbedder(), top_k=10, min_similarity="0.99")
    assert {t.message_id: t.score for t in minmax.recall("ana", query, mode="hybrid")}[turns[0].message_id] == 0.5


def test_the_similarity_floor_is_the_models_or_the_configured_one() -> None:
    assert relevance_floor("auto", MINILM) == RelevanceFloor(0.3, KEYWORD_COVERAGE)
    # Unmeasured: its similarity scale differs, so only the keyword part holds.
    assert relevance_floor("auto", "databricks-gte-large-en") == RelevanceFloor(None, KEYWORD_COVERAGE)
    assert relevance_floor("off", MINILM) == NO_FLOOR
    assert relevance_floor("0.45", "databricks-gte-large-en") == RelevanceFloor(0.45, KEYWORD_COVERAGE)
    with pytest.raises(ConfigError, match="'high' is not auto, off or a cosine"):
        relevance_floor("high", MINILM)


# ------------------------------------------------------------------------------------------ turns in context


def test_a_new_turn_reindexes_its_neighbour_and_is_found_through_it(store: ConversationStore) -> None:
    """The answer "Went to the support group" is found by a question about "yesterday's plans" only
    because its neighbour asked about them; when a turn arrives, the turn before it is re-indexed with it."""
    _conversation(store, "ana", "s1", "What were your plans for yesterday evening?")
    recall = TurnRecall(store.db, HashingEmbedder(), top_k=5)
    assert recall.index_pending() == 1
    store.append("ana", "s1", "assistant", "Went to the lgbtq support group with friends.")
    recall.index_pending()
    with store.db.connection() as conn:
        tsv = dict(conn.execute(f"SELECT message_id, tsv::text FROM {TURNS_TABLE}").fetchall())
    first, second = sorted(tsv)
    # the question now carries the answer's words with weight D (Postgres prints no letter for D), and the
    # answer the question's
    assert re.search(r"'support':\d+(?![ABC])", tsv[first]) and re.search(r"'plan':\d+A", tsv[first])
    assert re.search(r"'plan':\d+(?![ABC])", tsv[second])
    hits = recall.recall("ana", "lgbtq support group", mode="keyword")
    assert hits[0].message_id == second  # the turn that says it outranks the one that only borders it
    bm25_stats_consistent(store.db, "turns", TURNS_TABLE)


def test_speaker_and_dates_are_matchable_fields(store: ConversationStore) -> None:
    """Imported transcripts carry the speaker in metadata and a timestamp; a question naming the person and
    the absolute date finds a turn that only said "yesterday"."""
    lines = [
        {"session_id": "t1", "user_id": "ana", "role": "user", "content": "I went to the pottery class yesterday.",
         "timestamp": "2023-05-08T13:56:00+00:00", "metadata": {"speaker": "Caroline"}},
        {"session_id": "t1", "user_id": "ana", "role": "assistant", "content": "Nice, how was the class?",
         "timestamp": "2023-05-08T13:57:00+00:00", "metadata": {"speaker": "Melanie"}},
        {"session_id": "t2", "user_id": "ana", "role": "user", "content": "The pottery class was cancelled.",
         "timestamp": "2023-07-01T10:00:00+00:00", "metadata": {"speaker": "Melanie"}},
    ]  # fmt: skip
    store.import_jsonl(json.dumps(line) for line in lines)
    recall = TurnRecall(store.db, HashingEmbedder(), top_k=3)
    recall.index_pending()
    hits = recall.recall("ana", "What did Caroline do on 7 May 2023 at the pottery class?", mode="keyword")
    assert hits[0].content == "I went to the pottery class yesterday."
    hits = recall.recall("ana", "Melanie pottery class in July", mode="keyword")
    assert hits[0].content == "The pottery class was cancelled."


def test_the_first_turn_after_a_big_import_does_not_embed_the_backlog(
    store: ConversationStore, config: Any
) -> None:
    """Issue 13: the first turn after a 10,000-message import embedded them all inside the turn (323 s).
    Now the turn embeds only its question, recall finds the imported turns by keyword meanwhile, and the
    backlog is embedded in the background afterwards."""
    import threading

    from context_assistant.assistant.turn import Assistant
    from context_assistant.llm.offline import OfflineModel

    class ThreadNotingEmbedder(CountingEmbedder):
        def __init__(self, inner: Any) -> None:
            super().__init__(inner)
            self.by_thread: list[tuple[int, str]] = []

        def embed(self, texts: Any) -> list[list[float]]:
            self.by_thread.extend((threading.get_ident(), t) for t in texts)
            return super().embed(texts)

    embedder = ThreadNotingEmbedder(HashingEmbedder())
    recall = TurnRecall(store.db, embedder, top_k=3)
    assistant = Assistant(config, store, OfflineModel(), recall=recall, clock=store.clock)
    assistant.turn("erin", "Hello, I am new here.")
    assert recall.wait_for_indexing(timeout=60)
    lines = [
        {
            "session_id": f"old-{i // 20}",
            "user_id": "erin",
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"Imported note {i} about the quarterly budget review number {i}."
            if i != 137
            else "The staging warehouse for the finance team is called heron-finance.",
            "timestamp": f"2025-01-01T10:{i // 60:02d}:{i % 60:02d}Z",
        }
        for i in range(400)
    ]
    store.import_jsonl(json.dumps(line) for line in lines)
    assert recall.pending_count("erin") == 400

    result = assistant.turn("erin", "What is the finance staging warehouse called?")

    mine = [text for thread, text in embedder.by_thread if thread == threading.get_ident()]
    assert mine[-1] == "What is the finance staging warehouse called?"
    assert not any(text.startswith("Imported note") or "heron" in text for text in mine)  # no backlog
    assert any("heron-finance" in t.content for t in result.recalled)  # found by keyword meanwhile
    assert recall.wait_for_indexing(timeout=120)
    assert recall.pending_count("erin") == 0
    bm25_stats_consistent(store.db, "turns", TURNS_TABLE)
    recall.close()
