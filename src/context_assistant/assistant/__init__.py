"""One turn: history, recall and retrieved passages in; a cited answer out, stored and traced. ``prompt``
fits them into the model's context, ``summary`` folds what falls out of the history window."""

from .prompt import ContextTooLong, Prompt, build_prompt, source_json
from .summary import Summarizer
from .turn import Assistant, TurnEvent, TurnEvents, TurnFailed, TurnResult, check_message

__all__ = [
    "Assistant",
    "ContextTooLong",
    "Prompt",
    "Summarizer",
    "TurnEvent",
    "TurnEvents",
    "TurnFailed",
    "TurnResult",
    "build_prompt",
    "check_message",
    "source_json",
]
