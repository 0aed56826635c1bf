"""The web API over real HTTP: uvicorn on a loopback port, the real test Postgres, the offline model.

Model failures and a slow stream come from a loopback OpenAI-compatible server (tests/fake_databricks.py)
speaking the documented chat-completions REST shape to the real ``openai`` client; the Databricks Jobs API
behind an app's document refresh is the same loopback server speaking the Jobs REST shape.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from conftest import REPO, TEMPLATE_DB
from context_assistant.assistant.turn import TurnEvent
from context_assistant.core.config import load_config
from context_assistant.refresh import refresh_index
from context_assistant.retrieval.sync import InMemoryChunkSource
from context_assistant.services import Services
from context_assistant.web.app import bind_address
from context_assistant.web.errors import SERVER_ERROR, people_message
from context_assistant.web.routes.status import STATIC_DIR
from context_assistant.web.stream import KEEPALIVE, turn_frames
from fake_databricks import FakeDatabricks, Response
from web_support import DOCS, read_events, start_app_fixture, wait_for  # noqa: F401  (the start_app fixture)

QUESTION = "When does the on-call rotation hand over?"


def error_body(response: httpx.Response) -> dict[str, Any]:
    """An error response's JSON without its request id, after checking that the id is the X-Request-ID."""
    body = dict(response.json())
    assert body.pop("request_id") == response.headers["x-request-id"], body
    return body


# ---------------------------------------------------------------------------------------------------------
# chat


