"""Typed, validated configuration from ``config.yaml`` plus environment overrides.

A bad value is reported as one line that names the key, the value and what is allowed, so the CLI can print
it and exit 2 instead of failing later with a traceback deep inside a connection or a model call.
"""

from __future__ import annotations

import dataclasses
import difflib
import getpass
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .errors import ConfigError

CONFIG_ENV = "CONTEXT_ASSISTANT_CONFIG"
OVERRIDE_PREFIX = "CONTEXT_ASSISTANT__"
CONFIG_FILE = "config.yaml"
DEFAULT_DATA_DIR = ".context-assistant"

# Declared once: the settings allow these values, and retrieval, the backends and the CLI's --mode use them.
SEARCH_MODES = ("vector", "keyword", "hybrid")
INDEX_TYPES = ("hnsw", "ivfflat")  # pgvector's approximate-nearest-neighbour indexes
RETRIEVAL_BACKENDS = ("pgvector", "vector_search")
FUSIONS = ("convex", "minmax", "rrf")  # how hybrid search fuses its vector and keyword rankings
PDF_PARSERS = ("builtin", "ai_parse_document")
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # database.schema: a plain lowercase identifier


def _opt(default: Any, *, choices: tuple[str, ...] | None = None, min: float | None = None) -> Any:
    return field(default=default, metadata={"choices": choices, "min": min})


@dataclass(frozen=True)
class ModelConfig:
    provider: str = _opt("auto", choices=("auto", "databricks", "openai", "offline"))
    endpoint: str = "databricks-claude-sonnet-4-5"
    base_url: str = ""
    # Environment variable holding the API key for provider openai (never the key itself: config is not secret).
    api_key_env: str = "OPENAI_API_KEY"
    streaming: bool = False
    max_tokens: int = _opt(1024, min=1)
    temperature: float = _opt(0.2, min=0)
    context_tokens: int = _opt(32000, min=512)
    timeout_seconds: float = _opt(120.0, min=1)
    max_retries: int = _opt(3, min=0)
    system_prompt: str = (
        "You are a helpful assistant for a data team. Answer from the sources and earlier conversations you "
        "are given, cite sources as [1], [2], ... and say so when they do not contain the answer."
    )


@dataclass(frozen=True)
class MemoryConfig:
    max_history: int = _opt(20, min=0)
    history_tokens: int = _opt(6000, min=0)
    recall: bool = True
    recall_top_k: int = _opt(3, min=0)
    # How hybrid recall fuses its two rankings (retrieval/fusion.py; rag.fusion's choices). minmax: on LoCoMo,
    # where the vector side is far weaker than BM25, it recalls more than convex (0.781 vs 0.769; README).
    recall_fusion: str = _opt("minmax", choices=FUSIONS)
    # Hybrid recall (convex, minmax): the vector side's share; conversations favour exact words.
    recall_hybrid_weight: float = _opt(0.5, min=0)
    # The cosine similarity below which an earlier turn is not recalled for its meaning alone (a keyword match
    # still counts): auto (the measured value for a known embedding model, none for others), off, or a number
    # in [-1, 1]. Without it, the nearest turns reach every prompt even when nothing is related.
    recall_min_similarity: str = "auto"


@dataclass(frozen=True)
class DatabaseConfig:
    host: str = ""
    port: int = _opt(5432, min=1)
    name: str = "databricks_postgres"
    user: str = ""
    sslmode: str = _opt("require", choices=("disable", "allow", "prefer", "require", "verify-ca", "verify-full"))
    instance_name: str = ""
    endpoint: str = ""
    pool_min_size: int = _opt(1, min=0)
    pool_max_size: int = _opt(10, min=1)
    # Every table lives in this schema (set as search_path on each connection).
    schema: str = "context_assistant"
    # auto: the database's owner creates and migrates the schema when it is missing or behind; any other role
    # (a Databricks App's) only checks it. never: only check, even as the owner (the app.yaml sets this).
    setup: str = _opt("auto", choices=("auto", "never"))

    @property
    def embedded(self) -> bool:
        """No host configured: run Postgres in the data directory."""
        return not self.host


