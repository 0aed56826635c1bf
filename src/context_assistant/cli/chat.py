"""``context-assistant chat`` (and ``python assistant.py``): talk to the assistant in a terminal.

Two modes:

* **REPL** (the default): one conversation at a time, with slash commands (``/help`` lists them) and the
  seed's bare words ``refresh``, ``exit`` and ``quit``. Each answer is followed by its numbered sources.
* **One-shot** (``--message TEXT``, ``-`` reads stdin): one turn, then exit. ``--json`` prints the turn as one
  JSON document on stdout (:meth:`TurnResult.to_json`: ``session_id``, ``reply``, ``sources``, ``trace_id``,
  ``user_message_id``, ``message_id``, ``model``, ``usage``, ``warnings``). A failed turn exits with 1, prints
  one ``error: ...`` line on stderr and, with ``--json``, ``{"error", "kind", "retryable", "session_id",
  "user_message_id"}`` on stdout, so a script always gets one JSON document on stdout; ``--retry
  USER_MESSAGE_ID`` sends that failed message again.

**Streaming.** An answer is printed as the model writes it when stdout is a terminal (someone is watching) or
``model.streaming`` is true; otherwise (output piped to a file or a program) it is printed whole. ``--no-stream``
always waits for the whole answer and calls the model without streaming (for servers that cannot stream);
``--json`` never streams. Ctrl-C while an answer is arriving stops that answer, not the chat: the question
stays stored, marked interrupted, and ``/retry`` asks it again.

**/refresh** (or the seed's bare ``refresh``) does what ``context-assistant ingest`` does, through the same
:func:`context_assistant.refresh.refresh_documents`: new, changed and deleted documents in ``rag.source`` are
parsed and chunked into the chunk table, then the index is synced; with ``rag.refresh_job_id`` (a Databricks
App, which has no Spark) it runs the bundle's ingestion job instead. It prints what changed.

**Errors** never end the REPL: a failed turn, a failed refresh or a database hiccup prints one line and the
prompt comes back. A failed turn's message is kept (marked failed, left out of later prompts) and ``/retry``
sends it again without storing it twice.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from ..assistant.prompt import source_json
from ..assistant.turn import TurnFailed, TurnResult
from ..core.console import TerminalProgress, print_json
from ..core.errors import EXIT_OK, EXIT_USAGE, ContextAssistantError, InvalidInput, UsageError
from ..core.interrupts import report_interrupted
from ..llm.factory import resolve_provider
from ..services import Services
from ..storage.memory import AmbiguousSession, Message, Session, SessionNotFound, title_from
from .chat_turns import (
    TurnPrinter,
    error_text,
    find_session,
    is_terminal,
    next_step,
    should_stream,
    source_line,
)
from .terminal import line_editing, warm_up

log = logging.getLogger(__name__)

PROMPT = "you> "
SESSION_LIST_LIMIT = 20
SHORT_ID = 8  # how much of a session id /sessions shows; /resume takes any unambiguous prefix
HISTORY_FILE = "chat_history"  # readline history, in the data directory

# The seed's CLI understood these bare words; they keep working.
BARE_WORDS = {"refresh": "refresh", "exit": "exit", "quit": "exit"}

HELP = (
    ("/new", "start a new conversation"),
    ("/sessions", "list your recent conversations (* = this one)"),
    ("/resume ID", "continue an earlier conversation (a unique prefix of its id is enough)"),
    ("/history", "show this conversation so far"),
    ("/sources", "show the full text of the last answer's sources"),
    ("/refresh", "pick up new, changed and deleted documents: ingest, then index (also: refresh)"),
    ("/retry", "send the last failed (or interrupted) message again"),
    ("/help", "this list"),
    ("/exit", "leave (also: exit, quit, Ctrl-D)"),
)
COMMAND_NAMES = tuple(usage.split()[0] for usage, _ in HELP)


@dataclass(frozen=True)
class Command:
    name: str  # without the slash, lower case
    argument: str


def parse_command(line: str) -> Command | None:
    """The command a line of input is, or None when it is a message for the assistant."""
    text = line.strip()
    if text.lower() in BARE_WORDS:
        return Command(BARE_WORDS[text.lower()], "")
    if not text.startswith("/") or len(text) == 1 or not text[1].isalpha():
        return None
    name, _, argument = text[1:].partition(" ")
    return Command(name.lower(), argument.strip())


def _short(session_id: str) -> str:
    return session_id if len(session_id) <= SHORT_ID + 4 else session_id[:SHORT_ID]


# ---------------------------------------------------------------------------------------------------------
# The REPL


class ChatRepl:
    """The interactive chat. ``read_line`` is injected (``input`` by default) so the loop can be driven."""

    def __init__(
        self,
        services: Services,
        user: str,
        *,
        out: TextIO,
        stream: bool,
        read_line: Callable[[str], str] = input,
        interactive: bool = True,
        debug: bool = False,
    ) -> None:
        self.services = services
        self.user = user
        self.out = out
        self.read_line = read_line
        self.interactive = interactive
        self.debug = debug
        self.printer = TurnPrinter(services, user, out, stream=stream)
        self.session: Session | None = None  # None: the next message starts a new session
        self.last_result: TurnResult | None = None
        self.retry_id: int | None = None  # the failed message /retry sends again
        self._commands: dict[str, Callable[[str], bool]] = {
            "new": self.cmd_new,
            "sessions": self.cmd_sessions,
            "resume": self.cmd_resume,
            "history": self.cmd_history,
            "sources": self.cmd_sources,
            "refresh": self.cmd_refresh,
            "retry": self.cmd_retry,
            "help": self.cmd_help,
            "exit": self.cmd_exit,
            "quit": self.cmd_exit,
        }

    # -- output

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, text: str) -> None:
        self.say(f"error: {text}")

    # -- the loop

    def run(self) -> int:
        self.banner()
        while True:
            try:
                line = self.read_line(PROMPT if self.interactive else "")
            except EOFError:
                if self.interactive:
                    self.say()
                return EXIT_OK
            except KeyboardInterrupt:
                self.say("\n(Ctrl-D or /exit leaves)")
                continue
            if not self.handle(line):
                return EXIT_OK

    def handle(self, line: str) -> bool:
        """Act on one line of input; False ends the chat. Nothing that goes wrong here ends it otherwise."""
        if not line.strip():
            return True
        command = parse_command(line)
        try:
            if command is None:
                self.ask(line.strip())
                return True
            handler = self._commands.get(command.name)
            if handler is None:
                self.error(f"unknown command /{command.name}; /help lists the commands")
                return True
            return handler(command.argument)
        except KeyboardInterrupt:
            self.say("\n(interrupted)")
        except Exception as exc:
            if self.debug:
                traceback.print_exc()
            self.error(error_text(exc))
        return True

    # -- banner

    def banner(self) -> None:
        config = self.services.config
        choice = resolve_provider(config.model, self.services.env)
        model = self.services.chat_model.name
        self.say(f"context-assistant chat — user {self.user}, {self._session_label()}")
        self.say(f"Model: {model} ({choice.reason})")
        self.say(f"Documents: {self._documents_status()}")
        if self.retry_id is not None:
            self.say("The last message of this conversation has no answer; /retry sends it again.")
        self.say("Type a question, or /help for commands.")

    def _session_label(self) -> str:
        if self.session is None:
            return "new session"
        title = f' "{self.session.title}"' if self.session.title else ""
        return f"session {self.session.id}{title} ({self.session.message_count} messages)"

    def _documents_status(self) -> str:
        config = self.services.config
        if not config.rag.enabled:
            return "off (rag.enabled is false)"
        try:
            status = self.services.chunk_index.status()
        except Exception as exc:
            return f"status unknown ({error_text(exc)})"
        if config.rag.backend == "vector_search":
            state = status.get("state") or "unknown"
            rows = status.get("indexed_row_count")
            return f"Vector Search index {status.get('index')}: {state}" + (
                f", {rows} chunks indexed" if rows is not None else ""
            )
        chunks = int(status.get("chunks") or 0)
        if not chunks:
            return (
                "none indexed yet — ingest your documents (context-assistant-ingest), then /refresh; "
                "answers use conversation memory only"
            )
        return f"{chunks} chunks indexed (pgvector, {status.get('model')})"

    # -- asking

    def ask(self, message: str, retry_of: int | None = None) -> None:
        created = None
        if self.session is None and retry_of is None:
            # Made here rather than by the turn so that the REPL knows the session even if Ctrl-C lands
            # before the turn reports it.
            created = self.session = self.services.store.create_session(self.user, title=title_from(message))
        session_id = self.session.id if self.session is not None else None
        try:
            outcome = self.printer.run(message, session_id, retry_of=retry_of)
        except InvalidInput:
            if created is not None:  # the message was refused (too long): leave no empty session behind
                with contextlib.suppress(Exception):
                    self.services.store.delete_session(self.user, created.id)
                self.session = None
            raise
        if outcome.result is not None:
            self.last_result = outcome.result
            self.retry_id = None
            self.session = self.services.store.get_session(self.user, outcome.result.session_id)
        elif outcome.failure is not None:
            failure = outcome.failure
            self.retry_id = failure.user_message_id
            advice = (
                "type /retry to try again"
                if failure.retryable
                else f"retrying will not help until that is fixed ({failure.kind}); then type /retry"
            )
            self.error(f"{failure} — your message is kept; {advice}")
        elif outcome.interrupted:
            self.retry_id = outcome.user_message_id
            self.say("[stopped — the answer was not saved; /retry asks again]")

    # -- commands (each returns False only to leave)

    def cmd_new(self, _: str) -> bool:
        self.session = None
        self.last_result = None
        self.retry_id = None
        self.say("New conversation: your next message starts it.")
        return True

    def cmd_sessions(self, _: str) -> bool:
        sessions = self.services.store.list_sessions(self.user, limit=SESSION_LIST_LIMIT)
        if not sessions:
            self.say(f"No conversations yet for {self.user}.")
            return True
        current = self.session.id if self.session else None
        for s in sessions:
            mark = "*" if s.id == current else " "
            title = s.title or "(untitled)"
            self.say(
                f"{mark} {_short(s.id):<12} {s.updated_at:%Y-%m-%d %H:%M}  {s.message_count:>4} msgs  {title}"
            )
        self.say("/resume ID continues one (a unique prefix of the id is enough).")
        return True

    def cmd_resume(self, argument: str) -> bool:
        if not argument:
            self.error("/resume needs a session id (see /sessions)")
            return True
        try:
            session = find_session(self.services, self.user, argument)
        except SessionNotFound:
            self.error(f"no session of yours matches {argument!r} (see /sessions)")
            return True
        except AmbiguousSession as exc:
            self.error(str(exc))
            return True
        self.resume(session)
        self.say(f"Resumed {self._session_label()}. /history shows it.")
        if self.retry_id is not None:
            self.say("Its last message has no answer; /retry sends it again.")
        return True

    def resume(self, session: Session) -> None:
        self.session = session
        self.last_result = None
        last = self._last_message()
        self.retry_id = last.id if last is not None and last.role == "user" and last.failed else None

    def _last_message(self) -> Message | None:
        if self.session is None:
            return None
        messages = self.services.store.messages(self.user, self.session.id)
        return messages[-1] if messages else None

    def cmd_history(self, _: str) -> bool:
        if self.session is None:
            self.say("Nothing yet: this conversation starts with your next message.")
            return True
        messages = self.services.store.messages(self.user, self.session.id)
        if not messages:
            self.say("Nothing yet in this conversation.")
            return True
        for m in messages:
            who = "you" if m.role == "user" else m.role
            flag = f"  [failed: {m.metadata.get('error_kind') or 'error'}]" if m.failed else ""
            self.say(f"[{m.timestamp:%Y-%m-%d %H:%M:%S}] {who}{flag}:")
            self.say(m.content.rstrip())
            self.say()
        return True

    def cmd_sources(self, _: str) -> bool:
        if self.last_result is not None:
            if not self.last_result.sources:
                self.say("The last answer used no documents.")
                return True
            for source in self.last_result.sources:
                self.say(source_line(source_json(source, with_text=False)))
                for text_line in source.text.strip().splitlines():
                    self.say(f"    {text_line}".rstrip())
                self.say()
            return True
        stored = self._stored_sources()
        if stored is None:
            self.say("No answer yet in this conversation.")
        elif not stored:
            self.say("The last answer used no documents.")
        else:
            for stored_source in stored:
                self.say(source_line(stored_source))
            self.say("(The text of these passages is not stored with the answer; ask again to see it.)")
        return True

    def _stored_sources(self) -> list[dict[str, Any]] | None:
        """The sources stored with the last answer of a resumed conversation (locations only)."""
        if self.session is None:
            return None
        replies = [m for m in self.services.store.messages(self.user, self.session.id) if m.role == "assistant"]
        if not replies:
            return None
        return list(replies[-1].metadata.get("sources") or [])

    def cmd_refresh(self, _: str) -> bool:
        """What the seed's ``refresh`` did: pick up new, changed and deleted documents (ingest, then sync)."""
        from ..refresh import refresh_documents

        if not self.services.config.rag.enabled:
            self.say("Documents are off (rag.enabled is false): nothing to refresh.")
            return True
        self.say(f"Refreshing documents from {self.services.config.rag.source} …")
        progress = TerminalProgress(stream=self.out)
        try:
            result = refresh_documents(self.services, progress=progress)
        except KeyboardInterrupt:  # Spark's work was interrupted too; committed steps stay committed
            progress.done()
            self.say("Refresh interrupted; the next /refresh picks up where this one stopped.")
            return True
        except Exception as exc:
            progress.done()
            if self.debug:
                traceback.print_exc()
            self.error(f"refresh failed: {error_text(exc)} (the chat goes on with the documents it had)")
            return True
        progress.done()
        self.say(result.summary())
        return True

    def cmd_retry(self, _: str) -> bool:
        if self.retry_id is None:
            self.say("Nothing to retry: the last message was answered.")
            return True
        self.ask("", retry_of=self.retry_id)
        return True

    def cmd_help(self, _: str) -> bool:
        width = max(len(usage) for usage, _ in HELP)
        for usage, text in HELP:
            self.say(f"  {usage:<{width}}  {text}")
        self.say("Anything else is a message to the assistant. Ctrl-C stops an answer; Ctrl-D leaves.")
        return True

    def cmd_exit(self, _: str) -> bool:
        return False


