#!/usr/bin/env bash
# Create .venv (if missing) and install CPU-only torch and the project into it — only when the requirement
# files changed since the last successful install (a stamp keyed on their hash). Called by `make run` and
# `make test`; safe to run again at any time.
#
# Why torch first, by hand: sentence-transformers depends on torch, and on Linux PyPI's torch wheel bundles
# CUDA (several GB). The CPU build lives on the PyTorch CPU index, which is not reachable everywhere, so:
#   1. the CPU index, if it answers within a few seconds (no long retries);
#   2. else the pinned CPU build from whatever pip is configured with (a local wheel, a mirror: pip's
#      find-links or extra index) — fails fast when there is none;
#   3. else the pinned version from the default index, saying that on Linux this is the CUDA build.
# Environment: PYTHON (default python3), VENV (default .venv), TORCH_VERSION, TORCH_CPU_INDEX.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
REQUIREMENT_FILES=(requirements-dev.txt requirements.txt pyproject.toml tools/pyproject.toml scripts/setup_venv.sh)
STAMP="$VENV/.context-assistant-requirements.sha256"

say() { printf 'setup: %s\n' "$*" >&2; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  say "needs Python 3.10 or newer; '$PYTHON' is $("$PYTHON" --version 2>&1 || echo missing). Run: make PYTHON=python3.11 ..."
  exit 2
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
  say "creating $VENV with $("$PYTHON" --version 2>&1)"
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV"; then
    say "could not create a virtual environment; on Debian/Ubuntu install the python3-venv package first"
    exit 2
  fi
fi
PY="$VENV/bin/python"

wanted="$(
  "$PY" - "TORCH_VERSION=$TORCH_VERSION" "${REQUIREMENT_FILES[@]}" <<'EOF'
import hashlib, sys
digest = hashlib.sha256(sys.argv[1].encode())
for name in sys.argv[2:]:
    digest.update(name.encode() + b"\0")
    with open(name, "rb") as f:
        digest.update(f.read())
print(digest.hexdigest())
EOF
)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ]; then
  exit 0  # nothing changed since the last install
fi

say "installing the project into $VENV (requirements changed or first run)"
"$PY" -m pip install --quiet --upgrade pip

torch_installed() {
  "$PY" - "$TORCH_VERSION" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    installed = version("torch")
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if installed.split("+")[0] == sys.argv[1] else 1)
EOF
}

cpu_index_reachable() {
  "$PY" - "$TORCH_CPU_INDEX/torch/" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=5)
except Exception as error:
    print(getattr(error, "reason", error), file=sys.stderr)
    sys.exit(1)
EOF
}

if torch_installed; then
  :
elif [ "$(uname -s)" != "Linux" ]; then
  # macOS and Windows wheels on PyPI are CPU builds already.
  "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
elif reason="$(cpu_index_reachable 2>&1)"; then
  say "installing CPU-only torch $TORCH_VERSION from $TORCH_CPU_INDEX"
  "$PY" -m pip install --quiet --timeout 30 --retries 1 --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION"
else
  say "PyTorch CPU index unreachable ($reason): installing torch==$TORCH_VERSION from pip's other sources instead — the CPU build where a local wheel or mirror has it, else PyPI's, which on Linux bundles CUDA (several GB; it runs on CPU too)"
  if ! "$PY" -m pip install --quiet --retries 1 "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
    "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
  fi
fi

"$PY" -m pip install --quiet -r requirements-dev.txt
say "installed: $("$PY" -c 'from importlib.metadata import version as v; print("torch", v("torch"), "· context-assistant", v("context-assistant"))')"
printf '%s\n' "$wanted" >"$STAMP"
