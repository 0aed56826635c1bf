"""What the notebooks in ``notebooks/`` share: widgets that also work off Databricks, and plain text tables.
(The Lakebase the widgets name: ``storage.lakebase_from_widgets``.)

A notebook passes ``dbutils.widgets`` when it runs on Databricks; run as a plain Python file (locally) there
is no ``dbutils``, and a widget reads ``CA_WIDGET_<NAME>`` or its default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any


class Widgets:
    def __init__(self, dbutils_widgets: Any | None) -> None:
        self._widgets = dbutils_widgets

    def text(self, name: str, default: str, label: str) -> str:
        """A text widget on Databricks; off Databricks the ``CA_WIDGET_<NAME>`` variable, else the default."""
        if self._widgets is None:
            return os.environ.get(f"CA_WIDGET_{name.upper()}", default)
        self._widgets.text(name, default, label)
        return self._widgets.get(name)


def notebook_user(dbutils: Any | None, fallback: str, workspace: Callable[[], Any]) -> str:
    """Who runs the notebook, so the turns it stores are theirs: on Databricks the notebook context's user;
    where Python may not reach that context (standard access mode and serverless compute refuse the JVM
    entry point's methods as "not whitelisted"; Databricks Connect has none), the identity the notebook's
    own credentials belong to (``workspace().current_user.me()``); off Databricks, ``fallback``.
    """
    if dbutils is None:
        return fallback
    try:
        return str(dbutils.notebook.entry_point.getDbutils().notebook().getContext().userName().get())
    except Exception:
        pass
    try:
        return str(workspace().current_user.me().user_name or fallback)
    except Exception:
        return fallback


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print rows as an aligned text table (the same on Databricks and locally)."""
    cells = [tuple(str(v) for v in headers)] + [tuple("" if v is None else str(v) for v in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


__all__ = ["Widgets", "notebook_user", "print_table"]
