"""Configuration: defaults, overrides, and one clear line for every kind of mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from context_assistant.core.config import Config, ConfigError, load_config, parse_min_similarity

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_config_yaml_loads_and_matches_defaults() -> None:
    config = load_config(REPO / "config.yaml", env={})
    defaults = Config()
    assert config.model == defaults.model
    assert config.memory.max_history == 20
    assert config.rag == defaults.rag
    assert config.rag.backend == "pgvector" and config.rag.embedding_model == "all-MiniLM-L6-v2"
    assert config.database.embedded


def test_no_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env={})
    assert config.rag.top_k == 5
    assert config.data_path == (tmp_path / ".context-assistant").resolve()


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "data_dir: state\nrag:\n  source: docs\n")
    config = load_config(path, env={})
    assert config.data_path == (tmp_path / "state").resolve()
    assert config.resolve_path(config.rag.source) == (tmp_path / "docs").resolve()
    assert str(config.resolve_path("/Volumes/main/docs/source")) == "/Volumes/main/docs/source"


def test_env_var_names_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "rag:\n  top_k: 9\n")
    assert load_config(None, env={"CONTEXT_ASSISTANT_CONFIG": str(path)}).rag.top_k == 9


def test_explicit_path_beats_env(tmp_path: Path) -> None:
    a = write(tmp_path, "rag:\n  top_k: 9\n")
    b = tmp_path / "other.yaml"
    b.write_text("rag:\n  top_k: 3\n")
    assert load_config(b, env={"CONTEXT_ASSISTANT_CONFIG": str(a)}).rag.top_k == 3


def test_generic_env_overrides_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, "rag:\n  enabled: true\n")
    config = load_config(
        path,
        env={
            "CONTEXT_ASSISTANT__RAG__ENABLED": "false",
            "CONTEXT_ASSISTANT__RAG__TOP_K": "7",
            "CONTEXT_ASSISTANT__MODEL__ENDPOINT": "databricks-gpt-5",
        },
    )
    assert config.rag.enabled is False and config.rag.top_k == 7
    assert config.model.endpoint == "databricks-gpt-5"


def test_libpq_and_lakebase_env_vars_map_onto_database_keys() -> None:
    config = load_config(
        None,
        env={
            "LAKEBASE_HOST": "seed-host",
            "LAKEBASE_DATABASE": "agents",
            "PGHOST": "app-host",
            "PGPORT": "6543",
            "PGUSER": "sp-client-id",
            "PGSSLMODE": "require",
            "DATABRICKS_APP_PORT": "8080",
        },
    )
    # PG* (injected by Databricks Apps) win over the seed's LAKEBASE_* names.
    assert config.database.host == "app-host" and config.database.port == 6543
    assert config.database.name == "agents" and config.database.user == "sp-client-id"
    assert config.web.port == 8080 and not config.database.embedded


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rag:\n  backend: pgvektor\n", "rag.backend: 'pgvektor' is not one of pgvector, vector_search"),
        ("rag:\n  top_k: many\n", "rag.top_k: 'many' is not an integer"),
        ("rag:\n  top_k: 0\n", "rag.top_k: 0 must be at least 1"),
        ("rag:\n  enabled: maybe\n", "rag.enabled: 'maybe' is not true or false"),
        ("rag:\n  chunk_sise: 400\n", "rag.chunk_sise: unknown key (did you mean rag.chunk_size?)"),
        ("rag:\n  index_type: flat\n", "rag.index_type: 'flat' is not one of hnsw, ivfflat"),
        ("rag:\n  fusion: sum\n", "rag.fusion: 'sum' is not one of convex, minmax, rrf"),
        ("memory:\n  recall_fusion: sum\n", "memory.recall_fusion: 'sum' is not one of convex, minmax, rrf"),
        (
            "rag:\n  chunk_size: 100\n  chunk_overlap: 100\n",
            "rag.chunk_overlap: 100 must be smaller than rag.chunk_size",
        ),
        ("model: databricks\n", "model: expected a mapping of keys, got 'databricks'"),
        ("- a\n- b\n", "the top level must be a mapping of keys, got list"),
        ("memory:\n  max_history: [1, 2]\n", "memory.max_history: [1, 2] is not an integer"),
        ("rag:\n  top_k: 5\n   bad: indent\n", "is not valid YAML"),
        (
            "memory:\n  recall_min_similarity: 1.5\n",
            "memory.recall_min_similarity: '1.5' is not auto, off or a cosine similarity between -1 and 1",
        ),
    ],
)
def test_bad_config_names_key_value_and_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "value"), [("off", "False"), ("0.42", "0.42"), ("auto", "auto")])
def test_recall_min_similarity_reads_off_a_number_or_auto(tmp_path: Path, text: str, value: str) -> None:
    """YAML reads a bare ``off`` as false; it still means no floor."""
    config = load_config(write(tmp_path, f"memory:\n  recall_min_similarity: {text}\n"), env={})
    assert config.memory.recall_min_similarity == value
    assert parse_min_similarity(value) == {"off": None, "0.42": 0.42, "auto": "auto"}[text]


def test_bad_env_override_names_the_variable() -> None:
    with pytest.raises(
        ConfigError, match=r"rag.top_k \(from CONTEXT_ASSISTANT__RAG__TOP_K\): 'x' is not an integer"
    ):
        load_config(None, env={"CONTEXT_ASSISTANT__RAG__TOP_K": "x"})
    # A misspelt key and a value checked after the rest are traced to the variable too (a new user read
    # "rag.topk: unknown key" as a mistake in config.yaml).
    with pytest.raises(
        ConfigError,
        match=r"^rag.topk \(from CONTEXT_ASSISTANT__RAG__TOPK\): unknown key \(did you mean rag.top_k\?\)$",
    ):
        load_config(None, env={"CONTEXT_ASSISTANT__RAG__TOPK": "3"})
    with pytest.raises(
        ConfigError, match=r"^rag.min_similarity \(from CONTEXT_ASSISTANT__RAG__MIN_SIMILARITY\): "
    ):
        load_config(None, env={"CONTEXT_ASSISTANT__RAG__MIN_SIMILARITY": "high"})


def test_missing_explicit_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml", env={})


def test_cli_prints_one_line_and_exits_2_on_bad_config(tmp_path: Path) -> None:
    path = write(tmp_path, "rag:\n  backend: pgvektor\n")
    result = subprocess.run(
        [sys.executable, "-m", "context_assistant", "--config", str(path), "sessions", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "config error: rag.backend: 'pgvektor' is not one of pgvector, vector_search"
    assert "Traceback" not in result.stderr


def test_saved_config_loads_back_to_the_same_values(tmp_path: Path) -> None:
    from context_assistant.core.config import save_config

    original = load_config(
        None,
        env={},
        overrides={"rag.top_k": 9, "model.system_prompt": "Line one.\nLine two.", "data_dir": "/srv/ca"},
    )
    reloaded = load_config(save_config(original, tmp_path / "saved.yaml"), env={})
    assert reloaded.replace(base_dir=original.base_dir) == original
