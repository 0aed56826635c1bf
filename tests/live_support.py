"""A chat model that writes its answer word by word and holds mid-answer until the test lets it go on.

It is a route of the loopback OpenAI-compatible server (tests/fake_databricks.py), so the app's real
``openai`` client streams from it over real HTTP. Holding on an event (not a sleep) makes "mid-stream"
exact: the test acts while the answer is half written, then releases it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from fake_databricks import Response


def chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {"role": "assistant", "content": content} if content is not None else {}
    data = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(data)}\n\n".encode()


class HeldAnswer:
    """``words`` streamed one per chunk; after ``hold_after`` of them the stream waits for ``release``
    (``held`` is set while it waits). Every request gets the same answer."""

    def __init__(self, words: list[str], hold_after: int) -> None:
        self.words = words
        self.hold_after = hold_after
        self.held = threading.Event()
        self.release = threading.Event()
        self.requests = 0

    def __call__(self, request: Any) -> Response:
        self.requests += 1
        return Response(body=self._chunks())

    def _chunks(self) -> Iterator[bytes]:
        for position, word in enumerate(self.words):
            if position == self.hold_after:
                self.held.set()
                self.release.wait(60)
            yield chunk(word)
        yield chunk(None, "stop")
        yield b"data: [DONE]\n\n"

    def text(self, count: int | None = None) -> str:
        return "".join(self.words if count is None else self.words[:count])


def held_model_config(make_config: Any, fake: Any, answer: HeldAnswer, **overrides: Any) -> Any:
    fake.on("POST", "/v1/chat/completions", answer)
    return make_config(
        model__provider="openai",
        model__base_url=fake.url + "/v1",
        model__max_retries=0,
        model__endpoint="m",
        **overrides,
    )
