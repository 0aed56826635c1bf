// Small DOM helpers shared by the page's modules. Text only ever reaches the page through textContent or
// text nodes here; the one place that turns markup into elements is markdown.js (through DOMPurify).

export const $ = (id) => document.getElementById(id);

// el("button", {class: "x", text: "Go", onclick: fn}, child, "text", ...)
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

// Say something to screen reader users without showing it (a polite live region in index.html).
export function announce(text) {
  const region = $("announcer");
  region.textContent = "";
  setTimeout(() => {
    region.textContent = text;
  }, 50);
}

export const reducedMotion = () => window.matchMedia("(prefers-reduced-motion: reduce)").matches;

// The clipboard API needs a secure context (https, localhost); elsewhere fall back to a selected textarea.
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (err) {
      // permission refused: try the fallback
    }
  }
  const area = el("textarea", { class: "clipboard-buffer", readonly: true, "aria-hidden": "true" });
  area.value = text;
  document.body.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch (err) {
    copied = false;
  }
  area.remove();
  return copied;
}

// A "Copy" button that says "Copied" for a moment (and announces it through its live label).
export function copyButton(label, getText, className) {
  const button = el("button", { type: "button", class: `copy-button ${className || ""}`.trim(), text: "Copy" });
  button.setAttribute("aria-label", label);
  let timer = null;
  button.addEventListener("click", async () => {
    const copied = await copyText(getText());
    button.textContent = copied ? "Copied" : "Copy failed";
    button.dataset.state = copied ? "copied" : "failed";
    announce(copied ? "Copied to the clipboard." : "Could not copy; select the text and copy it by hand.");
    clearTimeout(timer);
    timer = setTimeout(() => {
      button.textContent = "Copy";
      delete button.dataset.state;
    }, 2000);
  });
  return button;
}
