"""The ``context-assistant`` command line.

Exit codes (:mod:`context_assistant.core.errors`): 0 success; 1 the command ran but failed (not found,
rejected input, unreachable service); 2 bad usage or configuration; 130 interrupted (Ctrl-C: one line, see
:mod:`context_assistant.core.interrupts`). Errors are one clear line on stderr, never a traceback (``--debug``
shows it): :func:`main` catches the error hierarchy's root once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..core.config import load_config
from ..core.console import TerminalProgress, port_number, print_json
from ..core.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Conflict,
    ContextAssistantError,
    InvalidInput,
    NotFound,
    UsageError,
)
from ..core.interrupts import end_process, report_interrupted
from ..retrieval.sync import SyncResult
from ..services import Services, setup_database
from ..storage.db_setup import summary_lines

# What Ctrl-C leaves behind, per command (one line; the default is "Interrupted.").
INTERRUPTED = {
    "ingest": "Interrupted; the next run picks up where this one stopped.",
    "sync": "Interrupted; the next run picks up where this one stopped.",
}


def _user(args: argparse.Namespace, services: Services) -> str:
    return getattr(args, "user", None) or services.config.default_user


# ---------------------------------------------------------------------------------------------------------
# sessions


def cmd_sessions_list(args: argparse.Namespace, services: Services) -> int:
    user = _user(args, services)
    sessions = services.store.list_sessions(user, limit=args.limit)
    if args.json:
        print_json({"user": user, "sessions": [s.to_json() for s in sessions]})
        return EXIT_OK
    if not sessions:
        print(f"No sessions for {user}.")
        return EXIT_OK
    print(f"{'SESSION':<34} {'UPDATED':<20} {'MSGS':>5}  TITLE")
    for s in sessions:
        print(f"{s.id:<34} {s.updated_at:%Y-%m-%d %H:%M:%S}  {s.message_count:>5}  {s.title}")
    return EXIT_OK


def cmd_sessions_show(args: argparse.Namespace, services: Services) -> int:
    user = _user(args, services)
    session = services.store.get_session(user, args.session_id)
    messages = services.store.messages(user, args.session_id)
    if args.json:
        print_json({"session": session.to_json(), "messages": [m.to_json() | {"id": m.id} for m in messages]})
        return EXIT_OK
    print(f"Session {session.id} — {session.title or '(untitled)'} — {len(messages)} messages")
    for m in messages:
        flag = "  [failed]" if m.failed else ""
        print(f"\n[{m.timestamp:%Y-%m-%d %H:%M:%S}] {m.role}{flag}:\n{m.content}")
    return EXIT_OK


def cmd_sessions_delete(args: argparse.Namespace, services: Services) -> int:
    user = _user(args, services)
    services.store.delete_session(user, args.session_id)
    if args.json:
        print_json({"deleted": args.session_id})
    else:
        print(f"Deleted session {args.session_id}.")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# memory


def cmd_memory_import(args: argparse.Namespace, services: Services) -> int:
    try:
        with open(args.file, encoding="utf-8") as stream:
            result = services.store.import_jsonl(stream)
    except FileNotFoundError:
        raise NotFound(f"no such file: {args.file}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{args.file} is not UTF-8 text ({exc.reason} at byte {exc.start}); nothing imported"
        ) from None
    if args.json:
        print_json(result.to_json())
    else:
        print(
            f"Imported {result.messages} messages ({result.skipped} already present), "
            f"{result.sessions_created} new sessions."
        )
    return EXIT_OK


def cmd_memory_export(args: argparse.Namespace, services: Services) -> int:
    if args.output and args.output != "-":
        with open(args.output, "w", encoding="utf-8") as out:
            count = services.store.export_jsonl(out, user=args.user)
        print(f"Exported {count} messages to {args.output}.", file=sys.stderr)
    else:
        services.store.export_jsonl(sys.stdout, user=args.user)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# db


def cmd_db_status(args: argparse.Namespace, services: Services) -> int:
    status = services.db.status()
    if args.json:
        print_json(status)
        return EXIT_OK
    print(f"Database:  {status['target']}")
    print(f"Server:    PostgreSQL {status['server_version']}")
    vector = status["pgvector_version"] or (
        f"not installed (available: {status['pgvector_available']})"
        if status["pgvector_available"]
        else "not available"
    )
    print(f"pgvector:  {vector}")
    print(
        f"Schema:    {status['schema']}, version {status['schema_version']} "
        f"(latest {status['latest_schema_version']}), owner {status['schema_owner'] or '-'}"
    )
    print(f"Role:      {status['role']}" + (f"\nProblem:   {status['problem']}" if status["problem"] else ""))
    return EXIT_OK


def cmd_db_setup(args: argparse.Namespace, services: Services) -> int:
    """The owner's setup step (what the jobs' setup_database task runs); see storage/db_setup.py."""
    report = setup_database(
        services, args.grant_to or [], args.grant_to_app or [], prepare_recall=not args.skip_recall
    )
    if args.json:
        print_json(report.to_json())
    else:
        print("\n".join(summary_lines(report, services.db.target.description)))
    return EXIT_OK


def cmd_db_stop(args: argparse.Namespace, services: Services) -> int:
    from ..storage.targets import EmbeddedPostgres

    if not services.config.database.embedded:
        raise Conflict("db stop only stops the embedded Postgres; this config points at an external server")
    stopped = EmbeddedPostgres(services.config.data_path).stop()
    print("Stopped the embedded Postgres." if stopped else "The embedded Postgres was not running.")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# bundle


def cmd_bundle_validate(args: argparse.Namespace, services: Services) -> int:
    """The offline bundle validator is a development tool (``tools/``), not part of the runtime wheel."""
    try:
        from context_assistant_tools.bundle import BundleLoadError, format_report, validate_bundle
    except ImportError:
        raise UsageError(
            "bundle validate is a development tool that is not installed here: run `pip install -e ./tools` "
            "in a checkout of the project (requirements-dev.txt installs it)"
        ) from None

    variables = {k[len("BUNDLE_VAR_") :]: v for k, v in services.env.items() if k.startswith("BUNDLE_VAR_")}
    for item in args.var or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--var {item!r}: expected name=value")
        variables[name] = value
    try:
        reports = [validate_bundle(args.root, target, variables=variables) for target in (args.target or [None])]
    except BundleLoadError as exc:
        raise InvalidInput(str(exc)) from None
    ok = all(report.ok for report in reports)
    if args.json:
        print_json({"ok": ok, "targets": [report.to_json() for report in reports]})
    else:
        print("\n\n".join(format_report(report) for report in reports))
    return EXIT_OK if ok else EXIT_FAILED


# ---------------------------------------------------------------------------------------------------------
# retrieval: sync, search, recall (issue 4)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _read_batch(path: str, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every line of a JSONL batch file, validated before anything runs (a bad line rejects the file)."""
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.readlines()
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    items: list[dict[str, Any]] = []
    errors: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(item, dict):
            errors.append(f"line {number}: expected a JSON object")
            continue
        problem = next((f for f in fields if f not in item), None)
        if problem:
            errors.append(f"line {number}: missing {problem!r}")
            continue
        bad = [f for f in (*fields, *optional) if f != "id" and f in item and not _non_empty(item[f])]
        if bad:
            errors.append(f"line {number}: {bad[0]!r} must be a non-empty string")
            continue
        if not isinstance(item["id"], (str, int)) or isinstance(item["id"], bool):
            errors.append(f"line {number}: 'id' must be a string or an integer")
            continue
        items.append(item)
    if errors:
        shown = errors[:20]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise InvalidInput(f"{path}: nothing run, {len(errors)} bad line(s)\n" + "\n".join(shown) + more)
    return items


