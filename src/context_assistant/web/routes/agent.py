"""``POST /invocations`` (and ``/responses``): the assistant as a ResponsesAgent on the app
(assistant/agent.py).

Why not mount ``mlflow.genai.agent_server.AgentServer``: it builds its own FastAPI app around
module-global ``@invoke``/``@stream`` functions, with its own ``/health``, no notion of who is asking, errors
as ``{"detail": ...}`` and its own context-bound root span, so each turn would be a second trace in MLflow's
active experiment next to the turn's own, and the trace id it returns would not be the one stored with the
reply (the one feedback is recorded on). The agent must be the same process as the page and ``/api/*``:
the same sessions, the same proxy identity rule (identity.py: ``X-Forwarded-Email`` only behind the
Databricks Apps proxy), the same body limits, and the streaming machinery that marks a reply interrupted when
the client hangs up (stream.py). So this router reproduces ``AgentServer``'s contract inside our app,
with MLflow's own request/response types:

* ``POST /invocations`` and ``POST /responses`` (the path ``openai``'s ``client.responses.create`` calls with
  ``base_url`` = the app URL): a ``ResponsesAgentRequest``; ``"stream": true`` in the body streams Server-Sent
  Events (assistant/agent.py says which), else one ``ResponsesAgentResponse``. The header
  ``x-mlflow-return-trace-id: true`` adds AgentServer's ``{"trace_id"}`` event before ``[DONE]``; the trace id
  is always in the response's ``metadata`` and ``custom_outputs``.
* ``GET /agent/info``: AgentServer's description of the agent (``agent_api: responses``).

Errors are OpenAI-shaped (``{"error": {"message", "type", "code", "param"}}``) with the statuses the
``openai`` client maps to its exceptions: 400 bad request, 401 no identity, 404 unknown session or response,
415 not JSON, 502 the model failed (``x-should-retry: false``: the model call was already retried here;
retry with ``custom_inputs.retry_of``), 503 the database is unavailable.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ... import __version__
from ...assistant.agent import AgentError, ContextAgent, StreamFrames, parse_request
from ...core.errors import ContextAssistantError, Unauthorized
from ...storage.targets import DatabaseError
from ..deps import State
from ..errors import request_id
from ..stream import SSE_HEADERS, turn_frames

log = logging.getLogger(__name__)

RETURN_TRACE_HEADER = "x-mlflow-return-trace-id"
REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["input"],
    "description": "MLflow's ResponsesAgentRequest (OpenAI Responses API input); see agent.py.",
    "properties": {
        "input": {
            "description": "The conversation, ending with the user's new message; or a plain string.",
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "object", "properties": {"role": {}, "content": {}}}},
            ],
        },
        "stream": {"type": "boolean", "description": "Stream Server-Sent Events instead of one JSON response."},
        "custom_inputs": {
            "type": "object",
            "properties": {
                "session_id": {"type": "string", "description": "Continue this stored session."},
                "retry_of": {"type": "integer", "description": "Answer this failed message again."},
            },
        },
        "previous_response_id": {"type": "string", "description": "Continue the conversation of that response."},
        "context": {"type": "object", "description": "Accepted; not used for identity (the proxy decides)."},
    },
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A ResponsesAgentResponse, or with stream: true Server-Sent Events "
        "(response.created, response.output_text.delta ..., response.output_item.done, response.completed).",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
    **{
        status: {"description": what}
        for status, what in {
            400: "invalid request",
            401: "no user identity",
            404: "unknown session or response",
            415: "not JSON",
            502: "the model call failed",
            503: "database unavailable",
        }.items()
    },
}


# -- the routes -------------------------------------------------------------------------------------------
# The typed dependencies that can fail (the user, the parts a turn is built from) are resolved inside the
# handler, not declared: their errors must be OpenAI-shaped, not the app-wide {"error": "..."}.

router = APIRouter(tags=["agent"])


async def invocations(request: Request, state: State) -> Response:
    try:
        return await _invoke(request, state)
    except AgentError as exc:
        return _error_response(exc)
    except Exception as exc:
        return _error_response(_unexpected(exc, request))


for _path, _summary in (
    ("/invocations", "Ask the assistant (MLflow ResponsesAgent, as served by AgentServer)"),
    ("/responses", "The same, at the path of the OpenAI Responses API (client.responses.create)"),
):
    router.add_api_route(
        _path,
        invocations,
        methods=["POST"],
        summary=_summary,
        responses=RESPONSES,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}}
        },
    )


@router.get("/agent/info", summary="What this agent is (as AgentServer describes one)")
def agent_info(state: State) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        mlflow_version = version("mlflow-skinny")
    except PackageNotFoundError:  # full mlflow instead of the skinny package
        mlflow_version = version("mlflow")
    return {
        "name": state.services.env.get("DATABRICKS_APP_NAME") or "context-assistant",
        "use_case": "agent",
        "agent_api": "responses",
        "mlflow_version": mlflow_version,
        "version": __version__,
    }


def _user(request: Request, state: State) -> str:
    try:
        return state.identity.resolve(request.headers).user
    except Unauthorized as exc:
        raise AgentError(401, str(exc), type="authentication_error", code="no_identity") from None


def _agent(state: State) -> ContextAgent:
    services = state.services
    return ContextAgent(services.assistant, services.store, clock=services.clock)


async def _invoke(request: Request, state: State) -> Response:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise AgentError(
            415, f"send the request body as JSON (Content-Type: application/json), not {content_type or 'none'}"
        )
    user = _user(request, state)
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AgentError(400, f"the request body is not valid JSON ({exc})") from None
    streaming = isinstance(body, dict) and body.get("stream", False)
    if not isinstance(streaming, bool):
        raise AgentError(400, "stream: Input should be a valid boolean", param="stream")
    await state.readiness.wait(state.services.config.web.startup_wait_seconds)  # start-up: the model loads
    agent = await run_in_threadpool(_agent, state)
    if not streaming:
        return JSONResponse(await run_in_threadpool(agent.invoke, user, body))

    _, turn = await run_in_threadpool(parse_request, body)
    prepared, first, events = await run_in_threadpool(agent.start_stream, user, turn)
    rid = request_id(request)
    trace_header = request.headers.get(RETURN_TRACE_HEADER, "").lower() == "true"
    frames = StreamFrames(prepared, return_trace_id=trace_header, request_id=rid)
    return StreamingResponse(
        turn_frames(first, events, render=frames, request_id=rid),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


def _error_response(exc: AgentError) -> JSONResponse:
    headers = {"x-should-retry": "false"} if exc.status == 502 else None
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


def _unexpected(exc: Exception, request: Request) -> AgentError:
    """An error of the hierarchy keeps its status and says its kind (a database outage: 503, retryable);
    anything else is a bug, logged with its traceback under the request id (errors.RequestIds)."""
    rid = request_id(request)
    if isinstance(exc, ContextAssistantError):
        server = exc.http_status >= 500
        if server:
            log.warning("agent request [request %s]: %s", rid, exc)
        code = "database_unavailable" if isinstance(exc, DatabaseError) else exc.kind
        return AgentError(
            exc.http_status, str(exc), type="server_error" if server else "invalid_request_error", code=code
        )
    log.exception("unexpected error [request %s] in %s %s", rid, request.method, request.url.path)
    return AgentError(
        500,
        f"internal error (request id {rid}); the app log has the details",
        type="server_error",
        code="internal",
        extra={"request_id": rid},
    )
