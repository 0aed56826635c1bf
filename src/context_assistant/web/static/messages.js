// The conversation's messages: the user's text (always plain text), the assistant's answers (Markdown via
// markdown.js, with [n] citations linked to their sources), sources, copy and feedback, and errors.

import { api } from "./api.js";
import { copyButton, el, reducedMotion } from "./dom.js";
import { linkCitations, renderMarkdown } from "./markdown.js";

// Where messages go and what scrolls; set by app.js.
const view = { log: null, scroller: null };

export function mountMessages(log, scroller) {
  view.log = log;
  view.scroller = scroller;
}

export function scrollToEnd() {
  view.scroller.scrollTop = view.scroller.scrollHeight;
}

export function clearMessages() {
  view.log.replaceChildren();
}

export function hasMessages() {
  return view.log.childElementCount > 0;
}

export function userMessageView(content, id) {
  const body = el("div", { class: "msg-body plain" });
  body.textContent = content;
  const root = el(
    "article",
    { class: "msg msg-user", "data-id": id || null, "aria-label": "You said" },
    el("div", { class: "msg-role", text: "You" }),
    body,
  );
  view.log.append(root);
  scrollToEnd();
  return root;
}

function plural(count, one, many) {
  return count === 1 ? `1 ${one}` : `${count} ${many}`;
}

export function describeSource(source) {
  const parts = [source.path];
  if (source.heading) parts.push(` › ${source.heading}`);
  if (source.page !== null && source.page !== undefined) parts.push(` · page ${source.page}`);
  return parts.join("");
}

// The passages an answer was given: the ones it cites first, the rest folded away. No scores: a fusion
// score is a rank, not a confidence, and reads like one.
class SourcesView {
  constructor(sources) {
    this.items = new Map();
    this.cited = el("div", { class: "sources-cited" });
    this.restList = el("div", { class: "sources-rest-list" });
    this.restSummary = el("summary", { class: "sources-rest-summary" });
    this.rest = el("details", { class: "sources-rest" }, this.restSummary, this.restList);
    this.title = el("h3", { class: "sources-title", text: "Sources" });
    this.root = el("section", { class: "sources", "aria-label": "Sources" }, this.title, this.cited, this.rest);
    for (const source of sources) this.items.set(source.index, this.item(source));
    this.arrange(new Set());
  }

  item(source) {
    const text = el("div", { class: "source-text" });
    const details = el(
      "details",
      { class: "source", "data-chunk-id": source.chunk_id, "data-index": source.index },
      el(
        "summary",
        {},
        el("span", { class: "source-index", text: `[${source.index}]` }),
        " ",
        el("span", { class: "source-where", text: describeSource(source) }),
      ),
      text,
    );
    if (source.text) {
      text.textContent = source.text;
      return details;
    }
    let loaded = false;
    details.addEventListener("toggle", async () => {
      if (!details.open || loaded) return;
      loaded = true;
      text.textContent = "Loading the passage…";
      try {
        const passage = await api("GET", `/api/sources/${encodeURIComponent(source.chunk_id)}`);
        text.textContent = passage.text;
      } catch (err) {
        text.textContent =
          err.status === 404
            ? "This passage is no longer in the document index: its document was changed or removed since this answer."
            : `The passage could not be loaded. ${err.message}`;
        loaded = false;
      }
    });
    return details;
  }

  // Cited sources first (in number order), the others inside the fold.
  arrange(citedIndices) {
    const cited = [];
    const rest = [];
    for (const [index, details] of [...this.items].sort((a, b) => a[0] - b[0])) {
      (citedIndices.has(index) ? cited : rest).push(details);
    }
    this.cited.replaceChildren(...cited);
    this.restList.replaceChildren(...rest);
    this.title.hidden = cited.length === 0;
    this.title.textContent = cited.length === 1 ? "Cited source" : "Cited sources";
    this.rest.hidden = rest.length === 0;
    this.restSummary.textContent = cited.length
      ? `${plural(rest.length, "more passage was", "more passages were")} searched but not cited`
      : `${plural(rest.length, "passage was", "passages were")} searched; the answer cites none`;
  }

