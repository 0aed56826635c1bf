"""Offline validation of the Databricks Asset Bundle (databricks.yml + resources/ + app.yaml).

The real bundle must validate for both targets; deliberately broken copies (in tmp_path) must fail with a
message that names the file, the YAML path and what is wrong. No workspace and no Databricks CLI involved:
resources are checked with the databricks-bundles typed classes, the rest with the vendored schema subset.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from context_assistant_tools.bundle.deploy import TOP_LEVEL_LEVELS
from context_assistant_tools.bundle.load import load_bundle, merge
from context_assistant_tools.bundle.quartz import check_quartz
from context_assistant_tools.bundle.schema import SHAPES
from context_assistant_tools.bundle.shapes import typed_resource_classes
from context_assistant_tools.bundle.validate import BundleLoadError, validate_bundle
from databricks.bundles.jobs import Job

from context_assistant import cli

REPO = Path(__file__).resolve().parents[1]
# What CI passes for the prod target (--var / BUNDLE_VAR_prod_service_principal): an application id.
PROD_VARS = {"prod_service_principal": "6f1e0c4e-5c1a-4b7e-9d35-0a1b2c3d4e5f"}
BUNDLE_FILES = ("databricks.yml", "app.yaml", "app.py", "assistant.py", "requirements.txt", "pyproject.toml")
BUNDLE_DIRS = ("resources", "notebooks", "src")


@pytest.fixture(scope="module")
def real_reports():
    return {
        target: validate_bundle(REPO, target, variables=PROD_VARS if target == "prod" else None)
        for target in ("dev", "prod")
    }


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A copy of the bundle to break; src/ comes along so entry points import from the copy."""
    for name in BUNDLE_FILES:
        shutil.copy2(REPO / name, tmp_path / name)
    for name in BUNDLE_DIRS:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def messages(root: Path, target: str = "dev", **kwargs: Any) -> list[str]:
    if target == "prod":
        kwargs.setdefault("variables", PROD_VARS)
    return [str(p) for p in validate_bundle(root, target, **kwargs).problems]


# ------------------------------------------------------------------------------------------ the bundle


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_the_bundle_validates_for_each_target(real_reports, target):
    report = real_reports[target]
    assert [str(p) for p in report.problems] == []
    assert report.resources == {
        "apps": ["context_assistant"],
        "experiments": ["traces"],
        "jobs": ["ingest_job", "rag_sync_job"],
        "postgres_projects": ["lakebase"],
        "schemas": ["documents"],
        "volumes": ["documents"],
    }
    assert "resources/rag_sync.job.yml" in report.files


def test_targets_differ_where_they_should():
    dev, prod = load_bundle(REPO, "dev"), load_bundle(REPO, "prod", PROD_VARS)
    assert (dev.mode, prod.mode) == ("development", "production")
    user = "${workspace.current_user.domain_friendly_name}"
    assert dev.variables["lakebase_project"] == dev.variables["app_name"] == f"ca-dev-{user}"
    assert prod.variables["lakebase_project"] == prod.variables["app_name"] == "context-assistant"
    home = "/Workspace/Users/${workspace.current_user.userName}/"
    assert prod.config["workspace"]["root_path"].startswith(home)  # not /Workspace/Shared: everyone manages it
    assert prod.config["resources"]["experiments"]["traces"]["name"] == home + "context-assistant-traces"
    assert prod.config["permissions"] == [
        {"level": "CAN_MANAGE", "service_principal_name": PROD_VARS["prod_service_principal"]},
    ]
    assert prod.config["bundle"]["databricks_cli_version"] == ">= 0.287.0"
    assert load_bundle(REPO).target == "dev"  # the default target


