"""context-assistant: an assistant for Databricks that remembers conversations and answers from your documents."""

from .core.tracing import disable_mlflow_telemetry

# Before anything imports MLflow: no usage telemetry leaves the machine unless the user asks for it
# (MLFLOW_DISABLE_TELEMETRY=false is respected).
disable_mlflow_telemetry()

__version__ = "0.2.0"
