"""Answers that outlive the HTTP stream (live.py), over real HTTP: uvicorn on a loopback port, the real test
Postgres, and a chat model on a loopback OpenAI-compatible server that holds mid-answer until released
(tests/live_support.py) — so "mid-stream" is an exact point, not a timing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from context_assistant.storage.limbo import TURN_QUESTION
from fake_databricks import FakeDatabricks
from live_support import HeldAnswer, held_model_config
from web_support import start_app_fixture, wait_for  # noqa: F401  (the start_app fixture)

QUESTION = "When does the on-call rotation hand over?"
WORDS = [f"word{i} " for i in range(8)]
ANN = "ann@example.com"


def events_with_ids(response: httpx.Response) -> Iterator[tuple[int | None, str, dict[str, Any]]]:
    event_id, event, data = None, "message", ""
    for line in response.iter_lines():
        if line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line:
            if data:
                yield event_id, event, json.loads(data)
            event_id, event, data = None, "message", ""


def start_and_leave(client: httpx.Client, answer: HeldAnswer) -> list[tuple[int | None, str, dict[str, Any]]]:
    """Send QUESTION, read until the model holds mid-answer, then hang up."""
    seen = []
    with client.stream("POST", "/api/chat/stream", json={"message": QUESTION}) as response:
        assert response.status_code == 200
        for item in events_with_ids(response):
            seen.append(item)
            if item[1] == "delta" and answer.held.is_set() and len([s for s in seen if s[1] == "delta"]) == 3:
                break
    return seen


def test_a_client_that_hangs_up_mid_answer_still_gets_it_stored_and_can_reattach(
    start_app, make_config, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    answer = HeldAnswer(WORDS, hold_after=3)
    app = start_app(held_model_config(make_config, fake_databricks, answer, web__forwarded_identity="trust"))
    client = app.client(ANN)
    try:
        seen = start_and_leave(client, answer)
        assert [e for _, e, _ in seen] == ["start", "sources", "delta", "delta", "delta"]
        assert [i for i, _, _ in seen] == [1, 2, 3, 4, 5]
        start = seen[0][2]
        user_message_id = start["user_message_id"]

        listed = client.get("/api/chat/turns").json()["turns"]
        assert listed == [
            {
                "session_id": start["session_id"],
                "user_message_id": user_message_id,
                "last_event_id": 5,
                "finished": False,
            }
        ]
        # Another user sees nothing of it.
        assert app.client("mallory@example.com").get("/api/chat/turns").json() == {"turns": []}
        assert (
            app.client("mallory@example.com").get(f"/api/chat/turns/{user_message_id}/events").status_code == 404
        )

        # A second tab re-attaches after event 4 (Last-Event-ID) and sees the rest, then the answer ends.
        with client.stream(
            "GET", f"/api/chat/turns/{user_message_id}/events", headers={"Last-Event-ID": "4"}
        ) as response:
            answer.release.set()
            rest = list(events_with_ids(response))
        assert rest[0][0] == 5 and rest[0][1] == "delta"
        assert [e for _, e, _ in rest][-1] == "done"
        assert "".join(d["text"] for _, e, d in rest if e == "delta") == answer.text()[len(answer.text(2)) :]
        done = rest[-1][2]
        assert done["reply"] == answer.text()

        # ?after=0 replays the whole turn while it lingers.
        with client.stream("GET", f"/api/chat/turns/{user_message_id}/events?after=0") as response:
            replay = list(events_with_ids(response))
        assert [i for i, _, _ in replay] == list(range(1, len(replay) + 1))
        assert replay[-1][1] == "done"

        user = ANN
        stored = app.services.store.messages(user, start["session_id"])
        assert [(m.role, m.metadata.get("status")) for m in stored] == [("user", "ok"), ("assistant", "ok")]
        assert stored[1].content == answer.text()
    finally:
        answer.release.set()


def test_nobody_watching_the_answer_is_still_stored(
    start_app, make_config, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    answer = HeldAnswer(WORDS, hold_after=3)
    app = start_app(held_model_config(make_config, fake_databricks, answer))
    client = app.client()
    try:
        start = start_and_leave(client, answer)[0][2]
    finally:
        answer.release.set()
    user = app.services.config.default_user
    replies = wait_for(
        lambda: [m for m in app.services.store.messages(user, start["session_id"]) if m.role == "assistant"],
        "the answer to be stored with nobody watching",
    )
    assert replies[0].content == answer.text() and replies[0].metadata["status"] == "ok"


def test_stop_keeps_the_partial_answer_marked_stopped(
    start_app, make_config, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    answer = HeldAnswer(WORDS, hold_after=3)
    app = start_app(held_model_config(make_config, fake_databricks, answer, web__forwarded_identity="trust"))
    client = app.client(ANN)
    try:
        with client.stream("POST", "/api/chat/stream", json={"message": QUESTION}) as response:
            seen = []
            for item in events_with_ids(response):
                seen.append(item)
                if item[1] == "start":
                    user_message_id = item[2]["user_message_id"]
                if item[1] == "delta" and len([s for s in seen if s[1] == "delta"]) == 3:
                    assert (
                        app.client("mallory@example.com")
                        .post(f"/api/chat/turns/{user_message_id}/stop", json={})
                        .status_code
                        == 404
                    )
                    stopped = client.post(f"/api/chat/turns/{user_message_id}/stop", json={})
                    assert stopped.status_code == 200 and stopped.json()["finished"] is False
                    answer.release.set()  # the model's next piece arrives; the turn stops there
        names = [e for _, e, _ in seen]
        assert names[-1] == "stopped" and "done" not in names
        end = seen[-1][2]
        partial = "".join(d["text"] for _, e, d in seen if e == "delta")
        assert partial == answer.text(3)  # what was written before Stop (the piece on its way is dropped)
        assert end["reply"] == partial and end["reason"] == "stopped" and end["message_id"]

        user = ANN
        question, reply = app.services.store.messages(user, end["session_id"])
        assert question.metadata["status"] == "stopped" and not question.failed
        assert reply.content == partial
        assert reply.metadata["status"] == "stopped" and reply.metadata["in_reply_to"] == question.id
        assert reply.metadata["sources"] and "text" not in reply.metadata["sources"][0]
        messages = client.get(f"/api/sessions/{end['session_id']}/messages").json()["messages"]
        assert [m["metadata"]["status"] for m in messages] == ["stopped", "stopped"]
        # Stopping a finished turn changes nothing.
        assert client.post(f"/api/chat/turns/{user_message_id}/stop", json={}).json()["finished"] is True
    finally:
        answer.release.set()


def test_stopped_before_any_text_the_question_can_be_retried(
    start_app, make_config, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    answer = HeldAnswer(WORDS, hold_after=0)
    app = start_app(held_model_config(make_config, fake_databricks, answer))
    client = app.client()
    try:
        with client.stream("POST", "/api/chat/stream", json={"message": QUESTION}) as response:
            events = events_with_ids(response)
            for _, name, data in events:
                if name == "sources":
                    break
                start = data
            assert answer.held.wait(30)
            client.post(f"/api/chat/turns/{start['user_message_id']}/stop", json={})
            answer.release.set()
            rest = list(events)
        assert rest[-1][1] == "stopped" and rest[-1][2]["message_id"] is None
        user = app.services.config.default_user
        question = app.services.store.get_message(user, start["user_message_id"])
        assert question.failed and question.metadata["error_kind"] == "stopped"
        with client.stream("POST", "/api/chat/stream", json={"retry_of": start["user_message_id"]}) as again:
            events = list(events_with_ids(again))
        assert events[-1][1] == "done" and events[-1][2]["reply"] == answer.text()
        assert events[0][2]["user_message_id"] == start["user_message_id"]
    finally:
        answer.release.set()


def test_reattaching_to_a_turn_that_is_not_running_is_a_json_404(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    client = app.client()
    response = client.get("/api/chat/turns/123456/events")
    assert response.status_code == 404
    assert "no answer to message 123456 is being written" in response.json()["error"]
    assert client.post("/api/chat/turns/123456/stop", json={}).status_code == 404


# ---------------------------------------------------------------------------------------------------------
# a turn always ends in a state


def test_shutdown_marks_an_answer_being_written_interrupted_and_retry_answers_it(
    start_app, make_config, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    answer = HeldAnswer(WORDS, hold_after=3)
    app = start_app(held_model_config(make_config, fake_databricks, answer))
    client = app.client()
    try:
        start = start_and_leave(client, answer)[0][2]
        app.state.turns.shutdown(timeout=0.5)  # what the app's lifespan does on SIGTERM
        user = app.services.config.default_user
        question = app.services.store.get_message(user, start["user_message_id"])
        assert question.failed and question.metadata["error_kind"] == "interrupted"
        answer.release.set()  # the turn's thread ends; nothing more is written over the state
        wait_for(lambda: not app.state.turns.running(), "the stopped turn to end")
        question = app.services.store.get_message(user, start["user_message_id"])
        assert question.failed and question.metadata["error_kind"] == "interrupted"
        assert [m.role for m in app.services.store.messages(user, start["session_id"])] == ["user"]
        # a new turn is refused while shutting down (503, the question is not stored)
        refused = client.post("/api/chat/stream", json={"message": "another"})
        assert refused.status_code == 503 and "send it again" in refused.json()["error"]
    finally:
        answer.release.set()


def test_questions_left_in_limbo_are_marked_interrupted_and_can_be_retried(start_app) -> None:  # type: ignore[no-untyped-def]
    """What a SIGKILL or a killed database leaves behind: a question a turn stored, with no reply and no
    status. Imported messages are records, not turns: an unanswered imported question is never marked."""
    app = start_app()
    store = app.services.store
    user = app.services.config.default_user
    old = store.create_session(user, "killed mid-turn")
    limbo = store.append(user, old.id, "user", QUESTION, dict(TURN_QUESTION))  # the process died here
    answered = store.create_session(user, "imported")
    store.append(user, answered.id, "user", "imported question")  # imported pairs have no status
    store.append(user, answered.id, "assistant", "imported answer")
    unanswered = store.create_session(user, "imported, ends with a question")
    store.append(user, unanswered.id, "user", "an imported question nobody answered")
    lone = store.append(user, unanswered.id, "user", "and another one")
    recent = store.create_session(user, "being answered elsewhere")
    young = store.append(user, recent.id, "user", "still within the grace period", dict(TURN_QUESTION))
    with app.services.db.connection() as conn:
        conn.execute(
            "UPDATE conversations SET timestamp = timestamp - interval '1 hour' WHERE session_id = ANY(%s)",
            ([old.id, answered.id, unanswered.id],),
        )
    assert app.state.turns.sweep() == [limbo.id]
    marked = store.get_message(user, limbo.id)
    assert marked.failed and marked.metadata["error_kind"] == "interrupted"
    assert not store.get_message(user, young.id).failed
    assert store.get_message(user, lone.id).metadata == {}

    client = app.client()
    again = client.post("/api/chat", json={"retry_of": limbo.id})
    assert again.status_code == 200 and again.json()["user_message_id"] == limbo.id
    # A question stored before this app started (killed a moment ago) is retryable at once.
    app.state.turns.started_at = app.services.clock.now()
    retried = client.post("/api/chat", json={"retry_of": young.id})
    assert retried.status_code == 200 and retried.json()["user_message_id"] == young.id
