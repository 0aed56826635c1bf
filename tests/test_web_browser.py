"""The chat page in headless Chromium (Debian's ``chromium``, driven by Playwright; no browser is downloaded).

The app runs on a real uvicorn server over the test Postgres with the offline model (see web_support.py).
Answers written in Markdown (tables, task lists, code, citations, raw HTML) and a failing-then-answering
model come from a loopback OpenAI-compatible server (tests/fake_databricks.py) speaking the documented
chat-completions REST shape to the real ``openai`` client.

Screenshots of the main states go to test-output/ (chat-desktop.png, chat-dark.png, chat-phone.png, ...).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
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


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
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


@pytest.fixture(name="page_for")
def page_for_fixture(browser: Any) -> Iterator[Any]:
    """``page_for(app, width=1200, **context_options)``: a fresh browser page on the app, loaded and ready.
    Script errors and CSP violations on any page fail the test."""
    contexts: list[Any] = []
    problems: list[str] = []

    def open_page(app: Any, width: int = 1200, height: int = 900, path: str = "/", **options: Any) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height}, **options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        page.on(
            "console",
            lambda message: (
                problems.append(f"console: {message.text}")
                if message.type == "error" and "Content Security Policy" in message.text
                else None
            ),
        )
        page.goto(app.url + path)
        if path == "/":
            page.wait_for_selector("body[data-ready='true']")
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert problems == []


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


def screenshot(page: Any, name: str, full_page: bool = False) -> None:
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / name), full_page=full_page)


def completion_chunk(content: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": finish}],
    }


def streamed_answer(text: str, pieces: int = 6) -> Response:
    """A chat-completions stream that writes ``text`` in ``pieces`` deltas."""
    size = max(1, len(text) // pieces + 1)
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    chunks = [completion_chunk(part) for part in parts] + [completion_chunk("", "stop")]
    return Response(body=iter([*(f"data: {json.dumps(c)}\n\n".encode() for c in chunks), b"data: [DONE]\n\n"]))


def loopback_model(make_config: Any, fake: FakeDatabricks, answer: str, **overrides: Any) -> Any:
    """A config whose model is the loopback server, answering every question with ``answer``."""
    fake.on("POST", "/v1/chat/completions", lambda request: streamed_answer(answer))
    return make_config(
        model__provider="openai", model__base_url=fake.url + "/v1", model__max_retries=0, **overrides
    )


def set_updated_at(app: Any, session_id: str, days_ago: float) -> None:
    with app.services.db.connection() as conn:
        conn.execute(
            "UPDATE sessions SET updated_at = now() - make_interval(secs => %s) WHERE id = %s",
            (days_ago * 86400, session_id),
        )


# ---------------------------------------------------------------------------------------------------------
# answers, sources and citations


def test_a_streamed_answer_with_sources_survives_a_reload(start_app, page_for) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    page = page_for(app)

    with page.expect_response("**/api/chat/stream") as streamed:
        reply = send(page, QUESTION)
    assert streamed.value.headers["content-type"].startswith("text/event-stream")
    assert "Tuesdays at 10:00 UTC" in reply.locator(".msg-body").inner_text()
    page.locator("#session-title", has_text=QUESTION).wait_for()  # the new session is named by the question
    # top_k 5: every chunk of the small corpus was searched; the offline answer cites the best three. Cited
    # sources come first, the rest is folded; no fusion scores anywhere.
    assert reply.locator("details.source").count() == len(DOCS)
    cited = reply.locator(".sources-cited details.source")
    assert cited.count() == 3
    assert reply.locator(".sources-title").inner_text() == "Cited sources"
    rest = reply.locator("details.sources-rest")
    assert rest.locator("details.source").count() == 2 and rest.get_attribute("open") is None
    assert rest.locator("summary").first.inner_text() == "2 more passages were searched but not cited"
    assert "score" not in reply.locator(".sources").inner_text().lower()
    assert not re.search(r"\b0\.\d{3}\b", reply.inner_text())
    oncall = cited.filter(has_text="runbooks/oncall.md › On-call > Handover").first
    index = int(oncall.get_attribute("data-index"))

    # [n] in the answer opens its source: expanded, scrolled to, highlighted and focused.
    citation = reply.locator(f".msg-body button.cite:text-is('{index}')").first
    assert citation.get_attribute("aria-label") == f"Source {index}: runbooks/oncall.md › On-call > Handover"
    citation.click()
    page.wait_for_function("el => el.open", arg=oncall.element_handle())
    assert "highlight" in (oncall.get_attribute("class") or "")
    assert oncall.locator(".source-text").inner_text() in {c.text for c in DOCS if c.path == "runbooks/oncall.md"}
    assert page.evaluate("document.activeElement.closest('details')?.dataset.index") == str(index)

    reply.get_by_role("button", name="Good answer").click()
    page.get_by_text("Thanks for the feedback.").wait_for()
    assert reply.get_by_role("button", name="Good answer").get_attribute("aria-pressed") == "true"
    message_id = int(reply.get_attribute("data-id"))
    stored = app.services.store.get_message(app.services.config.default_user, message_id)
    assert stored.metadata["feedback"]["value"] == "up"
    screenshot(page, "chat-desktop.png")

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
    assert restored.locator(".sources-cited details.source").count() == 3
    # Older answers are stored without passage text: following a citation fetches it.
    restored.locator(f".msg-body button.cite:text-is('{index}')").first.click()
    again = restored.locator(f"details.source[data-index='{index}']")
    page.wait_for_function(
        "el => el.textContent && !el.textContent.startsWith('Loading')",
        arg=again.locator(".source-text").element_handle(),
    )
    assert again.locator(".source-text").inner_text() in {c.text for c in DOCS if c.path == "runbooks/oncall.md"}
    assert restored.get_by_role("button", name="Good answer").get_attribute("aria-pressed") == "true"


MARKDOWN_ANSWER = """Handover is on **Tuesdays** [1]; every change needs two reviewers [2].

