"""The commands of the ``context-assistant`` command line, one function each: ``cmd_<command>(args, services)``
returns the exit code and raises the error hierarchy for failures (``main`` turns them into one line)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..core.console import TerminalProgress, counted, json_lines, print_json
from ..core.errors import (
    EXIT_FAILED,
    EXIT_OK,
    Conflict,
    InvalidInput,
    NotFound,
    UsageError,
)
from ..core.files import open_private
from ..core.passages import best_excerpt, chunk_body, question_terms
from ..retrieval.base import RecalledTurn
from ..retrieval.sync import SyncResult
from ..services import Services, setup_database
from ..storage.db_setup import summary_lines

HIT_EXCERPT_CHARS = 240  # a search hit's quoted part: about two lines of a terminal


def _user(args: argparse.Namespace, services: Services) -> str:
    return getattr(args, "user", None) or services.config.default_user


def _where(services: Services) -> str:
    """Which database a command used, for messages that report nothing found: run from an unexpected folder,
    an empty answer must say where it looked (``embedded Postgres in /path/.context-assistant/postgres``)."""
    return services.db.target.description


def _no_hits(services: Services) -> str:
    """What an empty search result means: nothing matched, or nothing is indexed here at all."""
    try:
        chunks = services.chunk_index.status().get("chunks")
    except Exception:  # the status is only for the message
        chunks = None
    if chunks == 0:
        return (
            f"No documents are indexed in {_where(services)}: run `context-assistant ingest` there "
            "(or pass --config to use another project's data folder)."
        )
    return (
        "No matching chunks: none is close enough in meaning (rag.min_similarity) or shares enough of the "
        "question's words; `--mode keyword` lists every chunk sharing a word."
    )


# ---------------------------------------------------------------------------------------------------------
# sessions


def cmd_sessions_list(args: argparse.Namespace, services: Services) -> int:
    user = _user(args, services)
    sessions = services.store.list_sessions(user, limit=args.limit)
    if args.json:
        print_json({"user": user, "sessions": [s.to_json() for s in sessions]})
        return EXIT_OK
    if not sessions:
        print(f"No sessions for {user} in {_where(services)}.")
        return EXIT_OK
    width = max(34, *(len(s.id) for s in sessions))  # imported ids can be longer than the app's own (32)
    print(f"{'SESSION':<{width}} {'UPDATED':<20} {'MSGS':>5}  TITLE")
    for s in sessions:
        print(f"{s.id:<{width}} {s.updated_at:%Y-%m-%d %H:%M:%S}  {s.message_count:>5}  {s.title}")
    return EXIT_OK


def cmd_sessions_show(args: argparse.Namespace, services: Services) -> int:
    user = _user(args, services)
    session = services.store.find_session(user, args.session_id)  # an id, or a unique prefix of one
    messages = services.store.messages(user, session.id)
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
    session = services.store.find_session(user, args.session_id)  # an id, or a unique prefix of one (as `show`)
    services.store.delete_session(user, session.id)
    if args.json:
        print_json({"deleted": session.id})
    else:
        print(f"Deleted session {session.id}.")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# memory


def cmd_memory_import(args: argparse.Namespace, services: Services) -> int:
    try:
        with open(args.file, encoding="utf-8") as stream:
            result = services.store.import_jsonl(stream, max_message_chars=services.config.web.max_message_chars)
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
            f"Imported {counted(result.messages, 'message')} ({result.skipped} already present), "
            f"{counted(result.sessions_created, 'new session')}."
        )
    return EXIT_OK


def cmd_memory_export(args: argparse.Namespace, services: Services) -> int:
    if args.output and args.output != "-":
        with open_private(args.output) as out:  # every user's conversations: 0600, whatever the umask
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
    """Stop what runs in the background for this data folder: the embedded Postgres and the warm embedding
    service (which would otherwise hold its ~700 MB until it has been idle for 15 minutes)."""
    from ..retrieval.embedding_service import stop_embedding_service
    from ..storage.targets import EmbeddedPostgres

    service_stopped = stop_embedding_service(services.config.rag, services.config.data_path)
    if service_stopped:
        print("Stopped the embedding service.")
    if not services.config.database.embedded:
        if service_stopped:
            print("The database is an external server: not stopped.")
            return EXIT_OK
        raise Conflict("db stop only stops the embedded Postgres; this config points at an external server")
    stopped = EmbeddedPostgres(services.config.data_path).stop()
    print("Stopped the embedded Postgres." if stopped else "The embedded Postgres was not running.")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# bundle


def cmd_bundle_validate(args: argparse.Namespace, services: Services) -> int:
    """The offline bundle validator is a development tool (``tools/``), not part of the runtime wheel."""
    try:
        from context_assistant_tools.bundle import BundleLoadError, UnknownTarget, format_report, validate_bundle
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
        root = args.root or _bundle_root()
        reports = [validate_bundle(root, target, variables=variables) for target in (args.target or [None])]
    except UnknownTarget as exc:  # a wrong -t is bad usage, like a wrong flag (exit 2, as documented)
        raise UsageError(str(exc)) from None
    except BundleLoadError as exc:
        raise InvalidInput(str(exc)) from None
    ok = all(report.ok for report in reports)
    if args.json:
        print_json({"ok": ok, "targets": [report.to_json() for report in reports]})
    else:
        print("\n\n".join(format_report(report) for report in reports))
    return EXIT_OK if ok else EXIT_FAILED


def _bundle_root() -> str:
    """The nearest folder from the working directory up holding a databricks.yml (as the Databricks CLI
    finds its bundle), else the working directory (the validator then says none is there)."""
    here = Path.cwd()
    return str(next((folder for folder in (here, *here.parents) if (folder / "databricks.yml").is_file()), here))


# ---------------------------------------------------------------------------------------------------------
# retrieval: sync, search, recall (issue 4)


def positive_int(value: str) -> int:
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
    for number, item in json_lines(lines, errors):
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
    if args.query is not None and not args.query.strip() and not args.batch:
        raise UsageError(f"{command}: the query is empty; give the words to look for, or --batch FILE")
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


def _hit_lines(rank: int, hit: Any, query: str) -> str:
    """A hit as a person reads it: where, the score, and the part of the passage that matches the query (its
    best sentences, as the offline answers quote them; the passage's start when no sentence shares a word)."""
    where = hit.path + (f" › {hit.heading}" if hit.heading else "") + (f" (page {hit.page})" if hit.page else "")
    excerpt = best_excerpt(chunk_body(hit.text, hit.heading), question_terms(query), HIT_EXCERPT_CHARS)
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
        print(_no_hits(services))
    for rank, hit in enumerate(hits, start=1):
        print(_hit_lines(rank, hit, args.query))
    return EXIT_OK


def cmd_recall(args: argparse.Namespace, services: Services) -> int:
    _one_of_query_or_batch(args, "recall")
    if not services.config.memory.recall:
        raise Conflict("memory recall is off (memory.recall: false in the config)")
    recall = services.recall
    recall.index_pending()  # a one-off command: embed what is pending now rather than search it by keyword
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
        print(
            f"Nothing relevant in {user}'s earlier conversations (in {_where(services)}): no turn is close enough "
            "in meaning (memory.recall_min_similarity) or shares enough of the question's words."
        )
    for rank, turn in enumerate(turns, start=1):
        text = " ".join(turn.content.split())
        excerpt = text if len(text) <= 240 else text[:239] + "…"
        print(
            f"{rank}. [{turn.timestamp:%Y-%m-%d %H:%M}] session {turn.session_id} {turn.role}  "
            f"[{_evidence(turn)}]\n   {excerpt}"
        )
    return EXIT_OK


def _evidence(turn: RecalledTurn) -> str:
    """Why a turn was recalled, in raw terms (the fused score is normalised over the candidates: the last
    recalled turn can show 0 however well it matched)."""
    parts = []
    if turn.similarity is not None:
        parts.append(f"similarity {turn.similarity:.3f}")
    if turn.keyword is not None:
        parts.append(f"keyword {turn.keyword:.2f}")
    return ", ".join(parts) or f"score {turn.score:.4f}"


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
    if tracing_on(services.config) != services.config:  # each answer's trace is its row: traced in process
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
