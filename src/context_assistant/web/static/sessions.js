// The conversation list: grouped by last activity (Today / Previous 7 days / Older), searchable by title,
// each title on the full width with its actions (rename, delete) in a menu that shows on hover or focus.
// On narrow screens the list is a drawer: it closes on a tap outside, on Escape, on its close button and
// when a conversation is chosen; while it is open the rest of the page is inert.

import { api } from "./api.js";
import { $, el } from "./dom.js";

const DAY_MS = 24 * 60 * 60 * 1000;
const narrow = window.matchMedia("(max-width: 720px)");

const ui = {
  sidebar: $("sidebar"),
  groups: $("session-groups"),
  empty: $("sessions-empty"),
  search: $("session-search"),
  toggle: $("toggle-sessions"),
  close: $("close-sessions"),
  scrim: $("scrim"),
  newSession: $("new-session"),
};

// hooks: {current() -> id, open(id), renamed(session), deleted(session), error(text)}
let hooks = null;
let sessions = [];
let openMenu = null;

export function sessionLabel(session) {
  return session.title || "Untitled conversation";
}

export function knownSessions() {
  return sessions;
}

export function setupSessions(handlers) {
  hooks = handlers;
  ui.search.addEventListener("input", render);
  ui.search.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && ui.search.value) {
      event.stopPropagation();
      ui.search.value = "";
      render();
    }
  });
  ui.toggle.addEventListener("click", () => (isDrawerOpen() ? closeDrawer({ focus: "toggle" }) : openDrawer()));
  ui.close.addEventListener("click", () => closeDrawer({ focus: "toggle" }));
  ui.scrim.addEventListener("click", () => closeDrawer({ focus: "toggle" }));
  narrow.addEventListener("change", () => closeDrawer());
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (openMenu) {
      closeMenu({ focusButton: true });
    } else if (isDrawerOpen()) {
      closeDrawer({ focus: "toggle" });
    }
  });
  document.addEventListener("click", (event) => {
    if (openMenu && !openMenu.item.contains(event.target)) closeMenu();
  });
}

export async function loadSessions() {
  const data = await api("GET", "/api/sessions?limit=500");
  sessions = data.sessions;
  render();
  return sessions;
}

// -- grouping ---------------------------------------------------------------------------------------------

function startOfDay(date) {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime();
}

export function groupOf(updatedAt, now = new Date()) {
  const today = startOfDay(now);
  const day = startOfDay(updatedAt);
  if (day >= today) return "Today";
  if (day >= today - 7 * DAY_MS) return "Previous 7 days";
  return "Older";
}

function whenLabel(updatedAt, group) {
  if (group === "Today") return updatedAt.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  if (group === "Previous 7 days") return updatedAt.toLocaleDateString(undefined, { weekday: "long" });
  return updatedAt.toLocaleDateString(undefined, { day: "numeric", month: "short", year: "numeric" });
}

function normalise(text) {
  return text.normalize("NFD").replace(/\p{Diacritic}/gu, "").toLowerCase();
}

// -- rendering --------------------------------------------------------------------------------------------

export function render() {
  closeMenu();
  const query = normalise(ui.search.value.trim());
  const shown = query ? sessions.filter((s) => normalise(sessionLabel(s)).includes(query)) : sessions;
  const groups = new Map();
  for (const session of shown) {
    const updated = new Date(session.updated_at);
    const group = groupOf(updated);
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push({ session, updated, group });
  }
  ui.groups.replaceChildren();
  let n = 0;
  for (const name of ["Today", "Previous 7 days", "Older"]) {
    const entries = groups.get(name);
    if (!entries) continue;
    const titleId = `session-group-${n++}`;
    const list = el("ul", { class: "session-list", "aria-labelledby": titleId });
    for (const entry of entries) list.append(sessionItem(entry));
    ui.groups.append(
      el("section", { class: "session-group" }, el("h2", { class: "session-group-title", id: titleId, text: name }), list),
    );
  }
  ui.empty.hidden = shown.length > 0;
  ui.empty.textContent = query
    ? `No conversation titles match “${ui.search.value.trim()}”.`
    : "No conversations yet. Ask a question to start one.";
}

