"""A turn in the terminal: run it, show it as it arrives, and find the session it continues.

:class:`TurnPrinter` is shared by the REPL and ``chat --message``: it streams deltas when someone watches
(:func:`should_stream`), prints the numbered sources under the answer, and turns Ctrl-C into an interrupted
turn whose question is kept for ``/retry``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any, TextIO

from ..assistant.prompt import source_json
from ..assistant.turn import TurnFailed, TurnResult
from ..services import Services
from ..storage.memory import Session, SessionNotFound

log = logging.getLogger(__name__)


def find_session(services: Services, user: str, reference: str) -> Session:
    """The user's session with this id, or the only one whose id starts with ``reference`` (the store's one
    resolver: ``chat --session``, ``/resume`` and ``sessions show`` all take a prefix)."""
    return services.store.find_session(user, reference)


def source_line(source: dict[str, Any]) -> str:
    """``[1] path, page N, Heading``: one cited source under an answer. No score, as on the web page: a fused
    score is a rank within this question's candidates (the last can read 0.0000 and still be a match), not
    a confidence, and reads like one; ``search`` shows it."""
    parts = [source["path"]]
    if source.get("page") is not None:
        parts.append(f"page {source['page']}")
    if source.get("heading"):
        parts.append(source["heading"])
    return f"[{source['index']}] {', '.join(parts)}"


def should_stream(services: Services, args: argparse.Namespace, out: TextIO) -> bool:
    """Stream when someone watches (a terminal) or the config asks for it; never for --json/--no-stream."""
    if getattr(args, "no_stream", False) or getattr(args, "json", False):
        return False
    return services.config.model.streaming or is_terminal(out)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def error_text(exc: BaseException) -> str:
    """One line for the user: SessionNotFound/LookupError keep their message without repr quotes."""
    if isinstance(exc, LookupError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def next_step(exc: BaseException) -> str:
    """What to do next, where the error alone does not say it: added to the terminal line (not to ``--json``)."""
    if isinstance(exc, SessionNotFound):
        return " (`context-assistant sessions list` shows your sessions; --user picks whose)"
    return ""


# ---------------------------------------------------------------------------------------------------------
# One turn, shown


@dataclass
class TurnOutcome:
    result: TurnResult | None = None
    failure: TurnFailed | None = None
    interrupted: bool = False
    user_message_id: int | None = None


class TurnPrinter:
    """Runs one turn and shows it: deltas as they arrive (when streaming), then the sources."""

    def __init__(self, services: Services, user: str, out: TextIO, *, stream: bool) -> None:
        self.services = services
        self.user = user
        self.out = out
        self.stream = stream

    def run(self, message: str, session_id: str | None, retry_of: int | None = None) -> TurnOutcome:
        """One turn; Ctrl-C stops it (the question is kept, marked interrupted). Other errors propagate."""
        assistant = self.services.assistant
        outcome = TurnOutcome(user_message_id=retry_of)
        printed = ""
        try:
            if self.stream:
                events = assistant.stream_turn(self.user, message, session_id, retry_of=retry_of)
                try:
                    for event in events:
                        if event.type == "start":
                            outcome.user_message_id = event.data["user_message_id"]
                        elif event.type == "delta":
                            printed += event.data["text"]
                            self.out.write(event.data["text"])
                            self.out.flush()
                        elif event.type == "done":
                            outcome.result = event.result
                finally:
                    events.close()  # on Ctrl-C between deltas: the assistant marks the message interrupted
            else:
                outcome.result = assistant.turn(self.user, message, session_id, retry_of=retry_of)
        except TurnFailed as exc:
            outcome.failure = exc
            if printed and not printed.endswith("\n"):
                self.out.write("\n")
            return outcome
        except KeyboardInterrupt:
            outcome.interrupted = True
            self._mark_interrupted(message, session_id, outcome.user_message_id)
            if printed and not printed.endswith("\n"):
                self.out.write("\n")
            return outcome
        if outcome.result is not None:
            if not self.stream:
                self.out.write(outcome.result.reply)
            elif outcome.result.reply != printed:  # never expected; show the stored text rather than guess
                self.out.write("\n" + outcome.result.reply)
            if not outcome.result.reply.endswith("\n"):
                self.out.write("\n")
            self.show_sources(outcome.result)
        self.out.flush()
        return outcome

    def show_sources(self, result: TurnResult) -> None:
        if result.sources:
            self.out.write("\nSources:\n")
            for source in result.sources:
                self.out.write("  " + source_line(source_json(source, with_text=False)) + "\n")
        for warning in result.warnings:
            self.out.write(f"note: {warning}\n")

    def _mark_interrupted(self, message: str, session_id: str | None, user_message_id: int | None) -> None:
        """Ctrl-C can land inside the model call, where the turn ends without marking the question (only an
        ``Exception`` or a closed stream does that). Mark it here so later prompts skip it and /retry works."""
        store = self.services.store
        try:
            if user_message_id is None and session_id is not None:
                candidates = [
                    m
                    for m in store.messages(self.user, session_id)
                    if m.role == "user" and m.content == message and "status" not in m.metadata
                ]
                user_message_id = candidates[-1].id if candidates else None
            if user_message_id is None:
                return
            stored = store.get_message(self.user, user_message_id)
            if stored.metadata.get("status") in (None, "") and stored.role == "user":
                store.update_metadata(
                    self.user,
                    user_message_id,
                    {
                        "status": "failed",
                        "error": "the reply was interrupted before it completed",
                        "error_kind": "interrupted",
                    },
                )
        except Exception as exc:  # the message itself is stored; only its status could not be written
            log.warning("could not mark the interrupted message: %s", exc)
