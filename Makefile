# The two commands of the README's Quick start. Each sets up what it needs first (a .venv with CPU-only torch
# and the project, reinstalled only when the requirement files change), so a fresh clone needs nothing else.
#
#   make run     set up, then run the main job: context-assistant ingest   (make run ARGS=--full)
#   make test    set up (plus Debian's chromium where it can), then run the tests   (make test ARGS='-k chat')
#   make mlflow-ui   the MLflow UI over the local traces (full mlflow in .venv-mlflow-ui; PORT=5000)
#   make help    this list
#
# PYTHON picks the interpreter the venv is made with (default python3, 3.10 or newer).

PYTHON ?= python3
VENV ?= .venv
ARGS ?=

.PHONY: help run test setup chromium clean-venv mlflow-ui

run: setup
	$(VENV)/bin/context-assistant ingest $(ARGS)
	@echo 'Next: . $(VENV)/bin/activate, then context-assistant chat (or: context-assistant search "a question"); see the README.'

test: setup chromium
	$(VENV)/bin/python -m pytest $(ARGS)

setup:
	@PYTHON="$(PYTHON)" VENV="$(VENV)" bash scripts/setup_venv.sh

chromium:
	@bash scripts/install_chromium.sh

mlflow-ui: setup
	@VENV="$(VENV)" bash scripts/mlflow_ui.sh

clean-venv:
	rm -rf $(VENV)

help:
	@sed -n 's/^#   make /make /p' Makefile
