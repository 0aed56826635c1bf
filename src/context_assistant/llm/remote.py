"""Remote chat models: Databricks serving endpoints and any OpenAI-compatible server, via the openai client.

Databricks serving endpoints expose the OpenAI chat-completions API under ``{host}/serving-endpoints``, so one
implementation serves both; they differ only in where the base URL and credentials come from and in how errors
are explained. Rate limits (429) and server errors (5xx, dropped connections) are retried with backoff on the
injected clock, honouring ``Retry-After``; any other error is a mistake in the request or configuration and is
raised at once as a :class:`~context_assistant.llm.interface.ModelError`.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..core.clock import REAL_CLOCK, Clock
from ..core.retries import RetriesExhausted, retry_after_seconds, retry_call
from ..core.upstream import error_detail, status_message
from .interface import ChatMessage, Completion, ModelError, ModelStream, PromptContext, Usage, estimate_usage

log = logging.getLogger(__name__)

T = TypeVar("T")

# Placeholder key for servers that need none (vLLM, Ollama, llama.cpp); the openai client insists on one.
NO_API_KEY = "not-needed"
MAX_BACKOFF_SECONDS = 30.0

_CONTEXT_TOO_LONG = re.compile(
    r"context[ _](length|window|size)|maximum context|prompt is too long|input is too long|too many (input )?tokens"
    r"|reduce the length|exceed_context_size|maximum (input|prompt) length",
    re.IGNORECASE,
)


@dataclass
class _StreamState:
    model: str
    finish_reason: str | None = None
    usage: Any = None
    parts: list[str] = field(default_factory=list)


class OpenAICompatibleModel:
    """A chat-completions server reached with the ``openai`` client: vLLM, Ollama, llama.cpp server, OpenAI.

    The client's own retries are off (``max_retries=0``): retries run here, on the injected clock, so they
    honour ``Retry-After`` and stay testable. ``timeout_seconds`` bounds each connect and each read, so a
    stream that keeps producing tokens is never cut off, but one that stalls is.
    """

    provider = "openai"

    def __init__(
        self,
        *,
        model: str,
        base_url: str,
        api_key: str = NO_API_KEY,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_seconds: float = 120.0,
        max_retries: int = 3,
        default_max_tokens: int = 1024,
        default_temperature: float = 0.2,
        clock: Clock = REAL_CLOCK,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.name = f"{self.provider}:{model}"
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._timeout = timeout_seconds
        self._max_retries = max_retries
        self._default_max_tokens = default_max_tokens
        self._default_temperature = default_temperature
        self._clock = clock
        self._jitter = jitter
        self._client: Any = None
        self._lock = threading.Lock()
        # Not every server accepts stream_options; learned on the first rejection, then left out.
        self._stream_usage_supported = True

    # -- the parts Databricks changes

    def _make_client(self) -> Any:
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self._timeout, max_retries=0)

    def _auth_headers(self) -> dict[str, str]:
        """Headers for one request (Databricks mints them per request so OAuth tokens stay fresh)."""
        return {}

    def _where(self) -> str:
        return f"model '{self.model}' at {self.base_url}"

    def _status_hints(self) -> dict[int, str]:
        """What to check for each refusal: :func:`status_message` words the rest."""
        return {
            401: f"set {self._api_key_env}",
            404: "check model.endpoint (the model name) and model.base_url (it usually ends in /v1)",
        }

    # -- the interface

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        context: PromptContext | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Completion:
        payload = self._payload(messages, max_tokens, temperature)

        def attempt() -> Completion:
            response = self._client_once().chat.completions.create(**payload, extra_headers=self._auth_headers())
            return self._completion_from(response, messages)

        return self._with_retries(attempt)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        context: PromptContext | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> ModelStream:
        return ModelStream(self._stream_deltas(messages, self._payload(messages, max_tokens, temperature)))

    # -- internals

    def _payload(
        self, messages: Sequence[ChatMessage], max_tokens: int | None, temperature: float | None
    ) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens if max_tokens is not None else self._default_max_tokens,
            "temperature": temperature if temperature is not None else self._default_temperature,
        }

    def _client_once(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _completion_from(self, response: Any, messages: Sequence[ChatMessage]) -> Completion:
        choices = getattr(response, "choices", None)
        if not choices:
            raise ModelError(
                f"{self._where()} returned no choices — not a chat completion response", "bad_response", False
            )
        choice = choices[0]
        message = getattr(choice, "message", None)
        text = _content_text(getattr(message, "content", None))
        usage = _usage_from(getattr(response, "usage", None)) or estimate_usage(messages, text)
        return Completion(
            text=text,
            model=getattr(response, "model", None) or self.model,
            usage=usage,
            finish_reason=getattr(choice, "finish_reason", None) or "stop",
        )

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        attempts = self._max_retries + 1

        def guarded() -> T:
            try:
                return attempt()
            except ModelError:
                raise
            except Exception as exc:
                raise self._translate(exc) from exc

        def note_retry(number: int, exc: BaseException, delay: float) -> None:
            log.warning("%s (attempt %d of %d); retrying in %.1fs", exc, number, attempts, delay)

        try:
            return retry_call(
                guarded,
                is_transient=lambda exc: isinstance(exc, ModelError) and exc.transient,
                attempts=attempts,
                max_delay=MAX_BACKOFF_SECONDS,
                retry_after=lambda exc: getattr(exc, "retry_after", None),
                clock=self._clock,
                jitter=self._jitter,
                on_retry=note_retry,
            )
        except RetriesExhausted as exhausted:
            last = exhausted.__cause__
            assert isinstance(last, ModelError)
            raise ModelError(
                f"{last.message} (gave up after {attempts} attempts)",
                last.kind,
                True,
                status=last.status,
            ) from last

    def _translate(self, exc: BaseException) -> ModelError:
        """Turn an openai/httpx/auth exception into a ModelError a user can act on."""
        import openai

        if isinstance(exc, ModelError):
            return exc
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = _server_message(exc)
            if status == 413 or (status in (400, 422) and _CONTEXT_TOO_LONG.search(detail or "")):
                said = f" (server said: {detail})" if detail else ""
                return ModelError(
                    f"the prompt is too long for {self._where()} — lower model.context_tokens{said}",
                    "context_too_long",
                    False,
                    status=status,
                )
            kind, message = status_message(status, self._where(), detail, hints=self._status_hints())
            retryable = status == 429 or status >= 500
            return ModelError(
                message,
                kind,
                retryable,
                status=status,
                retry_after=retry_after_seconds(exc.response.headers, self._clock.now()) if retryable else None,
            )
        if isinstance(exc, openai.APITimeoutError) or _is_timeout(exc):
            return ModelError(
                f"{self._where()} did not answer within {self._timeout:g}s (model.timeout_seconds)",
                "timeout",
                True,
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            reason = f": {cause}" if cause else ""
            return ModelError(f"cannot reach {self._where()}{reason}", "unavailable", True)
        if isinstance(exc, openai.APIError):  # an error event inside a stream
            detail = _server_message(exc) or str(exc)
            if _CONTEXT_TOO_LONG.search(detail):
                return ModelError(
                    f"the prompt is too long for {self._where()} — lower model.context_tokens (server said: "
                    f"{detail})",
                    "context_too_long",
                    False,
                )
            kind = "rate_limited" if re.search(r"rate.?limit|429", detail, re.IGNORECASE) else "unavailable"
            return ModelError(f"{self._where()} reported an error: {detail}", kind, True)
        if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError)) or type(exc).__name__ in (
            "ValidationError",
            "JSONDecodeError",
        ):
            return ModelError(
                f"{self._where()} sent a response that is not a chat completion: {exc}", "bad_response", False
            )
        if _is_transport_error(exc):
            return ModelError(f"the connection to {self._where()} failed: {exc}", "unavailable", True)
        return ModelError(f"calling {self._where()} failed: {type(exc).__name__}: {exc}", "bad_response", False)

    def _stream_deltas(
        self, messages: Sequence[ChatMessage], payload: dict[str, Any]
    ) -> Generator[str, None, Completion]:
        """Generator of deltas returning the Completion; retries only until the first delta arrives."""

        def open_and_prime() -> tuple[Any, Iterator[Any], _StreamState, str]:
            stream = self._open_stream(payload)
            state = _StreamState(model=self.model)
            chunks = iter(stream)
            try:
                for chunk in chunks:
                    delta = _absorb(chunk, state)
                    if delta:
                        return stream, chunks, state, delta
            except BaseException:
                stream.close()
                raise
            stream.close()
            if state.finish_reason is None:
                raise ModelError(
                    f"the stream from {self._where()} ended before the model finished", "unavailable", True
                )
            return stream, chunks, state, ""

        stream, chunks, state, first = self._with_retries(open_and_prime)
        try:
            if first:
                state.parts.append(first)
                yield first
            for chunk in chunks:
                delta = _absorb(chunk, state)
                if delta:
                    state.parts.append(delta)
                    yield delta
        except ModelError:
            raise
        except Exception as exc:
            error = self._translate(exc)
            received = len("".join(state.parts))
            raise ModelError(
                f"the answer broke off after {received} characters: {error.message}",
                error.kind,
                error.kind != "context_too_long",
                status=error.status,
            ) from exc
        finally:
            stream.close()
        text = "".join(state.parts)
        if state.finish_reason is None:
            raise ModelError(
                f"the answer broke off after {len(text)} characters: the stream from {self._where()} ended "
                "before the model finished",
                "unavailable",
                True,
            )
        return Completion(
            text=text,
            model=state.model,
            usage=_usage_from(state.usage) or estimate_usage(messages, text),
            finish_reason=state.finish_reason,
        )

    def _open_stream(self, payload: dict[str, Any]) -> Any:
        import openai

        client = self._client_once()
        if self._stream_usage_supported:
            try:
                return client.chat.completions.create(
                    **payload,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers=self._auth_headers(),
                )
            except openai.BadRequestError as exc:
                if "stream_options" not in (_server_message(exc) or str(exc)):
                    raise
                log.info("%s does not accept stream_options; token usage will be estimated", self._where())
                self._stream_usage_supported = False
        return client.chat.completions.create(**payload, stream=True, extra_headers=self._auth_headers())


class _AuthFailed(Exception):
    """Raised while building the workspace client or the openai client; carries the ModelError to show."""

    def __init__(self, error: ModelError) -> None:
        super().__init__(error.message)
        self.error = error


class DatabricksServingModel(OpenAICompatibleModel):
    """A Databricks Model Serving endpoint through its OpenAI-compatible API at ``{host}/serving-endpoints``.

    Auth comes from databricks-sdk — PAT, OAuth M2M (the service principal of a Databricks App), CLI profiles,
    native auth on Databricks compute — via ``workspace.config.authenticate()``, called for every request and
    sent as that request's headers. The SDK caches OAuth tokens and refreshes them before they expire, so a
    long-running app never sends a stale token, and all headers the SDK produces are kept.

    Why not ``WorkspaceClient.serving_endpoints.get_open_ai_client()``: in databricks-sdk 0.162 it is
    deprecated (a DeprecationWarning pointing to the separate databricks-openai package), and it builds its
    own ``httpx.Client`` with library defaults, tying us to the HTTP library flavour the openai package uses
    (which is changing: openai 3.x moved to ``httpx2``). Per-request ``extra_headers`` is a stable part of the
    openai client API and needs no custom transport.
    """

    provider = "databricks"

    def __init__(self, *, endpoint: str, workspace: Any, **kwargs: Any) -> None:
        super().__init__(model=endpoint, base_url="", **kwargs)
        self._workspace_source = workspace
        self._workspace: Any = None

    def _workspace_once(self) -> Any:
        if self._workspace is None:
            source = self._workspace_source
            try:
                self._workspace = source() if callable(source) else source
            except Exception as exc:
                raise _AuthFailed(self._auth_error(exc)) from exc
        return self._workspace

    def _auth_error(self, exc: BaseException) -> ModelError:
        return ModelError(
            f"cannot authenticate to the Databricks workspace: {exc} — set DATABRICKS_HOST and DATABRICKS_TOKEN, "
            "or DATABRICKS_CONFIG_PROFILE for a CLI profile",
            "permission",
            False,
        )

    def _make_client(self) -> Any:
        import openai

        host = (self._workspace_once().config.host or "").rstrip("/")
        if not host:
            raise _AuthFailed(self._auth_error(ValueError("no workspace host configured")))
        self.base_url = f"{host}/serving-endpoints"
        return openai.OpenAI(base_url=self.base_url, api_key=NO_API_KEY, timeout=self._timeout, max_retries=0)

    def _client_once(self) -> Any:
        try:
            return super()._client_once()
        except _AuthFailed as exc:
            raise exc.error from exc.__cause__

    def _auth_headers(self) -> dict[str, str]:
        try:
            return dict(self._workspace_once().config.authenticate())
        except _AuthFailed as exc:
            raise exc.error from exc.__cause__
        except Exception as exc:
            raise self._auth_error(exc) from exc

    def _where(self) -> str:
        return f"serving endpoint '{self.model}'"

    def _status_hints(self) -> dict[int, str]:
        return {
            401: "check DATABRICKS_TOKEN or your CLI profile",
            403: "it needs CAN_QUERY",
            404: "check model.endpoint",
        }


def _absorb(chunk: Any, state: _StreamState) -> str:
    """Fold one stream chunk into ``state``; return its text delta (possibly empty)."""
    if getattr(chunk, "model", None):
        state.model = chunk.model
    if getattr(chunk, "usage", None):
        state.usage = chunk.usage
    text = ""
    for choice in getattr(chunk, "choices", None) or []:
        if getattr(choice, "index", 0) not in (0, None):
            continue
        delta = getattr(choice, "delta", None)
        text += _content_text(getattr(delta, "content", None))
        if getattr(choice, "finish_reason", None):
            state.finish_reason = choice.finish_reason
    return text


def _content_text(content: Any) -> str:
    """Message content as text. Some Databricks endpoints (reasoning models) send a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
            value = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
            if kind == "text" and isinstance(value, str):
                texts.append(value)
        return "".join(texts)
    raise ValueError(f"message content of type {type(content).__name__}")


def _usage_from(usage: Any) -> Usage | None:
    if usage is None:
        return None
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    if prompt is None or completion is None:
        return None
    return Usage(int(prompt), int(completion))


def _server_message(exc: Any) -> str:
    """The server's own explanation from an openai error (its parsed body, else the response text)."""
    response = getattr(exc, "response", None)
    try:
        text = response.text if response is not None else ""
    except Exception:
        text = ""
    return error_detail(getattr(exc, "body", None), text)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__


def _is_transport_error(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError) or type(exc).__name__ in (
        "RemoteProtocolError",
        "ReadError",
        "ConnectError",
        "NetworkError",
        "TransportError",
    )
