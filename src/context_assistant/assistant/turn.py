"""One assistant turn: memory, recall and retrieval in; a cited answer out; everything stored and traced.

The order matters for what a user can rely on:

1. the user's message is stored first, so nothing they typed is lost whatever fails later;
2. history (within ``memory.max_history`` and ``memory.history_tokens``; turns that fall out are folded into
   the session's rolling summary), recalled turns from the user's other sessions and retrieved chunks are
   gathered — a failing recall or retrieval degrades the answer (noted in the reply's metadata) rather than
   failing the turn;
3. the prompt is built within ``model.context_tokens`` (priorities in :mod:`context_assistant.assistant.prompt`);
4. the model is called; if it fails, the user's message is marked failed (left out of later prompts) and the
   caller gets a :class:`TurnFailed` it can retry with ``retry_of`` — the stored message is reused, not
   duplicated;
5. the reply is stored with its sources, model, token usage, latency and trace id.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from ..core.clock import REAL_CLOCK, Clock
from ..core.config import Config
from ..core.errors import InvalidInput, UpstreamError
from ..core.redact import redact
from ..core.text import check_message
from ..core.tracing import (
    SPAN_MEMORY_LOAD,
    SPAN_MEMORY_STORE,
    SPAN_MODEL_CALL,
    SPAN_PROMPT_BUILD,
    SPAN_RECALL,
    SPAN_RETRIEVAL,
    AnyTracer,
    DisabledTracer,
    TurnTrace,
)
from ..llm.interface import ChatModel, Completion, ContextTurn, ModelError, PromptContext
from ..retrieval.base import Hit, RecalledTurn, Recaller, Retriever
from ..storage.limbo import mark_interrupted
from ..storage.memory import ConversationStore, Message, MessageNotFound, title_from
from ..storage.targets import DatabaseError
from ..storage.turn_records import TurnContext, load_context, store_question, store_reply
from .prompt import ContextTooLong, NumberedSource, Prompt, TurnLike, build_prompt, source_json
from .summary import Summarizer

log = logging.getLogger(__name__)


class TurnFailed(UpstreamError):
    """The turn could not produce a reply. The user's message is stored (``user_message_id``) and marked failed.

    ``retryable`` says whether trying again can help (an outage or a rate limit) or not (a bad endpoint name,
    a message too long for the model). Retry with ``Assistant.turn(..., retry_of=user_message_id)``. A
    conversation that no longer fits the model is the request's fault (HTTP 422); the rest the model's (502).
    """

    def __init__(self, message: str, *, session_id: str, user_message_id: int, kind: str, retryable: bool):
        super().__init__(message, retryable=retryable)
        self.session_id = session_id
        self.user_message_id = user_message_id
        self.kind = kind
        self.http_status = {"context_too_long": 422, "database": 503}.get(kind, 502)

    def to_json(self) -> dict[str, Any]:
        return {
            "error": str(self),
            "kind": self.kind,
            "retryable": self.retryable,
            "session_id": self.session_id,
            "user_message_id": self.user_message_id,
        }


@dataclass(frozen=True)
class TurnResult:
    session_id: str
    reply: str
    sources: list[NumberedSource]
    trace_id: str | None
    user_message_id: int
    reply_message_id: int
    model: str
    usage: dict[str, Any] = field(default_factory=dict)
    recalled: list[TurnLike] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The shape of ``chat --message --json`` and of ``POST /api/chat``."""
        return {
            "session_id": self.session_id,
            "reply": self.reply,
            "sources": [source_json(s) for s in self.sources],
            "trace_id": self.trace_id,
            "user_message_id": self.user_message_id,
            "message_id": self.reply_message_id,
            "model": self.model,
            "usage": self.usage,
            "recalled": [recalled_json(t) for t in self.recalled],
            "warnings": self.warnings,
        }


def recalled_json(turn: TurnLike) -> dict[str, Any]:
    """A recalled turn as the turn's answer and its stored reply name it: where it is, not its text (the
    message is stored: ``GET /api/sessions/{session_id}/messages`` or ``sessions show`` has it)."""
    return {
        "message_id": turn.message_id,
        "session_id": turn.session_id,
        "role": turn.role,
        "timestamp": turn.timestamp.isoformat(),
    }


