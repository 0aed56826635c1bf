"""Embedding at scale: chunks embedded by Spark into the embeddings Delta table, keyed by (content hash, model).

Real parts: the product's local Spark (pysail) running ``mapInArrow``, real Delta tables (written by pysail and
read back with ``deltalake``), real Postgres + pgvector for the index sync. The serving endpoint is
Databricks-only, so those tests drive the project's real endpoint client (httpx with databricks-sdk
authentication, running inside the Spark worker) against a loopback server speaking the documented REST shape
``POST /serving-endpoints/{name}/invocations`` ``{"input": [...]}`` -> ``{"data": [{"embedding", "index"}]}``.
They count what reached the endpoint: nothing for an unchanged corpus, about 1% for a 1%-changed one, and
everything again for a new model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from context_assistant.core.config import Config
from context_assistant.ingest.tables import local_table
from context_assistant.refresh import refresh_index
from context_assistant.retrieval import embed_spark
from context_assistant.retrieval.embed_spark import (
    choose_embed_on,
    embed_on_spark,
    next_round_size,
    worker_model,
)
from context_assistant.retrieval.embed_table import (
    DeltaLakeEmbeddingStore,
    SparkEmbeddingStore,
    StoredVectorsEmbedder,
    create_local_embeddings_table,
    embedding_key,
    ensure_embeddings_table,
    rate_line,
    text_key,
)
from context_assistant.retrieval.embeddings import LocalEmbedder, ServingEndpointEmbedder
from context_assistant.retrieval.pgvector import PgVectorChunkIndex
from context_assistant.retrieval.sync import InMemoryChunkSource, SourceChunk, embedding_text
from context_assistant.services import Services
from context_assistant.storage.db import Database
from retrieval_support import (
    CountingEmbedder,
    CrashingEmbedder,
    HashingEmbedder,
    SimulatedCrash,
    chunk,
    document,
    minilm,  # noqa: F401
    write_chunk_table,
)
from spark_support import local_spark  # noqa: F401

ENDPOINT_PATH = r"/serving-endpoints/([^/]+)/invocations"
DIM = 8


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [1.0 + b / 255 for b in digest[:DIM]]


def _answer(request: Any) -> Any:
    from fake_databricks import Response

    texts = request.json["input"]
    if any("POISON" in t for t in texts):
        return Response(400, {"error_code": "BAD_REQUEST", "message": "Input is too long"})
    return {"object": "list", "data": [{"index": i, "embedding": _vector(t)} for i, t in enumerate(texts)]}


def _corpus(docs: int = 10, per_doc: int = 20) -> list[SourceChunk]:
    return [
        c
        for d in range(docs)
        for c in document(
            f"doc{d:02}.md", *(f"document {d} passage {i} words" for i in range(per_doc)), heading=f"H{d}"
        )
    ]


def _inputs(fake: Any) -> list[str]:
    return [t for call in fake.calls(ENDPOINT_PATH, "POST") for t in call.json["input"]]


def test_embedding_key_is_the_hash_of_what_the_model_sees() -> None:
    assert embedding_key("Intro", "some text") == text_key(embedding_text("Intro", "some text"))
    assert embedding_key("Intro", "some text") != embedding_key("Other", "some text")
    assert embedding_key("", "x") == hashlib.sha256(b"x").hexdigest()


def test_rate_line_says_speed_and_eta() -> None:
    assert rate_line(0, 100, 0.0, 1.0) == "0/100 chunks, 0.0 chunks/s"
    assert rate_line(50, 100, 0.0, 10.0) == "50/100 chunks, 5.0 chunks/s, ETA 10s"
    assert rate_line(100, 7300, 0.0, 1.0).endswith("ETA 1m12s")
    assert rate_line(100, 100, 0.0, 1.0) == "100/100 chunks, 100.0 chunks/s"


def test_auto_picks_spark_from_the_threshold_on() -> None:
    assert choose_embed_on("auto", lambda: 4999, 5000, True) == "driver"
    assert choose_embed_on("auto", lambda: 5000, 5000, True) == "spark"
    assert choose_embed_on("auto", lambda: 10**6, 5000, False) == "driver"
    assert choose_embed_on("driver", lambda: 10**6, 0, True) == "driver"
    assert choose_embed_on("spark", lambda: 0, 5000, True) == "spark"


def test_a_round_is_sized_to_take_about_a_minute_at_the_last_rounds_rate() -> None:
    assert next_round_size(500, 12.5, 10_000) == 2_400  # 40 texts/s (MiniLM on a laptop): a line a minute
    assert next_round_size(500, 0.5, 10_000) == 10_000  # a fast endpoint: rag.embed_round_chunks caps it
    assert next_round_size(10, 600.0, 10_000) == embed_spark.FIRST_ROUND_CHUNKS  # never below the first size
    assert next_round_size(5, 600.0, 64) == 64  # ... unless the cap is smaller
    assert next_round_size(500, 0.0, 10_000) == 10_000  # an instant round (a clock that did not move)


def test_slow_rounds_stay_small_and_fast_ones_grow_to_the_cap(
    spark: Any, fake_databricks: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real Spark and Delta, the loopback endpoint; only the clock differs: one where every reading is 100 s
    after the last (a slow model) keeps rounds at the first size, the real one (a fast endpoint) lets the
    second round take everything left."""
    fake_databricks.on("POST", ENDPOINT_PATH, _answer)
    monkeypatch.setattr(embed_spark, "FIRST_ROUND_CHUNKS", 50)
    client = fake_databricks.workspace_client()
    spec = worker_model(ServingEndpointEmbedder("emb-a", client), "endpoint:emb-a", client, concurrency=3)
    ticks = iter(range(0, 10**6, 100))
    for clock, rounds in (((lambda: float(next(ticks))), 4), (None, 2)):
        chunks_dir, emb_dir = tmp_path / f"chunks-{rounds}", tmp_path / f"embeddings-{rounds}"
        write_chunk_table(chunks_dir, _corpus())  # 200 texts
        lines: list[str] = []
        report = embed_on_spark(
            spark,
            local_table(chunks_dir),
            local_table(emb_dir),
            spec,
            round_chunks=1000,
            progress=lines.append,
            **({"clock": clock} if clock else {}),
        )
        assert (report.embedded, report.rounds) == (200, rounds)
        assert sum(line.startswith("round ") for line in lines) == rounds


