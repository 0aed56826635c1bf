"""Parsing fidelity: documents generated with known content, ingested for real, scored by token recall.

Each generator writes one file and returns the words a careful reader of it would keep (the reference):
body text, headings, every table cell -- a cell spanning rows or columns counts once per position it
covers, as a reader of the table sees it -- page headers and footers, footnotes, text boxes; and never the
page chrome of a web page (site navigation, site header and footer, scripts), which the reference leaves
out. Token recall = the share of reference tokens (lower-cased words, counted with multiplicity) found in
the chunk table's text of that document.

* ``report.pdf`` (reportlab): three pages of prose under headings, and a table.
* ``handbook.docx`` (python-docx): headings, paragraphs, a table with a cell merged across columns and one
  merged down rows, a page header and footer, a footnote and a text box.
* ``guide.html``: a long page (40 sections, site chrome around a ``<main>``), sections with their own
  ``<header>``, an article ``<aside>``, a collapsed FAQ panel, and a table with ``rowspan``/``colspan``.
* ``notes.md``: headings, lists, a pipe table and a fenced code block.

``python -m benchmarks.quality EVAL_DIR --only fidelity`` prints the figure; ``tests/test_fidelity.py``
asserts it stays at or above 0.98 for every document.
"""

from __future__ import annotations

import io
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

WORD = re.compile(r"\w+", re.UNICODE)
_VOCABULARY = tuple(
    [
        "ledger",
        "quorum",
        "harbor",
        "spindle",
        "lantern",
        "meadow",
        "cobalt",
        "orchard",
        "falcon",
        "ember",
        "willow",
        "granite",
        "canvas",
        "beacon",
        "thistle",
        "copper",
        "marble",
        "saffron",
        "juniper",
        "pylon",
        "quartz",
        "tundra",
        "vortex",
        "zephyr",
        "amber",
        "basalt",
        "cedar",
        "dune",
        "fjord",
        "glacier",
        "hazel",
        "indigo",
        "jasper",
        "kestrel",
        "lagoon",
        "mosaic",
        "nectar",
        "onyx",
        "prairie",
        "quiver",
        "rapids",
        "sierra",
        "timber",
        "umber",
        "velvet",
        "walnut",
        "yarrow",
        "zinnia",
        "acorn",
        "bramble",
        "cinder",
        "delta",
        "estuary",
        "fennel",
        "garnet",
        "heron",
        "islet",
        "kiln",
        "lichen",
    ]
)


def tokens(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def token_recall(reference: Iterable[str], candidate: Iterable[str]) -> float:
    """Share of reference tokens (with multiplicity) present in the candidate."""
    want, have = Counter(reference), Counter(candidate)
    total = sum(want.values())
    return sum(min(n, have[w]) for w, n in want.items()) / total if total else 1.0


def _sentence(rng: random.Random, words: int = 14) -> str:
    return " ".join(rng.choice(_VOCABULARY) for _ in range(words)).capitalize() + "."


def _paragraph(rng: random.Random, sentences: int = 4) -> str:
    return " ".join(_sentence(rng, rng.randint(9, 18)) for _ in range(sentences))


# ---------------------------------------------------------------------------------------------------------
# Generators: each writes a file into ``folder`` and returns the reference text (words only matter)


def make_pdf(folder: Path, rng: random.Random) -> str:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Table, TableStyle

    styles = getSampleStyleSheet()
    story: list[Any] = []
    reference: list[str] = []
    for page in range(3):
        title = f"Section {page + 1} {rng.choice(_VOCABULARY)} review"
        story.append(Paragraph(title, styles["Heading1"]))
        reference.append(title)
        for _ in range(3):
            text = _paragraph(rng)
            story.append(Paragraph(text, styles["BodyText"]))
            reference.append(text)
        if page == 1:
            rows = [["Item", "Owner", "Due"]] + [
                [rng.choice(_VOCABULARY), rng.choice(_VOCABULARY), f"{rng.randint(1, 28)} May"] for _ in range(4)
            ]
            table = Table(rows)
            table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.grey)]))
            story.append(table)
            reference.extend(" ".join(row) for row in rows)
        if page < 2:
            story.append(PageBreak())
    buffer = io.BytesIO()
    SimpleDocTemplate(buffer, pagesize=A4, title="Fidelity report").build(story)
    (folder / "report.pdf").write_bytes(buffer.getvalue())
    return "\n".join(reference)


