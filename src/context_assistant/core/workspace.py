"""The Databricks workspace client: built in one place, only when something needs Databricks.

``WorkspaceClient()`` resolves credentials the unified way (environment, a CLI profile, the platform's own
identity on Databricks compute and Apps) and may contact the host while doing so, which can hang offline.
So every part takes a :data:`WorkspaceFactory` and calls it on its first Databricks request; the composition
root (:class:`context_assistant.services.Services`) builds one client and shares it, and tests pass a factory
pointed at a loopback server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

WorkspaceFactory = Callable[[], "WorkspaceClient"]
WorkspaceSource = Union["WorkspaceClient", WorkspaceFactory]  # a client, or a factory called on first use


def workspace_client() -> WorkspaceClient:
    """A client configured from the environment (the one place that calls ``WorkspaceClient()``)."""
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient()


__all__ = ["WorkspaceFactory", "WorkspaceSource", "workspace_client"]