def test_spark_endpoint_calls_for_no_change_one_percent_change_and_a_new_model(
    spark: Any, fake_databricks: Any, tmp_path: Path
) -> None:
    fake_databricks.on("POST", ENDPOINT_PATH, _answer)
    chunks_dir, emb_dir = tmp_path / "chunks", tmp_path / "embeddings"
    corpus = _corpus()
    write_chunk_table(chunks_dir, corpus)
    client = fake_databricks.workspace_client()
    spec = worker_model(ServingEndpointEmbedder("emb-a", client), "endpoint:emb-a", client, concurrency=3)
    lines: list[str] = []

    first = embed_on_spark(
        spark,
        local_table(chunks_dir),
        local_table(emb_dir),
        spec,
        partitions=2,
        round_chunks=64,
        progress=lines.append,
    )
    assert (first.pending, first.embedded, first.failed, first.rounds) == (200, 200, 0, 4)
    sent = _inputs(fake_databricks)
    assert sorted(sent) == sorted(embedding_text(c.heading, c.text) for c in corpus)  # each text exactly once
    assert all(len(c.json["input"]) <= spec.request_size for c in fake_databricks.calls(ENDPOINT_PATH))
    assert all(
        c.headers["authorization"] == "Bearer dapi-test-token" for c in fake_databricks.calls(ENDPOINT_PATH)
    )
    assert "chunks/s" in lines[-1] and "ETA" in lines[1]
    # Smallest documents first: a 3-chunk document added now lands in the first round of the next run.

    store = DeltaLakeEmbeddingStore(str(emb_dir))
    some = corpus[5]
    key = embedding_key(some.heading, some.text)
    assert store.lookup("emb-a", [key]) == {key: pytest.approx(_vector(embedding_text(some.heading, some.text)))}
    assert store.dimension("emb-a") == DIM

    calls_before = len(fake_databricks.calls(ENDPOINT_PATH))
    again = embed_on_spark(spark, local_table(chunks_dir), local_table(emb_dir), spec, partitions=2)
    assert (again.pending, again.embedded) == (0, 0)
    assert len(fake_databricks.calls(ENDPOINT_PATH)) == calls_before  # no change: no endpoint call

    changed = list(corpus)
    for i in (17, 133):  # 2 of 200 chunks: 1%
        c = changed[i]
        changed[i] = chunk(c.path, c.chunk_index, c.text + " edited", c.heading)
    changed += document("tiny.md", "a tiny new document", heading="T")
    write_chunk_table(chunks_dir, changed)
    before = len(_inputs(fake_databricks))
    one_percent = embed_on_spark(spark, local_table(chunks_dir), local_table(emb_dir), spec, partitions=2)
    assert (one_percent.pending, one_percent.embedded) == (3, 3)
    assert sorted(_inputs(fake_databricks)[before:]) == sorted(
        [embedding_text(changed[i].heading, changed[i].text) for i in (17, 133)] + ["T\na tiny new document"]
    )

    other = worker_model(ServingEndpointEmbedder("emb-b", client), "endpoint:emb-b", client, concurrency=2)
    before = len(_inputs(fake_databricks))
    new_model = embed_on_spark(spark, local_table(chunks_dir), local_table(emb_dir), other, partitions=2)
    assert new_model.embedded == len(changed) == len(_inputs(fake_databricks)) - before  # a new model: all


