"""Name Delta tables the same way in SQL on Databricks (Unity Catalog) and locally (a folder on disk).

On Databricks a table is ``catalog.schema.table``. Locally (pysail) there is no metastore that survives the
process, so a table is a folder; to use it in SQL we register it in the session catalog under a generated
name with ``CREATE TABLE IF NOT EXISTS <name> (...) USING DELTA LOCATION '<folder>'``, which creates the
Delta table when the folder is empty and otherwise just points the name at the existing table. After
that every statement (``SELECT``, ``MERGE INTO``) is identical for both kinds. (pysail also accepts
``delta.`/path```, but only for a table that already exists, and Databricks Unity Catalog forbids
path-based access to managed tables, so names are the one spelling that works everywhere.)

This module is the one place that knows the difference.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import InvalidInput

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_NAME_PART = re.compile(r"^(`[^`]+`|[A-Za-z0-9_][A-Za-z0-9_-]*)$")


@dataclass(frozen=True)
class TableRef:
    """A Delta table as SQL sees it: ``sql_name`` (quoted) and, for a local table, its folder."""

    sql_name: str
    location: str | None  # absolute folder of a local (path-based) table; None for a catalog table
    label: str  # what the user configured, for messages

    @property
    def is_local(self) -> bool:
        return self.location is not None

    def sibling(self, suffix: str) -> TableRef:
        """A helper table next to this one (same schema or same parent folder), e.g. for staging."""
        if self.location is not None:
            return local_table(self.location.rstrip("/") + suffix)
        parts = split_name(self.sql_name)
        parts[-1] = parts[-1] + suffix
        return TableRef(".".join(quote_part(p) for p in parts), None, f"{self.label}{suffix}")


def resolve_table(value: str | TableRef, local_dir: str | os.PathLike[str] | None = None) -> TableRef:
    """Map a configured table value to a :class:`TableRef`.

    * ``catalog.schema.table`` or ``schema.table``: a catalog table, used as is.
    * anything with a ``/`` (or starting with ``~`` or ``.``): a folder, relative to ``local_dir`` (or the
      current directory).
    * a bare name like ``chunks``: a folder under ``local_dir`` when one is given (the local data dir),
      else a table in the session's current schema.
    """
    if isinstance(value, TableRef):
        return value
    text = value.strip()
    if not text:
        raise InvalidInput("table name is empty: give catalog.schema.table or a folder path")
    looks_like_path = "/" in text or "\\" in text or text.startswith(("~", "."))
    if not looks_like_path:
        parts = text.split(".")
        if 1 <= len(parts) <= 3 and all(_NAME_PART.match(p) for p in parts):
            if len(parts) == 1 and local_dir is not None:
                return local_table(Path(local_dir) / text)
            return TableRef(".".join(quote_part(p.strip("`")) for p in parts), None, text)
        raise InvalidInput(f"table {value!r} is neither a table name (catalog.schema.table) nor a folder path")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(local_dir or os.getcwd()) / path
    return local_table(path)


def local_table(location: str | os.PathLike[str]) -> TableRef:
    """A folder-backed table with a session name derived from the folder, so it is stable per folder."""
    folder = os.path.abspath(os.fspath(location))
    stem = re.sub(r"[^A-Za-z0-9_]", "_", os.path.basename(folder.rstrip("/")) or "table")[:40]
    digest = hashlib.sha1(folder.encode("utf-8")).hexdigest()[:12]
    return TableRef(quote_part(f"ca_{stem}_{digest}"), folder, folder)


def quote_part(part: str) -> str:
    """Backtick-quote one identifier part (a backtick inside is doubled, as Spark SQL expects)."""
    return "`" + part.replace("`", "``") + "`"


def split_name(sql_name: str) -> list[str]:
    """Inverse of joining quoted parts: ```a`.`b``` -> ["a", "b"]."""
    return [p.replace("``", "`") for p in re.findall(r"`((?:[^`]|``)*)`", sql_name)]


def sql_string(value: str) -> str:
    """A SQL string literal. Backslash escaping is the one form both Databricks and pysail accept."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def create_table(
    spark: SparkSession, table: TableRef, columns: str | None, properties: dict[str, str] | None = None
) -> list[str]:
    """Create the table if missing (or register a local folder); return the properties that were dropped.

    ``columns=None`` only registers an existing local Delta folder, taking the schema from its log.

    Table properties an engine refuses are retried without: pysail cannot write Change Data Feed tables
    yet, so locally the chunk table is created without ``delta.enableChangeDataFeed``. The caller reports
    what was dropped; on Databricks nothing is.
    """
    dropped: list[str] = []
    props = dict(properties or {})
    if table.location is not None and not os.path.isdir(os.path.join(table.location, "_delta_log")):
        # The folder was deleted while this session had it registered: forget the stale name (an external
        # table, so no data is touched) so the CREATE below makes a fresh table instead of a no-op.
        spark.sql(f"DROP TABLE IF EXISTS {table.sql_name}").collect()
    while True:
        statement = f"CREATE TABLE IF NOT EXISTS {table.sql_name}"
        statement += f" ({columns}) USING DELTA" if columns else " USING DELTA"
        if table.location is not None:
            statement += f" LOCATION {sql_string(table.location)}"
        if props:
            statement += (
                " TBLPROPERTIES ("
                + ", ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in props.items())
                + ")"
            )
        try:
            spark.sql(statement).collect()
            return dropped
        except Exception as error:
            refused = _refused_property(str(error), props)
            if refused is None:
                raise
            dropped.append(refused)
            del props[refused]


# pysail: "Delta transaction error: ... Unsupported table features required: [ChangeDataFeed]" or
# "Table features must be specified, please specify: ChangeDataFeed".
_FEATURE_OF_PROPERTY = {"delta.enableChangeDataFeed": "ChangeDataFeed"}


def _refused_property(message: str, props: dict[str, str]) -> str | None:
    for key in props:
        feature = _FEATURE_OF_PROPERTY.get(key)
        if feature and feature in message and "feature" in message.lower():
            return key
    return None
