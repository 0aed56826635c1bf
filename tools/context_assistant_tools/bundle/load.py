"""Load a Databricks Asset Bundle the way the Databricks CLI does, without the CLI or a workspace.

``databricks.yml`` plus its ``include`` globs are merged, then the chosen target's overrides are applied with
the CLI's documented semantics (``libs/dyn/merge``): mappings merge key by key with the later value winning,
sequences concatenate, and some sequences are then merged by key — job tasks by ``task_key``, job clusters by
``job_cluster_key``, job parameters by ``name``, app resources by ``name``. ``${var.*}`` references are then
resolved from variable defaults and the target's values; other references are left as written.

Every value remembers the file and line it came from, so a problem can be reported where it is written.
"""

from __future__ import annotations

import copy
import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

# Sequences the CLI merges by a key after the plain concatenation (resourcemutator/merge_*.go).
KEYED_SEQUENCES: tuple[tuple[str, str, str], ...] = (
    ("jobs", "tasks", "task_key"),
    ("jobs", "job_clusters", "job_cluster_key"),
    ("jobs", "parameters", "name"),
    ("apps", "resources", "name"),
)
REFERENCE = re.compile(r"\$\{([^${}]+)\}")
WHOLE_REFERENCE = re.compile(r"^\$\{([^${}]+)\}$")


class BundleLoadError(Exception):
    """The bundle cannot be read at all (no databricks.yml, YAML syntax error, unknown target)."""


class UnknownTarget(BundleLoadError):
    """``--target`` names a target databricks.yml does not have (a usage error: exit code 2)."""


