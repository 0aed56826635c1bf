"""The JSON shapes of the web API (request bodies and responses), documented for the OpenAPI page.

Field descriptions here are what /docs shows, so they say what a client needs to know. Limits that depend on
the configuration (the message length) are checked in the endpoints, where the configured value is known.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TITLE_MAX_CHARS = 200
COMMENT_MAX_CHARS = 2000


class ErrorBody(BaseModel):
    """Every error response: one line for people, plus fields a client can branch on."""

    error: str = Field(description="What went wrong and what to do about it, in one line.")
    kind: str | None = Field(None, description="For failed turns: the failure kind (e.g. unavailable).")
    retryable: bool | None = Field(None, description="For failed turns: whether sending retry_of can succeed.")
    session_id: str | None = Field(None, description="For failed turns: the session the message is stored in.")
    user_message_id: int | None = Field(None, description="For failed turns: the stored message to retry.")
    request_id: str | None = Field(
        None, description="This request's id (also the X-Request-ID header): the server log has the details."
    )


# -- chat ------------------------------------------------------------------------------------------------


class ChatRequest(BaseModel):
    # A misspelt field ({"mesage": ...}) is named in the 422, not read as an empty message.
    model_config = ConfigDict(extra="forbid")

    message: str = Field(
        "",
        description="The user's message (at most web.max_message_chars characters). Ignored with retry_of.",
        examples=["When does the on-call rotation hand over?"],
    )
    session_id: str | None = Field(
        None, description="Continue this session (one of yours); omit to start a new one, titled by the message."
    )
    retry_of: int | None = Field(
        None,
        description="Answer this earlier user message again instead of storing a new one: the user_message_id "
        "of a failed turn (from an error response or event).",
    )


class Source(BaseModel):
    index: int = Field(description="The number the answer cites it with: [index].")
    chunk_id: str = Field(description="The passage's id (GET /api/sources/{chunk_id} returns its text).")
    path: str = Field(description="The document the passage comes from.")
    heading: str = Field("", description="The heading path of the passage within the document.")
    page: int | None = Field(None, description="The page number (PDFs), if any.")
    score: float = Field(description="The retrieval score (higher is more relevant).")
    text: str | None = Field(None, description="The passage text (present in fresh answers).")


class RecalledOut(BaseModel):
    message_id: int = Field(description="The recalled message.")
    session_id: str = Field(description="The earlier session it is in (one of yours).")
    role: str = Field(description="user or assistant.")
    timestamp: str = Field(description="ISO 8601 timestamp.")


class ChatReply(BaseModel):
    session_id: str = Field(description="The session the turn is stored in.")
    reply: str = Field(description="The assistant's answer (markdown).")
    sources: list[Source] = Field(description="The passages given to the model, numbered as cited.")
    trace_id: str | None = Field(None, description="The MLflow trace of the turn (None when tracing is off).")
    user_message_id: int = Field(description="The stored user message.")
    message_id: int = Field(description="The stored reply (feedback goes on this id).")
    model: str = Field(description="The model that answered.")
    usage: dict[str, Any] = Field(default_factory=dict, description="Token usage of the model call.")
    recalled: list[RecalledOut] = Field(
        default_factory=list,
        description="Turns of the user's earlier sessions given to the model (none when nothing was related).",
    )
    warnings: list[str] = Field(default_factory=list, description="What degraded the answer (e.g. search down).")


# -- sessions and messages -------------------------------------------------------------------------------


class SessionOut(BaseModel):
    id: str
    title: str = Field(description="Named after the first message unless renamed.")
    created_at: str = Field(description="ISO 8601 timestamp.")
    updated_at: str = Field(description="ISO 8601 timestamp of the latest message.")
    message_count: int


class SessionList(BaseModel):
    user: str = Field(description="Whose sessions these are.")
    sessions: list[SessionOut] = Field(description="Most recently active first.")


class NewSession(BaseModel):
    title: str = Field("", max_length=TITLE_MAX_CHARS, description="Optional; the first message names it.")


class RenameSession(BaseModel):
    title: str = Field(min_length=1, max_length=TITLE_MAX_CHARS, description="The new title (not blank).")


class MessageOut(BaseModel):
    id: int
    session_id: str
    role: Literal["user", "assistant", "system"]
    content: str
    timestamp: str = Field(description="ISO 8601 timestamp.")
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="status (ok | failed), error and error_kind for failed turns, sources (without text), "
        "model, usage, latency_ms, trace_id, in_reply_to, feedback.",
    )


class SessionMessages(BaseModel):
    session: SessionOut
    messages: list[MessageOut] = Field(description="In order, oldest first.")


# -- feedback, sources, refresh, identity, health --------------------------------------------------------


class FeedbackRequest(BaseModel):
    message_id: int = Field(description="The reply (an assistant message) the feedback is about.")
    value: Literal["up", "down"] = Field(description="Thumbs up or down.")
    comment: str = Field("", max_length=COMMENT_MAX_CHARS, description="Optional: what was good or wrong.")


class FeedbackOut(BaseModel):
    message_id: int
    value: Literal["up", "down"]
    comment: str
    at: str = Field(description="When it was given (ISO 8601).")
    traced: bool = Field(description="Recorded on the turn's MLflow trace as an assessment too.")
    note: str | None = Field(None, description="Why it was not recorded on the trace, when it was not.")


class LiveTurnOut(BaseModel):
    """An answer being written by the app (or finished moments ago)."""

    session_id: str
    user_message_id: int
    last_event_id: int = Field(description="the id of the last event so far (resume with ?after=)")
    finished: bool


class LiveTurnList(BaseModel):
    turns: list[LiveTurnOut]


class SourceText(BaseModel):
    chunk_id: str
    path: str
    heading: str
    page: int | None
    text: str


class Example(BaseModel):
    question: str = Field(description="A question a new user could ask.")
    path: str = Field(description="The document it was drawn from.")
    heading: str = Field(description="The heading it was drawn from ('' when the document has none).")


class Examples(BaseModel):
    examples: list[Example] = Field(
        description="Up to three, from different documents; empty when there is no document index here."
    )


class RefreshRequest(BaseModel):
    full: bool = Field(False, description="Re-embed every chunk, not only new and changed ones.")


class RefreshStatusOut(BaseModel):
    state: Literal["idle", "running", "succeeded", "failed"]
    full: bool = False
    started_by: str | None = None
    started_at: str | None = Field(None, description="ISO 8601.")
    finished_at: str | None = Field(None, description="ISO 8601.")
    progress: str | None = Field(None, description="The latest progress line while running.")
    summary: str | None = Field(None, description="One line for people: what the refresh did or why it failed.")
    result: dict[str, Any] | None = Field(None, description="What it did (the `ingest --json` shape).")
    error: str | None = None


class Me(BaseModel):
    user: str = Field(description="Who the app thinks you are.")
    identity: str = Field(description="Where that came from: the header name, or 'default' (web.default_user).")
    max_message_chars: int
    model: str = Field(description="The chat model provider in use: databricks, openai or offline (no model).")
    rag_enabled: bool


class Health(BaseModel):
    status: Literal["ok", "unavailable", "starting"]
    database: str = Field(description="ok, or what is wrong with the database connection.")
    tracing: str = Field(
        "off",
        description="on, starting (the trace exporter is opening the store), or off: why (turns go on untraced).",
    )
    reason: str | None = Field(
        default=None, description='While "starting": what start-up is doing (loading the embedding model).'
    )
