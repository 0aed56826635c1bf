"""Deploy-time rules the offline validator adds to the schema checks: what breaks on a real workspace.

Each rule is something ``databricks bundle deploy`` accepts and a workspace then gets wrong:

* **App grants overwritten.** An app resource (``job``, ``experiment``, ``postgres``...) grants the app's
  service principal a level on a bundle resource at the first deploy; if that resource has a permission
  list — its own or the target's top-level ``permissions`` — without the service principal, the second
  deploy replaces the resource's ACL and the grant is gone (databricks/cli#4309; the CLI only warns). A list
  that drops the level, or lists the service principal below it, is an error here.
* **A UUID in ``user_name``.** A service principal's application id is not a user; and in a production
  target ``${workspace.current_user.userName}`` *is* that id when CI deploys as a service principal.
* **Dev deploys that collide.** Development mode prefixes jobs and schemas with the user, but not apps or
  Lakebase projects: their names must carry ``${workspace.current_user.domain_friendly_name}`` (the
  ``short_name`` may hold ``_`` and capitals, which app names and project ids do not allow). App names have
  at most 30 characters.
* **Production files and experiments under /Workspace/Shared.** Every workspace user has CAN MANAGE on
  everything in the Shared folder (Databricks docs, "Folder permissions": special folders), and a folder's
  permissions are inherited, never narrowed: a production ``root_path`` there lets anyone replace the wheel
  the jobs install or the app's code (which run as the deployer and the app), and an experiment there lets
  anyone read every trace.
* **The CLI version.** Lakebase Autoscaling resources (``postgres_*`` and an app's ``postgres`` resource)
  need Databricks CLI 0.287 or later: ``bundle.databricks_cli_version`` must say so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from .load import REFERENCE, LoadedBundle, Path_

Report = Callable[[Path_, str], None]

APP_NAME_MAX = 30
MIN_USER_NAME_CHARS = 8  # what a dev app name must leave for the user's name
MIN_CLI_FOR_POSTGRES = (0, 287, 0)
USER_NAME_REF = "${workspace.current_user.domain_friendly_name}"
SHORT_NAME_REF = "${workspace.current_user.short_name}"
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
RESOURCE_REF = re.compile(r"\$\{resources\.(\w+)\.([^.}]+)\.[\w.\[\]]+\}")
POSTGRES_TYPES = (
    "postgres_projects",
    "postgres_branches",
    "postgres_endpoints",
    "postgres_roles",
    "postgres_databases",
)

# How the CLI maps top-level permission levels onto each resource type (databricks/cli
# bundle/config/mutator/resourcemutator/apply_bundle_permissions.go, levelsMap; a type missing here gets none).
TOP_LEVEL_LEVELS: dict[str, dict[str, str]] = {
    "jobs": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_VIEW", "CAN_RUN": "CAN_MANAGE_RUN"},
    "pipelines": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_VIEW", "CAN_RUN": "CAN_RUN"},
    "experiments": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_READ"},
    "models": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_READ"},
    "model_serving_endpoints": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_VIEW", "CAN_RUN": "CAN_QUERY"},
    "dashboards": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_READ"},
    "genie_spaces": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_READ"},
    "apps": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_USE"},
    "sql_warehouses": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_VIEW", "CAN_RUN": "CAN_MONITOR"},
    "database_instances": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_USE"},
    "postgres_projects": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_USE"},
    "secret_scopes": {"CAN_MANAGE": "MANAGE", "CAN_VIEW": "READ"},
    "alerts": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_READ", "CAN_RUN": "CAN_RUN"},
    "clusters": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_ATTACH_TO", "CAN_RUN": "CAN_RESTART"},
    "vector_search_endpoints": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_USE"},
    "instance_pools": {"CAN_MANAGE": "CAN_MANAGE", "CAN_VIEW": "CAN_ATTACH_TO"},
}

# An app resource kind -> the field holding the reference to a bundle resource.
APP_RESOURCE_FIELDS = {
    "job": ("id",),
    "experiment": ("experiment_id",),
    "sql_warehouse": ("id",),
    "serving_endpoint": ("name",),
    "postgres": ("branch", "database"),
    "database": ("instance_name",),
    "genie_space": ("space_id",),
}

# (resource type, level the app resource grants) -> levels on the resource that keep it, least first.
KEEPS: dict[tuple[str, str], tuple[str, ...]] = {
    ("jobs", "CAN_VIEW"): ("CAN_VIEW", "CAN_MANAGE_RUN", "CAN_MANAGE", "IS_OWNER"),
    ("jobs", "CAN_MANAGE_RUN"): ("CAN_MANAGE_RUN", "CAN_MANAGE", "IS_OWNER"),
    ("jobs", "CAN_MANAGE"): ("CAN_MANAGE", "IS_OWNER"),
    ("experiments", "CAN_READ"): ("CAN_READ", "CAN_EDIT", "CAN_MANAGE"),
    ("experiments", "CAN_EDIT"): ("CAN_EDIT", "CAN_MANAGE"),
    ("experiments", "CAN_MANAGE"): ("CAN_MANAGE",),
    ("sql_warehouses", "CAN_USE"): ("CAN_USE", "CAN_MANAGE", "IS_OWNER"),
    ("sql_warehouses", "CAN_MANAGE"): ("CAN_MANAGE", "IS_OWNER"),
    ("model_serving_endpoints", "CAN_QUERY"): ("CAN_QUERY", "CAN_MANAGE"),
    ("model_serving_endpoints", "CAN_VIEW"): ("CAN_VIEW", "CAN_QUERY", "CAN_MANAGE"),
    ("model_serving_endpoints", "CAN_MANAGE"): ("CAN_MANAGE",),
    # The app's database resource makes its service principal a user of the project / instance.
    ("postgres_projects", "CAN_CONNECT_AND_CREATE"): ("CAN_USE", "CAN_MANAGE"),
    ("database_instances", "CAN_CONNECT_AND_CREATE"): ("CAN_USE", "CAN_MANAGE"),
    ("genie_spaces", "CAN_RUN"): ("CAN_RUN", "CAN_EDIT", "CAN_MANAGE"),
}


def check_deploy_rules(bundle: LoadedBundle, report: Report) -> None:
    config = bundle.config
    found = config.get("resources")
    resources: dict[str, Any] = found if isinstance(found, dict) else {}
    _check_app_grants_survive(config, resources, report)
    _check_principals(bundle, resources, report)
    _check_names(bundle, resources, report)
    _check_shared_paths(bundle, resources, report)
    _check_cli_version(config, resources, report)


# ----------------------------------------------------------------------------------- app grants


def _check_app_grants_survive(config: dict[str, Any], resources: dict[str, Any], report: Report) -> None:
    top_level = [p for p in config.get("permissions") or [] if isinstance(p, dict)]
    for app_key, app in _items(resources.get("apps")):
        principal = f"${{resources.apps.{app_key}.service_principal_client_id}}"
        for index, entry in enumerate(app.get("resources") or []):
            if not isinstance(entry, dict):
                continue
            for kind, fields in APP_RESOURCE_FIELDS.items():
                spec = entry.get(kind)
                if not isinstance(spec, dict):
                    continue
                granted = str(spec.get("permission") or "")
                for target_type, target_key in _referenced(spec, fields):
                    target = (resources.get(target_type) or {}).get(target_key)
                    if not isinstance(target, dict):
                        continue
                    own = [p for p in target.get("permissions") or [] if isinstance(p, dict)]
                    mapped = TOP_LEVEL_LEVELS.get(target_type)
                    inherited = [p for p in top_level if mapped and p.get("level") in mapped]
                    if not own and not inherited:
                        continue  # the bundle leaves this ACL alone: the app's grant stays
                    keeps = KEEPS.get((target_type, granted))
                    listed = [p for p in own if p.get("service_principal_name") == principal]
                    path: Path_ = ("resources", target_type, target_key, "permissions")
                    where = "its permissions" + (" and the target's top-level permissions" if inherited else "")
                    if not own:
                        where = "the target's top-level permissions"
                    needed = keeps[0] if keeps else granted or "the app's level"
                    fix = (
                        f"add `- level: {needed}` with `service_principal_name: {principal}` to "
                        f"resources.{target_type}.{target_key}.permissions"
                    )
                    if not listed:
                        report(
                            path,
                            f"app {app_key!r} (resources[{index}].{kind}) grants its service principal {granted} on "
                            f"{target_type}.{target_key}, but {where} do not list it, so the second deploy takes "
                            f"that grant away (databricks/cli#4309): {fix}",
                        )
                    elif keeps and not any(p.get("level") in keeps for p in listed):
                        levels = ", ".join(str(p.get("level")) for p in listed)
                        report(
                            path,
                            f"lists app {app_key!r}'s service principal with {levels}, below the {granted} its "
                            f"app resource grants on {target_type}.{target_key}: use level {needed}",
                        )


def _referenced(spec: dict[str, Any], fields: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    seen = set()
    for name in fields:
        for match in RESOURCE_REF.finditer(str(spec.get(name) or "")):
            if match.groups() not in seen:
                seen.add(match.groups())
                yield match.group(1), match.group(2)


# ----------------------------------------------------------------------------------- principals


def _permission_lists(config: dict[str, Any], resources: dict[str, Any]) -> Iterator[tuple[Path_, dict[str, Any]]]:
    for index, entry in enumerate(config.get("permissions") or []):
        if isinstance(entry, dict):
            yield ("permissions", index), entry
    for kind, group in resources.items():
        for key, body in _items(group):
            for index, entry in enumerate(body.get("permissions") or []):
                if isinstance(entry, dict):
                    yield ("resources", kind, key, "permissions", index), entry
    if isinstance(config.get("run_as"), dict):
        yield ("run_as",), config["run_as"]


def _check_principals(bundle: LoadedBundle, resources: dict[str, Any], report: Report) -> None:
    for path, entry in _permission_lists(bundle.config, resources):
        user = entry.get("user_name")
        if not isinstance(user, str):
            continue
        if UUID.match(user.strip()):
            report(
                (*path, "user_name"),
                f"{user!r} is an application id: a service principal goes in service_principal_name, not "
                "user_name (pass it through a variable, e.g. service_principal_name: ${var.prod_service_principal})",
            )
        elif bundle.mode == "production" and user.strip() == "${workspace.current_user.userName}":
            report(
                (*path, "user_name"),
                "in a production target deployed from CI as a service principal, ${workspace.current_user.userName} "
                "is that principal's application id, which user_name rejects: name the deployer with "
                "service_principal_name through a variable (e.g. ${var.prod_service_principal})",
            )


# ---------------------------------------------------------------------------------------- names


def _check_names(bundle: LoadedBundle, resources: dict[str, Any], report: Report) -> None:
    named = [
        ("apps", "name", "app name", True),
        ("postgres_projects", "project_id", "Lakebase project id", False),
        ("database_instances", "name", "Lakebase instance name", False),
    ]
    for kind, field, what, is_app in named:
        for key, body in _items(resources.get(kind)):
            value = body.get(field)
            if not isinstance(value, str):
                continue
            path: Path_ = ("resources", kind, key, field)
            literal = REFERENCE.sub("", value)
            if bundle.mode == "development" and USER_NAME_REF not in value:
                why = (
                    f"{SHORT_NAME_REF} may contain '_' and capitals, which {_article(what)} {what} does not "
                    f"allow: use {USER_NAME_REF}"
                    if SHORT_NAME_REF in value
                    else f"development mode does not prefix {_article(what)} {what}, so every developer's dev "
                    f"deploy would use {value!r}: include {USER_NAME_REF}"
                )
                report(path, f"{value!r}: {why}")
                continue
            if not is_app:
                continue
            if "${" in value:
                if len(literal) + MIN_USER_NAME_CHARS > APP_NAME_MAX:
                    report(
                        path,
                        f"{value!r}: the fixed part has {len(literal)} characters, leaving fewer than "
                        f"{MIN_USER_NAME_CHARS} of the {APP_NAME_MAX} an app name may have for the user's name",
                    )
            elif len(value) > APP_NAME_MAX:
                report(path, f"{value!r} has {len(value)} characters; an app name has at most {APP_NAME_MAX}")
            if re.search(r"[^a-z0-9-]", literal):
                report(path, f"{value!r}: an app name has only lowercase letters, digits and hyphens")


# ------------------------------------------------------------------------------- shared folder

SHARED_FOLDER = re.compile(r"^(/Workspace)?/Shared(/|$)")


def _check_shared_paths(bundle: LoadedBundle, resources: dict[str, Any], report: Report) -> None:
    if bundle.mode != "production":
        return
    workspace = bundle.config.get("workspace")
    for field in ("root_path", "file_path", "artifact_path", "state_path"):
        value = workspace.get(field) if isinstance(workspace, dict) else None
        if isinstance(value, str) and SHARED_FOLDER.match(value):
            report(
                ("workspace", field),
                f"{value!r}: every workspace user has CAN MANAGE in /Workspace/Shared, so anyone could change "
                "the code the production jobs and app run as their identities: deploy under the deployer's "
                "home, e.g. /Workspace/Users/${workspace.current_user.userName}/.bundle/${bundle.name}/${bundle.target}",
            )
    for key, body in _items(resources.get("experiments")):
        name = body.get("name")
        if isinstance(name, str) and SHARED_FOLDER.match(name):
            report(
                ("resources", "experiments", key, "name"),
                f"{name!r}: every workspace user has CAN MANAGE in /Workspace/Shared, so anyone could read "
                "(and delete) its runs and traces whatever the experiment's permissions say: put it under the "
                "deployer's home, e.g. /Workspace/Users/${workspace.current_user.userName}/<name>",
            )


# ----------------------------------------------------------------------------------- CLI version


def _uses_postgres(resources: dict[str, Any]) -> bool:
    if any(resources.get(kind) for kind in POSTGRES_TYPES):
        return True
    return any(
        isinstance(entry, dict) and "postgres" in entry
        for _, app in _items(resources.get("apps"))
        for entry in app.get("resources") or []
    )


def lower_bound(constraint: str) -> tuple[int, ...] | None:
    """The least version a ``databricks_cli_version`` constraint allows (``>= 0.287.0, < 1.0``; ``0.290.1``)."""
    bounds = []
    for part in constraint.split(","):
        match = re.match(r"^\s*(>=|>|==|=)?\s*v?(\d+)\.(\d+)(?:\.(\d+))?", part)
        if match and (match.group(1) or "=") in (">=", ">", "==", "="):
            bounds.append(tuple(int(g or 0) for g in match.groups()[1:]))
    return max(bounds) if bounds else None


def _check_cli_version(config: dict[str, Any], resources: dict[str, Any], report: Report) -> None:
    if not _uses_postgres(resources):
        return
    need = ".".join(str(p) for p in MIN_CLI_FOR_POSTGRES)
    declared = (config.get("bundle") or {}).get("databricks_cli_version")
    path: Path_ = ("bundle", "databricks_cli_version")
    if not declared:
        report(
            ("bundle",),
            f"the Lakebase Autoscaling resources need Databricks CLI {need} or later: declare "
            f'databricks_cli_version: ">= {need}" so an older CLI refuses to deploy instead of failing halfway',
        )
        return
    least = lower_bound(str(declared))
    if least is None:
        report(path, f'{declared!r}: not a version constraint the CLI reads (e.g. ">= {need}")')
    elif least < MIN_CLI_FOR_POSTGRES:
        report(
            path,
            f"{declared!r} allows CLI {'.'.join(map(str, least))}; Lakebase Autoscaling resources need {need}",
        )


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _items(group: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(group, dict):
        return []
    return [(str(key), body) for key, body in group.items() if isinstance(body, dict)]
