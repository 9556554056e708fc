// Hopper dashboard: draws each page from the /v1 API and re-reads it when /v1/events says
// something changed. No framework and no build step; every value is inserted as text.
"use strict";

// ---- small helpers ----

/** Builds an element: h("a", {href: "/"}, "text", child). Attributes starting with "on" are listeners. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

class Unauthorized extends Error {}

/** Log lines a call page keeps on screen. */
const MAX_LOG_LINES = 5000;
/** Attempts a map's page shows (the first, by input); one input's are in the inspector. */
const MAP_ATTEMPTS = 50;

/** Calls the API. Changes carry the dashboard header, which the session cookie requires. */
async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: { "x-hopper-dashboard": "1" }, ...options };
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    init.headers["content-type"] = "application/json";
  }
  const res = await fetch(path, init);
  if (res.status === 401) throw new Unauthorized();
  if (res.status === 204) return null;
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const message = body && body.error ? `${body.error.message} (${body.error.code})` : `HTTP ${res.status}`;
    throw new Error(message);
  }
  return body;
}

function badge(state) {
  return h("span", { class: `badge s-${state}` }, state);
}

function when(iso) {
  if (!iso) return "—";
  const t = new Date(iso);
  const ago = (Date.now() - t.getTime()) / 1000;
  let rel;
  if (ago < 0) rel = "in " + span(-ago);
  else rel = span(ago) + " ago";
  return h("time", { datetime: iso, title: t.toLocaleString() }, rel);
}

