"""Assemble the chat prompt for one turn within the model's context budget.

What goes in, in priority order when the budget is tight (the first items are never dropped):

1. the system prompt and the user's message (plus the room reserved for the answer, ``model.max_tokens``);
2. the session's rolling summary (what the conversation covered before the history window);
3. the recent history, newest whole turns first;
4. the retrieved sources, best-ranked first;
5. relevant turns from the user's earlier sessions, best first.

Each block is cut whole-item by whole-item (a source or a turn is never truncated mid-text), and what was left
out is reported so the trace shows why an answer missed something.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ..core.errors import InvalidInput
from ..core.tokens import message_tokens
from ..llm.interface import NumberedSource
from ..storage.memory import fit_turns


class SourceLike(Protocol):
    """A retrieved passage (retrieval's ``Hit``)."""

    @property
    def path(self) -> str: ...

    @property
    def heading(self) -> str: ...

    @property
    def page(self) -> int | None: ...

    @property
    def text(self) -> str: ...

    @property
    def score(self) -> float: ...


class TurnLike(Protocol):
    """A recalled turn of an earlier session (retrieval's ``RecalledTurn``)."""

    @property
    def message_id(self) -> int: ...

    @property
    def session_id(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...

    @property
    def timestamp(self) -> datetime: ...


class HistoryLike(Protocol):
    """A message of this session (memory's ``Message``)."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


def source_location(source: NumberedSource) -> str:
    """How a source is named to the model and to the user: ``path, page N, Heading > Sub``."""
    parts = [source.path]
    if source.page is not None:
        parts.append(f"page {source.page}")
    if source.heading:
        parts.append(source.heading)
    return ", ".join(parts)


def source_json(source: NumberedSource, with_text: bool = True) -> dict[str, Any]:
    """A cited source as stored with the reply and returned by the CLI and the API."""
    data: dict[str, Any] = {
        "index": source.index,
        "chunk_id": source.chunk_id,
        "path": source.path,
        "heading": source.heading,
        "page": source.page,
        "score": round(source.score, 6),
    }
    if with_text:
        data["text"] = source.text
    return data


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    sources: list[NumberedSource]
    recalled: list[TurnLike]
    history_used: int
    tokens: int
    dropped: dict[str, int] = field(default_factory=dict)


class ContextTooLong(InvalidInput):
    """The message alone does not fit the model's context window."""


def format_source(source: NumberedSource) -> str:
    return f"[{source.index}] {source_location(source)}\n{source.text.strip()}"


def format_recalled(turn: TurnLike) -> str:
    when = turn.timestamp.strftime("%Y-%m-%d")
    return f"- ({when}, {turn.role}) {turn.content.strip()}"


def build_prompt(
    *,
    system_prompt: str,
    message: str,
    history: Sequence[HistoryLike],
    sources: Sequence[SourceLike],
    recalled: Sequence[TurnLike] = (),
    summary: str = "",
    context_tokens: int,
    reserve_tokens: int,
    count: Callable[[str], int] = message_tokens,
) -> Prompt:
    """Fit everything into ``context_tokens - reserve_tokens``, dropping the lowest priorities first."""
    budget = context_tokens - reserve_tokens
    used = count(system_prompt) + count(message)
    if used > budget:
        raise ContextTooLong(
            f"the message is about {count(message)} tokens; with the system prompt and {reserve_tokens} tokens "
            f"kept for the answer it does not fit the model's {context_tokens}-token context (model.context_tokens)"
        )
    dropped: dict[str, int] = {}

    summary_text = ""
    if summary:
        block = f"Summary of the earlier part of this conversation:\n{summary.strip()}"
        if used + count(block) <= budget:
            summary_text = block
            used += count(block)
        else:
            dropped["summary"] = 1

    # History: the newest whole turns that fit what is left.
    kept_history = fit_turns(history, len(history), budget - used, count)
    used += sum(count(m.content) for m in kept_history)
    if len(kept_history) < len(history):
        dropped["history_messages"] = len(history) - len(kept_history)

    numbered: list[NumberedSource] = []
    header_cost = count("Sources:")
    for source in sources:
        candidate = NumberedSource(
            index=len(numbered) + 1,
            path=source.path,
            heading=source.heading,
            page=source.page,
            text=source.text,
            score=source.score,
            chunk_id=getattr(source, "chunk_id", ""),
        )
        cost = count(format_source(candidate)) + (header_cost if not numbered else 0)
        if used + cost > budget:
            dropped["sources"] = len(sources) - len(numbered)
            break
        numbered.append(candidate)
        used += cost

    kept_recalled: list[TurnLike] = []
    for turn in recalled:
        cost = count(format_recalled(turn))
        if used + cost > budget:
            dropped["recalled"] = len(recalled) - len(kept_recalled)
            break
        kept_recalled.append(turn)
        used += cost

    system = system_prompt.strip()
    if kept_recalled:
        system += "\n\nRelevant notes from the user's earlier conversations (may be outdated):\n" + "\n".join(
            format_recalled(t) for t in kept_recalled
        )
    if numbered:
        system += "\n\nSources (cite them by number, e.g. [1]):\n\n" + "\n\n".join(
            format_source(s) for s in numbered
        )
    if summary_text:
        system += "\n\n" + summary_text
    messages = [{"role": "system", "content": system}]
    messages += [{"role": m.role, "content": m.content} for m in kept_history if m.role in ("user", "assistant")]
    messages.append({"role": "user", "content": message})
    return Prompt(messages, numbered, kept_recalled, len(kept_history), used, dropped)
