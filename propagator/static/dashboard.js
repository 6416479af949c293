// The live dashboard: polls /admin/dashboard.json and draws it. No build step, no framework;
// every value from the server goes into the page as text (textContent), never as markup.
"use strict";

(function () {
  const POLL_MS = Number(document.body.dataset.pollMs) || 2000;
  const HISTORY = 150; // points kept per chart: five minutes at the default poll interval
  const PALETTE = ["#2b6cb0", "#c05621", "#2f855a", "#b83280", "#6b46c1", "#c53030",
                   "#2c7a7b", "#975a16", "#4a5568", "#d69e2e"];

  const ingestSeries = new Map(); // "source outcome" → [rate per poll]
  const latencySeries = new Map(); // "p50 subscriber" → [seconds per poll]
  const times = [];
  let previous = null; // {t, totals: Map} of the last poll, to turn totals into rates
  const charts = {};

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : String(child));
      }
    }
    return node;
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value === 0) return "0 s";
    if (value < 1) return (value * 1000).toFixed(value < 0.01 ? 1 : 0) + " ms";
    if (value < 120) return value.toFixed(1) + " s";
    return (value / 60).toFixed(1) + " min";
  }

  function count(value) {
    return value === null || value === undefined ? "–" : Math.round(value).toLocaleString("en");
  }

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toISOString().replace("T", " ").slice(0, 19) + "Z";
  }

  function badge(status) {
    return el("span", { class: "badge " + status, text: status });
  }

  function push(series, key, value) {
    if (!series.has(key)) series.set(key, new Array(times.length - 1).fill(null));
    series.get(key).push(value);
  }

  function trim() {
    while (times.length > HISTORY) {
      times.shift();
      for (const series of [ingestSeries, latencySeries]) {
        for (const values of series.values()) values.shift();
      }
    }
    for (const series of [ingestSeries, latencySeries]) {
      for (const values of series.values()) {
        while (values.length < times.length) values.push(null);
      }
    }
  }

  function draw(name, container, series, unit) {
    const keys = [...series.keys()].sort();
    const data = [times.slice(), ...keys.map((k) => series.get(k).slice())];
    const signature = keys.join("|");
    const width = Math.max(container.clientWidth, 300);
    if (!charts[name] || charts[name].signature !== signature) {
      if (charts[name]) charts[name].plot.destroy();
      const opts = {
        width: width,
        height: 220,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, unit === "s" ? 0.01 : 1)] } },
        axes: [{}, { values: (u, ticks) => ticks.map((t) => (unit === "s" ? seconds(t) : t.toFixed(t < 10 ? 1 : 0))), size: 60 }],
        series: [{}, ...keys.map((k, i) => ({ label: k, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true }))],
        legend: { show: true },
      };
      charts[name] = { plot: new uPlot(opts, data, container), signature: signature };
    } else {
      charts[name].plot.setData(data);
      if (Math.abs(charts[name].plot.width - width) > 4) charts[name].plot.setSize({ width: width, height: 220 });
    }
  }

  function updateCharts(body) {
    const t = Date.parse(body.generated_at) / 1000;
    times.push(t);
    const totals = new Map();
    for (const r of body.ingest.requests) totals.set(r.source + " " + r.outcome, r.total);
    for (const [key, total] of totals) {
      let rate = null;
      if (previous && t > previous.t) {
        const before = previous.totals.has(key) ? previous.totals.get(key) : 0;
        rate = Math.max(total - before, 0) / (t - previous.t);
      }
      push(ingestSeries, key, rate);
    }
    previous = { t: t, totals: totals };
    for (const s of body.subscribers) {
      if (!s.reporting) continue;
      push(latencySeries, "p50 " + s.name, s.propagation_seconds.p50);
      push(latencySeries, "p99 " + s.name, s.propagation_seconds.p99);
    }
    trim();
    draw("ingest", document.getElementById("ingest-chart"), ingestSeries, "rps");
    draw("latency", document.getElementById("latency-chart"), latencySeries, "s");
  }

  function renderSubscribers(subscribers) {
    const rows = subscribers.map((s) => {
      if (!s.reporting) {
        return el("tr", { "data-subscriber": s.name }, el("td", { text: s.name }),
          el("td", {}, badge("silent")), el("td", { colspan: "10", class: "muted", text: "no worker has reported this subscriber recently" }));
      }
      const retries = Object.entries(s.retries).sort().map(([level, n]) => level + ": " + count(n)).join(", ") || "0";
      const p = s.propagation_seconds;
      return el("tr", { "data-subscriber": s.name },
        el("td", { text: s.name }),
        el("td", {}, badge(s.circuit_open ? "open" : "closed")),
        el("td", { class: "num", text: count(s.applied) }),
        el("td", { class: "num", text: seconds(s.lag_seconds) }),
        el("td", { class: "num", text: count(s.lag_records) }),
        el("td", { text: retries }),
        el("td", { class: "num", text: count(s.dead_letters) }),
        el("td", { class: "num", text: count(s.dead_letter_depth) }),
        el("td", { class: "num", text: seconds(p.p50) }),
        el("td", { class: "num", text: seconds(p.p90) }),
        el("td", { class: "num", text: seconds(p.p99) }),
        el("td", { class: "muted", text: s.processes + " process" + (s.processes === 1 ? "" : "es") }));
    });
    document.querySelector("#subscribers tbody").replaceChildren(...rows);
  }

  function subject(event) {
    const value = event[event.scope + "_id"] || event.user_id || "";
    return event.scope + ":" + value;
  }

  function renderRevocations(revocations) {
    const rows = revocations.map((r) => {
      const e = r.event;
      const link = el("a", { href: "#", class: "event mono", text: e.event_id });
      link.addEventListener("click", (ev) => { ev.preventDefault(); openReceipt(e.event_id); });
      const statuses = el("td", {});
      for (const [name, s] of Object.entries(r.subscribers)) {
        statuses.append(el("span", { class: "mono", text: name + " " }), badge(s.status));
      }
      return el("tr", { "data-event-id": e.event_id },
        el("td", { class: "mono", text: when(e.received_at) }), el("td", {}, link),
        el("td", { text: e.source }), el("td", { text: e.type }), el("td", { text: e.scope }),
        el("td", { class: "mono", text: subject(e) }), statuses);
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "7", class: "muted", text: "no revocation yet" })));
    document.querySelector("#revocations tbody").replaceChildren(...rows);
  }

  async function fetchJSON(url) {
    const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (resp.status === 401) {
      window.location.assign("/dashboard"); // the login cookie expired
      throw new Error("signed out");
    }
    return { status: resp.status, body: await resp.json() };
  }

  async function openReceipt(eventId) {
    const panel = document.getElementById("receipt");
    panel.hidden = false;
    panel.replaceChildren(el("p", { class: "muted", text: "looking up " + eventId + "…" }));
    const { status, body } = await fetchJSON("/admin/revocations/" + encodeURIComponent(eventId));
    const close = el("button", { type: "button", class: "quiet", text: "close" });
    close.addEventListener("click", () => { panel.hidden = true; });
    if (status !== 200) {
      const message = (body.error && body.error.message) || "lookup failed (" + status + ")";
      panel.replaceChildren(el("h2", {}, "Receipt", close), el("p", { class: "error", text: message }));
      return;
    }
    const e = body.event;
    const facts = el("dl", {});
    for (const key of ["event_id", "type", "source", "scope", "user_id", "session_id", "organization_id", "occurred_at", "received_at", "payload_sha256"]) {
      if (e[key] === null || e[key] === undefined) continue;
      facts.append(el("dt", { text: key }), el("dd", { class: "mono", text: e[key] }));
    }
    const rows = Object.entries(body.subscribers).map(([name, s]) => el("tr", { "data-subscriber": name },
      el("td", { text: name }), el("td", {}, badge(s.status)), el("td", { class: "mono", text: when(s.at) }),
      el("td", { class: "num", text: s.attempts === undefined || s.attempts === null ? "–" : s.attempts }),
      el("td", { class: "num", text: seconds(s.latency_s) }),
      el("td", { class: "mono", text: [s.http_status, s.error].filter((x) => x).join(" ") || "" })));
    const verdict = body.applied_everywhere
      ? el("p", { class: "ok", text: "Applied by every subscriber it should reach." })
      : el("p", { class: "error", text: "Not applied everywhere yet." });
    panel.replaceChildren(
      el("h2", {}, el("span", {}, "Receipt ", el("span", { class: "mono", text: e.event_id })), close),
      facts, verdict,
      el("table", { id: "receipt-subscribers" },
        el("thead", {}, el("tr", {}, ...["subscriber", "status", "at", "attempts", "latency", "error"].map((h) => el("th", { text: h })))),
        el("tbody", {}, ...rows)));
  }

  async function poll() {
    const status = document.getElementById("status");
    try {
      const { body } = await fetchJSON("/admin/dashboard.json");
      updateCharts(body);
      renderSubscribers(body.subscribers);
      renderRevocations(body.revocations);
      const problems = document.getElementById("problems");
      problems.hidden = !body.problems.length;
      problems.textContent = body.problems.join("; ");
      document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
      status.textContent = "updated " + when(body.generated_at) + " · every " + POLL_MS / 1000 + " s";
    } catch (err) {
      status.textContent = "update failed: " + err.message + " (retrying)";
    } finally {
      window.setTimeout(poll, POLL_MS);
    }
  }

  document.getElementById("search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = document.getElementById("search-id").value.trim();
    if (id) openReceipt(id);
  });
  poll();
})();