def test_prod_users_can_use_the_app_but_not_read_everyones_traces():
    """The CLI maps a top-level permission onto every resource type with a matching level
    (databricks/cli bundle/config/mutator/resourcemutator/apply_bundle_permissions.go: CAN_VIEW is CAN_READ on
    experiments, CAN_USE on apps and postgres_projects). The traces hold every user's questions and answers,
    so the users group is granted on the app and the jobs only, through the prod target's resource lists."""
    prod = load_bundle(REPO, "prod", PROD_VARS).config
    resources = prod["resources"]
    group = "users"
    assert {"level": "CAN_USE", "group_name": group} in resources["apps"]["context_assistant"]["permissions"]
    for job in ("ingest_job", "rag_sync_job"):
        assert {"level": "CAN_VIEW", "group_name": group} in resources["jobs"][job]["permissions"]
    for kind, key in (("experiments", "traces"), ("postgres_projects", "lakebase")):
        mapped = TOP_LEVEL_LEVELS[kind]
        effective = list(resources[kind][key].get("permissions") or [])
        effective += [p for p in prod["permissions"] if p["level"] in mapped]
        assert not [p for p in effective if p.get("group_name")], (kind, effective)
    assert resources["postgres_projects"]["lakebase"]["lifecycle"] == {"prevent_destroy": True}  # the memory
    dev = load_bundle(REPO, "dev").config["resources"]
    assert "lifecycle" not in dev["postgres_projects"]["lakebase"]  # a dev project may be destroyed
    assert "permissions" not in dev["apps"]["context_assistant"]  # dev resources stay private to the deployer
    assert all(p.get("group_name") is None for p in dev["jobs"]["ingest_job"]["permissions"])


def test_the_nightly_job_is_what_the_issue_asks_for():
    job = load_bundle(REPO, "prod").config["resources"]["jobs"]["rag_sync_job"]
    assert job["schedule"] == {"quartz_cron_expression": "0 0 2 * * ?", "timezone_id": "America/Los_Angeles"}
    assert [t["task_key"] for t in job["tasks"]] == ["setup_database", "ingest", "sync_index"]
    assert job["tasks"][2]["depends_on"] == [{"task_key": "setup_database"}, {"task_key": "ingest"}]
    assert all(t["max_retries"] == 2 for t in job["tasks"])
    assert job["environments"][0]["spec"]["dependencies"] == ["../dist/*.whl"]
    wheel = job["tasks"][1]["python_wheel_task"]
    assert (wheel["package_name"], wheel["entry_point"]) == ("context_assistant", "context-assistant-ingest")


@pytest.mark.parametrize("job", ["ingest_job", "rag_sync_job"])
def test_each_job_first_sets_up_the_database_for_the_app(job):
    """The owner's setup task, granting the app found by name (a reference to the app's service principal in
    a job the app refers to would be a dependency cycle), and the app's explicit CAN_MANAGE_RUN."""
    config = load_bundle(REPO, "prod", PROD_VARS).config
    first = config["resources"]["jobs"][job]["tasks"][0]
    assert first["task_key"] == "setup_database"
    wheel = first["python_wheel_task"]
    assert wheel["entry_point"] == "context-assistant-setup"
    assert wheel["parameters"][wheel["parameters"].index("--grant-to-app") + 1] == "context-assistant"
    assert "service_principal_client_id" not in json.dumps(first)
    sp = "${resources.apps.context_assistant.service_principal_client_id}"
    ingest = config["resources"]["jobs"]["ingest_job"]
    assert ingest["permissions"][0] == {"level": "CAN_MANAGE_RUN", "service_principal_name": sp}
    project = config["resources"]["postgres_projects"]["lakebase"]
    assert project["permissions"] == [{"level": "CAN_USE", "service_principal_name": sp}]


def test_app_yaml_only_uses_resources_the_app_declares():
    app = load_bundle(REPO, "dev").config["resources"]["apps"]["context_assistant"]
    names = {r["name"] for r in app["resources"]}
    env = yaml.safe_load((REPO / "app.yaml").read_text())["env"]
    assert {e["valueFrom"] for e in env if "valueFrom" in e} <= names
    assert not any("${" in str(e.get("value", "")) for e in env)
    assert "config" not in app  # app.yaml is the only runtime config


