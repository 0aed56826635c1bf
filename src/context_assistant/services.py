"""The composition root: builds each component from the config once, on first use.

The CLI, the web app, the bundle's jobs and the notebooks all start here, so they wire the same parts the
same way and only pay for what they touch (a ``sessions list`` never loads an embedding model).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .clock import REAL_CLOCK, Clock
from .config import Config, load_config
from .db import Database, open_database
from .llm import ChatModel, make_chat_model
from .memory import ConversationStore
from .tracing import DisabledTracer, Tracer, make_tracer

if TYPE_CHECKING:
    from .assistant import Assistant
    from .embeddings import Embedder
    from .recall import TurnRecall
    from .retrieval import Retriever
    from .sync import ChunkSource


class Services:
    def __init__(
        self,
        config: Config,
        *,
        env: Mapping[str, str] | None = None,
        clock: Clock = REAL_CLOCK,
        workspace_factory: Any = None,
    ) -> None:
        self.config = config
        self.env = os.environ if env is None else env
        self.clock = clock
        self._workspace_factory = workspace_factory
        self._closers: list[Any] = []

    @classmethod
    def from_config_file(cls, path: str | None = None, **overrides: Any) -> Services:
        return cls(load_config(path, overrides=overrides or None))

    @functools.cached_property
    def workspace(self) -> Any:
        """A databricks-sdk WorkspaceClient (only built when something needs Databricks)."""
        if self._workspace_factory is not None:
            return self._workspace_factory()
        from databricks.sdk import WorkspaceClient

        return WorkspaceClient()

    @functools.cached_property
    def db(self) -> Database:
        db = open_database(self.config, env=self.env, workspace_factory=lambda: self.workspace, clock=self.clock)
        self._closers.append(db.close)
        return db

    @functools.cached_property
    def store(self) -> ConversationStore:
        return ConversationStore(self.db, clock=self.clock)

    @functools.cached_property
    def chat_model(self) -> ChatModel:
        """The model ``model.provider`` picks; the workspace client is only built on the first Databricks call."""
        return make_chat_model(self.config.model, workspace=lambda: self.workspace, env=self.env, clock=self.clock)

    @functools.cached_property
    def tracer(self) -> Tracer | DisabledTracer:
        """MLflow tracing of turns (MLflow itself is imported on the first traced turn)."""
        tracer = make_tracer(self.config, self.env)
        self._closers.append(tracer.close)
        return tracer

    # -- retrieval (issue 4) ---------------------------------------------------------------------------

    @functools.cached_property
    def embedder(self) -> Embedder:
        """The embedding model ``rag.embedding_model`` names; a local model loads on first use, once."""
        from .embeddings import make_embedder

        embedder = make_embedder(self.config.rag, lambda: self.workspace, clock=self.clock)
        closer = getattr(embedder, "close", None)
        if closer is not None:
            self._closers.append(closer)
        return embedder

    @functools.cached_property
    def chunk_index(self) -> Any:
        """The document index ``rag.backend`` names: a ChunkIndex (see retrieval.py) with search/refresh."""
        if self.config.rag.backend == "vector_search":
            from .index_vector_search import VectorSearchIndex

            return VectorSearchIndex.from_config(
                self.config.rag, self.workspace, embedder=self.embedder, clock=self.clock
            )
        from .index_pgvector import PgVectorChunkIndex

        return PgVectorChunkIndex.from_config(self.db, self.embedder, self.config.rag)

    @functools.cached_property
    def retriever(self) -> Retriever:
        """What the assistant searches documents with: the chunk index, followed by the reranker that
        ``rag.reranker`` names, if any."""
        from .rerank import RerankingRetriever, make_reranker

        rag = self.config.rag
        reranker = make_reranker(rag.reranker, lambda: self.workspace, clock=self.clock)
        if reranker is None:
            return self.chunk_index
        closer = getattr(reranker, "close", None)
        if closer is not None:
            self._closers.append(closer)
        return RerankingRetriever(
            self.chunk_index, reranker, candidates=rag.rerank_candidates, weight=rag.rerank_weight
        )

    @functools.cached_property
    def chunk_source(self) -> ChunkSource:
        """The chunk table (``rag.chunk_table``) as the index sync reads it."""
        from .sync import make_chunk_source

        return make_chunk_source(self.config)

    @functools.cached_property
    def recall(self) -> TurnRecall:
        """Recall of the user's earlier turns (always pgvector: turns live in Postgres)."""
        from .recall import TurnRecall

        return TurnRecall(
            self.db,
            self.embedder,
            top_k=self.config.memory.recall_top_k,
            search_mode=self.config.rag.search_mode,
            fusion=self.config.rag.fusion,
            hybrid_weight=self.config.memory.recall_hybrid_weight,
        )

    @functools.cached_property
    def assistant(self) -> Assistant:
        """The assistant turn, wired to this config's memory, retrieval, recall, model and tracer."""
        from .assistant import Assistant

        return Assistant(
            self.config,
            self.store,
            self.chat_model,
            retriever=self.retriever if self.config.rag.enabled else None,
            recall=self.recall if self.config.memory.recall else None,
            tracer=self.tracer,
            clock=self.clock,
        )

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
