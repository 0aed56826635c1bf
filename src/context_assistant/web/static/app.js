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
import { resumeTurn, streamTurn } from "./stream.js";

const ui = {
  conversation: $("conversation"),
  messages: $("messages"),
  input: $("composer-input"),
  send: $("send"),
  stop: $("stop"),
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
const state = { me: null, current: null, busy: false, maxChars: 16000, live: null };

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
// The app writes an answer whether or not this page listens (live turns): leaving a conversation, reloading
// or losing the connection only stops listening; coming back re-attaches. `state.live` is the answer being
// written in the conversation on screen, if any: {sessionId, userMessageId, controller, view, lastEventId}.

function setBusy(busy) {
  state.busy = busy;
  ui.send.disabled = busy;
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.stop.disabled = false;
  ui.stop.textContent = "Stop";
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
  detach();
  setCurrent(null);
  ui.sessionTitle.textContent = "New conversation";
  clearMessages();
  updateEmptyState();
  renderSessions();
  if (message) showBanner(message);
}

// -- the draft: what is in the box survives a reload, and a question is dropped only once the app stored it

function draftKey() {
  return `context-assistant.draft:${state.me ? state.me.user : ""}`;
}

function saveDraft(text, sending) {
  try {
    if (text) localStorage.setItem(draftKey(), JSON.stringify({ text, sending: Boolean(sending) }));
    else localStorage.removeItem(draftKey());
  } catch (err) {
    // storage full or blocked: the box itself still holds the text
  }
}

function loadDraft() {
  try {
    return JSON.parse(localStorage.getItem(draftKey()) || "null");
  } catch (err) {
    return null;
  }
}

function restoreDraft(lastStoredQuestion) {
  const draft = loadDraft();
  if (!draft || !draft.text) return;
  if (draft.sending && draft.text === lastStoredQuestion) {
    saveDraft(""); // it reached the app after all
    return;
  }
  if (!ui.input.value) ui.input.value = draft.text;
  if (draft.sending) {
    showBanner("Your last question may not have been sent, so it is back in the box. Send it again when you are ready.");
  }
}

// -- following an answer

function detach() {
  const live = state.live;
  if (!live) return;
  state.live = null;
  live.controller.abort();
  setBusy(false);
}

function handlersFor(live, userView) {
  const view = live.view;
  const track = (fn) => (data, id) => {
    if (id) live.lastEventId = id;
    fn(data);
  };
  return {
    start: track((data) => {
      live.userMessageId = data.user_message_id;
      live.sessionId = data.session_id;
      if (userView) userView.dataset.id = String(data.user_message_id);
      if (live.sending) saveDraft(""); // stored: nothing to keep any more
      if (state.live === live && state.current !== data.session_id) {
        setCurrent(data.session_id);
        refreshSessionList(); // the new conversation is listed at once
      }
      if (live.stopRequested) requestStop(live);
    }),
    sources: track((data) => view.setSources(data.sources)),
    delta: track((data) => view.append(data.text)),
    done: track((data) => {
      view.text = data.reply;
      view.finish(data.message_id, null);
    }),
    error: track((data) =>
      view.fail(data.error, {
        requestId: data.request_id,
        onRetry: data.retryable !== false && data.user_message_id ? () => retryTurn(data.user_message_id) : null,
      }),
    ),
    stopped: track((data) =>
      view.stopped(data, { onRetry: data.user_message_id ? () => retryTurn(data.user_message_id) : null }),
    ),
  };
}

async function requestStop(live) {
  live.stopRequested = true;
  if (state.live === live) {
    ui.stop.disabled = true;
    ui.stop.textContent = "Stopping…";
  }
  if (!live.userMessageId) return; // sent once the app says the question is stored
  try {
    await api("POST", `/api/chat/turns/${live.userMessageId}/stop`, {});
  } catch (err) {
    if (err.status !== 404) showBanner(`The answer could not be stopped. ${err.message}`, err.requestId);
  }
}

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// After the connection broke mid-answer: re-attach (the app is still writing it), a few times with a pause.
async function reattach(live, handlers, result) {
  for (let attempt = 1; attempt <= 4 && result.outcome === "dropped" && !result.aborted; attempt++) {
    await wait(500 * attempt);
    if (state.live !== live) return { outcome: "dropped", aborted: true };
    result = await resumeTurn(live.userMessageId, live.lastEventId, handlers, { signal: live.controller.signal });
  }
  return result;
}

// Listen to the answer to a stored question (after a reload, or coming back to the conversation).
async function follow(userMessageId, sessionId) {
  setBusy(true);
  const live = { sessionId, userMessageId, controller: new AbortController(), view: new AssistantView(), lastEventId: null };
  state.live = live;
  const handlers = handlersFor(live, null);
  let result = await resumeTurn(userMessageId, null, handlers, { signal: live.controller.signal });
  result = await reattach(live, handlers, result);
  await settle(live, result);
}

async function settle(live, result, sent) {
  if (result.aborted || state.live !== live) return; // this page stopped listening (another conversation)
  const { view } = live;
  if (result.outcome === "rejected" && sent) {
    // Nothing was stored: take the message off the page and give the text back.
    if (sent.userView) sent.userView.remove();
    view.root.remove();
    if (!sent.retryOf && !ui.input.value) ui.input.value = sent.text;
    if (!sent.retryOf) saveDraft(sent.text, false);
    const err = result.error;
    if (err.status === 404 && state.current) {
      conversationGone(
        "This conversation was deleted, perhaps in another tab or window. Your message is still in the box: send it to start a new conversation.",
      );
    } else {
      showBanner(err.message, err.requestId);
    }
  } else if (result.outcome === "rejected") {
    // The app is not writing it (it finished a while ago, or the app restarted): the stored state says.
    state.live = null;
    setBusy(false);
    if (state.current) await openSession(state.current, { reloaded: true });
    return;
  } else if (result.outcome === "dropped" && !result.started) {
    // The question may never have reached the app: put it back so nothing is lost.
    if (sent && sent.userView) sent.userView.remove();
    view.root.remove();
    if (sent && !sent.retryOf) {
      if (!ui.input.value) ui.input.value = sent.text;
      saveDraft(sent.text, true); // it may have got through: a reload says so
    }
    showBanner("The app could not be reached, so your question was not sent. It is back in the box: check your connection and send it again.");
  } else if (result.outcome === "dropped") {
    view.fail(
      "The connection to the app was lost. Your question is saved and the app goes on answering it: reload the page to see the answer.",
      { requestId: result.requestId, onRetry: () => (window.location.reload(), true), retryLabel: "Reload" },
    );
  }
  state.live = null;
  updateEmptyState();
  setBusy(false);
  ui.input.focus();
  await refreshSessionList();
  const session = knownSessions().find((s) => s.id === state.current);
  if (session) ui.sessionTitle.textContent = sessionLabel(session);
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
    saveDraft(text, true); // kept until the app says it stored the question
  }
  setBusy(true);
  const userView = retryOf ? null : userMessageView(text);
  if (!retryOf) ui.input.value = "";
  updateEmptyState();
  const live = {
    sessionId: state.current,
    userMessageId: retryOf || null,
    controller: new AbortController(),
    view: new AssistantView(),
    lastEventId: null,
    sending: !retryOf,
  };
  state.live = live;
  const handlers = handlersFor(live, userView);
  let result = await streamTurn({ message: text, sessionId: state.current, retryOf }, handlers, {
    signal: live.controller.signal,
  });
  if (result.outcome === "dropped" && result.started) result = await reattach(live, handlers, result);
  await settle(live, result, { text, retryOf, userView });
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
  detach();
  setCurrent(null);
  ui.sessionTitle.textContent = "New conversation";
  clearMessages();
  updateEmptyState();
  renderSessions();
}