  // Open source `index`, scroll to it and highlight it (what a citation does).
  reveal(index) {
    const details = this.items.get(index);
    if (!details) return;
    if (this.rest.contains(details)) this.rest.open = true;
    details.open = true;
    details.scrollIntoView({ block: "nearest", behavior: reducedMotion() ? "auto" : "smooth" });
    details.classList.remove("highlight");
    void details.offsetWidth; // restart the highlight animation
    details.classList.add("highlight");
    details.querySelector("summary").focus({ preventScroll: true });
  }
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
      status.textContent = `Your feedback was not saved. ${err.message}`;
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
        if (await submit(key, "")) commentForm.hidden = false;
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

// An error under a message: what happened and what to do, the request id for the administrator, and Retry
// when the stored message can be answered again: `onRetry(box)` (which removes the box when it retries).
export function errorView(message, { requestId, onRetry, retryLabel } = {}) {
  const box = el("div", { class: "msg-error", role: "alert" }, el("span", { class: "msg-error-text", text: message }));
  if (requestId) box.append(el("span", { class: "request-id", text: `Request id: ${requestId}` }));
  if (onRetry) {
    box.append(
      el("button", {
        type: "button",
        class: "retry",
        text: retryLabel || "Retry",
        onclick: () => onRetry(box),
      }),
    );
  }
  return box;
}

let citationCounter = 0;

export class AssistantView {
  constructor() {
    this.text = "";
    this.key = `a${++citationCounter}`;
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
    view.log.append(this.root);
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
    const fragment = renderMarkdown(this.text);
    const known = new Set(this.sources ? [...this.sources.items.keys()] : []);
    const cited = linkCitations(fragment, known, (index) => this.citation(index));
    this.body.replaceChildren(fragment);
    if (this.sources) this.sources.arrange(cited);
    scrollToEnd();
  }

  citation(index) {
    const details = this.sources.items.get(index);
    const where = details.querySelector(".source-where").textContent;
    return el("button", {
      type: "button",
      class: "cite",
      text: String(index),
      title: where,
      "aria-label": `Source ${index}: ${where}`,
      onclick: () => this.sources.reveal(index),
    });
  }

  setSources(sources) {
    if (!sources || !sources.length) return;
    this.sources = new SourcesView(sources);
    this.extras.prepend(this.sources.root);
  }

  finish(messageId, feedback) {
    this.render();
    this.status.remove();
    this.root.setAttribute("aria-busy", "false");
    this.root.dataset.id = String(messageId);
    const actions = el(
      "div",
      { class: "msg-actions" },
      copyButton("Copy this answer", () => this.text, "answer-copy"),
      feedbackView(messageId, feedback),
    );
    this.extras.append(actions);
    scrollToEnd();
  }

  // The user stopped the answer: what was written is kept (data.message_id) and marked; with nothing written
  // the question can be answered again (options.onRetry).
  stopped(data, options) {
    if (data.message_id) {
      this.text = data.reply;
      this.finish(data.message_id, null);
      this.markStopped();
    } else {
      this.fail("You stopped the answer before it began. Your question is saved.", options);
    }
  }

  markStopped() {
    this.root.classList.add("msg-stopped");
    this.body.after(el("p", { class: "msg-note", text: "Stopped: this answer is incomplete." }));
  }

  fail(message, options) {
    this.root.setAttribute("aria-busy", "false");
    this.status.remove();
    if (this.text) this.render();
    else this.root.classList.add("msg-failed");
    this.extras.append(
      errorView(message, {
        requestId: options && options.requestId,
        retryLabel: options && options.retryLabel,
        onRetry:
          options && options.onRetry
            ? (box) => {
                if (options.onRetry() !== false) (this.text ? box : this.root).remove();
              }
            : null,
      }),
    );
    scrollToEnd();
  }
}