def test_requirements_txt_matches_the_package_dependencies():
    """The Databricks App installs requirements.txt; it must carry exactly the runtime dependencies."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert sorted(line for line in lines if line and not line.startswith("#")) == sorted(declared)


# ------------------------------------------------------------------------------------- broken copies


def test_unknown_key_is_named_with_its_file_and_path(bundle):
    edit(bundle / "resources/rag_sync.job.yml", "      schedule:\n", "      schedul:\n")
    found = messages(bundle, check_imports=False)
    assert any(
        m.startswith(
            "resources/rag_sync.job.yml: resources.jobs.rag_sync_job.schedul: unknown key (did you mean 'schedule'?)"
        )
        for m in found
    ), found


def test_missing_timezone(bundle):
    edit(bundle / "resources/rag_sync.job.yml", "        timezone_id: America/Los_Angeles\n", "")
    found = messages(bundle, check_imports=False)
    assert (
        "resources/rag_sync.job.yml: resources.jobs.rag_sync_job.schedule.timezone_id: required key is missing"
        in " ".join(found)
    ), found


def test_unknown_timezone(bundle):
    edit(bundle / "resources/rag_sync.job.yml", "America/Los_Angeles", "America/Las_Angeles")
    found = messages(bundle, check_imports=False)
    assert found == [
        "resources/rag_sync.job.yml: resources.jobs.rag_sync_job.schedule.timezone_id: "
        "'America/Las_Angeles' is not a known time zone (line 19)"
    ]


def test_bad_cron_expression(bundle):
    edit(bundle / "resources/rag_sync.job.yml", '"0 0 2 * * ?"', '"0 2 * * *"')
    (found,) = messages(bundle, check_imports=False)
    assert "resources.jobs.rag_sync_job.schedule.quartz_cron_expression: '0 2 * * *' has 5 fields" in found


def test_undeclared_variable(bundle):
    edit(bundle / "resources/documents.volume.yml", "name: ${var.volume}", "name: ${var.volumes}")
    found = messages(bundle, check_imports=False)
    assert (
        "resources/documents.volume.yml: resources.volumes.documents.name: ${var.volumes} uses variable "
        "'volumes', which is not declared under variables (line 8)"
    ) in found


def test_target_setting_an_undeclared_variable(bundle):
    edit(
        bundle / "databricks.yml",
        "      app_name: ca-dev-${workspace.current_user.domain_friendly_name}\n",
        "      app_nam: x\n",
    )
    found = messages(bundle, check_imports=False)
    assert any("targets.dev.variables.app_nam: sets variable 'app_nam', which is not declared" in m for m in found)


def test_reference_to_a_missing_resource(bundle):
    edit(
        bundle / "resources/documents.volume.yml",
        "${resources.schemas.documents.name}",
        "${resources.schemas.docs.name}",
    )
    found = messages(bundle, check_imports=False)
    assert any("refers to resources.schemas.docs, which is not defined in this bundle" in m for m in found), found


def test_missing_notebook(bundle):
    edit(
        bundle / "resources/rag_sync.job.yml",
        "      tasks:\n",
        "      tasks:\n        - task_key: explore\n          notebook_task:\n"
        "            notebook_path: ../notebooks/no_such_notebook.py\n",
    )
    found = messages(bundle, check_imports=False)
    assert (
        "resources/rag_sync.job.yml: resources.jobs.rag_sync_job.tasks[0].notebook_task.notebook_path: "
        "notebook '../notebooks/no_such_notebook.py' does not exist (line 29)"
    ) in found


def test_entry_point_not_declared_in_pyproject(bundle):
    edit(bundle / "resources/ingest.job.yml", "entry_point: context-assistant-ingest", "entry_point: ingest")
    found = messages(bundle, check_imports=False)
    assert (
        "resources/ingest.job.yml: resources.jobs.ingest_job.tasks[1].python_wheel_task.entry_point: 'ingest' is "
        "not an entry point of context-assistant in pyproject.toml [project.scripts] (declared: context-assistant, "
        "context-assistant-ingest, context-assistant-setup, context-assistant-sync) (line 65)"
    ) in found


def test_entry_point_whose_target_does_not_import(bundle):
    edit(bundle / "pyproject.toml", '"context_assistant.jobs:sync_main"', '"context_assistant.jobs:sync_mian"')
    found = messages(bundle)
    assert any(
        "entry point 'context-assistant-sync' = 'context_assistant.jobs:sync_mian' does not load: AttributeError"
        in m
        for m in found
    ), found
    assert len(found) == 2  # both jobs' sync tasks


def test_wheel_package_that_no_artifact_builds(bundle):
    edit(bundle / "resources/ingest.job.yml", "package_name: context_assistant", "package_name: other_package")
    found = messages(bundle, check_imports=False)
    assert any("'other_package' is not the project name of any wheel artifact" in m for m in found), found


def test_wrong_types_and_enum_values(bundle):
    edit(bundle / "resources/ingest.job.yml", "max_concurrent_runs: 1", "max_concurrent_runs: many")
    edit(bundle / "resources/context_assistant.app.yml", "permission: CAN_EDIT", "permission: CAN_WRITE")
    edit(bundle / "resources/documents.schema.yml", "name: ${var.schema}", "name: {a: 1}")
    found = messages(bundle, check_imports=False)
    assert any("resources.jobs.ingest_job.max_concurrent_runs: 'many' is not an integer" in m for m in found)
    assert any(
        "resources.apps.context_assistant.resources[3].experiment.permission: 'CAN_WRITE' is not one of "
        "CAN_MANAGE, CAN_EDIT, CAN_READ" in m
        for m in found
    ), found
    assert any(
        "resources.schemas.documents.name: expected a single string value, got a mapping" in m for m in found
    )


def test_vendored_shape_checks_postgres_projects(bundle):
    edit(
        bundle / "resources/lakebase.postgres.yml",
        "      pg_version: 17\n",
        "      pg_version: 17\n      pg_versoin: 16\n",
    )
    edit(bundle / "resources/lakebase.postgres.yml", "      project_id: ${var.lakebase_project}\n", "")
    found = messages(bundle, check_imports=False)
    assert any(
        "resources.postgres_projects.lakebase.pg_versoin: unknown key (did you mean 'pg_version'?)" in m
        for m in found
    )
    assert any("resources.postgres_projects.lakebase.project_id: required key is missing" in m for m in found)


def test_top_level_keys_are_checked_too(bundle):
    edit(bundle / "databricks.yml", "    dynamic_version: true\n", "    dynamic_version: true\n    buid: make\n")
    edit(bundle / "databricks.yml", "      - level: CAN_MANAGE\n", "      - level: CAN_QUERY\n")
    found = messages(bundle, "prod", check_imports=False)
    assert any("databricks.yml: artifacts.default.buid: unknown key (did you mean 'build'?)" in m for m in found)
    assert any("targets.prod.permissions[0].level: 'CAN_QUERY': bundle permissions take" in m for m in found)


def test_app_yaml_problems(bundle):
    edit(bundle / "app.yaml", "valueFrom: chat-endpoint", "valueFrom: chat")
    edit(bundle / "app.yaml", "    value: databricks\n", "    value: ${var.chat_endpoint}\n")
    found = messages(bundle, check_imports=False)
    assert any(
        m.startswith(
            "app.yaml: env[1].valueFrom: CONTEXT_ASSISTANT__MODEL__ENDPOINT: 'chat' is not a resource of the app"
        )
        for m in found
    ), found
    assert any(
        "app.yaml: env[0].value: CONTEXT_ASSISTANT__MODEL__PROVIDER: app.yaml is not interpolated" in m
        for m in found
    )


def test_app_source_folder_must_exist(bundle):
    edit(bundle / "resources/context_assistant.app.yml", "source_code_path: ..", "source_code_path: ../web")
    found = messages(bundle, check_imports=False)
    assert any(
        "resources.apps.context_assistant.source_code_path: folder '../web' does not exist" in m for m in found
    )


def test_task_graph_problems(bundle):
    edit(
        bundle / "resources/ingest.job.yml", "            - task_key: ingest\n", "            - task_key: parse\n"
    )
    edit(
        bundle / "resources/ingest.job.yml",
        "environment_key: default\n          max_",
        "environment_key: gpu\n          max_",
    )
    found = messages(bundle, check_imports=False)
    assert any(
        "tasks[2].depends_on[1].task_key: 'parse' is not a task of this job (tasks: setup_database, ingest, "
        "sync_index)" in m
        for m in found
    ), found
    assert any("tasks[0].environment_key: 'gpu' is not one of the job's environments" in m for m in found)


def test_resource_defined_in_two_files(bundle):
    shutil.copy2(bundle / "resources/documents.volume.yml", bundle / "resources/copy.volume.yml")
    found = messages(bundle, check_imports=False)
    assert any(
        m.startswith(
            "resources/documents.volume.yml: resources.volumes.documents: defined more than once "
            "(also defined in resources/copy.volume.yml)"
        )
        for m in found
    ), found


def test_variable_without_a_value(bundle):
    edit(bundle / "databricks.yml", "    default: databricks-gte-large-en\n", "")
    found = messages(bundle, check_imports=False)
    assert any("variables.embedding_endpoint: variable 'embedding_endpoint' has no default" in m for m in found)


def test_unreadable_bundles_raise(bundle):
    with pytest.raises(
        BundleLoadError, match=r"unknown target 'staging' \(targets in databricks.yml: dev, prod\)"
    ):
        validate_bundle(bundle, "staging")
    edit(bundle / "resources/ingest.job.yml", "      max_concurrent_runs: 1\n", "      max_concurrent_runs: [1\n")
    with pytest.raises(BundleLoadError, match=r"resources/ingest.job.yml: line \d+ is not valid YAML"):
        validate_bundle(bundle, "dev")


# ----------------------------------------------------------------------------------- semantics, tools


def test_target_overrides_merge_like_the_cli(tmp_path):
    """Maps merge, sequences concatenate, then job tasks merge by task_key and app resources by name."""
    (tmp_path / "databricks.yml").write_text(
        """
