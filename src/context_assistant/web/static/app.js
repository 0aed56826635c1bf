// The chat page. No framework and no build step: plain DOM calls.
// Safety rule: message content only ever reaches the page as text (textContent / createTextNode). The small
// markdown renderer below builds elements itself; it never parses HTML, and links are kept only for http(s).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    messages: $("messages"),
    input: $("composer-input"),
    send: $("send"),
    composer: $("composer"),
    sessionList: $("session-list"),
    sessionsEmpty: $("sessions-empty"),
    sessionTitle: $("session-title"),
    newSession: $("new-session"),
    sidebar: $("sidebar"),
    toggleSessions: $("toggle-sessions"),
    refreshButton: $("refresh-docs"),
    refreshStatus: $("refresh-status"),
    whoami: $("whoami"),
    banner: $("banner"),
    bannerText: $("banner-text"),
    bannerClose: $("banner-close"),
  };
  const state = { me: null, sessions: [], current: null, busy: false, maxChars: 16000 };

  // -- DOM helpers ---------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function showBanner(text) {
    ui.bannerText.textContent = text;
    ui.banner.hidden = false;
  }

  function hideBanner() {
    ui.banner.hidden = true;
    ui.bannerText.textContent = "";
  }

  // -- API -----------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, status, data) {
      super(message);
      this.status = status;
      this.data = data;
    }
  }

  async function api(method, path, body) {
    const init = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError("The app could not be reached. Check your connection and try again.", 0, null);
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const message = (data && data.error) || `The server answered ${response.status}.`;
      throw new ApiError(message, response.status, data);
    }
    return data;
  }

  // Server-Sent Events over a fetch body (EventSource cannot POST).
  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        let data = "";
        for (const line of frame.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
        }
        if (data) onEvent(event, JSON.parse(data));
      }
    }
  }

  // -- Markdown (a safe subset) --------------------------------------------------------------------------
  // Blocks: paragraphs, fenced code, headings, bullet and numbered lists, quotes. Inline: `code`, **bold**,
  // *emphasis*, [links](https://...) and bare http(s) URLs. Everything else stays literal text.

  const INLINE =
    "(`+)([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)" + // 1,2: code
    "|\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*" + // 3: bold
    "|__(?=\\S)([\\s\\S]*?\\S)__" + // 4: bold
    "|\\*(?=[^\\s*])([^*]*?[^\\s*])\\*" + // 5: emphasis
    "|(?<![\\w])_(?=[^\\s_])([^_]*?[^\\s_])_(?![\\w])" + // 6: emphasis
    "|\\[([^\\]\\n]+)\\]\\(([^)\\s]+)\\)" + // 7,8: link
    "|(https?:\\/\\/[^\\s<>\"'()]*[^\\s<>\"'().,;:!?])"; // 9: bare URL

  function safeHref(href) {
    try {
      const url = new URL(href, window.location.href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (err) {
      return null;
    }
  }

  function appendLink(parent, label, href, literal) {
    const safe = safeHref(href);
    if (!safe || !/^https?:\/\//i.test(href)) {
      parent.append(document.createTextNode(literal));
      return;
    }
    const link = el("a", { href: safe, target: "_blank", rel: "noopener noreferrer" });
    link.textContent = label;
    parent.append(link);
  }

  function appendInline(parent, text) {
    const pattern = new RegExp(INLINE, "g");
    let last = 0;
    let match;
    while ((match = pattern.exec(text))) {
      if (match.index > last) parent.append(document.createTextNode(text.slice(last, match.index)));
      if (match[1] !== undefined) {
        parent.append(el("code", { text: match[2] }));
      } else if (match[3] !== undefined || match[4] !== undefined) {
        const strong = el("strong");
        appendInline(strong, match[3] !== undefined ? match[3] : match[4]);
        parent.append(strong);
      } else if (match[5] !== undefined || match[6] !== undefined) {
        const em = el("em");
        appendInline(em, match[5] !== undefined ? match[5] : match[6]);
        parent.append(em);
      } else if (match[7] !== undefined) {
        appendLink(parent, match[7], match[8], match[0]);
      } else {
        appendLink(parent, match[9], match[9], match[0]);
      }
      last = pattern.lastIndex;
    }
    if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
  }

  const FENCE = /^\s{0,3}(```|~~~)\s*([\w+-]*)\s*$/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
  const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
  const QUOTE = /^\s{0,3}>\s?(.*)$/;

  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || BULLET.test(line) || NUMBERED.test(line) || QUOTE.test(line);
  }

  function renderMarkdown(source) {
    const fragment = document.createDocumentFragment();
    const lines = source.replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let match;
      if ((match = FENCE.exec(line))) {
        const fence = match[1];
        const body = [];
        i += 1;
        while (i < lines.length && lines[i].trim() !== fence) body.push(lines[i++]);
        i += 1;
        const code = el("code", { "data-lang": match[2] || null });
        code.textContent = body.join("\n");
        fragment.append(el("pre", {}, code));
      } else if (!line.trim()) {
        i += 1;
      } else if ((match = HEADING.exec(line))) {
        const heading = el(`h${Math.min(match[1].length + 2, 6)}`);
        appendInline(heading, match[2]);
        fragment.append(heading);
        i += 1;
      } else if (BULLET.test(line) || NUMBERED.test(line)) {
        const numbered = !BULLET.test(line);
        const itemPattern = numbered ? NUMBERED : BULLET;
        const list = el(numbered ? "ol" : "ul");
        if (numbered) {
          const start = parseInt(NUMBERED.exec(line)[1], 10);
          if (start !== 1) list.setAttribute("start", String(start));
        }
        while (i < lines.length && (match = itemPattern.exec(lines[i]))) {
          const item = el("li");
          appendInline(item, numbered ? match[2] : match[1]);
          i += 1;
          // Indented lines continue the item.
          while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !startsBlock(lines[i])) {
            item.append(document.createTextNode(" "));
            appendInline(item, lines[i].trim());
            i += 1;
          }
          list.append(item);
        }
        fragment.append(list);
      } else if (QUOTE.test(line)) {
        const quoted = [];
        while (i < lines.length && (match = QUOTE.exec(lines[i]))) {
          quoted.push(match[1]);
          i += 1;
        }
        fragment.append(el("blockquote", {}, renderMarkdown(quoted.join("\n"))));
      } else {
        const paragraph = el("p");
        let first = true;
        while (i < lines.length && lines[i].trim() && !(startsBlock(lines[i]) && !first)) {
          if (!first) paragraph.append(el("br"));
          appendInline(paragraph, lines[i]);
          first = false;
          i += 1;
        }
        fragment.append(paragraph);
      }
    }
    return fragment;
  }

  // -- messages ------------------------------------------------------------------------------------------

  function scrollToEnd() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function userMessageView(content, id) {
    const body = el("div", { class: "msg-body plain" });
    body.textContent = content;
    const root = el(
      "article",
      { class: "msg msg-user", "data-id": id || null, "aria-label": "You said" },
      el("div", { class: "msg-role", text: "You" }),
      body,
    );
    ui.messages.append(root);
    scrollToEnd();
    return root;
  }

  function describeSource(source) {
    const parts = [source.path];
    if (source.heading) parts.push(` › ${source.heading}`);
    if (source.page !== null && source.page !== undefined) parts.push(` · page ${source.page}`);
    return parts.join("");
  }

  function sourcesView(sources) {
    const section = el("section", { class: "sources", "aria-label": "Sources" });
    section.append(el("h3", { text: sources.length === 1 ? "1 source" : `${sources.length} sources` }));
    for (const source of sources) {
      const text = el("div", { class: "source-text" });
      const details = el(
        "details",
        { class: "source", "data-chunk-id": source.chunk_id },
        el(
          "summary",
          {},
          el("span", { class: "source-index", text: `[${source.index}]` }),
          " ",
          el("span", { class: "source-where", text: describeSource(source) }),
          " ",
          el("span", { class: "source-score", text: `score ${Number(source.score).toFixed(3)}` }),
        ),
        text,
      );
      if (source.text) {
        text.textContent = source.text;
      } else {
        let loaded = false;
        details.addEventListener("toggle", async () => {
          if (!details.open || loaded) return;
          loaded = true;
          text.textContent = "Loading…";
          try {
            const passage = await api("GET", `/api/sources/${encodeURIComponent(source.chunk_id)}`);
            text.textContent = passage.text;
          } catch (err) {
            text.textContent = err.message;
            loaded = false;
          }
        });
      }
      section.append(details);
    }
    return section;
  }

  function feedbackView(messageId, existing) {
    const status = el("span", { class: "feedback-status", role: "status", "aria-live": "polite" });
    const comment = el("input", {
      type: "text",
      class: "feedback-comment",
      maxlength: "2000",
      placeholder: "What was good or wrong? (optional)",
      "aria-label": "Comment on this answer",
    });
    const commentForm = el(
      "form",
      { class: "feedback-form", hidden: true },
      comment,
      el("button", { type: "submit", text: "Send comment" }),
    );
    let value = existing ? existing.value : null;
    const buttons = {};
    const wrap = el("div", { class: "feedback", role: "group", "aria-label": "Rate this answer" });

    async function submit(newValue, text) {
      try {
        await api("POST", "/api/feedback", { message_id: messageId, value: newValue, comment: text || "" });
        value = newValue;
        for (const [key, button] of Object.entries(buttons)) button.setAttribute("aria-pressed", String(key === value));
        status.textContent = text ? "Thanks, your comment was saved." : "Thanks for the feedback.";
        return true;
      } catch (err) {
        status.textContent = `Feedback not saved: ${err.message}`;
        return false;
      }
    }

    for (const [key, symbol, label] of [
      ["up", "▲ Helpful", "Good answer"],
      ["down", "▼ Not helpful", "Bad answer"],
    ]) {
      const button = el("button", {
        type: "button",
        class: `thumb thumb-${key}`,
        "aria-label": label,
        title: label,
        "aria-pressed": String(value === key),
        text: symbol,
        onclick: async () => {
          if (await submit(key, "")) {
            commentForm.hidden = false;
          }
        },
      });
      buttons[key] = button;
      wrap.append(button);
    }
    commentForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (value && (await submit(value, comment.value.trim()))) commentForm.hidden = true;
    });
    if (existing && existing.comment) status.textContent = `Your comment: ${existing.comment}`;
    wrap.append(commentForm, status);
    return wrap;
  }

  // ``discard``: what to remove when retrying (the empty answer the failure left), else just the error.
  function errorView(message, retryOf, retryable, discard) {
    const box = el("div", { class: "msg-error", role: "alert" }, el("span", { text: message }));
    if (retryOf && retryable !== false) {
      box.append(
        " ",
        el("button", {
          type: "button",
          class: "retry",
          text: "Retry",
          onclick: () => {
            if (state.busy) return;
            (discard || box).remove();
            sendTurn({ retryOf });
          },
        }),
      );
    }
    return box;
  }

  class AssistantView {
    constructor() {
      this.text = "";
      this.body = el("div", { class: "msg-body markdown" });
      this.status = el("div", { class: "msg-status", text: "Thinking…" });
      this.extras = el("div", { class: "msg-extras" });
      this.root = el(
        "article",
        { class: "msg msg-assistant", "aria-label": "The assistant said", "aria-busy": "true" },
        el("div", { class: "msg-role", text: "Assistant" }),
        this.status,
        this.body,
        this.extras,
      );
      this.sources = null;
      this.pending = false;
      ui.messages.append(this.root);
      scrollToEnd();
    }

    append(delta) {
      this.text += delta;
      this.status.textContent = "";
      if (!this.pending) {
        this.pending = true;
        requestAnimationFrame(() => {
          this.pending = false;
          this.render();
        });
      }
    }

    render() {
      this.body.replaceChildren(renderMarkdown(this.text));
      scrollToEnd();
    }

    setSources(sources) {
      this.sources = sources;
    }

    finish(messageId, feedback) {
      this.render();
      this.status.remove();
      this.root.setAttribute("aria-busy", "false");
      this.root.dataset.id = String(messageId);
      if (this.sources && this.sources.length) this.extras.append(sourcesView(this.sources));
      this.extras.append(feedbackView(messageId, feedback));
      scrollToEnd();
    }

    fail(message, retryOf, retryable) {
      this.root.setAttribute("aria-busy", "false");
      this.status.remove();
      if (!this.text) this.root.classList.add("msg-failed");
      this.extras.append(errorView(message, retryOf, retryable, this.text ? null : this.root));
      scrollToEnd();
    }
  }

  function renderHistory(messages) {
    ui.messages.replaceChildren();
    messages.forEach((message, position) => {
      const meta = message.metadata || {};
      if (message.role === "user") {
        const view = userMessageView(message.content, message.id);
        if (meta.status === "failed") {
          const isLast = position === messages.length - 1;
          const reason = meta.error ? `Not answered: ${meta.error}` : "Not answered.";
          view.append(errorView(reason, isLast ? message.id : null, isLast));
        }
      } else if (message.role === "assistant") {
        const view = new AssistantView();
        view.text = message.content;
        view.setSources(meta.sources || []);
        view.finish(message.id, meta.feedback);
      }
    });
    scrollToEnd();
  }

  // -- the turn ------------------------------------------------------------------------------------------

  function setBusy(busy) {
    state.busy = busy;
    ui.send.disabled = busy;
    ui.composer.setAttribute("aria-busy", String(busy));
  }

  async function sendTurn({ text, retryOf }) {
    if (state.busy) return;
    hideBanner();
    if (!retryOf) {
      if (!text.trim()) return;
      if (text.length > state.maxChars) {
        showBanner(`Your message is ${text.length} characters; the limit is ${state.maxChars}. Shorten it and send again.`);
        return;
      }
    }
    setBusy(true);
    const userView = retryOf ? null : userMessageView(text);
    if (!retryOf) ui.input.value = "";
    const view = new AssistantView();
    let userMessageId = retryOf || null;
    let finished = false;
    try {
      const response = await fetch("/api/chat/stream", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({ message: text || "", session_id: state.current, retry_of: retryOf || null }),
      });
      if (!response.ok) {
        let data = null;
        try {
          data = await response.json();
        } catch (err) {
          data = null;
        }
        // Nothing was stored: give the text back so nothing is lost.
        if (userView) userView.remove();
        view.root.remove();
        if (!retryOf && !ui.input.value) ui.input.value = text;
        showBanner((data && data.error) || `The server answered ${response.status}.`);
        if (response.status === 404 && !retryOf) await loadSessions();
        return;
      }
      await readEvents(response.body, (event, data) => {
        if (event === "start") {
          userMessageId = data.user_message_id;
          if (userView) userView.dataset.id = String(data.user_message_id);
          if (state.current !== data.session_id) {
            state.current = data.session_id;
            history.replaceState(null, "", `#session=${encodeURIComponent(data.session_id)}`);
          }
        } else if (event === "sources") {
          view.setSources(data.sources);
        } else if (event === "delta") {
          view.append(data.text);
        } else if (event === "done") {
          finished = true;
          view.text = data.reply;
          view.finish(data.message_id, null);
        } else if (event === "error") {
          finished = true;
          view.fail(data.error, data.user_message_id, data.retryable);
        }
      });
      if (!finished) {
        view.fail("The connection closed before the answer was complete.", userMessageId, true);
      }
    } catch (err) {
      if (!finished) view.fail("The connection was lost before the answer was complete.", userMessageId, true);
    } finally {
      setBusy(false);
      await loadSessions();
      const session = state.sessions.find((s) => s.id === state.current);
      if (session) ui.sessionTitle.textContent = sessionLabel(session);
      ui.input.focus();
    }
  }

  // -- sessions ------------------------------------------------------------------------------------------

  function sessionLabel(session) {
    return session.title || "Untitled conversation";
  }

  function renderSessions() {
    ui.sessionList.replaceChildren();
    ui.sessionsEmpty.hidden = state.sessions.length > 0;
    for (const session of state.sessions) ui.sessionList.append(sessionItem(session));
  }

  function sessionItem(session) {
    const label = sessionLabel(session);
    const current = session.id === state.current;
    const item = el("li", { class: current ? "session current" : "session", "data-session-id": session.id });
    const open = el(
      "button",
      {
        type: "button",
        class: "session-open",
        "aria-current": current ? "page" : null,
        onclick: () => openSession(session.id, { focusInput: true }),
      },
      el("span", { class: "session-name", text: label }),
      el("span", { class: "session-count", text: `${session.message_count} messages` }),
    );
    const rename = el("button", {
      type: "button",
      class: "icon-button session-rename",
      "aria-label": `Rename “${label}”`,
      title: "Rename",
      text: "✎",
      onclick: () => startRename(item, session),
    });
    const remove = el("button", {
      type: "button",
      class: "icon-button session-delete",
      "aria-label": `Delete “${label}”`,
      title: "Delete",
      text: "✕",
      onclick: () => confirmDelete(item, session),
    });
    item.append(open, rename, remove);
    return item;
  }

  function startRename(item, session) {
    const input = el("input", {
      type: "text",
      class: "rename-input",
      maxlength: "200",
      "aria-label": "New name for the conversation",
    });
    input.value = session.title;
    const cancel = () => {
      renderSessions();
      focusSession(session.id, ".session-rename");
    };
    const form = el(
      "form",
      { class: "rename-form" },
      input,
      el("button", { type: "submit", text: "Save" }),
      el("button", { type: "button", text: "Cancel", onclick: cancel }),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const title = input.value.trim();
      if (!title) {
        input.setAttribute("aria-invalid", "true");
        showBanner("A conversation needs a name.");
        return;
      }
      try {
        await api("PATCH", `/api/sessions/${encodeURIComponent(session.id)}`, { title });
        hideBanner();
        await loadSessions();
        if (session.id === state.current) ui.sessionTitle.textContent = title;
        focusSession(session.id, ".session-open");
      } catch (err) {
        showBanner(`Could not rename: ${err.message}`);
      }
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") cancel();
    });
    item.replaceChildren(form);
    input.focus();
    input.select();
  }

  function confirmDelete(item, session) {
    const no = el("button", {
      type: "button",
      text: "Keep",
      onclick: () => {
        renderSessions();
        focusSession(session.id, ".session-delete");
      },
    });
    const yes = el("button", {
      type: "button",
      class: "danger",
      text: "Delete",
      onclick: async () => {
        try {
          await api("DELETE", `/api/sessions/${encodeURIComponent(session.id)}`);
        } catch (err) {
          if (err.status !== 404) {
            showBanner(`Could not delete: ${err.message}`);
            return;
          }
        }
        if (session.id === state.current) newConversation();
        await loadSessions();
        ui.newSession.focus();
      },
    });
    item.replaceChildren(
      el("div", { class: "confirm", role: "group", "aria-label": "Confirm deletion" },
        el("span", { text: `Delete “${sessionLabel(session)}” and its messages?` }), yes, no),
    );
    no.focus();
  }

  function focusSession(id, selector) {
    const item = [...ui.sessionList.children].find((li) => li.dataset.sessionId === id);
    const target = item && item.querySelector(selector);
    if (target) target.focus();
  }

  async function loadSessions() {
    try {
      const data = await api("GET", "/api/sessions");
      state.sessions = data.sessions;
      renderSessions();
    } catch (err) {
      showBanner(`Could not load your conversations: ${err.message}`);
    }
  }

  function newConversation() {
    state.current = null;
    history.replaceState(null, "", window.location.pathname);
    ui.sessionTitle.textContent = "New conversation";
    ui.messages.replaceChildren();
    renderSessions();
  }

  async function openSession(id, { focusInput } = {}) {
    if (state.busy) return;
    hideBanner();
    closeSidebar();
    try {
      const data = await api("GET", `/api/sessions/${encodeURIComponent(id)}/messages`);
      state.current = id;
      if (window.location.hash !== `#session=${encodeURIComponent(id)}`) {
        history.replaceState(null, "", `#session=${encodeURIComponent(id)}`);
      }
      ui.sessionTitle.textContent = sessionLabel(data.session);
      renderHistory(data.messages);
      renderSessions();
    } catch (err) {
      newConversation();
      showBanner(err.status === 404 ? "That conversation no longer exists." : err.message);
    }
    if (focusInput) ui.input.focus();
  }

  function sessionFromHash() {
    const match = /^#session=(.+)$/.exec(window.location.hash);
    return match ? decodeURIComponent(match[1]) : null;
  }

  // -- narrow screens ------------------------------------------------------------------------------------

  function closeSidebar() {
    ui.sidebar.classList.remove("open");
    ui.toggleSessions.setAttribute("aria-expanded", "false");
  }

  ui.toggleSessions.addEventListener("click", () => {
    const open = !ui.sidebar.classList.contains("open");
    ui.sidebar.classList.toggle("open", open);
    ui.toggleSessions.setAttribute("aria-expanded", String(open));
    if (open) ui.newSession.focus();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && ui.sidebar.classList.contains("open")) {
      closeSidebar();
      ui.toggleSessions.focus();
    }
  });

  // -- documents refresh ---------------------------------------------------------------------------------

  let refreshTimer = null;

  function showRefresh(status) {
    const running = status.state === "running";
    ui.refreshButton.disabled = running;
    if (running) {
      ui.refreshStatus.textContent = status.progress ? `Refreshing… ${status.progress}` : "Refreshing documents…";
    } else if (status.state === "succeeded") {
      ui.refreshStatus.textContent = (status.summary || "Documents are up to date.").split("\n")[0];
    } else if (status.state === "failed") {
      ui.refreshStatus.textContent = `Refresh failed: ${status.error || "see the app log"}`;
    } else {
      ui.refreshStatus.textContent = "";
    }
    clearTimeout(refreshTimer);
    if (running) refreshTimer = setTimeout(pollRefresh, 1500);
  }

  async function pollRefresh() {
    try {
      showRefresh(await api("GET", "/api/rag/refresh"));
    } catch (err) {
      ui.refreshStatus.textContent = `Refresh status unavailable: ${err.message}`;
      refreshTimer = setTimeout(pollRefresh, 5000);
    }
  }

  ui.refreshButton.addEventListener("click", async () => {
    try {
      showRefresh(await api("POST", "/api/rag/refresh", {}));
    } catch (err) {
      ui.refreshStatus.textContent = err.message;
      if (err.status === 409) pollRefresh();
    }
  });

  // -- wiring --------------------------------------------------------------------------------------------

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendTurn({ text: ui.input.value });
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendTurn({ text: ui.input.value });
    }
  });
  ui.newSession.addEventListener("click", () => {
    if (state.busy) return;
    hideBanner();
    newConversation();
    closeSidebar();
    ui.input.focus();
  });
  ui.bannerClose.addEventListener("click", () => {
    hideBanner();
    ui.input.focus();
  });
  window.addEventListener("hashchange", () => {
    const id = sessionFromHash();
    if (id && id !== state.current) openSession(id);
  });

  async function start() {
    try {
      state.me = await api("GET", "/api/me");
      state.maxChars = state.me.max_message_chars;
      ui.whoami.textContent = state.me.user;
      ui.whoami.title = `Signed in as ${state.me.user}`;
      if (!state.me.rag_enabled) ui.refreshButton.hidden = true;
    } catch (err) {
      showBanner(err.message);
      return;
    }
    await loadSessions();
    const id = sessionFromHash();
    if (id) await openSession(id);
    if (state.me.rag_enabled) pollRefresh();
    ui.input.focus();
    document.body.dataset.ready = "true";
  }

  start();
})();
