"""One turn: history, recall and retrieved passages in; a cited answer out, stored and traced. ``prompt``
fits them into the model's context, ``summary`` folds what falls out of the history window; ``agent`` speaks
the turn as an MLflow ResponsesAgent (OpenAI Responses shapes), ``evaluation`` scores its answers over a
dataset with ``mlflow.genai.evaluate``."""

from .agent import AgentError, ContextAgent
from .evaluation import (
    DETERMINISTIC,
    JUDGES,
    EvalQuestion,
    EvalReport,
    EvaluationParts,
    evaluate_assistant,
    format_report,
    load_dataset,
    tracing_on,
)
from .prompt import ContextTooLong, Prompt, build_prompt, source_json
from .summary import Summarizer
from .turn import Assistant, TurnEvent, TurnEvents, TurnFailed, TurnResult, check_message

__all__ = [
    "DETERMINISTIC",
    "JUDGES",
    "AgentError",
    "Assistant",
    "ContextAgent",
    "ContextTooLong",
    "EvalQuestion",
    "EvalReport",
    "EvaluationParts",
    "Prompt",
    "Summarizer",
    "TurnEvent",
    "TurnEvents",
    "TurnFailed",
    "TurnResult",
    "build_prompt",
    "check_message",
    "evaluate_assistant",
    "format_report",
    "load_dataset",
    "source_json",
    "tracing_on",
]