# ---------------------------------------------------------------------------------------------------------
# Entry points


def run_chat(args: argparse.Namespace, services: Services, out: TextIO | None = None) -> int:
    """``context-assistant chat``: the REPL, or one turn with ``--message`` / ``--retry``."""
    out = out or sys.stdout
    user = getattr(args, "user", None) or services.config.default_user
    one_shot = args.message is not None or args.retry is not None
    if args.message is not None and args.retry is not None:
        return _usage("--message and --retry cannot be combined")
    if args.json and not one_shot:
        return _usage("--json needs --message TEXT (or --retry ID): the interactive chat is for people")
    if one_shot:
        try:
            session = find_session(services, user, args.session) if args.session else None
        except ContextAssistantError as exc:  # an unknown or ambiguous --session: the same JSON as a failed turn
            return _one_shot_failure(args, _failure_json(exc, args.session), str(exc), exc, out)
        return run_one_shot(args, services, user, session, out)
    session = find_session(services, user, args.session) if args.session else None

    interactive = is_terminal(sys.stdin)
    repl = ChatRepl(
        services,
        user,
        out=out,
        stream=should_stream(services, args, out),
        interactive=interactive,
        debug=bool(getattr(args, "debug", False)),
    )
    if session is not None:
        repl.resume(session)
    warming = warm_up(services)
    try:
        if interactive:
            with line_editing(services.config.data_path / HISTORY_FILE, COMMAND_NAMES):
                return repl.run()
        return repl.run()
    finally:
        warming.join(timeout=30)  # never leave a half-imported model behind at interpreter exit


