"""Chat models: the OpenAI-compatible and Databricks paths over real HTTP, errors, retries, and the offline model.

The remote tests drive the real ``openai`` client and a real databricks-sdk ``WorkspaceClient`` against
``fake_databricks``, a loopback HTTP server standing in for a serving endpoint / OpenAI-compatible server:
it speaks the documented chat-completions REST shape (JSON bodies, Server-Sent Events for streams, HTTP error
statuses with Databricks/OpenAI error bodies), and the tests assert on exactly what the clients sent.
Retries wait on a FakeClock, so no test sleeps through a backoff.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from context_assistant.core.clock import FakeClock
from context_assistant.core.config import ModelConfig
from context_assistant.llm.factory import make_chat_model, resolve_provider
from context_assistant.llm.interface import CONFIGURE_HINT, ContextTurn, ModelError, NumberedSource, PromptContext
from context_assistant.llm.offline import OfflineModel
from context_assistant.llm.remote import DatabricksServingModel, OpenAICompatibleModel
from fake_databricks import FakeDatabricks, Request, Response, sse

MESSAGES = [
    {"role": "system", "content": "Answer from the sources."},
    {"role": "user", "content": "How do I rotate the warehouse token?"},
]
OPENAI_PATH = r"/v1/chat/completions"
SERVING_PATH = r"/serving-endpoints/chat/completions"


def completion_body(text: str = "Rotate it in Settings [1].", **extra: Any) -> dict[str, Any]:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1767225600,
        "model": "served-model-v2",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49},
    }
    body.update(extra)
    return body


def chunk(content: str | None = None, finish: str | None = None, usage: dict[str, int] | None = None) -> dict:
    choices = [] if content is None and finish is None else [{"index": 0, "delta": {}, "finish_reason": finish}]
    if content is not None:
        choices[0]["delta"] = {"role": "assistant", "content": content}
    event: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "served-model-v2",
        "choices": choices,
    }
    if usage is not None:
        event["usage"] = usage
    return event


def streamed(*events: dict, done: bool = True) -> Response:
    return Response(body=sse(events, done=done))


def openai_model(fake: FakeDatabricks, clock: FakeClock, **kwargs: Any) -> OpenAICompatibleModel:
    options: dict[str, Any] = {
        "model": "llama-3.1-8b",
        "base_url": f"{fake.url}/v1",
        "api_key": "sk-local",
        "max_retries": 3,
        "clock": clock,
        "jitter": lambda: 1.0,
        "timeout_seconds": 10,
    }
    options.update(kwargs)
    return OpenAICompatibleModel(**options)


def databricks_model(fake: FakeDatabricks, clock: FakeClock, endpoint: str = "team-chat") -> Any:
    settings = ModelConfig(provider="databricks", endpoint=endpoint, max_retries=2, timeout_seconds=10)
    return make_chat_model(settings, workspace=fake.workspace_client, env={}, clock=clock, jitter=lambda: 1.0)


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible servers


def test_openai_compatible_complete_sends_the_chat_request_with_the_key(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    fake_databricks.on("POST", OPENAI_PATH, completion_body())
    settings = ModelConfig(provider="openai", base_url=f"{fake_databricks.url}/v1", endpoint="llama-3.1-8b")
    model = make_chat_model(settings, env={"OPENAI_API_KEY": "sk-secret"}, clock=clock)

    result = model.complete(MESSAGES, max_tokens=200, temperature=0.0)

    [request] = fake_databricks.calls(OPENAI_PATH)
    assert request.headers["authorization"] == "Bearer sk-secret"
    assert request.json == {
        "model": "llama-3.1-8b",
        "messages": MESSAGES,
        "max_tokens": 200,
        "temperature": 0.0,
    }
    assert model.name == "openai:llama-3.1-8b" and model.provider == "openai"
    assert result.text == "Rotate it in Settings [1]."
    assert result.model == "served-model-v2" and result.finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.estimated) == (42, 7, False)


def test_openai_key_comes_from_the_configured_env_var_and_defaults_come_from_config(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    fake_databricks.on("POST", OPENAI_PATH, completion_body(usage=None))
    settings = ModelConfig(
        provider="openai",
        base_url=f"{fake_databricks.url}/v1/",
        endpoint="qwen",
        api_key_env="VLLM_KEY",
        max_tokens=64,
        temperature=0.5,
    )
    model = make_chat_model(settings, env={"VLLM_KEY": "k-123", "OPENAI_API_KEY": "not-this"}, clock=clock)

    result = model.complete(MESSAGES)

    [request] = fake_databricks.calls(OPENAI_PATH)
    assert request.headers["authorization"] == "Bearer k-123"
    assert (request.json["max_tokens"], request.json["temperature"]) == (64, 0.5)
    assert result.usage.estimated  # the server reported none: counted locally
    assert result.usage.completion_tokens > 0 and result.usage.prompt_tokens > 0


def test_openai_streaming_yields_deltas_then_the_completion_with_usage(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    fake_databricks.on(
        "POST",
        OPENAI_PATH,
        streamed(
            chunk("Rotate "),
            chunk("it in "),
            chunk("Settings [1]."),
            chunk("", finish="stop"),
            chunk(usage={"prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45}),
        ),
    )
    model = openai_model(fake_databricks, clock)

    stream = model.stream(MESSAGES)
    deltas = list(stream)

    assert deltas == ["Rotate ", "it in ", "Settings [1]."]
    assert stream.completion is not None
    assert stream.completion.text == "Rotate it in Settings [1]."
    assert stream.completion.finish_reason == "stop"
    assert stream.completion.usage.as_dict() == {
        "prompt_tokens": 40,
        "completion_tokens": 5,
        "total_tokens": 45,
        "estimated": False,
    }
    [request] = fake_databricks.calls(OPENAI_PATH)
    assert request.json["stream"] is True
    assert request.json["stream_options"] == {"include_usage": True}


def test_a_server_that_rejects_stream_options_is_asked_again_without_them(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    def handler(request: Request) -> Response:
        if "stream_options" in request.json:
            return Response(400, {"error": {"message": "Unrecognized request argument: stream_options"}})
        return streamed(chunk("Hello"), chunk(finish="stop"))

    fake_databricks.on("POST", OPENAI_PATH, handler)
    model = openai_model(fake_databricks, clock)

    first = model.stream(MESSAGES)
    assert list(first) == ["Hello"]
    assert first.completion is not None and first.completion.usage.estimated
    list(model.stream(MESSAGES))  # remembered: no second rejected request

    sent = [r.json for r in fake_databricks.calls(OPENAI_PATH)]
    assert ["stream_options" in body for body in sent] == [True, False, False]


def test_a_stream_that_breaks_off_raises_after_the_deltas_already_yielded(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    # The server closes the connection after two deltas: no finish_reason, no [DONE].
    fake_databricks.on("POST", OPENAI_PATH, streamed(chunk("Rotate "), chunk("it in "), done=False))
    model = openai_model(fake_databricks, clock)

    stream = model.stream(MESSAGES)
    received = []
    with pytest.raises(ModelError) as caught:
        for delta in stream:
            received.append(delta)

    assert received == ["Rotate ", "it in "]
    assert stream.text == "Rotate it in " and stream.completion is None
    assert caught.value.kind == "unavailable" and caught.value.retryable
    assert str(caught.value) == (
        f"the answer broke off after 13 characters: the stream from model 'llama-3.1-8b' at "
        f"{fake_databricks.url}/v1 ended before the model finished"
    )
    assert stream.error is caught.value
    assert len(fake_databricks.calls(OPENAI_PATH)) == 1  # no retry once text has been shown
    assert clock.sleeps == []


def test_an_error_event_mid_stream_raises_with_the_servers_message(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    error_event = {"error": {"message": "The model is overloaded", "type": "server_error"}}
    fake_databricks.on("POST", OPENAI_PATH, streamed(chunk("Rotate "), error_event, done=False))
    model = openai_model(fake_databricks, clock)

    stream = model.stream(MESSAGES)
    with pytest.raises(ModelError) as caught:
        list(stream)

    assert stream.text == "Rotate "
    assert caught.value.kind == "unavailable" and caught.value.retryable
    assert str(caught.value) == (
        f"the answer broke off after 7 characters: model 'llama-3.1-8b' at {fake_databricks.url}/v1 reported "
        "an error: The model is overloaded"
    )


def test_a_stream_that_fails_before_its_first_delta_is_retried(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    fake_databricks.on(
        "POST",
        OPENAI_PATH,
        [
            Response(503, {"error": {"message": "warming up"}}),
            streamed(chunk(""), done=False),  # opened, then dropped before any text
            streamed(chunk("Done."), chunk(finish="stop")),
        ],
    )
    model = openai_model(fake_databricks, clock)

    assert list(model.stream(MESSAGES)) == ["Done."]
    assert len(fake_databricks.calls(OPENAI_PATH)) == 3
    assert clock.sleeps == [0.5, 1.0]  # exponential backoff (jitter pinned to its maximum)


def test_rate_limit_then_success_waits_as_long_as_retry_after_says(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    fake_databricks.on(
        "POST",
        OPENAI_PATH,
        [
            Response(429, {"error": {"message": "Rate limit reached"}}, headers={"Retry-After": "7"}),
            Response(body=completion_body("ok")),
        ],
    )
    model = openai_model(fake_databricks, clock)

    assert model.complete(MESSAGES).text == "ok"
    assert len(fake_databricks.calls(OPENAI_PATH)) == 2
    assert clock.sleeps == [7.0]


def test_retry_after_as_an_http_date_is_measured_from_the_clock(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    # FakeClock starts at 2026-01-01 00:00:00 UTC.
    fake_databricks.on(
        "POST",
        OPENAI_PATH,
        [
            Response(429, {}, headers={"Retry-After": "Thu, 01 Jan 2026 00:00:12 GMT"}),
            Response(body=completion_body("ok")),
        ],
    )
    assert openai_model(fake_databricks, clock).complete(MESSAGES).text == "ok"
    assert clock.sleeps == [12.0]


def test_rate_limited_until_retries_run_out(fake_databricks: FakeDatabricks, clock: FakeClock) -> None:
    fake_databricks.on("POST", OPENAI_PATH, Response(429, {"error": {"message": "Rate limit reached"}}))
    model = openai_model(fake_databricks, clock, max_retries=2)

    with pytest.raises(ModelError) as caught:
        model.complete(MESSAGES)

    assert caught.value.kind == "rate_limited" and caught.value.retryable and caught.value.status == 429
    assert str(caught.value) == (
        f"model 'llama-3.1-8b' at {fake_databricks.url}/v1 is rate limited (429) (server said: Rate limit "
        "reached) (gave up after 3 attempts)"
    )
    assert len(fake_databricks.calls(OPENAI_PATH)) == 3
    assert clock.sleeps == [0.5, 1.0]


def test_an_unreachable_server_is_retried_then_reported(clock: FakeClock) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = OpenAICompatibleModel(
        model="llama", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, clock=clock, jitter=lambda: 1.0
    )

    with pytest.raises(ModelError) as caught:
        model.complete(MESSAGES)

    assert caught.value.kind == "unavailable" and caught.value.retryable
    assert str(caught.value).startswith(f"cannot reach model 'llama' at http://127.0.0.1:{port}/v1")
    assert str(caught.value).endswith("(gave up after 2 attempts)")
    assert clock.sleeps == [0.5]


def test_a_server_that_stalls_past_the_timeout_is_a_timeout_error(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    def slow(request: Request) -> dict[str, Any]:
        time.sleep(1.0)
        return completion_body()

    fake_databricks.on("POST", OPENAI_PATH, slow)
    model = openai_model(fake_databricks, clock, timeout_seconds=0.2)

    with pytest.raises(ModelError) as caught:
        model.complete(MESSAGES)

    assert caught.value.kind == "timeout" and caught.value.retryable
    assert str(caught.value) == (
        f"model 'llama-3.1-8b' at {fake_databricks.url}/v1 did not answer within 0.2s (model.timeout_seconds)"
    )
    assert len(fake_databricks.calls(OPENAI_PATH)) == 1  # a stalled model is not hammered again


def test_a_response_that_is_not_a_chat_completion_is_a_bad_response(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    fake_databricks.on("POST", OPENAI_PATH, {"object": "list", "data": []})

    with pytest.raises(ModelError) as caught:
        openai_model(fake_databricks, clock).complete(MESSAGES)

    assert caught.value.kind == "bad_response" and not caught.value.retryable
    assert "returned no choices" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (
            401,
            {"error": {"message": "Incorrect API key provided"}},
            "permission",
            "model 'llama-3.1-8b' at {url}/v1 rejected the credentials (401) — set OPENAI_API_KEY (server said: "
            "Incorrect API key provided)",
        ),
        (
            404,
            {"error": {"message": "model 'llama-3.1-8b' not found"}},
            "bad_endpoint",
            "model 'llama-3.1-8b' at {url}/v1 was not found (404) — check model.endpoint (the model name) and "
            "model.base_url (it usually ends in /v1) (server said: model 'llama-3.1-8b' not found)",
        ),
        (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 8192 tokens. However, your messages "
                    "resulted in 9000 tokens. Please reduce the length of the messages.",
                    "code": "context_length_exceeded",
                }
            },
            "context_too_long",
            "the prompt is too long for model 'llama-3.1-8b' at {url}/v1 — lower model.context_tokens (server "
            "said: This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 "
            "tokens. Please reduce the length of the messages.)",
        ),
        (
            400,
            {"error": {"message": "temperature must be between 0 and 2"}},
            "bad_request",
            "model 'llama-3.1-8b' at {url}/v1 rejected the request (400) (server said: temperature must be "
            "between 0 and 2)",
        ),
    ],
)
def test_openai_http_errors_become_clear_model_errors(
    fake_databricks: FakeDatabricks, clock: FakeClock, status: int, body: dict, kind: str, message: str
) -> None:
    fake_databricks.on("POST", OPENAI_PATH, Response(status, body))

    with pytest.raises(ModelError) as caught:
        openai_model(fake_databricks, clock).complete(MESSAGES)

    assert (caught.value.kind, caught.value.retryable, caught.value.status) == (kind, False, status)
    assert str(caught.value) == message.format(url=fake_databricks.url)
    assert len(fake_databricks.calls(OPENAI_PATH)) == 1
    assert clock.sleeps == []


# ---------------------------------------------------------------------------------------------------------
# Databricks serving endpoints


def test_databricks_complete_calls_serving_endpoints_with_workspace_auth(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    fake_databricks.on("POST", SERVING_PATH, completion_body())
    model = databricks_model(fake_databricks, clock, endpoint="team-chat")
    assert isinstance(model, DatabricksServingModel)
    assert fake_databricks.requests == []  # building the model touches nothing

    result = model.complete(MESSAGES)

    [request] = fake_databricks.calls(SERVING_PATH)
    assert request.headers["authorization"] == "Bearer dapi-test-token"
    assert request.json["model"] == "team-chat" and request.json["messages"] == MESSAGES
    assert model.name == "databricks:team-chat"
    assert result.text == "Rotate it in Settings [1]." and result.usage.total_tokens == 49


def test_databricks_streaming_reads_sse_deltas(fake_databricks: FakeDatabricks, clock: FakeClock) -> None:
    fake_databricks.on(
        "POST",
        SERVING_PATH,
        streamed(
            chunk("Use "),
            chunk("a service principal."),
            chunk(finish="stop"),
            chunk(usage={"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}),
        ),
    )
    model = databricks_model(fake_databricks, clock)

    with model.stream(MESSAGES) as stream:
        assert list(stream) == ["Use ", "a service principal."]
    assert stream.completion is not None
    assert stream.completion.usage.total_tokens == 36
    [request] = fake_databricks.calls(SERVING_PATH)
    assert request.headers["authorization"] == "Bearer dapi-test-token" and request.json["stream"] is True


def test_databricks_oauth_tokens_are_fetched_for_each_request(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    """OAuth M2M (a Databricks App's service principal): tokens expire, so each request asks the SDK afresh."""
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    minted = itertools.count(1)
    url = fake_databricks.url
    fake_databricks.on("GET", r"/\.well-known/databricks-config", lambda r: {"oidc_endpoint": f"{url}/oidc"})
    fake_databricks.on(
        "GET",
        r"/oidc/\.well-known/oauth-authorization-server",
        lambda r: {"authorization_endpoint": f"{url}/oidc/v1/authorize", "token_endpoint": f"{url}/oidc/v1/token"},
    )
    # Tokens that expire at once: the SDK must mint a new one for every request.
    fake_databricks.on(
        "POST",
        r"/oidc/v1/token",
        lambda r: {"access_token": f"m2m-{next(minted)}", "token_type": "Bearer", "expires_in": 1},
    )
    fake_databricks.on("POST", SERVING_PATH, completion_body())

    def app_workspace() -> WorkspaceClient:
        config = Config(
            host=url,
            client_id="app-sp",
            client_secret="app-secret",
            auth_type="oauth-m2m",
            retry_timeout_seconds=5,
            http_timeout_seconds=5,
        )
        return WorkspaceClient(config=config)

    settings = ModelConfig(provider="databricks", endpoint="team-chat")
    model = make_chat_model(settings, workspace=app_workspace, env={}, clock=clock)
    model.complete(MESSAGES)
    model.complete(MESSAGES)

    sent = [r.headers["authorization"] for r in fake_databricks.calls(SERVING_PATH)]
    assert len(sent) == 2 and sent[0] != sent[1]
    assert all(header.startswith("Bearer m2m-") for header in sent)


def test_databricks_reasoning_content_parts_are_joined_into_text(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    parts = [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking..."}]},
        {"type": "text", "text": "Use a service principal."},
    ]
    body = completion_body()
    body["choices"][0]["message"]["content"] = parts
    fake_databricks.on("POST", SERVING_PATH, body)

    assert databricks_model(fake_databricks, clock).complete(MESSAGES).text == "Use a service principal."


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (
            404,
            {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Endpoint with name 'team-chat' does not exist."},
            "bad_endpoint",
            "serving endpoint 'team-chat' was not found (404) — check model.endpoint (server said: Endpoint with "
            "name 'team-chat' does not exist.)",
        ),
        (
            403,
            {
                "error_code": "PERMISSION_DENIED",
                "message": "User does not have permission to query this endpoint.",
            },
            "permission",
            "no permission to use serving endpoint 'team-chat' (403) — it needs CAN_QUERY (server said: User does "
            "not have permission to query this endpoint.)",
        ),
        (
            401,
            {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."},
            "permission",
            "serving endpoint 'team-chat' rejected the credentials (401) — check DATABRICKS_TOKEN or your CLI "
            "profile (server said: Invalid access token.)",
        ),
        (
            400,
            {"error_code": "BAD_REQUEST", "message": "Input is too long for requested model."},
            "context_too_long",
            "the prompt is too long for serving endpoint 'team-chat' — lower model.context_tokens (server said: "
            "Input is too long for requested model.)",
        ),
    ],
)
def test_databricks_http_errors_become_clear_model_errors(
    fake_databricks: FakeDatabricks, clock: FakeClock, status: int, body: dict, kind: str, message: str
) -> None:
    fake_databricks.on("POST", SERVING_PATH, Response(status, body))

    with pytest.raises(ModelError) as caught:
        databricks_model(fake_databricks, clock).complete(MESSAGES)

    assert (caught.value.kind, caught.value.retryable) == (kind, False)
    assert str(caught.value) == message
    assert len(fake_databricks.calls(SERVING_PATH)) == 1


def test_databricks_errors_while_streaming_are_mapped_too(
    fake_databricks: FakeDatabricks, clock: FakeClock
) -> None:
    fake_databricks.on(
        "POST", SERVING_PATH, Response(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ""})
    )

    with pytest.raises(ModelError) as caught:
        list(databricks_model(fake_databricks, clock, endpoint="gone").stream(MESSAGES))

    assert str(caught.value) == (
        "serving endpoint 'gone' was not found (404) — check model.endpoint (server said: RESOURCE_DOES_NOT_EXIST)"
    )


def test_databricks_without_credentials_says_how_to_configure_them(clock: FakeClock) -> None:
    def no_credentials() -> Any:
        raise ValueError("default auth: cannot configure default credentials")

    model = make_chat_model(ModelConfig(provider="databricks"), workspace=no_credentials, env={}, clock=clock)

    with pytest.raises(ModelError) as caught:
        model.complete(MESSAGES)

    assert caught.value.kind == "permission" and not caught.value.retryable
    assert str(caught.value) == (
        "cannot authenticate to the Databricks workspace: default auth: cannot configure default credentials — "
        "set DATABRICKS_HOST and DATABRICKS_TOKEN, or DATABRICKS_CONFIG_PROFILE for a CLI profile"
    )


# ---------------------------------------------------------------------------------------------------------
# Choosing a provider


def test_auto_picks_offline_without_credentials_and_never_builds_a_workspace(tmp_path: Path) -> None:
    def must_not_be_called() -> Any:
        raise AssertionError("auto-detection must not build a WorkspaceClient")

    model = make_chat_model(ModelConfig(), workspace=must_not_be_called, env={"HOME": str(tmp_path)})

    assert isinstance(model, OfflineModel)
    assert resolve_provider(ModelConfig(), {"HOME": str(tmp_path)}).reason == (
        "no Databricks credentials and no model.base_url configured"
    )


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"DATABRICKS_HOST": "https://adb-1.azuredatabricks.net"}, "DATABRICKS_HOST is set"),
        ({"DATABRICKS_CONFIG_PROFILE": "dev"}, "DATABRICKS_CONFIG_PROFILE is dev"),
        ({"DATABRICKS_RUNTIME_VERSION": "17.3"}, "running on Databricks compute"),
    ],
)
def test_auto_picks_databricks_from_the_environment(tmp_path: Path, env: dict[str, str], reason: str) -> None:
    choice = resolve_provider(ModelConfig(), {"HOME": str(tmp_path), **env})
    assert (choice.provider, choice.reason) == ("databricks", reason)