function sessionItem({ session, updated, group }) {
  const label = sessionLabel(session);
  const current = session.id === hooks.current();
  const item = el("li", { class: current ? "session current" : "session", "data-session-id": session.id });
  const count = session.message_count === 1 ? "1 message" : `${session.message_count} messages`;
  const open = el(
    "button",
    {
      type: "button",
      class: "session-open",
      "aria-current": current ? "page" : null,
      onclick: () => {
        closeDrawer();
        hooks.open(session.id);
      },
    },
    el("span", { class: "session-name", text: label }),
    el(
      "span",
      { class: "session-meta" },
      el("time", { datetime: session.updated_at, text: whenLabel(updated, group) }),
      ` · ${count}`,
    ),
  );
  const menuButton = el("button", {
    type: "button",
    class: "session-menu-button",
    "aria-haspopup": "menu",
    "aria-expanded": "false",
    "aria-label": `Actions for “${label}”`,
    title: "Rename or delete",
    text: "⋯",
  });
  const menu = el(
    "div",
    { class: "session-menu", role: "menu", hidden: true, "aria-label": `Actions for “${label}”` },
    el("button", {
      type: "button",
      role: "menuitem",
      class: "menu-rename",
      text: "Rename",
      onclick: () => startRename(item, session),
    }),
    el("button", {
      type: "button",
      role: "menuitem",
      class: "menu-delete",
      text: "Delete",
      onclick: () => confirmDelete(item, session),
    }),
  );
  menuButton.addEventListener("click", (event) => {
    event.stopPropagation();
    if (openMenu && openMenu.menu === menu) closeMenu({ focusButton: true });
    else showMenu({ item, menu, button: menuButton });
  });
  menu.addEventListener("keydown", (event) => {
    const items = [...menu.querySelectorAll("[role=menuitem]")];
    const at = items.indexOf(document.activeElement);
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      items[(at + step + items.length) % items.length].focus();
    } else if (event.key === "Home" || event.key === "End") {
      event.preventDefault();
      items[event.key === "Home" ? 0 : items.length - 1].focus();
    } else if (event.key === "Tab") {
      closeMenu();
    }
  });
  item.append(open, menuButton, menu);
  return item;
}

function showMenu(entry) {
  closeMenu();
  openMenu = entry;
  entry.menu.hidden = false;
  entry.button.setAttribute("aria-expanded", "true");
  entry.item.classList.add("menu-open");
  entry.menu.querySelector("[role=menuitem]").focus();
}

function closeMenu({ focusButton } = {}) {
  if (!openMenu) return;
  const { menu, button, item } = openMenu;
  openMenu = null;
  menu.hidden = true;
  button.setAttribute("aria-expanded", "false");
  item.classList.remove("menu-open");
  if (focusButton) button.focus();
}

function focusSession(id, selector) {
  const item = ui.groups.querySelector(`li[data-session-id="${CSS.escape(id)}"]`);
  const target = item && item.querySelector(selector);
  if (target) target.focus();
}

function startRename(item, session) {
  closeMenu();
  const input = el("input", {
    type: "text",
    class: "rename-input",
    maxlength: "200",
    "aria-label": "New name for the conversation",
  });
  input.value = session.title;
  const cancel = () => {
    render();
    focusSession(session.id, ".session-menu-button");
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
      hooks.error("A conversation needs a name: type one, or press Escape to keep the old one.");
      return;
    }
    try {
      const renamed = await api("PATCH", `/api/sessions/${encodeURIComponent(session.id)}`, { title });
      hooks.renamed(renamed);
      await loadSessions();
      focusSession(session.id, ".session-open");
    } catch (err) {
      if (err.status === 404) {
        hooks.deleted(session);
        await loadSessions();
      } else {
        hooks.error(`The conversation was not renamed. ${err.message}`, err.requestId);
      }
    }
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      cancel();
    }
  });
  item.replaceChildren(form);
  input.focus();
  input.select();
}

function confirmDelete(item, session) {
  closeMenu();
  const no = el("button", {
    type: "button",
    text: "Keep",
    onclick: () => {
      render();
      focusSession(session.id, ".session-menu-button");
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
          hooks.error(`The conversation was not deleted. ${err.message}`, err.requestId);
          return;
        }
      }
      hooks.deleted(session, { byYou: true });
      await loadSessions();
      ui.newSession.focus();
    },
  });
  item.replaceChildren(
    el(
      "div",
      { class: "confirm", role: "group", "aria-label": "Confirm deletion" },
      el("span", { text: `Delete “${sessionLabel(session)}” and its messages?` }),
      yes,
      no,
    ),
  );
  no.focus();
}

// -- the drawer (narrow screens) --------------------------------------------------------------------------

function isDrawerOpen() {
  return ui.sidebar.classList.contains("open");
}

function setInert(inert) {
  for (const node of document.querySelectorAll("[data-inert-with-drawer]")) node.inert = inert;
}

export function openDrawer() {
  if (!narrow.matches) return;
  ui.sidebar.classList.add("open");
  ui.scrim.hidden = false;
  ui.toggle.setAttribute("aria-expanded", "true");
  setInert(true);
  ui.newSession.focus();
}

// focus: "toggle" gives the focus back to the ☰ button (closing without choosing).
export function closeDrawer({ focus } = {}) {
  if (!isDrawerOpen()) return;
  ui.sidebar.classList.remove("open");
  ui.scrim.hidden = true;
  ui.toggle.setAttribute("aria-expanded", "false");
  setInert(false);
  if (focus === "toggle") ui.toggle.focus();
}
