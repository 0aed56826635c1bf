"""Offline validation of the Databricks Asset Bundle (``context-assistant bundle validate``; CI runs it).

``databricks bundle validate`` needs the CLI and a workspace login; this needs neither, so every commit is
checked. It loads ``databricks.yml`` with its includes and the target's overrides (:mod:`.load`),
then reports, each with the file, YAML path and line where it is written:

* unknown keys, missing required keys and wrong value types — resources against the ``databricks-bundles``
  typed classes, the rest against shapes from the CLI's JSON schema (:mod:`.shapes`);
* ``${var.x}`` naming an undeclared variable, a variable without a value, ``${resources.<type>.<key>...}``
  naming a resource that does not exist, unknown ``${bundle...}`` / ``${workspace...}`` fields;
* files that do not exist: notebooks, Python files, app source folders, app.yaml, local libraries;
* Quartz cron expressions and time zones of job schedules;
* python_wheel_task entry points: declared in ``pyproject.toml`` ``[project.scripts]`` of the wheel the bundle
  builds, with a target that imports and is callable (checked in a fresh interpreter on the bundle's ``src``);
* task graph: unique task keys, ``depends_on`` and ``environment_key`` that exist;
* app resources: one kind each, and every ``valueFrom`` in app.yaml naming one of them;
* deploy rules (:mod:`.deploy`): permission lists that would take an app's grants away on the second
  deploy, application ids in ``user_name``, dev app / Lakebase names without the user's name, app names over
  30 characters, ``bundle.databricks_cli_version`` for Lakebase resources.

What it cannot know offline (workspace objects, permissions, whether a serving endpoint exists) is left to
``databricks bundle validate`` / ``deploy``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .deploy import check_deploy_rules
from .load import (
    MISSING,
    REFERENCE,
    BundleLoadError,
    LoadedBundle,
    Path_,
    Problem,
    dotted,
    load_bundle,
    split_reference,
)
from .quartz import check_quartz
from .schema import SHAPES
from .shapes import (
    check_from_dict,
    check_object,
    check_shape,
    is_reference,
    typed_resource_classes,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pip's vendored copy of tomli is always there in a dev setup
    from pip._vendor import tomli as tomllib

__all__ = ["BundleLoadError", "BundleReport", "Problem", "validate_bundle"]

TOP_LEVEL_PERMISSION_LEVELS = ("CAN_MANAGE", "CAN_VIEW", "CAN_RUN")
PRINCIPAL_KEYS = ("user_name", "group_name", "service_principal_name")
MODES = ("development", "production")
BUNDLE_FIELDS = {"name", "target", "git", "uuid", "environment", "databricks_cli_version", "cluster_id"}
WORKSPACE_FIELDS = {
    "current_user",
    "root_path",
    "file_path",
    "artifact_path",
    "state_path",
    "resource_path",
    "host",
    "profile",
}
CURRENT_USER_FIELDS = {
    "userName",
    "short_name",
    "displayName",
    "id",
    "domain_friendly_name",
    "active",
    "emails",
    "groups",
    "name",
    "externalId",
}
NOTEBOOK_SUFFIXES = ("", ".py", ".ipynb", ".sql", ".scala", ".r", ".R")


@dataclass
class BundleReport:
    """What validation found for one target; ``ok`` when nothing."""

    target: str
    root: str
    problems: list[Problem] = field(default_factory=list)
    resources: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The shape ``bundle validate --json`` prints (documented in the README)."""
        return {
            "target": self.target,
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
            "resources": self.resources,
            "files": self.files,
        }


def validate_bundle(
    root: str | Path = ".",
    target: str | None = None,
    *,
    check_imports: bool = True,
    variables: dict[str, str] | None = None,
) -> BundleReport:
    """Validate the bundle in ``root`` for ``target`` (default: the default target).

    Raises :class:`BundleLoadError` when the bundle cannot be read at all; everything else is a problem in
    the report. ``check_imports=False`` skips importing entry points (no subprocess). ``variables`` are
    values as the CLI's ``--var`` gives them (the caller adds ``BUNDLE_VAR_*`` from its environment).
    """
    bundle = load_bundle(root, target, variables)
    checker = _Checker(bundle, check_imports=check_imports)
    checker.run()
    resources = bundle.config.get("resources") or {}
    return BundleReport(
        target=bundle.target,
        root=str(bundle.root),
        problems=_unique(bundle.problems + checker.problems),
        resources={
            kind: sorted(group) for kind, group in sorted(resources.items()) if isinstance(group, dict) and group
        },
        files=bundle.files,
    )


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for problem in problems:
        key = (problem.file, problem.path, problem.message)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


