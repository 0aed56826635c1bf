"""The ``context-assistant`` command line: the parser and the entry points (the commands are in ``commands``).

Exit codes (:mod:`context_assistant.core.errors`): 0 success; 1 the command ran but failed (not found,
rejected input, unreachable service); 2 bad usage or configuration; 130 interrupted (Ctrl-C: one line, see
:mod:`context_assistant.core.interrupts`). Errors are one clear line on stderr, never a traceback (``--debug``
shows it): :func:`main` catches the error hierarchy's root once; with ``--json`` the error is also one JSON
document on stdout. ``--config`` and ``--debug`` go before or after the command.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..core.config import load_config
from ..core.console import port_number, print_json
from ..core.errors import EXIT_INTERRUPTED, ContextAssistantError, UsageError
from ..core.interrupts import (
    end_process,
    fast_exit,
    guard_lost_interrupts,
    interrupts_reach_the_main_thread,
    report_interrupted,
)
from ..core.redact import install_log_redaction
from ..core.text import check_text
from ..services import Services
from .chat_turns import next_step
from .commands import (
    cmd_bundle_validate,
    cmd_chat,
    cmd_db_setup,
    cmd_db_status,
    cmd_db_stop,
    cmd_eval,
    cmd_ingest,
    cmd_memory_export,
    cmd_memory_import,
    cmd_recall,
    cmd_search,
    cmd_serve,
    cmd_sessions_delete,
    cmd_sessions_list,
    cmd_sessions_show,
    cmd_sync,
    positive_int,
)

# What Ctrl-C leaves behind, per command (one line; the default is "Interrupted.").
INTERRUPTED = {
    "ingest": "Interrupted; the next run picks up where this one stopped.",
    "sync": "Interrupted; the next run picks up where this one stopped.",
}


# ---------------------------------------------------------------------------------------------------------
# parser


class SuggestingParser(argparse.ArgumentParser):
    """argparse that answers a mistyped option or command with the one it resembles (``--topk`` → ``--top-k``,
    ``serch`` → ``search``): Python 3.11's argparse only says it is unrecognized. Sub-commands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            known = sorted(option_strings(self))
            hints: list[tuple[str, str]] = []
            for word in message[len(prefix) :].split():
                name = word.split("=", 1)[0]
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.75) if name.startswith("-") else []
                if close:
                    hints.append((close[0], name))
            if len(hints) == 1:
                message += f" (did you mean {hints[0][0]}?)"
            elif hints:
                message += f" (did you mean {', '.join(f'{good} for {bad}' for good, bad in hints)}?)"
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:  # a mistyped command: `serch` → `search`
            options = [option.strip(" '") for option in choice.group(2).split(",")]
            close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean {close[0]!r}?)"
        super().error(message)


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option of ``parser`` and its sub-commands (argparse keeps them in ``_actions`` only)."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= option_strings(sub)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = SuggestingParser(
        prog="context-assistant",
        description="An assistant that remembers conversations and answers from your documents.",
    )
    _global_options(parser, default=None)
    # The same options after the command (`context-assistant search "q" --debug`): SUPPRESS keeps a value given
    # before the command when it is not repeated after it.
    common = SuggestingParser(add_help=False, argument_default=argparse.SUPPRESS)
    _global_options(common, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(group: Any, name: str, handler: Callable[..., int], help: str, *, json_flag: bool = True) -> Any:
        sub = group.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(handler=handler)
        if json_flag:
            sub.add_argument("--json", action="store_true", help="machine-readable output (see README)")
        return sub

    def group_parser(name: str, help: str) -> Any:
        return commands.add_parser(name, help=help, parents=[common])

    sessions = group_parser("sessions", "list, show or delete conversation sessions")
    sessions_cmds = sessions.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(sessions_cmds, "list", cmd_sessions_list, "list a user's sessions, most recent first")
    p.add_argument("--user", help="whose sessions (default: config user / OS user)")
    p.add_argument("--limit", type=int, default=100)
    p = add(sessions_cmds, "show", cmd_sessions_show, "show a session's messages in order")
    p.add_argument("session_id", help="the session's id, or a unique prefix of it")
    p.add_argument("--user")
    p = add(sessions_cmds, "delete", cmd_sessions_delete, "delete a session and its messages")
    p.add_argument("session_id", help="the session's id, or a unique prefix of it")
    p.add_argument("--user")

    memory = group_parser("memory", "import or export conversation memory as JSON lines")
    memory_cmds = memory.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(memory_cmds, "import", cmd_memory_import, "import messages from a JSONL file (all or nothing)")
    p.add_argument("file")
    p = add(memory_cmds, "export", cmd_memory_export, "export messages as JSONL", json_flag=False)
    p.add_argument("--user", help="only this user's messages (default: everyone's)")
    p.add_argument("--output", "-o", help="file to write (default: stdout)")

    db = group_parser("db", "database status and the embedded server")
    db_cmds = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    add(db_cmds, "status", cmd_db_status, "which Postgres, its version, pgvector and the schema version")
    p = add(
        db_cmds,
        "setup",
        cmd_db_setup,
        "as the database owner: create the schema and pgvector, migrate, and grant roles access to the schema",
    )
    p.add_argument(
        "--grant-to",
        action="append",
        metavar="ROLE",
        help="a Postgres role that may then read and write the schema (repeatable), e.g. an app's "
        "service principal client id",
    )
    p.add_argument(
        "--grant-to-app",
        action="append",
        metavar="APP_NAME",
        help="a Databricks App whose service principal's role is granted (looked up with the SDK; repeatable)",
    )
    p.add_argument(
        "--skip-recall", action="store_true", help="do not create the recall index (needs the embedding model)"
    )
    add(db_cmds, "stop", cmd_db_stop, "stop the embedded Postgres server", json_flag=False)

    bundle = group_parser("bundle", "check the Databricks Asset Bundle offline")
    bundle_cmds = bundle.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(bundle_cmds, "validate", cmd_bundle_validate, "validate databricks.yml and resources/ offline")
    p.add_argument("--target", "-t", action="append", help="target to validate (repeatable; default: the default)")
    p.add_argument(
        "--root", help="bundle folder (default: the nearest folder, from here up, with a databricks.yml)"
    )
    p.add_argument(
        "--var",
        action="append",
        metavar="NAME=VALUE",
        help="a variable's value, as for the Databricks CLI (repeatable; BUNDLE_VAR_<name> works too)",
    )

    p = add(commands, "ingest", cmd_ingest, "parse and chunk new or changed documents, then sync the index")
    p.add_argument("--source", help="documents folder or Volume path (default: rag.source)")
    p.add_argument("--full", action="store_true", help="re-embed every chunk, even unchanged ones")
    p.add_argument(
        "--allow-empty-source",
        action="store_true",
        help="accept a source with no files (it removes every ingested document)",
    )
    p.add_argument(
        "--allow-replace-source",
        action="store_true",
        help="accept a source holding none of the ingested documents (it removes all of them)",
    )

    from ..core.config import SEARCH_MODES

    p = add(commands, "sync", cmd_sync, "bring the search index in step with the chunk table")
    p.add_argument("--full", action="store_true", help="re-embed every chunk, even unchanged ones")
    p = add(commands, "search", cmd_search, "search the indexed documents")
    p.add_argument("query", nargs="?", help="what to look for")
    p.add_argument("--batch", metavar="QUERIES.jsonl", help='lines {"id", "query"}; prints lines {"id", "hits"}')
    p.add_argument("--top-k", type=positive_int, help="number of hits (default: rag.top_k)")
    p.add_argument("--mode", choices=SEARCH_MODES, help="default: rag.search_mode")
    p.add_argument("--path-prefix", help="only documents whose path starts with this")
    p = add(commands, "recall", cmd_recall, "find relevant turns from earlier conversations")
    p.add_argument("query", nargs="?", help="what to look for")
    p.add_argument("--user", help="whose conversations (default: config user / OS user)")
    p.add_argument(
        "--batch",
        metavar="QUERIES.jsonl",
        help='lines {"id", "user", "query"}; prints lines {"id", "user", "hits"}',
    )
    p.add_argument("--top-k", type=positive_int, help="number of turns (default: memory.recall_top_k)")
    p.add_argument("--mode", choices=SEARCH_MODES, help="default: rag.search_mode")
    p.add_argument("--exclude-session", help="leave out this session's turns")

    from .chat import add_chat_arguments

    p = add(commands, "chat", cmd_chat, "chat with the assistant: a REPL, or one question with --message")
    add_chat_arguments(p)

    p = add(
        commands,
        "eval",
        cmd_eval,
        "answer every question of a dataset with the assistant and score it with mlflow.genai.evaluate",
    )
    p.add_argument(
        "dataset",
        metavar="DATASET",
        help='JSONL, one line per question: {"question", "expected_sources": [paths], "expected_facts": [...]}',
    )
    p.add_argument("--judge-model", help="model URI for MLflow's LLM judges (default: evaluation.judge_model)")
    p.add_argument("--workers", type=positive_int, default=1, help="questions answered at once (default: 1)")
    p.add_argument("--keep-sessions", action="store_true", help="keep the questions' sessions (default: delete)")
    p.add_argument("--run-name", help="MLflow run name (default: assistant eval <dataset file>)")

    p = add(
        commands,
        "serve",
        cmd_serve,
        "serve the chat page and its JSON API (as python app.py does)",
        json_flag=False,
    )
    p.add_argument("--host", help="interface to listen on (default: web.host; 0.0.0.0 on Databricks Apps)")
    p.add_argument("--port", type=port_number, help="port (default: $DATABRICKS_APP_PORT, else web.port)")
    return parser


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--config",
        default=default,
        help="config file (default: $CONTEXT_ASSISTANT_CONFIG, else the config.yaml of this folder or the "
        "nearest parent folder that has one or a .context-assistant/ data folder)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if default is None else default,
        help="show tracebacks and debug logs",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(message)s")
    install_log_redaction()
    interrupts_reach_the_main_thread()  # before any helper thread starts: Ctrl-C must cut the main thread's wait
    if not (args.command == "chat" and getattr(args, "message", None) is None):  # the REPL handles Ctrl-C itself
        guard_lost_interrupts(INTERRUPTED.get(args.command, "Interrupted."))
    services: Services | None = None
    interrupted = False
    try:
        check_arguments(args)  # before anything is opened or written
        services = Services(
            load_config(args.config),
            notice=_notice,
            warm_embeddings=args.command in WARM_EMBEDDING_COMMANDS,
            serving=args.command == "serve",  # the web app, as `python app.py` serves it
        )
        code: int = args.handler(args, services)
        interrupted = code == EXIT_INTERRUPTED  # e.g. a one-shot chat answer stopped with Ctrl-C
        return code
    except ContextAssistantError as exc:
        if args.debug:
            traceback.print_exc()  # then the same line and exit code as without --debug
        print(f"{exc.label}: {exc}{next_step(exc)}", file=sys.stderr)
        if getattr(args, "json", False):  # a script asked for JSON: it gets one document on stdout, always
            print_json(error_json(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        interrupted = True
        return report_interrupted(INTERRUPTED.get(args.command, "Interrupted."))
    finally:
        if services is not None:
            services.close()
        if interrupted:
            end_process(EXIT_INTERRUPTED)


def check_arguments(args: argparse.Namespace) -> None:
    """Command-line text is checked once, like every other input (:mod:`context_assistant.core.text`): an
    argument with a NUL or an unpaired surrogate (what Python makes of bytes that are not UTF-8 in argv) is
    one clear line naming the argument, never a database error halfway through a command."""
    for name, value in vars(args).items():
        if isinstance(value, (str, list)) and name not in LOCAL_PATH_ARGUMENTS:
            check_text(_argument_name(name), value)
    message = getattr(args, "message", None)
    if args.command == "chat" and isinstance(message, str) and not message.strip():
        raise UsageError("chat: --message is empty; give the question as TEXT, or '-' to read it from stdin")
    session = getattr(args, "session", None)
    if args.command == "chat" and isinstance(session, str) and not session.strip():  # not "start a new one"
        raise UsageError(
            "chat: --session is empty; give a session id (or a unique prefix: `context-assistant sessions list`), "
            "or leave --session out to start a new conversation"
        )


def _argument_name(dest: str) -> str:
    """How the user wrote the argument: ``--top-k`` for an option, ``query`` for a positional one."""
    return dest if dest in POSITIONAL_ARGUMENTS else "--" + dest.replace("_", "-")


# Paths of local files the command only opens (never stores): a file name that is not UTF-8 is still a file.
LOCAL_PATH_ARGUMENTS = frozenset({"config", "file", "output", "root", "batch", "dataset"})

# The positional arguments' names (``dest``s) across the commands; every other argument is an option.
POSITIONAL_ARGUMENTS = frozenset({"query", "session_id", "file", "dataset", "command", "action"})


def error_json(exc: ContextAssistantError) -> dict[str, Any]:
    """The ``--json`` error document: ``{"error", "kind", "retryable"}`` plus what the error adds (a failed
    turn's ``session_id`` and ``user_message_id``)."""
    return {"error": str(exc), "kind": exc.kind, "retryable": exc.retryable, **exc.to_json()}


def _notice(message: str) -> None:
    """What a command is doing that takes a moment (loading a model): one line on stderr, never stdout."""
    print(message, file=sys.stderr, flush=True)


def run(argv: Sequence[str] | None = None) -> None:
    """The ``context-assistant`` console script: :func:`main`, then a fast exit once heavy libraries (torch)
    were imported: interpreter teardown after torch takes seconds and does nothing for us (threads are
    joined, atexit handlers run and output is flushed first; see :func:`fast_exit`)."""
    try:
        code = main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`... | head`): what it wanted was printed. Quietly, as `head` users expect;
        # stdout goes to /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    if any(name in sys.modules for name in HEAVY_MODULES):
        fast_exit(code)
    sys.exit(code)


# Short commands that embed a question or two: they use the shared warm embedding service.
WARM_EMBEDDING_COMMANDS = ("search", "recall", "chat")

# Libraries whose interpreter teardown is slow; a command that imported one leaves by fast_exit.
HEAVY_MODULES = ("torch", "sentence_transformers", "pyspark", "mlflow")


if __name__ == "__main__":  # pragma: no cover
    run()
