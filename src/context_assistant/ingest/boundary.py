"""The documents folder is a boundary: list a local source in Python, never following a link out of it.

Spark's file listing (and pysail's) follows symbolic links wherever they point, so a link in the documents
folder to a file elsewhere on the machine made that file searchable by every user; a link loop, or one file
whose name holds a newline, aborted the whole listing ("illegal character sequence"). So a local source is
walked here with ``os.scandir`` instead, and each entry that cannot be ingested safely is reported on its
own, with the reason, while the rest ingests:

* a symbolic link is not followed, by default (``rag.symlinks: never``); with ``rag.symlinks: inside`` a
  link whose target stays inside the folder is followed, one that leads out of it is still refused;
* a link loop (a folder reached twice), a dangling link and an unreadable folder are reported, not fatal;
* a name Spark cannot handle or a citation cannot show (control characters such as a newline or a tab, or
  bytes that are not UTF-8) is reported with a hint to rename the file;
* names starting with ``.`` or ``_`` are ignored, as Spark's listing does;
* empty files are listed (Spark's listing leaves them out): the planner reports them as skipped.

A Unity Catalog Volume is object storage without symbolic links; there Spark lists the Volume itself.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.errors import ConfigError
from .plan import SourceFile

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

SYMLINK_POLICIES = ("never", "inside")
_CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


@dataclass(frozen=True)
class ListedFile:
    """A regular file inside the boundary: ``path`` relative to the root with ``/``; ``real`` its location."""

    path: str
    real: str
    size_bytes: int
    modified_us: int


@dataclass
class SourceScan:
    """The result of walking a local source: what may be read, and what was refused and why."""

    files: list[ListedFile] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # relative path -> reason
    single_file: bool = False

    def listing(self) -> list[SourceFile]:
        """Every entry as the planner sees it, refused ones included (as size 0: they are skipped)."""
        files = [SourceFile(f.path, f.size_bytes, f.modified_us) for f in self.files]
        return sorted([*files, *(SourceFile(p, 0, 0) for p in self.refused)], key=lambda f: f.path)


def check_symlink_policy(policy: str) -> str:
    if policy not in SYMLINK_POLICIES:
        raise ConfigError(f"rag.symlinks must be one of {', '.join(SYMLINK_POLICIES)}, got {policy!r}")
    return policy


def name_problem(name: str) -> str | None:
    """Why a file or folder name cannot be ingested, or None."""
    if any(ch in _CONTROL for ch in name):
        return "its name contains a control character (a newline or tab?); rename the file to ingest it"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8; rename the file to ingest it"
    return None


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _micros(st: os.stat_result) -> int:
    return st.st_mtime_ns // 1000


def scan_source(root: str, symlinks: str = "never") -> SourceScan:
    """Walk ``root`` (a local folder or a single file) within its boundary; see the module doc."""
    check_symlink_policy(symlinks)
    scan = SourceScan()
    try:
        root_stat = os.lstat(root)
    except OSError:
        return scan  # a missing source lists as empty, as Spark's listing does; the caller refuses it
    if stat.S_ISLNK(root_stat.st_mode):  # the configured source itself may be a link: that is the user's choice
        root = os.path.realpath(root)
        try:
            root_stat = os.stat(root)
        except OSError:
            return scan
    if stat.S_ISREG(root_stat.st_mode):
        name = os.path.basename(root)
        problem = name_problem(name)
        if problem:
            scan.refused[name] = problem
        else:
            scan.files.append(ListedFile(name, root, root_stat.st_size, _micros(root_stat)))
        scan.single_file = True
        return scan
    root_real = os.path.realpath(root)
    seen = {(root_stat.st_dev, root_stat.st_ino)}
    _walk(root, "", root_real, symlinks, seen, scan)
    scan.files.sort(key=lambda f: f.path)
    return scan


def _walk(folder: str, prefix: str, root_real: str, symlinks: str, seen: set, scan: SourceScan) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as error:
        scan.refused[prefix.rstrip("/") or "."] = f"folder could not be read: {error.strerror or error}"
        return
    for entry in entries:
        name = entry.name
        if name.startswith((".", "_")):
            continue
        rel = prefix + name
        problem = name_problem(name)
        if problem:
            scan.refused[rel] = problem
            continue
        try:
            is_link = entry.is_symlink()
            if is_link:
                real = os.path.realpath(entry.path)
                if symlinks == "never":
                    scan.refused[rel] = (
                        "symbolic link, not followed (rag.symlinks: inside follows links within the folder)"
                    )
                    continue
                if not _inside(real, root_real):
                    scan.refused[rel] = "symbolic link to outside the documents folder, not followed"
                    continue
                st = os.stat(entry.path)  # follows the link; a loop or a dangling link raises
            else:
                st = entry.stat(follow_symlinks=False)
        except OSError as error:
            scan.refused[rel] = (
                "symbolic link loop"
                if getattr(error, "errno", None) == 40
                else f"cannot be read: {error.strerror or error}"
            )
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen:
                scan.refused[rel] = "symbolic link loop (this folder is already inside the documents folder)"
                continue
            seen.add(key)
            _walk(entry.path, rel + "/", root_real, symlinks, seen, scan)
            seen.discard(key)  # the same folder reached by two separate links is listed under both names
        elif stat.S_ISREG(st.st_mode):
            target = os.path.realpath(entry.path) if is_link else entry.path
            scan.files.append(ListedFile(rel, target, st.st_size, _micros(st)))
        else:
            scan.refused[rel] = "not a regular file (a device, socket or pipe), not read"


def is_local_source(source: str) -> bool:
    """Whether ``source`` (from :func:`context_assistant.ingest.run.resolve_source`) is a folder or file on
    this machine, walked by :func:`scan_source`. On Databricks (whose workers may not see the driver's
    files), Volumes and object-store URLs are listed by Spark."""
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return False
    return (
        "://" not in source and not source.startswith(("/Volumes/", "dbfs:", "file:")) and source.startswith("/")
    )


READ_SCHEMA = "path STRING, length BIGINT, modified_us BIGINT, content BINARY"


def read_local_files(rows: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The ``mapInArrow`` function that reads scanned files (columns ``path``, ``real``, ``limit``) the way
    ``binaryFile`` would, without listing any folder: ``path`` is the name Spark would report; a file that
    vanished or grew past ``limit`` since the listing is left out (the next run picks it up)."""
    import pyarrow as pa

    schema = pa.schema(
        [("path", pa.string()), ("length", pa.int64()), ("modified_us", pa.int64()), ("content", pa.binary())]
    )
    for batch in rows:
        for row in batch.to_pylist():
            try:
                fd = os.open(row["real"], os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size > row["limit"]:
                    continue
                with os.fdopen(fd, "rb", closefd=False) as handle:
                    content = handle.read(row["limit"] + 1)
            except OSError:
                continue
            finally:
                os.close(fd)
            out = {"path": row["path"], "length": len(content), "modified_us": _micros(st), "content": content}
            yield pa.RecordBatch.from_pylist([out], schema=schema)


def read_scanned(spark: SparkSession, scan: SourceScan, paths: list[str], source: str, limit: int) -> DataFrame:
    """``binaryFile``-shaped rows (path, length, modificationTime, content) of the scanned files at ``paths``,
    read by a Python worker from the locations the walk resolved: no folder is listed again, so a link, a
    loop or an odd name elsewhere in the folder can neither reach Spark nor abort the read."""
    real = {f.path: f.real for f in scan.files}
    base = source.rstrip("/")
    rows = [(base if scan.single_file else f"{base}/{p}", real[p], limit) for p in paths if p in real]
    frame = spark.createDataFrame(rows, "path STRING, real STRING, limit BIGINT")
    return (
        frame.repartition(max(1, min(len(rows), os.cpu_count() or 1)))
        .mapInArrow(read_local_files, READ_SCHEMA)
        .selectExpr("path", "length", "timestamp_micros(modified_us) AS modificationTime", "content")
    )
