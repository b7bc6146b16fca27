// The saga orchestrator's pages: the saga list with filters and live counts, one saga's
// timeline with Abort and Retry, definitions with their versions and diffs, circuit breakers.
"use strict";

(() => {
  const { el, table, api, formatTime, formatDuration, badge, every, confirmAction } = Strand;
  const enc = encodeURIComponent;
  const link = (href, text) => el("a", { href }, text);
  const STATES = ["running", "compensating", "completed", "compensated", "failed"];
  const pretty = (v) => el("pre", {}, JSON.stringify(v, null, 2));
  /** Replaces node's children, leaving out the absent ones (replaceChildren would print "null"). */
  const fill = (node, ...children) => node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));

  /** The list's filters live in the hash: #/sagas?state=failed&definition=order. */
  function params() {
    const q = location.hash.split("?")[1] || "";
    return new URLSearchParams(q);
  }

  async function sagas(main) {
    const p = params();
    const state = el("select", { id: "f-state" }, el("option", { value: "" }, "any"),
      STATES.map((s) => el("option", { value: s, selected: p.get("state") === s }, s)));
    const definition = el("input", { id: "f-definition", placeholder: "definition", value: p.get("definition") || "" });
    const search = el("input", { id: "f-search", placeholder: "saga id or idempotency key", value: p.get("search") || "" });
    const from = el("input", { id: "f-from", type: "datetime-local", value: p.get("from") || "" });
    const to = el("input", { id: "f-to", type: "datetime-local", value: p.get("to") || "" });
    const counts = el("div", { class: "cards", id: "counts" });
    const holder = el("div", { id: "sagas" });
    const form = el("form", { class: "bar", id: "filters", onsubmit: (e) => {
      e.preventDefault();
      const q = new URLSearchParams();
      for (const [k, v] of [["state", state.value], ["definition", definition.value.trim()],
        ["search", search.value.trim()], ["from", from.value], ["to", to.value]]) if (v) q.set(k, v);
      location.hash = "#/sagas" + (q.toString() ? "?" + q : "");
    } }, el("label", {}, "state", state), el("label", {}, "definition", definition),
    el("label", {}, "search", search), el("label", {}, "created from (UTC)", from),
    el("label", {}, "created before (UTC)", to), el("button", { type: "submit", id: "apply" }, "Filter"));
    main.append(el("h1", {}, "Sagas"), form, counts, holder);
    let cursor = null;
    const query = () => {
      const q = new URLSearchParams({ limit: "50" });
      for (const k of ["state", "definition", "search"]) if (p.get(k)) q.set(k, p.get(k));
      if (p.get("from")) q.set("created_from_ms", String(Date.parse(p.get("from") + "Z")));
      if (p.get("to")) q.set("created_to_ms", String(Date.parse(p.get("to") + "Z")));
      if (cursor) q.set("cursor", cursor);
      return q;
    };
    return every(2000, async () => {
      const page = await api("/sagas?" + query());
      counts.replaceChildren(...STATES.map((s) => el("a", { class: "card", href: "#/sagas?state=" + s, "data-state": s },
        el("div", { class: "muted" }, s), el("div", { class: "n" }, page.counts[s] || 0))));
      fill(holder, page.sagas.length === 0
        ? el("p", { class: "muted" }, "No saga matches.")
        : table(["Saga", "Definition", "State", "Idempotency key", "Created", "Updated"],
          page.sagas.map((s) => [link("#/saga/" + enc(s.id), s.id), s.definition + " v" + s.version,
            badge(s.state), s.idempotency_key || "", formatTime(s.created_at_ms), formatTime(s.updated_at_ms)]),
          { id: "saga-list" }),
        page.next_cursor ? el("p", {}, el("button", { class: "secondary", onclick: () => { cursor = page.next_cursor; } }, "Next page")) : null);
    });
  }

  /** Every attempt of every step, in the order they started: the saga's timeline. */
  function timeline(saga, kinds) {
    const attempts = [];
    saga.steps.forEach((step, index) => {
      for (const a of step.attempts) attempts.push({ step, index, a });
    });
    attempts.sort((x, y) => x.a.started_at_ms - y.a.started_at_ms || x.index - y.index);
    const tone = (outcome) => (outcome === "succeeded" ? "ok" : outcome ? "bad" : "warn");
    return el("ol", { class: "timeline", id: "timeline" }, attempts.map(({ step, index, a }) => {
      const duration = a.ended_at_ms ? formatDuration(a.ended_at_ms - a.started_at_ms) : "in flight";
      const pivot = kinds[index] === "pivot" ? el("span", { class: "badge warn" }, "pivot") : null;
      return el("li", { class: tone(a.outcome) + " " + a.phase, "data-step": step.name, "data-phase": a.phase },
        el("div", {}, el("strong", {}, step.name), " ", el("span", { class: "badge " + (a.phase === "action" ? "info" : "warn") }, a.phase),
          " ", pivot, " attempt ", a.attempt, " · ", el("span", { class: "outcome" }, a.outcome || "in flight"), " · ", duration),
        el("div", { class: "muted" }, formatTime(a.started_at_ms)),
        a.error ? el("div", { class: "mono" }, "error: ", a.error) : null);
    }));
  }

  /** What Retry would do for a failed saga: the step whose attempt came last holds it. */
  function retryPlan(saga) {
    let last = null;
    for (const step of saga.steps) for (const a of step.attempts)
      if (!last || a.started_at_ms >= last.a.started_at_ms) last = { step, a };
    if (!last) return "Retry gives the step that holds the saga a fresh attempt budget.";
    const onward = last.a.phase === "compensation" ? "carries on compensating" : "carries on forward";
    return `Retry gives step ${last.step.name} a fresh attempt budget for its ${last.a.phase} and ${onward} from there.`;
  }

  async function saga(main, id) {
    const holder = el("div", { id: "saga" });
    main.append(holder);
    let kinds = [];
    let definitionKey = null;
    // An Abort or Retry the API refused stays on the page (the poll clears the page's error).
    let refused = "";
    async function operate(action) {
      const ok = await confirmAction(action === "abort" ? "Abort this saga?" : "Retry this saga?",
        action === "abort" ? "Its completed steps are compensated in reverse order. This cannot be undone."
          : "The held step is attempted again with a fresh budget.", action === "abort" ? "Abort" : "Retry");
      if (!ok) return;
      try {
        await api("/sagas/" + enc(id) + "/" + action, { method: "POST" });
        refused = "";
        Strand.showError("");
      } catch (e) {
        refused = action + " refused: " + e.message;
        Strand.showError(e.message);
      }
    }
    return every(1500, async () => {
      const s = await api("/sagas/" + enc(id));
      if (definitionKey !== s.definition + "/" + s.version) {
        definitionKey = s.definition + "/" + s.version;
        try {
          const d = await api("/definitions/" + enc(s.definition) + "/versions/" + s.version);
          kinds = d.steps.map((step) => step.kind);
        } catch (_) { kinds = []; }
      }
      const running = s.state === "running";
      const outputs = Object.fromEntries(s.steps.filter((st) => st.output !== null && st.output !== undefined).map((st) => [st.name, st.output]));
      fill(holder, 
        el("h1", {}, "Saga ", el("span", { class: "mono" }, s.id), " ", badge(s.state)),
        el("dl", { class: "kv" },
          el("dt", {}, "definition"), el("dd", {}, link("#/definition/" + enc(s.definition), s.definition), " v" + s.version),
          el("dt", {}, "idempotency key"), el("dd", {}, s.idempotency_key || "none"),
          el("dt", {}, "created"), el("dd", {}, formatTime(s.created_at_ms)),
          el("dt", {}, "updated"), el("dd", {}, formatTime(s.updated_at_ms)),
          el("dt", {}, "deadline"), el("dd", {}, s.deadline_at_ms ? formatTime(s.deadline_at_ms) : "none"),
          el("dt", {}, "steps"), el("dd", { id: "step-count" }, s.steps.length)),
        s.state === "failed" ? el("div", { class: "error", id: "why" }, "Failed: ", s.error || "held for an operator", ". ", retryPlan(s)) : null,
        s.compensation_reason ? el("p", { id: "compensation-reason" }, "Compensating because: ", s.compensation_reason) : null,
        el("form", { class: "bar" },
          el("button", { type: "button", id: "abort", class: "danger", disabled: !running, onclick: () => operate("abort") }, "Abort"),
          el("button", { type: "button", id: "retry", disabled: s.state !== "failed", onclick: () => operate("retry") }, "Retry")),
        refused ? el("div", { class: "error", id: "refused", role: "alert" }, refused) : null,
        el("h2", {}, "Steps"),
        table(["Step", "Kind", "State", { num: "Attempts" }, "Error"], s.steps.map((st, i) =>
          [st.name, kinds[i] || "", badge(st.state), { num: st.attempts.length }, st.error || ""]), { id: "steps" }),
        el("h2", {}, "Timeline"), timeline(s, kinds),
        el("h2", {}, "Input"), pretty(s.input),
        el("h2", {}, "Outputs"), pretty(outputs),
        el("h2", {}, "Journal"),
        table(["At", "Event", "Detail"], s.history.map((e) => {
          const { saga_id, at_ms, type, epoch, ...rest } = e;
          return [formatTime(at_ms), type, el("span", { class: "mono" }, JSON.stringify(rest))];
        }), { id: "history" }));
      if (s.state === "completed" || s.state === "compensated") return;
    });
  }

  async function definitions(main) {
    const list = await api("/definitions");
    main.append(el("h1", {}, "Definitions"), list.length === 0 ? el("p", { class: "muted" }, "No definitions yet.")
      : table(["Definition", { num: "Latest version" }, { num: "Steps" }, "Description"],
        list.map((d) => [link("#/definition/" + enc(d.name), d.name), { num: d.version }, { num: d.steps.length }, d.description || ""]),
        { id: "definitions" }));
  }

  /** Lines of a, b with a mark: "  " same, "- " only in a, "+ " only in b (LCS). */
  function diffLines(a, b) {
    const n = a.length, m = b.length;
    const lcs = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
    for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    const out = [];
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && a[i] === b[j]) { out.push("  " + a[i]); i++; j++; }
      else if (j < m && (i === n || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push("+ " + b[j]); j++; }
      else { out.push("- " + a[i]); i++; }
    }
    return out;
  }

  async function definition(main, name) {
    const versions = await api("/definitions/" + enc(name) + "/versions");
    const page = await api("/sagas?limit=1000&definition=" + enc(name));
    const byVersion = {};
    for (const s of page.sagas) byVersion[s.version] = (byVersion[s.version] || 0) + 1;
    const options = () => versions.map((d) => el("option", { value: d.version }, "v" + d.version));
    const left = el("select", { id: "diff-from" }, options());
    const right = el("select", { id: "diff-to" }, options());
    if (versions.length > 1) left.value = String(versions[1].version);
    const diff = el("pre", { id: "diff" });
    const show = () => {
      const text = (v) => JSON.stringify(versions.find((d) => String(d.version) === v), null, 2).split("\n");
      diff.replaceChildren(...diffLines(text(left.value), text(right.value)).map((line) =>
        el("div", { class: line.startsWith("+") ? "added" : line.startsWith("-") ? "removed" : "" }, line)));
    };
    left.addEventListener("change", show);
    right.addEventListener("change", show);
    main.append(el("h1", {}, "Definition ", el("span", { class: "mono" }, name)),
      el("h2", {}, "Versions"),
      table([{ num: "Version" }, "Steps", { num: "Sagas (in memory)" }],
        versions.map((d) => [{ num: "v" + d.version },
          d.steps.map((s) => s.name + (s.kind !== "compensatable" ? " (" + s.kind + ")" : "")).join(" → "),
          { num: byVersion[d.version] ? link("#/sagas?definition=" + enc(name), String(byVersion[d.version])) : "0" }]),
        { id: "versions" }),
      el("h2", {}, "Latest version"), pretty(versions[0]),
      el("h2", {}, "Diff"), el("form", { class: "bar" }, el("label", {}, "from", left), el("label", {}, "to", right)), diff);
    show();
  }

  async function breakers(main) {
    main.append(el("h1", {}, "Circuit breakers"));
    const holder = el("div", { id: "breakers" });
    main.append(holder);
    return every(2000, async () => {
      const all = await api("/breakers");
      const rows = Object.entries(all);
      fill(holder, rows.length === 0 ? el("p", { class: "muted" }, "No endpoint has been called yet.")
        : table(["Endpoint", "State", { num: "Consecutive failures" }, "Next trial"],
          rows.map(([endpoint, b]) => [el("span", { class: "mono" }, endpoint), badge(b.state.replace("_", "-")),
            { num: b.consecutive_failures }, b.retry_at_ms ? formatTime(b.retry_at_ms) : ""])));
    });
  }

  document.addEventListener("DOMContentLoaded", () =>
    Strand.start("Strand sagas", [["sagas", "Sagas"], ["definitions", "Definitions"], ["breakers", "Circuit breakers"]],
      { sagas, saga, definitions, definition, breakers }, "sagas"));
})();
