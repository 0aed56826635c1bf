#!/usr/bin/env bash
# The MLflow UI over the local trace store: `make mlflow-ui` (what the README documents).
#
# Why a venv of its own: the project installs mlflow-skinny, which has no UI server (no Flask, no web page:
# `mlflow ui` there fails with "No module named 'flask'"). The full `mlflow` package has both, but it pins
# other libraries (pyarrow below the version the local Spark stack uses) and is not needed to run anything,
# so it lives in .venv-mlflow-ui, created on first use and reused, at exactly the version of mlflow-skinny in
# .venv (the UI then reads the store's schema as the project wrote it).
#
# Environment: VENV (default .venv), UI_VENV (default .venv-mlflow-ui), DATA_DIR (default .context-assistant),
# HOST (default 127.0.0.1), PORT (default 5000). `--check` only sets up the venv and checks the server imports.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
UI_VENV="${UI_VENV:-.venv-mlflow-ui}"
DATA_DIR="${DATA_DIR:-.context-assistant}"
say() { printf 'mlflow-ui: %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  say "no $VENV yet: run 'make run' first (it sets up the project and writes traces)"
  exit 2
fi
version="$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("mlflow-skinny"))')"
if [ ! -x "$UI_VENV/bin/mlflow" ] || [ "$("$UI_VENV/bin/python" -c 'from importlib.metadata import version; print(version("mlflow"))' 2>/dev/null)" != "$version" ]; then
  say "installing mlflow $version (with its UI server) into $UI_VENV"
  "$VENV/bin/python" -m venv "$UI_VENV"
  "$UI_VENV/bin/python" -m pip install --quiet --upgrade pip
  "$UI_VENV/bin/python" -m pip install --quiet "mlflow==$version"
fi

if [ "${1:-}" = "--check" ]; then
  exec "$UI_VENV/bin/python" - <<'PY'
import importlib.util, pathlib, flask, mlflow.server  # noqa: F401  (the modules `mlflow ui` needs)
build = pathlib.Path(mlflow.server.__file__).parent / "js" / "build" / "index.html"
assert build.is_file(), f"the UI's web page is missing: {build}"
print("ok", mlflow.__version__ if hasattr(mlflow, "__version__") else "")
PY
fi

store="$(cd "$DATA_DIR" 2>/dev/null && pwd)/mlflow.db" || { say "no $DATA_DIR: run 'make run' first"; exit 2; }
say "MLflow UI for sqlite:///$store on http://${HOST:-127.0.0.1}:${PORT:-5000} (Ctrl-C stops it)"
exec "$UI_VENV/bin/mlflow" ui --backend-store-uri "sqlite:///$store" \
  --default-artifact-root "$(dirname "$store")/mlflow-artifacts" --host "${HOST:-127.0.0.1}" --port "${PORT:-5000}"
