"""Answers that outlive the browser, in headless Chromium (Debian's ``chromium`` via Playwright): Stop keeps
the partial answer, a reload mid-answer re-attaches, leaving a conversation mid-answer lets it finish, and a
question whose request never got through stays in the box, across a reload too.

The model is a loopback OpenAI-compatible server streaming word by word over real HTTP to the app's real
``openai`` client, holding mid-answer until the test releases it (tests/live_support.py), so "mid-stream"
is an exact point rather than a timing.
"""

from __future__ import annotations

from typing import Any

import pytest

from fake_databricks import FakeDatabricks
from live_support import HeldAnswer, held_model_config
from test_web_browser import (  # noqa: F401  (the browser, page_for fixtures)
    browser_fixture,
    page_for_fixture,
    screenshot,
)
from web_support import page_pause, start_app_fixture, wait_for  # noqa: F401  (the start_app fixture)

pytestmark = pytest.mark.browser

QUESTION = "When does the on-call rotation hand over?"
WORDS = [f"word{i} " for i in range(8)]


def ask(page: Any, text: str) -> Any:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")
    reply = page.locator("article.msg-assistant").last
    reply.wait_for()
    return reply


def wait_for_text(page: Any, reply: Any, text: str) -> None:
    page.wait_for_function("([el, text]) => el.innerText.includes(text)", arg=[reply.element_handle(), text])


def wait_finished(page: Any) -> Any:
    page.wait_for_selector("article.msg-assistant[aria-busy='false'][data-id]")
    return page.locator("article.msg-assistant[data-id]").last


def test_stop_mid_answer_keeps_the_partial_answer_marked_stopped(
    start_app, page_for, make_config, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    answer = HeldAnswer(WORDS, hold_after=3)
    app = start_app(held_model_config(make_config, fake_databricks, answer))
    page = page_for(app)
    try:
        reply = ask(page, QUESTION)
        wait_for_text(page, reply, "word2")
        assert page.locator("#send").is_hidden()
        page.get_by_role("button", name="Stop").click()
        page.locator("#stop", has_text="Stopping").wait_for()
        answer.release.set()  # the model's next piece arrives: the app stops there, without it
        page.locator("article.msg-assistant .msg-note", has_text="Stopped").wait_for()
        stopped = wait_finished(page)
        assert stopped.locator(".msg-body").inner_text().split() == ["word0", "word1", "word2"]
        assert page.locator("#send").is_visible() and page.locator("#stop").is_hidden()
        screenshot(page, "chat-stopped.png")

        user = app.services.config.default_user
        reply_row = app.services.store.get_message(user, int(stopped.get_attribute("data-id")))
        assert reply_row.metadata["status"] == "stopped" and reply_row.content == answer.text(3)

        page.reload()
        page.wait_for_selector("body[data-ready='true']")
        again = page.locator("article.msg-assistant[data-id]").last
        again.wait_for()
        assert again.locator(".msg-body").inner_text().split() == ["word0", "word1", "word2"]
        assert again.locator(".msg-note").inner_text() == "Stopped: this answer is incomplete."
    finally:
        answer.release.set()


def test_a_reload_mid_answer_reattaches_and_the_finished_answer_is_there(
    start_app, page_for, make_config, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    answer = HeldAnswer(WORDS, hold_after=3)
    app = start_app(held_model_config(make_config, fake_databricks, answer))
    page = page_for(app)
    try:
        reply = ask(page, QUESTION)
        wait_for_text(page, reply, "word2")
        page.reload()
        page.wait_for_selector("body[data-ready='true']")
        attached = page.locator("article.msg-assistant").last
        attached.wait_for()
        wait_for_text(page, attached, "word2")  # what was written before the reload is replayed
        assert attached.get_attribute("aria-busy") == "true"
        assert page.locator("#stop").is_visible()

        second = page_for(app)  # a second tab on the same conversation watches the same answer
        second.goto(app.url + "/" + page.evaluate("location.hash"))
        second.wait_for_selector("body[data-ready='true']")
        wait_for_text(second, second.locator("article.msg-assistant").last, "word2")

        answer.release.set()
        for tab in (page, second):
            finished = wait_finished(tab)
            assert finished.locator(".msg-body").inner_text().split() == answer.text().split()
        assert page.locator("article.msg-user").count() == 1
        assert answer.requests == 1  # one answer, written once, watched three times
    finally:
        answer.release.set()


def test_leaving_a_conversation_mid_answer_lets_it_finish_there(
    start_app, page_for, make_config, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    answer = HeldAnswer(WORDS, hold_after=3)
    app = start_app(held_model_config(make_config, fake_databricks, answer))
    page = page_for(app)
    try:
        reply = ask(page, QUESTION)
        wait_for_text(page, reply, "word2")
        first_hash = page.evaluate("location.hash")
        page.locator("#new-session").click()
        page.locator("#session-title", has_text="New conversation").wait_for()
        assert page.locator("article.msg").count() == 0
        assert page.locator("#send").is_visible()  # this conversation is free to ask in
        answer.release.set()
        user = app.services.config.default_user
        session_id = first_hash.removeprefix("#session=")
        wait_for(
            lambda: any(m.role == "assistant" for m in app.services.store.messages(user, session_id)),
            "the answer left behind to be stored",
        )
        page.locator(".session .session-name", has_text=QUESTION).first.click()
        finished = wait_finished(page)
        assert finished.locator(".msg-body").inner_text().split() == answer.text().split()
    finally:
        answer.release.set()


def test_a_question_that_was_not_sent_stays_in_the_box_across_a_reload(start_app, page_for) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    page = page_for(app)
    user = app.services.config.default_user

    # The connection drops before the request reaches the app: the text comes back to the box.
    page.route("**/api/chat/stream", lambda route: route.abort("connectionreset"))
    page.fill("#composer-input", QUESTION)
    page.press("#composer-input", "Enter")
    page.locator("#banner", has_text="your question was not sent").wait_for()
    assert page.input_value("#composer-input") == QUESTION
    assert page.locator("article.msg").count() == 0
    assert app.services.store.list_sessions(user) == []

    # A reload while a send hangs (never answered): the question is still in the box, with a word why.
    held: list[Any] = []
    page.unroute("**/api/chat/stream")
    page.route("**/api/chat/stream", lambda route: held.append(route))
    page.press("#composer-input", "Enter")
    wait_for(lambda: held, "the send to reach the network", pause=page_pause(page))
    assert page.input_value("#composer-input") == ""
    page.reload()  # the hanging request dies with the page
    page.wait_for_selector("body[data-ready='true']")
    page.unroute_all(behavior="ignoreErrors")
    assert page.input_value("#composer-input") == QUESTION
    page.locator("#banner", has_text="may not have been sent").wait_for()
    assert app.services.store.list_sessions(user) == []

    # Sent for real this time: stored, answered, and the box stays empty after another reload.
    page.press("#composer-input", "Enter")
    wait_finished(page)
    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    page.locator("article.msg-assistant[data-id]").first.wait_for()
    assert page.input_value("#composer-input") == ""
