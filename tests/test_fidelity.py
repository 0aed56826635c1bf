"""Parsing fidelity on documents generated with known content (``benchmarks/fidelity.py``): a PDF, a DOCX
with merged cells, page header/footer, a footnote and a text box, a long HTML page with spans, chrome and a
collapsed panel, and Markdown with a table. They go through the real ingest (local Spark, Delta chunk
table, token-sized chunks) and the chunk table's text must hold at least 98% of each reference's words
(counted with multiplicity, spanned table cells once per position they cover)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.fidelity import generate, read_chunk_texts, score, token_recall, tokens

from context_assistant.ingest.documents import parse_document
from context_assistant.ingest.run import run_ingest
from context_assistant.retrieval.tokenizer import counter_for_model

pytestmark = pytest.mark.spark


def test_generated_documents_keep_at_least_98_percent_of_their_words(spark, tmp_path: Path) -> None:
    references = generate(tmp_path / "docs")
    result = run_ingest(
        spark,
        str(tmp_path / "docs"),
        str(tmp_path / "chunks"),
        str(tmp_path / "documents"),
        chunk_size=256,
        chunk_overlap=32,
        counter=counter_for_model("all-MiniLM-L6-v2"),
    )
    assert result.documents.added == len(references) and not result.failures
    recall = score(references, read_chunk_texts(tmp_path / "chunks"))
    assert set(recall) == set(references)
    for name, value in recall.items():
        assert value >= 0.98, (name, value)


def test_page_chrome_stays_out_and_spans_are_expanded(tmp_path: Path) -> None:
    generate(tmp_path)
    html = "\n".join(s.text for s in parse_document("guide.html", (tmp_path / "guide.html").read_bytes()).sections)
    for chrome in ("chrome", "tracking", "font"):
        assert chrome not in html.lower()
    table = html[html.index("Rotation plan") :]
    rows = [line for line in table.splitlines() if line.startswith("|") and "---" not in line]
    assert len(rows) == 3 and all(line.count("|") == 5 for line in rows)  # 4 columns in every row
    docx_text = "\n".join(
        s.text for s in parse_document("handbook.docx", (tmp_path / "handbook.docx").read_bytes()).sections
    )
    assert docx_text.count("Text box") == 1  # the text box's legacy (VML) copy is not read twice
    assert "[^1]: Footnote" in docx_text and "confidential" in docx_text and "Page footer" in docx_text


def test_token_recall_counts_multiplicity() -> None:
    assert token_recall(tokens("a a b"), tokens("a b")) == pytest.approx(2 / 3)
    assert token_recall(tokens("A, b!"), tokens("b a")) == 1.0
    assert token_recall([], []) == 1.0
