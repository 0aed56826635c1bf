"""The chat page in headless Chromium (Debian's ``chromium``, driven by Playwright; no browser is downloaded).

The app runs on a real uvicorn server over the test Postgres with the offline model (see web_support.py).
The failing-then-answering model is a loopback OpenAI-compatible server (tests/fake_databricks.py) speaking
the documented chat-completions REST shape to the real ``openai`` client.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import REPO
from context_assistant.refresh import refresh_index
from fake_databricks import FakeDatabricks, Response
from web_support import DOCS, start_app_fixture, wait_for  # noqa: F401  (the start_app fixture)

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUTPUT = REPO / "test-output"
QUESTION = "When does the on-call rotation hand over?"
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        reason = (
            "Debian's chromium is not installed (`make test` installs it as root or with passwordless sudo; "
            "else: sudo apt-get install chromium)"
        )
        if os.environ.get("CONTEXT_ASSISTANT_REQUIRE_BROWSER") == "1":  # CI: a skip would hide a lost install
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page_for(browser: Any) -> Iterator[Any]:
    """``page_for(app, width=1200)``: a fresh browser page on the app, loaded and ready."""
    contexts: list[Any] = []

    def open_page(app: Any, width: int = 1200, height: int = 900) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.goto(app.url + "/")
        page.wait_for_selector("body[data-ready='true']")
        return page

    yield open_page
    for context in contexts:
        context.close()


def send(page: Any, text: str) -> Any:
    """Type ``text`` and press Enter; returns the finished assistant message."""
    before = page.locator("article.msg-assistant").count()
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")
    reply = page.locator("article.msg-assistant").nth(before)
    reply.wait_for()
    page.wait_for_function(
        "n => document.querySelectorAll('article.msg-assistant')[n]?.getAttribute('aria-busy') === 'false'",
        arg=before,
    )
    return reply


def test_a_streamed_answer_with_sources_survives_a_reload(start_app, page_for) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    page = page_for(app)

    with page.expect_response("**/api/chat/stream") as streamed:
        reply = send(page, QUESTION)
    assert streamed.value.headers["content-type"].startswith("text/event-stream")
    assert "Tuesdays at 10:00 UTC" in reply.locator(".msg-body").inner_text()
    page.locator("#session-title", has_text=QUESTION).wait_for()  # the new session is named by the question
    sources = reply.locator("details.source")
    assert sources.count() == len(DOCS)  # top_k 5: every chunk of the small corpus
    summaries = sources.locator("summary").all_inner_texts()
    assert any("runbooks/oncall.md › On-call > Handover" in s and "score" in s for s in summaries)
    oncall = sources.filter(has_text="runbooks/oncall.md").first
    oncall.locator("summary").click()
    assert oncall.locator(".source-text").inner_text().strip()

    reply.get_by_role("button", name="Good answer").click()
    page.get_by_text("Thanks for the feedback.").wait_for()
    assert reply.get_by_role("button", name="Good answer").get_attribute("aria-pressed") == "true"
    message_id = int(reply.get_attribute("data-id"))
    stored = app.services.store.get_message(app.services.config.default_user, message_id)
    assert stored.metadata["feedback"]["value"] == "up"

    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "chat-page.png"), full_page=True)

    session_id = page.evaluate("location.hash").removeprefix("#session=")
    assert session_id == stored.session_id
    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    restored = page.locator("article.msg-assistant[data-id]")
    restored.first.wait_for()
    assert page.locator("article.msg-user .msg-body").inner_text() == QUESTION
    assert "Tuesdays at 10:00 UTC" in restored.locator(".msg-body").inner_text()
    assert page.locator("#session-title").inner_text() == QUESTION
    assert page.locator(".session.current .session-name").inner_text() == QUESTION
    # Older answers are stored without passage text: expanding a source fetches it.
    again = restored.locator("details.source").filter(has_text="runbooks/oncall.md").first
    again.locator("summary").click()
    page.wait_for_function(
        "el => el.textContent && el.textContent !== 'Loading…'",
        arg=again.locator(".source-text").element_handle(),
    )
    assert again.locator(".source-text").inner_text() in {c.text for c in DOCS if c.path == "runbooks/oncall.md"}
    assert restored.get_by_role("button", name="Good answer").get_attribute("aria-pressed") == "true"


def test_markup_in_messages_is_shown_as_text(start_app, page_for) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    page = page_for(app)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    attack = (
        "<img src=x onerror=alert(1)> **on-call** [click](javascript:alert(2)) see https://example.com/runbook"
    )

    reply = send(page, attack)

    user_text = page.locator("article.msg-user .msg-body").inner_text()
    assert user_text == attack
    assert page.locator("#messages img").count() == 0
    assert dialogs == []
    # The offline answer quotes the question, so it goes through the markdown renderer too.
    body = reply.locator(".msg-body")
    assert "<img src=x onerror=alert(1)>" in body.inner_text()
    assert body.locator("strong", has_text="on-call").count() >= 1
    assert body.locator("a[href^='javascript']").count() == 0
    assert "[click](javascript:alert(2))" in body.inner_text()
    assert body.locator("a[href='https://example.com/runbook']").get_attribute("rel") == "noopener noreferrer"

    # Keyboard: Shift+Enter adds a line, Enter sends.
    page.focus("#composer-input")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    page.keyboard.press("Enter")
    page.locator("article.msg-user").nth(1).wait_for()
    assert page.locator("article.msg-user .msg-body").nth(1).inner_text() == "first line\nsecond line"
    page.wait_for_function("() => document.querySelectorAll('article.msg-assistant[data-id]').length === 2")

    page.reload()
    page.wait_for_selector("article.msg-assistant[data-id]")
    assert page.locator("#messages img").count() == 0
    assert dialogs == []
    assert page.locator("article.msg-user .msg-body").first.inner_text() == attack


def test_switching_renaming_and_deleting_sessions(start_app, page_for) -> None:  # type: ignore[no-untyped-def]
    app = start_app(refresh=lambda full, progress: refresh_index(app.services, full=full))
    user = app.services.config.default_user
    first = app.services.assistant.turn(user, "Who reviews changes before a merge?")
    second = app.services.assistant.turn(user, "When are laptops replaced?")
    page = page_for(app)

    sessions = page.locator("#session-list .session")
    assert sessions.locator(".session-name").all_inner_texts() == [
        "When are laptops replaced?",
        "Who reviews changes before a merge?",
    ]
    page.get_by_role("button", name=re.compile(r"^Who reviews changes before a merge\? 2 messages$")).click()
    page.locator("article.msg-user", has_text="Who reviews changes").wait_for()
    assert page.locator("#session-title").inner_text() == "Who reviews changes before a merge?"
    assert page.evaluate("location.hash") == f"#session={first.session_id}"
    assert page.locator("article.msg-user").count() == 1
    page.get_by_role("button", name=re.compile(r"^When are laptops replaced\?")).click()
    page.locator("article.msg-user", has_text="laptops").wait_for()
    assert "36 months" in page.locator("article.msg-assistant .msg-body").inner_text()
    # The composer keeps the focus after switching: keyboard users can type right away.
    assert page.evaluate("document.activeElement.id") == "composer-input"

    page.get_by_role("button", name="Rename “When are laptops replaced?”").click()
    page.keyboard.press("Control+A")
    page.keyboard.type("Hardware")
    page.keyboard.press("Enter")
    page.locator(".session-name", has_text="Hardware").wait_for()
    assert app.services.store.get_session(user, second.session_id).title == "Hardware"
    assert page.locator("#session-title").inner_text() == "Hardware"

    page.get_by_role("button", name="Delete “Hardware”").click()
    page.get_by_role("button", name="Delete", exact=True).click()
    page.wait_for_function("() => document.querySelectorAll('#session-list .session').length === 1")
    assert [s.id for s in app.services.store.list_sessions(user)] == [first.session_id]
    assert page.locator("#session-title").inner_text() == "New conversation"
    assert page.locator("article").count() == 0

    page.get_by_role("button", name="Refresh documents").click()
    status = page.locator("#refresh-status")
    status.filter(has_text="kept").wait_for()
    assert status.inner_text().startswith("Embedded 0 chunks")


def test_a_failed_answer_shows_the_error_and_retries(
    start_app, page_for, make_config, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "Handover is **Tuesday**."},
                "finish_reason": "stop",
            }
        ],
    }
    answer = [f"data: {json.dumps(completion)}\n\n".encode(), b"data: [DONE]\n\n"]
    fake_databricks.on(
        "POST",
        "/v1/chat/completions",
        [
            Response(503, {"error": {"message": "the endpoint is overloaded", "type": "server_error"}}),
            Response(body=iter(answer)),
        ],
    )
    config = make_config(
        model__provider="openai",
        model__base_url=fake_databricks.url + "/v1",
        model__max_retries=0,
        rag__enabled=False,
    )
    app = start_app(config)
    page = page_for(app, width=390, height=800)  # a phone-sized screen

    assert page.locator("#sidebar").is_hidden()
    page.get_by_role("button", name="Show conversations").click()
    page.locator("#new-session").wait_for(state="visible")
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.getElementById('sidebar').classList.contains('open')")

    send(page, "When is the handover?")
    error = page.locator(".msg-error")
    error.wait_for()
    assert "overloaded" in error.inner_text() or "503" in error.inner_text()
    page.get_by_role("button", name="Retry").click()
    page.locator("article.msg-assistant strong", has_text="Tuesday").wait_for()
    assert page.locator(".msg-error").count() == 0
    assert page.locator("article.msg-user").count() == 1  # the same message, answered on retry
    messages = app.services.store.messages(
        app.services.config.default_user, page.evaluate("location.hash").removeprefix("#session=")
    )
    assert [(m.role, m.metadata.get("status")) for m in messages] == [("user", "ok"), ("assistant", "ok")]
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "chat-page-narrow.png"))
