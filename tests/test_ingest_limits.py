"""Hostile files cannot stall or sink an ingest (issue 13.2): DOCX expansion caps read from the zip directory,
and parsing in a real child process with a hard wall-clock and memory limit, through real Spark and Delta.

The "slow parser" and "greedy parser" are stubs of the token counter the chunker calls (a real object that is
pickled into the real child process, like the model's tokenizer), so the limits are exercised where they run.
"""

from __future__ import annotations

import io
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from pyspark import cloudpickle

from context_assistant.core.clock import FakeClock
from context_assistant.ingest.documents import parse_document
from context_assistant.ingest.limits import ParseChild, ParseLimits
from context_assistant.ingest.run import run_ingest
from context_assistant.ingest.text import ParseError
from context_assistant.ingest.worker import parse_in_groups
from spark_support import local_spark  # noqa: F401  (the session-scoped `spark` fixture)

MiB = 1024 * 1024
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Spark's workers cannot import this test module


class StubCounter:
    """One token per character, but stalls on text with STALL and grabs memory on text with HOG (a parser gone
    bad on a hostile file)."""

    name = "stub"
    special_tokens = 0
    window = 10_000

    def token_starts(self, text: str) -> list[int]:
        if "STALL" in text:
            time.sleep(3600)
        if "HOG" in text:
            hoard = [bytearray(64 * MiB) for _ in range(64)]  # 4 GiB, over any limit the tests set
            return [len(hoard)]
        return list(range(len(text)))


def expansion_bomb(expanded_bytes: int) -> bytes:
    """A DOCX-shaped zip whose document.xml inflates from a few KB to ``expanded_bytes`` of XML."""
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            member.write(b'<?xml version="1.0"?><w:document><w:body>')
            block = b"<w:p><w:r><w:t>bomb</w:t></w:r></w:p>" * 4096
            for _ in range(expanded_bytes // len(block)):
                member.write(block)
            member.write(b"</w:body></w:document>")
    return body.getvalue()


def test_an_expansion_bomb_is_refused_from_the_zip_directory_before_it_is_inflated() -> None:
    bomb = expansion_bomb(40 * MiB)
    assert len(bomb) < 200 * 1024
    with pytest.raises(ParseError, match=r"DOCX would expand \d+x .* more than the 100x limit: an archive bomb"):
        parse_document("bomb.docx", bomb)


def test_a_stalled_parser_is_killed_at_its_limit_and_the_next_file_still_parses() -> None:
    limits = ParseLimits(seconds=1.0, memory_bytes=1024 * MiB)
    with ParseChild(200, 20, StubCounter(), limits, parse_in_groups) as child:  # type: ignore[arg-type]
        status, error, chunks = child.parse("stuck.txt", b"This text will STALL the parser.")
        assert (status, error, chunks) == (
            "failed",
            "parsing took longer than 1s (a pathological or huge file?)",
            [],
        )
        status, error, chunks = child.parse("fine.txt", b"A normal file beside it.")
        assert (status, error) == ("ok", None) and chunks[0].text == "A normal file beside it."


def test_a_parser_over_the_memory_limit_fails_that_file_only() -> None:
    limits = ParseLimits(seconds=120.0, memory_bytes=512 * MiB)
    with ParseChild(200, 20, StubCounter(), limits, parse_in_groups) as child:  # type: ignore[arg-type]
        status, error, _ = child.parse("greedy.txt", b"This text makes the parser HOG memory.")
        assert status == "failed"
        assert "512 MiB parse memory limit" in (error or "")
        assert child.parse("fine.txt", b"Still fine.")[:2] == ("ok", None)


def test_a_bomb_in_the_documents_folder_fails_with_its_reason_and_the_rest_ingests(
    spark: Any, tmp_path: Path, clock: FakeClock
) -> None:
    source = tmp_path / "docs"
    source.mkdir()
    (source / "bomb.docx").write_bytes(expansion_bomb(40 * MiB))
    (source / "stall.txt").write_text("Whoever reads this will STALL.")
    (source / "normal.md").write_text("# Normal\n\nThe file beside the bomb.\n")
    data = tmp_path / "data"
    clock.advance(60)

    result = run_ingest(
        spark,
        str(source),
        str(data / "chunks"),
        str(data / "documents"),
        clock=clock,
        counter=StubCounter(),  # type: ignore[arg-type]
        limits=ParseLimits(seconds=2.0, memory_bytes=1024 * MiB),
    )

    errors = {f.path: f.error for f in result.failures}
    assert set(errors) == {"bomb.docx", "stall.txt"}
    assert "archive bomb" in errors["bomb.docx"]
    assert errors["stall.txt"] == "parsing took longer than 2s (a pathological or huge file?)"
    rows = DeltaTable(str(data / "chunks")).to_pyarrow_table().to_pylist()
    assert {r["path"] for r in rows} == {"normal.md"}
