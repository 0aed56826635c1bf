"""Ctrl-C on the command line: one line on stderr, exit code 130, gone within two seconds, no traceback.

Why this needs more than ``except KeyboardInterrupt``: after the first Ctrl-C the command still closes its
database pool and its Spark session, and a second Ctrl-C (people press it again when nothing seems to happen)
would land in that clean-up and print a traceback from whatever it interrupted. So once the first one is
caught, a second one exits at once, and a watchdog exits anyway if clean-up outlives the deadline. Exiting
early loses nothing: every write this project makes is a database transaction or a Delta commit, which
either happened or did not, and the next run picks up from there.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from typing import Any, TextIO

from .errors import EXIT_INTERRUPTED  # 128 + SIGINT, what shells report for a process stopped by Ctrl-C

CLEANUP_SECONDS = 1.5


_reported = threading.Event()  # an entry point has reported the interrupt (see guard_lost_interrupts)


def interrupts_reach_the_main_thread() -> None:
    """Make the kernel deliver Ctrl-C's SIGINT to the main thread: every thread started from now on through
    :mod:`threading` blocks SIGINT first. Python runs signal handlers in the main thread, but a blocking call
    there (an HTTP read of a held embedding request) is only cut short when the signal lands on that thread;
    landing on a helper thread (a pool's, the recall indexer's), it left Ctrl-C waiting for the call to end.
    Idempotent; a no-op where ``pthread_sigmask`` does not exist."""
    if not hasattr(signal, "pthread_sigmask"):
        return

    def block_in_this_thread(*_: Any) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        sys.setprofile(None)  # runs once, at the thread's first event, then gets out of the way

    threading.setprofile(block_in_this_thread)


def guard_lost_interrupts(message: str, seconds: float = CLEANUP_SECONDS) -> None:
    """Make Ctrl-C end the command even when its KeyboardInterrupt is lost.

    Python raises KeyboardInterrupt wherever the main thread happens to be; inside a finalizer (``__del__``,
    as when a library frees objects while the embedding model loads) it is printed as "Exception ignored"
    and dropped, and the command runs on to the end. With this handler each Ctrl-C still raises it, and if no
    entry point has reported it (:func:`report_interrupted`) ``seconds`` later, ``message`` is printed and the
    process ends with 130. Not for a REPL, which catches Ctrl-C on purpose and goes on.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(*_: Any) -> None:
        watchdog = threading.Timer(seconds, _unless_reported, args=(message,))
        watchdog.daemon = True
        watchdog.start()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)


def _unless_reported(message: str) -> None:
    if _reported.is_set():
        return
    with contextlib.suppress(OSError, ValueError):
        print(message, file=sys.stderr, flush=True)
    _exit_now()


def report_interrupted(
    message: str, stream: TextIO | None = None, cleanup_seconds: float = CLEANUP_SECONDS
) -> int:
    """Print ``message`` (one line), make sure the process ends soon, and return :data:`EXIT_INTERRUPTED`.

    Call it from the ``except KeyboardInterrupt`` of a command's entry point, before its clean-up runs.
    """
    _reported.set()
    stream = stream or sys.stderr
    with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to tell
        print(message, file=stream, flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _exit_now)
    watchdog = threading.Timer(cleanup_seconds, _exit_now)
    watchdog.daemon = True
    watchdog.start()
    return EXIT_INTERRUPTED


def end_process(code: int = EXIT_INTERRUPTED) -> None:
    """Run the ``atexit`` handlers (they stop the local Spark server), flush, and leave at once.

    Skips the interpreter's own teardown, which takes seconds once torch is imported: a command that was
    asked to stop should not then make the user wait. Only for a process's entry point.
    """
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's; absent elsewhere
    if run_exit_handlers is not None:
        with contextlib.suppress(BaseException):
            run_exit_handlers()
    _flush()
    os._exit(code)


def fast_exit(code: int = 0) -> None:
    """Leave a finished command the way the interpreter would, minus its module teardown.

    Python's own exit joins non-daemon threads, runs the ``atexit`` handlers, flushes, and then tears every
    module down, which takes seconds once torch is imported and achieves nothing for a process that ends. This
    does the first three (in that order) and skips the last. Only for a console script's entry point, after the
    command returned and its resources were closed.
    """
    join_threads = getattr(threading, "_shutdown", None)  # what Py_FinalizeEx calls first; CPython's
    if join_threads is not None:
        with contextlib.suppress(BaseException):
            join_threads()
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is not None:
        with contextlib.suppress(BaseException):
            run_exit_handlers()
    _flush()
    os._exit(code)


def _exit_now(*_: Any) -> None:
    _flush()
    os._exit(EXIT_INTERRUPTED)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


__all__ = ["CLEANUP_SECONDS", "end_process", "fast_exit", "guard_lost_interrupts", "report_interrupted"]