/** A duration in its two largest units, rounded once (never "7m 60s"), zero parts left out. */
function span(seconds) {
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`;
  if (seconds < 59.5) return `${seconds.toFixed(seconds < 10 ? 1 : 0)}s`;
  const two = (big, small, unit, subunit, per) => {
    const a = Math.floor(big / per);
    const b = big % per;
    return b ? `${a}${unit} ${b}${subunit}` : `${a}${unit}`;
  };
  const secs = Math.round(seconds);
  if (secs < 3600) return two(secs, 0, "m", "s", 60);
  const mins = Math.round(seconds / 60);
  if (mins < 1440) return two(mins, 0, "h", "m", 60);
  return two(Math.round(seconds / 3600), 0, "d", "h", 24);
}

/** A time in a schedule's zone, to the minute or second, with the zone's name. */
function zoned(iso, zone) {
  try {
    return `${new Date(iso).toLocaleString(undefined, { timeZone: zone })} ${zone}`;
  } catch {
    return new Date(iso).toLocaleString();
  }
}

function ms(value) {
  if (value === undefined || value === null) return "—";
  return value < 1000 ? `${value.toFixed(value < 10 ? 1 : 0)} ms` : `${(value / 1000).toFixed(2)} s`;
}

function duration(from, to) {
  if (!from) return "—";
  const end = to ? new Date(to) : new Date();
  return span((end - new Date(from)) / 1000);
}

/** `n` and the noun, plural unless `n` is 1: "1 file", "1,204 files". */
function plural(n, noun) {
  return `${num(n)} ${noun}${n === 1 ? "" : "s"}`;
}

function num(n) {
  return (n || 0).toLocaleString();
}

/** Bytes in words: "812 B", "5.2 MB". */
function bytes(n) {
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let v = n, i = -1;
  do { v /= 1000; i++; } while (v >= 1000 && i < units.length - 1);
  return `${v.toFixed(1)} ${units[i]}`;
}

/** A byte string a payload holds (a blob reference, or inline base64), as its size and type
 * with a download link, never its content; null for any other value. */
function binary(value, label) {
  if (!value || typeof value !== "object" || Array.isArray(value)) return null;
  const keys = Object.keys(value);
  if (typeof value.$blob === "string" && typeof value.size === "number") {
    const kind = value.type === "json" ? "JSON stored as a blob" : "bytes";
    return h("div", { "data-blob": label }, `${kind}, ${bytes(value.size)} `,
      h("a", { href: `/v1/blobs/${value.$blob}`, download: `${label}-${value.$blob.slice(7, 19)}` }, "download"),
      h("span", { class: "muted" }, ` ${value.$blob.slice(0, 19)}…`));
  }
  if (keys.length === 1 && typeof value.$bytes === "string") {
    const size = Math.floor((value.$bytes.replace(/=+$/, "").length * 3) / 4);
    return h("div", { "data-blob": label }, `bytes, ${bytes(size)} `,
      h("a", { href: `data:application/octet-stream;base64,${value.$bytes}`, download: `${label}.bin` }, "download"));
  }
  return null;
}

/** Pretty JSON; large payloads start collapsed, bytes show as their size and a link. */
function json(value, label) {
  const shown = binary(value, label);
  if (shown) return shown;
  const text = JSON.stringify(value, null, 2);
  if (text === undefined) return h("span", { class: "muted" }, "—");
  if (text.length <= 2000) return h("pre", { "data-json": label }, text);
  const kb = (text.length / 1024).toFixed(1);
  return h("details", {}, h("summary", {}, `${label} (${kb} KB)`), h("pre", { "data-json": label }, text));
}

function link(href, text) {
  return h("a", { href, "data-nav": true }, text);
}

function notice(err) {
  return h("div", { class: "notice", role: "alert" }, String(err.message || err));
}

// ---- charts (SVG, drawn here) ----

/** A line chart of series over time: series = [{name, color, values}], times in ms. */
function lineChart(times, series, unit, W = 640) {
  const H = 200, L = 44, B = 22, T = 8, R = 8;
  const max = Math.max(1e-9, ...series.flatMap((x) => x.values));
  const top = niceMax(max);
  const x = (i) => L + (times.length < 2 ? 0 : (i / (times.length - 1)) * (W - L - R));
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img" });
  for (let k = 0; k <= 4; k++) {
    const v = (top * k) / 4;
    svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmtAxis(v)));
  }
  const labels = [0, Math.floor((times.length - 1) / 2), times.length - 1];
  for (const i of new Set(labels)) {
    if (times[i] === undefined) continue;
    const t = new Date(times[i]);
    svg.append(s("text", { x: x(i), y: H - 6, "text-anchor": i === 0 ? "start" : i === times.length - 1 ? "end" : "middle" },
      t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  }
  for (const line of series) {
    const points = line.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(s("polyline", { points, fill: "none", stroke: line.color, "stroke-width": 2, "vector-effect": "non-scaling-stroke" }));
  }
  svg.append(s("title", {}, `${series.map((x) => x.name).join(", ")} (${unit})`));
  const legend = h("div", { class: "legend" },
    series.map((x) => h("span", {}, h("i", {}), `${x.name}: ${fmtAxis(x.values[x.values.length - 1] || 0)} ${unit} now`)));
  legend.querySelectorAll("i").forEach((el, i) => { el.style.background = series[i].color; });
  return h("div", {}, svg, legend);
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 4, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmtAxis(v) {
  if (v >= 1000) return `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k`;
  if (v >= 10 || v === 0) return v.toFixed(0);
  return v.toFixed(v >= 1 ? 1 : 2);
}

/** Horizontal bars per row: rows = [{label, parts: [{cls, value}], text}]. */
function hbars(rows, scale) {
  const max = scale || Math.max(1, ...rows.map((r) => r.parts.reduce((a, p) => a + p.value, 0)));
  const grid = h("div", { class: "hbars" });
  for (const r of rows) {
    const track = h("div", { class: "track", role: "img", "aria-label": `${r.label}: ${r.text}` });
    for (const p of r.parts) {
      const bar = h("span", { class: p.cls, title: `${p.name}: ${p.value}` });
      bar.style.width = `${(100 * p.value) / max}%`;
      track.append(bar);
    }
    grid.append(h("div", {}, r.href ? link(r.href, r.label) : r.label), track, h("div", { class: "muted mono" }, r.text));
  }
  if (!rows.length) grid.append(h("div", { class: "muted" }, "No functions deployed yet."));
  return grid;
}

function countsBar(counts) {
  const total = Math.max(1, counts.total);
  const bar = h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": counts.total,
    "aria-valuenow": counts.succeeded + counts.failed + counts.cancelled });
  for (const k of ["succeeded", "failed", "cancelled", "running", "pending"]) {
    const part = h("span", { class: k, title: `${k}: ${counts[k]}` });
    part.style.width = `${(100 * counts[k]) / total}%`;
    bar.append(part);
  }
  return bar;
}

// ---- pages ----
// Each page is mount(params) -> { el, refresh }, refresh() re-reads and redraws its data.

function overviewPage() {
  const el = h("div", {}, h("h1", {}, "Overview"));
  const body = h("div", {});
  el.append(body);
  async function refresh() {
    const [st, channels] = await Promise.all([api("/v1/stats?window=15m"), api("/v1/notifications")]);
    const perSec = (n) => n / (st.step_ms / 1000);
    const times = st.timeline.map((p) => p.at);
    const totals = st.functions.reduce((a, f) => ({ pending: a.pending + f.pending, running: a.running + f.running,
      succeeded: a.succeeded + f.succeeded, failed: a.failed + f.failed }), { pending: 0, running: 0, succeeded: 0, failed: 0 });
    const tile = (n, l) => h("div", { class: "panel tile" }, h("div", { class: "n" }, n), h("div", { class: "l" }, l));
    const rows = st.functions;
    body.replaceChildren(
      h("div", { class: "tiles" },
        tile(num(totals.pending), "queued"),
        tile(num(totals.running), "running"),
        tile(num(totals.succeeded), "succeeded, 15 min"),
        tile(num(totals.failed), "failed, 15 min"),
        tile(num(st.workers), st.workers === 1 ? "worker" : "workers")),
      h("div", { class: "grid" },
        h("section", { class: "panel wide" }, h("h2", {}, "Inputs ended per second (last 15 minutes)"),
          lineChart(times, [
            { name: "succeeded", color: "var(--ok)", values: st.timeline.map((p) => perSec(p.succeeded)) },
            { name: "failed", color: "var(--bad)", values: st.timeline.map((p) => perSec(p.failed)) },
            { name: "retried", color: "var(--warn)", values: st.timeline.map((p) => perSec(p.retried)) },
          ], "/s", 1200)),
        h("section", { class: "panel" }, h("h2", {}, "Queue depth by function"),
          hbars(rows.map((f) => ({ label: f.function, href: `/functions/${encodeURIComponent(f.function)}`,
            parts: [{ cls: "c-running", value: f.running, name: "running" }, { cls: "c-pending", value: f.pending, name: "pending" }],
            text: `${num(f.running)} running · ${num(f.pending)} queued` }))),
          h("div", { class: "legend" }, h("span", {}, h("i", { class: "c-running" }), "running"), h("span", {}, h("i", { class: "c-pending" }), "queued"))),
        h("section", { class: "panel" }, h("h2", {}, "Duration by function (p50, p95; 15 min)"),
          hbars(rows.map((f) => ({ label: f.function, href: `/functions/${encodeURIComponent(f.function)}`,
            parts: [{ cls: "c-p50", value: f.p50_ms || 0, name: "p50" }, { cls: "c-p95", value: Math.max(0, (f.p95_ms || 0) - (f.p50_ms || 0)), name: "p95 − p50" }],
            text: `${ms(f.p50_ms)} · ${ms(f.p95_ms)}` }))),
          h("div", { class: "legend" }, h("span", {}, h("i", { class: "c-p50" }), "p50"), h("span", {}, h("i", { class: "c-p95" }), "p95"))),
        channels.length ? h("section", { class: "panel wide", id: "channels" }, h("h2", {}, "Failure notifications"),
          h("table", {}, h("thead", {}, h("tr", {}, ["App", "Channel", "Target", "State", "Delivered", "Failed tries", "Last delivered", "Last error"].map((t) => h("th", {}, t)))),
            h("tbody", {}, channels.map((c) => h("tr", { "data-channel": c.target },
              h("td", {}, c.app), h("td", {}, c.kind), h("td", { class: "mono" }, c.target), h("td", {}, badge(c.state)),
              h("td", { class: "num" }, num(c.delivered)), h("td", { class: "num" }, num(c.failed_attempts)),
              h("td", {}, when(c.last_delivered_at)), h("td", { class: "error" }, c.last_error || "")))))) : null,
      ));
  }
  return { el, refresh };
}

function functionsPage() {
  const el = h("div", {}, h("h1", {}, "Functions"));
  const body = h("div", { class: "panel" });
  el.append(body);
  async function refresh() {
    const [functions, st] = await Promise.all([api("/v1/functions"), api("/v1/stats?window=24h")]);
    const stats = Object.fromEntries(st.functions.map((f) => [f.function, f]));
    // Grouped by app, each app's functions under a row that names it.
    const apps = new Map();
    for (const f of [...functions].sort((a, b) => a.name.localeCompare(b.name))) {
      const app = f.name.split(".")[0];
      if (!apps.has(app)) apps.set(app, []);
      apps.get(app).push(f);
    }
    const columns = ["Function", "Version", "Kind", "Timeout", "Retries", "Concurrency", "Queued", "Running", "Success (24h)", "p50", "p95"];
    // A table, or (h skips null; replaceChildren would print it) the hint when nothing is deployed.
    body.replaceChildren(h("div", {}, functions.length ? h("table", { class: "functions" },
      h("thead", {}, h("tr", {}, columns.map((t, i) => h("th", { class: i > 3 ? "num" : "" }, t)))),
      [...apps].map(([app, list]) => h("tbody", {},
        h("tr", { class: "app" }, h("th", { colspan: columns.length, scope: "rowgroup" }, `${app} · ${plural(list.length, "function")}`)),
        list.map((f) => {
        const x = stats[f.name] || {};
        return h("tr", {},
          h("td", { class: "name" }, link(`/functions/${encodeURIComponent(f.name)}`, f.name)),
          h("td", {}, `v${f.version}`),
          h("td", {}, kind(f.spec)),
          h("td", {}, span(f.spec.timeout_ms / 1000)),
          h("td", { class: "num" }, f.spec.retries.max_retries),
          h("td", { class: "num" }, f.spec.concurrency),
          h("td", { class: "num" }, num(x.pending)),
          h("td", { class: "num" }, num(x.running)),
          h("td", { class: "num" }, rate(x.success_rate)),
          h("td", { class: "num" }, ms(x.p50_ms)),
          h("td", { class: "num" }, ms(x.p95_ms)));
      }))),
    ) : h("p", { class: "muted" }, "Nothing deployed yet: run hopper deploy.")));
  }
  return { el, refresh };
}

function kind(spec) {
  if (spec.serve && spec.serve.length) return spec.batch ? "serve, batched" : "serve";
  if (spec.command && spec.command.length) return "command";
  return "external";
}

function rate(r) {
  return r === undefined || r === null ? "—" : `${(100 * r).toFixed(r === 1 ? 0 : 1)}%`;
}

/** A function's limits in one line: "key /tenant · 20 running · 2 per key · 3000/m". */
function limitsText(l) {
  if (!l) return "none";
  const parts = [];
  if (l.key) parts.push(`key ${l.key}`);
  if (l.max_running) parts.push(`${l.max_running} running`);
  if (l.max_running_per_key) parts.push(`${l.max_running_per_key} running per key`);
  if (l.rate) parts.push(`${l.rate} started`);
  if (l.rate_per_key) parts.push(`${l.rate_per_key} started per key`);
  return parts.join(" · ");
}

/** Where a function's limits stand now: what runs, the busiest keys (where keys are in use),
 * and what waits and why. */
function limitsPanel(st, limits) {
  const holds = st.holds.length
    ? h("table", { id: "holds" },
      h("thead", {}, h("tr", {}, h("th", {}, "Waiting"), h("th", {}, "Why"), h("th", {}, "Next start"))),
      h("tbody", {}, st.holds.map((x) => h("tr", {},
        h("td", {}, num(x.waiting)), h("td", {}, x.reason),
        h("td", {}, x.next_start_at ? when(x.next_start_at) : "when one ends")))))
    : h("p", { class: "muted" }, "No limit holds inputs back now.");
  const keys = st.busiest_keys.length
    ? h("table", { id: "busiest-keys" },
      h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", {}, "Running"))),
      h("tbody", {}, st.busiest_keys.map((k) => h("tr", {}, h("td", {}, k.key), h("td", {}, num(k.running))))))
    : h("p", { class: "muted" }, "No key has inputs running.");
  return h("section", { class: "panel wide", id: "limits-state" },
    h("h2", {}, `Limits now: ${num(st.running)} running`),
    h("div", { class: "grid" },
      limits.key || limits.max_running_per_key || limits.rate_per_key || st.busiest_keys.length
        ? h("div", {}, h("h3", {}, "Busiest keys"), keys) : null,
      h("div", {}, h("h3", {}, "Held back"), holds)));
}

/** A function's resource request: `gpu A100:2, cpu 4, 16 GiB, zone=eu`, or "nothing". */
function needsText(r) {
  if (!r) return "nothing";
  const parts = [];
  if (r.gpu) parts.push(`gpu ${(r.gpu.kinds && r.gpu.kinds.length ? r.gpu.kinds.join("|") : "any")}${r.gpu.count > 1 ? `:${r.gpu.count}` : ""}`);
  if (r.cpu) parts.push(`cpu ${r.cpu}`);
  if (r.memory_bytes) parts.push(`${(r.memory_bytes / 1073741824).toFixed(1)} GiB`);
  for (const [k, v] of Object.entries(r.labels || {})) parts.push(`${k}=${v}`);
  return parts.length ? parts.join(", ") : "nothing";
}

function functionPage({ name }) {
  const el = h("div", {});
  async function refresh() {
    const q = encodeURIComponent(name);
    const [f, st, calls, versions] = await Promise.all([
      api(`/v1/functions/${q}`), api(`/v1/stats?window=24h&function=${q}`), api(`/v1/calls?function=${q}&limit=20`),
      api(`/v1/functions/${q}/versions`)]);
    const x = st.functions[0] || {};
    const spec = f.spec;
    const policy = [
      ["Version", `v${f.version}`], ["Kind", kind(spec)],
      ["Command", (spec.serve && spec.serve.length ? spec.serve : spec.command || []).join(" ") || "— (external workers)"],
      ["Timeout", span(spec.timeout_ms / 1000)],
      ["Retries", `${spec.retries.max_retries} (backoff ×${spec.retries.backoff_coefficient}, from ${span(spec.retries.initial_delay_ms / 1000)} to ${span(spec.retries.max_delay_ms / 1000)})`],
      ["Concurrency", spec.concurrency],
      ["Batching", spec.batch ? `up to ${spec.batch.max_size} inputs, waiting ${span(spec.batch.wait_ms / 1000)}` : "no"],
      ["Scaling", spec.scaling ? `${spec.scaling.min_workers}–${spec.scaling.max_workers} workers, buffer ${spec.scaling.buffer_workers}, scale down after ${span(spec.scaling.scaledown_window_ms / 1000)}` : "—"],
      ["Priority", String(spec.priority || 0)],
      ["Limits", limitsText(spec.limits)],
      ["Needs", needsText(spec.resources)],
      ["Start-up", f.startup && f.startup.last_ms != null ? `${span(f.startup.last_ms / 1000)} (last worker to start)` : "—"],
    ];
    const problems = [];
    if (f.waiting_for) problems.push(h("p", { class: "panel problem", id: "waiting-for" }, f.waiting_for));
    if (f.startup && f.startup.failed) {
      problems.push(h("p", { class: "panel problem", id: "startup-failed" }, `Its process failed at start: ${f.startup.failed}`));
    }
    el.replaceChildren(
      h("h1", {}, f.name, h("span", { class: "muted" }, `v${f.version}`)),
      ...problems,
      h("div", { class: "tiles" },
        ...[[num(x.pending), "queued"], [num(x.running), "running"], [rate(x.success_rate), "success, 24h"],
          [ms(x.p50_ms), "p50, 24h"], [ms(x.p95_ms), "p95, 24h"], [ms(x.p99_ms), "p99, 24h"]]
          .map(([n, l]) => h("div", { class: "panel tile" }, h("div", { class: "n" }, n), h("div", { class: "l" }, l)))),
      h("div", { class: "grid" },
        h("section", { class: "panel" }, h("h2", {}, "Policy"),
          h("dl", { class: "kv" }, policy.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
        h("section", { class: "panel" }, h("h2", {}, "Inputs ended per minute (24 h)"),
          lineChart(st.timeline.map((p) => p.at), [
            { name: "succeeded", color: "var(--ok)", values: st.timeline.map((p) => (p.succeeded * 60000) / st.step_ms) },
            { name: "failed", color: "var(--bad)", values: st.timeline.map((p) => (p.failed * 60000) / st.step_ms) },
          ], "/min")),
        f.limits_state ? limitsPanel(f.limits_state, spec.limits || {}) : null,
        h("section", { class: "panel wide" }, h("h2", {}, "Recent calls ", link(`/calls?function=${q}`, "all →")),
          callsTable(calls.calls)),
        h("section", { class: "panel wide" }, h("h2", {}, "Versions"), versionsTable(versions))));
  }
  return { el, refresh };
}

/** Where a version's code comes from: its snapshot (short hash, files, size), or the folder
 * its workers run from. */
function codeOf(v) {
  if (v.snapshot) {
    return `${v.snapshot.hash.slice(7, 19)} · ${plural(v.snapshot.files, "file")} · ${(v.snapshot.size / 1048576).toFixed(1)} MiB`;
  }
  if (v.spec.snapshot) return `${v.spec.snapshot.slice(7, 19)} (pruned)`;
  if (!(v.spec.command && v.spec.command.length) && !(v.spec.serve && v.spec.serve.length)) return "external";
  return `live folder ${v.spec.workdir}`;
}

/** A function's versions, newest first, each marked with what changed from the one before. */
function versionsTable(versions) {
  const summary = (v) => ({
    command: (v.spec.serve && v.spec.serve.length ? v.spec.serve : v.spec.command || []).join(" ") || "external",
    timeout: span(v.spec.timeout_ms / 1000),
    retries: String(v.spec.retries.max_retries),
    concurrency: String(v.spec.concurrency),
    batch: v.spec.batch ? `${v.spec.batch.max_size} / ${span(v.spec.batch.wait_ms / 1000)}` : "no",
    code: codeOf(v),
  });
  return h("table", { id: "versions" },
    h("thead", {}, h("tr", {}, ["Version", "Deployed", "Code", "Command", "Timeout", "Retries", "Concurrency", "Batching"].map((t) => h("th", {}, t)))),
    h("tbody", {}, versions.map((v, i) => {
      const now = summary(v);
      const before = versions[i + 1] ? summary(versions[i + 1]) : now;
      const cell = (k) => h("td", { class: now[k] !== before[k] ? "changed" : "", title: now[k] !== before[k] ? `was ${before[k]}` : null }, now[k]);
      return h("tr", {}, h("td", {}, `v${v.version}`), h("td", {}, when(v.deployed_at)),
        h("td", { class: now.code !== before.code ? "code changed" : "code", title: v.spec.snapshot || null }, now.code),
        cell("command"), cell("timeout"), cell("retries"), cell("concurrency"), cell("batch"));
    })));
}

/** A call's place in its function's queue, as `hopper calls` shows it: " (key acme, priority 5)". */
function queueNote(c) {
  const parts = [];
  if (c.key) parts.push(`key ${c.key}`);
  if (c.priority) parts.push(`priority ${c.priority}`);
  return parts.length ? h("span", { class: "muted" }, ` (${parts.join(", ")})`) : null;
}

function callsTable(calls) {
  if (!calls.length) return h("p", { class: "muted" }, "No calls match.");
  return h("table", { id: "calls" },
    h("thead", {}, h("tr", {}, ["Call", "Function", "State", "Origin", "Inputs", "Created", "Duration", "Error"].map((t) => h("th", {}, t)))),
    h("tbody", {}, calls.map((c) => h("tr", { "data-call": c.id },
      h("td", { class: "mono" }, link(`/calls/${c.id}`, c.id)),
      h("td", {}, c.function, queueNote(c)),
      h("td", {}, badge(c.state), c.starts_at && c.state === "pending" ? h("span", { class: "muted" }, ` starts ${new Date(c.starts_at).toLocaleString()}`) : null),
      h("td", {}, c.schedule ? `schedule ${c.schedule}` : c.origin),
      h("td", { class: "num" }, c.inputs.total === 1 ? "1" : `${num(c.inputs.succeeded + c.inputs.failed + c.inputs.cancelled)}/${num(c.inputs.total)}`),
      h("td", {}, when(c.created_at)),
      h("td", {}, duration(c.created_at, c.finished_at)),
      h("td", { class: "error" }, c.error ? `${c.error.code}: ${c.error.message}`.slice(0, 120) : "")))));
}

function callsPage() {
  const params = new URLSearchParams(location.search);
  const field = (name, control) => h("label", {}, name, control);
  const select = (name, options) => h("select", { name }, options.map(([v, t]) => h("option", { value: v, selected: params.get(name) === v }, t)));
  const fnSelect = select("function", [["", "all functions"]]);
  const appSelect = select("app", [["", "all apps"]]);
  const form = h("form", { class: "filters", role: "search" },
    field("Search by id", h("input", { name: "id", placeholder: "hc-…", size: 30, value: params.get("id") || "" })),
    field("App", appSelect),
    field("Function", fnSelect),
    field("State", select("state", [["", "any"], ...["pending", "running", "succeeded", "failed", "cancelled"].map((x) => [x, x])])),
    field("Origin", select("origin", [["", "any"], ["spawn", "spawn"], ["map", "map"], ["schedule", "schedule"], ["rerun", "re-run"]])),
    field("Since", select("since", [["", "any time"], ["15m", "15 minutes"], ["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"]])),
    field("Until (local time)", h("input", { name: "until", type: "datetime-local", value: params.get("until") || "" })),
    h("button", { type: "submit", class: "primary" }, "Filter"));
  const status = h("div", {});
  const table = h("div", { class: "panel" });
  const pager = h("div", { class: "pager" });
  const el = h("div", {}, h("h1", {}, "Calls"), form, status, table, pager);
  let cursors = [params.get("cursor") || ""];

  api("/v1/apps").then((apps) => {
    for (const a of apps) {
      appSelect.append(h("option", { value: a.name, selected: params.get("app") === a.name }, a.name));
      for (const f of a.functions) fnSelect.append(h("option", { value: f.name, selected: params.get("function") === f.name }, f.name));
    }
  }).catch(() => {});

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const id = String(data.get("id") || "").trim();
    if (id) {
      navigate(`/calls/${encodeURIComponent(id)}`);
      return;
    }
    const q = new URLSearchParams();
    for (const k of ["app", "function", "state", "origin", "since", "until"]) if (data.get(k)) q.set(k, data.get(k));
    navigate(`/calls${q.toString() ? "?" + q : ""}`);
  });

  async function refresh() {
    const p = new URLSearchParams(location.search);
    const q = new URLSearchParams({ limit: "50" });
    for (const k of ["app", "function", "state", "origin", "since"]) if (p.get(k)) q.set(k, p.get(k));
    if (p.get("until")) q.set("until", new Date(p.get("until")).toISOString());
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/v1/calls?${q}`);
    table.replaceChildren(callsTable(page.calls));
    pager.replaceChildren(
      h("button", { type: "button", disabled: cursors.length < 2, onclick: () => { cursors.pop(); refresh().catch(show); } }, "← Newer"),
      h("button", { type: "button", disabled: !page.next_cursor, onclick: () => { cursors.push(page.next_cursor); refresh().catch(show); } }, "Older →"));
    status.replaceChildren();
  }
  const show = (err) => status.replaceChildren(notice(err));
  // Older pages stay put; only the newest page follows live changes.
  return { el, refresh, live: () => cursors.length === 1 };
}

