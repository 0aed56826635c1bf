// The chat page: no framework and no build step; ES modules with plain DOM calls.
//   api.js       the JSON API and its errors        stream.js    the streaming client of a turn
//   markdown.js  answers as Markdown (vendored marked + DOMPurify; citations)
//   messages.js  message views                       sessions.js  the conversation list and the drawer
//   refresh.js   the "Refresh documents" button      dom.js       small DOM helpers
// Safety rule: text reaches the page as text (textContent / text nodes); the only markup is an answer's
// Markdown, which goes through markdown.js's sanitiser. The CSP allows no inline script or style.

import { api } from "./api.js";
import { $, el } from "./dom.js";
import {
  AssistantView,
  clearMessages,
  errorView,
  hasMessages,
  mountMessages,
  scrollToEnd,
  userMessageView,
} from "./messages.js";
import { setupRefresh } from "./refresh.js";
import { closeDrawer, knownSessions, loadSessions, render as renderSessions, sessionLabel, setupSessions } from "./sessions.js";
import { streamTurn } from "./stream.js";

const ui = {
  conversation: $("conversation"),
  messages: $("messages"),
  input: $("composer-input"),
  send: $("send"),
  composer: $("composer"),
  sessionTitle: $("session-title"),
  newSession: $("new-session"),
  whoami: $("whoami"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerClose: $("banner-close"),
  empty: $("empty-state"),
  emptyExplanation: $("empty-explanation"),
  examples: $("examples"),
  exampleList: $("example-list"),
};
const state = { me: null, current: null, busy: false, maxChars: 16000 };

mountMessages(ui.messages, ui.conversation);

// -- banner and empty state -----------------------------------------------------------------------------

function showBanner(text, requestId) {
  ui.bannerText.textContent = requestId ? `${text} (Request id: ${requestId})` : text;
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
  ui.bannerText.textContent = "";
}

function updateEmptyState() {
  ui.empty.hidden = hasMessages();
}

function explainApp(me) {
  const parts = [];
  if (me.rag_enabled) {
    parts.push("Answers come from the documents indexed for this app, with numbered sources you can open.");
  } else {
    parts.push("Ask anything; document search is turned off for this app.");
  }
  parts.push("The assistant remembers this conversation and can recall your earlier ones.");
  if (me.model === "offline") {
    parts.push("No language model is set up yet, so replies quote the most relevant passages instead of writing an answer.");
  }
  ui.emptyExplanation.textContent = parts.join(" ");
}

async function loadExamples() {
  if (!state.me.rag_enabled) return;
  let examples = [];
  try {
    examples = (await api("GET", "/api/examples")).examples;
  } catch (err) {
    return; // the explanation stands on its own
  }
  ui.exampleList.replaceChildren(
    ...examples.map((example) =>
      el(
        "li",
        {},
        el("button", {
          type: "button",
          class: "example",
          title: example.heading ? `From ${example.path} › ${example.heading}` : `From ${example.path}`,
          text: example.question,
          onclick: () => sendTurn({ text: example.question }),
        }),
      ),
    ),
  );
  ui.examples.hidden = examples.length === 0;
}

// -- the turn --------------------------------------------------------------------------------------------

function setBusy(busy) {
  state.busy = busy;
  ui.send.disabled = busy;
  ui.composer.setAttribute("aria-busy", String(busy));
}

function setCurrent(id) {
  state.current = id;
  const hash = id ? `#session=${encodeURIComponent(id)}` : "";
  if (window.location.hash !== hash) history.replaceState(null, "", hash || window.location.pathname);
}

const DELETED_ELSEWHERE =
  "This conversation was deleted, perhaps in another tab or window. What you send next starts a new conversation.";

// The conversation on screen is gone (deleted in another tab, or by you): the next message starts a new one.
// `message`: what to tell the user (nothing when they deleted it here themselves).
function conversationGone(message) {
  setCurrent(null);
  ui.sessionTitle.textContent = "New conversation";
  clearMessages();
  updateEmptyState();
  renderSessions();
  if (message) showBanner(message);
}

async function sendTurn({ text, retryOf }) {
  if (state.busy) return;
  hideBanner();
  if (!retryOf) {
    if (!text.trim()) return;
    if (text.length > state.maxChars) {
      showBanner(`Your message is ${text.length} characters long; the limit is ${state.maxChars}. Shorten it and send it again.`);
      return;
    }
  }
  setBusy(true);
  const userView = retryOf ? null : userMessageView(text);
  if (!retryOf) ui.input.value = "";
  updateEmptyState();
  const view = new AssistantView();
  let userMessageId = retryOf || null;
  const retry = (id) => () => retryTurn(id);
  const result = await streamTurn(
    { message: text, sessionId: state.current, retryOf },
    {
      start: (data) => {
        userMessageId = data.user_message_id;
        if (userView) userView.dataset.id = String(data.user_message_id);
        if (state.current !== data.session_id) setCurrent(data.session_id);
      },
      sources: (data) => view.setSources(data.sources),
      delta: (data) => view.append(data.text),
      done: (data) => {
        view.text = data.reply;
        view.finish(data.message_id, null);
      },
      error: (data) =>
        view.fail(data.error, {
          requestId: data.request_id,
          onRetry: data.retryable !== false && data.user_message_id ? retry(data.user_message_id) : null,
        }),
    },
  );
  if (result.outcome === "rejected") {
    // Nothing was stored: take the message off the page and give the text back.
    if (userView) userView.remove();
    view.root.remove();
    if (!retryOf && !ui.input.value) ui.input.value = text;
    const err = result.error;
    if (err.status === 404 && state.current) {
      conversationGone(
        "This conversation was deleted, perhaps in another tab or window. Your message is still in the box: send it to start a new conversation.",
      );
    } else {
      showBanner(err.message, err.requestId);
    }
  } else if (result.outcome === "dropped") {
    if (result.started) {
      view.fail("The connection to the app was lost before the answer was complete. Your question is saved: try again.", {
        requestId: result.requestId,
        onRetry: retry(userMessageId),
      });
    } else {
      // The question may never have reached the app: put it back so nothing is lost.
      if (userView) userView.remove();
      view.root.remove();
      if (!retryOf && !ui.input.value) ui.input.value = text;
      showBanner("The app could not be reached, so your question was not sent. It is back in the box: check your connection and send it again.");
    }
  }
  updateEmptyState();
  setBusy(false);
  ui.input.focus();
  await refreshSessionList();
  const session = knownSessions().find((s) => s.id === state.current);
  if (session) ui.sessionTitle.textContent = sessionLabel(session);
}

// Answer a stored, failed message again; false (and a word why) while another answer is being written.
function retryTurn(messageId) {
  if (state.busy) {
    showBanner("An answer is still being written. Wait for it to finish, then press Retry again.");
    return false;
  }
  sendTurn({ retryOf: messageId });
  return true;
}

// -- conversations ----------------------------------------------------------------------------------------

async function refreshSessionList() {
  try {
    await loadSessions();
  } catch (err) {
    showBanner(`Your conversations could not be loaded. ${err.message}`, err.requestId);
  }
}

function newConversation() {
  setCurrent(null);
  ui.sessionTitle.textContent = "New conversation";
  clearMessages();
  updateEmptyState();
  renderSessions();
}

function renderHistory(messages) {
  clearMessages();
  messages.forEach((message, position) => {
    const meta = message.metadata || {};
    if (message.role === "user") {
      const view = userMessageView(message.content, message.id);
      if (meta.status === "failed") {
        const isLast = position === messages.length - 1;
        const reason = meta.error ? `Not answered. ${meta.error}` : "Not answered.";
        view.append(
          errorView(reason, {
            onRetry: isLast
              ? (box) => {
                  if (retryTurn(message.id)) box.remove();
                }
              : null,
          }),
        );
      }
    } else if (message.role === "assistant") {
      const view = new AssistantView();
      view.text = message.content;
      view.setSources(meta.sources || []);
      view.finish(message.id, meta.feedback);
    }
  });
  updateEmptyState();
  scrollToEnd();
}

async function openSession(id, { focusInput } = {}) {
  if (state.busy) {
    showBanner("An answer is still being written. Wait for it to finish, then open the other conversation.");
    return;
  }
  hideBanner();
  try {
    const data = await api("GET", `/api/sessions/${encodeURIComponent(id)}/messages`);
    setCurrent(id);
    ui.sessionTitle.textContent = sessionLabel(data.session);
    renderHistory(data.messages);
    renderSessions();
  } catch (err) {
    newConversation();
    if (err.status === 404) {
      showBanner("That conversation does not exist any more (it was deleted). You are in a new conversation.");
      await refreshSessionList();
    } else {
      showBanner(`The conversation could not be opened. ${err.message}`, err.requestId);
    }
  }
  if (focusInput) ui.input.focus();
}

// Another tab may have deleted the conversation on screen: check when this tab comes back into view.
let lastCheck = 0;
async function checkCurrentStillExists() {
  const id = state.current;
  if (!id || state.busy || Date.now() - lastCheck < 2000) return;
  lastCheck = Date.now();
  try {
    await api("GET", `/api/sessions/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err.status === 404 && state.current === id && !state.busy) {
      conversationGone(DELETED_ELSEWHERE);
      await refreshSessionList();
    }
  }
}

function sessionFromHash() {
  const match = /^#session=(.+)$/.exec(window.location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

// -- wiring ----------------------------------------------------------------------------------------------

setupSessions({
  current: () => state.current,
  open: (id) => openSession(id, { focusInput: true }),
  renamed: (session) => {
    if (session.id === state.current) ui.sessionTitle.textContent = sessionLabel(session);
    hideBanner();
  },
  deleted: (session, { byYou } = {}) => {
    if (session.id === state.current) conversationGone(byYou ? null : DELETED_ELSEWHERE);
  },
  error: (text, requestId) => showBanner(text, requestId),
});

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
  if (state.busy) {
    showBanner("An answer is still being written. Wait for it to finish, then start a new conversation.");
    return;
  }
  hideBanner();
  newConversation();
  closeDrawer();
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
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") checkCurrentStillExists();
});
window.addEventListener("focus", () => checkCurrentStillExists());

async function start() {
  try {
    state.me = await api("GET", "/api/me");
  } catch (err) {
    showBanner(`The app could not start. ${err.message}`, err.requestId);
    return;
  }
  state.maxChars = state.me.max_message_chars;
  ui.whoami.textContent = state.me.user;
  ui.whoami.title = `Signed in as ${state.me.user}`;
  explainApp(state.me);
  updateEmptyState();
  await refreshSessionList();
  const id = sessionFromHash();
  if (id) await openSession(id);
  await Promise.all([loadExamples(), setupRefresh(state.me.rag_enabled)]);
  ui.input.focus();
  document.body.dataset.ready = "true";
}

start();