_FOOTNOTES_XML = (
    '<w:footnotes xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    '<w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:footnote>'
    '<w:footnote w:type="continuationSeparator" w:id="0"><w:p><w:r><w:continuationSeparator/></w:r></w:p>'
    "</w:footnote>"
    '<w:footnote w:id="1"><w:p><w:r><w:t>{note}</w:t></w:r></w:p></w:footnote>'
    "</w:footnotes>"
)
_TEXT_BOX_XML = (
    '<w:r xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
    'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" '
    'xmlns:wps="http://schemas.microsoft.com/office/word/2010/wordprocessingShape" '
    'xmlns:v="urn:schemas-microsoft-com:vml">'
    '<mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><wps:wsp><wps:txbx><w:txbxContent>'
    "<w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:txbxContent></wps:txbx></wps:wsp></w:drawing></mc:Choice>"
    "<mc:Fallback><w:pict><v:shape><v:textbox><w:txbxContent><w:p><w:r><w:t>{text}</w:t></w:r></w:p>"
    "</w:txbxContent></v:textbox></v:shape></w:pict></mc:Fallback></mc:AlternateContent></w:r>"
)


def make_docx(folder: Path, rng: random.Random) -> str:
    import docx
    from docx.opc.constants import RELATIONSHIP_TYPE
    from docx.opc.packuri import PackURI
    from docx.opc.part import Part
    from docx.oxml import parse_xml

    document = docx.Document()
    reference: list[str] = []
    header_text, footer_text = f"Handbook {rng.choice(_VOCABULARY)} confidential", "Page footer lantern notice"
    document.sections[0].header.paragraphs[0].text = header_text
    document.sections[0].footer.paragraphs[0].text = footer_text
    reference.extend([header_text, footer_text])
    document.add_heading("Operations handbook", level=0)
    reference.append("Operations handbook")
    for number in range(3):
        heading = f"Chapter {number + 1} {rng.choice(_VOCABULARY)}"
        document.add_heading(heading, level=1)
        reference.append(heading)
        for _ in range(2):
            text = _paragraph(rng)
            document.add_paragraph(text)
            reference.append(text)

    table = document.add_table(rows=4, cols=3)
    values = [[f"{rng.choice(_VOCABULARY)} {r}{c}" for c in range(3)] for r in range(4)]
    for r, row in enumerate(values):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    table.cell(0, 0).merge(table.cell(0, 1))  # across two columns: its text, once per column
    table.cell(0, 0).text = values[0][0]
    table.cell(1, 2).merge(table.cell(3, 2))  # down three rows
    table.cell(1, 2).text = values[1][2]
    expanded = [
        [values[0][0], values[0][0], values[0][2]],
        [values[1][0], values[1][1], values[1][2]],
        [values[2][0], values[2][1], values[1][2]],
        [values[3][0], values[3][1], values[1][2]],
    ]
    reference.extend(" ".join(row) for row in expanded)

    note = f"Footnote {rng.choice(_VOCABULARY)} {rng.choice(_VOCABULARY)} source"
    paragraph = document.add_paragraph("A claim that needs a source")
    reference.append("A claim that needs a source")
    paragraph._p.append(
        parse_xml(
            '<w:r xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            '<w:footnoteReference w:id="1"/></w:r>'
        )
    )
    part = Part(
        PackURI("/word/footnotes.xml"),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.footnotes+xml",
        _FOOTNOTES_XML.format(note=note).encode(),
        document.part.package,
    )
    document.part.relate_to(part, RELATIONSHIP_TYPE.FOOTNOTES)
    reference.append(note)

    box = f"Text box {rng.choice(_VOCABULARY)} callout"
    anchor = document.add_paragraph("Anchor paragraph")
    anchor._p.append(parse_xml(_TEXT_BOX_XML.format(text=box)))
    reference.extend(["Anchor paragraph", box])
    document.save(str(folder / "handbook.docx"))
    return "\n".join(reference)


def make_html(folder: Path, rng: random.Random) -> str:
    reference: list[str] = []
    sections = []
    for number in range(40):
        heading = f"Topic {number + 1} {rng.choice(_VOCABULARY)}"
        intro, body = _sentence(rng), _paragraph(rng, 5)
        reference.extend([heading, intro, body])
        sections.append(f"<section><header><h2>{heading}</h2><p>{intro}</p></header><p>{body}</p></section>")
    aside, panel = _sentence(rng), _paragraph(rng, 2)
    reference.extend(["Note", aside, "How is it rotated?", panel])
    cells = [[f"{rng.choice(_VOCABULARY)}{r}{c}" for c in range(4)] for r in range(4)]
    table = (
        "<table><caption>Rotation plan</caption>"
        f"<tr><th rowspan='2'>{cells[0][0]}</th><th colspan='2'>{cells[0][1]}</th><th>{cells[0][3]}</th></tr>"
        f"<tr><td>{cells[1][1]}</td><td>{cells[1][2]}</td><td rowspan='2'>{cells[1][3]}</td></tr>"
        f"<tr><td>{cells[2][0]}</td><td colspan='2'>{cells[2][1]}</td></tr>"
        "</table>"
    )
    expanded = [
        [cells[0][0], cells[0][1], cells[0][1], cells[0][3]],
        [cells[0][0], cells[1][1], cells[1][2], cells[1][3]],
        [cells[2][0], cells[2][1], cells[2][1], cells[1][3]],
    ]
    reference.append("Rotation plan")
    reference.extend(" ".join(row) for row in expanded)
    page = f"""<!doctype html><html><head><title>Site title chrome</title><script>var tracking = 1;</script>
<style>body {{ font-family: serif }}</style></head><body>
<header class="site"><a href="/">Brand chrome</a><nav><a>Home chrome</a><a>Blog chrome</a></nav></header>
<main><article><h1>Long guide</h1>{"".join(sections)}
<aside><h3>Note</h3><p>{aside}</p></aside>
<div class="faq"><button>How is it rotated?</button><div class="panel" hidden><p>{panel}</p></div></div>
{table}</article></main>
<footer>Copyright chrome</footer></body></html>"""
    reference.insert(0, "Long guide")
    (folder / "guide.html").write_text(page, encoding="utf-8")
    return "\n".join(reference)


