"""context-assistant: an assistant for Databricks that remembers conversations and answers from your documents."""

__version__ = "0.1.0"