/** The last line of an error message that says what went wrong (not a traceback's frame). */
function errorLine(error) {
  if (!error) return "";
  const lines = String(error.message).split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("File ") && !/^[~^ ]+$/.test(l));
  return `${error.code}: ${lines.length ? lines[lines.length - 1] : ""}`.slice(0, 160);
}

// Failed inputs across calls (maps' too), newest failure first: filter, look, re-run.
function failedPage() {
  const params = new URLSearchParams(location.search);
  const field = (name, control) => h("label", {}, name, control);
  const fnSelect = h("select", { name: "function" }, h("option", { value: "" }, "all functions"));
  const sinceSelect = h("select", { name: "since" }, [["", "any time"], ["15m", "15 minutes"], ["1h", "1 hour"], ["24h", "24 hours"], ["7d", "7 days"]]
    .map(([v, t]) => h("option", { value: v, selected: (params.get("since") || "") === v }, t)));
  const form = h("form", { class: "filters", role: "search" },
    field("Function", fnSelect), field("Failed since", sinceSelect),
    params.get("call") ? h("input", { type: "hidden", name: "call", value: params.get("call") }) : null,
    h("button", { type: "submit", class: "primary" }, "Filter"));
  const status = h("div", { id: "rerun-status" });
  const table = h("div", { class: "panel" });
  const pager = h("div", { class: "pager" });
  const rerunButton = h("button", { type: "button", id: "rerun-selected", disabled: true, onclick: () => rerunSelected() }, "Re-run selected");
  const title = params.get("call") ? ["Failed inputs of ", link(`/calls/${params.get("call")}`, params.get("call"))] : ["Failed inputs"];
  const el = h("div", {}, h("h1", {}, ...title), form, h("div", { class: "actions" }, rerunButton), status, table, pager);
  let cursors = [""];
  api("/v1/apps").then((apps) => {
    for (const a of apps) for (const f of a.functions) fnSelect.append(h("option", { value: f.name, selected: params.get("function") === f.name }, f.name));
  }).catch(() => {});
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    navigate(`/failed${q.toString() ? "?" + q : ""}`);
  });
  const checked = () => [...table.querySelectorAll("input[type=checkbox][data-call]:checked")];
  async function rerunSelected() {
    rerunButton.disabled = true;
    const made = [];
    const refused = [];
    for (const box of checked()) {
      try {
        const call = await api(`/v1/calls/${box.dataset.call}/rerun`, { method: "POST", json: { index: Number(box.dataset.index) } });
        made.push(call.id);
      } catch (err) {
        refused.push(`${box.dataset.call} input ${box.dataset.index}: ${err.message}`);
      }
    }
    status.replaceChildren(h("p", { class: refused.length ? "notice" : "muted" }, `Re-ran ${plural(made.length, "input")}`,
      refused.length ? `; ${refused.length} refused: ${refused.join("; ")}` : ""));
    await refresh();
  }
  async function refresh() {
    const p = new URLSearchParams(location.search);
    const q = new URLSearchParams({ limit: "50" });
    for (const k of ["call", "function", "since"]) if (p.get(k)) q.set(k, p.get(k));
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/v1/inputs?${q}`);
    table.replaceChildren(page.inputs.length ? h("table", { id: "failed" },
      h("thead", {}, h("tr", {}, ["", "Call", "Input", "Function", "Failed", "Attempts", "Error", "Re-run"].map((t) => h("th", {}, t)))),
      h("tbody", {}, page.inputs.map((x) => {
        const last = x.reruns && x.reruns.length ? x.reruns[x.reruns.length - 1] : null;
        return h("tr", { "data-input": `${x.call_id}/${x.index}` },
          h("td", {}, h("input", { type: "checkbox", "aria-label": `select input ${x.index} of ${x.call_id}`, "data-call": x.call_id, "data-index": x.index, onchange: () => { rerunButton.disabled = !checked().length; } })),
          h("td", { class: "mono" }, link(`/calls/${x.call_id}`, x.call_id)),
          h("td", { class: "num" }, link(`/calls/${x.call_id}?input=${x.index}`, String(x.index))),
          h("td", {}, x.function),
          h("td", {}, when(x.finished_at)),
          h("td", { class: "num" }, String(x.attempts)),
          h("td", { class: "error" }, errorLine(x.error)),
          h("td", {}, last ? [link(`/calls/${last.call_id}`, last.call_id), " ", badge(last.state)] : ""));
      }))) : h("p", { class: "muted" }, "No failed inputs."));
    rerunButton.disabled = true;
    pager.replaceChildren(
      h("button", { type: "button", disabled: cursors.length < 2, onclick: () => { cursors.pop(); refresh().catch(show); } }, "← Newer"),
      h("button", { type: "button", disabled: !page.next_cursor, onclick: () => { cursors.push(page.next_cursor); refresh().catch(show); } }, "Older →"));
  }
  const show = (err) => status.replaceChildren(notice(err));
  // A page being ticked for a re-run is not redrawn under the user.
  return { el, refresh, live: () => cursors.length === 1 && !checked().length };
}

function callPage({ id }) {
  const el = h("div", {});
  const head = h("div", {});
  const details = h("div", { class: "grid" });
  const logBox = h("div", { class: "logs", id: "logs", tabindex: 0, "aria-label": "Logs" }, h("span", { class: "muted" }, "No log lines yet."));
  const logTitle = h("h2", {}, "Logs");
  const logPanel = h("section", { class: "panel wide" }, logTitle, logBox);
  const attemptsPanel = h("section", { class: "panel wide", id: "attempts" });
  el.append(head, details, h("div", { class: "grid" }, attemptsPanel, logPanel));
  let stream = null;
  let lines = 0;
  let followed = 0;
  let input = undefined;
  // The attempt pages of a map seen so far: each the `after` cursor it starts from.
  const pages = [undefined];
  // For a map: look at one input by index.
  const shown = h("div", {});
  const inspector = h("form", { class: "filters" },
    h("label", {}, "Input #", h("input", { name: "index", type: "number", min: 0, value: 0, size: 8 })),
    h("button", { type: "submit" }, "Show input"));
  const inspectorBox = h("div", {}, inspector, shown);
  // `?input=N` (a link from the failed inputs): that input, once the page is drawn.
  let asked = new URLSearchParams(location.search).get("input");
  inspector.addEventListener("submit", async (e) => {
    e.preventDefault();
    const index = new FormData(inspector).get("index");
    try {
      const x = await api(`/v1/calls/${id}/inputs/${encodeURIComponent(index)}`);
      follow(x.index);
      logTitle.textContent = `Logs of input ${x.index}`;
      shown.replaceChildren(h("div", { class: "panel" }, h("h2", {}, `Input ${x.index} `, badge(x.state), h("span", { class: "muted" }, ` ${plural(x.attempts, "attempt")}`)),
        h("div", { class: "muted" }, "Input"), json(x.input, "input"),
        x.error ? [h("div", { class: "muted" }, "Error"), h("pre", { class: "error" }, `${x.error.code}: ${x.error.message}`)] : null,
        x.output !== undefined ? [h("div", { class: "muted" }, "Output"), json(x.output, "output")] : null));
    } catch (err) {
      shown.replaceChildren(notice(err));
    }
  });

  /** Follows the logs (of one input of a map) until the call ends, resuming after the last
   * line seen if the connection drops. */
  function follow(index) {
    if (stream) stream.close();
    const generation = ++followed;
    let after = 0;
    lines = 0;
    logBox.replaceChildren(h("span", { class: "muted" }, "No log lines yet."));
    const open = () => {
      if (generation !== followed) return;
      const only = index === undefined ? "" : `&index=${index}`;
      stream = new EventSource(`/v1/calls/${id}/logs/stream?after=${after}${only}`);
      stream.addEventListener("line", (e) => {
        const l = JSON.parse(e.data);
        after = l.seq;
        if (lines === 0) logBox.replaceChildren();
        lines++;
        // The page keeps the last lines; `hopper logs` has them all.
        if (logBox.childElementCount >= MAX_LOG_LINES) logBox.firstElementChild.remove();
        const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
        logBox.append(h("div", { class: l.stream },
          h("span", { class: "ts" }, new Date(l.ts).toLocaleTimeString()),
          `[${l.index}#${l.attempt}] `, l.line));
        if (atBottom) logBox.scrollTop = logBox.scrollHeight;
      });
      stream.addEventListener("end", () => { stream.close(); stream = null; refresh().catch(() => {}); });
      stream.onerror = () => {
        // Reconnect from the last line seen, not from the start.
        if (stream) stream.close();
        stream = null;
        setTimeout(open, 1000);
      };
    };
    open();
  }

  async function act(button, path) {
    button.disabled = true;
    try {
      const res = await api(path, { method: "POST" });
      if (path.endsWith("/rerun") && res && res.id) navigate(`/calls/${res.id}`);
      else await refresh();
    } catch (err) {
      head.append(notice(err));
      button.disabled = false;
    }
  }

  async function refresh() {
    const c = await api(`/v1/calls/${id}`);
    const single = c.inputs.total === 1 && !c.accepting_inputs;
    // A map's attempts can be millions: they come a page at a time, by input; a full page
    // ends at a whole input (the next starts after it).
    const after = pages[pages.length - 1];
    let attempts = await api(`/v1/calls/${id}/attempts?limit=${single ? 1000 : MAP_ATTEMPTS}${after === undefined ? "" : `&after=${after}`}`);
    let next;
    if (!single && attempts.length >= MAP_ATTEMPTS) {
      const last = attempts[attempts.length - 1].index;
      const whole = attempts.filter((a) => a.index !== last);
      if (whole.length) attempts = whole;
      next = attempts[attempts.length - 1].index;
    }
    if (single && input === undefined) {
      input = (await api(`/v1/calls/${id}/inputs/0`)).input;
    }
    if (followed === 0) {
      // A map's logs are followed one input at a time (the one inspected).
      follow(single ? undefined : 0);
      logTitle.textContent = single ? "Logs" : "Logs of input 0";
    }
    const ended = ["succeeded", "failed", "cancelled"].includes(c.state);
    const cancel = h("button", { type: "button", class: "danger", id: "cancel", onclick: (e) => act(e.target, `/v1/calls/${id}/cancel`) }, "Cancel");
    const rerun = h("button", { type: "button", id: "rerun", onclick: (e) => act(e.target, `/v1/calls/${id}/rerun`) }, "Re-run");
    head.replaceChildren(h("h1", {}, h("span", { class: "mono" }, c.id), h("span", { id: "state" }, badge(c.state)),
      h("span", { class: "actions" }, ended ? null : cancel, single ? rerun : null)));
    const facts = [
      ["Function", link(`/functions/${encodeURIComponent(c.function)}`, c.function)],
      ["Version", `v${c.version}`],
      ["Origin", c.schedule ? `schedule ${c.schedule} (due ${new Date(c.due_at).toLocaleString()})`
        : c.rerun_of ? h("span", { id: "rerun-of" }, `re-run of input ${c.rerun_of.index} of `, link(`/calls/${c.rerun_of.call_id}`, c.rerun_of.call_id)) : c.origin],
      ["Created", h("span", {}, new Date(c.created_at).toLocaleString(), " (", when(c.created_at), ")")],
      ["Finished", c.finished_at ? new Date(c.finished_at).toLocaleString() : "—"],
      ["Duration", duration(c.created_at, c.finished_at)],
      ["Attempts", single ? c.attempts : "by input, below"],
    ];
    if (c.idempotency_key) facts.push(["Idempotency key", c.idempotency_key]);
    if (c.key) facts.push(["Key", h("span", { id: "key" }, c.key)]);
    if (c.priority) facts.push(["Priority", h("span", { id: "priority" }, String(c.priority))]);
    // A delayed call: pending until then, and cancellable meanwhile.
    if (c.starts_at) facts.push(["Starts", h("span", { id: "starts-at" }, new Date(c.starts_at).toLocaleString(), " (", when(c.starts_at), ")")]);
    // What of the function's limits holds its due inputs back now.
    if (c.waiting) facts.push(["Waiting", h("span", { id: "waiting" }, c.waiting)]);
    if (c.reruns && c.reruns.length) {
      facts.push(["Re-runs", h("span", { id: "reruns" }, c.reruns.map((r) => h("span", {},
        single ? "" : `input ${r.index}: `, link(`/calls/${r.call_id}`, r.call_id), " ", badge(r.state), " ")))]);
    }
    const summary = h("section", { class: "panel" }, h("h2", {}, "Call"), h("dl", { class: "kv" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    const panels = [summary];
    if (single) {
      const io = h("section", { class: "panel" }, h("h2", {}, "Input"), json(input, "input"));
      if (c.error) {
        io.append(h("h2", {}, "Error"), h("pre", { class: "error", id: "error" }, `${c.error.code}: ${c.error.message}`));
        // Where it failed, when the worker said (the function's own frames).
        if (c.error.traceback) io.append(h("pre", { class: "error", id: "traceback" }, c.error.traceback));
      }
      else if (c.state === "succeeded") io.append(h("h2", {}, "Output"), json(c.output === undefined ? null : c.output, "output"));
      panels.push(io);
    } else {
      const n = c.inputs;
      panels.push(h("section", { class: "panel" }, h("h2", {}, `Inputs: ${num(n.succeeded + n.failed + n.cancelled)} of ${num(n.total)} ended${c.accepting_inputs ? " (still taking inputs)" : ""}`),
        countsBar(n),
        h("div", { class: "legend" }, ["succeeded", "failed", "cancelled", "running", "pending"].map((k) => h("span", {}, h("i", { class: `c-${k === "cancelled" ? "pending" : k}` }),
          // The failed count leads to the list of them.
          k === "failed" && n.failed > 0 ? link(`/failed?call=${c.id}`, `failed ${num(n.failed)}`) : `${k} ${num(n[k])}`))),
        // The first failed input (the call's error is its error), one click from the inspector.
        c.failed_index === undefined || c.failed_index === null ? null : h("p", { id: "first-failed" }, "First failed: ",
          h("a", { href: "#", onclick: (e) => { e.preventDefault(); inspector.elements.index.value = c.failed_index; inspector.requestSubmit(); } }, `input ${num(c.failed_index)}`),
          c.error ? ` (${plural(c.attempts, "attempt")}): ${c.error.code}: ${c.error.message}`.slice(0, 300) : ""),
        inspectorBox,
        h("p", { class: "muted" }, "All results: ", h("code", {}, `hopper results ${c.id}`))));
    }
    details.replaceChildren(...panels);
    if (asked !== null && !single) {
      inspector.elements.index.value = asked;
      asked = null;
      inspector.requestSubmit();
    }
    const range = !single && attempts.length ? ` of inputs ${num(attempts[0].index)} to ${num(attempts[attempts.length - 1].index)}` : "";
    const pager = single || (pages.length === 1 && next === undefined) ? null : h("div", { class: "filters", id: "attempt-pages" },
      h("button", { type: "button", disabled: pages.length === 1, onclick: () => { pages.pop(); refreshCurrent(); } }, "Previous"),
      h("button", { type: "button", disabled: next === undefined, onclick: () => { pages.push(next); refreshCurrent(); } }, "Next"));
    // (replaceChildren would print a null: the pager is left out instead.)
    attemptsPanel.replaceChildren(...[h("h2", {}, `Attempts${range}`), pager].filter(Boolean), attempts.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["Input", "Attempt", "Outcome", "Worker", "Batch", "Started", "Ran for", "Error"].map((t) => h("th", {}, t)))),
      h("tbody", {}, attempts.map((a) => h("tr", {},
        h("td", { class: "num" }, a.index),
        h("td", { class: "num" }, a.attempt),
        h("td", {}, badge(a.outcome), a.late ? h("span", { class: "muted" }, " late") : null),
        h("td", { class: "mono" }, a.worker_id || "—"),
        h("td", { class: "num", title: "inputs in the batch this attempt ran in" }, a.batch_size ?? "—"),
        h("td", {}, when(a.started_at)),
        h("td", {}, duration(a.started_at, a.finished_at)),
        h("td", { class: "error" }, a.error ? `${a.error.code}: ${a.error.message}` : ""))))) : h("p", { class: "muted" }, "Not started yet."));
  }
  return { el, refresh, leave: () => { followed++; if (stream) stream.close(); } };
}

