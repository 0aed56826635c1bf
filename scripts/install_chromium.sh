#!/usr/bin/env bash
# Headless Chromium for the browser tests, from Debian's packages (Playwright never downloads a browser).
# Installs it where it can (apt as root, or through passwordless sudo); otherwise says why and how, and the
# browser tests are skipped with that reason. Never fails `make test` by itself.
set -uo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  say "Chromium is not installed and this is not a Debian/Ubuntu system: the browser tests will be skipped (install Chromium and put 'chromium' on PATH to run them)"
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  say "Chromium is not installed and installing it needs root: the browser tests will be skipped (run 'sudo apt-get install chromium' to include them)"
  exit 0
fi
say "installing Debian's chromium for the browser tests"
if "${SUDO[@]}" apt-get update -qq &&
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
  exit 0
fi
say "apt-get could not install chromium (see above): the browser tests will be skipped"
exit 0
