"""Terminal niceties of the chat: line editing with a private, persistent input history, and loading the local
embedding model while the user types the first question."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..core.files import private_dir, private_file
from ..services import Services

log = logging.getLogger(__name__)

HISTORY_LENGTH = 1000


@contextlib.contextmanager
def line_editing(history_path: Path | None, commands: Sequence[str] = ()) -> Iterator[None]:
    """readline editing, persistent history and /command completion, when the platform has readline."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input() still works
        yield
        return
    if history_path is not None:
        with contextlib.suppress(OSError):
            readline.read_history_file(history_path)
    readline.set_history_length(HISTORY_LENGTH)

    def complete(text: str, state: int) -> str | None:
        options = [name + " " for name in commands if name.startswith(text)] if text.startswith("/") else []
        return options[state] if state < len(options) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" \t\n")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    try:
        yield
    finally:
        if history_path is not None:
            with contextlib.suppress(OSError):  # what you typed: private (core.files)
                private_dir(history_path.parent)
                private_file(history_path)
                readline.write_history_file(history_path)


def warm_up(services: Services) -> threading.Thread:
    """Load the local embedding model and open the trace store while the user types the first question.

    Only local work (a serving-endpoint embedder is left alone: asking it for its dimension is a network
    call). Failures are ignored here; the turn that needs the part reports them.
    """

    def run() -> None:
        config = services.config
        try:
            if config.rag.enabled or config.memory.recall:
                from ..retrieval.embedding_service import EmbeddingServiceClient
                from ..retrieval.embeddings import LocalEmbedder

                embedder = getattr(services.embedder, "inner", services.embedder)
                if isinstance(embedder, (LocalEmbedder, EmbeddingServiceClient)):
                    embedder.dimension  # noqa: B018  (loads the model, or reaches/starts the warm service)
            if config.tracing.enabled:
                services.tracer.warm_up()
        except Exception as exc:
            log.debug("warm-up: %s", exc)

    thread = threading.Thread(target=run, name="chat-warm-up", daemon=True)
    thread.start()
    return thread


__all__: Sequence[str] = ["HISTORY_LENGTH", "line_editing", "warm_up"]
