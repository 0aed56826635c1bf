"""The owner's setup step, shared by ``context-assistant db setup`` and the jobs' ``setup_database`` task.

Run as the role that owns the database (the deployer on Lakebase; anyone on the embedded server): it creates
the pgvector extension and the schema, moves an older version's tables out of ``public``, applies the
migrations, grants each named role what the app needs (USAGE on the schema, read/write on its tables and
sequences, the same for tables made later) and, with recall on, creates the recall index for the configured
embedding model, so the app never has to change the schema itself. Idempotent: a second run changes nothing.

The app's role is named by its service principal's client id. The bundle passes the app's *name*
(``--grant-to-app ${var.app_name}``) and the id is looked up here at run time: a job parameter that referenced
``${resources.apps.<app>.service_principal_client_id}`` would make the job depend on the app, which already
depends on the job (its ``ingest-job`` resource), and the CLI refuses such a cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..core.errors import UpstreamError
from .db import Database, DatabaseError
from .db_schema import SetupReport

log = logging.getLogger(__name__)


def app_principal(workspace: Any, app_name: str) -> str:
    """The client id of a Databricks App's service principal: the name of the app's Postgres role."""
    try:
        app = workspace.apps.get(name=app_name)
    except Exception as exc:
        raise DatabaseError(
            f"could not look up the Databricks App {app_name!r} to grant its service principal access: {exc}. "
            "Deploy the bundle first (databricks bundle deploy), or pass the role with --grant-to"
        ) from None
    client_id = getattr(app, "service_principal_client_id", None)
    if not client_id:
        raise DatabaseError(
            f"the Databricks App {app_name!r} has no service principal yet; wait until its first deployment "
            "has finished, then run the setup again"
        )
    return str(client_id)


def run_setup(
    db: Database,
    *,
    vector: bool,
    grant_to: Sequence[str] = (),
    grant_to_apps: Sequence[str] = (),
    workspace: Callable[[], Any] | None = None,
    prepare_recall: Callable[[], int | None] | None = None,
    recall_model: str = "",
) -> SetupReport:
    """Create, migrate and grant the schema (see the module docstring); returns what was done.

    ``workspace`` is only called to look up ``grant_to_apps``. ``prepare_recall`` (the recall's
    ``TurnRecall.prepare``; the caller wires it, recall being a later part than storage) builds the recall
    index for ``recall_model``; when the embedding model cannot be reached the setup still succeeds and says
    that the next index sync builds it.
    """
    roles = list(grant_to)
    if grant_to_apps:
        if workspace is None:
            raise DatabaseError("granting to a Databricks App needs a workspace client")
        client = workspace()
        roles += [app_principal(client, name) for name in grant_to_apps]
    report = db.setup(vector=vector, grant_to=roles)
    if prepare_recall is not None:
        try:
            dimension = prepare_recall()
        except UpstreamError as exc:  # the embedding model (an endpoint) did not answer
            report.notes.append(
                f"recall index not prepared ({exc}); the next sync of the index (ingest or nightly job) builds it"
            )
        else:
            report.notes.append(f"recall index ready for {recall_model} ({dimension} dimensions)")
    return report


def summary_lines(report: SetupReport, where: str) -> list[str]:
    """What ``db setup`` prints."""
    lines = [f"Database: {where}"]
    lines.append(f"Schema:   {report.schema}" + (" (created)" if report.created_schema else " (already there)"))
    if report.moved_from_public:
        lines.append(f"Moved from schema public: {', '.join(report.moved_from_public)}")
    lines.append(
        "Migrations applied: " + (", ".join(str(v) for v in report.applied) if report.applied else "none pending")
    )
    if report.granted_to:
        lines.append(
            "Granted USAGE on the schema, read/write on its tables and sequences (now and for tables made later) "
            "to: " + ", ".join(report.granted_to)
        )
    lines.extend(report.notes)
    return lines


__all__ = ["app_principal", "run_setup", "summary_lines"]
