"""Token counting for chunk sizes: the real tokenizer for local models, a documented estimate for serving
endpoints, and the checks that turn an old character-based ``rag.chunk_size`` into a clear message."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from context_assistant.core.config import load_config
from context_assistant.core.errors import ConfigError
from context_assistant.ingest.documents import parse_document
from context_assistant.ingest.tokenization import (
    ChunkingConfigError,
    EstimatedCounter,
    WordPieceCounter,
    check_chunk_settings,
    count_tokens,
)
from context_assistant.retrieval.tokenizer import chunking_from_config, counter_for_model

DOCS = Path(__file__).resolve().parent.parent / "fixtures" / "docs"


def test_local_minilm_uses_its_own_tokenizer_and_window() -> None:
    counter = counter_for_model("all-MiniLM-L6-v2")
    assert isinstance(counter, WordPieceCounter)
    assert counter.window == 256 and counter.special_tokens == 2
    assert counter.name == "wordpiece:sentence-transformers/all-MiniLM-L6-v2"
    # "pgvector" is three word pieces (pg ##ve ##ctor); punctuation is a token of its own
    assert count_tokens(counter, "pgvector rocks!") == 5
    assert counter.token_starts("hello world") == [0, 6]
    assert pickle.loads(pickle.dumps(counter)) == counter  # it travels into Spark workers


def test_serving_endpoints_use_the_estimate_with_their_window() -> None:
    gte = counter_for_model("databricks-gte-large-en")
    assert isinstance(gte, EstimatedCounter) and gte.window == 8192
    assert counter_for_model("databricks-bge-large-en").window == 512
    assert counter_for_model("endpoint:my-embedder").window == 512  # unknown: a conservative default


def test_estimate_tracks_the_real_word_piece_count_and_errs_high() -> None:
    """On the sample documents the estimate is within a few percent under and at most ~30% over the real
    count, so token-sized chunks for an endpoint stay inside its window."""
    real, estimate = counter_for_model("all-MiniLM-L6-v2"), EstimatedCounter()
    for path in sorted(DOCS.rglob("*")):
        if path.suffix not in (".md", ".txt", ".html", ".htm", ".docx", ".pdf") or path.name in (
            "empty.txt",
            "broken.pdf",
        ):
            continue
        text = "\n".join(s.text for s in parse_document(path.name, path.read_bytes()).sections)
        ratio = count_tokens(estimate, text) / count_tokens(real, text)
        assert 0.95 <= ratio <= 1.3, (path.name, ratio)


def test_an_old_character_sized_chunk_is_refused_with_the_migration_hint() -> None:
    counter = counter_for_model("all-MiniLM-L6-v2")
    with pytest.raises(ChunkingConfigError) as info:
        check_chunk_settings(500, 50, counter, "all-MiniLM-L6-v2")
    message = str(info.value)
    assert message.startswith(
        "rag.chunk_size: 500 tokens is more than the embedding model all-MiniLM-L6-v2 reads (256"
    )
    assert "used to count characters (500 characters is about 125 tokens)" in message
    assert isinstance(info.value, ConfigError)  # the CLI prints it as a config error and exits 2
    with pytest.raises(ChunkingConfigError, match=r"rag.chunk_overlap: 200 tokens is more than half"):
        check_chunk_settings(256, 200, counter, "all-MiniLM-L6-v2")
    check_chunk_settings(256, 32, counter, "all-MiniLM-L6-v2")


def test_chunking_from_config_defaults_fit_minilm(tmp_path: Path) -> None:
    config = load_config(None, env={})
    size, overlap, counter = chunking_from_config(config.rag)
    assert (size, overlap, counter.window) == (256, 32, 256)
    old = tmp_path / "config.yaml"
    old.write_text("rag:\n  chunk_size: 500\n  chunk_overlap: 50\n", encoding="utf-8")
    with pytest.raises(ChunkingConfigError, match="used to count characters"):
        chunking_from_config(load_config(old, env={}).rag)
