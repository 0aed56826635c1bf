"""Paths of an ingest's source as Spark and this process see them: the relative path citations show, the
same for Databricks' and pysail's listings; a local source made absolute; a Volume seen through its mount."""

from __future__ import annotations

import os
import re

from .plan import SourceFile
from .tables import sql_string

GLOB_CHARS = re.compile(r"[*?\[\]{}\\]")  # what ``load()`` treats as a glob (pysail has no escape)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def normalize_root(source: str) -> str:
    """The source as the path prefix ``binaryFile`` reports (scheme and leading/trailing slashes dropped).

    Mirrors :func:`relative_path_sql`: Databricks reports ``dbfs:/Volumes/c/s/v/a.md``, pysail
    ``tmp/docs/a.md`` (no leading slash); both normalise to a scheme-less, slash-less prefix.
    """
    return SCHEME.sub("", source).strip("/")


def relative_path_sql(column: str, root: str) -> str:
    """SQL for the path relative to ``root`` (from :func:`normalize_root`); a single-file source yields
    its file name."""
    norm = f"regexp_replace(regexp_replace({column}, '^[A-Za-z][A-Za-z0-9+.-]+:', ''), '^/+', '')"
    if not root:
        return norm
    prefix = sql_string(root + "/")
    return (
        f"CASE WHEN substr({norm}, 1, {len(root) + 1}) = {prefix} THEN substr({norm}, {len(root) + 2}) "
        f"WHEN {norm} = {sql_string(root)} THEN regexp_extract({norm}, '[^/]+$', 0) ELSE {norm} END"
    )


def local_path_of(source: str) -> str | None:
    """Where the source can be seen by this Python process, if at all: a local folder, or a Volume through
    its ``/Volumes`` mount on Databricks. ``None`` for object-store URLs (``s3://``, ``abfss://``...)."""
    if source.startswith("dbfs:/Volumes/"):
        return source[len("dbfs:") :]
    if source.startswith("file:"):
        return "/" + source[len("file:") :].lstrip("/")
    return None if SCHEME.match(source) else source


def still_present_but_empty(source: str, paths: list[str]) -> list[SourceFile]:
    """Those of ``paths`` (missing from the listing) that still exist as zero-byte files.

    Spark's file sources (and pysail) leave empty files out of ``binaryFile`` listings, so a document
    truncated to nothing would otherwise look deleted and lose its chunks; it is reported as failed
    ("empty file") instead. Only known documents are checked, one ``stat`` each, never a folder walk.
    """
    root = local_path_of(source)
    if root is None:
        return []
    found = []
    for path in paths:
        try:
            stat = os.stat(os.path.join(root, *path.split("/")))
        except OSError:
            continue
        if stat.st_size == 0 and not os.path.isdir(os.path.join(root, *path.split("/"))):
            found.append(SourceFile(path, 0, stat.st_mtime_ns // 1000))
    return found


def supported_glob() -> str:
    """A case-insensitive ``pathGlobFilter`` for the parsed extensions (Hadoop and pysail globs agree)."""
    from .documents import SUPPORTED_EXTENSIONS

    def insensitive(ext: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext.lstrip("."))

    return "*.{" + ",".join(insensitive(e) for e in sorted(SUPPORTED_EXTENSIONS)) + "}"
