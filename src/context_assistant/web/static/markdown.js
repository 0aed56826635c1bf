// Answers as Markdown: marked (GFM: tables, task lists, fenced code) turns the text into HTML, DOMPurify
// keeps only an allow-list of elements and attributes and hands back DOM nodes (never a string the page
// parses). Raw HTML in an answer is never rendered: marked's html tokens are written out as escaped text, so
// "<img onerror=...>" shows as those characters. Links are kept only for http(s) and mailto, open in a new
// tab without a referrer; images become links (the page loads nothing from elsewhere).
// Both libraries are vendored (vendor/README.md).

import { Marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.mjs";
import { copyButton, el } from "./dom.js";

const SAFE_URL = /^(?:https?:|mailto:)/i;

function escapeHtml(text) {
  return String(text)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

const marked = new Marked({
  gfm: true,
  breaks: true, // a model's single line breaks are meant as line breaks
  renderer: {
    html(token) {
      return escapeHtml(token.text);
    },
    heading(token) {
      const level = Math.min(token.depth + 2, 6); // the page's own headings are h1/h2
      return `<h${level}>${this.parser.parseInline(token.tokens)}</h${level}>\n`;
    },
    link(token) {
      return SAFE_URL.test(token.href) ? false : escapeHtml(token.raw);
    },
    image(token) {
      if (!/^https?:/i.test(token.href)) return escapeHtml(token.raw);
      const label = token.text ? `Image: ${token.text}` : "Image";
      return `<a href="${escapeHtml(token.href)}">${escapeHtml(label)}</a>`;
    },
  },
});

const purifier = DOMPurify(window);
purifier.addHook("afterSanitizeAttributes", (node) => {
  if (node.nodeName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
  if (node.nodeName === "INPUT") {
    if (node.getAttribute("type") !== "checkbox") node.remove();
    else node.setAttribute("disabled", "");
  }
});
const PURIFY = {
  ALLOWED_TAGS: [
    "a", "blockquote", "br", "code", "del", "em", "h3", "h4", "h5", "h6", "hr", "input", "li", "ol", "p",
    "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
  ],
  ALLOWED_ATTR: ["href", "title", "class", "align", "type", "checked", "disabled", "start"],
  ALLOWED_URI_REGEXP: SAFE_URL,
  // DOMPurify checks other attributes' values against the URI pattern too; these hold plain words.
  ADD_URI_SAFE_ATTR: ["align", "type", "start"],
  RETURN_DOM_FRAGMENT: true,
};

// Markdown text -> a DocumentFragment of sanitised elements.
export function renderMarkdown(text) {
  const fragment = purifier.sanitize(marked.parse(text || ""), PURIFY);
  decorateCodeBlocks(fragment);
  return fragment;
}

// Each code block gets a header with its language and a Copy button.
function decorateCodeBlocks(root) {
  for (const pre of [...root.querySelectorAll("pre")]) {
    const code = pre.querySelector("code");
    const match = code && /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
    const lang = match ? match[1] : "";
    const block = el("div", { class: "code-block" });
    pre.replaceWith(block);
    block.append(
      el(
        "div",
        { class: "code-head" },
        el("span", { class: "code-lang", text: lang || "code" }),
        copyButton(
          lang ? `Copy the ${lang} code` : "Copy the code",
          () => (code || pre).textContent.replace(/\n$/, ""),
          "code-copy",
        ),
      ),
      pre,
    );
  }
}

const CITATION = /\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]/g;

// Turn "[2]" and "[1, 3]" in the text (not in code or links) into buttons for the sources that exist (the
// brackets go; each number becomes a small button named "Source n: path › heading").
// makeCitation(index) returns the element for one number. Returns the set of indices cited.
export function linkCitations(root, known, makeCitation) {
  const cited = new Set();
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) =>
      node.parentElement && node.parentElement.closest("code, pre, a")
        ? NodeFilter.FILTER_REJECT
        : NodeFilter.FILTER_ACCEPT,
  });
  const nodes = [];
  while (walker.nextNode()) {
    CITATION.lastIndex = 0;
    if (CITATION.test(walker.currentNode.nodeValue)) nodes.push(walker.currentNode);
  }
  for (const node of nodes) {
    const text = node.nodeValue;
    const parts = document.createDocumentFragment();
    let last = 0;
    CITATION.lastIndex = 0;
    let match;
    while ((match = CITATION.exec(text))) {
      const numbers = match[1].split(",").map((n) => parseInt(n.trim(), 10));
      if (!numbers.every((n) => known.has(n))) continue;
      parts.append(document.createTextNode(text.slice(last, match.index)));
      const group = el("span", { class: "citation" });
      for (const n of numbers) {
        group.append(makeCitation(n));
        cited.add(n);
      }
      parts.append(group);
      last = CITATION.lastIndex;
    }
    if (last === 0) continue;
    parts.append(document.createTextNode(text.slice(last)));
    node.replaceWith(parts);
  }
  return cited;
}
