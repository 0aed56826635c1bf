"""Which chat model to use: ``model.provider`` and the environment decide, without touching the network.

:func:`make_chat_model` builds the model; :func:`resolve_provider` says which provider ``auto`` means here
and why (the CLI shows it, so the choice is never a mystery).
"""

from __future__ import annotations

import configparser
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core.clock import REAL_CLOCK, Clock
from ..core.config import ModelConfig
from ..core.redact import register_secret
from ..core.workspace import WorkspaceSource, workspace_client
from .interface import ChatModel
from .offline import OfflineModel
from .remote import NO_API_KEY, DatabricksServingModel, OpenAICompatibleModel


@dataclass(frozen=True)
class ProviderChoice:
    provider: str
    reason: str


def resolve_provider(settings: ModelConfig, env: Mapping[str, str]) -> ProviderChoice:
    """Which provider ``model.provider`` means here, and why (shown by the CLI so the choice is never a mystery).

    ``auto`` decides from local facts only, never from the network, so it cannot hang offline:
    a ``model.base_url`` means that OpenAI-compatible server; otherwise Databricks when workspace credentials
    are configured: ``DATABRICKS_HOST`` (PAT, OAuth M2M — Databricks Apps set it for the app's service
    principal), ``DATABRICKS_CONFIG_PROFILE``, running on Databricks compute (``DATABRICKS_RUNTIME_VERSION``),
    or a ``DEFAULT`` profile with a host in ``~/.databrickscfg`` (or ``$DATABRICKS_CONFIG_FILE``); otherwise
    the offline model. Whether those credentials actually work is found out on the first call.
    """
    if settings.provider != "auto":
        return ProviderChoice(settings.provider, f"model.provider is {settings.provider}")
    if settings.base_url:
        return ProviderChoice("openai", f"model.base_url is {settings.base_url}")
    reason = databricks_credentials_hint(env)
    if reason:
        return ProviderChoice("databricks", reason)
    return ProviderChoice("offline", "no Databricks credentials and no model.base_url configured")


def databricks_credentials_hint(env: Mapping[str, str]) -> str | None:
    """Why we believe Databricks credentials are configured, or None. Reads only env and the CLI config file."""
    if env.get("DATABRICKS_HOST"):
        return "DATABRICKS_HOST is set"
    if env.get("DATABRICKS_CONFIG_PROFILE"):
        return f"DATABRICKS_CONFIG_PROFILE is {env['DATABRICKS_CONFIG_PROFILE']}"
    if env.get("DATABRICKS_RUNTIME_VERSION"):
        return "running on Databricks compute"
    config_file = env.get("DATABRICKS_CONFIG_FILE") or str(Path(env.get("HOME") or Path.home()) / ".databrickscfg")
    parser = configparser.ConfigParser()
    try:
        parser.read(Path(config_file).expanduser(), encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None
    if parser.defaults().get("host"):
        return f"the DEFAULT profile in {config_file} has a host"
    return None


def make_chat_model(
    settings: ModelConfig,
    workspace: WorkspaceSource | None = None,
    *,
    env: Mapping[str, str] | None = None,
    clock: Clock = REAL_CLOCK,
    jitter: Callable[[], float] = random.random,
) -> ChatModel:
    """Build the model ``settings`` names. Nothing touches the network here.

    ``workspace`` is a databricks-sdk ``WorkspaceClient`` or a zero-argument factory for one; a factory is only
    called on the first Databricks request, because building a client may contact the host (OAuth discovery).
    """
    env = os.environ if env is None else env
    choice = resolve_provider(settings, env)
    if choice.provider == "offline":
        return OfflineModel()
    if choice.provider == "openai":
        base_url = settings.base_url or env.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        api_key = env.get(settings.api_key_env) or NO_API_KEY
        register_secret(api_key)  # whatever the variable is called, an echo of the key is redacted
        return OpenAICompatibleModel(
            model=settings.endpoint,
            base_url=base_url,
            api_key=api_key,
            api_key_env=settings.api_key_env,
            timeout_seconds=settings.timeout_seconds,
            max_retries=settings.max_retries,
            default_max_tokens=settings.max_tokens,
            default_temperature=settings.temperature,
            clock=clock,
            jitter=jitter,
        )
    if workspace is None:
        workspace = workspace_client
    return DatabricksServingModel(
        endpoint=settings.endpoint,
        workspace=workspace,
        timeout_seconds=settings.timeout_seconds,
        max_retries=settings.max_retries,
        default_max_tokens=settings.max_tokens,
        default_temperature=settings.temperature,
        clock=clock,
        jitter=jitter,
    )


__all__ = ["ProviderChoice", "databricks_credentials_hint", "make_chat_model", "resolve_provider"]
