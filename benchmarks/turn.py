"""The assistant turn's own overhead, excluding the model call, with 10k chunks indexed and 100k messages stored.

A turn here is the real :meth:`Assistant.turn`: store the user message, load history (trimming and the rolling
summary), recall from the user's other sessions, retrieve chunks (hybrid BM25 + HNSW), build the prompt, call
the model, store the reply, and trace it all to a local MLflow store (the turn records its spans; a separate
exporter process writes them, as in the app). The model is the offline one wrapped in
:class:`TimedModel`; the time spent inside it is subtracted, so what remains is the overhead a real model's
latency would add to.

Setup, to stay within minutes on 2 cores: the chunks are the generated corpus (real text, so BM25 is realistic)
and the 100k stored messages are already embedded for recall, both with synthetic vectors registered under the
real model's name; the turns themselves use the real all-MiniLM-L6-v2 model behind the production
``CachingEmbedder`` (one model call per question), exactly as in production. Recall embeds each turn's messages
on its background thread; the benchmark waits for it between turns (untimed), as a real model's seconds of
latency would leave it time to. Tracing on and off are two assistants over the same database, alternated turn
by turn, so both see the same load.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.corpus import OBJECTS, SYSTEMS, Corpus
from benchmarks.memory import fill_history
from benchmarks.retrieval_scale import ClusteredEmbedder
from benchmarks.scratch import ScratchServer, ours_database
from context_assistant.retrieval import InMemoryChunkSource, PgVectorChunkIndex

WARM_UP_TURNS = 3


class StandInEmbedder:
    """Synthetic vectors under another model's name and dimension: fills an index fast, and the real model
    can then use it without a rebuild."""

    def __init__(self, model_name: str, dimension: int) -> None:
        self.model_name = model_name
        self.dimension = dimension
        self._vectors = ClusteredEmbedder()
        if dimension != self._vectors.dimension:
            raise ValueError(f"synthetic vectors have {self._vectors.dimension} dims, the model {dimension}")

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self._vectors.embed(texts)


class TimedModel:
    """A chat model (or embedder) wrapper that adds up the seconds spent in it on the thread that created it
    (the turn's; recall's background indexer is not the turn); everything else passes through."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds = 0.0
        self._thread = threading.get_ident()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def complete(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.model.complete(*args, **kwargs)
        finally:
            self._add(time.perf_counter() - started)

    def embed(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.model.embed(*args, **kwargs)
        finally:
            self._add(time.perf_counter() - started)

    def _add(self, seconds: float) -> None:
        if threading.get_ident() == self._thread:
            self.seconds += seconds


def question(rng: random.Random) -> str:
    return f"Who looks after {rng.choice(OBJECTS)} of the {rng.choice(SYSTEMS)}, and how often?"


class TurnBench:
    def __init__(
        self,
        server: ScratchServer,
        dbname: str,
        embedder: Any,
        chunks: int,
        messages: int,
        workdir: Path,
        warm_up: int = WARM_UP_TURNS,
    ) -> None:
        from context_assistant.assistant import Assistant
        from context_assistant.core import DisabledTracer, load_config, make_tracer
        from context_assistant.llm import OfflineModel
        from context_assistant.retrieval import CachingEmbedder, TurnRecall
        from context_assistant.storage import ConversationStore

        self.db = ours_database(server.fresh(dbname))
        standin = StandInEmbedder(embedder.model_name, embedder.dimension)
        corpus = Corpus.generate(max(1, chunks // 2))
        items = corpus.chunks()[:chunks]
        started = time.perf_counter()
        PgVectorChunkIndex(self.db, standin, index_type="hnsw").refresh(InMemoryChunkSource(items))
        self.sessions = max(2, messages // 50)  # 50 messages a session, 2 sessions per user (1,000 users)
        fill_history(self.db, messages, self.sessions)
        TurnRecall(self.db, standin).index_pending()
        self.setup_seconds = time.perf_counter() - started
        self.chunks = len(items)
        self.messages = messages

        config = load_config(
            None,
            env={},
            overrides={
                "data_dir": str(workdir),
                "model.provider": "offline",
                "tracing.enabled": True,
                # Synthetic vectors under the real model's name: a floor calibrated on real MiniLM vectors would
                # leave the turns without passages. The floors only filter rows the same statements return.
                "rag.min_similarity": "off",
                "memory.recall_min_similarity": "off",
            },
        )
        self.tracer = make_tracer(config, {})
        self.tracer.warm_up()  # the exporter process opens the store first, as the web app's start-up does
        self.model = TimedModel(OfflineModel())
        self.embedder = TimedModel(embedder)
        cached = CachingEmbedder(self.embedder)  # what make_embedder gives the app
        self.recall = TurnRecall(
            self.db,
            cached,
            top_k=config.memory.recall_top_k,
            search_mode=config.rag.search_mode,
            min_similarity=config.memory.recall_min_similarity,
        )
        store = ConversationStore(self.db)
        retriever = PgVectorChunkIndex.from_config(self.db, cached, config.rag)
        self.assistants = {
            traced: Assistant(
                config,
                store,
                self.model,
                retriever=retriever,
                recall=self.recall,
                tracer=self.tracer if traced else DisabledTracer(),
            )
            for traced in (True, False)
        }
        self.rng = random.Random(5)
        self.traced_turns = 0
        session = 7 % self.sessions
        self.user, self.session = f"user{session % 1000}", f"s{session}"
        for i in range(warm_up):  # MLflow's first trace, the pool, the model's first calls
            self.turn(traced=i % 2 == 0)

    def turn(self, traced: bool = True) -> tuple[float, float]:
        """One turn; returns its seconds outside the chat model, and of those the seconds in the embedding model."""
        before, embedding_before = self.model.seconds, self.embedder.seconds
        started = time.perf_counter()
        result = self.assistants[traced].turn(self.user, question(self.rng), self.session)
        elapsed = time.perf_counter() - started
        self.traced_turns += traced
        if not result.sources:
            raise AssertionError("a benchmark turn retrieved no sources")
        self.recall.wait_for_indexing(timeout=60)  # between turns, untimed (see the module docstring)
        return elapsed - (self.model.seconds - before), self.embedder.seconds - embedding_before

    def run(self, turns: int) -> list[tuple[float, float]]:
        return [self.turn() for _ in range(turns)]

    def run_both(self, turns: int) -> dict[bool, list[tuple[float, float]]]:
        """``turns`` traced and ``turns`` untraced turns, alternated (so both see the same machine load)."""
        times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for i in range(2 * turns):
            traced = i % 2 == 0
            times[traced].append(self.turn(traced))
        return times

    def exported(self) -> str:
        """Once every queued trace is written: traces in the store / traced turns (and any dropped)."""
        from mlflow import MlflowClient

        self.tracer.flush()
        client = MlflowClient(tracking_uri=self.tracer.tracking_uri)
        written = len(client.search_traces(locations=[str(self.tracer.experiment_id)], max_results=50_000))
        dropped = getattr(self.tracer, "dropped", 0)
        return f"{written:,}/{self.traced_turns:,}" + (f" ({dropped} dropped: queue full)" if dropped else "")

    def close(self) -> None:
        self.recall.close()
        self.tracer.close()
        self.db.close()
