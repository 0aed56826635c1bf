"""Offline validation of the Databricks Asset Bundle: ``context-assistant bundle validate`` runs it.

:func:`validate_bundle` loads ``databricks.yml`` with its includes and a target's overrides and returns a
:class:`BundleReport` of problems, each with its file, YAML path and line; :func:`format_report` prints one.
"""

from .load import LoadedBundle, UnknownTarget, load_bundle
from .validate import BundleLoadError, BundleReport, Problem, format_report, validate_bundle

__all__ = [
    "BundleLoadError",
    "BundleReport",
    "LoadedBundle",
    "Problem",
    "UnknownTarget",
    "format_report",
    "load_bundle",
    "validate_bundle",
]