def make_markdown(folder: Path, rng: random.Random) -> str:
    rows = [[rng.choice(_VOCABULARY) for _ in range(3)] for _ in range(4)]
    items = [_sentence(rng, 8) for _ in range(4)]
    paragraphs = [_paragraph(rng) for _ in range(3)]
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows[:1]) + "\n| --- | --- | --- |\n"
    table += "\n".join("| " + " | ".join(row) + " |" for row in rows[1:])
    text = (
        f"# Team notes\n\n{paragraphs[0]}\n\n## Checklist\n\n"
        + "\n".join(f"- {item}" for item in items)
        + f"\n\n## Owners\n\n{table}\n\n## Commands\n\n```bash\ndeploy --env staging\n```\n\n{paragraphs[1]}\n\n"
        f"### Later\n\n{paragraphs[2]}\n"
    )
    (folder / "notes.md").write_text(text, encoding="utf-8")
    return "\n".join(
        [
            *["Team notes", paragraphs[0], "Checklist", *items, "Owners", *(" ".join(r) for r in rows)],
            *["Commands", "deploy --env staging", paragraphs[1], "Later", paragraphs[2]],
        ]
    )


GENERATORS: dict[str, Callable[[Path, random.Random], str]] = {
    "report.pdf": make_pdf,
    "handbook.docx": make_docx,
    "guide.html": make_html,
    "notes.md": make_markdown,
}


def generate(folder: Path, seed: int = 15) -> dict[str, str]:
    """Write every document into ``folder``; returns ``{file name: reference text}``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    return {name: make(folder, rng) for name, make in GENERATORS.items()}


def score(references: dict[str, str], chunk_texts: dict[str, list[str]]) -> dict[str, float]:
    """Token recall per document of its chunks' text (the chunk table's ``text`` column)."""
    return {
        name: token_recall(tokens(reference), tokens("\n".join(chunk_texts.get(name, []))))
        for name, reference in references.items()
    }


def run_fidelity(folder: Path, *, say: Any = print) -> dict[str, Any]:
    """Generate, ingest with the real ingest (local Spark, Delta), read the chunk table, score."""
    import shutil

    from benchmarks.quality import bench_config
    from context_assistant.ingest import get_spark, run_ingest
    from context_assistant.retrieval import chunking_from_config

    shutil.rmtree(folder, ignore_errors=True)
    references = generate(folder / "docs")
    config = bench_config("quality_fidelity")
    size, overlap, counter = chunking_from_config(config.rag)
    run_ingest(
        get_spark(config.data_path),
        str(folder / "docs"),
        str(folder / "chunks"),
        str(folder / "documents"),
        chunk_size=size,
        chunk_overlap=overlap,
        counter=counter,
    )
    by_path = read_chunk_texts(folder / "chunks")
    per_document = score(references, by_path)
    total_ref = sum(len(tokens(r)) for r in references.values())
    overall = sum(per_document[name] * len(tokens(r)) for name, r in references.items()) / total_ref
    say(f"fidelity: {overall:.3f} ({', '.join(f'{k} {v:.3f}' for k, v in per_document.items())})")
    return {"token_recall": round(overall, 4), "documents": {k: round(v, 4) for k, v in per_document.items()}}


def read_chunk_texts(location: Path) -> dict[str, list[str]]:
    from deltalake import DeltaTable

    rows = DeltaTable(str(location)).to_pyarrow_table(columns=["path", "chunk_index", "text"]).to_pylist()
    by_path: dict[str, list[str]] = {}
    for row in sorted(rows, key=lambda r: (r["path"], r["chunk_index"])):
        by_path.setdefault(row["path"], []).append(row["text"])
    return by_path
