"""The token counter of the configured embedding model, and the chunk sizes checked against it.

The counters themselves live in :mod:`context_assistant.ingest.tokenization` (ingest cuts chunks with
them); which one a model gets depends on where the model lives, which is the embedding side's knowledge:
the real tokenizer for a local sentence-transformers folder (including the bundled all-MiniLM-L6-v2), an
estimate with the endpoint's known window for a serving endpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.config import RagConfig
from ..ingest.tokenization import (
    DEFAULT_WINDOW,
    KNOWN_ENDPOINT_WINDOWS,
    EstimatedCounter,
    TokenCounter,
    WordPieceCounter,
    check_chunk_settings,
)
from .embeddings import MINILM_ALIASES, bundled_minilm_path, parse_model_spec, resolve_local_model


def local_model_folder(name: str) -> Path | None:
    """The folder of a local sentence-transformers model, if it is one we can read without a download."""
    if name.lower() in MINILM_ALIASES:
        try:
            return bundled_minilm_path()
        except Exception:
            return None
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def model_window(folder: Path, default: int = DEFAULT_WINDOW) -> int:
    """``max_seq_length`` from a sentence-transformers folder (what the model really reads)."""
    try:
        config = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        return int(config["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def counter_for_model(embedding_model: str) -> TokenCounter:
    """The token counter for ``rag.embedding_model``: the real tokenizer when the model is local, else the
    estimate with the endpoint's known window."""
    spec = parse_model_spec(embedding_model)
    if spec.provider == "local":
        folder = local_model_folder(spec.name)
        if folder is not None and (folder / "tokenizer.json").is_file():
            identity = resolve_local_model(spec.name)[0] if folder.exists() else spec.name
            return WordPieceCounter(
                name=f"wordpiece:{identity}",
                tokenizer_path=str(folder / "tokenizer.json"),
                window=model_window(folder),
            )
        return EstimatedCounter(window=DEFAULT_WINDOW)
    return EstimatedCounter(window=KNOWN_ENDPOINT_WINDOWS.get(spec.name, DEFAULT_WINDOW))


def chunking_from_config(rag: RagConfig) -> tuple[int, int, TokenCounter]:
    """``(chunk_size, chunk_overlap, counter)`` for the ingest, checked against the embedding model."""
    counter = counter_for_model(rag.embedding_model)
    check_chunk_settings(rag.chunk_size, rag.chunk_overlap, counter, rag.embedding_model)
    return rag.chunk_size, rag.chunk_overlap, counter
