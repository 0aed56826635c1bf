"""The ``context-assistant`` command line (``commands``) and its terminal chat (``chat``, ``chat_turns``)."""

from .chat import run_chat
from .commands import build_parser, main

__all__ = ["build_parser", "main", "run_chat"]