@dataclass(frozen=True)
class RagConfig:
    enabled: bool = True
    source: str = "fixtures/docs"
    backend: str = _opt("pgvector", choices=RETRIEVAL_BACKENDS)
    top_k: int = _opt(5, min=1)
    # Tokens of the embedding model's tokenizer (an estimate for serving endpoints); see ingest/tokenization.py.
    chunk_size: int = _opt(256, min=16)
    chunk_overlap: int = _opt(32, min=0)
    embedding_model: str = "all-MiniLM-L6-v2"
    # PDFs: builtin (pypdf's text layer) or ai_parse_document (Databricks AI Function: layout, tables, scans).
    pdf_parser: str = _opt("builtin", choices=PDF_PARSERS)
    index_type: str = _opt("hnsw", choices=INDEX_TYPES)
    search_mode: str = _opt("hybrid", choices=SEARCH_MODES)
    # Short CLI commands (search, recall, chat) share a warm local embedding model for this long after their
    # last use (retrieval/embedding_service.py); 0: each loads the model itself.
    embedding_service_idle_seconds: float = _opt(900.0, min=0)
    # Concurrent calls to a local model (the web app's questions) share one model call (retrieval/batching.py):
    # the batcher waits this long after the first for more; 0 turns micro-batching off. Calls of more than
    # embedding_batch_max_texts texts (the index sync) go straight to the model.
    embedding_batch_wait_ms: float = _opt(3.0, min=0)
    embedding_batch_max_texts: int = _opt(64, min=1)
    # How hybrid search fuses its two rankings (retrieval/fusion.py): convex (cosine similarity and BM25's share
    # of its ceiling), minmax (min-max normalised scores) or rrf (ranks).
    fusion: str = _opt("convex", choices=FUSIONS)
    hybrid_weight: float = _opt(0.5, min=0)  # convex: the vector side's share
    # Hybrid: a document's best chunk carries the document's best vector and keyword evidence (fusion.py).
    document_fusion: bool = True
    # The relevance floor of the passages a turn and a search get (pgvector backend; retrieval/relevance.py):
    # auto (measured for known models), off, or a cosine similarity in [-1, 1].
    min_similarity: str = "auto"
    # A second stage that re-scores the first stage's best candidates with a cross-encoder (retrieval/rerank.py):
    # "" (off), endpoint:NAME (a serving endpoint) or local:PATH (a sentence-transformers CrossEncoder folder).
    reranker: str = ""
    rerank_candidates: int = _opt(30, min=2)
    rerank_weight: float = _opt(0.5, min=0)
    hnsw_ef_search: int = _opt(40, min=1)
    ivfflat_probes: int = _opt(10, min=1)
    chunk_table: str = "chunks"
    documents_table: str = "documents"
    # Ingest limits and the documents folder's boundary (ingest/limits.py, ingest/boundary.py).
    max_file_mb: float = _opt(64.0, min=0.001)  # larger files are skipped with the reason
    parse_timeout_seconds: float = _opt(300.0, min=0.1)  # per file, wall clock, in a child process
    parse_memory_mb: int = _opt(2048, min=64)  # the parse child's address-space limit
    symlinks: str = _opt("never", choices=("never", "inside"))  # links out of the folder are never followed
    # Where the index sync embeds new/changed chunks (retrieval/embed_spark.py): spark (mapInArrow over the chunk
    # table, into the embeddings table), driver (this process), or auto (spark once embed_spark_threshold chunks
    # wait and a Spark session can be had). Vectors are kept in embeddings_table, keyed by (content hash, model).
    embed_on: str = _opt("auto", choices=("auto", "spark", "driver"))
    embed_spark_threshold: int = _opt(5000, min=0)
    embeddings_table: str = "embeddings"
    embed_partitions: int = _opt(2, min=1)  # Spark partitions embedding at once
    embed_concurrency: int = _opt(4, min=1)  # serving-endpoint requests in flight per partition
    embed_round_chunks: int = _opt(10000, min=1)  # texts per Spark round (one Delta commit each)
    # In a Databricks App (no Spark): the id of the ingestion job that a refresh runs instead.
    refresh_job_id: str = ""
    vector_search_endpoint: str = ""
    index_name: str = ""
    vector_search_query_type: str = _opt("HYBRID", choices=("HYBRID", "ANN"))
    vector_search_embeddings: str = _opt("managed", choices=("managed", "self_managed"))
    vector_search_endpoint_type: str = _opt("STANDARD", choices=("STANDARD", "STORAGE_OPTIMIZED"))
    vector_search_timeout_seconds: float = _opt(3600.0, min=1)