def test_a_failing_text_fails_alone_and_is_retried_next_run(
    spark: Any, fake_databricks: Any, tmp_path: Path
) -> None:
    fake_databricks.on("POST", ENDPOINT_PATH, _answer)
    corpus = document("a.md", "fine one", "POISON pill", "fine two")
    write_chunk_table(tmp_path / "chunks", corpus)
    client = fake_databricks.workspace_client()
    spec = worker_model(ServingEndpointEmbedder("emb", client), "endpoint:emb", client, concurrency=2)
    report = embed_on_spark(spark, local_table(tmp_path / "chunks"), local_table(tmp_path / "emb"), spec)
    assert (report.pending, report.embedded, report.failed) == (3, 2, 1)
    assert "rejected the request (400)" in report.errors[0] and "Input is too long" in report.errors[0]
    store = DeltaLakeEmbeddingStore(str(tmp_path / "emb"))
    assert set(store.lookup("emb", [embedding_key("", t) for t in ("fine one", "POISON pill", "fine two")])) == {
        embedding_key("", "fine one"),
        embedding_key("", "fine two"),
    }
    retry = embed_on_spark(spark, local_table(tmp_path / "chunks"), local_table(tmp_path / "emb"), spec)
    assert (retry.pending, retry.failed) == (1, 1)  # only the failed text is tried again


def test_local_model_on_spark_gives_the_driver_vectors(
    spark: Any,
    minilm: LocalEmbedder,  # noqa: F811
    tmp_path: Path,
) -> None:
    import numpy as np

    corpus = document("m.md", "Spark embeds this passage.", "And this one, in another partition.", heading="Doc")
    write_chunk_table(tmp_path / "chunks", corpus)
    spec = worker_model(minilm, "all-MiniLM-L6-v2", None, concurrency=4)
    assert (spec.provider, spec.model) == ("local", minilm.model_name)
    report = embed_on_spark(
        spark, local_table(tmp_path / "chunks"), local_table(tmp_path / "emb"), spec, partitions=2
    )
    assert report.embedded == 2
    texts = [embedding_text(c.heading, c.text) for c in corpus]
    stored = DeltaLakeEmbeddingStore(str(tmp_path / "emb")).lookup(minilm.model_name, [text_key(t) for t in texts])
    np.testing.assert_allclose([stored[text_key(t)] for t in texts], minilm.embed(texts), atol=1e-5)


def test_refresh_index_on_spark_then_copies_vectors_only(
    spark: Any, fake_databricks: Any, make_config: Any, pg_env: dict[str, str]
) -> None:
    """End to end: ``rag.embed_on: spark`` embeds on Spark; the pgvector sync then makes no endpoint call."""
    fake_databricks.on("POST", ENDPOINT_PATH, _answer)
    config: Config = make_config(
        rag__embedding_model="endpoint:emb",
        rag__embed_on="spark",
        rag__embed_round_chunks=50,
        memory__recall=False,  # recall would probe the endpoint for its own (turns) space
    )
    corpus = _corpus(docs=4, per_doc=25)
    write_chunk_table(Path(config.data_path) / "chunks", corpus)
    services = Services(config, env=pg_env, workspace_factory=fake_databricks.workspace_client)
    try:
        lines: list[str] = []
        result = refresh_index(services, progress=lines.append, spark_factory=lambda: spark)
        assert (result.added, result.ok) == (100, True)
        embedding = result.to_json()["embedding"]
        assert embedding["embed_on"] == "spark"
        assert embedding["spark"]["embedded"] == 100
        assert result.to_json()["seconds"] >= embedding["spark"]["seconds"]  # the sync's time includes Spark's
        assert embedding["vectors_computed_on_driver"] == 0 and embedding["vectors_reused"] == 100
        # Spark sent each text once; the sync copied, after one probe for the new index's dimension.
        assert sorted(_inputs(fake_databricks)) == sorted(
            ["dimension probe", *(embedding_text(c.heading, c.text) for c in corpus)]
        )
        assert isinstance(services.chunk_index, PgVectorChunkIndex)
        assert len(services.chunk_index.fingerprints()) == 100
        calls = len(fake_databricks.calls(ENDPOINT_PATH))
        again = refresh_index(services, spark_factory=lambda: spark)
        assert (again.kept, again.to_json()["embedding"]["spark"]["pending"]) == (100, 0)
        assert len(fake_databricks.calls(ENDPOINT_PATH)) == calls
        hits = services.chunk_index.search("document 2 passage 7 words", mode="vector")
        assert hits and any(h.path == "doc02.md" for h in hits)
    finally:
        services.close()


