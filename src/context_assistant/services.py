"""The composition root: builds each part from the config once, on first use, and shares it.

The CLI, the web app, the bundle's jobs and the notebooks all start here, so they wire the same parts the
same way and only pay for what they touch (a ``sessions list`` never loads an embedding model).

Parts are built lazily and thread-safely: the web app's worker threads may ask for the assistant at the same
moment, and it is built once (one lock per ``Services``, re-entrant because parts build the parts they use).
A part can be provided before its first use instead (``services.embedder = HashingEmbedder()`` in tests and
benchmarks); once built it is never replaced, and the configuration is read-only: per-call differences (a
source folder, a progress printer) are arguments of the call, not changes to a built part.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from .assistant.turn import Assistant
from .core.clock import REAL_CLOCK, Clock
from .core.config import Config, load_config
from .core.console import Progress, quiet
from .core.tracing import AnyTracer, make_tracer
from .core.workspace import WorkspaceFactory, workspace_client
from .llm.factory import make_chat_model
from .llm.interface import ChatModel
from .retrieval.base import ChunkIndex, Retriever
from .retrieval.embedder_choice import make_embedder
from .retrieval.embedding_service import warm_embedder
from .retrieval.embeddings import Embedder
from .retrieval.pgvector import PgVectorChunkIndex
from .retrieval.recall import TurnRecall
from .retrieval.sync import ChunkSource, make_chunk_source
from .retrieval.vector_search import VectorSearchIndex
from .storage.db import Database, DatabaseError, open_database, wants_vector
from .storage.db_schema import SetupReport
from .storage.db_setup import run_setup
from .storage.memory import ConversationStore

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

T = TypeVar("T")


class part(Generic[T]):
    """A part of :class:`Services`: built by the decorated method on first use, once, under the lock."""

    def __init__(self, build: Callable[[Services], T]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, services: None, owner: type | None = None) -> part[T]: ...

    @overload
    def __get__(self, services: Services, owner: type | None = None) -> T: ...

    def __get__(self, services: Services | None, owner: type | None = None) -> part[T] | T:
        if services is None:
            return self
        return services._part(self.name, lambda: self.build(services))

    def __set__(self, services: Services, value: T) -> None:
        services._provide(self.name, value)


class Services:
    def __init__(
        self,
        config: Config,
        *,
        env: Mapping[str, str] | None = None,
        clock: Clock = REAL_CLOCK,
        workspace_factory: WorkspaceFactory | None = None,
        notice: Progress = quiet,
        warm_embeddings: bool = False,
        serving: bool = False,
    ) -> None:
        self._config = config
        # Where a part says what it is doing that takes a while (loading a model): the CLI prints it on stderr.
        self.notice = notice
        # A short command asks the shared warm embedding service instead of loading a local model itself.
        self.warm_embeddings = warm_embeddings
        # A process answering many users at once (the web app): a local model's questions are micro-batched.
        self.serving = serving
        self.env = os.environ if env is None else env
        self.clock = clock
        self._workspace_factory = workspace_factory or workspace_client
        self._parts: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._closers: list[Callable[[], None]] = []

    @classmethod
    def from_config_file(cls, path: str | None = None, **overrides: Any) -> Services:
        return cls(load_config(path, overrides=overrides or None))

    @property
    def config(self) -> Config:
        """The configuration every part was built from (read-only)."""
        return self._config

    # -- the parts --------------------------------------------------------------------------------------

    @part
    def workspace(self) -> WorkspaceClient:
        """A databricks-sdk WorkspaceClient (only built when something needs Databricks)."""
        return self._workspace_factory()

    @part
    def db(self) -> Database:
        db = open_database(self.config, env=self.env, workspace_factory=lambda: self.workspace, clock=self.clock)
        self._closers.append(db.close)
        return db

    @part
    def store(self) -> ConversationStore:
        return ConversationStore(self.db, clock=self.clock)

    @part
    def chat_model(self) -> ChatModel:
        """The model ``model.provider`` picks; the workspace client is only built on the first Databricks call."""
        return make_chat_model(self.config.model, workspace=lambda: self.workspace, env=self.env, clock=self.clock)

    @part
    def tracer(self) -> AnyTracer:
        """MLflow tracing of turns (exported by a separate process started on the first traced turn)."""
        tracer = make_tracer(self.config, self.env)
        self._closers.append(tracer.close)
        return tracer

    @part
    def embedder(self) -> Embedder:
        """The embedding model ``rag.embedding_model`` names; a local model loads on first use, once."""
        embedder = None
        if self.warm_embeddings:  # a short CLI command: the shared warm model (retrieval/embedding_service.py)
            embedder = warm_embedder(self.config.rag, self.config.data_path, notice=self.notice)
        if embedder is None:
            embedder = make_embedder(
                self.config.rag, lambda: self.workspace, clock=self.clock, notice=self.notice, serving=self.serving
            )
        closer = getattr(embedder, "close", None)
        if closer is not None:
            self._closers.append(closer)
        return embedder

    @part
    def chunk_index(self) -> ChunkIndex:
        """The document index ``rag.backend`` names (both backends implement :class:`ChunkIndex`)."""
        if self.config.rag.backend == "vector_search":
            return VectorSearchIndex.from_config(
                self.config.rag, self.workspace, embedder=self.embedder, clock=self.clock
            )
        return PgVectorChunkIndex.from_config(self.db, self.embedder, self.config.rag)

    @part
    def retriever(self) -> Retriever:
        """What the assistant searches documents with: the chunk index, followed by the reranker that
        ``rag.reranker`` names, if any."""
        from .retrieval.rerank import RerankingRetriever, make_reranker

        rag = self.config.rag
        reranker = make_reranker(
            rag.reranker, lambda: self.workspace, clock=self.clock, embedder=lambda: self.embedder
        )
        if reranker is None:
            return self.chunk_index
        closer = getattr(reranker, "close", None)
        if closer is not None:
            self._closers.append(closer)
        return RerankingRetriever(
            self.chunk_index, reranker, candidates=rag.rerank_candidates, weight=rag.rerank_weight
        )

    @part
    def chunk_source(self) -> ChunkSource:
        """The chunk table (``rag.chunk_table``) as the index sync reads it."""
        return make_chunk_source(self.config)

    @part
    def recall(self) -> TurnRecall:
        """Recall of the user's earlier turns (always pgvector: turns live in Postgres)."""
        recall = TurnRecall(
            self.db,
            self.embedder,
            top_k=self.config.memory.recall_top_k,
            search_mode=self.config.rag.search_mode,
            fusion=self.config.memory.recall_fusion,
            hybrid_weight=self.config.memory.recall_hybrid_weight,
            min_similarity=self.config.memory.recall_min_similarity,
        )
        self._closers.append(recall.close)  # before the pool closes: let a background batch finish
        return recall

    @part
    def assistant(self) -> Assistant:
        """The assistant turn, wired to this config's memory, retrieval, recall, model and tracer."""
        return Assistant(
            self.config,
            self.store,
            self.chat_model,
            retriever=self.retriever if self.config.rag.enabled else None,
            recall=self.recall if self.config.memory.recall else None,
            tracer=self.tracer,
            clock=self.clock,
        )

    # -- asking without building ------------------------------------------------------------------------

    def database(self, timeout: float | None = None) -> Database:
        """The pool, waiting at most ``timeout`` seconds for another thread that is still building a part
        (opening the pool may take as long as the server takes to answer)."""
        built = self._parts.get("db")
        if built is not None:
            return built
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise DatabaseError("still connecting to the database")
        try:
            return self.db
        finally:
            self._lock.release()

    def opened_database(self) -> Database | None:
        """The pool if it has been opened, else None (never opens it)."""
        return self.built(type(self).db)

    def built(self, which: part[T]) -> T | None:
        """A part if it has been built, else None (never builds it): lets an event loop take a built part
        without handing the request to a worker thread, and build a missing one off the loop."""
        value: T | None = self._parts.get(which.name)
        return value

    # -- plumbing -----------------------------------------------------------------------------------------

    def _part(self, name: str, build: Callable[[], T]) -> T:
        try:
            return self._parts[name]  # built: no lock on the hot path
        except KeyError:
            pass
        with self._lock:
            if name not in self._parts:
                self._parts[name] = build()
            return self._parts[name]

    def _provide(self, name: str, value: Any) -> None:
        with self._lock:
            if name in self._parts:
                raise AttributeError(f"services.{name} is already built; provide a part before its first use")
            self._parts[name] = value

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def setup_database(
    services: Services,
    grant_to: Sequence[str] = (),
    grant_to_apps: Sequence[str] = (),
    *,
    prepare_recall: bool = True,
) -> SetupReport:
    """The owner's setup step (storage/db_setup.py) wired to this config's parts: ``context-assistant db
    setup`` and the jobs' ``setup_database`` task. With recall on, the recall index is built too, so the app's
    role (which never changes the schema) finds it ready."""
    config = services.config
    recall = prepare_recall and config.memory.recall
    return run_setup(
        services.db,
        vector=wants_vector(config),
        grant_to=grant_to,
        grant_to_apps=grant_to_apps,
        workspace=lambda: services.workspace,
        prepare_recall=(lambda: services.recall.prepare()) if recall else None,
        recall_model=config.rag.embedding_model,
    )


__all__ = ["Services", "setup_database"]
