"""The offline chat model: no language model, no network; answers honestly from what retrieval and recall found."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from datetime import timezone

from ..core.passages import best_excerpt, chunk_body, question_terms, shorten
from .interface import (
    CONFIGURE_HINT,
    ChatMessage,
    Completion,
    ModelStream,
    NumberedSource,
    PromptContext,
    estimate_usage,
)


class OfflineModel:
    """Answers without a language model: quotes what it found and says plainly that it cannot write answers.

    It shows the most relevant retrieved passages (best sentences, cited with the numbers the prompt uses)
    and the relevant earlier turns, then says how to configure a model. Deterministic: the same context
    always gives the same text.
    """

    provider = "offline"
    name = "offline"
    max_sources = 3
    max_turns = 3
    excerpt_chars = 300

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        context: PromptContext | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Completion:
        text = self.answer(context or PromptContext(question=_last_user_message(messages)))
        return Completion(text=text, model=self.name, usage=estimate_usage(messages, text), finish_reason="stop")

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        context: PromptContext | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> ModelStream:
        completion = self.complete(messages, context=context)

        def deltas() -> Generator[str, None, Completion]:
            yield from completion.text.splitlines(keepends=True)
            return completion

        return ModelStream(deltas())

    def answer(self, context: PromptContext) -> str:
        question = shorten(" ".join(context.question.split()), 200)
        terms = question_terms(context.question)
        sources = sorted(context.sources, key=lambda s: (-s.score, s.index))[: self.max_sources]
        turns = list(context.turns[: self.max_turns])
        if not sources and not turns:
            return (
                f'I\'m running without a language model, and I found nothing about "{question}" in your '
                f"documents or earlier conversations.\n\n{CONFIGURE_HINT}"
            )
        lines = [
            "I'm running without a language model, so I can't write an answer myself. "
            f'Here is what I found about "{question}":'
        ]
        if sources:
            lines += ["", "From your documents:"]
            for source in sources:
                # The location names the heading already: quote the text without its contextual header.
                body = chunk_body(source.text, source.heading)
                lines.append(
                    f"[{source.index}] {_location(source)}: {best_excerpt(body, terms, self.excerpt_chars)}"
                )
        if turns:
            lines += ["", "From earlier conversations:"]
            for turn in turns:
                who = "you" if turn.role == "user" else turn.role
                when = turn.timestamp.astimezone(timezone.utc).strftime("%Y-%m-%d")
                content = shorten(" ".join(turn.content.split()), self.excerpt_chars)
                lines.append(f'- {when}, {who} (session {turn.session_id[:8]}): "{content}"')
        lines += ["", CONFIGURE_HINT]
        return "\n".join(lines)


def _location(source: NumberedSource) -> str:
    where = source.path
    if source.heading:
        where += f" › {source.heading}"
    if source.page is not None:
        where += f", page {source.page}"
    return where


def _last_user_message(messages: Sequence[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""