function workersPage() {
  const el = h("div", {}, h("h1", {}, "Workers"));
  const body = h("div", { class: "panel" });
  el.append(body);
  async function refresh() {
    const workers = await api("/v1/workers");
    body.replaceChildren(workers.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["Worker", "State", "Host", "PID", "Functions", "Running", "Slots", "Last heartbeat", "Since"].map((t) => h("th", {}, t)))),
      h("tbody", {}, workers.map((w) => h("tr", {},
        h("td", { class: "mono" }, w.id), h("td", {}, badge(w.state)), h("td", {}, w.host), h("td", { class: "num" }, w.pid),
        h("td", {}, w.functions.join(", ")), h("td", { class: "num" }, w.running), h("td", { class: "num" }, w.concurrency),
        h("td", {}, when(w.last_seen_at)), h("td", {}, when(w.registered_at)))))) :
      h("p", { class: "muted" }, "No workers in the last hour."));
  }
  return { el, refresh };
}

function schedulesPage() {
  const el = h("div", {}, h("h1", {}, "Schedules"));
  const status = h("div", {});
  const body = h("div", {});
  el.append(status, body);
  const open = new Set();
  async function act(name, verb) {
    try {
      await api(`/v1/schedules/${encodeURIComponent(name)}/${verb}`, { method: "POST" });
      await refresh();
    } catch (err) {
      status.replaceChildren(notice(err));
    }
  }
  async function refresh() {
    const list = await api("/v1/schedules");
    const detailed = await Promise.all(list.map((x) => (open.has(x.name) ? api(`/v1/schedules/${encodeURIComponent(x.name)}`) : x)));
    body.replaceChildren(...(detailed.length ? detailed.map((x) => h("section", { class: "panel", "data-schedule": x.name },
      h("h2", {}, x.name, " ", x.paused ? badge("paused") : null,
        h("span", { class: "actions" },
          h("button", { type: "button", onclick: () => act(x.name, "trigger") }, "Run now"),
          h("button", { type: "button", onclick: () => act(x.name, x.paused ? "resume" : "pause") }, x.paused ? "Resume" : "Pause"))),
      h("dl", { class: "kv" },
        h("dt", {}, "Function"), h("dd", {}, link(`/functions/${encodeURIComponent(x.function)}`, x.function)),
        h("dt", {}, "When"), h("dd", {}, x.cron ? `cron ${x.cron} (${x.timezone})` : `every ${x.every}`, `, overlap ${x.overlap}`),
        h("dt", {}, "Next"), h("dd", {}, x.paused ? "paused" : x.next_due_at ? h("span", {}, zoned(x.next_due_at, x.timezone), " (", when(x.next_due_at), ")") : "—"),
        h("dt", {}, "Last"), h("dd", {}, x.last_call_id
          ? h("span", {}, x.last_due_at ? when(x.last_due_at) : "run now", " → ", link(`/calls/${x.last_call_id}`, x.last_call_id), " ", badge(x.last_call_state || "pending"))
          : x.last_due_at ? when(x.last_due_at) : "never")),
      open.has(x.name) ? firingsTable(x) : h("button", { type: "button", onclick: () => { open.add(x.name); refresh().catch((e) => status.replaceChildren(notice(e))); } }, "Show history"),
    )) : [h("p", { class: "muted panel" }, "No schedules: add [schedules.NAME] to a manifest and deploy it.")]));
  }
  function firingsTable(x) {
    if (!x.firings || !x.firings.length) return h("p", { class: "muted" }, "No firings yet.");
    return h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Due"), h("th", {}, "Outcome"), h("th", {}, "Call"))),
      h("tbody", {}, x.firings.map((f) => h("tr", {}, h("td", {}, new Date(f.due_at).toLocaleString()), h("td", {}, badge(f.outcome)),
        h("td", { class: "mono" }, f.call_id ? link(`/calls/${f.call_id}`, f.call_id) : "—")))));
  }
  return { el, refresh };
}

