"""Check the keys and value types of a bundle, path by path, against the official definitions.

Resources are checked against the ``databricks-bundles`` package's typed classes (the dataclasses the CLI's
Python support is generated from): the same fields, required keys and enums the CLI knows. Their own
``from_dict`` rejects unknown keys but names only the class, and accepts a mapping where a string belongs, so
we walk the same type hints ourselves to name the exact YAML path, then still run ``from_dict`` as the last
word. The top level of ``databricks.yml`` and the resource types that package has no classes for (Lakebase
Autoscaling ``postgres_*``) are checked against shapes extracted from the CLI's JSON schema
(:mod:`context_assistant_tools.bundle.schema`, made by ``scripts/vendor_bundle_schema.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
import types
import typing
from collections.abc import Callable
from typing import Any

from .load import WHOLE_REFERENCE, Path_
from .schema import SHAPES

Report = Callable[[Path_, str], None]

_TRUE = {"true", "True", "TRUE", "y", "Y", "yes", "Yes", "YES", "on", "On", "ON"}
_FALSE = {"false", "False", "FALSE", "n", "N", "no", "No", "NO", "off", "Off", "OFF"}
# Used when databricks.bundles cannot list its resource types (an internal API).
_FALLBACK_CLASSES = {
    "apps": "databricks.bundles.apps:App",
    "database_instances": "databricks.bundles.database_instances:DatabaseInstance",
    "experiments": "databricks.bundles.experiments:MlflowExperiment",
    "jobs": "databricks.bundles.jobs:Job",
    "pipelines": "databricks.bundles.pipelines:Pipeline",
    "schemas": "databricks.bundles.schemas:Schema",
    "volumes": "databricks.bundles.volumes:Volume",
}


def typed_resource_classes() -> dict[str, type]:
    """Resource type (plural, as under ``resources:``) → its databricks-bundles class."""
    try:
        from databricks.bundles.core._resource_type import _ResourceType

        return {kind.plural_name: kind.resource_type for kind in _ResourceType.all()}
    except Exception:  # pragma: no cover - depends on the installed databricks-bundles
        classes = {}
        for plural, spec in _FALLBACK_CLASSES.items():
            module, _, name = spec.partition(":")
            try:
                classes[plural] = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
        return classes


def is_reference(value: Any) -> bool:
    """A whole-value ``${...}`` reference: the CLI accepts it for any type and checks it after resolving."""
    return isinstance(value, str) and WHOLE_REFERENCE.match(value) is not None


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    return f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}"


# ----------------------------------------------------------------------------------- typed classes


def check_typed(tp: Any, value: Any, path: Path_, report: Report) -> None:
    """Walk ``value`` against the type hint ``tp`` of a databricks-bundles class, reporting each problem."""
    if value is None or is_reference(value):
        return
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(tp) if arg is not type(None) and not _is_variable(arg)]
        if len(options) == 1:
            return check_typed(options[0], value, path, report)
        for option in options:  # pick the option whose kind matches the value, else the first
            if _kind_matches(option, value):
                return check_typed(option, value, path, report)
        return check_typed(options[0], value, path, report) if options else None
    if tp is Any or _is_variable(tp):
        return None
    if dataclasses.is_dataclass(tp):
        return _check_dataclass(tp, value, path, report)
    if origin is list:
        if not isinstance(value, list):
            return report(path, f"expected a list, got {_show(value)}")
        (item,) = typing.get_args(tp)
        for index, element in enumerate(value):
            check_typed(item, element, (*path, index), report)
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return report(path, f"expected a mapping, got {_show(value)}")
        _, item = typing.get_args(tp)
        for key, element in value.items():
            check_typed(item, element, (*path, str(key)), report)
        return None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [member.value for member in tp]
        if str(value) not in allowed:
            report(path, f"{_show(value)} is not one of {', '.join(map(str, allowed))}")
        return None
    return check_scalar(_scalar_name(tp), value, path, report)


def _is_variable(tp: Any) -> bool:
    from databricks.bundles.core import Variable

    return tp is Variable or typing.get_origin(tp) is Variable


def _kind_matches(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if isinstance(value, list):
        return origin is list
    if isinstance(value, dict):
        return origin is dict or dataclasses.is_dataclass(tp)
    return origin not in (list, dict) and not dataclasses.is_dataclass(tp)


def _scalar_name(tp: Any) -> str:
    return {str: "string", int: "int", float: "float", bool: "bool"}.get(tp, "any")


def _check_dataclass(cls: Any, value: Any, path: Path_, report: Report) -> None:
    if not isinstance(value, dict):
        return report(path, f"expected a mapping of {cls.__name__} keys, got {_show(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in value:
        if key not in fields:
            report((*path, str(key)), _unknown_key(str(key), sorted(fields)))
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in value:
            if required:
                report((*path, name), "required key is missing")
            continue
        check_typed(hints[name], value[name], (*path, name), report)
    return None


def check_from_dict(cls: Any, value: Any, path: Path_, report: Report) -> None:
    """The package's own parser, as a backstop for anything the walk above does not model."""
    try:
        cls.from_dict(value)
    except Exception as exc:  # from_dict raises ValueError/TypeError/KeyError with the reason
        report(path, f"rejected by databricks-bundles {cls.__name__}.from_dict: {exc}")


