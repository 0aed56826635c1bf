"""``/invocations`` and ``/responses``: the assistant as an MLflow ResponsesAgent, over real HTTP.

The app runs on uvicorn over the real test Postgres (tests/web_support.py) and is driven by the official
``openai`` client (``client.responses.create``, streaming and not) and by plain HTTP carrying MLflow's
``ResponsesAgentRequest`` / ``ResponsesAgentResponse`` / ``ResponsesAgentStreamEvent`` types. Model failures
come from a loopback OpenAI-compatible server (tests/fake_databricks.py) behind the real ``openai`` client
the assistant uses.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from fake_databricks import FakeDatabricks, Response
from retrieval_support import minilm  # noqa: F401  (the session's real embedding model)
from test_web_api import openai_model_config
from web_support import read_events, start_app_fixture  # noqa: F401  (the start_app fixture)

QUESTION = "When does the on-call rotation hand over?"


def agent_client(app: Any, user: str | None = None, **options: Any) -> openai.OpenAI:
    """The official client with ``base_url`` = the app, as a notebook would point it at the deployed app."""
    headers = {"X-Forwarded-Email": user} if user else None
    return openai.OpenAI(base_url=app.url, api_key="unused-locally", default_headers=headers, **options)


def ask(client: openai.OpenAI, text: str, **options: Any) -> Any:
    return client.responses.create(model="context-assistant", input=[{"role": "user", "content": text}], **options)


def outputs(response: Any) -> dict[str, Any]:
    return response.model_extra["custom_outputs"]


def mlflow_text(response: Any) -> str:
    """The text of an MLflow ``ResponsesAgentResponse`` (its ``output_text`` property trips over output items
    validated from JSON, whose content stays plain dicts)."""
    return "".join(part["text"] for item in response.output for part in item.model_dump()["content"])


# ---------------------------------------------------------------------------------------------------------
# the openai client


def test_openai_client_gets_a_cited_answer_kept_in_one_session_over_turns(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    client = agent_client(app)

    first = ask(client, QUESTION)

    assert first.status == "completed" and first.object == "response" and first.model == "offline"
    assert "Tuesdays at 10:00 UTC" in first.output_text
    custom = outputs(first)
    session_id = custom["session_id"]
    assert first.id == f"resp_{custom['user_message_id']}"
    assert first.metadata == {"session_id": session_id}  # tracing is off in this test: no trace id
    assert custom["trace_id"] is None and custom["warnings"] == []
    assert {s["path"] for s in custom["sources"]} >= {"runbooks/oncall.md"}
    handover = next(s for s in custom["sources"] if "hands over on Tuesdays" in s["text"])
    assert handover["heading"] == "On-call > Handover" and handover["chunk_id"]
    # Each [n] in the text is a file_citation pointing at source n, at the marker's offset.
    [message] = first.output
    [content] = message.content
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    cited = [a for a in content.annotations if a.source_index == handover["index"]]
    assert cited and cited[0].type == "file_citation"
    assert (cited[0].file_id, cited[0].filename) == ("runbooks/oncall.md", "runbooks/oncall.md")
    assert (cited[0].chunk_id, cited[0].heading) == (handover["chunk_id"], "On-call > Handover")
    marker = f"[{handover['index']}]"
    assert content.text[cited[0].index : cited[0].index + len(marker)] == marker
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens

    user = app.services.config.default_user
    stored = app.services.store.messages(user, session_id)
    assert [(m.id, m.role) for m in stored] == [
        (custom["user_message_id"], "user"),
        (custom["message_id"], "assistant"),
    ]
    assert stored[1].content == first.output_text and stored[1].metadata["sources"][0]["path"]

    second = ask(client, "And who reviews deploys?", extra_body={"custom_inputs": {"session_id": session_id}})
    assert outputs(second)["session_id"] == session_id and "two reviewers" in second.output_text

    # The OpenAI way to continue: previous_response_id.
    third = client.responses.create(
        model="context-assistant", input="When are production deploys allowed?", previous_response_id=second.id
    )
    assert outputs(third)["session_id"] == session_id
    [session] = app.services.store.list_sessions(user)
    assert session.id == session_id and session.message_count == 6 and session.title == QUESTION


def test_openai_client_streams_deltas_then_the_done_item_over_two_turns(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    client = agent_client(app)

    events = list(ask(client, QUESTION, stream=True))

    types = [event.type for event in events]
    assert types[:3] == ["response.created", "response.output_item.added", "response.content_part.added"]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    annotations = [event for event in events if event.type == "response.output_text.annotation.added"]
    assert len(deltas) > 2 and types[3 : 3 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert types[3 + len(deltas) + len(annotations) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    created, done, completed = events[0], events[-2], events[-1]
    streamed = "".join(event.delta for event in deltas)
    assert events[1].item.id == done.item.id and {event.item_id for event in deltas} == {done.item.id}
    assert done.item.content[0].text == streamed == completed.response.output_text
    assert "Tuesdays at 10:00 UTC" in streamed and done.item.content[0].annotations
    # One annotation event per citation, as on the done item.
    assert [event.annotation_index for event in annotations] == list(range(len(done.item.content[0].annotations)))
    assert [event.annotation.source_index for event in annotations] == [
        a.source_index for a in done.item.content[0].annotations
    ]
    custom = done.model_extra["custom_outputs"]
    assert completed.response.model_extra["custom_outputs"] == custom
    assert created.response.id == completed.response.id == f"resp_{custom['user_message_id']}"
    assert created.response.metadata["session_id"] == custom["session_id"]
    reply = app.services.store.get_message(app.services.config.default_user, custom["message_id"])
    assert reply.content == streamed and reply.metadata["status"] == "ok"

    follow_up = list(
        ask(
            client,
            "And who reviews deploys?",
            stream=True,
            extra_body={"custom_inputs": {"session_id": custom["session_id"]}},
        )
    )
    assert follow_up[-1].response.model_extra["custom_outputs"]["session_id"] == custom["session_id"]
    assert "two reviewers" in follow_up[-1].response.output_text
    assert len(app.services.store.messages(app.services.config.default_user, custom["session_id"])) == 4


def test_openai_clients_responses_stream_helper_follows_the_answer(start_app) -> None:  # type: ignore[no-untyped-def]
    """``client.responses.stream()`` accumulates a snapshot from the events: it needs the item and its text
    part announced before the first delta."""
    app = start_app()
    client = agent_client(app)
    texts = []
    with client.responses.stream(model="context-assistant", input=QUESTION) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                texts.append(event.delta)
        final = stream.get_final_response()
    assert "Tuesdays at 10:00 UTC" in final.output_text and final.output_text == "".join(texts)
    assert final.output[0].content[0].annotations
    assert final.model_extra["custom_outputs"]["message_id"]


# ---------------------------------------------------------------------------------------------------------
# MLflow's ResponsesAgent types, over plain HTTP


def test_mlflow_responses_agent_request_and_response_types(start_app) -> None:  # type: ignore[no-untyped-def]
    from mlflow.types.responses import (
        ResponsesAgentRequest,
        ResponsesAgentResponse,
        ResponsesAgentStreamEvent,
        responses_agent_output_reducer,
    )

    app = start_app()
    http = app.client()
    request = ResponsesAgentRequest(input=[{"role": "user", "content": QUESTION}])

    plain = http.post("/invocations", json=request.model_dump(exclude_none=True))
    assert plain.status_code == 200, plain.text
    response = ResponsesAgentResponse.model_validate(plain.json())
    assert "Tuesdays at 10:00 UTC" in mlflow_text(response)
    assert response.custom_outputs["session_id"] and response.output[0].type == "message"

    follow_up = ResponsesAgentRequest(
        input=[{"role": "user", "content": "Who reviews deploys?"}],
        custom_inputs={"session_id": response.custom_outputs["session_id"]},
    )
    with http.stream(
        "POST", "/invocations", json={**follow_up.model_dump(exclude_none=True), "stream": True}
    ) as streamed:
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        assert streamed.headers["cache-control"] == "no-cache, no-transform"
        lines = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [ResponsesAgentStreamEvent.model_validate(json.loads(line)) for line in lines[:-1]]
    reduced = ResponsesAgentResponse.model_validate(responses_agent_output_reducer(events))
    assert "two reviewers" in mlflow_text(reduced)
    done = next(event for event in events if event.type == "response.output_item.done")
    assert done.custom_outputs["session_id"] == response.custom_outputs["session_id"]

    info = http.get("/agent/info").json()
    assert info["use_case"] == "agent" and info["agent_api"] == "responses" and info["mlflow_version"]
    schema = http.get("/openapi.json").json()
    assert {"/invocations", "/responses", "/agent/info"} <= set(schema["paths"])
    assert "text/event-stream" in schema["paths"]["/invocations"]["post"]["responses"]["200"]["content"]


# ---------------------------------------------------------------------------------------------------------
# a conversation sent whole


def test_a_whole_conversation_without_a_session_becomes_a_new_session_with_that_history(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    client = agent_client(app)
    conversation = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Who reviews deploys?"},
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_from_elsewhere",
            "content": [{"type": "output_text", "text": "Two reviewers approve every change.", "annotations": []}],
        },
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
    ]

    response = client.responses.create(model="context-assistant", input=conversation)

    custom = outputs(response)
    assert custom["warnings"] == [
        "not used from the input: system messages (the system prompt is model.system_prompt)"
    ]
    user = app.services.config.default_user
    stored = app.services.store.messages(user, custom["session_id"])
    assert [(m.role, m.content) for m in stored[:3]] == [
        ("user", "Who reviews deploys?"),
        ("assistant", "Two reviewers approve every change."),
        ("user", QUESTION),
    ]
    assert [m.metadata.get("origin") for m in stored] == ["request_input", "request_input", None, None]
    assert app.services.store.get_session(user, custom["session_id"]).title == "Who reviews deploys?"

    # With a session, the stored conversation is the history: resent earlier messages are not stored again.
    again = client.responses.create(
        model="context-assistant",
        input=[*conversation, {"role": "assistant", "content": "..."}, {"role": "user", "content": "Thanks!"}],
        extra_body={"custom_inputs": {"session_id": custom["session_id"]}},
    )
    assert outputs(again)["session_id"] == custom["session_id"]
    assert [m.content for m in app.services.store.messages(user, custom["session_id"])][-2:-1] == ["Thanks!"]
    assert len(app.services.store.messages(user, custom["session_id"])) == 6


# ---------------------------------------------------------------------------------------------------------
# errors and isolation


def test_another_users_session_response_or_message_is_not_found_on_this_route(start_app, make_config) -> None:  # type: ignore[no-untyped-def]
    app = start_app(make_config(web__forwarded_identity="trust"))
    ana, bo = agent_client(app, "ana@example.com"), agent_client(app, "bo@example.com")
    mine = ask(ana, QUESTION)
    session_id = outputs(mine)["session_id"]

    with pytest.raises(openai.NotFoundError) as caught:
        ask(bo, "hi", extra_body={"custom_inputs": {"session_id": session_id}})
    assert caught.value.body == {
        "message": f"session not found: {session_id}",
        "type": "invalid_request_error",
        "code": "session_not_found",
        "param": "custom_inputs.session_id",
    }
    with pytest.raises(openai.NotFoundError) as caught:  # streaming: refused before the stream starts
        ask(bo, "hi", stream=True, extra_body={"custom_inputs": {"session_id": session_id}})
    assert caught.value.body["code"] == "session_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        bo.responses.create(model="m", input="hi", previous_response_id=mine.id)
    assert (
        caught.value.body["code"] == "response_not_found" and caught.value.body["param"] == "previous_response_id"
    )
    with pytest.raises(openai.NotFoundError) as caught:
        ask(bo, "hi", extra_body={"custom_inputs": {"retry_of": outputs(mine)["user_message_id"]}})
    assert caught.value.body["message"] == f"message not found: {outputs(mine)['user_message_id']}"

    assert app.services.store.list_sessions("bo@example.com") == []
    [session] = app.services.store.list_sessions("ana@example.com")
    assert session.id == session_id and session.message_count == 2


def test_identity_follows_the_proxy_rule_on_this_route(start_app, make_config) -> None:  # type: ignore[no-untyped-def]
    local = start_app(make_config(web__default_user="dev"))
    spoofed = ask(agent_client(local, "mallory@example.com"), QUESTION)
    assert local.services.store.list_sessions("dev")[0].id == outputs(spoofed)["session_id"]
    assert local.services.store.list_sessions("mallory@example.com") == []

    on_apps = start_app(make_config(), env={"DATABRICKS_APP_NAME": "context-assistant"})
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(agent_client(on_apps), QUESTION)
    assert caught.value.body["type"] == "authentication_error"
    assert caught.value.body["message"].startswith("no user identity: the request lacks the X-Forwarded-Email")
    answered = ask(agent_client(on_apps, "ana@example.com"), QUESTION)
    assert on_apps.services.store.list_sessions("ana@example.com")[0].id == outputs(answered)["session_id"]


BAD_REQUESTS = [
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "input: Field required"),
    ({"input": [{"role": "robot", "content": "hi"}]}, 400, "input.0"),
    (
        {"input": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        400,
        "input[1]: the last input item must be the user's new message, not 'assistant'",
    ),
    ({"input": []}, 400, "input is empty: send at least the user's message"),
    ({"input": "   "}, 400, "the message is empty"),
    ({"input": "x" * 51}, 400, "the message is 51 characters; the limit is 50 (web.max_message_chars)"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
        400,
        "input[0].content[0]: input_image is not supported; the assistant reads text only",
    ),
    ({"input": "hi", "stream": "yes"}, 400, "stream: Input should be a valid boolean"),
    (
        {"input": "hi", "custom_inputs": {"session_id": 7}},
        400,
        "custom_inputs.session_id must be a non-empty string",
    ),
    ({"input": "hi", "custom_inputs": {"retry_of": "7"}}, 400, "custom_inputs.retry_of must be the integer id"),
    ({"input": "hi", "custom_inputs": {"session_id": "nope"}}, 404, "session not found: nope"),
    ({"input": "hi", "previous_response_id": "resp_abc"}, 404, "response not found: resp_abc"),
    ({"input": "hi", "previous_response_id": "resp_999999"}, 404, "response not found: resp_999999"),
    ({"input": "hi", "custom_inputs": {"retry_of": 999999}}, 404, "message not found: 999999"),
    ([1, 2], 400, "the request body must be a JSON object"),
]


def test_bad_requests_are_openai_shaped_errors_and_store_nothing(start_app, make_config) -> None:  # type: ignore[no-untyped-def]
    app = start_app(make_config(web__max_message_chars=50, rag__enabled=False, memory__recall=False))
    http = app.client()
    for body, status, error in BAD_REQUESTS:
        for streaming in (False, True):
            sent = {"stream": True, **body} if streaming and isinstance(body, dict) else body
            response = http.post("/invocations", json=sent)
            assert response.status_code == status, (sent, response.text)
            assert response.headers["content-type"] == "application/json"
            assert set(response.json()["error"]) >= {"message", "type", "code", "param"}
            assert error in response.json()["error"]["message"], (sent, response.text)
    assert app.services.store.list_sessions(app.services.config.default_user) == []


def test_requests_that_are_not_json_are_refused(start_app, make_config) -> None:  # type: ignore[no-untyped-def]
    app = start_app(make_config(rag__enabled=False, memory__recall=False))
    http = app.client()
    form = http.post("/invocations", data={"input": "hi"})
    assert form.status_code == 415
    assert form.json()["error"]["message"] == (
        "send the request body as JSON (Content-Type: application/json), not application/x-www-form-urlencoded"
    )
    broken = http.post("/responses", content=b'{"input": ', headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["message"].startswith(
        "the request body is not valid JSON"
    )
    assert app.services.store.list_sessions(app.services.config.default_user) == []


def test_a_failed_model_call_keeps_the_message_is_not_retried_blindly_and_can_be_retried(
    start_app, make_config, fake_databricks: FakeDatabricks
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
                    "message": {"role": "assistant", "content": "Tuesdays, 10:00 UTC [1]."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46},
        }
    )
    fake_databricks.on("POST", "/v1/chat/completions", [overloaded, overloaded, answered])
    app = start_app(openai_model_config(make_config, fake_databricks))
    client = agent_client(app)  # default: up to 2 automatic retries, which x-should-retry: false turns off

    with pytest.raises(openai.InternalServerError) as caught:
        ask(client, QUESTION)
    failure = caught.value
    assert failure.status_code == 502 and failure.response.headers["x-should-retry"] == "false"
    assert failure.body["type"] == "server_error" and failure.body["code"] == "unavailable"
    assert failure.body["retryable"] is True and "overloaded" in failure.body["message"]
    assert len(fake_databricks.calls("/v1/chat/completions")) == 1  # the client did not send the turn again

    # Streaming: the failure after the message was stored is an error event the client raises.
    with pytest.raises(openai.APIError) as streamed:
        list(
            ask(
                client,
                "second try",
                stream=True,
                extra_body={"custom_inputs": {"session_id": failure.body["session_id"]}},
            )
        )
    assert streamed.value.body["code"] == "unavailable" and streamed.value.body["retryable"] is True

    retried = ask(client, "", extra_body={"custom_inputs": {"retry_of": failure.body["user_message_id"]}})
    assert retried.output_text == "Tuesdays, 10:00 UTC [1]."
    assert outputs(retried)["user_message_id"] == failure.body["user_message_id"]
    user = app.services.config.default_user
    assert [
        (m.role, m.metadata.get("status")) for m in app.services.store.messages(user, failure.body["session_id"])
    ] == [
        ("user", "ok"),
        ("user", "failed"),
        ("assistant", "ok"),
    ]


# ---------------------------------------------------------------------------------------------------------
# the trace


def test_the_turns_mlflow_trace_id_is_returned(start_app, make_config, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    app = start_app(
        make_config(tracing__enabled=True, tracing__tracking_uri=uri, tracing__experiment="agent-tests")
    )
    client = agent_client(app)

    response = ask(client, QUESTION)
    trace_id = outputs(response)["trace_id"]
    assert trace_id and response.metadata == {"session_id": outputs(response)["session_id"], "trace_id": trace_id}
    reply = app.services.store.get_message(app.services.config.default_user, outputs(response)["message_id"])
    assert reply.metadata["trace_id"] == trace_id  # the trace feedback is recorded on

    from mlflow import MlflowClient

    app.services.tracer.flush()  # the exporter process has written every trace queued so far
    assert app.client().get("/health").json()["tracing"] == "on"
    trace = MlflowClient(tracking_uri=uri).get_trace(trace_id)
    assert trace.info.trace_metadata["mlflow.trace.session"] == outputs(response)["session_id"]
    assert any(span.span_type == "RETRIEVER" for span in trace.data.spans)

    # AgentServer's header adds a {"trace_id"} event before [DONE].
    with app.client(headers={"x-mlflow-return-trace-id": "true"}).stream(
        "POST", "/invocations", json={"input": QUESTION, "stream": True}
    ) as streamed:
        data = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    completed = json.loads(data[-3])["response"]
    assert json.loads(data[-2]) == {"trace_id": completed["metadata"]["trace_id"]}
    assert completed["custom_outputs"]["trace_id"] == completed["metadata"]["trace_id"]


def test_database_outage_is_a_503_the_client_may_retry(start_app, make_config, pg_server, database_name) -> None:  # type: ignore[no-untyped-def]
    app = start_app(make_config(web__health_timeout_seconds=0.5, rag__enabled=False, memory__recall=False))
    http = app.client()
    assert http.post("/invocations", json={"input": "hello"}).status_code == 200
    pg_server.drop_database(database_name)
    down = http.post("/invocations", json={"input": "hello again"})
    assert down.status_code == 503, down.text
    assert down.json()["error"]["code"] == "database_unavailable"
    assert down.json()["error"]["message"].startswith("the database is unavailable, try again shortly")


def test_agent_info_needs_no_identity(start_app) -> None:  # type: ignore[no-untyped-def]
    app = start_app(env={"DATABRICKS_APP_NAME": "ca-app"})
    info = httpx.get(f"{app.url}/agent/info").json()
    assert info["name"] == "ca-app" and info["use_case"] == "agent"


# ---------------------------------------------------------------------------------------------------------
# a fresh `context-assistant serve`


def test_a_fresh_serve_process_answers_the_openai_client_with_a_cited_answer(
    make_config,
    pg_env,
    tmp_path,
    minilm,  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    """The command a user runs, in its own process, on a document index built by the real sync and model."""
    import os
    import socket
    import subprocess
    import sys

    from context_assistant.cli import main
    from context_assistant.core.config import save_config
    from context_assistant.services import Services
    from retrieval_support import write_chunk_table
    from web_support import DOCS, wait_for

    config = make_config()
    config_file = save_config(config, tmp_path / "config.yaml")
    write_chunk_table(config.data_path / "chunks", DOCS)
    os.environ.update(pg_env)  # the in-process sync reaches the test Postgres as the server will
    try:
        assert main(["--config", str(config_file), "sync"]) == 0
    finally:
        for key in pg_env:
            os.environ.pop(key, None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "context_assistant", "--config", str(config_file), "serve", "--port", str(port)],
        env={**os.environ, **pg_env},
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

        wait_for(healthy, "context-assistant serve to answer", timeout=120)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}", api_key="unused-locally", timeout=120)
        response = client.responses.create(
            model="context-assistant", input=[{"role": "user", "content": QUESTION}]
        )
    finally:
        process.terminate()
        process.wait(15)

    assert "Tuesdays at 10:00 UTC" in response.output_text
    annotations = response.output[0].content[0].annotations
    assert "runbooks/oncall.md" in {a.file_id for a in annotations}
    with Services(config, env=pg_env) as services:
        stored = services.store.messages(config.default_user, outputs(response)["session_id"])
    assert [(m.role, m.content) for m in stored] == [("user", QUESTION), ("assistant", response.output_text)]