// ---- routing, live updates and sign-in ----

const routes = [
  [/^\/$/, overviewPage, "/"],
  [/^\/functions$/, functionsPage, "/functions"],
  [/^\/functions\/([^/]+)$/, (m) => functionPage({ name: decodeURIComponent(m[1]) }), "/functions"],
  [/^\/calls$/, callsPage, "/calls"],
  [/^\/calls\/([^/]+)$/, (m) => callPage({ id: decodeURIComponent(m[1]) }), "/calls"],
  [/^\/failed$/, failedPage, "/failed"],
  [/^\/workers$/, workersPage, "/workers"],
  [/^\/schedules$/, schedulesPage, "/schedules"],
];

let current = null;
let refreshing = false;
let again = false;
let events = null;

function navigate(path) {
  history.pushState(null, "", path);
  render();
}

async function refreshCurrent() {
  if (!current) return;
  if (refreshing) { again = true; return; }
  refreshing = true;
  const page = current;
  try {
    await page.refresh();
    if (page.error) { page.error.remove(); page.error = null; }
  } catch (err) {
    if (err instanceof Unauthorized) return signIn();
    if (page === current && !page.error) {
      page.error = notice(err);
      page.el.prepend(page.error);
    }
  } finally {
    refreshing = false;
    if (again) { again = false; refreshCurrent(); }
  }
}