# ------------------------------------------------------------------------------------ vendored shapes


def check_shape(shape: Any, value: Any, path: Path_, report: Report) -> None:
    """Walk ``value`` against a vendored shape expression (see scripts/vendor_bundle_schema.py)."""
    if value is None or is_reference(value) or shape in ("any", "resources"):
        return None
    if isinstance(shape, dict) and "list" in shape:
        if not isinstance(value, list):
            return report(path, f"expected a list, got {_show(value)}")
        for index, element in enumerate(value):
            check_shape(shape["list"], element, (*path, index), report)
        return None
    if isinstance(shape, dict) and "map" in shape:
        if not isinstance(value, dict):
            return report(path, f"expected a mapping, got {_show(value)}")
        for key, element in value.items():
            check_shape(shape["map"], element, (*path, str(key)), report)
        return None
    if isinstance(shape, dict) and "enum" in shape:
        if str(value) not in shape["enum"]:
            report(path, f"{_show(value)} is not one of {', '.join(shape['enum'])}")
        return None
    if shape in ("string", "int", "float", "bool"):
        return check_scalar(shape, value, path, report)
    definition = SHAPES["types"].get(shape) if isinstance(shape, str) else None
    if definition is None:
        return None
    if shape == "variable.TargetVariable" and not (
        isinstance(value, dict) and value and set(value) <= set(definition["fields"])
    ):
        return None  # a target may set a variable's value directly, of any type
    return check_object(definition, value, path, report, shape)


def check_object(definition: dict[str, Any], value: Any, path: Path_, report: Report, name: str) -> None:
    if not isinstance(value, dict):
        return report(path, f"expected a mapping of {name} keys, got {_show(value)}")
    fields = definition["fields"]
    for key, element in value.items():
        if key not in fields:
            report((*path, str(key)), _unknown_key(str(key), sorted(fields)))
        else:
            check_shape(fields[key], element, (*path, str(key)), report)
    for key in definition.get("required", []):
        if key not in value:
            report((*path, key), "required key is missing")
    return None


def check_scalar(kind: str, value: Any, path: Path_, report: Report) -> None:
    """Scalars the way the CLI normalizes them: "5" is a fine int, a mapping is never a string."""
    if kind == "any":
        return None
    if isinstance(value, (dict, list)):
        return report(path, f"expected a single {kind} value, got {_show(value)}")
    if kind == "string":
        return None
    if kind == "bool":
        if not (isinstance(value, bool) or str(value) in _TRUE | _FALSE):
            report(path, f"{_show(value)} is not true or false")
        return None
    if isinstance(value, bool):
        return report(path, f"{_show(value)} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        return report(path, f"{_show(value)} is not {'an integer' if kind == 'int' else 'a number'}")
    if kind == "int" and not number.is_integer():
        report(path, f"{_show(value)} is not an integer")
    return None
