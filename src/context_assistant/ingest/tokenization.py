"""Count text in the embedding model's own tokens, so chunks are sized for what the model reads.

``rag.chunk_size`` is measured here: a chunk's embedded text (its contextual header and its text) plus the
model's special tokens fits ``chunk_size`` tokens, and ``chunk_size`` may not exceed the model's window
(all-MiniLM-L6-v2 reads 256 word pieces; anything longer is cut off and never embedded).

Two counters implement :class:`TokenCounter` (which one a model gets, and the folder its tokenizer is read
from, is decided with the embedding model: :mod:`context_assistant.retrieval.tokenizer`):

* :class:`WordPieceCounter` -- the model's real tokenizer (its ``tokenizer.json``, read with the light
  ``tokenizers`` package; no torch). Used for local sentence-transformers models, including the bundled
  all-MiniLM-L6-v2.
* :class:`EstimatedCounter` -- for serving endpoints, whose tokenizer is not available offline (and not in a
  Databricks job, which has no model files). It splits text the way BERT-style tokenizers pre-tokenise it
  (runs of letters/digits, each punctuation mark alone) and counts one token per piece plus one per
  further 6 characters of a long word (rare words become several word pieces). On English prose it
  overestimates the WordPiece count by roughly 0-15%, which keeps chunks inside the window; the
  approximation is documented in the README.

Counters are picklable (they travel into Spark's Python workers) and load their tokenizer lazily, once
per process.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..core.errors import ConfigError

# Context windows of serving endpoints we know (tokens, special tokens included). Others: DEFAULT_WINDOW.
KNOWN_ENDPOINT_WINDOWS = {
    "databricks-gte-large-en": 8192,
    "databricks-bge-large-en": 512,
}
DEFAULT_WINDOW = 512
ESTIMATE_SPECIAL_TOKENS = 2  # [CLS] ... [SEP] or <s> ... </s>
ESTIMATE_CHARS_PER_EXTRA_PIECE = 6
_PRE_TOKEN = re.compile(r"[^\W_]+|[^\w\s]|_", re.UNICODE)


class ChunkingConfigError(ConfigError):
    """The chunk settings cannot work with this embedding model; ``str()`` names the key and the fix."""


@runtime_checkable
class TokenCounter(Protocol):
    @property
    def name(self) -> str:
        """Identity recorded with each document's chunking (a change re-chunks)."""
        ...

    @property
    def special_tokens(self) -> int:
        """Tokens the model adds to every input ([CLS], [SEP])."""
        ...

    @property
    def window(self) -> int:
        """The most tokens the model reads, special tokens included."""
        ...

    def token_starts(self, text: str) -> list[int]:
        """Character offset of every token of ``text`` (no special tokens), ascending."""
        ...


def count_tokens(counter: TokenCounter, text: str) -> int:
    return len(counter.token_starts(text)) if text else 0


_tokenizers: dict[str, Any] = {}
_tokenizers_lock = threading.Lock()


def _load_tokenizer(path: str) -> Any:
    with _tokenizers_lock:
        tokenizer = _tokenizers.get(path)
        if tokenizer is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(path)
            tokenizer.no_padding()
            tokenizer.no_truncation()
            _tokenizers[path] = tokenizer
        return tokenizer


@dataclass(frozen=True)
class WordPieceCounter:
    """The model's own tokenizer, from its ``tokenizer.json``."""

    name: str
    tokenizer_path: str
    window: int
    special_tokens: int = 2

    def token_starts(self, text: str) -> list[int]:
        if not text:
            return []
        encoding = _load_tokenizer(self.tokenizer_path).encode(text, add_special_tokens=False)
        starts: list[int] = []
        for start, end in encoding.offsets:
            if end > start and (not starts or start > starts[-1]):
                starts.append(start)
        return starts


@dataclass(frozen=True)
class EstimatedCounter:
    """A tokenizer-free estimate of BERT-style word pieces (see the module docstring)."""

    name: str = "estimate-v1"
    window: int = DEFAULT_WINDOW
    special_tokens: int = ESTIMATE_SPECIAL_TOKENS

    def token_starts(self, text: str) -> list[int]:
        starts: list[int] = []
        for match in _PRE_TOKEN.finditer(text):
            start, end = match.span()
            starts.extend(range(start, end, ESTIMATE_CHARS_PER_EXTRA_PIECE))
        return starts


def check_chunk_settings(chunk_size: int, chunk_overlap: int, counter: TokenCounter, model: str) -> None:
    """Refuse sizes the model cannot read, naming the old character unit (configs from before the switch
    to tokens say ``chunk_size: 500`` and mean characters)."""
    if chunk_size > counter.window:
        old_chars = f" ({chunk_size} characters is about {max(1, chunk_size // 4)} tokens)"
        raise ChunkingConfigError(
            f"rag.chunk_size: {chunk_size} tokens is more than the embedding model {model} reads "
            f"({counter.window} tokens, special tokens included). rag.chunk_size counts the embedding "
            f"model's tokens since context-assistant 0.2; it used to count characters{old_chars}. Set it to "
            f"at most {counter.window}, or remove it to use the default"
        )
    if chunk_overlap * 2 > chunk_size:
        raise ChunkingConfigError(
            f"rag.chunk_overlap: {chunk_overlap} tokens is more than half of rag.chunk_size ({chunk_size}); "
            "both count the embedding model's tokens (they used to count characters)"
        )