@dataclass(frozen=True)
class Location:
    file: str  # relative to the bundle root, with / separators
    line: int  # 1-based


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the bundle; ``str()`` is the line shown to the user."""

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.file}: {self.path}: {self.message}{where}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "path": self.path, "message": self.message}


@dataclass
class LoadedBundle:
    root: Path
    target: str
    written: dict[str, Any]  # databricks.yml with its includes merged, targets included, as written
    config: dict[str, Any]  # merged for the target, ${var.*} resolved
    raw: dict[str, Any]  # merged for the target, references as written
    mode: str  # the target's mode ("development", "production" or "")
    variables: dict[str, Any]  # resolved value of each declared variable (missing: no value)
    locations: dict[Path_, Location] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # YAML files read, relative to root
    problems: list[Problem] = field(default_factory=list)  # found while loading

    def locate(self, path: Path_) -> Location:
        """Where ``path`` (or its nearest written ancestor) is written."""
        for end in range(len(path), -1, -1):
            location = self.locations.get(tuple(path[:end]))
            if location is not None:
                return location
        return Location("databricks.yml", 1)

    def problem(self, path: Path_, message: str) -> Problem:
        location = self.locate(path)
        return Problem(location.file, dotted(path), message, location.line)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ------------------------------------------------------------------------------------------------ YAML


class _Loader(yaml.SafeLoader):
    """Safe YAML, except that yes/no/on/off stay strings as they do for the Databricks CLI (YAML 1.2)."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(root: Path, relative: str) -> tuple[Any, dict[Path_, Location]]:
    """Parse one file; returns the data and the line of every mapping key and sequence item in it."""
    text = (root / relative).read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise BundleLoadError(f"{relative}:{line} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    locations: dict[Path_, Location] = {}
    if node is not None:
        _walk(node, (), relative, locations)
    return data, locations


def _walk(node: yaml.Node, path: Path_, file: str, out: dict[Path_, Location]) -> None:
    out.setdefault(path, Location(file, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, str(key.value))
            out[child] = Location(file, key.start_mark.line + 1)
            _walk(value, child, file, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), file, out)


# ----------------------------------------------------------------------------------------------- merge


def merge(a: Any, b: Any) -> Any:
    """The CLI's merge: maps key by key (b wins), sequences concatenated, scalars replaced; None yields."""
    if a is None:
        return copy.deepcopy(b)
    if b is None:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if isinstance(a, list) and isinstance(b, list):
        return [*a, *copy.deepcopy(b)]
    return copy.deepcopy(b)


def merge_by_key(items: list[Any], key: str) -> list[Any]:
    """Merge sequence elements that share ``key`` into the first of them, keeping first-seen order."""
    out: list[Any] = []
    index: dict[Any, int] = {}
    for item in items:
        name = item.get(key) if isinstance(item, dict) else None
        if name is None:
            out.append(item)
        elif name in index:
            out[index[name]] = merge(out[index[name]], item)
        else:
            index[name] = len(out)
            out.append(item)
    return out


def _apply_keyed_merges(config: dict[str, Any]) -> None:
    resources = config.get("resources")
    if not isinstance(resources, dict):
        return
    for kind, sequence, key in KEYED_SEQUENCES:
        group = resources.get(kind)
        if not isinstance(group, dict):
            continue
        for resource in group.values():
            if isinstance(resource, dict) and isinstance(resource.get(sequence), list):
                resource[sequence] = merge_by_key(resource[sequence], key)


# ----------------------------------------------------------------------------------------------- load


def load_bundle(
    root: str | Path, target: str | None = None, overrides: dict[str, str] | None = None
) -> LoadedBundle:
    """Read ``root/databricks.yml`` and its includes and apply ``target`` (default: the default target).

    ``overrides`` are variable values given as the CLI's ``--var name=value`` / ``BUNDLE_VAR_name``: they
    win over the target's values and the defaults.
    """
    root = Path(root).resolve()
    if not (root / "databricks.yml").is_file():
        raise BundleLoadError(f"no databricks.yml in {root}")
    base, locations = read_yaml(root, "databricks.yml")
    if not isinstance(base, dict):
        raise BundleLoadError("databricks.yml: the top level must be a mapping")
    files = ["databricks.yml"]
    problems: list[Problem] = []
    merged = copy.deepcopy(base)

    include = base.get("include") or []
    for index, pattern in enumerate(include if isinstance(include, list) else []):
        matches = sorted(glob.glob(str(pattern), root_dir=root, recursive=True))
        if not matches:
            where = locations.get(("include", index), Location("databricks.yml", 1))
            problems.append(Problem(where.file, f"include[{index}]", f"{pattern!r} matches no file", where.line))
        for relative in matches:
            relative = Path(relative).as_posix()
            if relative in files:
                continue
            data, file_locations = read_yaml(root, relative)
            files.append(relative)
            if data is None:
                continue
            if not isinstance(data, dict):
                problems.append(Problem(relative, "(top level)", "must be a mapping of keys"))
                continue
            problems += _duplicate_resources(merged, data, relative, file_locations, locations)
            merged = merge(merged, data)
            for path, location in file_locations.items():
                locations.setdefault(path, location)

    targets = merged.get("targets") or {}
    if not isinstance(targets, dict):
        targets = {}
    name = target or _default_target(targets)
    if name is not None and name not in targets:
        known = ", ".join(targets) or "none"
        raise UnknownTarget(f"unknown target {name!r} (targets in databricks.yml: {known})")
    raw = {key: value for key, value in merged.items() if key not in ("targets", "environments")}
    if name is not None:
        raw, problems_from_target = _apply_target(raw, targets[name] or {}, name, locations)
        problems += problems_from_target
    _apply_keyed_merges(raw)
    for var, value in (overrides or {}).items():
        declared = raw.get("variables") or {}
        if var in declared:
            spec = declared[var] if isinstance(declared[var], dict) else {}
            declared[var] = {**{k: v for k, v in spec.items() if k != "lookup"}, "default": value}

    variables = resolve_variables(raw.get("variables") or {})
    resolved = substitute_variables(raw, variables)
    return LoadedBundle(
        root=root,
        target=name or "",
        written=merged,
        config=resolved,
        mode=str((targets.get(name) or {}).get("mode") or "") if name else "",
        raw=raw,
        variables=variables,
        locations=locations,
        files=files,
        problems=problems,
    )


def _default_target(targets: dict[str, Any]) -> str | None:
    for name, body in targets.items():
        if isinstance(body, dict) and body.get("default") is True:
            return name
    return next(iter(targets), None) if len(targets) == 1 else None


def _duplicate_resources(
    merged: dict[str, Any],
    data: dict[str, Any],
    file: str,
    file_locations: dict[Path_, Location],
    locations: dict[Path_, Location],
) -> list[Problem]:
    """The CLI refuses a resource key defined in two files; so do we, naming both places."""
    problems = []
    for kind, group in (data.get("resources") or {}).items():
        existing = (merged.get("resources") or {}).get(kind) or {}
        if not isinstance(group, dict) or not isinstance(existing, dict):
            continue
        for key in group:
            if key in existing:
                other = locations.get(("resources", kind, key))
                line = file_locations.get(("resources", kind, key), Location(file, 1)).line
                elsewhere = f" (also defined in {other.file})" if other else ""
                problems.append(
                    Problem(file, f"resources.{kind}.{key}", f"defined more than once{elsewhere}", line)
                )
    return problems


TARGET_OVERRIDES = ("artifacts", "bundle", "permissions", "presets", "resources", "run_as", "sync", "workspace")


def _apply_target(
    raw: dict[str, Any], body: dict[str, Any], name: str, locations: dict[Path_, Location]
) -> tuple[dict[str, Any], list[Problem]]:
    problems: list[Problem] = []
    out = dict(raw)
    for key in TARGET_OVERRIDES:
        if key in body:
            out[key] = merge(out.get(key), body[key])
            prefix = ("targets", name, key)
            for path, location in list(locations.items()):
                if path[: len(prefix)] == prefix:
                    locations.setdefault((key, *path[len(prefix) :]), location)
    declared = out.get("variables") or {}
    overrides = body.get("variables") or {}
    if isinstance(overrides, dict):
        out["variables"] = {k: dict(v) if isinstance(v, dict) else v for k, v in declared.items()}
        for var, value in overrides.items():
            path = ("targets", name, "variables", var)
            if var not in declared:
                where = locations.get(path, Location("databricks.yml", 1))
                problems.append(
                    Problem(
                        where.file,
                        dotted(path),
                        f"sets variable {var!r}, which is not declared under variables",
                        where.line,
                    )
                )
                continue
            current = out["variables"][var] if isinstance(out["variables"][var], dict) else {}
            if isinstance(value, dict) and set(value) <= {"default", "lookup", "description", "type"} and value:
                current = {**current, **value}
                if "lookup" in value:
                    current.pop("default", None)
            else:
                current = {**current, "default": value}
                current.pop("lookup", None)
            out["variables"][var] = current
    return out, problems


# ------------------------------------------------------------------------------------------ variables

MISSING = object()


def resolve_variables(declared: dict[str, Any]) -> dict[str, Any]:
    """Each variable's value: its default, with ``${var.*}`` inside defaults resolved (lookups stay unknown).

    A variable with neither default nor lookup maps to :data:`MISSING` (the CLI asks for ``--var``).
    """
    values: dict[str, Any] = {}
    for name, spec in (declared or {}).items():
        if isinstance(spec, dict) and "default" in spec:
            values[name] = spec["default"]
        elif isinstance(spec, dict) and "lookup" in spec:
            values[name] = f"<lookup {name}>"
        else:
            values[name] = MISSING
    for _ in range(10):  # defaults may refer to other variables; a cycle just stays unresolved
        values = {name: substitute_variables(value, values) for name, value in values.items()}
    return values


def substitute_variables(value: Any, variables: dict[str, Any]) -> Any:
    """Replace ``${var.name}`` (and ``${var.name.field}`` / ``[i]``) with values; other references stay."""
    if isinstance(value, dict):
        return {key: substitute_variables(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute_variables(item, variables) for item in value]
    if not isinstance(value, str) or "${var." not in value:
        return value
    whole = WHOLE_REFERENCE.match(value)
    if whole:
        found = _variable_value(whole.group(1), variables)
        return value if found is MISSING else found

    def replace(match: re.Match[str]) -> str:
        found = _variable_value(match.group(1), variables)
        if found is MISSING or isinstance(found, (dict, list)):
            return match.group(0)
        return str(found).lower() if isinstance(found, bool) else str(found)

    return REFERENCE.sub(replace, value)


def _variable_value(reference: str, variables: dict[str, Any]) -> Any:
    parts = split_reference(reference)
    if len(parts) < 2 or parts[0] != "var" or parts[1] not in variables:
        return MISSING
    value = variables[parts[1]]
    for part in parts[2:]:
        in_dict = isinstance(value, dict) and isinstance(part, str) and part in value
        in_list = isinstance(value, list) and isinstance(part, int) and part < len(value)
        if in_dict or in_list:
            value = value[part]
        else:
            return MISSING
    return value


def split_reference(reference: str) -> list[str | int]:
    """``resources.jobs.x.tasks[0].task_key`` → ['resources', 'jobs', 'x', 'tasks', 0, 'task_key']."""
    parts: list[str | int] = []
    for piece in reference.split("."):
        name, *indexes = re.split(r"\[", piece)
        if name:
            parts.append(name)
        for index in indexes:
            digits = index.rstrip("]")
            parts.append(int(digits) if digits.isdigit() else digits)
    return parts