@dataclass(frozen=True)
class TracingConfig:
    enabled: bool = True
    tracking_uri: str = ""
    experiment: str = "context-assistant"
    experiment_id: str = ""
    # How long a warm-up waits for the trace store to open (importing MLflow, creating or migrating the store).
    # With the exporter process turns never wait; in process, the first turn waits this long, then goes on
    # untraced and later turns are traced once the store is open.
    setup_timeout_seconds: float = _opt(30.0, min=0)
    # Who writes the traces: a separate exporter process ("process": the turn only queues plain data) or the
    # process running the turn ("in_process": what context-assistant eval uses; costs a turn tens of ms).
    # "auto": in process in a Databricks notebook or job (a child process would not have the notebook's
    # credentials), else the exporter process.
    exporter: str = _opt("auto", choices=("auto", "process", "in_process"))


@dataclass(frozen=True)
class WebConfig:
    host: str = "127.0.0.1"
    port: int = _opt(8000, min=0)
    default_user: str = ""
    max_message_chars: int = _opt(16000, min=1)
    # Whose request is it: X-Forwarded-Email & co. are honoured only behind the Databricks Apps proxy ("auto":
    # when DATABRICKS_APP_NAME is set), always ("trust": another proxy that sets them) or never ("ignore").
    forwarded_identity: str = _opt("auto", choices=("auto", "trust", "ignore"))
    max_body_bytes: int = _opt(262144, min=1024)
    health_timeout_seconds: float = _opt(5.0, min=0.1)
    # Chat requests that arrive while the app is still loading its model wait this long for it, then get 503.
    startup_wait_seconds: float = _opt(60.0, min=0)
    # Who may start a full re-index from the web app and see who started a refresh: comma-separated user
    # names (as the identity rule gives them, e.g. emails). Empty: only a local single-user app's user.
    admins: str = ""


@dataclass(frozen=True)
class EvaluationConfig:
    # The model MLflow's LLM judges (groundedness, relevance, correctness) call in ``context-assistant eval``,
    # as an MLflow model URI: databricks (Databricks-managed judges), databricks:/<endpoint>, openai:/<model>,
    # ... Empty: only the deterministic scorers run.
    judge_model: str = ""