| Day | Time (UTC) | Channel |
|:----|-----:|:---:|
| Tuesday | 10:00 | #oncall |
| Thursday | 15:00 | #deploys |

- [x] Read the runbook
- [ ] Page the secondary after 15 minutes

```python
print("handover")
```

<img src=x onerror=alert(1)> <script>alert(2)</script> [docs](javascript:alert(3))"""


def test_markdown_answers_render_tables_task_lists_and_code_and_copy(
    start_app, page_for, make_config, fake_databricks: FakeDatabricks
) -> None:  # type: ignore[no-untyped-def]
    app = start_app(loopback_model(make_config, fake_databricks, MARKDOWN_ANSWER))
    page = page_for(
        app, color_scheme="dark", permissions=["clipboard-read", "clipboard-write"], reduced_motion="reduce"
    )
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    reply = send(page, QUESTION)
    body = reply.locator(".msg-body")

    table = body.locator("table")
    assert table.count() == 1
    assert table.locator("th").all_inner_texts() == ["Day", "Time (UTC)", "Channel"]
    assert table.locator("tbody tr").count() == 2
    assert table.locator("tbody tr").first.locator("td").nth(1).get_attribute("align") == "right"
    assert "|" not in body.inner_text()
    boxes = body.locator("li input[type='checkbox']")
    assert boxes.count() == 2
    assert [boxes.nth(i).is_checked() for i in range(2)] == [True, False]
    assert all(boxes.nth(i).is_disabled() for i in range(2))
    code = body.locator(".code-block")
    assert code.locator(".code-lang").inner_text() == "python"
    assert code.locator("pre code").inner_text().strip() == 'print("handover")'
    # Raw HTML is text, and a javascript: link stays literal.
    assert body.locator("img, script").count() == 0
    text = body.inner_text()
    assert "<img src=x onerror=alert(1)>" in text and "<script>alert(2)</script>" in text
    assert "[docs](javascript:alert(3))" in text and body.locator("a").count() == 0
    assert dialogs == []
    # Citations: [1] and [2] are cited and shown first, the other three passages folded.
    assert sorted(body.locator("button.cite").all_inner_texts()) == ["1", "2"]
    assert reply.locator(".sources-cited details.source").evaluate_all("els => els.map(e => e.dataset.index)") == [
        "1",
        "2",
    ]
    assert reply.locator(".sources-rest details.source").count() == 3
    body.locator("button.cite", has_text="2").click()
    assert reply.locator("details.source[data-index='2']").get_attribute("open") is not None

    code.get_by_role("button", name="Copy the python code").click()
    code.get_by_role("button", name="Copy the python code").filter(has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == 'print("handover")'
    reply.get_by_role("button", name="Copy this answer").click()
    reply.get_by_role("button", name="Copy this answer").filter(has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN_ANSWER
    page.wait_for_function("() => document.getElementById('announcer').textContent === 'Copied to the clipboard.'")
    screenshot(page, "chat-dark.png")


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
    link = body.locator("a[href='https://example.com/runbook']")
    assert link.get_attribute("rel") == "noopener noreferrer" and link.get_attribute("target") == "_blank"

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


# ---------------------------------------------------------------------------------------------------------
# the conversation list


def test_the_list_groups_by_date_searches_titles_and_gives_titles_the_full_width(start_app, page_for) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    user = app.services.config.default_user
    store = app.services.store
    app.services.assistant.turn(user, QUESTION)
    week = app.services.assistant.turn(user, "Who reviews changes before a merge?")
    old = store.create_session(user, title="When are laptops replaced?")
    store.append(user, old.id, "user", "When are laptops replaced?")
    set_updated_at(app, week.session_id, 3)
    set_updated_at(app, old.id, 40)
    page = page_for(app)

    groups = page.locator(".session-group")
    assert groups.locator(".session-group-title").all_inner_texts() == ["Today", "Previous 7 days", "Older"]
    assert [g.locator(".session-name").all_inner_texts() for g in groups.all()] == [
        [QUESTION],
        ["Who reviews changes before a merge?"],
        ["When are laptops replaced?"],
    ]
    metas = page.locator(".session-meta").all_inner_texts()
    assert metas[0].endswith("· 2 messages") and metas[2].endswith("· 1 message")
    assert re.search(r"\d", metas[2])  # the older one shows its date
    assert page.locator(".session time").first.get_attribute("datetime")

    # The longest title wraps instead of being cut, and no icon takes its width until the row is hovered.
    name = page.locator(".session-name", has_text=QUESTION)
    assert name.evaluate("e => e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight")
    row = page.locator(".session", has_text=QUESTION)
    assert name.bounding_box()["width"] >= row.bounding_box()["width"] - 30
    menu_button = row.locator(".session-menu-button")
    assert menu_button.evaluate("e => getComputedStyle(e).opacity") == "0"
    row.hover()
    page.wait_for_function("e => getComputedStyle(e).opacity === '1'", arg=menu_button.element_handle())

    search = page.get_by_role("searchbox", name="Search conversation titles")
    search.fill("LAPTOP")
    assert page.locator(".session-name").all_inner_texts() == ["When are laptops replaced?"]
    search.fill("pager duty")
    assert page.locator(".session").count() == 0
    assert page.locator("#sessions-empty").inner_text() == "No conversation titles match “pager duty”."
    search.press("Escape")
    assert page.locator(".session").count() == 3
    screenshot(page, "chat-list.png")


def test_switching_renaming_and_deleting_sessions(start_app, page_for) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    user = app.services.config.default_user
    first = app.services.assistant.turn(user, "Who reviews changes before a merge?")
    second = app.services.assistant.turn(user, "When are laptops replaced?")
    page = page_for(app)

    sessions = page.locator("#session-groups .session")
    assert sessions.locator(".session-name").all_inner_texts() == [
        "When are laptops replaced?",
        "Who reviews changes before a merge?",
    ]
    page.get_by_role("button", name=re.compile(r"^Who reviews changes before a merge\? .* · 2 messages$")).click()
    page.locator("article.msg-user", has_text="Who reviews changes").wait_for()
    assert page.locator("#session-title").inner_text() == "Who reviews changes before a merge?"
    assert page.evaluate("location.hash") == f"#session={first.session_id}"
    assert page.locator("article.msg-user").count() == 1
    page.get_by_role("button", name=re.compile(r"^When are laptops replaced\?")).click()
    page.locator("article.msg-user", has_text="laptops").wait_for()
    assert "36 months" in page.locator("article.msg-assistant .msg-body").inner_text()
    # The composer keeps the focus after switching: keyboard users can type right away.
    assert page.evaluate("document.activeElement.id") == "composer-input"

    # Actions are in a menu: keyboard-operable (arrows move, Escape closes and returns the focus).
    menu_button = page.get_by_role("button", name="Actions for “When are laptops replaced?”")
    menu_button.focus()
    page.keyboard.press("Enter")
    menu = page.get_by_role("menu", name="Actions for “When are laptops replaced?”")
    menu.wait_for()
    assert menu_button.get_attribute("aria-expanded") == "true"
    assert page.evaluate("document.activeElement.textContent") == "Rename"
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.textContent") == "Delete"
    page.keyboard.press("Escape")
    assert menu.is_hidden() and page.evaluate("document.activeElement.classList.contains('session-menu-button')")

    menu_button.click()
    page.get_by_role("menuitem", name="Rename").click()
    page.keyboard.press("Control+A")
    page.keyboard.type("Hardware")
    page.keyboard.press("Enter")
    page.locator(".session-name", has_text="Hardware").wait_for()
    assert app.services.store.get_session(user, second.session_id).title == "Hardware"
    assert page.locator("#session-title").inner_text() == "Hardware"

    page.get_by_role("button", name="Actions for “Hardware”").click()
    page.get_by_role("menuitem", name="Delete").click()
    page.get_by_role("button", name="Delete", exact=True).click()
    page.wait_for_function("() => document.querySelectorAll('#session-groups .session').length === 1")
    assert [s.id for s in app.services.store.list_sessions(user)] == [first.session_id]
    assert page.locator("#session-title").inner_text() == "New conversation"
    assert page.locator("article").count() == 0
    assert page.locator("#banner").is_hidden()  # deleted here, by you: no banner
    assert page.locator("#empty-state").is_visible()


def test_the_phone_drawer_closes_on_a_tap_outside_and_on_choosing(start_app, page_for) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    user = app.services.config.default_user
    chosen = app.services.assistant.turn(user, "When are laptops replaced?")
    app.services.assistant.turn(user, QUESTION)
    page = page_for(app, width=390, height=844, has_touch=True, is_mobile=True)
    toggle = page.get_by_role("button", name="Show conversations")
    sidebar = page.locator("#sidebar")

    def drawer_open() -> bool:
        return bool(page.evaluate("document.getElementById('sidebar').classList.contains('open')"))

    assert sidebar.is_hidden()
    toggle.tap()
    page.locator("#new-session").wait_for(state="visible")
    assert drawer_open() and toggle.get_attribute("aria-expanded") == "true"
    assert page.evaluate("document.activeElement.id") == "new-session"
    assert page.locator("main").evaluate("e => e.inert")  # the page behind is out of reach while it is open
    # Titles are whole and the actions button is there to tap (no hover on a phone).
    assert page.locator(".session-menu-button").first.evaluate("e => getComputedStyle(e).opacity") == "1"
    name = page.locator(".session-name", has_text=QUESTION)
    assert name.evaluate("e => e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight")
    screenshot(page, "chat-phone-drawer.png")

    page.touchscreen.tap(370, 500)  # outside the drawer, on the dimmed page
    page.wait_for_function("() => !document.getElementById('sidebar').classList.contains('open')")
    assert toggle.get_attribute("aria-expanded") == "false"
    assert page.evaluate("document.activeElement.id") == "toggle-sessions"
    assert not page.locator("main").evaluate("e => e.inert")

    toggle.tap()
    page.get_by_role("button", name="Close the conversation list").tap()
    page.wait_for_function("() => !document.getElementById('sidebar').classList.contains('open')")

    toggle.tap()
    page.get_by_role("button", name=re.compile(r"^When are laptops replaced\?")).tap()
    page.locator("article.msg-user", has_text="laptops").wait_for()
    assert not drawer_open()
    assert page.evaluate("location.hash") == f"#session={chosen.session_id}"
    screenshot(page, "chat-phone.png")


# ---------------------------------------------------------------------------------------------------------
# errors for people


def test_a_failed_answer_says_what_to_do_shows_a_request_id_and_retries(
    start_app, page_for, make_config, fake_databricks: FakeDatabricks, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    fake_databricks.on(
        "POST",
        "/v1/chat/completions",
        [
            Response(503, {"error": {"message": "the endpoint is overloaded", "type": "server_error"}}),
            streamed_answer("Handover is **Tuesday**."),
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
    caplog.set_level(logging.WARNING, logger="context_assistant")

    assert page.locator("#sidebar").is_hidden()
    page.get_by_role("button", name="Show conversations").click()
    page.locator("#new-session").wait_for(state="visible")
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.getElementById('sidebar').classList.contains('open')")

    with page.expect_response("**/api/chat/stream") as streamed:
        send(page, "When is the handover?")
    request_id = streamed.value.headers["x-request-id"]
    error = page.locator(".msg-error")
    error.wait_for()
    text = error.inner_text()
    assert "The language model is not answering right now. Your question is saved: try again in a minute." in text
    assert f"Request id: {request_id}" in text
    assert not re.search(r"https?://|127\.0\.0\.1|503|overloaded|server said", text)
    # The detail is in the server log, under the same request id.
    logged = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert logged and "overloaded" in logged[0] and fake_databricks.url in logged[0]
    screenshot(page, "chat-error.png")

    page.get_by_role("button", name="Retry").click()
    page.locator("article.msg-assistant[data-id] strong", has_text="Tuesday").wait_for()
    assert page.locator(".msg-error").count() == 0
    assert page.locator("article.msg-user").count() == 1  # the same message, answered on retry
    messages = app.services.store.messages(
        app.services.config.default_user, page.evaluate("location.hash").removeprefix("#session=")
    )
    assert [(m.role, m.metadata.get("status")) for m in messages] == [("user", "ok"), ("assistant", "ok")]
    screenshot(page, "chat-page-narrow.png")


def test_a_conversation_deleted_elsewhere_gives_a_banner_and_the_next_send_starts_a_new_one(
    start_app, page_for
) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    user = app.services.config.default_user
    first = app.services.assistant.turn(user, "When are laptops replaced?")
    second = app.services.assistant.turn(user, "Who reviews changes before a merge?")
    page = page_for(app)
    page.get_by_role("button", name=re.compile(r"^When are laptops replaced\?")).click()
    page.locator("article.msg-user", has_text="laptops").wait_for()

    app.client().delete(f"/api/sessions/{first.session_id}")  # another tab deletes it
    page.fill("#composer-input", "And monitors?")
    page.press("#composer-input", "Enter")
    banner = page.locator("#banner")
    banner.wait_for()
    assert "This conversation was deleted, perhaps in another tab or window." in banner.inner_text()
    assert page.input_value("#composer-input") == "And monitors?"  # nothing the user typed is lost
    assert page.locator("#session-title").inner_text() == "New conversation"
    assert page.locator("article").count() == 0

    reply = send(page, "And monitors?")
    assert reply.get_attribute("data-id")
    new_id = page.evaluate("location.hash").removeprefix("#session=")
    assert new_id not in {first.session_id, second.session_id}
    assert app.services.store.get_session(user, new_id).title == "And monitors?"

    # Coming back to a tab whose conversation was deleted meanwhile says so at once.
    app.client().delete(f"/api/sessions/{new_id}")
    page.evaluate("window.dispatchEvent(new Event('focus'))")
    banner.wait_for()
    assert "What you send next starts a new conversation." in banner.inner_text()
    assert page.locator("#session-title").inner_text() == "New conversation"


# ---------------------------------------------------------------------------------------------------------
# refresh, empty state, API docs


def test_refresh_status_is_shown_only_to_who_pressed_and_fades(start_app, page_for) -> None:  # type: ignore[no-untyped-def]
    release = threading.Event()

    def slow_refresh(full: bool, progress: Any) -> Any:
        progress("embedding 3 chunks")
        release.wait(20)
        return refresh_index(app.services, full=full)

    app = start_app(refresh=slow_refresh)
    presser = page_for(app)
    other = page_for(app)  # the same user in another tab
    assert presser.locator("#refresh-status").inner_text() == ""

    presser.get_by_role("button", name="Refresh documents").click()
    status = presser.locator("#refresh-status")
    status.filter(has_text="Refreshing documents… embedding 3 chunks").wait_for()
    other.reload()
    other.wait_for_selector("body[data-ready='true']")
    presser.reload()  # the tab that asked goes on showing its refresh after a reload
    presser.wait_for_selector("body[data-ready='true']")
    status.filter(has_text="Refreshing documents…").wait_for()
    assert other.locator("#refresh-status").inner_text() == ""

    release.set()
    status.filter(has_text="Documents refreshed").wait_for()
    status.get_by_role("button", name="Details").click()
    assert status.locator(".refresh-details").inner_text().startswith("Embedded 0 chunks")
    status.get_by_role("button", name="Details").click()
    presser.locator("#composer-input").click()  # focus and pointer away from the status, so it may fade
    presser.wait_for_function("() => document.getElementById('refresh-status').textContent === ''", timeout=20_000)
    other.reload()
    other.wait_for_selector("body[data-ready='true']")
    assert other.locator("#refresh-status").inner_text() == ""


def test_the_empty_state_explains_and_offers_questions_from_the_documents(start_app, page_for) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    page = page_for(app)

    empty = page.locator("#empty-state")
    assert empty.is_visible()
    assert "Answers come from the documents indexed for this app" in empty.inner_text()
    assert "No language model is set up yet" in empty.inner_text()
    examples = empty.locator("button.example")
    assert sorted(examples.all_inner_texts()) == [
        "What is in faq.html?",
        "What should I know about “Handover” in On-call?",
        "What should I know about “Rules” in Deployment Guide?",
    ]
    screenshot(page, "chat-empty.png")

    empty.get_by_role("button", name="What should I know about “Handover” in On-call?").click()
    page.wait_for_function(
        "() => document.querySelector('article.msg-assistant')?.getAttribute('aria-busy') === 'false'"
    )
    assert empty.is_hidden()
    assert (
        page.locator("article.msg-user .msg-body").inner_text()
        == "What should I know about “Handover” in On-call?"
    )
    assert "Tuesdays at 10:00 UTC" in page.locator("article.msg-assistant .msg-body").inner_text()


def test_the_api_docs_load_with_the_network_blocked(start_app, page_for) -> None:  # type: ignore[no-untyped-def]
    app = start_app()
    blocked: list[str] = []
    page = page_for(app, path="/health")  # any page: the route must be in place before /docs loads

    def only_this_app(route: Any) -> None:
        if route.request.url.startswith(app.url + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.context.route("**/*", only_this_app)
    page.goto(app.url + "/docs")
    page.locator(".swagger-ui .info .title", has_text="context-assistant").wait_for()
    page.locator(".opblock-summary-path", has_text="/api/chat/stream").first.wait_for()
    assert blocked == []
    screenshot(page, "api-docs-offline.png")