class _Checker:
    def __init__(self, bundle: LoadedBundle, *, check_imports: bool) -> None:
        self.bundle = bundle
        self.check_imports = check_imports
        self.problems: list[Problem] = []
        self.resources: dict[str, Any] = self.bundle.config.get("resources") or {}
        self.entry_points: list[tuple[Path_, str, str]] = []  # (path, script name, "module:attr")

    def report(self, path: Path_, message: str) -> None:
        self.problems.append(self.bundle.problem(path, message))

    def run(self) -> None:
        check_object(SHAPES["root"], self.bundle.written, (), self.report, "databricks.yml")
        if not isinstance(self.resources, dict):
            return
        self.check_mode_and_permissions()
        check_deploy_rules(self.bundle, self.report)
        self.check_variables()
        self.check_references(self.bundle.raw, ())
        self.check_resource_shapes()
        for key, job in _items(self.resources.get("jobs")):
            self.check_job(key, job)
        for key, app in _items(self.resources.get("apps")):
            self.check_app(key, app)
        if self.check_imports and self.entry_points:
            self.check_entry_point_imports()

    # -------------------------------------------------------------------------------- top level

    def check_mode_and_permissions(self) -> None:
        for name, body in _items(self.bundle.written.get("targets")):
            mode = body.get("mode")
            if mode is not None and mode not in MODES and not is_reference(mode):
                self.report(("targets", name, "mode"), f"{mode!r} is not one of {', '.join(MODES)}")
            if mode == "production" and "workspace" not in body and "root_path" not in str(body):
                self.report(
                    ("targets", name, "mode"),
                    "production mode needs an explicit workspace.root_path (shared by everyone who deploys)",
                )
        places: list[tuple[Path_, Any]] = [(("permissions",), self.bundle.written.get("permissions"))]
        for name, body in _items(self.bundle.written.get("targets")):
            places.append((("targets", name, "permissions"), body.get("permissions")))
        for base, permissions in places:
            for index, entry in enumerate(permissions if isinstance(permissions, list) else []):
                if not isinstance(entry, dict):
                    continue
                level = entry.get("level")
                if level not in TOP_LEVEL_PERMISSION_LEVELS and not is_reference(level):
                    self.report(
                        (*base, index, "level"),
                        f"{level!r}: bundle permissions take {', '.join(TOP_LEVEL_PERMISSION_LEVELS)}",
                    )
                principals = [key for key in PRINCIPAL_KEYS if entry.get(key)]
                if len(principals) != 1:
                    self.report((*base, index), f"needs exactly one of {', '.join(PRINCIPAL_KEYS)}")

    def check_variables(self) -> None:
        for name, value in self.bundle.variables.items():
            if value is MISSING:
                self.report(
                    ("variables", name),
                    f"variable {name!r} has no default and target {self.bundle.target!r} sets no value "
                    f"(add one, or pass --var {name}=...)",
                )

    # ------------------------------------------------------------------------------- references

    def check_references(self, value: Any, path: Path_) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                self.check_references(item, (*path, str(key)))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.check_references(item, (*path, index))
        elif isinstance(value, str) and "${" in value:
            for match in REFERENCE.finditer(value):
                problem = self.reference_problem(match.group(1))
                if problem:
                    self.report(path, problem)

    def reference_problem(self, reference: str) -> str | None:
        parts = split_reference(reference)
        head = parts[0] if parts else ""
        declared = self.bundle.raw.get("variables") or {}
        if head == "var":
            if len(parts) < 2 or parts[1] not in declared:
                name = parts[1] if len(parts) > 1 else ""
                return f"${{{reference}}} uses variable {name!r}, which is not declared under variables"
            return None
        if head == "resources":
            if len(parts) < 4:
                return f"${{{reference}}} must name a field: ${{resources.<type>.<key>.<field>}}"
            kind, key = parts[1], parts[2]
            group = self.bundle.raw.get("resources", {}).get(kind)
            if not isinstance(group, dict) or key not in group:
                return f"${{{reference}}} refers to resources.{kind}.{key}, which is not defined in this bundle"
            return None
        if head == "bundle":
            if len(parts) < 2 or parts[1] not in BUNDLE_FIELDS:
                return f"${{{reference}}} is not a bundle field ({', '.join(sorted(BUNDLE_FIELDS))})"
            return None
        if head == "workspace":
            if len(parts) < 2 or parts[1] not in WORKSPACE_FIELDS:
                return f"${{{reference}}} is not a workspace field ({', '.join(sorted(WORKSPACE_FIELDS))})"
            if parts[1] == "current_user" and (len(parts) < 3 or parts[2] not in CURRENT_USER_FIELDS):
                return f"${{{reference}}} is not a current_user field (e.g. userName, short_name)"
            return None
        if head == "artifacts":
            if len(parts) < 2 or parts[1] not in (self.bundle.raw.get("artifacts") or {}):
                return f"${{{reference}}} refers to an artifact that is not defined"
            return None
        return f"${{{reference}}}: unknown reference (var, resources, bundle, workspace or artifacts)"

    # -------------------------------------------------------------------------------- resources

    def check_resource_shapes(self) -> None:
        classes = typed_resource_classes()
        known = SHAPES["resource_types"]
        for kind, group in self.resources.items():
            path: Path_ = ("resources", kind)
            if kind not in known and kind not in classes:
                close = [k for k in known if k.rstrip("s") == kind.rstrip("s")] or sorted(known)[:0]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.report(path, f"unknown resource type{hint}")
                continue
            if not isinstance(group, dict):
                self.report(path, "expected a mapping of resource keys to definitions")
                continue
            for key, body in group.items():
                where = (*path, str(key))
                before = len(self.problems)
                if kind in classes:
                    from .shapes import check_typed

                    check_typed(classes[kind], body, where, self.report)
                    if len(self.problems) == before:
                        check_from_dict(classes[kind], body, where, self.report)
                elif kind in SHAPES["vendored_resources"]:
                    check_shape(known[kind], body, where, self.report)

    def check_job(self, key: str, job: dict[str, Any]) -> None:
        base: Path_ = ("resources", "jobs", key)
        tasks = [t for t in job.get("tasks") or [] if isinstance(t, dict)]
        keys = [t.get("task_key") for t in tasks]
        environments = {e.get("environment_key") for e in job.get("environments") or [] if isinstance(e, dict)}
        for index, task in enumerate(tasks):
            path = (*base, "tasks", index)
            task_key = task.get("task_key")
            if keys.count(task_key) > 1:
                self.report((*path, "task_key"), f"task_key {task_key!r} is used by more than one task")
            for dep_index, dependency in enumerate(task.get("depends_on") or []):
                wanted = dependency.get("task_key") if isinstance(dependency, dict) else None
                if wanted not in keys:
                    self.report(
                        (*path, "depends_on", dep_index, "task_key"),
                        f"{wanted!r} is not a task of this job (tasks: {', '.join(map(str, keys))})",
                    )
            env_key = task.get("environment_key")
            if env_key is not None and env_key not in environments:
                self.report((*path, "environment_key"), f"{env_key!r} is not one of the job's environments")
            self.check_task_files(path, task)
        schedule = job.get("schedule")
        if isinstance(schedule, dict):
            self.check_schedule((*base, "schedule"), schedule)
        for index, environment in enumerate(job.get("environments") or []):
            spec = environment.get("spec") if isinstance(environment, dict) else None
            for dep_index, dependency in enumerate((spec or {}).get("dependencies") or []):
                self.check_library((*base, "environments", index, "spec", "dependencies", dep_index), dependency)

    def check_schedule(self, path: Path_, schedule: dict[str, Any]) -> None:
        cron = schedule.get("quartz_cron_expression")
        if isinstance(cron, str) and not is_reference(cron):
            problem = check_quartz(cron)
            if problem:
                self.report((*path, "quartz_cron_expression"), f"{cron!r} {problem}")
        zone = schedule.get("timezone_id")
        if isinstance(zone, str) and not is_reference(zone) and not _known_time_zone(zone):
            self.report((*path, "timezone_id"), f"{zone!r} is not a known time zone")

    def check_task_files(self, path: Path_, task: dict[str, Any]) -> None:
        notebook = (task.get("notebook_task") or {}).get("notebook_path")
        if (
            isinstance(notebook, str)
            and _is_local(notebook)
            and (task.get("notebook_task") or {}).get("source") != "GIT"
        ):
            found = self.local_path((*path, "notebook_task", "notebook_path"), notebook)
            if not any(Path(str(found) + suffix).is_file() for suffix in NOTEBOOK_SUFFIXES):
                self.report((*path, "notebook_task", "notebook_path"), f"notebook {notebook!r} does not exist")
        python_file = (task.get("spark_python_task") or {}).get("python_file")
        if isinstance(python_file, str) and _is_local(python_file):
            found = self.local_path((*path, "spark_python_task", "python_file"), python_file)
            if not found.is_file():
                self.report((*path, "spark_python_task", "python_file"), f"file {python_file!r} does not exist")
        wheel = task.get("python_wheel_task")
        if isinstance(wheel, dict):
            self.check_wheel_task((*path, "python_wheel_task"), wheel)
        for index, library in enumerate(task.get("libraries") or []):
            if isinstance(library, dict) and isinstance(library.get("whl"), str):
                self.check_library((*path, "libraries", index, "whl"), library["whl"])

    def check_library(self, path: Path_, value: Any) -> None:
        """A local wheel/requirements path must exist, or be built by one of the bundle's artifacts."""
        if not isinstance(value, str) or not _is_local(value) or not _looks_like_path(value):
            return
        found = self.local_path(path, value)
        if glob.glob(str(found)):
            return
        for name, artifact in _items(self.bundle.config.get("artifacts")):
            artifact_dir = (self.bundle.root / str(artifact.get("path") or ".")).resolve()
            if artifact.get("type") == "whl" and found.parent == artifact_dir / "dist" and value.endswith(".whl"):
                return  # built at deploy time by artifacts.<name>
            del name
        self.report(path, f"{value!r} matches no file and no artifact of this bundle builds it")

    def local_path(self, path: Path_, value: str) -> Path:
        """Relative paths are relative to the YAML file that wrote them, as the CLI resolves them."""
        file = self.bundle.locate(path).file
        return (self.bundle.root / file).parent.joinpath(value).resolve()

    def check_wheel_task(self, path: Path_, task: dict[str, Any]) -> None:
        package, entry_point = task.get("package_name"), task.get("entry_point")
        if not isinstance(package, str) or not isinstance(entry_point, str):
            return
        for _, artifact in _items(self.bundle.config.get("artifacts")):
            if artifact.get("type") != "whl":
                continue
            pyproject = (self.bundle.root / str(artifact.get("path") or ".")) / "pyproject.toml"
            if not pyproject.is_file():
                continue
            try:
                project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
            except tomllib.TOMLDecodeError as exc:
                self.report(path, f"{pyproject.name} is not valid TOML: {exc}")
                return
            if _normalize(project.get("name", "")) != _normalize(package):
                continue
            scripts = project.get("scripts") or {}
            if entry_point not in scripts:
                declared = ", ".join(sorted(scripts)) or "none"
                self.report(
                    (*path, "entry_point"),
                    f"{entry_point!r} is not an entry point of {project.get('name')} in pyproject.toml "
                    f"[project.scripts] (declared: {declared})",
                )
                return
            self.entry_points.append(((*path, "entry_point"), entry_point, str(scripts[entry_point])))
            return
        self.report(
            (*path, "package_name"),
            f"{package!r} is not the project name of any wheel artifact in this bundle (pyproject.toml)",
        )

    def check_entry_point_imports(self) -> None:
        """Import every entry point's target in a fresh interpreter, on this bundle's src/ folder."""
        targets = sorted({target for _, _, target in self.entry_points})
        env = dict(os.environ)
        src = self.bundle.root / "src"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
        try:
            result = subprocess.run(
                [sys.executable, "-c", _IMPORT_PROBE, json.dumps(targets)],
                capture_output=True,
                text=True,
                env=env,
                cwd=self.bundle.root,
                timeout=120,
                check=False,
            )
            outcome = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
        except (subprocess.TimeoutExpired, json.JSONDecodeError, OSError) as exc:
            outcome = dict.fromkeys(targets, f"could not run the import check: {exc}")
        for path, name, target in self.entry_points:
            problem = outcome.get(target, "the import check printed nothing")
            if problem:
                self.report(path, f"entry point {name!r} = {target!r} does not load: {problem}")

    # ------------------------------------------------------------------------------------- apps

    def check_app(self, key: str, app: dict[str, Any]) -> None:
        base: Path_ = ("resources", "apps", key)
        names = []
        for index, resource in enumerate(app.get("resources") or []):
            if not isinstance(resource, dict):
                continue
            names.append(resource.get("name"))
            kinds = [k for k in resource if k not in ("name", "description")]
            if len(kinds) != 1:
                self.report(
                    (*base, "resources", index),
                    f"needs exactly one resource kind (serving_endpoint, postgres, ...), found {len(kinds)}",
                )
        source = app.get("source_code_path")
        if not isinstance(source, str) or is_reference(source):
            return
        folder = self.local_path((*base, "source_code_path"), source)
        if not folder.is_dir():
            self.report((*base, "source_code_path"), f"folder {source!r} does not exist")
            return
        config_files = [folder / name for name in ("app.yaml", "app.yml") if (folder / name).is_file()]
        if app.get("config") is not None and config_files:
            self.report(
                (*base, "config"),
                f"set here and in {config_files[0].name} in the source folder; keep only one "
                "(the CLI writes config over app.yml)",
            )
        for config_file in config_files:
            self.check_app_yaml(base, config_file, folder, set(filter(None, names)))

    def check_app_yaml(self, base: Path_, file: Path, folder: Path, names: set[str]) -> None:
        relative = (
            file.relative_to(self.bundle.root).as_posix() if file.is_relative_to(self.bundle.root) else str(file)
        )

        def problem(where: str, message: str) -> None:
            self.problems.append(Problem(relative, where, message))

        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            problem("(file)", f"is not valid YAML: {exc}")
            return
        if not isinstance(data, dict):
            problem("(file)", "must be a mapping with command and env")
            return
        for key in data:
            if key not in ("command", "env"):
                problem(str(key), "unknown key (app.yaml takes command and env)")
        command = data.get("command")
        if command is not None:
            if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
                problem("command", "must be a list of strings (it is not run in a shell)")
            elif (
                len(command) >= 2
                and command[0].startswith("python")
                and command[1].endswith(".py")
                and not (folder / command[1]).is_file()
            ):
                problem("command", f"runs {command[1]!r}, which is not in the app's source folder")
        for index, entry in enumerate(data.get("env") or []):
            where = f"env[{index}]"
            if not isinstance(entry, dict) or not entry.get("name"):
                problem(where, "each entry needs a name")
                continue
            has_value, has_from = "value" in entry, "valueFrom" in entry
            if has_value == has_from:
                problem(where, f"{entry['name']}: needs exactly one of value and valueFrom")
            if has_from and entry["valueFrom"] not in names:
                problem(
                    f"{where}.valueFrom",
                    f"{entry['name']}: {entry['valueFrom']!r} is not a resource of the app "
                    f"(resources: {', '.join(sorted(names))})",
                )
            if has_value and "${" in str(entry["value"]):
                problem(
                    f"{where}.value",
                    f"{entry['name']}: app.yaml is not interpolated; use valueFrom with an app resource",
                )


