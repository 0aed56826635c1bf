"""Big text files are chunked window by window in bounded memory (issue 14.3, parse side), and the ingest limits
are settings (``rag.max_file_mb``, ``rag.parse_timeout_seconds``, ``rag.parse_memory_mb``, ``rag.symlinks``)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from context_assistant.core.config import load_config
from context_assistant.core.errors import ConfigError
from context_assistant.ingest.chunking import split_long_text, split_text
from context_assistant.ingest.tokenization import count_tokens
from context_assistant.refresh import ingest_limits
from context_assistant.retrieval.tokenizer import counter_for_model


def prose(paragraphs: int, seed: int = 3) -> str:
    rng = random.Random(seed)
    words = [
        "deploy",
        "rollback",
        "pager",
        "rota",
        "audit",
        "retention",
        "policy",
        "dashboard",
        "release",
        "window",
        "engineer",
    ]
    return "\n\n".join(
        " ".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) + "." for _ in range(4))
        for _ in range(paragraphs)
    )


def squash(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("use_tokens", [False, True])
def test_a_long_section_is_cut_in_windows_that_cover_it_exactly_within_the_size(use_tokens: bool) -> None:
    counter = counter_for_model("all-MiniLM-L6-v2") if use_tokens else None
    text = prose(400)
    pieces = list(split_long_text(text, 64, 8, counter=counter, window=5_000))

    assert squash("".join(p.text[p.overlap_chars :] for p in pieces)) == squash(text)
    assert all(text[p.start : p.end] == p.text for p in pieces)
    size: Any = (lambda t: count_tokens(counter, t)) if counter is not None else len
    assert max(size(p.text) for p in pieces) <= 64
    short = prose(3)
    assert list(split_long_text(short, 64, 8, counter=counter, window=5_000)) == split_text(
        short, 64, 8, counter=counter
    )


def test_a_window_without_paragraphs_is_cut_at_a_line_or_a_space_never_mid_word() -> None:
    text = " ".join(["word"] * 10_000)
    pieces = list(split_long_text(text, 100, 0, window=1_000))
    assert all(p.text.split(" ") == ["word"] * len(p.text.split(" ")) for p in pieces)
    assert squash("".join(p.text for p in pieces)) == squash(text)


def test_the_ingest_limits_are_settings(tmp_path: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "rag:\n  max_file_mb: 0.5\n  parse_timeout_seconds: 30\n  parse_memory_mb: 512\n  symlinks: inside\n"
    )
    limits = ingest_limits(load_config(path, env={}))
    assert limits["max_file_bytes"] == 512 * 1024
    assert (limits["limits"].seconds, limits["limits"].memory_bytes) == (30, 512 * 1024 * 1024)
    assert limits["symlinks"] == "inside"
    path.write_text("rag:\n  symlinks: always\n")
    with pytest.raises(ConfigError, match=r"rag\.symlinks"):
        load_config(path, env={})


def test_a_long_plain_text_is_normalised_block_by_block_with_the_same_result() -> None:
    from context_assistant.ingest.documents import normalize_in_blocks
    from context_assistant.ingest.text import normalize_text

    text = prose(300).replace(". ", ".\r\n", 50).replace("\n\n", "\n\n\n  \t\n", 40) + "\n\nCafe\u0301 au lait.\n"
    assert len(text) > 20_000
    assert normalize_in_blocks(text, block=2_000) == normalize_text(text)
    one_line = "word " * 5_000
    assert normalize_in_blocks(one_line, block=2_000).split() == one_line.split()
