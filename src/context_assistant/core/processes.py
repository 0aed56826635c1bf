"""Child Python processes (the trace exporter, the parse child) that must import what their parent imports.

On a Databricks App and in notebooks the package is not installed: the parent puts ``src/`` on ``sys.path``
itself, which a child started with ``sys.executable`` would not see. So a child gets the parent's import path as
``PYTHONPATH`` (and the rest of the parent's environment: credentials, tracking URI, experiment)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping


def child_python_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``PYTHONPATH`` set to this process's ``sys.path``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    return env