def test_auto_picks_databricks_from_a_default_cli_profile(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    (tmp_path / ".databrickscfg").write_text("[other]\nhost = https://x.cloud.databricks.com\n")
    assert resolve_provider(ModelConfig(), home).provider == "offline"  # only DEFAULT is used implicitly

    (tmp_path / ".databrickscfg").write_text("[DEFAULT]\nhost = https://x.cloud.databricks.com\ntoken = dapi1\n")
    choice = resolve_provider(ModelConfig(), home)
    assert choice.provider == "databricks"
    assert choice.reason == f"the DEFAULT profile in {tmp_path / '.databrickscfg'} has a host"


def test_auto_with_a_base_url_picks_that_server_and_explicit_providers_win(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "DATABRICKS_HOST": "https://x"}
    assert resolve_provider(ModelConfig(base_url="http://localhost:11434/v1"), env).provider == "openai"
    assert resolve_provider(ModelConfig(provider="offline"), env).provider == "offline"
    assert isinstance(make_chat_model(ModelConfig(provider="offline"), env=env), OfflineModel)


def test_a_broken_databrickscfg_means_no_credentials(tmp_path: Path) -> None:
    (tmp_path / ".databrickscfg").write_text("this is not an ini file\n[[[\n")
    assert resolve_provider(ModelConfig(), {"HOME": str(tmp_path)}).provider == "offline"


# ---------------------------------------------------------------------------------------------------------
# Offline


def offline_context() -> PromptContext:
    when = datetime(2025, 12, 3, 14, 30, tzinfo=timezone.utc)
    return PromptContext(
        question="How do I rotate the warehouse token?",
        sources=(
            NumberedSource(
                1,
                "docs/security.md",
                "Tokens",
                None,
                "Tokens expire after 90 days. To rotate the warehouse token, open Settings and choose "
                "Regenerate. The old token stops working at once.",
                0.82,
            ),
            NumberedSource(2, "docs/faq.pdf", "", 4, "Warehouses start in about a minute.", 0.31),
            NumberedSource(3, "docs/onboarding.md", "Access", None, "Ask the platform team for access.", 0.12),
            NumberedSource(4, "docs/misc.md", "", None, "Unrelated notes.", 0.05),
        ),
        turns=(
            ContextTurn("0f3c9a1e-aaaa-bbbb", "user", "Where is the warehouse token stored?", when),
            ContextTurn("0f3c9a1e-aaaa-bbbb", "assistant", "In the team's secret scope   `ops`.", when),
        ),
    )


def test_offline_answers_from_sources_and_earlier_turns_deterministically() -> None:
    model = OfflineModel()
    messages = [*MESSAGES]

    result = model.complete(messages, context=offline_context())

    assert result.text == (
        "I'm running without a language model, so I can't write an answer myself. Here is what I found about "
        '"How do I rotate the warehouse token?":\n'
        "\n"
        "From your documents:\n"
        "[1] docs/security.md › Tokens: To rotate the warehouse token, open Settings and choose Regenerate. "
        "The old token stops working at once.\n"
        "[2] docs/faq.pdf, page 4: Warehouses start in about a minute.\n"
        "[3] docs/onboarding.md › Access: Ask the platform team for access.\n"
        "\n"
        "From earlier conversations:\n"
        '- 2025-12-03, you (session 0f3c9a1e): "Where is the warehouse token stored?"\n'
        '- 2025-12-03, assistant (session 0f3c9a1e): "In the team\'s secret scope `ops`."\n'
        "\n" + CONFIGURE_HINT
    )
    assert result.model == "offline" and result.finish_reason == "stop" and result.usage.estimated
    assert model.complete(messages, context=offline_context()) == result


def test_offline_stream_yields_the_same_text() -> None:
    model = OfflineModel()
    stream = model.stream(MESSAGES, context=offline_context())
    assert "".join(stream) == model.complete(MESSAGES, context=offline_context()).text
    assert stream.completion is not None and stream.completion.text == stream.text


def test_offline_with_nothing_found_says_so_and_uses_the_last_user_message() -> None:
    result = OfflineModel().complete(MESSAGES)
    assert result.text == (
        "I'm running without a language model, and I found nothing about \"How do I rotate the warehouse "
        'token?" in your documents or earlier conversations.\n\n' + CONFIGURE_HINT
    )


def test_prompt_context_build_numbers_hits_in_order() -> None:
    class Hit:
        def __init__(self, path: str, score: float) -> None:
            self.chunk_id, self.path, self.heading, self.page, self.text, self.score = (
                f"c-{path}",
                path,
                "",
                None,
                "text",
                score,
            )

    context = PromptContext.build("q", [Hit("a.md", 0.9), Hit("b.md", 0.5)])
    assert [(s.index, s.path, s.chunk_id) for s in context.sources] == [
        (1, "a.md", "c-a.md"),
        (2, "b.md", "c-b.md"),
    ]
