"""The web app (a Databricks App): the chat page and its JSON API, served by uvicorn."""

from .app import bind_address, create_app, main, serve

__all__ = ["bind_address", "create_app", "main", "serve"]
