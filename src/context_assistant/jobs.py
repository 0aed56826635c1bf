"""Entry points of the bundle's job tasks (python_wheel_task): ``context-assistant-setup``, ``-ingest``, ``-sync``.

The Databricks wheel runner calls the function with ``sys.argv = ["python", *parameters]``; the parameters are
written in ``resources/*.job.yml``. Both run locally too, on the same code (``context-assistant-ingest
--source fixtures/docs ...``), which is how the tests exercise them.

Each prints one JSON summary line on stdout (the task's output in the run page) and progress on stderr.
Exit code: 0 when the run completed — even if some documents failed to parse or embed: those are listed in
the summary and in the documents table, and everything else was processed; 1 when the run could not complete
(unreachable service, bad source, a sync already running); 2 for bad parameters or configuration.

Configuration, as for the CLI: ``--config FILE``, else ``$CONTEXT_ASSISTANT_CONFIG``, else ``./config.yaml`` if
present (a Databricks job task has none: it runs on the defaults), then
``CONTEXT_ASSISTANT__*`` environment variables, then ``--set section.key=value`` (repeatable) and the
explicit flags. ``--lakebase-branch projects/<p>/branches/<b>`` finds that branch's read-write endpoint
with the Databricks SDK and connects to it with an OAuth token (a job has no injected PGHOST).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TextIO

from .core.config import Config, load_config
from .core.console import TerminalProgress, print_json
from .core.errors import EXIT_OK, ConfigError, ContextAssistantError
from .core.interrupts import end_process, report_interrupted
from .core.redact import install_log_redaction
from .core.workspace import workspace_client
from .storage.targets import with_lakebase

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so callers (and tests) get the message and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def _parser(prog: str, description: str) -> _Parser:
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--config", help="config file (default: none; the defaults plus the flags below)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a config key, e.g. --set rag.chunk_size=800 (repeatable)",
    )
    parser.add_argument("--chunk-table", help="chunk table: catalog.schema.table, or a folder locally")
    parser.add_argument(
        "--lakebase-branch",
        help="Lakebase Autoscaling branch (projects/<p>/branches/<b>): connect to its read-write endpoint",
    )
    return parser


def ingest_parser() -> _Parser:
    parser = _parser(
        "context-assistant-ingest", "Parse and chunk the documents under --source into the Delta tables."
    )
    parser.add_argument("--source", help="folder or Volume path (/Volumes/<catalog>/<schema>/<volume>)")
    parser.add_argument("--documents-table", help="documents table: catalog.schema.table, or a folder locally")
    parser.add_argument(
        "--allow-empty-source",
        action="store_true",
        help="accept a source with no files (it removes every ingested document)",
    )
    parser.add_argument(
        "--allow-replace-source",
        action="store_true",
        help="accept a source holding none of the ingested documents (it removes all of them)",
    )
    return parser


def sync_parser() -> _Parser:
    parser = _parser(
        "context-assistant-sync", "Embed new and changed chunks and bring the retrieval index in line."
    )
    parser.add_argument("--full", action="store_true", help="re-embed every chunk, not just the changes")
    return parser


def setup_parser() -> _Parser:
    parser = _parser(
        "context-assistant-setup",
        "As the database owner: create the schema and pgvector, migrate, and grant the app's role access.",
    )
    parser.add_argument(
        "--grant-to", action="append", default=[], metavar="ROLE", help="a role to grant (repeatable)"
    )
    parser.add_argument(
        "--grant-to-app",
        action="append",
        default=[],
        metavar="APP_NAME",
        help="a Databricks App whose service principal's role is granted (repeatable)",
    )
    return parser


def parse_settings(settings: Sequence[str]) -> dict[str, Any]:
    """``["rag.top_k=8"]`` → ``{"rag.top_k": "8"}`` (the config loader converts and validates the values)."""
    out: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or ("." not in key and key.strip() not in ("data_dir", "user")):
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. rag.chunk_size=800")
        out[key.strip()] = value
    return out


def build_config(args: argparse.Namespace, env: Mapping[str, str], explicit: Mapping[str, Any]) -> Config:
    overrides = parse_settings(args.settings)
    overrides.update({key: value for key, value in explicit.items() if value is not None})
    return load_config(args.config, env=env, overrides=overrides)


# ------------------------------------------------------------------------------------------------- runs


def run_ingest_job(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    spark_factory: Callable[[Config], Any] | None = None,
    out: TextIO | None = None,
) -> int:
    """Ingest the source into the chunk/documents tables; prints the JSON summary; returns the exit code."""
    from .ingest.run import run_ingest
    from .ingest.spark import interrupting_spark
    from .refresh import ingest_limits, source_location, table_ref
    from .retrieval.tokenizer import chunking_from_config

    env = os.environ if env is None else env
    out = out or sys.stdout
    summary: dict[str, Any] = {"job": "ingest", "ok": False}
    try:
        args = ingest_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        config = build_config(
            args,
            env,
            {
                "rag.source": args.source,
                "rag.chunk_table": args.chunk_table,
                "rag.documents_table": args.documents_table,
            },
        )
        rag = config.rag
        summary.update(source=rag.source, chunk_table=rag.chunk_table, documents_table=rag.documents_table)
        chunk_size, chunk_overlap, counter = chunking_from_config(rag)
        spark = (spark_factory or _default_spark)(config)
        with interrupting_spark(spark):  # Ctrl-C (run by hand) stops the server's work too
            result = run_ingest(
                spark,
                source_location(config),
                table_ref(config, rag.chunk_table),
                table_ref(config, rag.documents_table),
                chunk_size=chunk_size,
                chunk_overlap=chunk_overlap,
                counter=counter,
                pdf_parser=rag.pdf_parser,
                progress=TerminalProgress(live=False),
                allow_empty_source=args.allow_empty_source,
                allow_replace_source=args.allow_replace_source,
                **ingest_limits(config),
            )
    except ContextAssistantError as exc:
        return _fail(summary, out, str(exc), exc.exit_code)
    summary.update(ok=True, result=result.to_json())
    print_json(summary, out)
    return EXIT_OK


def run_sync_job(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    workspace_factory: Callable[[], Any] | None = None,
    services_factory: Callable[[Config], Any] | None = None,
    out: TextIO | None = None,
) -> int:
    """Refresh the retrieval index from the chunk table; prints the JSON summary; returns the exit code."""
    from .refresh import refresh_index
    from .services import Services

    env = os.environ if env is None else env
    out = out or sys.stdout
    summary: dict[str, Any] = {"job": "sync", "ok": False}
    services = None
    try:
        args = sync_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        config = build_config(args, env, {"rag.chunk_table": args.chunk_table})
        workspace = workspace_factory or workspace_client
        config = with_lakebase(config, args.lakebase_branch, workspace)
        summary.update(
            chunk_table=config.rag.chunk_table,
            backend=config.rag.backend,
            embedding_model=config.rag.embedding_model,
            database=config.database.endpoint or config.database.host or "embedded",
        )
        services = (
            services_factory(config)
            if services_factory
            else Services(config, env=env, workspace_factory=workspace_factory)
        )
        result = refresh_index(services, full=args.full)
    except ContextAssistantError as exc:  # bad parameters (exit 2), or what stopped the whole run (exit 1)
        return _fail(summary, out, str(exc), exc.exit_code)
    finally:
        if services is not None:
            services.close()
    summary.update(ok=True, result=result.to_json())
    print_json(summary, out)
    return EXIT_OK


def run_setup_job(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    workspace_factory: Callable[[], Any] | None = None,
    services_factory: Callable[[Config], Any] | None = None,
    out: TextIO | None = None,
) -> int:
    """The owner's setup step (storage/db_setup.py) as a job task; prints the JSON summary; returns the exit
    code."""
    from .services import Services, setup_database

    env = os.environ if env is None else env
    out = out or sys.stdout
    summary: dict[str, Any] = {"job": "setup", "ok": False}
    services = None
    try:
        args = setup_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        config = build_config(args, env, {})
        workspace = workspace_factory or workspace_client
        config = with_lakebase(config, args.lakebase_branch, workspace)
        summary.update(
            database=config.database.endpoint or config.database.host or "embedded", schema=config.database.schema
        )
        services = (
            services_factory(config)
            if services_factory
            else Services(config, env=env, workspace_factory=workspace_factory)
        )
        report = setup_database(services, args.grant_to, args.grant_to_app)
    except ContextAssistantError as exc:  # bad parameters (exit 2), or what stopped the setup (exit 1)
        return _fail(summary, out, str(exc), exc.exit_code)
    finally:
        if services is not None:
            services.close()
    summary.update(ok=True, result=report.to_json())
    print_json(summary, out)
    return EXIT_OK


def setup_main(argv: Sequence[str] | None = None) -> None:
    """Console script ``context-assistant-setup`` (the setup_database task's entry point)."""
    _setup_logging()
    code = _interruptible(run_setup_job, argv)
    if code:
        raise SystemExit(code)


def ingest_main(argv: Sequence[str] | None = None) -> None:
    """Console script ``context-assistant-ingest`` (the ingest task's entry point)."""
    _setup_logging()
    code = _interruptible(run_ingest_job, argv)
    if code:
        raise SystemExit(code)


def sync_main(argv: Sequence[str] | None = None) -> None:
    """Console script ``context-assistant-sync`` (the index sync task's entry point)."""
    _setup_logging()
    code = _interruptible(run_sync_job, argv)
    if code:
        raise SystemExit(code)


# ------------------------------------------------------------------------------------------------ helpers


def _interruptible(run: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Run a job's entry point; Ctrl-C (run by hand) ends it as the CLI does: one line, exit 130."""
    try:
        return run(argv)
    except KeyboardInterrupt:
        code = report_interrupted("Interrupted; the next run picks up where this one stopped.")
        end_process(code)
        return code  # not reached: end_process leaves the process


def _default_spark(config: Config) -> Any:
    from .ingest.spark import get_spark

    return get_spark(config.data_path)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    install_log_redaction()


def _fail(summary: dict[str, Any], out: TextIO, message: str, code: int) -> int:
    summary.update(ok=False, error=message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    print_json(summary, out)
    return code


__all__ = ["ingest_main", "run_ingest_job", "run_setup_job", "run_sync_job", "setup_main", "sync_main"]
