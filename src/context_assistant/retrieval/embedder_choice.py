"""Which embedder a process gets: ``rag.embedding_model`` (a serving endpoint or a local model) and where a local
model runs (in this process; in a serving process, in a child process behind the micro-batcher).

Apart from embeddings.py so that the embedders it wires together (model_process.py, batching.py) can import
embeddings.py without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.clock import REAL_CLOCK, Clock
from ..core.config import RagConfig
from .batching import BatchingEmbedder
from .embeddings import (
    CachingEmbedder,
    Embedder,
    EmbeddingError,
    LocalEmbedder,
    ServingEndpointEmbedder,
    WorkspaceSource,
    parse_model_spec,
)


def make_embedder(
    rag_config: RagConfig,
    workspace: WorkspaceSource | None = None,
    *,
    clock: Clock = REAL_CLOCK,
    notice: Callable[[str], None] | None = None,
    serving: bool = False,
) -> Embedder:
    """The embedder ``rag.embedding_model`` names; ``workspace`` (a WorkspaceClient or a factory for one)
    is only used, and only built, for a serving endpoint. ``notice`` hears, once, that a local model is being
    loaded. In a ``serving`` process (the web app) a local model's concurrent small calls are micro-batched on one
    model thread (retrieval/batching.py) in a child process (retrieval/model_process.py); elsewhere (jobs,
    notebooks, the CLI) the model runs in the process with all of torch's threads."""
    spec = parse_model_spec(rag_config.embedding_model)
    if spec.provider == "endpoint":
        if workspace is None:
            raise EmbeddingError(f"serving endpoint {spec.name!r} needs a Databricks workspace client")
        return CachingEmbedder(ServingEndpointEmbedder(spec.name, workspace, clock=clock))
    if not serving:
        return CachingEmbedder(LocalEmbedder(spec.name, notice=notice))
    # A serving process: the model runs in a child process, out of the requests' GIL. Imported here, not at the
    # top: the package imports this module, and `python -m ...model_process` (the child) would import it twice.
    from .model_process import ModelProcessEmbedder

    local: Embedder = ModelProcessEmbedder(spec.name, notice=notice)
    if rag_config.embedding_batch_wait_ms > 0:
        # Under the cache, so a question already embedded never queues. Local models only: an endpoint's
        # requests run in parallel on the server and do not compete for this machine's cores.
        local = BatchingEmbedder(
            local,
            max_wait=rag_config.embedding_batch_wait_ms / 1000,
            max_texts=rag_config.embedding_batch_max_texts,
        )
    return CachingEmbedder(local)


__all__ = ["make_embedder"]