def test_chat_answers_from_the_documents_and_stores_the_turn(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    client = app.client()

    reply = client.post("/api/chat", json={"message": QUESTION})

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "Tuesdays at 10:00 UTC" in body["reply"] and "[1]" in body["reply"]
    assert body["sources"][0]["path"] == "runbooks/oncall.md"
    assert body["sources"][0]["heading"] == "On-call > Handover"
    assert any(s["text"].startswith("The on-call rotation hands over") for s in body["sources"])
    assert body["model"] == "offline" and body["trace_id"] is None
    assert body["recalled"] == []  # a first conversation: nothing earlier to recall
    user = app.services.config.default_user
    stored = app.services.store.messages(user, body["session_id"])
    assert [(m.id, m.role) for m in stored] == [
        (body["user_message_id"], "user"),
        (body["message_id"], "assistant"),
    ]

    follow_up = client.post(
        "/api/chat", json={"message": "And who reviews deploys?", "session_id": body["session_id"]}
    )
    assert follow_up.status_code == 200 and follow_up.json()["session_id"] == body["session_id"]
    [session] = client.get("/api/sessions").json()["sessions"]
    assert session["id"] == body["session_id"] and session["message_count"] == 4
    assert session["title"] == QUESTION


def test_chat_in_an_unknown_session_is_404_and_stores_nothing(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    client = app.client()
    for path in ("/api/chat", "/api/chat/stream"):
        response = client.post(path, json={"message": "hello", "session_id": "no-such-session"})
        assert response.status_code == 404
        assert error_body(response) == {
            "error": "session not found: no-such-session",
            "hint": "GET /api/sessions lists your sessions; leave session_id out to start a new one",
        }
    assert client.get("/api/sessions").json()["sessions"] == []


def test_stream_sends_start_sources_deltas_and_done(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    client = app.client()

    with client.stream("POST", "/api/chat/stream", json={"message": QUESTION}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache, no-transform"
        assert response.headers["x-accel-buffering"] == "no"
        events = list(read_events(response))

    names = [name for name, _ in events]
    assert names[:2] == ["start", "sources"] and names[-1] == "done"
    assert set(names[2:-1]) == {"delta"} and len(names) > 4  # the offline answer streams line by line
    start, sources, done = events[0][1], events[1][1], events[-1][1]
    assert sources["sources"][0]["path"] == "runbooks/oncall.md" and sources["sources"][0]["text"]
    streamed = "".join(data["text"] for name, data in events if name == "delta")
    assert streamed == done["reply"] and "Tuesdays at 10:00 UTC" in streamed
    assert done["session_id"] == start["session_id"] and done["user_message_id"] == start["user_message_id"]
    reply = app.services.store.get_message(app.services.config.default_user, done["message_id"])
    assert reply.content == streamed and reply.metadata["status"] == "ok"


def openai_model_config(make_config: Any, fake: FakeDatabricks) -> Any:
    return make_config(
        model__provider="openai", model__base_url=fake.url + "/v1", model__max_retries=0, model__endpoint="m"
    )


def completion_chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"role": "assistant", "content": content} if content is not None else {}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def sse_bytes(*events: dict[str, Any]) -> list[bytes]:
    import json

    return [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


def test_a_failed_model_call_is_an_error_event_and_retry_of_answers_the_same_message(
    start_app, make_config, fake_databricks: FakeDatabricks, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    overloaded = Response(503, {"error": {"message": "the endpoint is overloaded", "type": "server_error"}})
    answered = Response(
        body={
            "id": "chatcmpl-2",
            "object": "chat.completion",
            "created": 1767225600,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Tuesdays, 10:00 UTC."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46},
        }
    )
    fake_databricks.on("POST", "/v1/chat/completions", [overloaded, overloaded, answered])
    app = start_app(openai_model_config(make_config, fake_databricks))
    client = app.client()

    caplog.set_level(logging.WARNING, logger="context_assistant")
    with client.stream("POST", "/api/chat/stream", json={"message": QUESTION}) as response:
        events = list(read_events(response))
        request_id = response.headers["x-request-id"]
    assert [name for name, _ in events] == ["start", "sources", "error"]
    error = events[-1][1]
    assert error["kind"] == "unavailable" and error["retryable"] is True
    assert error["user_message_id"] == events[0][1]["user_message_id"]
    # People read a sentence saying what to do; the model's address and its answer go to the log only.
    assert error["error"] == people_message("unavailable") and error["request_id"] == request_id
    [logged] = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert "overloaded" in logged and fake_databricks.url in logged

    # The non-streaming endpoint answers a failed turn with 502 and the same fields.
    failed = client.post("/api/chat", json={"message": "second try", "session_id": error["session_id"]})
    assert failed.status_code == 502 and failed.json()["retryable"] is True
    assert error_body(failed)["error"] == people_message("unavailable")
    stored = client.get(f"/api/sessions/{error['session_id']}/messages").json()["messages"]
    assert stored[-1]["metadata"]["error"] == people_message("unavailable")
    assert "overloaded" not in str(stored)

    retried = client.post("/api/chat", json={"retry_of": error["user_message_id"]})
    assert retried.status_code == 200, retried.text
    assert retried.json()["reply"] == "Tuesdays, 10:00 UTC."
    assert retried.json()["user_message_id"] == error["user_message_id"]
    messages = client.get(f"/api/sessions/{error['session_id']}/messages").json()["messages"]
    assert [(m["role"], m["metadata"].get("status")) for m in messages] == [
        ("user", "ok"),
        ("user", "failed"),
        ("assistant", "ok"),
    ]
    assert [m["content"] for m in messages if m["role"] == "user"] == [QUESTION, "second try"]

    again = client.post("/api/chat", json={"retry_of": error["user_message_id"]})
    assert again.status_code == 422
    assert (
        again.json()["error"]
        == f"message {error['user_message_id']} is not a failed user message; nothing to retry"
    )


# A client that hangs up mid-answer: tests/test_web_live.py (the turn goes on and is stored).


# ---------------------------------------------------------------------------------------------------------
# sessions and identity


def test_sessions_can_be_created_listed_renamed_read_and_deleted(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    client = app.client()

    created = client.post("/api/sessions", json={"title": "  Planning  "})
    assert created.status_code == 201
    session = created.json()
    assert session["title"] == "Planning" and session["message_count"] == 0
    chat = client.post("/api/chat", json={"message": "Who reviews changes?", "session_id": session["id"]}).json()
    assert client.get(f"/api/sessions/{session['id']}").json()["title"] == "Planning"  # not renamed by the chat

    renamed = client.patch(f"/api/sessions/{session['id']}", json={"title": "Reviews"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Reviews"
    listed = client.get("/api/sessions").json()
    assert listed["user"] == app.services.config.default_user
    assert [(s["id"], s["title"], s["message_count"]) for s in listed["sessions"]] == [
        (session["id"], "Reviews", 2)
    ]
    messages = client.get(f"/api/sessions/{session['id']}/messages").json()
    assert messages["session"]["title"] == "Reviews"
    assert [m["id"] for m in messages["messages"]] == [chat["user_message_id"], chat["message_id"]]
    assert messages["messages"][1]["metadata"]["sources"][0]["path"] == "guides/deployment.md"

    blank = client.patch(f"/api/sessions/{session['id']}", json={"title": "   "})
    assert blank.status_code == 422 and error_body(blank) == {"error": "the title is blank"}
    too_long = client.patch(f"/api/sessions/{session['id']}", json={"title": "x" * 201})
    assert too_long.status_code == 422
    assert error_body(too_long) == {"error": "title: String should have at most 200 characters", "field": "title"}

    assert client.delete(f"/api/sessions/{session['id']}").status_code == 204
    assert client.get(f"/api/sessions/{session['id']}").status_code == 404
    assert client.get("/api/sessions").json()["sessions"] == []
    assert client.delete(f"/api/sessions/{session['id']}").status_code == 404


def test_another_users_sessions_are_not_found(start_app, make_config) -> None:  # type: ignore[no-untyped-def]
    app = start_app(make_config(web__forwarded_identity="trust"))
    ana, bo = app.client("ana@example.com"), app.client("bo@example.com")
    turn = ana.post("/api/chat", json={"message": QUESTION}).json()
    sid = turn["session_id"]
    missing = {"error": f"session not found: {sid}"}

    assert bo.get("/api/sessions").json() == {"user": "bo@example.com", "sessions": []}
    for response in (
        bo.get(f"/api/sessions/{sid}"),
        bo.get(f"/api/sessions/{sid}/messages"),
        bo.patch(f"/api/sessions/{sid}", json={"title": "mine now"}),
        bo.delete(f"/api/sessions/{sid}"),
        bo.post("/api/chat", json={"message": "hi", "session_id": sid}),
    ):
        hint = "GET /api/sessions lists your sessions"
        if response.request.url.path == "/api/chat":
            hint += "; leave session_id out to start a new one"
        assert response.status_code == 404 and error_body(response) == {**missing, "hint": hint}, response.request
    other_feedback = bo.post("/api/feedback", json={"message_id": turn["message_id"], "value": "down"})
    assert other_feedback.status_code == 404
    assert error_body(other_feedback) == {"error": f"message not found: {turn['message_id']}"}
    other_retry = bo.post("/api/chat", json={"retry_of": turn["user_message_id"]})
    assert other_retry.status_code == 404

    # Nothing of ana's changed.
    [session] = ana.get("/api/sessions").json()["sessions"]
    assert session["title"] == QUESTION and session["message_count"] == 2
    assert "feedback" not in ana.get(f"/api/sessions/{sid}/messages").json()["messages"][1]["metadata"]


def test_forwarded_identity_is_honoured_only_behind_the_databricks_apps_proxy(start_app, make_config) -> None:  # type: ignore[no-untyped-def]
    local = start_app(make_config(web__default_user="dev"))
    spoofed = local.client("mallory@example.com")
    assert spoofed.get("/api/me").json()["user"] == "dev"
    assert spoofed.get("/api/me").json()["identity"] == "default"

    on_apps = start_app(make_config(), env={"DATABRICKS_APP_NAME": "context-assistant"})
    me = on_apps.client("ana@example.com").get("/api/me").json()
    assert (me["user"], me["identity"]) == ("ana@example.com", "x-forwarded-email")
    by_user_header = on_apps.client(headers={"X-Forwarded-User": "1234@5678"}).get("/api/me").json()
    assert by_user_header["user"] == "1234@5678"
    anonymous = on_apps.client().get("/api/sessions")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"].startswith("no user identity: the request lacks the X-Forwarded-Email header")

    ignoring = start_app(
        make_config(web__forwarded_identity="ignore", web__default_user="kiosk"),
        env={"DATABRICKS_APP_NAME": "context-assistant"},
    )
    assert ignoring.client("ana@example.com").get("/api/me").json()["user"] == "kiosk"


# ---------------------------------------------------------------------------------------------------------
# limits


def test_input_limits_are_clear_errors_and_store_nothing(start_app, make_config) -> None:  # type: ignore[no-untyped-def]
    app = start_app(make_config(web__max_message_chars=50, web__max_body_bytes=2048, rag__enabled=False))
    client = app.client()

    too_long = client.post("/api/chat", json={"message": "x" * 51})
    assert too_long.status_code == 422
    assert error_body(too_long) == {
        "error": "the message is 51 characters; the limit is 50 (web.max_message_chars)"
    }
    streamed = client.post("/api/chat/stream", json={"message": "y" * 60})
    assert streamed.status_code == 422 and "the limit is 50" in streamed.json()["error"]
    empty = client.post("/api/chat", json={"message": "  \n "})
    assert empty.status_code == 422 and error_body(empty) == {"error": "the message is empty"}

    body = b'{"message": "' + b"z" * 3000 + b'"}'
    declared = client.post("/api/chat", content=body, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    assert error_body(declared) == {
        "error": "the request body is 3015 bytes; the limit is 2048 bytes (web.max_body_bytes)"
    }
    chunked = client.post(
        "/api/chat", content=iter([body[:1500], body[1500:]]), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    assert error_body(chunked) == {
        "error": "the request body is more than 2048 bytes; the limit is 2048 bytes (web.max_body_bytes)"
    }

    form = client.post("/api/chat", data={"message": "hi"})
    assert form.status_code == 415
    assert error_body(form) == {
        "error": "send the request body as JSON (Content-Type: application/json), not application/x-www-form-urlencoded"
    }
    broken = client.post("/api/chat", content=b'{"message": ', headers={"Content-Type": "application/json"})
    assert broken.status_code == 422
    assert error_body(broken) == {"error": "the request body is not valid JSON (Expecting value at character 12)"}
    missing = client.post("/api/feedback", json={"value": "up"})
    assert missing.status_code == 422 and error_body(missing) == {
        "error": "message_id: Field required",
        "field": "message_id",
    }
    for path in ("/api/chat", "/api/chat/stream"):
        nothing = client.post(path, json={})
        assert nothing.status_code == 422 and error_body(nothing) == {
            "error": """'message' is missing: send {"message": "your question"} (or retry_of, a failed message's id)""",
            "field": "message",
        }
    misspelt = client.post("/api/chat", json={"msg": "hi"})
    assert misspelt.status_code == 422 and error_body(misspelt) == {
        "error": "msg: not a field of this request (the fields are listed at /docs)",
        "field": "msg",
    }
    wrong_type = client.post("/api/chat", json={"message": ["a"]})
    assert wrong_type.status_code == 422 and error_body(wrong_type) == {
        "error": "message: Input should be a valid string",
        "field": "message",
    }

    assert client.get("/api/sessions").json()["sessions"] == []
    assert client.post("/api/chat", json={"message": "x" * 50}).status_code == 200  # at the limit is fine


# ---------------------------------------------------------------------------------------------------------
# feedback and sources


def test_feedback_is_stored_with_the_reply(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    client = app.client()
    turn = client.post("/api/chat", json={"message": QUESTION}).json()

    given = client.post(
        "/api/feedback", json={"message_id": turn["message_id"], "value": "down", "comment": " Wrong day. "}
    )
    assert given.status_code == 200, given.text
    assert given.json()["value"] == "down" and given.json()["comment"] == "Wrong day."
    assert given.json()["traced"] is False and given.json()["note"] == "this turn was not traced"
    reply = app.services.store.get_message(app.services.config.default_user, turn["message_id"])
    assert reply.metadata["feedback"]["value"] == "down" and reply.metadata["feedback"]["comment"] == "Wrong day."
    assert reply.metadata["status"] == "ok"  # the rest of the metadata is kept

    changed = client.post("/api/feedback", json={"message_id": turn["message_id"], "value": "up"})
    assert changed.status_code == 200
    reply = app.services.store.get_message(app.services.config.default_user, turn["message_id"])
    assert reply.metadata["feedback"]["value"] == "up"

    on_question = client.post("/api/feedback", json={"message_id": turn["user_message_id"], "value": "up"})
    assert on_question.status_code == 422
    assert error_body(on_question) == {
        "error": f"feedback is given on a reply; message {turn['user_message_id']} is a user message"
    }
    bad_value = client.post("/api/feedback", json={"message_id": turn["message_id"], "value": "meh"})
    assert bad_value.status_code == 422 and error_body(bad_value) == {
        "error": "value: Input should be 'up' or 'down'",
        "field": "value",
    }
    unknown = client.post("/api/feedback", json={"message_id": 999999, "value": "up"})
    assert unknown.status_code == 404 and error_body(unknown) == {"error": "message not found: 999999"}


def test_a_cited_passage_can_be_read_back(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    client = app.client()
    turn = client.post("/api/chat", json={"message": QUESTION}).json()
    chunk_id = turn["sources"][0]["chunk_id"]

    [chunk] = [c for c in DOCS if c.chunk_id == chunk_id]

    passage = client.get(f"/api/sources/{chunk_id}")
    assert passage.status_code == 200
    assert passage.json() == {
        "chunk_id": chunk_id,
        "path": chunk.path,
        "heading": chunk.heading,
        "page": None,
        "text": chunk.text,
    }
    gone = client.get("/api/sources/no-such-chunk")
    assert gone.status_code == 404
    assert error_body(gone) == {
        "error": "passage no-such-chunk is no longer in the document index (its document changed or was removed)"
    }


# ---------------------------------------------------------------------------------------------------------
# document refresh


class GatedSource(InMemoryChunkSource):
    """The in-memory chunk table, whose listing waits until the test opens the gate (a refresh in progress)."""

    def __init__(self, chunks: Any) -> None:
        super().__init__(chunks)
        self.gate = threading.Event()

    def fingerprints(self) -> Any:
        assert self.gate.wait(20), "the test never opened the gate"
        return super().fingerprints()


def test_refresh_runs_in_the_background_one_at_a_time(start_app) -> None:  # type: ignore[no-untyped-def]
    source = GatedSource(DOCS)
    source.gate.set()  # the initial index build
    services_ref: dict[str, Services] = {}

    def sync_only(full: bool, progress: Any) -> Any:
        progress("syncing the index")
        return refresh_index(services_ref["services"], full=full)

    app = start_app(chunk_source=source, refresh=sync_only)
    services_ref["services"] = app.services
    client = app.client()
    assert client.get("/api/rag/refresh").json()["state"] == "idle"

    source.gate.clear()
    source.put([dataclasses.replace(DOCS[0], chunk_id="new-1", chunk_index=9)])
    started = client.post("/api/rag/refresh", json={"full": False})
    assert started.status_code == 202
    assert (
        started.json()["state"] == "running" and started.json()["started_by"] == app.services.config.default_user
    )

    second = client.post("/api/rag/refresh", json={})
    assert second.status_code == 409
    assert second.json()["error"].startswith("a document refresh started by ")
    assert second.json()["error"].endswith("is still running; wait for it to finish")
    running = client.get("/api/rag/refresh").json()
    assert running["state"] == "running" and running["progress"] == "syncing the index"

    source.gate.set()
    done = wait_for(
        lambda: (s := client.get("/api/rag/refresh").json())["state"] != "running" and s, "the refresh"
    )
    assert done["state"] == "succeeded", done
    assert done["result"]["added"] == 1 and done["result"]["kept"] == len(DOCS)
    assert done["summary"].startswith("Embedded 1 chunks (1 new, 0 changed)")
    assert done["finished_at"] and done["progress"] is None

    # Without a JSON content type a POST could come from another site's form: refused. An empty JSON body is fine.
    assert client.post("/api/rag/refresh").status_code == 415
    again = client.post("/api/rag/refresh", headers={"Content-Type": "application/json"})
    assert again.status_code == 202, again.text
    assert wait_for(lambda: client.get("/api/rag/refresh").json()["state"] == "succeeded", "the second refresh")


def test_refresh_on_databricks_apps_runs_the_ingestion_job(start_app, make_config, fake_databricks) -> None:  # type: ignore[no-untyped-def]
    fake_databricks.on("POST", "/api/2.[0-9]/jobs/run-now", {"run_id": 77, "number_in_job": 1})
    fake_databricks.on(
        "GET",
        "/api/2.[0-9]/jobs/runs/get",
        {
            "run_id": 77,
            "run_page_url": "https://example/run/77",
            "state": {"life_cycle_state": "TERMINATED", "result_state": "FAILED", "state_message": "Task failed"},
        },
    )
    app = start_app(
        make_config(rag__refresh_job_id="123"),
        services_kwargs={"workspace_factory": fake_databricks.workspace_client},
    )
    client = app.client()

    assert client.post("/api/rag/refresh", json={}).status_code == 202
    done = wait_for(lambda: (s := client.get("/api/rag/refresh").json())["state"] != "running" and s, "the job")

    assert done["state"] == "failed"
    assert done["error"] == "the ingestion job run 77 ended FAILED: Task failed (https://example/run/77)"
    assert fake_databricks.calls("/api/2.[0-9]/jobs/run-now")[0].json == {"job_id": 123}


# ---------------------------------------------------------------------------------------------------------
# health, identity, docs, the page


def test_health_is_503_while_the_database_is_gone_and_recovers(
    start_app, make_config, pg_server, database_name
) -> None:  # type: ignore[no-untyped-def]
    app = start_app(make_config(web__health_timeout_seconds=0.5, rag__enabled=False))
    client = app.client()
    assert client.get("/health").json() == {
        "status": "ok",
        "database": "ok",
        "tracing": "off: tracing.enabled is false",
    }

    pg_server.drop_database(database_name)
    down = client.get("/health")
    assert down.status_code == 503
    assert down.json()["status"] == "unavailable"
    # Either the pooled connection is found dead on use, or no new one can be made within the timeout.
    assert any(
        reason in down.json()["database"]
        for reason in ("couldn't get a connection after 0.50 sec", "terminating connection")
    )
    assert f"Postgres at {pg_server.socket_dir}:5432/{database_name}" in down.json()["database"]
    with psycopg.connect(pg_server.admin_uri, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(database_name), sql.Identifier(TEMPLATE_DB)
            )
        )
    wait_for(lambda: client.get("/health").status_code == 200, "health to recover")
    assert client.post("/api/chat", json={"message": "back again?"}).status_code == 200


def test_me_docs_and_page(start_app, make_config) -> None:  # type: ignore[no-untyped-def]
    app = start_app(make_config(web__default_user="dev", web__max_message_chars=1234))
    client = app.client()

    assert client.get("/api/me").json() == {
        "user": "dev",
        "identity": "default",
        "max_message_chars": 1234,
        "model": "offline",
        "rag_enabled": True,
    }
    schema = client.get("/openapi.json").json()
    assert {
        "/api/chat",
        "/api/chat/stream",
        "/api/sessions",
        "/api/sessions/{session_id}",
        "/api/sessions/{session_id}/messages",
        "/api/feedback",
        "/api/sources/{chunk_id}",
        "/api/rag/refresh",
        "/api/me",
        "/health",
    } <= set(schema["paths"])
    chat_request = schema["components"]["schemas"]["ChatRequest"]["properties"]
    assert "retry_of" in chat_request and "failed turn" in chat_request["retry_of"]["description"]
    assert "text/event-stream" in schema["paths"]["/api/chat/stream"]["post"]["responses"]["200"]["content"]
    assert "/api/examples" in schema["paths"]
    # /docs works offline: Swagger UI comes from the app's own files, and /redoc (CDN-only) is not served.
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text and "cdn." not in docs.text
    assert '"validatorUrl": null' in docs.text
    bundle = client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and "javascript" in bundle.headers["content-type"]
    assert client.get("/redoc").status_code == 404

    page = client.get("/")
    assert page.status_code == 200 and "<title>Context Assistant</title>" in page.text
    assert client.head("/").status_code == 200 and client.head("/health").status_code == 200  # probes
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    # The page's own modules never parse markup themselves (markdown.js hands marked's HTML to DOMPurify,
    # which returns DOM nodes); the vendored libraries are served as JavaScript modules.
    for module in sorted(STATIC_DIR.glob("*.js")):
        script = client.get(f"/static/{module.name}")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"], module.name
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script.text), module.name
    for vendored in ("vendor/marked/marked.esm.js", "vendor/dompurify/purify.es.mjs"):
        assert "javascript" in client.get(f"/static/{vendored}").headers["content-type"]


def test_bind_address_follows_the_databricks_apps_environment(make_config) -> None:  # type: ignore[no-untyped-def]
    local = Services(make_config(), env={})
    assert bind_address(local) == ("127.0.0.1", 8000)
    assert bind_address(local, "0.0.0.0", 9000) == ("0.0.0.0", 9000)
    apps_env = {"DATABRICKS_APP_NAME": "context-assistant", "DATABRICKS_APP_PORT": "8123"}
    on_apps = Services(load_config(None, env=apps_env), env=apps_env)
    assert bind_address(on_apps) == ("0.0.0.0", 8123)


def test_python_app_py_serves_on_the_databricks_app_port(config_file: Path, pg_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        **pg_env,
        "CONTEXT_ASSISTANT_CONFIG": str(config_file),
        "DATABRICKS_APP_PORT": str(port),
        "CONTEXT_ASSISTANT__RAG__ENABLED": "false",
        "CONTEXT_ASSISTANT__MEMORY__RECALL": "false",
    }
    process = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def healthy() -> bool:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, "python app.py to serve", timeout=60)
        reply = httpx.post(f"http://127.0.0.1:{port}/api/chat", json={"message": "hello"}, timeout=30)
        assert reply.status_code == 200 and reply.json()["model"] == "offline"
    finally:
        process.terminate()
        process.wait(15)


def test_a_quiet_stream_sends_keepalive_comments_until_the_next_event() -> None:
    """The SSE framing alone: a turn that goes quiet (a slow model) keeps the connection alive with comments."""
    gate = threading.Event()

    def slow_turn() -> Iterator[TurnEvent]:
        yield TurnEvent("start", {"session_id": "s", "user_message_id": 1})
        assert gate.wait(10)
        yield TurnEvent("delta", {"text": "at last"})

    async def collect() -> list[bytes]:
        events = slow_turn()
        first = next(events)
        frames = []
        async for frame in turn_frames(first, events, keepalive=0.02):
            frames.append(frame)
            if frame == KEEPALIVE:
                gate.set()
        return frames

    frames = asyncio.run(collect())
    assert frames[0] == b'event: start\ndata: {"session_id": "s", "user_message_id": 1}\n\n'
    assert KEEPALIVE in frames
    assert frames[-1] == b'event: delta\ndata: {"text": "at last"}\n\n'


def test_every_error_carries_a_request_id_and_unexpected_ones_say_only_what_to_do(
    start_app, make_config, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    app = start_app(make_config(web__max_body_bytes=2048))
    client = app.client()
    caplog.set_level(logging.ERROR)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("pool exploded at postgresql://admin@10.1.2.3/db")

    app.services.store.list_sessions = broken  # type: ignore[method-assign]
    response = client.get("/api/sessions")
    assert response.status_code == 500
    assert error_body(response) == {"error": SERVER_ERROR}
    request_id = response.json()["request_id"]
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)

    # The platform's request id (the Databricks Apps proxy sends one) is kept; anything odd is replaced.
    client = app.client()  # uvicorn closes a connection whose request raised: start a new one
    given = client.get("/api/sessions/nope", headers={"X-Request-Id": "0f9e2b1c-5d4a-4b3c-9e8f-7a6b5c4d3e2f"})
    assert given.headers["x-request-id"] == "0f9e2b1c-5d4a-4b3c-9e8f-7a6b5c4d3e2f"
    assert given.json()["request_id"] == "0f9e2b1c-5d4a-4b3c-9e8f-7a6b5c4d3e2f"
    odd = client.get("/api/sessions/nope", headers={"X-Request-Id": "<script>"})
    assert odd.headers["x-request-id"] != "<script>" and len(odd.headers["x-request-id"]) == 16
    too_big = client.post("/api/sessions", json={"title": "x" * 3000})  # over the 2048-byte limit
    assert too_big.status_code == 413 and error_body(too_big)["error"].startswith("the request body is")


def test_example_questions_come_from_the_indexed_documents_headings(start_app, make_config) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    examples = app.client().get("/api/examples").json()["examples"]

    # One per document; documents with headings first (faq.html has none, so it is named by its file).
    assert sorted((e["path"], e["heading"], e["question"]) for e in examples) == [
        ("faq.html", "", "What is in faq.html?"),
        (
            "guides/deployment.md",
            "Deployment Guide > Rules",
            "What should I know about “Rules” in Deployment Guide?",
        ),
        ("runbooks/oncall.md", "On-call > Handover", "What should I know about “Handover” in On-call?"),
    ]
    assert examples[-1]["path"] == "faq.html"

    no_documents = start_app(make_config(rag__enabled=False))
    assert no_documents.client().get("/api/examples").json() == {"examples": []}
