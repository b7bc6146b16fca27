// The broker's pages: topics, one topic with its message browser, consumer groups.
"use strict";

(() => {
  const { el, table, api, formatBytes, formatTime, badge, showValue, every } = Strand;
  const enc = encodeURIComponent;
  const link = (href, text) => el("a", { href }, text);
  const limit = (v) => (v < 0 ? "none" : v);

  async function topics(main) {
    main.append(el("h1", {}, "Topics"));
    const holder = el("div", { id: "topics" });
    main.append(holder);
    return every(5000, async () => {
      const { topics } = await api("/api/topics");
      holder.replaceChildren(topics.length === 0
        ? el("p", { class: "muted" }, "No topics yet: strand topic create NAME")
        : table(["Topic", { num: "Partitions" }, { num: "Records" }, { num: "Size" }, "Compact",
            "Retention ms", "Retention bytes"],
          topics.map((t) => [link("#/topic/" + enc(t.name), t.name), { num: t.settings.partitions },
            { num: t.records }, { num: formatBytes(t.size_bytes) }, t.settings.compact ? "yes" : "no",
            limit(t.settings.retention_ms), limit(t.settings.retention_bytes)])));
    });
  }

  /** One record's key, headers and value, the value as JSON or text. */
  function recordRow(r, asJson) {
    const bytes = (obj, name) => obj[name + "_base64"] !== undefined
      ? el("span", { class: "mono", title: "not UTF-8: base64" }, "base64:" + obj[name + "_base64"])
      : obj[name] === null ? el("span", { class: "muted" }, "null") : el("span", { class: "mono" }, obj[name]);
    const headers = r.headers.length === 0 ? "" : el("div", {},
      r.headers.map((h) => el("div", { class: "mono" }, bytes(h, "key"), " = ", bytes(h, "value"))));
    const value = r.value_base64 !== undefined ? bytes(r, "value") : showValue(r.value, asJson);
    return [{ num: r.offset }, formatTime(r.timestamp), bytes(r, "key"), headers, value];
  }

  async function topic(main, name) {
    const t = await api("/api/topics/" + enc(name));
    const s = t.settings;
    main.append(el("h1", {}, "Topic ", el("span", { class: "mono" }, t.name)),
      el("div", { class: "cards" },
        el("div", { class: "card" }, el("div", { class: "muted" }, "records"), el("div", { class: "n", id: "topic-records" }, t.records)),
        el("div", { class: "card" }, el("div", { class: "muted" }, "size on disk"), el("div", { class: "n" }, formatBytes(t.size_bytes))),
        el("div", { class: "card" }, el("div", { class: "muted" }, "partitions"), el("div", { class: "n" }, s.partitions))),
      el("h2", {}, "Settings"),
      el("dl", { class: "kv" },
        [["compact", s.compact ? "yes" : "no"], ["retention_ms", limit(s.retention_ms)],
        ["retention_bytes", limit(s.retention_bytes)], ["segment_bytes_max", s.segment_bytes_max],
        ["segment_ms_max", s.segment_ms_max], ["fsync", s.fsync]
      ].map(([k, v]) => [el("dt", {}, k), el("dd", { class: "mono" }, v)]).flat()),
      el("h2", {}, "Partitions"),
      table([{ num: "Partition" }, { num: "Log start" }, { num: "High watermark" }, { num: "Records" }, { num: "Size" }],
        t.partitions.map((p) => [{ num: p.partition }, { num: p.log_start_offset }, { num: p.high_watermark },
          { num: p.records }, { num: formatBytes(p.size_bytes) }]), { id: "partitions" }));

    // The message browser: a partition, from an offset or a time, a page at a time.
    const partition = el("select", { id: "partition" },
      t.partitions.map((p) => el("option", { value: p.partition }, String(p.partition))));
    const from = el("select", { id: "from" }, el("option", { value: "offset" }, "offset"),
      el("option", { value: "time" }, "time (UTC)"));
    const offset = el("input", { id: "offset", type: "number", min: 0, value: t.partitions[0] ? t.partitions[0].log_start_offset : 0 });
    const time = el("input", { id: "time", type: "datetime-local", step: 1 });
    const count = el("input", { id: "limit", type: "number", min: 1, max: 500, value: 50 });
    const asJson = el("select", { id: "format" }, el("option", { value: "json" }, "JSON"), el("option", { value: "text" }, "text"));
    const results = el("div", { id: "messages" });
    const next = el("button", { type: "button", class: "secondary", id: "next", disabled: true }, "Next page");
    let last = null;
    async function read(startOffset) {
      const q = new URLSearchParams({ partition: partition.value, limit: count.value });
      if (startOffset !== undefined) q.set("offset", startOffset);
      else if (from.value === "time") {
        if (!time.value) throw new Error("Pick a time to read from.");
        q.set("time", String(Date.parse(time.value + "Z")));
      } else q.set("offset", offset.value || "0");
      last = await api("/api/topics/" + enc(name) + "/messages?" + q);
      draw();
    }
    function draw() {
      const page = last;
      next.disabled = page.next_offset >= page.high_watermark;
      results.replaceChildren(
        el("p", { class: "muted" }, `partition ${page.partition}: ${page.records.length} record(s) from offset ${page.start_offset}; high watermark ${page.high_watermark}`),
        page.records.length === 0 ? el("p", { class: "muted" }, "No records there.")
          : table([{ num: "Offset" }, "Timestamp", "Key", "Headers", "Value"],
            page.records.map((r) => recordRow(r, asJson.value === "json")), { id: "records" }));
    }
    const run = (f) => f().catch((e) => Strand.showError(e.message));
    next.addEventListener("click", () => run(() => read(last.next_offset)));
    asJson.addEventListener("change", () => { if (last) draw(); });
    main.append(el("h2", {}, "Messages"),
      el("form", { class: "bar", id: "browse", onsubmit: (e) => { e.preventDefault(); run(() => read()); } },
        el("label", {}, "partition", partition), el("label", {}, "from", from),
        el("label", {}, "offset", offset), el("label", {}, "time", time),
        el("label", {}, "limit", count), el("label", {}, "show values as", asJson),
        el("button", { type: "submit", id: "read" }, "Read"), next),
      results);
  }

  async function groups(main) {
    main.append(el("h1", {}, "Consumer groups"));
    const holder = el("div", { id: "groups" });
    main.append(holder);
    return every(3000, async () => {
      const { groups } = await api("/api/groups");
      holder.replaceChildren(groups.length === 0
        ? el("p", { class: "muted" }, "No consumer groups yet.")
        : table(["Group", "State", { num: "Members" }, { num: "Lag" }],
          groups.map((g) => [link("#/group/" + enc(g.group), g.group), badge(g.state), { num: g.members }, { num: g.lag }])));
    });
  }

  async function group(main, name) {
    main.append(el("h1", {}, "Group ", el("span", { class: "mono" }, name)));
    const holder = el("div", { id: "group" });
    main.append(holder, el("p", { class: "muted" }, "Refreshed every 2 seconds."));
    return every(2000, async () => {
      const g = await api("/api/groups/" + enc(name));
      const lag = g.offsets.reduce((sum, o) => sum + (o.lag || 0), 0);
      holder.replaceChildren(
        el("div", { class: "cards" },
          el("div", { class: "card" }, el("div", { class: "muted" }, "state"), el("div", { class: "n" }, badge(g.state))),
          el("div", { class: "card" }, el("div", { class: "muted" }, "members"), el("div", { class: "n" }, g.members.length)),
          el("div", { class: "card" }, el("div", { class: "muted" }, "total lag"), el("div", { class: "n", id: "total-lag" }, lag)),
          el("div", { class: "card" }, el("div", { class: "muted" }, "generation"), el("div", { class: "n" }, g.generation))),
        el("h2", {}, "Members"),
        g.members.length === 0 ? el("p", { class: "muted" }, "No members: the group is idle.")
          : table(["Member", "Client", "Assigned partitions"], g.members.map((m) => [
            el("span", { class: "mono" }, m.member_id), m.client_id,
            m.assignment.map((a) => a.topic + "/" + a.partition).join(", ")]), { id: "members" }),
        el("h2", {}, "Committed offsets and lag"),
        table(["Topic", { num: "Partition" }, { num: "Committed" }, { num: "High watermark" }, { num: "Lag" }],
          g.offsets.map((o) => [link("#/topic/" + enc(o.topic), o.topic), { num: o.partition }, { num: o.committed },
            { num: o.high_watermark ?? "?" }, { num: o.lag ?? "?" }]), { id: "offsets" }));
    });
  }

  document.addEventListener("DOMContentLoaded", () =>
    Strand.start("Strand broker", [["topics", "Topics"], ["groups", "Consumer groups"]],
      { topics, topic, groups, group }, "topics"));
})();
