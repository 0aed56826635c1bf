"""One turn: history, recall and retrieved passages in; a cited answer out, stored and traced."""

from .turn import Assistant, TurnEvent, TurnFailed, TurnResult, check_message

__all__ = ["Assistant", "TurnEvent", "TurnFailed", "TurnResult", "check_message"]