def _non_empty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _one_of_query_or_batch(args: argparse.Namespace, command: str) -> None:
    if bool(args.query) == bool(args.batch):
        raise UsageError(f"{command}: give either a QUERY or --batch FILE")


def cmd_sync(args: argparse.Namespace, services: Services) -> int:
    from ..refresh import refresh_index

    progress = None if args.json else TerminalProgress(live=False)
    result = refresh_index(services, full=args.full, progress=progress)
    if args.json:
        print_json(result.to_json())
    elif isinstance(result, SyncResult):
        print(result.summary())
    else:
        print(json.dumps(result.to_json(), indent=2, default=str))
    return EXIT_OK  # the run completed; documents that failed to embed are listed, their previous chunks kept


def _hit_lines(rank: int, hit: Any) -> str:
    where = hit.path + (f" › {hit.heading}" if hit.heading else "") + (f" (page {hit.page})" if hit.page else "")
    text = " ".join(hit.text.split())
    excerpt = text if len(text) <= 240 else text[:239] + "…"
    return f"{rank}. {where}  [score {hit.score:.4f}]\n   {excerpt}"


def cmd_search(args: argparse.Namespace, services: Services) -> int:
    _one_of_query_or_batch(args, "search")
    if not services.config.rag.enabled:
        raise Conflict("document search is off (rag.enabled: false in the config)")
    if args.batch:
        items = _read_batch(args.batch, ("id", "query"))
        retriever = services.retriever
        for item in items:
            hits = retriever.search(item["query"], top_k=args.top_k, mode=args.mode, path_prefix=args.path_prefix)
            print_json({"id": item["id"], "hits": [h.to_json() for h in hits]})
        return EXIT_OK
    hits = services.retriever.search(args.query, top_k=args.top_k, mode=args.mode, path_prefix=args.path_prefix)
    if args.json:
        mode = args.mode or services.config.rag.search_mode
        print_json({"query": args.query, "mode": mode, "hits": [h.to_json() for h in hits]})
        return EXIT_OK
    if not hits:
        print("No matching chunks.")
    for rank, hit in enumerate(hits, start=1):
        print(_hit_lines(rank, hit))
    return EXIT_OK


