// The "Refresh documents" button. Its status is for whoever pressed it, in this tab: other people and
// other tabs see nothing (the refresh is app-wide, its progress is not their business), and the result fades
// after a few seconds. The tab remembers (sessionStorage) which refresh it started, so a reload mid-refresh
// goes on showing its progress.

import { api } from "./api.js";
import { $, el, reducedMotion } from "./dom.js";

const KEY = "context-assistant.refresh-started-at";
const SHOW_MS = 8000; // how long a result stays before it fades
const FADE_MS = 1000;
const RECENT_MS = 60000; // after a reload, a result this recent is still shown to the tab that asked

const ui = { button: $("refresh-docs"), status: $("refresh-status") };
let pollTimer = null;
let fadeTimer = null;

function clearStatus() {
  clearTimeout(fadeTimer);
  ui.status.classList.remove("fading");
  ui.status.replaceChildren();
}

function show(text, { details, fade } = {}) {
  clearTimeout(fadeTimer);
  ui.status.classList.remove("fading");
  const line = el("span", { class: "refresh-text", text });
  ui.status.replaceChildren(line);
  if (details) {
    const more = el("div", { class: "refresh-details", hidden: true, text: details });
    const toggle = el("button", {
      type: "button",
      class: "link-button refresh-more",
      "aria-expanded": "false",
      text: "Details",
      onclick: () => {
        more.hidden = !more.hidden;
        toggle.setAttribute("aria-expanded", String(!more.hidden));
        if (!more.hidden) clearTimeout(fadeTimer); // reading: keep it
        else scheduleFade();
      },
    });
    ui.status.append(" ", toggle, more);
  }
  if (fade) scheduleFade();
}

function scheduleFade() {
  clearTimeout(fadeTimer);
  fadeTimer = setTimeout(() => {
    if (ui.status.matches(":hover, :focus-within")) {
      scheduleFade();
      return;
    }
    ui.status.classList.add("fading");
    fadeTimer = setTimeout(clearStatus, reducedMotion() ? 0 : FADE_MS);
  }, SHOW_MS);
}

function showStatus(status) {
  const running = status.state === "running";
  ui.button.disabled = running;
  clearTimeout(pollTimer);
  if (running) {
    show(status.progress ? `Refreshing documents… ${status.progress}` : "Refreshing documents…");
    pollTimer = setTimeout(poll, 1500);
    return;
  }
  sessionStorage.removeItem(KEY);
  if (status.state === "succeeded") {
    show("Documents refreshed: answers now use the latest versions.", { details: status.summary, fade: true });
  } else if (status.state === "failed") {
    show(
      "The document refresh did not finish. Answers keep using the previous versions; the app log says why.",
      { details: status.summary, fade: true },
    );
  } else {
    clearStatus();
  }
}

async function poll() {
  try {
    showStatus(await api("GET", "/api/rag/refresh"));
  } catch (err) {
    show(`Checking on the refresh failed. ${err.message}`);
    pollTimer = setTimeout(poll, 5000);
  }
}

async function press() {
  try {
    const status = await api("POST", "/api/rag/refresh", {});
    sessionStorage.setItem(KEY, status.started_at || "");
    showStatus(status);
  } catch (err) {
    if (err.status === 409) {
      show("A document refresh is already running. Try again when it has finished.", { fade: true });
    } else {
      show(`The refresh did not start. ${err.message}`, { fade: true });
    }
  }
}

// On load: show nothing, unless this tab started the refresh that is running or has just ended.
export async function setupRefresh(enabled) {
  ui.button.hidden = !enabled;
  if (!enabled) return;
  ui.button.addEventListener("click", press);
  const mine = sessionStorage.getItem(KEY);
  if (mine === null) return;
  try {
    const status = await api("GET", "/api/rag/refresh");
    const finished = status.finished_at ? Date.parse(status.finished_at) : null;
    if (status.started_at !== mine || (finished && Date.now() - finished > RECENT_MS)) {
      sessionStorage.removeItem(KEY);
      return;
    }
    showStatus(status);
  } catch (err) {
    // nothing to show: the status is a courtesy
  }
}