bundle: {name: b}
variables: {size: {default: 1}, label: {default: "n=${var.size}"}}
resources:
  jobs:
    j:
      name: j
      tags: {team: a}
      tasks:
        - {task_key: t1, timeout_seconds: 10, description: keep}
  apps:
    a:
      name: a
      resources:
        - {name: model, serving_endpoint: {name: m1, permission: CAN_QUERY}}
targets:
  dev:
    default: true
    variables: {size: 3}
    resources:
      jobs:
        j:
          tags: {env: dev}
          tasks:
            - {task_key: t1, timeout_seconds: 20}
            - {task_key: t2}
      apps:
        a:
          resources:
            - {name: model, serving_endpoint: {name: m2}}
"""
    )
    loaded = load_bundle(tmp_path)
    job = loaded.config["resources"]["jobs"]["j"]
    assert job["tags"] == {"team": "a", "env": "dev"}
    assert job["tasks"] == [
        {"task_key": "t1", "timeout_seconds": 20, "description": "keep"},
        {"task_key": "t2"},
    ]
    app_resources = loaded.config["resources"]["apps"]["a"]["resources"]
    assert app_resources == [{"name": "model", "serving_endpoint": {"name": "m2", "permission": "CAN_QUERY"}}]
    assert loaded.variables == {"size": 3, "label": "n=3"}
    assert merge({"a": [1], "b": {"c": 1}}, {"a": [2], "b": {"d": 2}}) == {"a": [1, 2], "b": {"c": 1, "d": 2}}


def test_typed_classes_reject_unknown_keys_but_not_every_bad_type():
    """Why bundle.py walks the type hints itself: from_dict names no path and takes a mapping as a string."""
    with pytest.raises(ValueError, match="Unexpected field 'bogus' for class Task"):
        Job.from_dict({"name": "x", "tasks": [{"task_key": "a", "bogus": 1}]})
    assert Job.from_dict({"name": {"not": "a string"}}).name == "{'not': 'a string'}"


def test_every_resource_type_has_a_checker():
    classes = typed_resource_classes()
    assert {"jobs", "apps", "schemas", "volumes", "experiments", "database_instances"} <= set(classes)
    for kind in SHAPES["vendored_resources"]:
        assert kind not in classes, f"databricks-bundles now has {kind}: drop it from the vendored set"
        assert kind in SHAPES["resource_types"]


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("0 0 2 * * ?", None),
        ("0 */15 9-17 ? * MON-FRI", None),
        ("0 0 12 L * ?", None),
        ("0 0 1 ? * 6#3 2030", None),
        ("0 0 2 * *", "has 5 fields"),
        ("0 0 2 * * *", "exactly one of day-of-month and day-of-week must be '?'"),
        ("0 60 2 * * ?", "minutes field '60': '60' is not in 0-59"),
        ("0 0 2 ? FOO *", "month field 'FOO'"),
        ("0 0/0 2 * * ?", "step '0' is not a positive number"),
    ],
)
def test_quartz_cron(expression, problem):
    found = check_quartz(expression)
    assert (found is None) if problem is None else (problem in found), found


def test_cli_bundle_validate(bundle, capsys):
    prod_var = f"prod_service_principal={PROD_VARS['prod_service_principal']}"
    argv = ["bundle", "validate", "--root", str(REPO), "-t", "dev", "-t", "prod", "--json", "--var", prod_var]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert [t["target"] for t in out["targets"]] == ["dev", "prod"]
    assert set(out["targets"][0]) == {"target", "ok", "problems", "resources", "files"}

    edit(bundle / "resources/rag_sync.job.yml", "America/Los_Angeles", "Mars/Olympus")
    assert cli.main(["bundle", "validate", "--root", str(bundle)]) == 1
    text = capsys.readouterr().out
    assert "1 problem:" in text and "'Mars/Olympus' is not a known time zone" in text
    assert cli.main(["bundle", "validate", "--root", str(bundle / "resources")]) == 1
    assert re.search(r"error: no databricks.yml in .*resources", capsys.readouterr().err)


@pytest.mark.slow
def test_the_wheel_declares_the_job_entry_points(tmp_path):
    """What python_wheel_task resolves: importlib.metadata.distribution(package_name).entry_points.

    Built from a clean copy of the sources, as a fresh clone builds it (setuptools would otherwise reuse a
    stale ``build/`` of this checkout). The offline bundle validator is a development tool: not in the wheel."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("context_assistant-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert "context_assistant/jobs.py" in names and "context_assistant/web/static/index.html" in names
    code = [name for name in names if name.endswith(".py")]  # (the vendored swagger-ui-bundle.js is the page's)
    assert not any("bundle" in name or "quartz" in name for name in code), code
    assert "context-assistant-ingest = context_assistant.jobs:ingest_main" in text
    assert "context-assistant-sync = context_assistant.jobs:sync_main" in text
    assert "context-assistant-setup = context_assistant.jobs:setup_main" in text


