"""Chat with the assistant in the terminal: ``python assistant.py [options]`` = ``context-assistant chat``.

Runs from a source checkout without installing the package: ``src/`` goes first on ``sys.path``. Any
arguments are passed on to ``context-assistant chat`` (for example ``--session ID`` or ``--config FILE``,
which ``context-assistant`` takes before the command, so it is moved there).
"""

import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "src"
if SOURCE.is_dir() and str(SOURCE) not in sys.path:
    sys.path.insert(0, str(SOURCE))

from context_assistant.cli import run  # noqa: E402


def chat_argv(args: list[str]) -> list[str]:
    """Put the global options (--config FILE, --debug) before ``chat``; everything else after it."""
    leading: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--debug":
            leading.append(arg)
        elif arg == "--config" and i + 1 < len(args):
            leading += [arg, args[i + 1]]
            i += 1
        elif arg.startswith("--config="):
            leading.append(arg)
        else:
            rest.append(arg)
        i += 1
    return [*leading, "chat", *rest]


if __name__ == "__main__":
    run(chat_argv(sys.argv[1:]))