def run_one_shot(
    args: argparse.Namespace, services: Services, user: str, session: Session | None, out: TextIO
) -> int:
    message = args.message or ""
    if message == "-":
        message = sys.stdin.read()
        if not message.strip() and args.retry is None:  # the same usage error as an empty --message TEXT
            raise UsageError(
                "chat: the message read from stdin is empty; pipe the question in, or give it as TEXT"
            )
    stream = should_stream(services, args, out)
    printer = TurnPrinter(services, user, out, stream=stream)
    session_id = session.id if session else None
    try:
        if args.json:
            result = services.assistant.turn(user, message, session_id, retry_of=args.retry)
            print_json(result.to_json(), out)
            return EXIT_OK
        outcome = printer.run(message, session_id, retry_of=args.retry)
    except TurnFailed as exc:
        return _one_shot_failure(args, exc.to_json(), str(exc), exc, out)
    except ContextAssistantError as exc:  # an empty/oversized message, an unknown message or session, ...
        return _one_shot_failure(args, _failure_json(exc, session_id), str(exc), exc, out)
    if outcome.failure is not None:
        failure = outcome.failure
        return _one_shot_failure(args, failure.to_json(), str(failure), failure, out)
    if outcome.interrupted:
        again = f"; --retry {outcome.user_message_id} asks again" if outcome.user_message_id is not None else ""
        return report_interrupted(f"Interrupted: the answer was not saved{again}.")
    assert outcome.result is not None
    print(f"(session {outcome.result.session_id}; continue it with --session)", file=sys.stderr)
    return EXIT_OK


