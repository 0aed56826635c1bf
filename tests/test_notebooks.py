"""The Databricks notebooks in notebooks/ run locally, end to end, against the embedded-style defaults.

Each notebook is executed as the plain Python file it is (Databricks source format), with its widgets
falling back to ``CA_WIDGET_<NAME>`` environment variables, on real local Spark (pysail) and the real
test Postgres.
"""

from __future__ import annotations

import dataclasses
import runpy
from pathlib import Path

import pytest
import yaml

from context_assistant.pipeline import run_ingest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture
def notebook_env(make_config, pg_env, tmp_path, monkeypatch):
    config = make_config()
    data = dataclasses.asdict(config)
    data.pop("base_dir")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    monkeypatch.setenv("CONTEXT_ASSISTANT_CONFIG", str(path))
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)
    return config


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.py")))
def test_notebooks_are_databricks_source_files(name):
    text = (NOTEBOOKS / name).read_text(encoding="utf-8")
    assert text.startswith("# Databricks notebook source\n")
    assert "\n# COMMAND ----------\n" in text
    assert "dbutils.widgets" in text


def test_explore_chunks_notebook(spark, notebook_env, tmp_path, monkeypatch, capsys):
    chunks, documents = tmp_path / "tables" / "chunks", tmp_path / "tables" / "documents"
    run_ingest(spark, str(REPO / "fixtures" / "docs"), str(chunks), str(documents))
    monkeypatch.setenv("CA_WIDGET_CHUNK_TABLE", str(chunks))
    monkeypatch.setenv("CA_WIDGET_DOCUMENTS_TABLE", str(documents))
    runpy.run_path(str(NOTEBOOKS / "explore_chunks.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert f"chunks: {chunks}" in out
    assert "broken.pdf" in out and "failed" in out  # the failures cell names the broken file
    assert "avg_chars" in out and "deployment-guide.md" in out


def test_inspect_memory_notebook(notebook_env, store, clock, monkeypatch, capsys):
    session = store.create_session("ana@example.com", "How do we deploy?")
    store.append("ana@example.com", session.id, "user", "How do we deploy the bundle?")
    store.append("ana@example.com", session.id, "assistant", "Run databricks bundle deploy -t dev.")
    monkeypatch.setenv("CA_WIDGET_USER", "ana@example.com")
    runpy.run_path(str(NOTEBOOKS / "inspect_memory.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "ana@example.com" in out and session.id in out
    assert "How do we deploy the bundle?" in out
    assert "traces" in out  # the traces cell reports what it found (or why not) without failing
