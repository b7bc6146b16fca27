// Strand's console: helpers shared by the broker and saga pages. No framework, no build step;
// every value from the server is put in the page as text (never as HTML).
"use strict";

const Strand = (() => {
  const TOKEN_KEY = "strand-token";

  /** Builds an element: el("td", {class: "num"}, "42", child, ...). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** A table with a header row; each row is a list of cells (text, nodes, or {num: v}). */
  function table(headers, rows, attrs) {
    const cell = (tag, c) =>
      c !== null && typeof c === "object" && !(c instanceof Node) && "num" in c
        ? el(tag, { class: "num" }, c.num)
        : el(tag, {}, c);
    return el("table", attrs || {},
      el("thead", {}, el("tr", {}, headers.map((h) => cell("th", h)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => cell("td", c))))));
  }

  /** Calls the API with the stored bearer token; throws an Error whose message says why. */
  async function api(path, options) {
    const headers = Object.assign({ Accept: "application/json" }, (options || {}).headers);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    let response;
    try {
      response = await fetch(path, Object.assign({}, options, { headers }));
    } catch (e) {
      throw new Error("The server is unreachable (" + e.message + "). Is it running?");
    }
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
    if (!response.ok) {
      const why = body && body.error ? body.error : text || response.statusText;
      const hint = response.status === 401 ? " Enter a bearer token above."
        : response.status === 403 ? " The token does not allow this." : "";
      const error = new Error(response.status + ": " + why + hint);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message || "";
  }

  /** The header's token form: stored in sessionStorage, sent as Authorization. */
  function tokenForm(onChange) {
    const input = el("input", { type: "password", id: "token", placeholder: "bearer token (optional)",
      autocomplete: "off", value: sessionStorage.getItem(TOKEN_KEY) || "" });
    return el("form", { id: "token-form", onsubmit: (e) => {
      e.preventDefault();
      const value = input.value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
      onChange();
    } }, input, el("button", { type: "submit", class: "secondary" }, "Use token"));
  }

  function formatBytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function formatTime(ms) {
    if (ms === null || ms === undefined || ms < 0) return "";
    return new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
  }

  function formatDuration(ms) {
    if (ms === null || ms === undefined) return "";
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
    return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
  }

  function badge(text) {
    return el("span", { class: "badge " + String(text).toLowerCase() }, text);
  }

  /** A value as pretty JSON when it parses as JSON, else as text. */
  function showValue(text, asJson) {
    if (text === null || text === undefined) return el("span", { class: "muted" }, "null");
    if (asJson) {
      try { return el("pre", {}, JSON.stringify(JSON.parse(text), null, 2)); } catch (_) { /* text */ }
    }
    return el("pre", {}, text);
  }

  /** Asks before doing something that cannot be undone; resolves to true when confirmed. */
  function confirmAction(title, detail, action) {
    return new Promise((resolve) => {
      const dialog = el("dialog", { id: "confirm" },
        el("h2", {}, title), el("p", {}, detail),
        el("form", { method: "dialog", class: "bar" },
          el("button", { value: "cancel", class: "secondary" }, "Cancel"),
          el("button", { value: "ok", id: "confirm-ok", class: "danger" }, action)));
      dialog.addEventListener("close", () => { dialog.remove(); resolve(dialog.returnValue === "ok"); });
      document.body.append(dialog);
      dialog.showModal();
    });
  }

  /**
   * Runs a hash router: routes maps a first path segment to render(main, ...rest), which
   * may return a function that stops the page's timers. The layout has header, #error, main.
   */
  function start(title, links, routes, fallback) {
    const main = document.querySelector("main");
    const nav = document.querySelector("header nav");
    let stop = null;
    async function render() {
      if (stop) { stop(); stop = null; }
      showError("");
      const parts = (location.hash.replace(/^#\/?/, "").split("?")[0] || fallback).split("/").map(decodeURIComponent);
      for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.dataset.route === parts[0]);
      const page = routes[parts[0]] || routes[fallback];
      main.replaceChildren();
      try {
        stop = (await page(main, ...parts.slice(1))) || null;
      } catch (e) {
        showError(e.message);
      }
    }
    document.title = title;
    nav.replaceChildren(...links.map(([route, text]) => el("a", { href: "#/" + route, "data-route": route }, text)));
    document.querySelector("header").append(tokenForm(render));
    window.addEventListener("hashchange", render);
    render();
  }

  /** Calls fn now and every ms until the returned function is called. */
  function every(ms, fn) {
    let stopped = false;
    let timer = null;
    const tick = async () => {
      if (stopped) return;
      try { await fn(); showError(""); } catch (e) { showError(e.message); }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    tick();
    return () => { stopped = true; clearTimeout(timer); };
  }

  return { el, table, api, showError, formatBytes, formatTime, formatDuration, badge, showValue,
    confirmAction, start, every };
})();
