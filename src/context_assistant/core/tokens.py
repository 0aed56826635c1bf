"""Token estimates for budgeting prompts and history.

Chat models tokenise differently and exact tokenisers need downloads, so budgets use a conservative estimate:
about four characters per token for English prose, never less than one, plus a fixed overhead per chat
message for the role markers. Budgets are limits to stay under, so overestimating is the safe side.
"""

from __future__ import annotations

import math

MESSAGE_OVERHEAD_TOKENS = 4
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0


def message_tokens(content: str) -> int:
    """Estimated cost of one chat message: its text plus role/formatting overhead."""
    return estimate_tokens(content) + MESSAGE_OVERHEAD_TOKENS
