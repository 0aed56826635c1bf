"""The whole assistant turn on a real Postgres + pgvector, with the offline model or a loopback model server.

The OpenAI-compatible server used for failure and prompt-shape tests is a loopback stand-in
(tests/fake_databricks.py) speaking the documented chat-completions REST shape, driven by the real
``openai`` client.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from context_assistant.assistant.turn import Assistant, TurnFailed
from context_assistant.core.clock import FakeClock
from context_assistant.core.config import Config
from context_assistant.llm.factory import make_chat_model
from context_assistant.llm.offline import OfflineModel
from context_assistant.retrieval.pgvector import PgVectorChunkIndex
from context_assistant.retrieval.recall import TurnRecall
from context_assistant.retrieval.sync import InMemoryChunkSource
from context_assistant.storage.memory import ConversationStore
from fake_databricks import FakeDatabricks, Response
from retrieval_support import HashingEmbedder, document

DOCS = [
    *document(
        "oncall-runbook.txt",
        "The on-call rotation hands over on Tuesdays at 10:00 UTC in the #oncall channel.",
        "An unanswered page escalates to the secondary after 15 minutes.",
    ),
    *document(
        "deployment-guide.md",
        "Production deploys happen Monday to Thursday between 09:00 and 15:00 UTC.",
        "Every change needs two reviewers before it can be merged.",
        heading="Deployment Guide > Rules",
    ),
    *document("faq.html", "Laptops are replaced every 36 months through the IT portal."),
]


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


@pytest.fixture
def index(db, embedder: HashingEmbedder, config: Config) -> PgVectorChunkIndex:  # type: ignore[no-untyped-def]
    chunk_index = PgVectorChunkIndex.from_config(db, embedder, config.rag)
    chunk_index.refresh(InMemoryChunkSource(DOCS))
    return chunk_index


@pytest.fixture
def recall(db, embedder: HashingEmbedder) -> TurnRecall:  # type: ignore[no-untyped-def]
    return TurnRecall(db, embedder, top_k=3)


def make_assistant(
    config: Config, store: ConversationStore, index: Any, recall: Any, chat_model: Any = None, **changes: Any
) -> Assistant:
    for section, values in changes.items():
        config = config.replace(**{section: dataclasses.replace(getattr(config, section), **values)})
    return Assistant(
        config, store, chat_model or OfflineModel(), retriever=index, recall=recall, clock=store.clock
    )


def completion(text: str) -> dict[str, Any]:
    """A chat-completions response body as the OpenAI-compatible REST API returns it."""
    return {
        "id": "c",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }


def loopback_model(config: Config, fake: FakeDatabricks, responses: list[Response]) -> Any:
    """The real OpenAI-compatible client, pointed at the loopback server answering ``responses`` in order."""
    fake.on("POST", "/v1/chat/completions", responses)
    return make_chat_model(
        dataclasses.replace(config.model, provider="openai", base_url=fake.url + "/v1", max_retries=0)
    )


def test_offline_turn_cites_sources_and_stores_both_messages(config, store, index, recall) -> None:  # type: ignore[no-untyped-def]
    assistant = make_assistant(config, store, index, recall)
    result = assistant.turn("ana", "When does the on-call rotation hand over?")

    assert "running without a language model" in result.reply
    assert "Tuesdays at 10:00 UTC" in result.reply and "[1]" in result.reply
    assert result.sources[0].path == "oncall-runbook.txt"
    messages = store.messages("ana", result.session_id)
    assert [(m.role, m.id) for m in messages] == [
        ("user", result.user_message_id),
        ("assistant", result.reply_message_id),
    ]
    reply_meta = messages[1].metadata
    assert reply_meta["status"] == "ok" and reply_meta["model"] == "offline"
    assert reply_meta["sources"][0]["path"] == "oncall-runbook.txt" and "text" not in reply_meta["sources"][0]
    assert {"prompt_tokens", "completion_tokens"} <= set(reply_meta["usage"]) and "latency_ms" in reply_meta
    # The first message names the session.
    assert store.get_session("ana", result.session_id).title == "When does the on-call rotation hand over?"
    assert result.to_json()["sources"][0]["text"].startswith("The on-call rotation")


def test_offline_turn_is_deterministic(config, store, index, recall) -> None:  # type: ignore[no-untyped-def]
    assistant = make_assistant(config, store, index, recall)
    a = assistant.turn("ana", "How many reviewers does a change need?")
    b = assistant.turn("bo", "How many reviewers does a change need?")
    assert a.reply == b.reply and "two reviewers" in a.reply


def test_history_is_sent_in_order_and_trimmed_to_the_newest_turns(
    config, store, index, recall, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    model = loopback_model(config, fake_databricks, [Response(body=completion("ok"))])
    assistant = make_assistant(config, store, index, recall, model, memory={"max_history": 4, "recall": False})
    session = None
    for i in range(4):
        session = assistant.turn("ana", f"question number {i}", session).session_id
    last = fake_databricks.calls("/v1/chat/completions")[-1].json["messages"]
    assert last[0]["role"] == "system"
    conversation = [(m["role"], m["content"]) for m in last[1:]]
    assert conversation == [
        ("user", "question number 1"),
        ("assistant", "ok"),
        ("user", "question number 2"),
        ("assistant", "ok"),
        ("user", "question number 3"),
    ]
    # The turn that fell out of the window was folded into the session summary, written by the model.
    summary_requests = [
        r.json
        for r in fake_databricks.calls("/v1/chat/completions")
        if "running summary" in str(r.json["messages"])
    ]
    assert len(summary_requests) == 1 and "question number 0" in summary_requests[0]["messages"][1]["content"]
    assert store.get_session("ana", session).summary == "ok"
    assert "Summary of the earlier part of this conversation:\nok" in last[0]["content"]


def test_offline_summary_is_extractive(config, store, index, recall) -> None:  # type: ignore[no-untyped-def]
    assistant = make_assistant(config, store, index, recall, memory={"max_history": 2, "recall": False})
    session = None
    for i in range(3):
        session = assistant.turn("ana", f"Question number {i}. With more words after it.", session).session_id
    summary = store.get_session("ana", session).summary
    # The third turn's history window holds turn 1; turn 0 fell out and was summarised, one line per message.
    assert summary.splitlines() == [
        "- user: Question number 0.",
        "- assistant: I'm running without a language model, so I can't write an answer myself.",
    ]


def test_recall_brings_a_fact_from_another_session_of_the_same_user_only(config, store, index, recall) -> None:  # type: ignore[no-untyped-def]
    assistant = make_assistant(config, store, index, recall)
    first = assistant.turn("ana", "Remember: my team's staging database is called pelican-stage.")
    assistant.turn("mallory", "Mallory's secret database is called pelican-secret.")

    later = assistant.turn("ana", "What is my staging database called? pelican")
    assert later.session_id != first.session_id
    recalled = [t.content for t in later.recalled]
    assert any("pelican-stage" in c for c in recalled)
    assert not any("pelican-secret" in c for c in recalled)
    # The offline model's own replies only quote documents: they are never recalled as "what was said".
    assert recalled and all(t.role == "user" for t in later.recalled)
    assert "pelican-stage" in later.reply and "pelican-secret" not in later.reply
    # What was recalled is named in the answer and in the stored reply (with a real model the reply's text
    # does not show it): where each turn is, not its text.
    named = [
        {
            "message_id": t.message_id,
            "session_id": first.session_id,
            "role": "user",
            "timestamp": t.timestamp.isoformat(),
        }
        for t in later.recalled
    ]
    assert later.to_json()["recalled"] == named
    assert store.get_message("ana", later.reply_message_id).metadata["recalled"] == named
    assert "recalled" not in store.get_message("ana", first.reply_message_id).metadata  # nothing recalled then


def test_model_failure_keeps_the_message_marks_it_and_later_prompts_skip_it(
    config, store, index, recall, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    ok = Response(body=completion("fine"))
    model = loopback_model(config, fake_databricks, [ok, Response(503, {"error": {"message": "overloaded"}}), ok])
    assistant = make_assistant(config, store, index, recall, model, memory={"recall": False})
    session = assistant.turn("ana", "first question").session_id

    with pytest.raises(TurnFailed) as info:
        assistant.turn("ana", "this one hits an outage", session)
    failure = info.value
    assert failure.retryable and failure.kind == "unavailable" and failure.session_id == session
    stored = store.get_message("ana", failure.user_message_id)
    assert stored.content == "this one hits an outage" and stored.failed
    assert stored.metadata["error_kind"] == "unavailable"

    assistant.turn("ana", "next question", session)
    sent = [m["content"] for m in fake_databricks.calls("/v1/chat/completions")[-1].json["messages"][1:]]
    assert sent == ["first question", "fine", "next question"]


def test_a_failed_turn_can_be_retried_without_duplicating_the_message(
    config, store, index, recall, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    model = loopback_model(
        config,
        fake_databricks,
        [Response(429, {"error": {"message": "slow down"}}), Response(body=completion("answer"))],
    )
    assistant = make_assistant(config, store, index, recall, model)
    with pytest.raises(TurnFailed) as info:
        assistant.turn("ana", "please answer")
    retried = assistant.turn("ana", retry_of=info.value.user_message_id)
    assert retried.reply == "answer" and retried.user_message_id == info.value.user_message_id
    messages = store.messages("ana", retried.session_id)
    assert [m.content for m in messages] == ["please answer", "answer"]
    assert messages[0].metadata["status"] == "ok"
    with pytest.raises(ValueError, match="not a failed user message"):
        assistant.turn("ana", retry_of=retried.user_message_id)
    with pytest.raises(LookupError):
        assistant.turn("bo", retry_of=retried.user_message_id)


def test_streaming_turn_yields_start_sources_deltas_done(config, store, index, recall) -> None:  # type: ignore[no-untyped-def]
    assistant = make_assistant(config, store, index, recall)
    events = list(assistant.stream_turn("ana", "When are production deploys allowed?"))
    kinds = [e.type for e in events]
    assert kinds[0] == "start" and kinds[1] == "sources" and kinds[-1] == "done"
    assert kinds.count("delta") >= 1
    text = "".join(e.data["text"] for e in events if e.type == "delta")
    done = events[-1].result
    assert done is not None and text == done.reply
    assert events[1].data["sources"][0]["path"] == "deployment-guide.md"
    assert store.get_message("ana", done.reply_message_id).content == text


def test_abandoned_stream_keeps_the_message_and_marks_it_interrupted(config, store, index, recall) -> None:  # type: ignore[no-untyped-def]
    assistant = make_assistant(config, store, index, recall)
    stream = assistant.stream_turn("ana", "When are production deploys allowed?")
    start = next(stream)
    next(stream)  # sources
    stream.close()  # the client went away before the answer
    message = store.get_message("ana", start.data["user_message_id"])
    assert message.failed and message.metadata["error_kind"] == "interrupted"
    assert len(store.messages("ana", start.data["session_id"])) == 1


def test_message_too_long_for_the_context_is_refused_but_kept(config, store, index, recall) -> None:  # type: ignore[no-untyped-def]
    assistant = make_assistant(config, store, index, recall, model={"context_tokens": 600, "max_tokens": 100})
    with pytest.raises(TurnFailed) as info:
        assistant.turn("ana", "word " * 600)
    assert info.value.kind == "context_too_long" and not info.value.retryable
    assert "model.context_tokens" in str(info.value)
    assert store.get_message("ana", info.value.user_message_id).failed


def test_small_context_drops_low_priority_blocks_first(config, store, index, recall) -> None:  # type: ignore[no-untyped-def]
    assistant = make_assistant(config, store, index, recall, model={"context_tokens": 625, "max_tokens": 512})
    result = assistant.turn("ana", "When does the on-call rotation hand over?")
    # With ~113 tokens for the prompt, only the best source fits next to the system prompt and the question.
    assert 1 <= len(result.sources) < 3 and result.sources[0].path == "oncall-runbook.txt"


def test_empty_and_oversized_messages_are_rejected_before_storing(config, store, index, recall) -> None:  # type: ignore[no-untyped-def]
    assistant = make_assistant(config, store, index, recall, web={"max_message_chars": 20})
    with pytest.raises(ValueError, match="the message is empty"):
        assistant.turn("ana", "   ")
    with pytest.raises(ValueError, match=r"the limit is 20 \(web.max_message_chars\)"):
        assistant.turn("ana", "x" * 21)
    assert store.list_sessions("ana") == []


def test_retrieval_failure_degrades_to_an_answer_without_sources(config, store, recall) -> None:  # type: ignore[no-untyped-def]
    class BrokenIndex:
        """A retriever whose backend is down (its error type is what the index raises)."""

        def search(self, *args: Any, **kwargs: Any) -> list[Any]:
            from context_assistant.retrieval.base import RetrievalError

            raise RetrievalError("index not built yet: run context-assistant sync")

    assistant = make_assistant(config, store, BrokenIndex(), recall)
    result = assistant.turn("ana", "anything")
    assert result.sources == [] and result.warnings == [
        "document search unavailable: index not built yet: run context-assistant sync"
    ]
    assert store.get_message("ana", result.reply_message_id).metadata["warnings"] == result.warnings


def test_another_users_session_is_not_found(config, store, index, recall) -> None:  # type: ignore[no-untyped-def]
    from context_assistant.storage.memory import SessionNotFound

    assistant = make_assistant(config, store, index, recall)
    session = assistant.turn("ana", "hello").session_id
    with pytest.raises(SessionNotFound):
        assistant.turn("mallory", "let me in", session)
    assert len(store.messages("ana", session)) == 2


def test_turn_is_traced_with_a_span_per_step(config, store, index, recall, tmp_path, clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    from context_assistant.core.tracing import Tracer

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracer = Tracer(
        uri,
        experiment="assistant-test",
        artifact_location=(tmp_path / "artifacts").as_uri(),
        setup_timeout_seconds=600,  # a loaded shared machine may need minutes to import MLflow
    )
    assistant = Assistant(
        config, store, OfflineModel(), retriever=index, recall=recall, tracer=tracer, clock=clock
    )
    result = assistant.turn("ana", "When does the on-call rotation hand over?")
    tracer.flush()
    assert result.trace_id
    trace = MlflowClient(uri).get_trace(result.trace_id)
    names = [s.name for s in trace.data.spans]
    assert {"memory_load", "recall", "retrieval", "prompt_build", "model_call", "memory_store"} <= set(names)
    assert trace.info.trace_metadata["mlflow.trace.user"] == "ana"
    assert trace.info.trace_metadata["mlflow.trace.session"] == result.session_id
    assert store.get_message("ana", result.reply_message_id).metadata["trace_id"] == result.trace_id
    tracer.close()
