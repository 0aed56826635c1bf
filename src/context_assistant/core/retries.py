"""Retry with exponential backoff for calls to remote services (serving endpoints, Vector Search, REST).

Only errors the caller marks as transient (429, 5xx, connection resets) are retried; a 4xx is a mistake in
the request or configuration, so it surfaces at once with its message.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import TypeVar

from .clock import REAL_CLOCK, Clock
from .errors import Unavailable

T = TypeVar("T")


class RetriesExhausted(Unavailable):
    """Raised with the last transient error as ``__cause__`` once attempts run out (it may pass later)."""


def retry_call(
    call: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    attempts: int = 4,
    base_delay: float = 0.5,
    max_delay: float = 20.0,
    retry_after: Callable[[BaseException], float | None] = lambda exc: None,
    clock: Clock = REAL_CLOCK,
    jitter: Callable[[], float] = random.random,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Call ``call`` until it succeeds, a non-transient error is raised, or ``attempts`` are used up.

    The delay doubles from ``base_delay`` (capped at ``max_delay``) with full jitter, unless the server said
    how long to wait (``retry_after``, e.g. a Retry-After header), which is honoured up to ``max_delay``.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == attempts:
                raise RetriesExhausted(f"gave up after {attempts} attempts: {exc}") from exc
            hinted = retry_after(exc)
            if hinted is not None:
                delay = min(max(hinted, 0.0), max_delay)
            else:
                delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + jitter() / 2)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            clock.sleep(delay)
    raise AssertionError("unreachable")


def retry_after_seconds(headers: Mapping[str, str], now: datetime) -> float | None:
    """How long a server asked us to wait: ``retry-after-ms`` (OpenAI-style), else ``Retry-After`` as seconds
    or an HTTP date (relative to ``now``). None when the server did not say, or said something unreadable."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())