def cmd_recall(args: argparse.Namespace, services: Services) -> int:
    _one_of_query_or_batch(args, "recall")
    if not services.config.memory.recall:
        raise Conflict("memory recall is off (memory.recall: false in the config)")
    recall = services.recall
    if args.batch:
        items = _read_batch(args.batch, ("id", "query"), optional=("user",))
        for item in items:
            user = item.get("user") or _user(args, services)
            turns = recall.recall(user, item["query"], top_k=args.top_k, mode=args.mode)
            print_json({"id": item["id"], "user": user, "hits": [t.to_json() for t in turns]})
        return EXIT_OK
    user = _user(args, services)
    turns = recall.recall(user, args.query, top_k=args.top_k, exclude_session=args.exclude_session, mode=args.mode)
    if args.json:
        print_json({"user": user, "query": args.query, "hits": [t.to_json() for t in turns]})
        return EXIT_OK
    if not turns:
        print(f"Nothing relevant in {user}'s earlier conversations.")
    for rank, turn in enumerate(turns, start=1):
        text = " ".join(turn.content.split())
        excerpt = text if len(text) <= 240 else text[:239] + "…"
        print(
            f"{rank}. [{turn.timestamp:%Y-%m-%d %H:%M}] session {turn.session_id} {turn.role}  "
            f"[score {turn.score:.4f}]\n   {excerpt}"
        )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# ingest


def cmd_ingest(args: argparse.Namespace, services: Services) -> int:
    from ..refresh import refresh_documents

    progress = TerminalProgress(quiet=args.json)
    try:
        result = refresh_documents(
            services,
            source=args.source or None,
            full=args.full,
            progress=progress,
            allow_empty_source=args.allow_empty_source,
            allow_replace_source=args.allow_replace_source,
        )
    finally:
        progress.done()
    if args.json:
        print_json(result.to_json())
    else:
        print(result.summary())
    return EXIT_OK  # the run completed; documents that failed are listed, with their previous chunks kept


# ---------------------------------------------------------------------------------------------------------
# chat (issue 5)


def cmd_chat(args: argparse.Namespace, services: Services) -> int:
    from .chat import run_chat

    return run_chat(args, services)


# ---------------------------------------------------------------------------------------------------------
# answer evaluation (issue 18)


