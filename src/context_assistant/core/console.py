"""What the command-line front doors share: progress on stderr, one JSON document per line, argument types.

The CLI, the terminal chat, the job entry points and ``python app.py`` all print through these, so a
progress line or a JSON summary looks the same wherever it comes from. (Exit codes live with the errors, in
:mod:`context_assistant.core.errors`.)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

Progress = Callable[[str], None]  # where a long step reports what it is doing, one line at a time


def quiet(message: str) -> None:
    """The :data:`Progress` of a caller that wants none."""


def print_json(value: Any, out: TextIO | None = None) -> None:
    """One JSON document on one line (stdout by default), flushed: what ``--json`` and the jobs print."""
    print(json.dumps(value, ensure_ascii=False, default=str), file=out or sys.stdout, flush=True)


class TerminalProgress:
    """Progress of a long command on stderr: one live status line (with a bar when a message carries
    ``done/total``) on a terminal, plain lines otherwise, nothing when ``quiet``."""

    BAR = 24

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.quiet = quiet and not self.live
        self._shown = False

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if not self.live:
            print(message, file=self.stream, flush=True)
            return
        match = re.search(r"(\d+)/(\d+)", message)
        bar = ""
        if match and int(match.group(2)) > 0:
            done = min(1.0, int(match.group(1)) / int(match.group(2)))
            filled = round(done * self.BAR)
            bar = f"[{'#' * filled}{'.' * (self.BAR - filled)}] {done:4.0%} "
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r\033[K" + (bar + message)[:width])
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        if self.live and self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


def json_lines(lines: Iterable[str], errors: list[str]) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of a JSONL file; a line that is not JSON adds its
    reason to ``errors`` (so a caller can list every bad line at once) and is skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 message``, ``2 messages``: a count in a sentence people read."""
    return f"{count} {noun if count == 1 else (plural or noun + 's')}"


def port_number(value: str) -> int:
    """argparse type for ``--port`` (also used by ``python app.py``)."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


__all__ = ["Progress", "TerminalProgress", "counted", "json_lines", "port_number", "print_json", "quiet"]
