"""The API, one router per resource: chat turns and feedback, sessions, documents (sources and refresh), the
app itself (who am I, health, the page), and the agent protocol (/invocations, /responses, /agent/info)."""

from . import agent, chat, documents, sessions, status

ROUTERS = (chat.router, sessions.router, documents.router, status.router, agent.router)

__all__ = ["ROUTERS"]
