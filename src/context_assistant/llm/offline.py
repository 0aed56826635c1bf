"""The offline chat model: no language model, no network; answers honestly from what retrieval and recall found."""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from datetime import timezone

from ..core.passages import chunk_body
from .interface import (
    CONFIGURE_HINT,
    ChatMessage,
    Completion,
    ModelStream,
    NumberedSource,
    PromptContext,
    estimate_usage,
)

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Words too common to tell which sentence answers the question (words under 3 letters never count).
_STOPWORDS = frozenset(
    _WORD.findall(
        "and are can does for from has have how into its our than that the their them then there these they "
        "this was what when where which who why will with you your"
    )
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
        question = _excerpt(" ".join(context.question.split()), 200)
        terms = _terms(context.question)
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
                lines.append(f"[{source.index}] {_location(source)}: {self._best_excerpt(body, terms)}")
        if turns:
            lines += ["", "From earlier conversations:"]
            for turn in turns:
                who = "you" if turn.role == "user" else turn.role
                when = turn.timestamp.astimezone(timezone.utc).strftime("%Y-%m-%d")
                content = _excerpt(" ".join(turn.content.split()), self.excerpt_chars)
                lines.append(f'- {when}, {who} (session {turn.session_id[:8]}): "{content}"')
        lines += ["", CONFIGURE_HINT]
        return "\n".join(lines)

    def _best_excerpt(self, text: str, terms: set[str]) -> str:
        """The passage's sentences that share most words with the question, kept in their original order."""
        flat = " ".join(text.split())
        sentences = [s for s in _SENTENCE_END.split(flat) if s]
        if not sentences:
            return ""
        scored = [(len(terms & _terms(s)), -i) for i, s in enumerate(sentences)]
        best = max(range(len(sentences)), key=lambda i: scored[i])
        if scored[best][0] == 0:
            return _excerpt(flat, self.excerpt_chars)
        chosen = sentences[best]
        following = best + 1
        while following < len(sentences) and len(chosen) + 1 + len(sentences[following]) <= self.excerpt_chars:
            if not terms & _terms(sentences[following]):
                break
            chosen += " " + sentences[following]
            following += 1
        return _excerpt(chosen, self.excerpt_chars)


def _terms(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOPWORDS}


def _excerpt(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(",;:") + "…"


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
