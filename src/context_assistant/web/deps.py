"""What an endpoint may ask for, as typed FastAPI dependencies: the user, the config, the parts it uses.

The app keeps one :class:`WebState` (``app.state.web``): the composition root's
:class:`~context_assistant.services.Services` (which builds each part once, thread-safely, on first use),
the identity rule and the document refresh runner. Endpoints declare what they need (``user: CurrentUser``,
``assistant: AssistantDep``...) and never reach into the state themselves. The dependencies are ``async``:
FastAPI runs a plain ``def`` dependency in a worker thread, and a request's dozen of them cost more CPU in
thread hand-offs than the rest of the request outside its turn (a profile under 32 clients). None of them
blocks: a part not built yet (a pool to open, a model to load) is built in a worker thread (:func:`_part`).
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from ..assistant.turn import Assistant, check_message
from ..core.config import Config
from ..core.console import Progress
from ..core.text import InvalidText
from ..core.tracing import AnyTracer
from ..llm.interface import ChatModel
from ..refresh import refresh_documents
from ..retrieval.base import ChunkIndex
from ..services import Services, part
from ..storage.db import Database
from ..storage.memory import ConversationStore
from ..storage.targets import DatabaseError
from .identity import Identity, IdentityResolver
from .live import TurnHub
from .models import ChatRequest
from .readiness import Readiness
from .refresh_runner import RefreshCall, RefreshRunner
from .supervisor import EmbeddedSupervisor

log = logging.getLogger(__name__)
T = TypeVar("T")

WARM_UP_USER = "context-assistant warm-up"  # recall searches as nobody: the user's turns are never read


class WebState:
    """What the endpoints share: the services, the identity rule, the refresh runner."""

    def __init__(self, services: Services, refresh: RefreshCall | None = None) -> None:
        self.services = services
        self.identity = IdentityResolver(services.config, services.env)
        self.refresh = RefreshRunner(refresh or self._refresh_documents, clock=services.clock)
        self.turns = TurnHub(lambda: services.store, clock=services.clock)
        self.supervisor = EmbeddedSupervisor(services.config)
        self._opening: threading.Thread | None = None
        self._opening_lock = threading.Lock()
        self._open_error = ""
        self.readiness = Readiness()  # set by warm_up (or at once by create_app when there is none)

    def _refresh_documents(self, full: bool, progress: Progress) -> Any:
        """What the refresh button does: ingest changed documents and sync the index (the ingestion job
        on Databricks Apps, where ``rag.refresh_job_id`` names it); see :mod:`context_assistant.refresh`."""
        return refresh_documents(self.services, full=full, progress=progress)

    def database_within(self, timeout: float) -> Database:
        """The pool, opening it in the background if needed and waiting at most ``timeout`` seconds (so
        /health answers within its timeout even when the database was unreachable at start)."""
        db = self.services.opened_database()
        if db is not None:
            return db
        with self._opening_lock:
            if self._opening is None or not self._opening.is_alive():
                self._opening = threading.Thread(target=self._open, name="db-open", daemon=True)
                self._opening.start()
            opening = self._opening
        opening.join(timeout)
        db = self.services.opened_database()
        if db is None:
            raise DatabaseError(self._open_error or "still connecting to the database")
        return db

    def _open(self) -> None:
        try:
            db = self.services.database()
            db.set_wait_timeout(self.services.config.web.health_timeout_seconds)
            self._open_error = ""
        except Exception as exc:
            self._open_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("could not open the database: %s", self._open_error)

    def warm_up(self) -> None:
        """Connect, migrate and load the parts of a turn before the first request needs them (the embedding
        model, through the batcher; the first searches' pages), then say the app is ready; the trace store opens
        alongside."""
        services = self.services
        config = services.config
        step = self.readiness.starting
        try:
            # The trace store opens meanwhile (in the exporter process, or in the background in process); turns
            # never wait for it, so neither does readiness (/health shows `tracing: starting` until it is open).
            services.tracer.start()
            step("connecting to the database")
            self._open()
            services.assistant  # noqa: B018  (builds it)
            if config.rag.enabled or config.memory.recall:
                step(f"loading the embedding model {services.embedder.model_name}")
                services.embedder.embed(["warm-up"])
            step("warming up search")
            if config.rag.enabled:
                services.retriever.search("warm-up", top_k=1)
            if config.memory.recall:
                services.recall.recall(WARM_UP_USER, "warm-up", top_k=1)
        except Exception as exc:  # the app still starts; /health and the requests report the problem
            log.warning("warm-up incomplete (%s): %s", self.readiness.step, exc)
        finally:
            self.readiness.set_ready()


async def _part(services: Services, which: part[T]) -> T:
    """A part of the services: at once when built (every request after start-up), else built in a worker
    thread, since building may open the database pool or load a model."""
    built = services.built(which)
    if built is not None:
        return built
    value: T = await run_in_threadpool(getattr, services, which.name)  # the instance's own build of it
    return value


async def web_state(request: Request) -> WebState:
    state = request.app.state.web
    assert isinstance(state, WebState)
    return state


State = Annotated[WebState, Depends(web_state)]


async def services(state: State) -> Services:
    return state.services


ServicesDep = Annotated[Services, Depends(services)]


async def config(state: State) -> Config:
    return state.services.config


ConfigDep = Annotated[Config, Depends(config)]


async def identity(request: Request, state: State) -> Identity:
    """Who the request acts for (see identity.py); 401 when there is no one."""
    return state.identity.resolve(request.headers)


IdentityDep = Annotated[Identity, Depends(identity)]


async def current_user(who: IdentityDep) -> str:
    return who.user


CurrentUser = Annotated[str, Depends(current_user)]


async def store(services: ServicesDep) -> ConversationStore:
    return await _part(services, Services.store)


StoreDep = Annotated[ConversationStore, Depends(store)]


async def assistant(services: ServicesDep) -> Assistant:
    return await _part(services, Services.assistant)


AssistantDep = Annotated[Assistant, Depends(assistant)]


async def chat_model(services: ServicesDep) -> ChatModel:
    return await _part(services, Services.chat_model)


ChatModelDep = Annotated[ChatModel, Depends(chat_model)]


async def tracer(services: ServicesDep) -> AnyTracer:
    return await _part(services, Services.tracer)


TracerDep = Annotated[AnyTracer, Depends(tracer)]


async def chunk_index(services: ServicesDep) -> ChunkIndex:
    return await _part(services, Services.chunk_index)


ChunkIndexDep = Annotated[ChunkIndex, Depends(chunk_index)]


async def refresh_runner(state: State) -> RefreshRunner:
    return state.refresh


RefreshRunnerDep = Annotated[RefreshRunner, Depends(refresh_runner)]


async def turn_hub(state: State) -> TurnHub:
    return state.turns


TurnHubDep = Annotated[TurnHub, Depends(turn_hub)]


async def ready_for_turns(state: State) -> None:
    """Wait (on the event loop) until start-up has loaded the model; 503 after web.startup_wait_seconds."""
    await state.readiness.wait(state.services.config.web.startup_wait_seconds)


ReadyForTurns = Depends(ready_for_turns)


async def chat_request(body: ChatRequest, config: ConfigDep) -> ChatRequest:
    """The request body, checked by the assistant's own message rule (a retry sends no new message)."""
    if body.retry_of is None:
        if "message" not in body.model_fields_set:  # `{}` is a missing field, not an empty question
            raise InvalidText(
                "message", 'is missing: send {"message": "your question"} (or retry_of, a failed message\'s id)'
            )
        check_message(body.message, config.web.max_message_chars)
    return body


ChatBody = Annotated[ChatRequest, Depends(chat_request)]
