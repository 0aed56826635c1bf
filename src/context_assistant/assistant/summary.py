"""Rolling session summaries: what a long conversation said before its history window.

When turns fall out of the history budget they are folded into a per-session summary, so the model still
knows how the conversation began. With a language model the summary is written by the model; without one
(or when that call fails) an extractive summary keeps the first sentence of each message, newest last,
within a fixed size.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Protocol

from ..core.tokens import estimate_tokens

log = logging.getLogger(__name__)

SUMMARY_TOKENS = 600
_SENTENCE = re.compile(r"(.+?[.!?])(\s|$)", re.S)


class MessageLike(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


def first_sentence(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    match = _SENTENCE.match(text)
    sentence = match.group(1) if match else text
    if len(sentence) > limit:
        sentence = sentence[: limit - 1].rsplit(" ", 1)[0] + "…"
    return sentence


def extractive_summary(previous: str, messages: Sequence[MessageLike], max_tokens: int = SUMMARY_TOKENS) -> str:
    """Append one line per message; when over budget, drop the oldest lines (the summary stays bounded)."""
    lines = [line for line in previous.splitlines() if line.strip()]
    lines += [f"- {m.role}: {first_sentence(m.content)}" for m in messages if m.content.strip()]
    while len(lines) > 1 and estimate_tokens("\n".join(lines)) > max_tokens:
        lines.pop(0)
    return "\n".join(lines)


SUMMARY_INSTRUCTIONS = (
    "You maintain a running summary of a conversation between a user and an assistant. Update the summary with "
    "the new messages. Keep facts, decisions, names, numbers and open questions; drop pleasantries. Write at most "
    "{words} words as short bullet points. Reply with the summary only."
)


class Summarizer:
    """Folds dropped-out messages into the session summary, with the chat model when it is a real one."""

    def __init__(self, chat_model: Any | None, max_tokens: int = SUMMARY_TOKENS) -> None:
        self.chat_model = chat_model
        self.max_tokens = max_tokens

    def fold(self, previous: str, messages: Sequence[MessageLike]) -> str:
        if not messages:
            return previous
        model = self.chat_model
        if model is None or getattr(model, "provider", "") == "offline":
            return extractive_summary(previous, messages, self.max_tokens)
        transcript = "\n".join(f"{m.role}: {m.content}" for m in messages)
        prompt = [
            {"role": "system", "content": SUMMARY_INSTRUCTIONS.format(words=int(self.max_tokens * 0.6))},
            {
                "role": "user",
                "content": f"Current summary:\n{previous or '(none)'}\n\nNew messages:\n{transcript}",
            },
        ]
        try:
            text = model.complete(prompt, max_tokens=self.max_tokens, temperature=0.0).text.strip()
        except Exception as exc:  # a summary is an optimisation: never fail the turn over it
            log.warning("summary by the model failed (%s); using an extractive summary", exc)
            return extractive_summary(previous, messages, self.max_tokens)
        return text or extractive_summary(previous, messages, self.max_tokens)
