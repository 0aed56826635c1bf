"""The API, one router per resource: chat turns and feedback, sessions, documents (sources and refresh), and
the app itself (who am I, health, the page)."""

from . import chat, documents, sessions, status

ROUTERS = (chat.router, sessions.router, documents.router, status.router)

__all__ = ["ROUTERS"]