_IMPORT_PROBE = """
import importlib, json, sys
out = {}
for target in json.loads(sys.argv[1]):
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        out[target] = None if callable(obj) else "not callable"
    except Exception as exc:
        out[target] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def _items(group: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(group, dict):
        return []
    return [(str(k), v) for k, v in group.items() if isinstance(v, dict)]


def _is_local(value: str) -> bool:
    return not is_reference(value) and not re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|/)", value) and "${" not in value


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".whl", ".txt", ".jar"))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _known_time_zone(name: str) -> bool:
    if name in zoneinfo.available_timezones():
        return True
    try:
        zoneinfo.ZoneInfo(name)
        return True
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False


def format_report(report: BundleReport) -> str:
    """The human-readable form ``bundle validate`` prints."""
    lines = [f"Bundle {report.root} — target {report.target!r}"]
    counts = ", ".join(f"{len(keys)} {kind}" for kind, keys in report.resources.items())
    lines.append(f"Resources: {counts or 'none'}")
    if report.ok:
        lines.append("Validation OK: no problems found.")
    else:
        lines.append(f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''}:")
        lines += [f"  {problem}" for problem in report.problems]
    return "\n".join(lines)


def problem_at(bundle: LoadedBundle, path: Path_, message: str) -> Problem:  # pragma: no cover - helper
    return Problem(bundle.locate(path).file, dotted(path), message, bundle.locate(path).line)