def test_cli_bundle_validate_without_the_dev_tool_says_how_to_install_it(monkeypatch, capsys):
    """The validator is not in the runtime wheel: where it is not installed, the command says so (exit 2)."""
    for name in ("context_assistant_tools", "context_assistant_tools.bundle"):  # an install without tools/
        monkeypatch.setitem(sys.modules, name, None)
    assert cli.main(["bundle", "validate", "--root", str(REPO)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage error: bundle validate is a development tool that is not installed here")
    assert "pip install -e ./tools" in err


# ------------------------------------------------------------- deploy rules (context_assistant_tools/bundle/deploy.py)


SP = "${resources.apps.context_assistant.service_principal_client_id}"
JOB_GRANT = f"""      permissions:
        # The app's "Refresh documents" runs this job; listed here so that the prod target's top-level
        # permissions do not take the app's CAN_MANAGE_RUN away on the second deploy.
        - level: CAN_MANAGE_RUN
          service_principal_name: {SP}
"""


def test_top_level_permissions_that_would_drop_the_apps_job_grant(bundle):
    edit(bundle / "resources/ingest.job.yml", JOB_GRANT, "")
    assert messages(bundle, "dev", check_imports=False) == []  # no permission list: the grant is left alone
    (found,) = messages(bundle, "prod", check_imports=False)
    # In prod the job's list is the users group's CAN_VIEW, which the prod target appends (databricks.yml).
    assert found.startswith("databricks.yml: resources.jobs.ingest_job.permissions: app 'context_assistant'")
    assert "grants its service principal CAN_MANAGE_RUN on jobs.ingest_job" in found
    assert "its permissions and the target's top-level permissions do not list it, so the second deploy" in found
    assert f"add `- level: CAN_MANAGE_RUN` with `service_principal_name: {SP}`" in found


def test_a_resource_list_without_the_app_principal_is_an_error_in_every_target(bundle):
    edit(
        bundle / "resources/ingest.job.yml",
        f"        - level: CAN_MANAGE_RUN\n          service_principal_name: {SP}\n",
        "        - level: CAN_VIEW\n          group_name: users\n",
    )
    (found,) = messages(bundle, "dev", check_imports=False)
    assert (
        "jobs.ingest_job.permissions: app 'context_assistant'" in found
        and "its permissions do not list it" in found
    )


def test_the_app_principal_listed_below_the_level_its_app_resource_grants(bundle):
    edit(bundle / "resources/ingest.job.yml", "        - level: CAN_MANAGE_RUN\n", "        - level: CAN_VIEW\n")
    (found,) = messages(bundle, "prod", check_imports=False)
    assert "lists app 'context_assistant''s service principal with CAN_VIEW, below the CAN_MANAGE_RUN" in found


def test_the_lakebase_project_keeps_the_apps_grant_too(bundle):
    edit(bundle / "resources/lakebase.postgres.yml", "        - level: CAN_USE\n", "        - level: CAN_MANAGE\n")
    assert messages(bundle, "prod", check_imports=False) == []  # a higher level keeps it
    text = (bundle / "resources/lakebase.postgres.yml").read_text()
    (bundle / "resources/lakebase.postgres.yml").write_text(text[: text.index("\n      permissions:") + 1])
    (found,) = messages(bundle, "prod", check_imports=False)
    assert (
        "resources.postgres_projects.lakebase.permissions: app 'context_assistant' (resources[2].postgres)"
        in found
    )
    assert "`- level: CAN_USE`" in found


def test_a_production_root_path_under_shared(bundle):
    """Every workspace user has CAN MANAGE on what is in /Workspace/Shared (Databricks docs, folder
    permissions); a prod deploy there lets anyone replace the code the jobs and the app run."""
    edit(
        bundle / "databricks.yml",
        "      root_path: /Workspace/Users/${workspace.current_user.userName}/.bundle/",
        "      root_path: /Workspace/Shared/.bundle/",
    )
    assert messages(bundle, "dev", check_imports=False) == []  # the dev target keeps its own root
    (found,) = messages(bundle, "prod", check_imports=False)
    assert found.startswith("databricks.yml: workspace.root_path: '/Workspace/Shared/.bundle/")
    assert "every workspace user has CAN MANAGE in /Workspace/Shared" in found


def test_a_production_experiment_under_shared(bundle):
    edit(
        bundle / "databricks.yml",
        "    default: /Workspace/Users/${workspace.current_user.userName}/context-assistant-traces",
        "    default: /Shared/context-assistant-traces",
    )
    assert messages(bundle, "dev", check_imports=False) == []  # dev sets its own experiment in the user's home
    (found,) = messages(bundle, "prod", check_imports=False)
    assert "resources.experiments.traces.name: '/Shared/context-assistant-traces'" in found
    assert "anyone could read (and delete) its runs and traces" in found


def test_an_application_id_in_user_name(bundle):
    edit(
        bundle / "databricks.yml",
        "        service_principal_name: ${var.prod_service_principal}\n",
        "        user_name: ${var.prod_service_principal}\n",
    )
    (found,) = messages(bundle, "prod", check_imports=False)
    assert "permissions[0].user_name: '6f1e0c4e-5c1a-4b7e-9d35-0a1b2c3d4e5f' is an application id" in found
    assert "service_principal_name, not user_name" in found


def test_the_current_user_as_user_name_in_production(bundle):
    edit(
        bundle / "databricks.yml",
        "        service_principal_name: ${var.prod_service_principal}\n",
        "        user_name: ${workspace.current_user.userName}\n",
    )
    (found,) = messages(bundle, "prod", check_imports=False)
    assert "permissions[0].user_name: in a production target deployed from CI as a service principal" in found


def test_the_prod_service_principal_has_no_default(bundle, capsys, monkeypatch):
    (found,) = messages(bundle, "prod", check_imports=False, variables=None)
    assert "variable 'prod_service_principal' has no default and target 'prod' sets no value" in found
    monkeypatch.setenv("BUNDLE_VAR_prod_service_principal", PROD_VARS["prod_service_principal"])
    assert cli.main(["bundle", "validate", "--root", str(bundle), "-t", "prod"]) == 0


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("context-assistant-dev", "development mode does not prefix an app name, so every developer's dev deploy"),
        ("ca-${workspace.current_user.short_name}", "short_name} may contain '_' and capitals"),
        (
            "context-assistant-devel-${workspace.current_user.domain_friendly_name}",
            "the fixed part has 24 characters",
        ),
        ("CA-${workspace.current_user.domain_friendly_name}", "only lowercase letters, digits and hyphens"),
    ],
)
def test_dev_app_names_carry_the_user_and_fit_30_characters(bundle, name, problem):
    edit(
        bundle / "databricks.yml",
        "      app_name: ca-dev-${workspace.current_user.domain_friendly_name}\n",
        f"      app_name: {name}\n",
    )
    found = messages(bundle, "dev", check_imports=False)
    assert any(
        m.startswith("resources/context_assistant.app.yml: resources.apps.context_assistant.name: ")
        and problem in m
        for m in found
    ), found


