"""What the notebooks in ``notebooks/`` share: widgets that also work off Databricks, plain text tables, and
the Lakebase the widgets name.

A notebook passes ``dbutils.widgets`` when it runs on Databricks; run as a plain Python file (locally) there
is no ``dbutils``, and a widget reads ``CA_WIDGET_<NAME>`` or its default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from .config import Config, ConfigError


class Widgets:
    def __init__(self, dbutils_widgets: Any | None) -> None:
        self._widgets = dbutils_widgets

    def text(self, name: str, default: str, label: str) -> str:
        """A text widget on Databricks; off Databricks the ``CA_WIDGET_<NAME>`` variable, else the default."""
        if self._widgets is None:
            return os.environ.get(f"CA_WIDGET_{name.upper()}", default)
        self._widgets.text(name, default, label)
        return self._widgets.get(name)


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print rows as an aligned text table (the same on Databricks and locally)."""
    cells = [tuple(str(v) for v in headers)] + [tuple("" if v is None else str(v) for v in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def default_workspace() -> Any:
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient()


def lakebase_from_widgets(
    config: Config,
    widget: Callable[[str, str, str], str],
    workspace_factory: Callable[[], Any] = default_workspace,
) -> Config:
    """Point ``database`` at the Lakebase the widgets name, so a notebook reads the deployed memory.

    ``lakebase_branch`` (Autoscaling, ``projects/<project>/branches/<branch>``: its read-write endpoint) or
    ``lakebase_instance`` (Provisioned: its read-write DNS), and ``lakebase_database``. Both empty: the config
    as it is (locally, the embedded Postgres). The notebook connects as you, with an OAuth token.
    """
    from .db import with_lakebase

    branch = widget("lakebase_branch", "", "Lakebase branch (projects/<project>/branches/<branch>)").strip()
    instance = widget("lakebase_instance", "", "Lakebase Provisioned instance (instead of a branch)").strip()
    database = widget("lakebase_database", config.database.name, "Lakebase database").strip()
    if branch and instance:
        raise ConfigError("set the lakebase_branch widget or the lakebase_instance widget, not both")
    if not branch and not instance:
        if config.database.embedded and os.environ.get("DATABRICKS_RUNTIME_VERSION"):
            raise ConfigError(
                "set the lakebase_branch widget to the bundle's Lakebase branch "
                "(projects/<lakebase_project>/branches/production; `databricks bundle summary` names the project), "
                "or lakebase_instance: there is no embedded Postgres on Databricks"
            )
        return config
    settings = dataclasses.replace(config.database, name=database or config.database.name, host="", endpoint="")
    if branch:
        return with_lakebase(config.replace(database=settings), branch, workspace_factory)
    from .db import DatabaseError

    try:
        found = workspace_factory().database.get_database_instance(name=instance)
    except Exception as exc:
        raise DatabaseError(f"could not look up the Lakebase instance {instance!r}: {exc}") from None
    host = getattr(found, "read_write_dns", None)
    if not host:
        raise DatabaseError(f"the Lakebase instance {instance!r} has no read-write DNS yet (is it running?)")
    return config.replace(database=dataclasses.replace(settings, host=host, instance_name=instance))
