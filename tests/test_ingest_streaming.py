"""Big text files are chunked window by window in bounded memory (issue 14.3, parse side), their chunks stream
through real Spark and Delta one row each in bounded batches (never one row holding a file's chunks), and the
ingest limits are settings (``rag.max_file_mb``, ``rag.parse_timeout_seconds``, ``rag.parse_memory_mb``,
``rag.symlinks``).

The "broken parser" is a stub of the token counter the chunker calls (a real object pickled into the real
parse child, like the model's tokenizer), so a file fails part way through where files really are parsed.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark import cloudpickle

from context_assistant.core.clock import FakeClock
from context_assistant.core.config import load_config
from context_assistant.core.errors import ConfigError
from context_assistant.ingest.chunking import chunk_document, split_long_text, split_text
from context_assistant.ingest.contract import CHUNK_FIELDS, names
from context_assistant.ingest.documents import parse_document
from context_assistant.ingest.limits import ParseLimits
from context_assistant.ingest.run import run_ingest
from context_assistant.ingest.tokenization import count_tokens
from context_assistant.ingest.worker import GROUP_CHUNKS, make_batch_parser
from context_assistant.refresh import ingest_limits
from context_assistant.retrieval.tokenizer import counter_for_model
from spark_support import local_spark  # noqa: F401  (the session-scoped `spark` fixture)

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Spark's workers cannot import this test module


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


# ------------------------------------------------------------------- a big file's chunks through Spark, row by row


class BreakingCounter:
    """One token per character; fails on text holding BREAK (a parser that dies part way through a file)."""

    name = "breaking-stub"
    special_tokens = 0
    window = 10_000

    def token_starts(self, text: str) -> list[int]:
        if "BREAK" in text:
            raise ValueError("the parser broke on this file")
        return list(range(len(text)))


CHUNK = 60  # characters: a 600 KB file makes ~10,000 chunks, more than two groups


def many_chunks(path: str, text: str) -> set[tuple[Any, ...]]:
    doc = parse_document(path, text.encode())
    return {
        tuple(getattr(c, f) for f in names(CHUNK_FIELDS)) for c in chunk_document(doc, CHUNK, 0, BreakingCounter())
    }  # type: ignore[arg-type]


def stored(data: Path, path: str) -> set[tuple[Any, ...]]:
    rows = DeltaTable(str(data / "chunks")).to_pyarrow_table().to_pylist()
    return {tuple(r[f] for f in names(CHUNK_FIELDS)) for r in rows if r["path"] == path}


def test_a_file_of_many_chunks_leaves_the_parser_one_row_per_chunk_in_bounded_batches() -> None:
    text = prose(2_500)
    batch = pa.RecordBatch.from_pylist(
        [{"path": "big.txt", "size_bytes": len(text), "modified_us": 1, "doc_hash": "h", "content": text.encode()}]
    )
    out = list(make_batch_parser(CHUNK, 0, BreakingCounter())(iter([batch])))  # type: ignore[arg-type]

    assert len(out) > 2 and all(b.num_rows <= GROUP_CHUNKS for b in out)
    rows = [row for b in out for row in b.to_pylist()]
    (summary,) = [r for r in rows if r["status"] is not None]
    chunk_rows = [r for r in rows if r["chunk_id"] is not None]
    assert summary["status"] == "ok" and summary["chunk_count"] == len(chunk_rows) > 2 * GROUP_CHUNKS
    assert {tuple(r[f] for f in names(CHUNK_FIELDS)) for r in chunk_rows} == many_chunks("big.txt", text)
    assert all((r["path"], r["doc_hash"], r["modified_us"]) == ("big.txt", "h", 1) for r in chunk_rows)


def test_a_big_file_streams_into_delta_and_one_failing_part_way_keeps_its_last_good_chunks(
    spark: Any, tmp_path: Path
) -> None:
    source, data, clock = tmp_path / "docs", tmp_path / "data", FakeClock()
    source.mkdir()
    v1 = prose(2_500)
    (source / "big.txt").write_text(v1)
    (source / "small.md").write_text("# Small\n\nA small document beside the big one.\n")

    def ingest() -> Any:
        clock.advance(60)
        return run_ingest(
            spark, str(source), str(data / "chunks"), str(data / "documents"), chunk_size=CHUNK, chunk_overlap=0,
            counter=BreakingCounter(), clock=clock, limits=ParseLimits(seconds=120.0),  # type: ignore[arg-type]
        )  # fmt: skip

    first = ingest()
    assert first.failures == [] and stored(data, "big.txt") == many_chunks("big.txt", v1)
    assert first.chunks.written == len(many_chunks("big.txt", v1)) + len(stored(data, "small.md"))

    # The next version breaks the parser near its end, after more than a group of chunks has streamed out.
    (source / "big.txt").write_text(v1 + "\n\nThe end. BREAK\n")
    broken = ingest()
    assert [(f.path, f.error) for f in broken.failures] == [
        ("big.txt", "unexpected ValueError while parsing: the parser broke on this file")
    ]
    staged = DeltaTable(str(data / "chunks__ingest_staging")).to_pyarrow_table().to_pylist()
    assert sum(r["chunk_id"] is not None for r in staged) >= GROUP_CHUNKS  # streamed, then ignored
    assert stored(data, "big.txt") == many_chunks("big.txt", v1)  # nothing lost
    assert broken.chunks.written == broken.chunks.deleted == 0

    v3 = prose(1_000, seed=5)  # fixed and shorter: the tail goes, the rest converges exactly
    (source / "big.txt").write_text(v3)
    fixed = ingest()
    assert fixed.failures == [] and stored(data, "big.txt") == many_chunks("big.txt", v3)
    again = ingest()
    assert (again.parsed, again.chunks.written, again.chunks.deleted) == (0, 0, 0)


def test_the_local_spark_server_runs_with_few_malloc_arenas_and_keeps_idle_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server embeds inside itself (torch and pysail's threads); glibc's per-thread arenas kept ~1 GB more
    there (benchmarks/big_file.py --embed). Its environment says MALLOC_ARENA_MAX=2 unless the user set one.
    pysail ends a session idle for minutes; this private server keeps one for a week (see also
    test_interrupts.py's replaced-session test)."""
    from context_assistant.ingest.spark_server import LocalSparkServer

    monkeypatch.delenv("SAIL_SPARK__SESSION_TIMEOUT_SECS", raising=False)
    server = LocalSparkServer(tmp_path / "spark-server.log")
    server.start()
    try:
        assert server.process is not None
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    finally:
        server.stop()
    expected = os.environ.get("MALLOC_ARENA_MAX", "2")  # a value the user set is kept
    assert f"MALLOC_ARENA_MAX={expected}".encode() in environ
    assert f"SAIL_SPARK__SESSION_TIMEOUT_SECS={7 * 24 * 3600}".encode() in environ
