"""Chat models: the interface the assistant codes against, the factory that picks one from the config, and
the remote (Databricks serving endpoints, OpenAI-compatible servers) and offline implementations."""

from .factory import ProviderChoice, make_chat_model, resolve_provider
from .interface import (
    CONFIGURE_HINT,
    ChatMessage,
    ChatModel,
    Completion,
    ContextTurn,
    ModelError,
    ModelStream,
    NumberedSource,
    PromptContext,
    Usage,
)
from .offline import OfflineModel
from .remote import DatabricksServingModel, OpenAICompatibleModel

__all__ = [
    "CONFIGURE_HINT",
    "ChatMessage",
    "ChatModel",
    "Completion",
    "ContextTurn",
    "DatabricksServingModel",
    "ModelError",
    "ModelStream",
    "NumberedSource",
    "OfflineModel",
    "OpenAICompatibleModel",
    "PromptContext",
    "ProviderChoice",
    "Usage",
    "make_chat_model",
    "resolve_provider",
]
