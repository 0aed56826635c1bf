"""Run a notebook of notebooks/ the way Databricks runs it, so what works here works there.

A Databricks source notebook is cells separated by ``# COMMAND ----------``; a cell whose lines all start
with ``# MAGIC`` is a magic command (``%md``, ``%pip``...). Databricks runs the cells in order, in one Python
namespace with no ``__file__``, with the working directory set to the notebook's folder, and provides
``dbutils``, ``spark`` and ``display``; ``dbutils.library.restartPython()`` starts a fresh namespace. This
harness does the same, with small stand-ins for ``dbutils`` (widgets with the values a test gives,
``library.restartPython``, the notebook context's user name) and ``display``. ``%pip install`` lines are
checked, not run: every file they name (``-r`` requirements, wheels) must exist relative to the notebook's
folder, as it must on Databricks; the packages themselves are those of the test environment.
"""

from __future__ import annotations

import glob
import os
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CELL_SEPARATOR = "# COMMAND ----------"
HEADER = "# Databricks notebook source"


@dataclass(frozen=True)
class Cell:
    index: int
    kind: str  # "python", or the magic: "md", "pip", "sql", ...
    source: str


def read_cells(path: Path) -> list[Cell]:
    """Split a Databricks source notebook into its cells (empty cells dropped)."""
    text = path.read_text(encoding="utf-8")
    if not text.startswith(HEADER + "\n"):
        raise ValueError(f"{path.name} is not a Databricks source notebook (no {HEADER!r} first line)")
    blocks: list[list[str]] = [[]]
    for line in text[len(HEADER) + 1 :].splitlines():
        if line.strip() == CELL_SEPARATOR:
            blocks.append([])
        else:
            blocks[-1].append(line)
    cells = []
    for lines in blocks:
        body = [line for line in lines if line.strip()]
        if not body:
            continue
        if all(line.startswith("# MAGIC") for line in body):
            magic = "\n".join(
                line[len("# MAGIC") :].removeprefix(" ") for line in lines if line.startswith("# MAGIC")
            )
            kind = magic.lstrip().split(None, 1)[0].lstrip("%") if magic.strip().startswith("%") else "md"
            cells.append(Cell(len(cells), kind, magic.strip()))
        else:
            cells.append(Cell(len(cells), "python", "\n".join(lines).strip("\n")))
    return cells


def pip_files(command: str) -> list[str]:
    """The local files a ``%pip install ...`` line names (requirements files, wheels, folders)."""
    tokens = shlex.split(command)
    if tokens[:2] != ["%pip", "install"]:
        raise ValueError(f"not a %pip install line: {command!r}")
    files = []
    args = iter(tokens[2:])
    for token in args:
        if token in ("-r", "--requirement", "-c", "--constraint"):
            files.append(next(args))
        elif token.startswith("-"):
            continue
        elif "/" in token or token.endswith((".whl", ".tar.gz")):
            files.append(token)
    return files


@dataclass
class _Widgets:
    values: Mapping[str, str]
    defined: dict[str, str] = field(default_factory=dict)

    def text(self, name: str, default: str, label: str | None = None) -> None:
        self.defined[name] = default

    def get(self, name: str) -> str:
        if name not in self.defined:
            raise ValueError(f"InputWidgetNotDefined: no widget named {name}")  # what Databricks answers
        return str(self.values.get(name, self.defined[name]))


class _Library:
    def __init__(self) -> None:
        self.restarts = 0
        self.pending = False

    def restartPython(self) -> None:
        self.restarts += 1
        self.pending = True


class _Chain:
    """``dbutils.notebook.entry_point.getDbutils().notebook().getContext().userName().get()``; with no user,
    the entry point refuses as on standard access mode and serverless compute (mlflow-export-import#97)."""

    def __init__(self, user: str | None) -> None:
        self._user = user

    def __getattr__(self, name: str) -> Any:
        if self._user is None:
            raise RuntimeError(
                "py4j.security.Py4JSecurityException: Method public com.databricks.backend.common.rpc."
                "CommandContext getContext() is not whitelisted"
            )
        if name == "get":
            return lambda: self._user
        return _Callable(self)


class _Callable:
    def __init__(self, chain: _Chain) -> None:
        self._chain = chain

    def __call__(self, *args: Any) -> _Chain:
        return self._chain

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)


class FakeDbutils:
    def __init__(self, widgets: Mapping[str, str], user: str | None) -> None:
        self.widgets = _Widgets(widgets)
        self.library = _Library()
        self.notebook = type("Notebook", (), {"entry_point": _Chain(user)})()


@dataclass
class NotebookRun:
    namespace: dict[str, Any]
    dbutils: FakeDbutils
    pip_commands: list[str]
    displayed: list[Any]


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_notebook(
    path: Path,
    *,
    widgets: Mapping[str, str] | None = None,
    spark: Any = None,
    user: str | None = "notebook-user",
) -> NotebookRun:
    """Run every cell of the notebook at ``path`` as Databricks would; returns the final namespace.
    ``user`` is the notebook context's user; None: the context refuses, as on serverless compute."""
    cells = read_cells(path)
    dbutils = FakeDbutils(widgets or {}, user)
    displayed: list[Any] = []

    def display(value: Any) -> None:
        displayed.append(value)
        show = getattr(value, "show", None)
        if callable(show):
            show(50, truncate=False)
        else:
            print(value)

    def fresh() -> dict[str, Any]:
        namespace: dict[str, Any] = {"__name__": "__main__", "dbutils": dbutils, "display": display}
        if spark is not None:
            namespace["spark"] = spark
        return namespace

    namespace = fresh()
    pips: list[str] = []
    with _cwd(path.parent):
        for cell in cells:
            if cell.kind == "md":
                continue
            if cell.kind == "pip":
                for line in cell.source.splitlines():
                    for name in pip_files(line):
                        if not glob.glob(name):
                            raise FileNotFoundError(
                                f"{path.name} cell {cell.index}: {line!r} names {name}, which does not exist next to the notebook"
                            )
                    pips.append(line)
                continue
            if cell.kind != "python":
                raise NotImplementedError(f"{path.name} cell {cell.index}: %{cell.kind} cells are not run here")
            code = compile(cell.source, f"{path.name} [cell {cell.index}]", "exec")
            exec(code, namespace)
            if dbutils.library.pending:
                dbutils.library.pending = False
                namespace = fresh()
    return NotebookRun(namespace, dbutils, pips, displayed)