@dataclass(frozen=True)
class Config:
    data_dir: str = DEFAULT_DATA_DIR
    user: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    rag: RagConfig = field(default_factory=RagConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    web: WebConfig = field(default_factory=WebConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    # Directory relative paths are resolved against: the config file's folder, else the working directory.
    base_dir: str = field(default=".", metadata={"internal": True})

    @property
    def data_path(self) -> Path:
        return self.resolve_path(self.data_dir)

    @property
    def default_user(self) -> str:
        return self.user or os_user()

    def resolve_path(self, value: str) -> Path:
        """Resolve a path-like setting; Volume and absolute paths are returned as they are."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (Path(self.base_dir) / path).resolve()

    def replace(self, **changes: Any) -> Config:
        """A copy with top-level fields or whole sections replaced (``cfg.replace(rag=...)``)."""
        return dataclasses.replace(self, **changes)


def save_config(config: Config, path: str | os.PathLike[str]) -> Path:
    """Write ``config`` as a config.yaml that ``load_config`` reads back to the same values (secrets are never
    part of a Config, so nothing sensitive is written)."""
    data = dataclasses.asdict(config)
    data.pop("base_dir")
    target = Path(path)
    target.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return target


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return "local"


# Environment variables set by Databricks Apps resources, libpq and the seed project, mapped onto keys.
# Later entries win, so the platform-injected PG* variables take precedence over LAKEBASE_*.
ENV_ALIASES: tuple[tuple[str, str], ...] = (
    ("LAKEBASE_HOST", "database.host"),
    ("LAKEBASE_DATABASE", "database.name"),
    ("LAKEBASE_USER", "database.user"),
    ("LAKEBASE_INSTANCE_NAME", "database.instance_name"),
    ("LAKEBASE_ENDPOINT", "database.endpoint"),
    ("PGHOST", "database.host"),
    ("PGPORT", "database.port"),
    ("PGDATABASE", "database.name"),
    ("PGUSER", "database.user"),
    ("PGSSLMODE", "database.sslmode"),
    ("MLFLOW_TRACKING_URI", "tracing.tracking_uri"),
    ("MLFLOW_EXPERIMENT_NAME", "tracing.experiment"),
    ("MLFLOW_EXPERIMENT_ID", "tracing.experiment_id"),
    ("DATABRICKS_APP_PORT", "web.port"),
    ("CONTEXT_ASSISTANT_DATA_DIR", "data_dir"),
)


def find_project_root(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest folder, from ``start`` (the working directory) up, holding a ``config.yaml`` or a
    ``.context-assistant/`` data folder: the project a command run from a sub-folder belongs to, found the way
    git finds its repository. None when no folder up to the file-system root has either."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file() or (folder / DEFAULT_DATA_DIR).is_dir():
            return folder
    return None


def find_config_file(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str], cwd: str | os.PathLike[str] | None = None
) -> Path | None:
    """``--config`` wins, then $CONTEXT_ASSISTANT_CONFIG, then the project's config.yaml (see
    :func:`find_project_root`) if it has one."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (from --config)")
        return path
    if env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (from ${CONFIG_ENV})")
        return path
    root = find_project_root(cwd)
    if root is not None and (root / CONFIG_FILE).is_file():
        return root / CONFIG_FILE
    return None


