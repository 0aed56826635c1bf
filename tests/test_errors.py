"""The error hierarchy: each error knows its HTTP status, exit code, kind and whether a retry can help.

Pure unit tests of the classes; tests/test_web_api.py and the CLI tests check that the front doors use them
(the web app maps the root once and answers any other exception with a 500 and a request id).
"""

from __future__ import annotations

import pytest

from context_assistant.assistant.prompt import ContextTooLong
from context_assistant.assistant.turn import TurnFailed
from context_assistant.core.config import ConfigError
from context_assistant.core.errors import (
    EXIT_FAILED,
    EXIT_USAGE,
    Conflict,
    ContextAssistantError,
    InvalidInput,
    NotFound,
    Unauthorized,
    Unavailable,
    UpstreamError,
    UsageError,
)
from context_assistant.core.retries import RetriesExhausted
from context_assistant.core.upstream import error_detail, exception_line
from context_assistant.ingest.documents import ParseError, UnsupportedFormat
from context_assistant.ingest.run import IngestError, IngestFailed
from context_assistant.llm.interface import ModelError
from context_assistant.refresh import RefreshDisabled, RefreshError
from context_assistant.retrieval.base import IndexNotReady, RetrievalError, RetrievalFailed
from context_assistant.retrieval.embeddings import EmbeddingError
from context_assistant.retrieval.sync import SyncError
from context_assistant.retrieval.vector_search import VectorSearchError, VectorSearchTimeout
from context_assistant.storage.db import DatabaseError
from context_assistant.storage.memory import ImportRejected, MessageNotFound, SessionNotFound
from context_assistant.web.identity import IdentityError
from context_assistant.web.refresh_runner import RefreshAlreadyRunning


@pytest.mark.parametrize(
    ("error", "status", "exit_code", "kind", "retryable"),
    [
        (InvalidInput("x"), 422, EXIT_FAILED, "bad_input", False),
        (UsageError("x"), 422, EXIT_USAGE, "usage", False),
        (NotFound("x"), 404, EXIT_FAILED, "not_found", False),
        (Conflict("x"), 409, EXIT_FAILED, "conflict", False),
        (Unauthorized("x"), 401, EXIT_FAILED, "unauthorized", False),
        (Unavailable("x"), 503, EXIT_FAILED, "unavailable", True),
        (UpstreamError("x"), 502, EXIT_FAILED, "upstream", False),
        (ConfigError("x"), 500, EXIT_USAGE, "config", False),
        (SessionNotFound("s1"), 404, EXIT_FAILED, "not_found", False),
        (MessageNotFound(7), 404, EXIT_FAILED, "not_found", False),
        (ImportRejected(["line 1: bad"]), 422, EXIT_FAILED, "bad_input", False),
        (DatabaseError("down"), 503, EXIT_FAILED, "unavailable", True),
        (ParseError("x"), 422, EXIT_FAILED, "bad_input", False),
        (UnsupportedFormat("x"), 422, EXIT_FAILED, "bad_input", False),
        (IngestError("x"), 422, EXIT_USAGE, "usage", False),
        (IngestFailed("x"), 500, EXIT_FAILED, "error", False),
        (RetrievalError("the query is empty"), 422, EXIT_FAILED, "bad_input", False),
        (IndexNotReady("run sync"), 503, EXIT_FAILED, "unavailable", False),
        (RetrievalFailed("x"), 502, EXIT_FAILED, "upstream", False),
        (VectorSearchError("x"), 502, EXIT_FAILED, "upstream", False),
        (VectorSearchTimeout("x"), 504, EXIT_FAILED, "timeout", True),
        (EmbeddingError("x"), 502, EXIT_FAILED, "upstream", False),
        (SyncError("x"), 409, EXIT_FAILED, "conflict", False),
        (RefreshError("x"), 503, EXIT_FAILED, "unavailable", True),
        (RefreshDisabled("x"), 409, EXIT_FAILED, "conflict", False),
        (RefreshAlreadyRunning("x"), 409, EXIT_FAILED, "conflict", True),
        (IdentityError("x"), 401, EXIT_FAILED, "unauthorized", False),
        (ContextTooLong("x"), 422, EXIT_FAILED, "bad_input", False),
        (RetriesExhausted("x"), 503, EXIT_FAILED, "unavailable", True),
    ],
)
def test_each_error_knows_what_it_means_at_each_front_door(
    error: ContextAssistantError, status: int, exit_code: int, kind: str, retryable: bool
) -> None:
    assert isinstance(error, ContextAssistantError)
    assert (error.http_status, error.exit_code, error.kind, error.retryable) == (
        status,
        exit_code,
        kind,
        retryable,
    )
    assert error.to_json() == {"error": str(error)}


def test_families_stay_catchable_by_name_whatever_their_kind() -> None:
    assert isinstance(IndexNotReady("x"), RetrievalError) and isinstance(VectorSearchTimeout("x"), RetrievalError)
    assert isinstance(RefreshDisabled("x"), RefreshError)
    # Callers written against the built-ins they replace keep working; the front doors map only the root.
    assert isinstance(SessionNotFound("s"), LookupError) and isinstance(ImportRejected(["e"]), ValueError)
    assert not isinstance(KeyError("bug"), ContextAssistantError)


def test_an_instance_can_say_whether_a_retry_helps() -> None:
    assert SyncError("another sync is running", retryable=True).retryable is True
    assert SyncError("no chunk table").retryable is False
    assert Unavailable("pgvector is not installed", retryable=False).retryable is False


def test_model_errors_and_failed_turns_map_by_their_kind() -> None:
    too_long = ModelError("too long", "context_too_long", False)
    outage = ModelError("down", "unavailable", True)
    assert (too_long.http_status, outage.http_status) == (422, 502)
    assert (too_long.retryable, outage.retryable) == (False, True)
    failed = TurnFailed("down", session_id="s", user_message_id=3, kind="unavailable", retryable=True)
    assert failed.http_status == 502 and failed.retryable is True
    assert failed.to_json() == {
        "error": "down",
        "kind": "unavailable",
        "retryable": True,
        "session_id": "s",
        "user_message_id": 3,
    }
    assert (
        TurnFailed("x", session_id="s", user_message_id=3, kind="context_too_long", retryable=False).http_status
        == 422
    )


@pytest.mark.parametrize(
    ("body", "text", "with_code", "detail"),
    [
        ({"error": {"message": "Rate limit  exceeded", "type": "x"}}, "", False, "Rate limit exceeded"),
        ({"error": "model not found"}, "", False, "model not found"),
        (
            {"error_code": "BAD_REQUEST", "message": "Input is too long"},
            "",
            True,
            "BAD_REQUEST: Input is too long",
        ),
        ({"error_code": "BAD_REQUEST", "message": "Input is too long"}, "", False, "Input is too long"),
        ({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ""}, "", False, "RESOURCE_DOES_NOT_EXIST"),
        ({"detail": "Not Found"}, "", False, "Not Found"),
        (None, "<html>Bad gateway</html>\n", False, "<html>Bad gateway</html>"),
        ("plain text body", "", False, "plain text body"),
        ({"message": "x" * 400}, "", False, "x" * 300 + "…"),
    ],
)
def test_one_helper_reads_every_upstream_error_shape(
    body: object, text: str, with_code: bool, detail: str
) -> None:
    assert error_detail(body, text, with_code=with_code) == detail


def test_sdk_errors_lose_their_client_config_dump() -> None:
    error = RuntimeError("Invalid access token.  Config: host=https://x, auth_type=pat")
    assert exception_line(error) == "Invalid access token"
    assert exception_line(RuntimeError("")) == "RuntimeError"
