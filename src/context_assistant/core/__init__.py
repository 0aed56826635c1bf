"""What every other package may use, and which uses none of them: configuration, time, retries, token
estimates, the error hierarchy and exit codes, upstream error bodies, the Databricks workspace client,
tracing, console helpers and what Ctrl-C does to a command."""

from .clock import REAL_CLOCK, Clock, FakeClock, RealClock
from .config import (
    INDEX_TYPES,
    RETRIEVAL_BACKENDS,
    SEARCH_MODES,
    Config,
    DatabaseConfig,
    MemoryConfig,
    ModelConfig,
    RagConfig,
    TracingConfig,
    WebConfig,
    load_config,
    save_config,
)
from .console import Progress, TerminalProgress, port_number, print_json, quiet
from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    Conflict,
    ContextAssistantError,
    InvalidInput,
    NotFound,
    Unauthorized,
    Unavailable,
    UpstreamError,
    UsageError,
)
from .interrupts import end_process, report_interrupted
from .retries import RetriesExhausted, retry_after_seconds, retry_call
from .tokens import estimate_tokens, message_tokens
from .tracing import DisabledTracer, FeedbackError, Tracer, make_tracer
from .upstream import error_detail, exception_line
from .workspace import WorkspaceFactory, WorkspaceSource, workspace_client

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "INDEX_TYPES",
    "REAL_CLOCK",
    "RETRIEVAL_BACKENDS",
    "SEARCH_MODES",
    "Clock",
    "Config",
    "ConfigError",
    "Conflict",
    "ContextAssistantError",
    "DatabaseConfig",
    "DisabledTracer",
    "FakeClock",
    "FeedbackError",
    "InvalidInput",
    "MemoryConfig",
    "ModelConfig",
    "NotFound",
    "Progress",
    "RagConfig",
    "RealClock",
    "RetriesExhausted",
    "TerminalProgress",
    "Tracer",
    "TracingConfig",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
    "UsageError",
    "WebConfig",
    "WorkspaceFactory",
    "WorkspaceSource",
    "end_process",
    "error_detail",
    "estimate_tokens",
    "exception_line",
    "load_config",
    "make_tracer",
    "message_tokens",
    "port_number",
    "print_json",
    "quiet",
    "report_interrupted",
    "retry_after_seconds",
    "retry_call",
    "save_config",
    "workspace_client",
]
