"""The assistant turn as an MLflow ResponsesAgent: OpenAI Responses API shapes in and out.

This is the face Databricks' agent tooling speaks (AI Playground, the Review App, the agent chat UI template,
``openai`` / ``databricks-openai`` clients, other agents calling this one as a tool). The request and
response are MLflow's own types (:mod:`mlflow.types.responses`), validated as ``AgentServer`` validates
them; the turn behind them is :class:`~context_assistant.assistant.Assistant`'s, unchanged: the same stored
sessions, memory, retrieval, model and trace. HTTP lives in web/routes/agent.py; evaluation calls
:meth:`ContextAgent.invoke` directly (assistant/evaluation.py).

**Which conversation a request continues** (the first rule that applies):

1. ``custom_inputs.session_id``: that stored session of the caller (404 if it is not theirs). The stored
   conversation is the history; earlier items in ``input`` are not used (chat UIs resend the whole
   conversation every turn).
2. ``previous_response_id``: the session of that earlier response (its id is ``resp_<n>``), as the OpenAI
   Responses API continues a conversation.
3. Neither: a new session. When ``input`` holds earlier messages (a conversation started elsewhere), they are
   stored in it first, in order, as its history (metadata ``origin: request_input``), so the answer sees them
   and the session reads as the whole conversation.

The new turn is the **last** item of ``input``, which must be a user message with text. System and
developer messages and non-message items (tool calls, reasoning) are not used: the system prompt is
``model.system_prompt`` and the assistant calls no tools; the response's ``custom_outputs.warnings`` says so.
Images and files are refused (400). ``custom_inputs.retry_of`` answers a failed turn's stored message again
(as ``retry_of`` on ``/api/chat``); ``input`` is then ignored. ``input`` may also be a plain string.

**What comes back**: one assistant message whose text carries a ``file_citation`` annotation per ``[n]``
marker that points at a provided source (``index`` = the marker's offset in the text; ``file_id`` /
``filename`` = the document path, plus ``source_index``, ``chunk_id``, ``heading``, ``page``), and
``custom_outputs``: ``session_id``, ``user_message_id``, ``message_id``, ``trace_id``, ``sources`` (every
passage given to the model: index, chunk_id, path, heading, page, score, text) and ``warnings``.
``metadata`` repeats ``session_id`` and ``trace_id`` (strings) for clients that only read OpenAI fields.

**Streaming** (``"stream": true``, as ``AgentServer`` selects it): ``response.created``,
``response.output_item.added`` and ``response.content_part.added`` (so the ``openai`` client's
``responses.stream()`` helper can follow), then ``response.output_text.delta`` events, then one
``response.output_text.annotation.added`` per citation, ``response.output_text.done``,
``response.content_part.done``, then ``response.output_item.done`` with the whole annotated message
(and ``custom_outputs``), then ``response.completed`` with the full response, then ``data: [DONE]``. A turn
that fails after the message was stored ends with an ``error`` event (type, code, message, and an ``error``
object the ``openai`` client raises as ``APIError``) and ``[DONE]``.

Errors are :class:`AgentError`: an HTTP status and the OpenAI error body ``{"error": {"message", "type",
"code", "param", ...}}``; a failed turn adds ``session_id``, ``user_message_id`` and ``retryable``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from ..core.clock import REAL_CLOCK, Clock
from ..core.errors import ContextAssistantError, InvalidInput, NotFound
from ..llm.interface import NumberedSource
from ..storage.memory import SessionNotFound, title_from
from .prompt import source_json
from .turn import TurnEvent, TurnEvents, TurnFailed, TurnResult, check_message

if TYPE_CHECKING:
    from ..storage.memory import ConversationStore
    from .turn import Assistant

RESPONSE_ID_PREFIX = "resp_"
HISTORY_ORIGIN = "request_input"
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_TEXT_PARTS = ("input_text", "output_text", "text")


class AgentError(ContextAssistantError):
    """A request refused or a turn that could not finish, as an HTTP status and an OpenAI error body.

    Part of the one error hierarchy, with its status set per error (the OpenAI statuses the ``openai``
    client maps to its exceptions); ``kind`` is the OpenAI error ``code`` (or ``type``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        extra = dict(extra or {})
        retryable = extra.get("retryable")
        super().__init__(message, retryable=bool(retryable) if retryable is not None else status == 503)
        self.http_status = status
        self.kind = code or type
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.extra = extra

    def error_json(self) -> dict[str, Any]:
        return {"message": str(self), "type": self.type, "code": self.code, "param": self.param, **self.extra}

    def to_json(self) -> dict[str, Any]:
        return {"error": self.error_json()}


def turn_failed_error(exc: TurnFailed) -> AgentError:
    """A failed turn: 400 when the conversation no longer fits the model, else 502 (the model call failed)."""
    too_long = exc.kind == "context_too_long"
    return AgentError(
        400 if too_long else 502,
        str(exc),
        type="invalid_request_error" if too_long else "server_error",
        code="context_length_exceeded" if too_long else exc.kind,
        extra={"retryable": exc.retryable, "session_id": exc.session_id, "user_message_id": exc.user_message_id},
    )


# ---------------------------------------------------------------------------------------------------------
# Reading a request


@dataclass(frozen=True)
class AgentTurn:
    """What a Responses request asks of the assistant (see the module docstring for the rules)."""

    message: str
    session_id: str | None = None
    previous_response: int | None = None
    retry_of: int | None = None
    history: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()


def parse_request(body: Any) -> tuple[Any, AgentTurn]:
    """Validate ``body`` as MLflow's ``ResponsesAgentRequest`` and read the turn from it."""
    from mlflow.types.responses import ResponsesAgentRequest
    from pydantic import ValidationError

    if not isinstance(body, dict):
        raise AgentError(400, "the request body must be a JSON object")
    data = dict(body)
    data.pop("stream", None)
    if isinstance(data.get("input"), str):  # the Responses API accepts a plain string as one user message
        data["input"] = [{"role": "user", "content": data["input"]}]
    if "input" not in data:
        raise AgentError(
            400, "input: Field required (the conversation, ending with the user's message)", param="input"
        )
    try:
        request = ResponsesAgentRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "body"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise AgentError(400, f"{where}: {first.get('msg')}{more}", param=where) from None
    return request, read_turn(request, data.get("previous_response_id"))


def read_turn(request: Any, previous_response_id: Any = None) -> AgentTurn:
    custom = request.custom_inputs or {}
    session_id = custom.get("session_id")
    if session_id is not None and (not isinstance(session_id, str) or not session_id.strip()):
        raise AgentError(
            400, "custom_inputs.session_id must be a non-empty string", param="custom_inputs.session_id"
        )
    retry_of = custom.get("retry_of")
    if retry_of is not None and (isinstance(retry_of, bool) or not isinstance(retry_of, int)):
        raise AgentError(
            400,
            "custom_inputs.retry_of must be the integer id of a failed message",
            param="custom_inputs.retry_of",
        )
    previous = _previous_response(previous_response_id) if session_id is None else None
    if retry_of is not None:
        return AgentTurn("", session_id=session_id, previous_response=previous, retry_of=retry_of)

    items = [item.model_dump(exclude_none=True) for item in request.input]
    if not items:
        raise AgentError(400, "input is empty: send at least the user's message", param="input")
    last = items[-1]
    if last.get("type", "message") != "message" or last.get("role") != "user":
        what = last.get("role") or last.get("type")
        raise AgentError(
            400,
            f"input[{len(items) - 1}]: the last input item must be the user's new message, not {what!r}",
            param=f"input[{len(items) - 1}]",
        )
    message = _text(last, len(items) - 1)

    history: list[tuple[str, str]] = []
    ignored: set[str] = set()
    continuing = session_id is not None or previous is not None
    for position, item in enumerate(items[:-1]):
        kind, role = item.get("type", "message"), item.get("role")
        if kind != "message":
            ignored.add(f"{kind} items")
        elif role in ("system", "developer"):
            ignored.add(f"{role} messages (the system prompt is model.system_prompt)")
        elif role in ("user", "assistant"):
            text = _text(item, position)
            if text.strip() and not continuing:
                history.append((role, text))
    warnings = tuple(f"not used from the input: {what}" for what in sorted(ignored))
    return AgentTurn(message, session_id, previous, None, tuple(history), warnings)


def _previous_response(value: Any) -> int | None:
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else ""
    number = text.removeprefix(RESPONSE_ID_PREFIX)
    if not text.startswith(RESPONSE_ID_PREFIX) or not number.isdigit():
        raise AgentError(
            404,
            f"response not found: {value} (continue a conversation with the id of an earlier response of this "
            "app, or with custom_inputs.session_id)",
            code="response_not_found",
            param="previous_response_id",
        )
    return int(number)


def _text(item: Mapping[str, Any], position: int) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for index, part in enumerate(content or []):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in _TEXT_PARTS:
            texts.append(str(part.get("text") or ""))
        elif kind in ("input_image", "input_file"):
            raise AgentError(
                400,
                f"input[{position}].content[{index}]: {kind} is not supported; the assistant reads text only",
                param=f"input[{position}].content[{index}]",
            )
    return "\n".join(texts)


# ---------------------------------------------------------------------------------------------------------
# Writing a response


def find_citations(text: str) -> list[tuple[int, int, int]]:
    """Every ``[n]`` (and ``[n, m]``) marker in ``text``: ``(n, start, end)`` of the bracket, in order."""
    found = []
    for match in _CITATION.finditer(text):
        for number in match.group(1).split(","):
            found.append((int(number), match.start(), match.end()))
    return found


def citation_annotations(text: str, sources: Sequence[NumberedSource]) -> list[dict[str, Any]]:
    """A ``file_citation`` annotation for each marker that names a provided source (others get none)."""
    by_index = {source.index: source for source in sources}
    annotations = []
    for number, start, _ in find_citations(text):
        source = by_index.get(number)
        if source is None:
            continue
        annotations.append(
            {
                "type": "file_citation",
                "file_id": source.path,
                "filename": source.path,
                "index": start,
                "source_index": number,
                "chunk_id": source.chunk_id,
                "heading": source.heading,
                "page": source.page,
            }
        )
    return annotations


def message_item(text: str, item_id: str, sources: Sequence[NumberedSource]) -> dict[str, Any]:
    from mlflow.types.responses import create_text_output_item

    item = create_text_output_item(text, item_id, citation_annotations(text, sources))
    item["status"] = "completed"
    return item


def custom_outputs(result: TurnResult, warnings: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "session_id": result.session_id,
        "user_message_id": result.user_message_id,
        "message_id": result.reply_message_id,
        "trace_id": result.trace_id,
        "sources": [source_json(s) for s in result.sources],
        "warnings": [*warnings, *result.warnings],
    }


def response_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_metadata(session_id: str, trace_id: str | None) -> dict[str, str]:
    return {"session_id": session_id, **({"trace_id": trace_id} if trace_id else {})}


def build_response(
    result: TurnResult, *, item_id: str, created_at: float, warnings: Sequence[str] = ()
) -> dict[str, Any]:
    """The whole answer as a ``ResponsesAgentResponse`` (validated), in its JSON form."""
    from mlflow.types.responses import ResponsesAgentResponse

    response = ResponsesAgentResponse.model_validate(
        {
            "id": f"{RESPONSE_ID_PREFIX}{result.user_message_id}",
            "created_at": created_at,
            "model": result.model,
            "status": "completed",
            "output": [message_item(result.reply, item_id, result.sources)],
            "usage": response_usage(result.usage),
            "metadata": response_metadata(result.session_id, result.trace_id),
            "custom_outputs": custom_outputs(result, warnings),
        }
    )
    return response.model_dump(exclude_none=True)


# ---------------------------------------------------------------------------------------------------------
# The agent


@dataclass
class PreparedTurn:
    """A turn whose conversation is settled (a session chosen or seeded) and that is ready to run."""

    turn: AgentTurn
    session_id: str | None
    item_id: str
    created_at: float
    warnings: list[str] = field(default_factory=list)


class ContextAgent:
    """Runs Responses requests as assistant turns for one user at a time (the caller decides who asks)."""

    def __init__(
        self,
        assistant: Assistant,
        store: ConversationStore,
        *,
        clock: Clock = REAL_CLOCK,
        new_item_id: Callable[[], str] = lambda: f"msg_{uuid.uuid4().hex}",
    ) -> None:
        self.assistant = assistant
        self.store = store
        self.clock = clock
        self.new_item_id = new_item_id

    def invoke(self, user: str, body: Any) -> dict[str, Any]:
        """One whole turn: the ``ResponsesAgentResponse`` JSON, or :class:`AgentError`."""
        prepared = self.prepare(user, parse_request(body)[1])
        try:
            result = self.assistant.turn(
                user, prepared.turn.message, prepared.session_id, retry_of=prepared.turn.retry_of
            )
        except TurnFailed as exc:
            raise turn_failed_error(exc) from exc
        except Exception as exc:
            _raise_request_error(exc, prepared.turn)
        return build_response(
            result, item_id=prepared.item_id, created_at=prepared.created_at, warnings=prepared.warnings
        )

    def start_stream(self, user: str, turn: AgentTurn) -> tuple[PreparedTurn, TurnEvent, TurnEvents]:
        """Prepare ``turn`` and take the streamed turn's first event (the message is stored), so that a
        problem up to there is an :class:`AgentError` before any byte is sent."""
        prepared = self.prepare(user, turn)
        events = self.assistant.stream_turn(user, turn.message, prepared.session_id, retry_of=turn.retry_of)
        try:
            first = next(events)
        except Exception as exc:
            _raise_request_error(exc, turn)
        return prepared, first, events

    def prepare(self, user: str, turn: AgentTurn) -> PreparedTurn:
        """Check the message, then settle the session: the one named, the previous response's, or a new one
        seeded with the history the request brought. Nothing is stored for a message that would be refused."""
        if turn.retry_of is None:
            self._check_message(turn.message)
        session_id = turn.session_id
        try:
            if turn.previous_response is not None:
                session_id = self.store.get_message(user, turn.previous_response).session_id
            elif session_id is None and turn.history and turn.retry_of is None:
                first_user = next((text for role, text in turn.history if role == "user"), turn.message)
                session_id = self.store.create_session(user, title=title_from(first_user)).id
                self.store.append_many(
                    user, session_id, [(role, text, {"origin": HISTORY_ORIGIN}) for role, text in turn.history]
                )
        except Exception as exc:
            _raise_request_error(exc, turn)
        return PreparedTurn(
            turn, session_id, self.new_item_id(), self.clock.now().timestamp(), list(turn.warnings)
        )

    def _check_message(self, message: str) -> None:
        """The assistant's one message rule (:func:`check_message`), answered in OpenAI's error shape."""
        try:
            check_message(message, self.assistant.config.web.max_message_chars)
        except InvalidInput as exc:
            raise AgentError(400, str(exc), param="input") from None


def _raise_request_error(exc: Exception, turn: AgentTurn) -> NoReturn:
    """Raise the request-level failures of a turn as :class:`AgentError`, anything else unchanged."""
    error = _request_error(exc, turn)
    if error is None or error is exc:
        raise exc
    raise error from exc


def _request_error(exc: Exception, turn: AgentTurn) -> AgentError | None:
    if isinstance(exc, AgentError):
        return exc
    if isinstance(exc, SessionNotFound):
        return AgentError(404, str(exc), code="session_not_found", param="custom_inputs.session_id")
    if isinstance(exc, NotFound):
        if turn.previous_response is not None and turn.retry_of is None:
            return AgentError(
                404,
                f"response not found: {RESPONSE_ID_PREFIX}{turn.previous_response}",
                code="response_not_found",
                param="previous_response_id",
            )
        return AgentError(404, str(exc), code="message_not_found", param="custom_inputs.retry_of")
    if isinstance(exc, InvalidInput):
        param = "custom_inputs.retry_of" if turn.retry_of is not None else "input"
        return AgentError(400, str(exc), param=param)
    return None


# ---------------------------------------------------------------------------------------------------------
# Streaming


class StreamFrames:
    """A streamed turn as Responses API Server-Sent Events (a web/stream.FrameRenderer)."""

    def __init__(
        self, prepared: PreparedTurn, *, return_trace_id: bool = False, request_id: str | None = None
    ) -> None:
        self.prepared = prepared
        self.return_trace_id = return_trace_id
        self.request_id = request_id  # names the log lines of a crash
        self.sequence = 0
        self.user_message_id: int | None = None
        self.session_id: str | None = prepared.session_id
        self.closed = False

    def event(self, event: TurnEvent) -> bytes:
        if event.type == "start":
            self.user_message_id = event.data.get("user_message_id")
            self.session_id = event.data.get("session_id")
            frames = self._send(
                "response.created",
                {
                    "response": {
                        "id": f"{RESPONSE_ID_PREFIX}{self.user_message_id}",
                        "object": "response",
                        "created_at": self.prepared.created_at,
                        "status": "in_progress",
                        "output": [],
                        "metadata": response_metadata(str(self.session_id), None),
                    }
                },
            )
            # The message and its text part open before the first delta, as the OpenAI API streams them (the
            # openai client's responses.stream() builds its snapshot from these).
            frames += self._send(
                "response.output_item.added",
                {
                    "output_index": 0,
                    "item": {
                        "type": "message",
                        "id": self.prepared.item_id,
                        "role": "assistant",
                        "status": "in_progress",
                        "content": [],
                    },
                },
            )
            return frames + self._send(
                "response.content_part.added",
                {
                    "item_id": self.prepared.item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
            )
        if event.type == "delta":
            return self._send(
                "response.output_text.delta",
                {
                    "item_id": self.prepared.item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": event.data["text"],
                },
            )
        if event.type == "done" and event.result is not None:
            response = build_response(
                event.result,
                item_id=self.prepared.item_id,
                created_at=self.prepared.created_at,
                warnings=self.prepared.warnings,
            )
            item = response["output"][0]
            part = item["content"][0]
            where = {"item_id": self.prepared.item_id, "output_index": 0, "content_index": 0}
            frames = b""
            for position, annotation in enumerate(part.get("annotations") or []):
                frames += self._send(
                    "response.output_text.annotation.added",
                    {**where, "annotation_index": position, "annotation": annotation},
                )
            frames += self._send("response.output_text.done", {**where, "text": part["text"]})
            frames += self._send("response.content_part.done", {**where, "part": part})
            frames += self._send(
                "response.output_item.done",
                {"item": response["output"][0], "output_index": 0, "custom_outputs": response["custom_outputs"]},
            )
            frames += self._send("response.completed", {"response": response})
            if self.return_trace_id and event.result.trace_id:  # as AgentServer does for x-mlflow-return-trace-id
                frames += _data({"trace_id": event.result.trace_id})
            return frames
        return b""  # "sources": they come with the done item, on the annotations and in custom_outputs

    def failed(self, error: TurnFailed) -> bytes:
        return self._error(turn_failed_error(error))

    def crashed(self, error: Exception, first: TurnEvent) -> bytes:
        return self._error(
            AgentError(
                500,
                f"internal error (request id {self.request_id}); the app log has the details",
                type="server_error",
                code="internal",
                extra={
                    "retryable": True,
                    "session_id": self.session_id,
                    "user_message_id": self.user_message_id,
                    "request_id": self.request_id,
                },
            )
        )

    def end(self) -> bytes:
        if self.closed:
            return b""
        self.closed = True
        return b"data: [DONE]\n\n"

    def _error(self, error: AgentError) -> bytes:
        body = error.error_json()
        frames = self._send(
            "error", {"code": error.code, "message": str(error), "param": error.param, "error": body}
        )
        return frames + self.end()

    def _send(self, type: str, data: dict[str, Any]) -> bytes:
        payload = {"type": type, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return f"event: {type}\n".encode() + _data(payload)


def _data(payload: Mapping[str, Any]) -> bytes:
    import json

    return f"data: {json.dumps(payload, ensure_ascii=False, default=str)}\n\n".encode()