@dataclass(frozen=True)
class TurnEvent:
    """What ``stream_turn`` yields: ``start`` (session/message ids), ``sources``, ``delta`` (text), ``done``
    (the :class:`TurnResult` in ``result``). A failure is raised as :class:`TurnFailed` after ``start``."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    result: TurnResult | None = None


TurnEvents = Generator[TurnEvent, None, None]  # a turn as it happens; close() it to stop early


class Assistant:
    def __init__(
        self,
        config: Config,
        store: ConversationStore,
        chat_model: ChatModel,
        *,
        retriever: Retriever | None = None,
        recall: Recaller | None = None,
        tracer: AnyTracer | None = None,
        summarizer: Summarizer | None = None,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        self.config = config
        self.store = store
        self.chat_model = chat_model
        self.retriever = retriever if config.rag.enabled else None
        self.recall = recall if config.memory.recall else None
        self.tracer = tracer or DisabledTracer()
        self.summarizer = summarizer or Summarizer(chat_model)
        self.clock = clock
        # Questions whose turn ended here but whose failure could not be written (the database was gone):
        # not being answered anywhere, so a retry may mark them interrupted at once (storage/limbo.py).
        self._unrecorded: set[int] = set()

    # -- public API -----------------------------------------------------------------------------------

    def turn(
        self, user: str, message: str = "", session_id: str | None = None, *, retry_of: int | None = None
    ) -> TurnResult:
        """Answer ``message`` in ``session_id`` (a new session when None) without streaming."""
        for event in self._events(user, message, session_id, retry_of, streaming=False):
            if event.type == "done":
                assert event.result is not None
                return event.result
        raise AssertionError("a turn always ends with a done event or an exception")

    def stream_turn(
        self, user: str, message: str = "", session_id: str | None = None, *, retry_of: int | None = None
    ) -> TurnEvents:
        """Answer with text deltas as the model produces them (see :class:`TurnEvent`); ``close()`` the
        events to stop early (the stored question is then marked interrupted)."""
        return self._events(user, message, session_id, retry_of, streaming=True)

    # -- the turn -------------------------------------------------------------------------------------

    def _events(
        self, user: str, message: str, session_id: str | None, retry_of: int | None, *, streaming: bool
    ) -> TurnEvents:
        session_id, user_message = self._store_user_message(user, message, session_id, retry_of)
        message = user_message.content
        yield TurnEvent("start", {"session_id": session_id, "user_message_id": user_message.id})
        started = self.clock.monotonic()
        finished = False
        with self.tracer.turn(user=user, session_id=session_id, inputs={"message": message}) as trace:
            try:
                prompt, warnings, new_summary = self._prepare(user, session_id, user_message, trace)
                yield TurnEvent("sources", {"sources": [source_json(s) for s in prompt.sources]})
                context = PromptContext(
                    question=message,
                    sources=tuple(prompt.sources),
                    turns=tuple(
                        ContextTurn(t.session_id, t.role, t.content, t.timestamp) for t in prompt.recalled
                    ),
                )
                with trace.span(
                    SPAN_MODEL_CALL, {"model": self.chat_model.name, "messages": prompt.messages}
                ) as span:
                    if streaming:
                        completion = yield from self._stream_model(prompt, context)
                    else:
                        completion = self.chat_model.complete(
                            prompt.messages,
                            context=context,
                            max_tokens=self.config.model.max_tokens,
                            temperature=self.config.model.temperature,
                        )
                    span.set_usage(completion.usage.prompt_tokens, completion.usage.completion_tokens)
                    span.set_outputs({"text": completion.text, "finish_reason": completion.finish_reason})
                trace_id = trace.trace_id
                latency_ms = int((self.clock.monotonic() - started) * 1000)
                with trace.span(SPAN_MEMORY_STORE, {"session_id": session_id}) as span:
                    patch: dict[str, Any] = {"status": "ok", "trace_id": trace_id}
                    if user_message.failed:
                        patch["error"] = None
                    # One statement: the reply, the question's status and the advanced summary.
                    reply = store_reply(
                        self.store,
                        user,
                        session_id,
                        user_message.id,
                        completion.text,
                        {
                            "status": "ok",
                            "sources": [source_json(s, with_text=False) for s in prompt.sources],
                            **(
                                {"recalled": [recalled_json(t) for t in prompt.recalled]}
                                if prompt.recalled
                                else {}
                            ),
                            "model": completion.model or self.chat_model.name,
                            "usage": completion.usage.as_dict(),
                            "latency_ms": latency_ms,
                            "trace_id": trace_id,
                            "in_reply_to": user_message.id,
                            **({"warnings": warnings} if warnings else {}),
                        },
                        patch,
                        new_summary,
                    )
                    span.set_outputs({"message_id": reply.id})
                if self.recall is not None:
                    self.recall.index_later(user)  # this turn's messages, embedded off the user's path
                result = TurnResult(
                    session_id=session_id,
                    reply=completion.text,
                    sources=list(prompt.sources),
                    trace_id=trace_id,
                    user_message_id=user_message.id,
                    reply_message_id=reply.id,
                    model=completion.model or self.chat_model.name,
                    usage=completion.usage.as_dict(),
                    recalled=list(prompt.recalled),
                    warnings=warnings,
                )
                trace.set_outputs(
                    {"reply": completion.text, "sources": [source_json(s, False) for s in prompt.sources]}
                )
                finished = True
                done = TurnEvent("done", {"message_id": reply.id, "trace_id": trace_id}, result)
            except ModelError as exc:
                raise self._fail(user, session_id, user_message, str(exc), exc.kind, exc.retryable, trace) from exc
            except ContextTooLong as exc:
                raise self._fail(
                    user, session_id, user_message, str(exc), "context_too_long", False, trace
                ) from exc
            except DatabaseError as exc:
                # The database went away mid-turn (the reply could not be stored): retryable, and the question
                # is marked failed now or, if the database is still down, by the limbo sweep (storage/limbo.py).
                raise self._fail(user, session_id, user_message, str(exc), "database", True, trace) from exc
            except (GeneratorExit, KeyboardInterrupt):
                # The caller stopped listening (a closed browser tab, Ctrl-C in the terminal). Keep the message
                # and say why there is no reply.
                if not finished:
                    self._mark_failed(
                        user, user_message, "the reply was interrupted before it completed", "interrupted", trace
                    )
                raise
            except Exception as exc:
                if not finished:
                    self._mark_failed(user, user_message, f"internal error: {exc}", "internal", trace)
                raise
        # After the trace is closed: a caller that stops at the done event (``turn`` returns there) closes this
        # generator, and that GeneratorExit is no failure of the turn; inside the trace it recorded every
        # answered turn as an error (and paid for formatting its traceback).
        yield done

    def _store_user_message(
        self, user: str, message: str, session_id: str | None, retry_of: int | None
    ) -> tuple[str, Message]:
        if retry_of is not None:
            stored = self.store.get_message(user, retry_of)
            if session_id is not None and stored.session_id != session_id:
                raise MessageNotFound(retry_of)
            if retry_of in self._unrecorded:
                self._unrecorded.discard(retry_of)
                if not stored.failed and mark_interrupted(self.store.db, self.clock.now(), message_id=retry_of):
                    stored = self.store.get_message(user, retry_of)
            if stored.role != "user" or not stored.failed:
                raise InvalidInput(f"message {retry_of} is not a failed user message; nothing to retry")
            return stored.session_id, stored
        check_message(message, self.config.web.max_message_chars)
        stored = store_question(self.store, user, session_id, message, title_from(message))
        return stored.session_id, stored

    def _prepare(
        self, user: str, session_id: str, user_message: Message, trace: TurnTrace
    ) -> tuple[Prompt, list[str], tuple[str, int] | None]:
        """Everything the prompt needs, read in one database transaction (history, recall, retrieval) after
        the question is embedded once (the cached embedder then serves recall and retrieval, and no
        connection waits on the model). Returns the prompt, warnings and the new summary to store, if any."""
        self._embed_question(user_message.content)
        with self.store.db.unit():
            context, recalled, hits, warnings = self._gather(user, session_id, user_message, trace)
        summary, new_summary = self._fold_summary(context)
        prompt = self._build_prompt(trace, user_message.content, context.history, summary, recalled, hits)
        return prompt, warnings, new_summary

    def _embed_question(self, message: str) -> None:
        for part in (self.recall, self.retriever):
            embedder = getattr(part, "embedder", None)
            if part is not None and embedder is not None and getattr(part, "search_mode", "") != "keyword":
                with contextlib.suppress(Exception):  # recall/retrieval meet the same error and degrade
                    embedder.embed([message])
                return

    def _gather(
        self, user: str, session_id: str, user_message: Message, trace: TurnTrace
    ) -> tuple[TurnContext, list[RecalledTurn], list[Hit], list[str]]:
        config = self.config
        message = user_message.content
        warnings: list[str] = []
        with trace.span(SPAN_MEMORY_LOAD, {"session_id": session_id}) as span:
            context = load_context(
                self.store,
                user,
                session_id,
                before_id=user_message.id,
                max_messages=config.memory.max_history,
                max_tokens=config.memory.history_tokens,
            )
            span.set_outputs({"history_messages": len(context.history), "summary_chars": len(context.summary)})

        recalled: list[RecalledTurn] = []
        if self.recall is not None and config.memory.recall_top_k > 0:
            with trace.span(SPAN_RECALL, {"query": message}) as span:
                try:
                    recalled = self.recall.recall(
                        user, message, top_k=config.memory.recall_top_k, exclude_session=session_id
                    )
                except Exception as exc:
                    log.warning("recall failed: %s", exc)
                    warnings.append(redact(f"earlier conversations unavailable: {exc}"))
                span.set_outputs([t.to_json() for t in recalled])

        hits: list[Hit] = []
        if self.retriever is not None:
            with trace.span(SPAN_RETRIEVAL, {"query": message, "top_k": config.rag.top_k}) as span:
                try:
                    hits = self.retriever.search(message, top_k=config.rag.top_k)
                except Exception as exc:
                    log.warning("retrieval failed: %s", exc)
                    warnings.append(redact(f"document search unavailable: {exc}"))
                span.set_sources(hits)
        return context, recalled, hits, warnings

    def _build_prompt(
        self,
        trace: TurnTrace,
        message: str,
        history: list[Message],
        summary: str,
        recalled: list[RecalledTurn],
        hits: list[Hit],
    ) -> Prompt:
        config = self.config
        with trace.span(SPAN_PROMPT_BUILD, {"message": message}) as span:
            prompt = build_prompt(
                system_prompt=config.model.system_prompt,
                message=message,
                history=history,
                sources=hits,
                recalled=recalled,
                summary=summary,
                context_tokens=config.model.context_tokens,
                reserve_tokens=config.model.max_tokens,
            )
            span.set_outputs(
                {
                    "tokens": prompt.tokens,
                    "sources": len(prompt.sources),
                    "history": prompt.history_used,
                    "recalled": len(prompt.recalled),
                    "dropped": prompt.dropped,
                },
            )
        return prompt

    def _fold_summary(self, context: TurnContext) -> tuple[str, tuple[str, int] | None]:
        """Fold messages older than the history window (and not yet summarised) into the summary; the new
        summary is stored with the reply. Returns the summary for the prompt and what to store (or None)."""
        if not context.to_fold:
            return context.summary, None
        summary = self.summarizer.fold(context.summary, context.to_fold)
        return summary, (summary, context.to_fold[-1].id)

    def _stream_model(self, prompt: Prompt, context: PromptContext) -> Generator[TurnEvent, None, Completion]:
        stream = self.chat_model.stream(
            prompt.messages,
            context=context,
            max_tokens=self.config.model.max_tokens,
            temperature=self.config.model.temperature,
        )
        with stream:
            for delta in stream:
                if delta:
                    yield TurnEvent("delta", {"text": delta})
        completion: Completion | None = stream.completion
        assert completion is not None
        return completion

    # -- failure and tracing helpers ------------------------------------------------------------------

    def _fail(
        self,
        user: str,
        session_id: str,
        message: Message,
        error: str,
        kind: str,
        retryable: bool,
        trace: TurnTrace,
    ) -> TurnFailed:
        self._mark_failed(user, message, error, kind, trace)
        return TurnFailed(
            redact(error), session_id=session_id, user_message_id=message.id, kind=kind, retryable=retryable
        )

    def _mark_failed(self, user: str, message: Message, error: str, kind: str, trace: TurnTrace) -> None:
        error = redact(error)  # stored with the message and traced: never an echoed token (core.redact)
        try:
            self.store.update_metadata(
                user,
                message.id,
                {"status": "failed", "error": error, "error_kind": kind, "trace_id": trace.trace_id},
            )
        except Exception as exc:  # the message itself is stored; only its status could not be written
            log.error("could not mark message %s as failed: %s", message.id, exc)
            self._unrecorded.add(message.id)
        trace.set_outputs({"error": error, "kind": kind})
