"""A deterministic corpus of short team documents for the indexing benchmarks, and its expected index state.

Documents are small Markdown runbooks (a title, one to three ``##`` sections of a few sentences each), so each
yields one to three chunks at the default chunk size: 5,000 documents make about 10,000 chunks. The text is
built from a fixed vocabulary with a seeded generator, so every run — and both sides of a comparison — sees
byte-identical documents. :meth:`Corpus.edit` and :meth:`Corpus.delete` change a deterministic 1% of them the
way a team would (a sentence reworded; a page removed).

Chunks come from the product's own parser and chunker (:func:`parse_document`, :func:`chunk_document`), the
same functions the Spark pipeline applies, so the chunk list here equals the chunk table an ingest writes.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from context_assistant.ingest import chunk_document, content_hash, parse_document
from context_assistant.retrieval import SourceChunk, embedding_text

SYSTEMS = (
    "billing pipeline", "feature store", "orders warehouse", "identity service", "ingest job", "dashboard",
    "notebook cluster", "model endpoint", "event stream", "audit log", "vector index", "sales mart",
    "payments API", "search service", "metrics table", "schema registry", "batch scheduler", "data lake",
)  # fmt: skip
SECTIONS = (
    "Overview", "Ownership", "Deployment", "On-call", "Retention", "Access", "Incidents", "Costs", "Testing",
    "Backfills", "Monitoring", "Runbook",
)  # fmt: skip
SUBJECTS = (
    "The team", "The on-call engineer", "Each release", "The nightly job", "A reviewer", "The owner",
    "Every alert", "The data steward", "A new joiner", "The platform group",
)  # fmt: skip
VERBS = (
    "checks", "rotates", "archives", "reviews", "deploys", "monitors", "documents", "approves", "restarts",
    "tags", "rebuilds", "validates", "escalates", "migrates", "audits",
)  # fmt: skip
OBJECTS = (
    "the access tokens", "the Delta tables", "the cluster policies", "the retention rules", "the schema changes",
    "the failed runs", "the cost report", "the service principal", "the backfill plan", "the alert thresholds",
    "the Unity Catalog grants", "the staging workspace", "the release notes", "the partition layout",
)  # fmt: skip
WHEN = (
    "every Monday", "before each release", "within one hour of a page", "at the end of the sprint",
    "after every schema change", "once a quarter", "when the budget alert fires", "on the first of the month",
    "before the handover", "whenever a job fails twice",
)  # fmt: skip
WHY = (
    "so that nothing is lost", "to keep costs predictable", "because auditors ask for it",
    "so the next shift can pick it up", "to catch drift early", "as agreed with the security team",
    "so dashboards stay fresh", "to avoid surprise outages",
)  # fmt: skip


def sentence(rng: random.Random) -> str:
    return (
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(WHEN)} {rng.choice(WHY)}."
    )


def document(index: int, rng: random.Random) -> str:
    system = rng.choice(SYSTEMS)
    lines = [f"# {system.title()} {index:05d}", ""]
    for title in rng.sample(SECTIONS, rng.choice((1, 2, 2, 3))):
        lines += [f"## {title}", "", " ".join(sentence(rng) for _ in range(rng.randint(2, 4))), ""]
    return "\n".join(lines)


@dataclass
class Corpus:
    """Documents by relative path (``team-NN/doc-NNNNN.md``) → Markdown text."""

    docs: dict[str, str]
    chunk_size: int = 500
    chunk_overlap: int = 50
    seed: int = 2026
    _chunks: dict[str, list[SourceChunk]] = field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls, documents: int, seed: int = 2026) -> Corpus:
        rng = random.Random(seed)
        docs = {f"team-{i % 50:02d}/doc-{i:05d}.md": document(i, rng) for i in range(documents)}
        return cls(docs, seed=seed)

    def sample(self, fraction: float, salt: int) -> list[str]:
        """A deterministic ``fraction`` of the current documents (at least one)."""
        paths = sorted(self.docs)
        count = max(1, round(len(paths) * fraction))
        return sorted(random.Random(self.seed * 1000 + salt).sample(paths, count))

    def edit(self, fraction: float = 0.01, salt: int = 1) -> list[str]:
        """Reword the first sentence of a fraction of the documents; returns their paths."""
        paths = self.sample(fraction, salt)
        for path in paths:
            head, body = self.docs[path].split("## ", 1)
            title, rest = body.split("\n\n", 1)
            first_end = rest.index(".") + 1
            self.docs[path] = f"{head}## {title}\n\nThis was revised (edit {salt}).{rest[first_end:]}"
            self._chunks.pop(path, None)
        return paths

    def delete(self, fraction: float = 0.01, salt: int = 2) -> list[str]:
        """Remove a fraction of the documents; returns their paths."""
        paths = self.sample(fraction, salt)
        for path in paths:
            del self.docs[path]
            self._chunks.pop(path, None)
        return paths

    def copy(self) -> Corpus:
        return Corpus(dict(self.docs), self.chunk_size, self.chunk_overlap, self.seed, dict(self._chunks))

    def chunks_of(self, path: str) -> list[SourceChunk]:
        cached = self._chunks.get(path)
        if cached is None:
            parsed = parse_document(path, self.docs[path].encode("utf-8"))
            cached = [
                SourceChunk(c.chunk_id, c.path, c.chunk_index, c.text, c.heading, c.page, c.content_hash)
                for c in chunk_document(parsed, self.chunk_size, self.chunk_overlap)
            ]
            self._chunks[path] = cached
        return cached

    def chunks(self) -> list[SourceChunk]:
        return [chunk for path in sorted(self.docs) for chunk in self.chunks_of(path)]

    def expected_state(self) -> Counter[tuple[str, str]]:
        """What a correct index holds: one (source path, sha256 of the embedded text) per chunk."""
        return state_of((c.path, embedding_text(c.heading, c.text)) for c in self.chunks())

    def write(self, root: Path) -> None:
        """Make the folder ``root`` hold exactly these documents (only changed files are rewritten)."""
        root.mkdir(parents=True, exist_ok=True)
        wanted = {root / path: text for path, text in self.docs.items()}
        for existing in root.rglob("*.md"):
            if existing not in wanted:
                existing.unlink()
        for path, text in wanted.items():
            if path.exists() and path.read_text(encoding="utf-8") == text:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


def state_of(rows) -> Counter[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(source, text) pairs as a multiset of (source, sha256(text)): how both sides' end states are compared."""
    return Counter((path, content_hash(text)) for path, text in rows)


def describe_difference(got: Counter[tuple[str, str]], expected: Counter[tuple[str, str]]) -> str:
    """'' when equal, else how many entries are missing and how many are extra."""
    if got == expected:
        return ""
    missing = sum((expected - got).values())
    extra = sum((got - expected).values())
    return f"{missing} expected chunk(s) missing, {extra} unexpected chunk(s) present"