def base_folder(file: Path | None, cwd: str | os.PathLike[str] | None = None) -> Path:
    """What relative paths in the configuration are resolved against: the config file's folder; without a
    file, the project root (a folder above holding ``.context-assistant/``), else the working directory."""
    if file is not None:
        return file.parent.resolve()
    return find_project_root(cwd) or Path(cwd if cwd is not None else os.getcwd()).resolve()


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load, merge environment overrides and validate. ``overrides`` are dotted keys (used by CLI flags)."""
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    raw: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{file}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        raw = loaded or {}

    sources: dict[str, str] = {}
    for var, key in ENV_ALIASES:
        if env.get(var):
            _set_dotted(raw, key, env[var])
            sources[key] = var
    for var, value in env.items():
        if var.startswith(OVERRIDE_PREFIX) and len(var) > len(OVERRIDE_PREFIX):
            key = ".".join(part.lower() for part in var[len(OVERRIDE_PREFIX) :].split("__"))
            _set_dotted(raw, key, _parse_env_scalar(value))
            sources[key] = var
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
            sources[key] = "command line"

    raw["base_dir"] = str(base_folder(file))
    config = _build(Config, raw, "", sources)
    if config.rag.chunk_overlap >= config.rag.chunk_size:
        raise ConfigError(
            f"rag.chunk_overlap: {config.rag.chunk_overlap} must be smaller than rag.chunk_size "
            f"({config.rag.chunk_size})"
        )
    if config.memory.recall_hybrid_weight > 1:
        raise ConfigError(
            f"memory.recall_hybrid_weight: {config.memory.recall_hybrid_weight} must be between 0 and 1"
        )
    recall_floor, rag_floor = "memory.recall_min_similarity", "rag.min_similarity"
    parse_min_similarity(config.memory.recall_min_similarity, _label(recall_floor, sources.get(recall_floor)))
    parse_min_similarity(config.rag.min_similarity, _label(rag_floor, sources.get(rag_floor)))
    if config.rag.hybrid_weight > 1:
        raise ConfigError(f"rag.hybrid_weight: {config.rag.hybrid_weight} must be between 0 and 1")
    if config.rag.rerank_weight > 1:
        raise ConfigError(f"rag.rerank_weight: {config.rag.rerank_weight} must be between 0 and 1")
    if config.database.pool_min_size > config.database.pool_max_size:
        raise ConfigError("database.pool_min_size: must not exceed database.pool_max_size")
    if not SCHEMA_NAME.match(config.database.schema):  # so it reads the same quoted or not
        raise ConfigError(
            f"database.schema {config.database.schema!r}: use lowercase letters, digits and underscores, "
            "starting with a letter or underscore (at most 63)"
        )
    return config


def _parse_env_scalar(value: str) -> Any:
    """Environment values are strings; read them as YAML scalars so ``true``/``5`` get their types."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, (str, int, float, bool)) else value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _build(cls: type, data: Any, prefix: str, sources: Mapping[str, str]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a mapping of keys, got {_show(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    public = [name for name, f in fields.items() if not f.metadata.get("internal")]
    for key in data:
        if key not in fields:
            suggestion = difflib.get_close_matches(str(key), public, n=1)
            hint = (
                f" (did you mean {prefix}{suggestion[0]}?)" if suggestion else f"; known keys: {', '.join(public)}"
            )
            dotted = prefix + str(key)
            raise ConfigError(f"{_label(dotted, sources.get(dotted))}: unknown key{hint}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = prefix + name
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = _build(hint, data[name], key + ".", sources)
        else:
            values[name] = _coerce(key, data[name], hint, f.metadata, sources.get(key))
    return cls(**values)


def _label(key: str, source: str | None) -> str:
    """The key as an error names it, with where its value came from when not the file (``(from VAR)``)."""
    return f"{key} (from {source})" if source and source != key else key


def _coerce(key: str, value: Any, kind: type, meta: Mapping[str, Any], source: str | None) -> Any:
    label = _label(key, source)

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{label}: {_show(value)} {why}")

    if kind is bool:
        if isinstance(value, bool):
            result: Any = value
        elif isinstance(value, str) and value.lower() in {
            "true",
            "false",
            "yes",
            "no",
            "1",
            "0",
            "on",
            "off",
        }:
            result = value.lower() in {"true", "yes", "1", "on"}
        else:
            raise fail("is not true or false")
    elif kind is int:
        if isinstance(value, bool):
            raise fail("is not an integer")
        try:
            result = int(value) if not isinstance(value, float) or value.is_integer() else None
        except (TypeError, ValueError):
            result = None
        if result is None:
            raise fail("is not an integer")
    elif kind is float:
        if isinstance(value, bool):
            raise fail("is not a number")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise fail("is not a number") from None
    else:
        if value is None:
            result = ""
        elif isinstance(value, (dict, list)):
            raise fail("must be a single value, not a list or mapping")
        else:
            result = str(value)
    choices = meta.get("choices")
    if choices and result not in choices:
        raise fail(f"is not one of {', '.join(choices)}")
    minimum = meta.get("min")
    if minimum is not None and result < minimum:
        raise fail(f"must be at least {minimum:g}")
    return result


def parse_min_similarity(value: str, key: str = "min_similarity") -> float | str | None:
    """A relevance floor setting (``rag.min_similarity``, ``memory.recall_min_similarity``) read: ``"auto"``,
    None for off (YAML reads a bare ``off`` as false), or the number. Raises ConfigError naming ``key``."""
    text = value.strip().lower()
    if text == "auto":
        return "auto"
    if text in ("off", "false"):
        return None
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not -1 <= number <= 1:
        raise ConfigError(f"{key}: {value!r} is not auto, off or a cosine similarity between -1 and 1")
    return number


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