def cmd_eval(args: argparse.Namespace, services: Services) -> int:
    from ..assistant.evaluation import evaluate_assistant, format_report, tracing_on

    traced = services
    if not services.config.tracing.enabled:  # each answer's trace is its row: turn tracing on for this run
        traced = Services(tracing_on(services.config), env=services.env, clock=services.clock)
    try:
        report = evaluate_assistant(
            traced,
            args.dataset,
            judge_model=args.judge_model,
            workers=args.workers,
            keep_sessions=args.keep_sessions,
            run_name=args.run_name,
        )
    finally:
        if traced is not services:
            traced.close()
    if args.json:
        print_json(report.to_json())
    else:
        print(format_report(report))
    if report.failed:
        print(
            f"error: {len(report.failed)} of {len(report.rows)} questions could not be answered; their scores are "
            "missing from the run (the errors are listed with them)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# web app (issue 6)


def cmd_serve(args: argparse.Namespace, services: Services) -> int:
    from ..web.app import serve

    serve(services, args.host, args.port)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="context-assistant",
        description="An assistant that remembers conversations and answers from your documents.",
    )
    parser.add_argument("--config", help="config file (default: $CONTEXT_ASSISTANT_CONFIG or ./config.yaml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(group: Any, name: str, handler: Callable[..., int], help: str, *, json_flag: bool = True) -> Any:
        sub = group.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        if json_flag:
            sub.add_argument("--json", action="store_true", help="machine-readable output (see README)")
        return sub

    sessions = commands.add_parser("sessions", help="list, show or delete conversation sessions")
    sessions_cmds = sessions.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(sessions_cmds, "list", cmd_sessions_list, "list a user's sessions, most recent first")
    p.add_argument("--user", help="whose sessions (default: config user / OS user)")
    p.add_argument("--limit", type=int, default=100)
    p = add(sessions_cmds, "show", cmd_sessions_show, "show a session's messages in order")
    p.add_argument("session_id")
    p.add_argument("--user")
    p = add(sessions_cmds, "delete", cmd_sessions_delete, "delete a session and its messages")
    p.add_argument("session_id")
    p.add_argument("--user")

    memory = commands.add_parser("memory", help="import or export conversation memory as JSON lines")
    memory_cmds = memory.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(memory_cmds, "import", cmd_memory_import, "import messages from a JSONL file (all or nothing)")
    p.add_argument("file")
    p = add(memory_cmds, "export", cmd_memory_export, "export messages as JSONL", json_flag=False)
    p.add_argument("--user", help="only this user's messages (default: everyone's)")
    p.add_argument("--output", "-o", help="file to write (default: stdout)")

    db = commands.add_parser("db", help="database status and the embedded server")
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

    bundle = commands.add_parser("bundle", help="check the Databricks Asset Bundle offline")
    bundle_cmds = bundle.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(bundle_cmds, "validate", cmd_bundle_validate, "validate databricks.yml and resources/ offline")
    p.add_argument("--target", "-t", action="append", help="target to validate (repeatable; default: the default)")
    p.add_argument("--root", default=".", help="bundle folder (default: the current directory)")
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
        "--allow-empty-source", action="store_true", help="accept a source with no files (removes every document)"
    )
    p.add_argument(
        "--allow-replace-source",
        action="store_true",
        help="accept a source holding none of the ingested documents (removes all of them)",
    )

    from ..core.config import SEARCH_MODES

    p = add(commands, "sync", cmd_sync, "bring the search index in step with the chunk table")
    p.add_argument("--full", action="store_true", help="re-embed every chunk, even unchanged ones")
    p = add(commands, "search", cmd_search, "search the indexed documents")
    p.add_argument("query", nargs="?", help="what to look for")
    p.add_argument("--batch", metavar="QUERIES.jsonl", help='lines {"id", "query"}; prints lines {"id", "hits"}')
    p.add_argument("--top-k", type=_positive_int, help="number of hits (default: rag.top_k)")
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
    p.add_argument("--top-k", type=_positive_int, help="number of turns (default: memory.recall_top_k)")
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
    p.add_argument("--workers", type=_positive_int, default=1, help="questions answered at once (default: 1)")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(message)s")
    services: Services | None = None
    interrupted = False
    try:
        services = Services(load_config(args.config))
        code: int = args.handler(args, services)
        interrupted = code == EXIT_INTERRUPTED  # e.g. a one-shot chat answer stopped with Ctrl-C
        return code
    except ContextAssistantError as exc:
        if args.debug:
            raise
        print(f"{exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        interrupted = True
        return report_interrupted(INTERRUPTED.get(args.command, "Interrupted."))
    finally:
        if services is not None:
            services.close()
        if interrupted:
            end_process(EXIT_INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