function render() {
  if (current && current.leave) current.leave();
  const path = location.pathname;
  const view = document.getElementById("view");
  for (const [pattern, make, tab] of routes) {
    const m = path.match(pattern);
    if (!m) continue;
    current = make(m);
    document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.getAttribute("href") === tab));
    view.replaceChildren(current.el);
    refreshCurrent();
    return;
  }
  current = null;
  view.replaceChildren(h("h1", {}, "Not found"), h("p", {}, link("/", "Back to the overview")));
}

function listen() {
  if (events) return;
  const live = document.getElementById("live");
  events = new EventSource("/v1/events");
  events.addEventListener("change", () => {
    live.classList.remove("off");
    if (current && (!current.live || current.live())) refreshCurrent();
  });
  events.onerror = () => live.classList.add("off");
  live.hidden = false;
}

function signIn(message) {
  if (events) { events.close(); events = null; }
  current = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("live").hidden = true;
  const error = h("p", { class: "error", role: "alert" }, message || "");
  const form = h("form", {},
    h("label", {}, "Token", h("input", { name: "token", type: "password", autocomplete: "current-password", required: true, autofocus: true })),
    h("button", { type: "submit", class: "primary" }, "Sign in"), error);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("/v1/session", { method: "POST", json: { token: new FormData(form).get("token") } });
      start();
    } catch (err) {
      error.textContent = err instanceof Unauthorized ? "That token is not valid." : String(err.message || err);
    }
  });
  document.getElementById("view").replaceChildren(h("div", { class: "panel signin" },
    h("h1", {}, "Sign in"), h("p", { class: "muted" }, "This server requires a token. It is kept in a cookie for this browser."), form));
  form.querySelector("input").focus();
}

async function start() {
  try {
    await api("/v1/stats?window=1m");
  } catch (err) {
    if (err instanceof Unauthorized) return signIn();
  }
  document.getElementById("nav").hidden = false;
  listen();
  render();
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-nav]");
  if (!a || e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", render);
start();
