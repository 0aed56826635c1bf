"""The ``context-assistant`` command line (``commands``) and its terminal chat (``chat``, ``chat_turns``)."""

from .chat import run_chat
from .main import build_parser, main, run

__all__ = ["build_parser", "main", "run", "run_chat"]