def _failure_json(error: ContextAssistantError, session_id: str | None) -> dict[str, Any]:
    """A failure before any message was stored, in the shape of a failed turn's JSON (README: Chat)."""
    return {
        "error": str(error),
        "kind": error.kind,
        "retryable": error.retryable,
        "session_id": session_id,
        "user_message_id": None,
    }


def _one_shot_failure(
    args: argparse.Namespace, data: dict[str, Any], text: str, error: ContextAssistantError, out: TextIO
) -> int:
    hint = next_step(error)
    if isinstance(error, TurnFailed):
        hint = f" (message {error.user_message_id} kept; send it again with --retry {error.user_message_id})"
    print(f"{error.label}: {text}{hint}", file=sys.stderr)
    if args.json:
        print_json(data, out)
    return error.exit_code


def _usage(text: str) -> int:
    print(f"usage error: chat: {text}", file=sys.stderr)
    return EXIT_USAGE


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``chat`` options (``--json`` is added by the CLI's common helper)."""
    parser.add_argument("--session", metavar="ID", help="continue this session (a unique prefix of its id works)")
    parser.add_argument("--user", help="whose conversations (default: config user / OS user)")
    parser.add_argument("--message", "-m", metavar="TEXT", help="ask one question and exit ('-' reads stdin)")
    parser.add_argument("--retry", type=int, metavar="MESSAGE_ID", help="send a failed message again and exit")
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="wait for whole answers (default: stream on a terminal or when model.streaming is true)",
    )


__all__: Sequence[str] = [
    "AmbiguousSession",
    "ChatRepl",
    "Command",
    "TurnPrinter",
    "add_chat_arguments",
    "find_session",
    "parse_command",
    "run_chat",
    "should_stream",
    "source_line",
]