def test_driver_path_keeps_finished_steps_of_an_interrupted_big_document(db: Database, tmp_path: Path) -> None:
    """A big document is written to the index in one transaction, but its vectors are stored every
    ``commit_every`` texts: after a crash the next sync embeds only what was not finished."""
    emb = str(tmp_path / "emb")
    create_local_embeddings_table(emb)
    big = document("big.md", *(f"big document passage {i} of many" for i in range(100)))
    small = document("small.md", "a small edited note")
    source = InMemoryChunkSource([*big, *small])
    crashing = CrashingEmbedder(HashingEmbedder(), batches=3)  # the big document's 4th step dies
    lines: list[str] = []
    stored = StoredVectorsEmbedder(crashing, DeltaLakeEmbeddingStore(emb), commit_every=25, progress=lines.append)
    index = PgVectorChunkIndex(db, HashingEmbedder(), batch_size=100)  # the big document in one slice
    with pytest.raises(SimulatedCrash):
        index.refresh(source, embedder=stored)
    # The small document went first (smallest documents first) and is searchable; the big one is not there yet.
    assert set(index.fingerprints()) == {c.chunk_id for c in small}
    assert any("embedded 50/100 chunks" in line and "chunks/s" in line for line in lines)

    counting = CountingEmbedder(HashingEmbedder())
    resumed = StoredVectorsEmbedder(counting, DeltaLakeEmbeddingStore(emb), commit_every=25)
    result = index.refresh(source, embedder=resumed)
    assert result.added == 100 and result.ok
    assert len(counting.texts) == 50  # the 50 stored before the crash were looked up, not embedded
    assert (resumed.reused, resumed.computed) == (50, 50)
    assert len(index.fingerprints()) == 101


def test_spark_store_reads_and_appends_what_the_catalog_path_uses(spark: Any, tmp_path: Path) -> None:
    """On Databricks the table is a catalog table read through Spark (here: the same SQL on pysail)."""
    table = local_table(tmp_path / "emb")
    ensure_embeddings_table(spark, table)
    store = SparkEmbeddingStore(spark, table)
    assert store.lookup("m", ["k1"]) == {} and store.dimension("m") is None
    store.append("m", [("k1", [1.0, 2.0]), ("k2", [3.0, 4.0])])
    assert store.lookup("m", ["k1", "k3"]) == {"k1": [1.0, 2.0]}
    assert store.lookup("other-model", ["k1"]) == {}
    assert store.dimension("m") == 2
    assert DeltaLakeEmbeddingStore(str(tmp_path / "emb")).lookup("m", ["k2"]) == {"k2": [3.0, 4.0]}


def test_an_unusable_embeddings_table_never_fails_the_sync(db: Database, tmp_path: Path) -> None:
    """The table saves work; when it cannot be read or written the sync embeds and says so once."""
    broken = tmp_path / "emb"
    broken.mkdir()
    (broken / "_delta_log").mkdir()  # looks like a Delta table, is not one
    lines: list[str] = []
    stored = StoredVectorsEmbedder(HashingEmbedder(), DeltaLakeEmbeddingStore(str(broken)), progress=lines.append)
    source = InMemoryChunkSource(document("a.md", "one", "two"))
    result = PgVectorChunkIndex(db, HashingEmbedder()).refresh(source, embedder=stored)
    assert result.ok and result.added == 2 and stored.computed == 2
    assert [line for line in lines if line.startswith("warning:")] == [
        next(line for line in lines if "could not read the embeddings table" in line)
    ]


def test_refresh_index_auto_goes_to_spark_from_the_threshold_on(
    spark: Any, fake_databricks: Any, make_config: Any, pg_env: dict[str, str]
) -> None:
    fake_databricks.on("POST", ENDPOINT_PATH, _answer)
    config: Config = make_config(
        rag__embedding_model="endpoint:emb", rag__embed_spark_threshold=30, memory__recall=False
    )
    assert config.rag.embed_on == "auto"
    write_chunk_table(Path(config.data_path) / "chunks", _corpus(docs=2, per_doc=10))
    services = Services(config, env=pg_env, workspace_factory=fake_databricks.workspace_client)
    try:
        small = refresh_index(services, spark_factory=lambda: spark)
        assert small.to_json()["embedding"] == {
            "embed_on": "driver",
            "vectors_reused": 0,
            "vectors_computed_on_driver": 20,
        }
        write_chunk_table(Path(config.data_path) / "chunks", _corpus(docs=5, per_doc=10))
        big = refresh_index(services, spark_factory=lambda: spark)
        embedding = big.to_json()["embedding"]
        assert embedding["embed_on"] == "spark"
        assert embedding["spark"]["pending"] == 30  # the 20 the driver stored are not embedded again
        assert big.added == 30 and big.kept == 20
    finally:
        services.close()
