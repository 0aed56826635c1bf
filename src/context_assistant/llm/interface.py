"""Chat models: the interface the assistant codes against, and the choice of which model to use.

Every model speaks the same small interface (:class:`ChatModel`): ``complete`` for a whole answer and
``stream`` for text deltas (:class:`ModelStream`; the final :class:`Completion` is on the stream object once
it is exhausted). Implementations: ``llm.remote`` (Databricks serving endpoints and any OpenAI-compatible
server, one wire format) and ``llm.offline`` (no language model at all); ``llm.factory`` picks one from the
configuration. Nothing here touches the network.

Errors surface as :class:`ModelError` with a ``kind`` a caller can branch on and a message a user can act on.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ..core.errors import UpstreamError
from ..core.tokens import estimate_tokens, message_tokens

ChatMessage = Mapping[str, Any]  # {"role": "system"|"user"|"assistant", "content": str}

CONFIGURE_HINT = (
    'To get written answers, configure a model: set model.provider to "databricks" (with DATABRICKS_HOST and '
    'DATABRICKS_TOKEN, or a Databricks CLI profile) or to "openai" with model.base_url.'
)

ERROR_KINDS = (
    "bad_endpoint",  # the endpoint/model name or base URL does not exist
    "permission",  # credentials missing, rejected, or lacking CAN_QUERY
    "context_too_long",  # the prompt does not fit the model's context window
    "rate_limited",  # 429 after all retries
    "unavailable",  # 5xx, connection refused/reset, stream broken off
    "timeout",  # no answer within model.timeout_seconds
    "bad_request",  # another 4xx: the request itself was rejected
    "bad_response",  # the server answered with something that is not a chat completion
)


class ModelError(UpstreamError):
    """A chat model call failed. ``str()`` is one line for the user; ``kind`` is one of ``ERROR_KINDS``.

    ``retryable`` tells the caller whether sending the same turn again later can succeed (a rate limit or an
    outage can pass; a missing endpoint or an oversized prompt cannot). A prompt too long for the model is
    the request's fault (HTTP 422); every other kind is the model's (502).
    """

    def __init__(
        self,
        message: str,
        kind: str,
        retryable: bool,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.message = str(self)  # redacted by the error root (core.redact): upstream text may echo a token
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.http_status = 422 if kind == "context_too_long" else 502

    @property
    def transient(self) -> bool:
        """Worth retrying automatically, right now, within this call."""
        return self.kind in ("rate_limited", "unavailable")


# ---------------------------------------------------------------------------------------------------------
# What goes in and comes out


@dataclass(frozen=True)
class NumberedSource:
    """A retrieved passage as the prompt numbers it: ``[index]`` in the answer cites this passage."""

    index: int
    path: str
    heading: str
    page: int | None
    text: str
    score: float
    chunk_id: str = ""


@dataclass(frozen=True)
class ContextTurn:
    """A message from one of the user's earlier conversations, recalled because it looks relevant."""

    session_id: str
    role: str
    content: str
    timestamp: datetime


@dataclass(frozen=True)
class PromptContext:
    """What the prompt was built from, in structured form.

    Remote models ignore it (the prompt text already contains all of it); the offline model has no language
    model to read the prompt with, so it answers from these pieces directly.
    """

    question: str
    sources: tuple[NumberedSource, ...] = ()
    turns: tuple[ContextTurn, ...] = ()

    @classmethod
    def build(cls, question: str, hits: Sequence[Any] = (), recalled: Sequence[Any] = ()) -> PromptContext:
        """Number retrieval hits 1..n in the given order; accepts ``retrieval.Hit`` / ``recall.RecalledTurn``."""
        sources = tuple(
            NumberedSource(
                index=i,
                path=hit.path,
                heading=getattr(hit, "heading", "") or "",
                page=getattr(hit, "page", None),
                text=hit.text,
                score=float(getattr(hit, "score", 0.0) or 0.0),
                chunk_id=getattr(hit, "chunk_id", "") or "",
            )
            for i, hit in enumerate(hits, start=1)
        )
        turns = tuple(
            ContextTurn(session_id=t.session_id, role=t.role, content=t.content, timestamp=t.timestamp)
            for t in recalled
        )
        return cls(question=question, sources=sources, turns=turns)


@dataclass(frozen=True)
class Usage:
    """Token counts; ``estimated`` when the server did not report them and they were counted locally."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "estimated": self.estimated,
        }


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    usage: Usage
    finish_reason: str


class ModelStream:
    """Text deltas of one answer. Iterate it; once exhausted, ``completion`` holds the final Completion.

    A failure raises :class:`ModelError` from the iteration, after the deltas already yielded; ``text`` keeps
    what arrived so the caller can decide whether to show or store a partial answer. ``close()`` (or leaving a
    ``with`` block) releases the connection when the caller stops early.
    """

    def __init__(self, deltas: Generator[str, None, Completion]) -> None:
        # ``deltas`` is a generator whose return value is the Completion.
        self._deltas = deltas
        self._parts: list[str] = []
        self.completion: Completion | None = None
        self.error: ModelError | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __iter__(self) -> ModelStream:
        return self

    def __next__(self) -> str:
        try:
            delta = next(self._deltas)
        except StopIteration as stop:
            self.completion = stop.value
            raise
        except ModelError as exc:
            self.error = exc
            raise
        self._parts.append(delta)
        return delta

    def close(self) -> None:
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ModelStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChatModel(Protocol):
    name: str  # for display and logs, e.g. "databricks:databricks-claude-sonnet-4-5"
    provider: str  # "databricks" | "openai" | "offline"

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        context: PromptContext | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Completion: ...

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        context: PromptContext | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> ModelStream: ...


def estimate_usage(messages: Sequence[ChatMessage], text: str) -> Usage:
    prompt = sum(message_tokens(str(m.get("content") or "")) for m in messages)
    return Usage(prompt, estimate_tokens(text), estimated=True)


__all__ = [
    "CONFIGURE_HINT",
    "ERROR_KINDS",
    "ChatMessage",
    "ChatModel",
    "Completion",
    "ContextTurn",
    "ModelError",
    "ModelStream",
    "NumberedSource",
    "PromptContext",
    "Usage",
    "estimate_usage",
]