def test_dev_lakebase_project_carries_the_user(bundle):
    edit(
        bundle / "databricks.yml",
        "      lakebase_project: ca-dev-${workspace.current_user.domain_friendly_name}\n",
        "      lakebase_project: context-assistant-dev\n",
    )
    (found,) = messages(bundle, "dev", check_imports=False)
    assert "resources.postgres_projects.lakebase.project_id: 'context-assistant-dev': development mode" in found


def test_a_prod_app_name_over_30_characters(bundle):
    edit(
        bundle / "databricks.yml",
        "    default: context-assistant\n  prod_service",
        "    default: context-assistant-for-the-whole-team\n  prod_service",
    )
    (found,) = messages(bundle, "prod", check_imports=False)
    assert "has 36 characters; an app name has at most 30" in found


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            "",
            'the Lakebase Autoscaling resources need Databricks CLI 0.287.0 or later: declare databricks_cli_version: ">= 0.287.0"',
        ),
        (
            '  databricks_cli_version: ">= 0.250.0"\n',
            "'>= 0.250.0' allows CLI 0.250.0; Lakebase Autoscaling resources need 0.287.0",
        ),
        ('  databricks_cli_version: "latest"\n', "'latest': not a version constraint the CLI reads"),
    ],
)
def test_the_cli_version_the_postgres_resources_need(bundle, line, problem):
    edit(bundle / "databricks.yml", '  databricks_cli_version: ">= 0.287.0"\n', line)
    found = messages(bundle, "dev", check_imports=False)
    assert any(problem in m for m in found), found


def test_cli_version_lower_bounds():
    from context_assistant_tools.bundle.deploy import lower_bound

    assert lower_bound(">= 0.287.0, < 1.0.0") == (0, 287, 0)
    assert lower_bound("0.290.1") == (0, 290, 1)
    assert lower_bound("> v0.300") == (0, 300, 0)
    assert lower_bound("< 1.0.0") is None
