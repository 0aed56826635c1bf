"""The ``context-assistant`` command line and its terminal chat."""

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