function renderHistory(messages) {
  clearMessages();
  let unanswered = null; // the last question, when no reply and no state follow it: maybe being written
  messages.forEach((message, position) => {
    const meta = message.metadata || {};
    const isLast = position === messages.length - 1;
    if (message.role === "user") {
      const view = userMessageView(message.content, message.id);
      if (meta.status === "failed") {
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
      } else if (!meta.status && isLast) {
        unanswered = message;
      }
    } else if (message.role === "assistant") {
      const view = new AssistantView();
      view.text = message.content;
      view.setSources(meta.sources || []);
      view.finish(message.id, meta.feedback);
      if (meta.status === "stopped") view.markStopped();
    }
  });
  updateEmptyState();
  scrollToEnd();
  return unanswered;
}

// A question left without reply or state, that the app is not writing (it restarted meanwhile).
function showInterrupted(message) {
  const view = [...ui.messages.querySelectorAll("article.msg-user")].find((node) => node.dataset.id === String(message.id));
  if (!view) return;
  view.append(
    errorView("Not answered: the app stopped before the answer was written. Your question is saved.", {
      onRetry: (box) => {
        if (retryTurn(message.id)) box.remove();
      },
    }),
  );
}

async function openSession(id, { focusInput, reloaded } = {}) {
  detach(); // an answer being written in the conversation we leave goes on in the app
  hideBanner();
  let unanswered = null;
  try {
    const data = await api("GET", `/api/sessions/${encodeURIComponent(id)}/messages`);
    setCurrent(id);
    ui.sessionTitle.textContent = sessionLabel(data.session);
    unanswered = renderHistory(data.messages);
    renderSessions();
    const questions = data.messages.filter((m) => m.role === "user");
    if (!reloaded) restoreDraft(questions.length ? questions[questions.length - 1].content : null);
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
  if (unanswered) {
    if (reloaded) showInterrupted(unanswered);
    else follow(unanswered.id, id); // not awaited: the page is ready while the answer comes
  }
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
  hideBanner();
  newConversation();
  closeDrawer();
  ui.input.focus();
});
ui.stop.addEventListener("click", () => {
  if (state.live) requestStop(state.live);
});
ui.input.addEventListener("input", () => saveDraft(ui.input.value, false));
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
  if (id) await openSession(id); // and goes on following an answer being written there
  else restoreDraft(null);
  await Promise.all([loadExamples(), setupRefresh(state.me.rag_enabled)]);
  ui.input.focus();
  document.body.dataset.ready = "true";
}

start();
