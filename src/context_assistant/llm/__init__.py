"""Chat models: the interface the assistant codes against, the factory that picks one from the config, and
the remote (Databricks serving endpoints, OpenAI-compatible servers) and offline implementations."""
