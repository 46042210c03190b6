// agentsight web UI: one session's timeline, process tree and LLM calls.
//
// Everything shown here comes from an agent, its tools or a model, none of
// them trusted. It only ever enters the page as text: text nodes,
// textContent and plain attributes (title, data-*). No markup is ever
// built from data; the server's Content-Security-Policy forbids inline
// script besides. And what could mislead a reader within text (controls,
// bidi overrides, zero-width and tag characters, line separators) is
// written out as an escape, as agentsight does on a terminal (ui/text.py).

const $ = (sel, root = document) => root.querySelector(sel);

const HIDDEN = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu;
const JOINERS = "\u200c\u200d"; // they shape emoji and scripts, and hide nothing
const hex = (n, w) => n.toString(16).padStart(w, "0");

function printable(text, keep = "\n\t") {
  return String(text).replace(HIDDEN, (ch) => {
    if (keep.includes(ch) || JOINERS.includes(ch)) return ch;
    const n = ch.codePointAt(0);
    return n < 0x100 ? `\\x${hex(n, 2)}` : n < 0x10000 ? `\\u${hex(n, 4)}` : `\\U${hex(n, 8)}`;
  });
}

const setText = (el, text) => { el.textContent = printable(text); };

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") Object.assign(el.style, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "href") el.setAttribute("href", String(v).startsWith("#") ? v : "#");
    else el.setAttribute(k, v === true ? "" : printable(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : printable(c));
  }
  return el;
}

async function api(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, String(v));
  }
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

// -- formatting ------------------------------------------------------------------

const pad = (n, w = 2) => String(n).padStart(w, "0");

function clock(ns) {
  if (ns === null || ns === undefined) return "?";
  const d = new Date(ns / 1e6);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function dur(ns) {
  if (ns === null || ns === undefined || !isFinite(ns)) return "?";
  const ms = ns / 1e6;
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
  const s = ms / 1000;
  if (s < 120) return `${s.toFixed(2)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

const rel = (ns) => `+${((ns - S.origin) / 1e9).toFixed(3)} s`;
const tokens = (n) => (n === null || n === undefined ? "?" : n >= 10000 ? `${(n / 1000).toFixed(1)}k` : String(n));
// As a shell would take it (the way `report` prints argv).
const shellQuote = (a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'"'"'`)}'`);
const cmdline = (argv) => (argv ? argv.map(shellQuote).join(" ") : "(no exec)");

function ending(p) {
  if (p.signal) return `signal ${p.signal}`;
  if (p.exit_code !== null && p.exit_code !== undefined) return `exit ${p.exit_code}`;
  return p.t1 ? "ended" : "running";
}

function evidenceText(e) {
  if (!e || typeof e !== "object") return "";
  return Object.entries(e).map(([k, v]) => (k === "after_llm_call_ms" ? `${v} ms after the call` : String(v))).join("; ");
}

// -- state -----------------------------------------------------------------------

const ALL_KINDS = ["llm", "tool", "process", "file", "loss"];
const KIND_NAMES = { llm: "LLM calls", tool: "tool calls", process: "processes", file: "files", loss: "losses" };

const S = {
  sessions: [], sid: null, summary: null, origin: 0,
  view: null, follow: false,
  kinds: new Set(ALL_KINDS), unexplained: false, proc: null, procLabel: "", q: "",
  items: new Map(), tools: new Map(), pendingLinks: new Map(), pendingUnexplained: new Map(),
  pendingResults: new Map(), pendingStartup: new Set(),
  counts: {}, more: {}, buckets: {}, recent: [],
  selected: null, selectedDetail: null,
  source: null, renderQueued: false, fetchSeq: 0, tree: null,
  drawn: new Map(), // what was drawn of each item at which version: reused while it has not changed
};

function drawn(key, item, make) {
  const d = S.drawn.get(key);
  if (d && d.v === item._v) return d.el;
  const el = make();
  S.drawn.set(key, { v: item._v, el });
  return el;
}

// Replaces `parent`'s children with `nodes`, touching only what differs from
// the first change on (live, that is the newest end).
function patchChildren(parent, nodes) {
  const old = parent.children;
  let i = 0;
  while (i < nodes.length && i < old.length && old[i] === nodes[i]) i++;
  while (old.length > i) parent.lastElementChild.remove();
  if (i < nodes.length) parent.append(...nodes.slice(i));
}

// -- routing -------------------------------------------------------------------------

window.addEventListener("hashchange", route);
route();

async function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (!S.sessions.length) S.sessions = (await api("/api/sessions")).sessions;
    if (parts[0] !== "s") {
      if (S.sessions.length === 1) { location.replace("#/s/0"); return; }
      return showSessions();
    }
    const sid = Number(parts[1]);
    if (!(sid >= 0 && sid < S.sessions.length)) return showError("no such session");
    if (S.sid !== sid) await openSession(sid);
    if (parts[2] === "call" && parts[3]) return showCall(parts.slice(3).join("/"));
    return showTimeline();
  } catch (err) {
    showError(err.message);
  }
}

function showError(message) {
  $("#main").replaceChildren(h("p", { class: "error" }, message));
}

function showSessions() {
  closeLive();
  S.sid = null;
  setText($("#title"), `${S.sessions.length} sessions`);
  $("#facts").textContent = "";
  const rows = S.sessions.map((s) => h("tr", { class: "session", dataset: { index: s.index } },
    h("td", null, h("a", { href: `#/s/${s.index}` }, s.path)),
    h("td", null, s.error ? s.error : s.status),
    h("td", { class: "mono" }, s.command ? cmdline(s.command) : ""),
    h("td", null, s.bounds ? clock(s.bounds[0]) : ""),
    h("td", null, s.bounds ? dur(s.bounds[1] - s.bounds[0]) : ""),
    h("td", null, s.totals ? String(s.totals.llm_calls) : ""),
    h("td", null, s.totals ? String(s.totals.processes) : "")));
  $("#main").replaceChildren(h("table", { class: "sessions" },
    h("thead", null, h("tr", null, ["session", "status", "command", "started", "length", "LLM calls", "processes"]
      .map((t) => h("th", null, t)))), h("tbody", null, rows)));
}

// -- one session ---------------------------------------------------------------------

async function openSession(sid) {
  closeLive();
  Object.assign(S, { sid, origin: 0, items: new Map(), tools: new Map(), pendingLinks: new Map(), pendingUnexplained: new Map(),
    pendingResults: new Map(), pendingStartup: new Set(),
    selected: null, selectedDetail: null, proc: null, q: "", unexplained: false, view: null, tree: null, recent: [] });
  await loadSummary();
  S.follow = S.summary.live;
  if (S.summary.live) openLive();
}

async function loadSummary() {
  const s = (S.summary = await api(`/api/s/${S.sid}/summary`));
  S.origin = S.origin ? Math.min(S.origin, s.bounds[0]) : s.bounds[0];
  S.clockSkew = Date.now() * 1e6 - s.now_ns;
  setText($("#title"), s.command ? cmdline(s.command) : s.pid ? `pid ${s.pid}` : s.path);
  $("#title").title = printable(s.path);
  $("#live").hidden = !s.live;
  const t = s.totals;
  setText($("#facts"), `${s.status} · ${dur(s.bounds[1] - s.bounds[0])} · ${t.llm_calls} LLM calls · ` +
    `${tokens(t.input_tokens)} in / ${tokens(t.output_tokens)} out · ${t.processes} processes · ` +
    `${t.files_written} file changes` + (s.command_exit !== null && s.command_exit !== undefined ? ` · exit ${s.command_exit}` : ""));
  showNotes();
}

function showNotes(extraLosses) {
  const s = S.summary;
  const notes = [...s.notes];
  const losses = Object.entries(Object.assign({}, s.losses, extraLosses || {})).filter(([, v]) => v);
  if (losses.length) notes.push("lost or cut: " + losses.map(([k, v]) => `${k} ${v}`).join(", "));
  $("#notes").replaceChildren(...notes.map((n) => h("div", { class: "note loss" }, n)));
}

function showTimeline() {
  const main = $("#main");
  if (!$("#session-view", main)) main.replaceChildren(sessionSkeleton());
  if (!S.view) S.view = { from: S.summary.bounds[0], to: S.summary.bounds[1] };
  if (!S.tree) loadTree();
  fetchTimeline();
}

function sessionSkeleton() {
  const kinds = ALL_KINDS.map((k) => h("label", { class: `kind k-${k}` },
    h("input", { type: "checkbox", checked: S.kinds.has(k), dataset: { kind: k }, onchange: (e) => {
      e.target.checked ? S.kinds.add(k) : S.kinds.delete(k);
      S.drawn = new Map();
      render();
    } }), KIND_NAMES[k]));
  let typing = null;
  const toolbar = h("div", { id: "toolbar" },
    h("span", { class: "group" }, kinds,
      h("label", { class: "kind" }, h("input", { type: "checkbox", id: "only-unexplained", onchange: (e) => {
        S.unexplained = e.target.checked;
        fetchTimeline();
      } }), "unexplained only")),
    h("span", { class: "group" },
      h("input", { type: "search", id: "search", placeholder: "search text", oninput: (e) => {
        clearTimeout(typing);
        typing = setTimeout(() => { S.q = e.target.value.trim(); fetchTimeline(); }, 250);
      } })),
    h("span", { id: "proc-filter", class: "group", hidden: true }),
    h("span", { class: "group" },
      h("button", { type: "button", id: "zoom-out", onclick: () => zoomBy(2) }, "zoom out"),
      h("button", { type: "button", id: "zoom-reset", onclick: zoomReset }, "whole session"),
      h("label", { class: "kind", id: "follow-label", hidden: !S.summary.live },
        h("input", { type: "checkbox", id: "follow", checked: S.follow, onchange: (e) => {
          S.follow = e.target.checked;
          if (S.follow) zoomReset();
        } }), "follow")),
    h("span", { id: "range", class: "muted" }));
  return h("div", { id: "session-view" }, toolbar,
    h("div", { id: "panes" },
      h("aside", { id: "tree-pane" }, h("h2", null, "Processes"), h("ul", { id: "tree", class: "tree" })),
      h("section", { id: "center" },
        h("div", { id: "chart" }), h("div", { id: "status", class: "muted" }), h("div", { id: "list" })),
      h("aside", { id: "detail-pane" }, h("p", { class: "muted" }, "Select a process to see it here."))));
}

async function fetchTimeline(extra = {}) {
  const seq = ++S.fetchSeq;
  const v = S.view;
  const params = { from: Math.floor(v.from), to: S.follow ? null : Math.ceil(v.to), q: S.q, proc: S.proc,
    unexplained: S.unexplained ? 1 : null, ...extra };
  let t;
  try {
    t = await api(`/api/s/${S.sid}/timeline`, params);
  } catch (err) {
    setText($("#status"), `could not load the timeline: ${err.message}`);
    return;
  }
  if (seq !== S.fetchSeq) return; // a newer request is on its way
  if (!extra.since) {
    S.items = new Map();
    S.tools = new Map();
    S.pruned = 0;
    S.drawn = new Map();
  }
  for (const item of t.items) addItem(item);
  for (const item of S.recent) if (!filtering()) mergeLive(item); // live items newer than the file's last commit
  S.counts = t.counts;
  S.more = t.more;
  S.buckets = t.buckets;
  S.origin = Math.min(S.origin || t.bounds[0], t.bounds[0]);
  if (S.follow) S.view = { from: t.bounds[0], to: Math.max(t.bounds[1], nowNs()) };
  render();
}

const filtering = () => Boolean(S.q || S.proc || S.unexplained);
const nowNs = () => Date.now() * 1e6 - (S.clockSkew || 0);

function addItem(item) {
  if (item.kind === "llm") {
    const old = S.items.get(item.id);
    S.items.set(item.id, old ? mergeFields(old, item) : Object.assign(item, { _v: 1 }));
    for (const tool of item.tools || []) {
      S.tools.set(tool.id, tool);
      const pending = S.pendingLinks.get(tool.id);
      if (pending) { for (const l of pending) addLink(l); S.pendingLinks.delete(tool.id); }
      if (S.pendingResults.has(tool.id)) { tool.result = S.pendingResults.get(tool.id); S.pendingResults.delete(tool.id); }
    }
    if (old) S.items.get(item.id).tools = item.tools.length ? item.tools : old.tools;
    return;
  }
  const old = S.items.get(item.id);
  const merged = old ? mergeFields(old, item) : Object.assign(item, { _v: 1 });
  S.items.set(item.id, merged);
  const u = S.pendingUnexplained.get(item.id);
  if (u) { merged.unexplained = u; S.pendingUnexplained.delete(item.id); }
  if (S.pendingStartup.delete(item.id)) merged.startup = true;
  if (merged.link) touchTool(merged.link.tool);
}

// Items come again with what changed (a process's exit); what is known stays.
// `_v` counts the changes, so what was drawn of an item is redrawn only when it changed.
function mergeFields(old, item) {
  for (const [k, v] of Object.entries(item)) if (v !== null && v !== undefined && k !== "_v") old[k] = v;
  old._v = (old._v || 0) + 1;
  return old;
}

// What a tool call caused changed: its call's rows are redrawn.
function touchTool(toolId) {
  const tool = S.tools.get(toolId);
  const call = tool && S.items.get(tool.call);
  if (call) call._v = (call._v || 0) + 1;
}

function addLink(l) {
  const tool = S.tools.get(l.tool);
  if (!tool) {
    if (!S.pendingLinks.has(l.tool)) S.pendingLinks.set(l.tool, []);
    S.pendingLinks.get(l.tool).push(l);
    return;
  }
  if (!tool.links.some((x) => x.target === l.target)) {
    tool.links.push({ target: l.target, target_kind: l.target_kind, evidence: l.evidence, role: l.role, item: l.item });
    tool.links_total = Math.max(tool.links_total || 0, tool.links.length);
  }
  const link = { tool: l.tool, evidence: l.evidence, role: l.role };
  const target = S.items.get(l.target);
  if (target) mergeFields(target, { link });
  else if (l.item && !filtering()) S.items.set(l.target, Object.assign({}, l.item, { link, _v: 1 }));
  touchTool(l.tool);
}

// -- live ------------------------------------------------------------------------------

function openLive() {
  let opened = false;
  const es = (S.source = new EventSource(`/api/s/${S.sid}/live`));
  es.addEventListener("open", () => {
    if (opened) resync(); // reconnected: what came meanwhile is in the file
    opened = true;
  });
  es.addEventListener("items", (e) => {
    const { items } = JSON.parse(e.data);
    const cutoff = Date.now() - 6000;
    S.recent = S.recent.filter((r) => r._seen > cutoff);
    for (const item of items) {
      item._seen = Date.now();
      S.recent.push(item);
      if (filtering()) continue;
      mergeLive(item);
      if (item.kind === "process") treeUpdate(item);
    }
    if (filtering()) refetchSoon();
    else queueRender();
  });
  let summaryAt = 0;
  es.addEventListener("stats", async (e) => {
    const st = JSON.parse(e.data);
    if (Date.now() - summaryAt > 2000) {
      summaryAt = Date.now();
      await loadSummary().catch(() => {});
    }
    showNotes(Object.assign({}, st.losses, st.feed_dropped ? { "live view: events not shown": st.feed_dropped } : {}));
  });
  es.addEventListener("resync", resync);
  es.addEventListener("end", async () => {
    es.close();
    S.source = null;
    await loadSummary();
    S.follow = false;
    const follow = $("#follow-label");
    if (follow) follow.hidden = true;
    if (S.view) { S.view = { from: S.summary.bounds[0], to: S.summary.bounds[1] }; fetchTimeline(); }
  });
}

// A tool call's result went back to the model.
function addResult(r) {
  const tool = S.tools.get(r.tool);
  if (!tool) {
    S.pendingResults.set(r.tool, r.result);
    return;
  }
  tool.result = r.result;
  touchTool(r.tool);
}

function mergeLive(item) {
  if (item.t0 && item.t0 < S.origin) {
    S.origin = item.t0;
    if (S.follow && S.view) S.view.from = Math.min(S.view.from, item.t0);
  }
  if (item.kind === "link") return addLink(item);
  if (item.kind === "tool_result") return addResult(item);
  if (item.kind === "startup") {
    const target = S.items.get(item.target);
    if (target) mergeFields(target, { startup: true });
    else if (item.item) S.items.set(item.target, Object.assign({}, item.item, { startup: true, _v: 1 }));
    else S.pendingStartup.add(item.target);
    return;
  }
  if (item.kind === "unexplained") {
    const target = S.items.get(item.target);
    if (target) mergeFields(target, { unexplained: item.reason });
    else if (item.item) S.items.set(item.target, Object.assign({}, item.item, { unexplained: item.reason, _v: 1 }));
    else S.pendingUnexplained.set(item.target, item.reason);
    return;
  }
  addItem(Object.assign({}, item));
}

function closeLive() {
  if (S.source) S.source.close();
  S.source = null;
}

let resyncTimer = null;
function resync() {
  clearTimeout(resyncTimer);
  resyncTimer = setTimeout(async () => { await loadSummary(); fetchTimeline(); }, 200);
}

let refetchTimer = null;
function refetchSoon() {
  if (refetchTimer) return;
  refetchTimer = setTimeout(() => { refetchTimer = null; fetchTimeline(); }, 1000);
}

// A long busy recording: the page keeps its newest activity; the rest is in the file.
const LIVE_KEEP = 6000;

function prune() {
  if (S.items.size <= LIVE_KEEP * 1.2) return;
  const old = [...S.items.values()].filter((i) => i.kind !== "llm").sort((a, b) => (a.t0 || 0) - (b.t0 || 0));
  const drop = old.slice(0, S.items.size - LIVE_KEEP);
  for (const item of drop) S.items.delete(item.id);
  S.pruned = (S.pruned || 0) + drop.length;
}

// Live: at most one render per 100 ms, or per twice the last render's time,
// so a busy stream never keeps the page from answering.
let renderCost = 0;
function queueRender() {
  if (S.renderQueued) return;
  S.renderQueued = true;
  setTimeout(() => {
    S.renderQueued = false;
    if (S.follow) S.view = { from: S.view.from, to: Math.max(S.view.to, nowNs()) };
    prune();
    const started = performance.now();
    render();
    renderCost = performance.now() - started;
  }, Math.max(100, 2 * renderCost));
}

// -- zoom ---------------------------------------------------------------------------------

function setView(from, to) {
  S.follow = false;
  const f = $("#follow");
  if (f) f.checked = false;
  const [lo, hi] = S.summary.bounds;
  S.view = { from: Math.max(lo, from), to: Math.max(from + 1e6, to) };
  if (S.view.to > hi && !S.summary.live) S.view.to = hi;
  fetchTimeline();
}

function zoomBy(factor) {
  const { from, to } = S.view;
  const mid = (from + to) / 2;
  const half = ((to - from) * factor) / 2;
  setView(mid - half, mid + half);
}

function zoomReset() {
  S.view = { from: S.summary.bounds[0], to: S.summary.bounds[1] };
  if (!S.summary.live) S.follow = false;
  fetchTimeline();
}

// -- what is shown ---------------------------------------------------------------------------

function visible() {
  const shown = [];
  for (const item of S.items.values()) {
    if (!S.kinds.has(item.kind)) {
      if (!(item.kind === "llm" && S.kinds.has("tool"))) continue;
    }
    shown.push(item);
  }
  shown.sort((a, b) => (a.t0 || 0) - (b.t0 || 0));
  return shown;
}

function render() {
  if (!$("#session-view")) return;
  if (S.drawnOrigin !== S.origin) { // every relative time changes
    S.drawn = new Map();
    S.drawnOrigin = S.origin;
  }
  const shown = visible();
  renderChart(shown);
  renderList(shown);
  const { from, to } = S.view;
  $("#range").textContent = `${rel(from)} … ${rel(to)} (${dur(to - from)})`;
  const more = Object.entries(S.more || {}).map(([k]) => `${KIND_NAMES[k]}: ${S.counts[k]} in this range, ` +
    "the first shown (zoom in to see the rest)");
  if (S.pruned) more.push(`${S.pruned} older processes and files are not kept by this page while it follows the ` +
    "recording: zoom in, or stop following, to see them");
  $("#status").replaceChildren(...more.map((m) => h("div", null, m)));
  const pf = $("#proc-filter");
  pf.hidden = !S.proc;
  pf.replaceChildren(...(S.proc ? ["only ", h("b", null, S.procLabel), " and its children ",
    h("button", { type: "button", onclick: () => { S.proc = null; fetchTimeline(); } }, "×")] : []));
  applyHighlight();
}

// -- the chart -------------------------------------------------------------------------------

const MAX_PROCESS_ROWS = 14;

function renderChart(shown) {
  const { from, to } = S.view;
  const span = Math.max(1, to - from);
  const x = (t) => ((t - from) / span) * 100;
  const clampX = (t) => Math.min(100, Math.max(0, x(t)));
  const place = (el, t0, t1, top) => {
    const left = clampX(t0);
    el.style.left = `${left}%`;
    el.style.width = `max(2px, ${Math.max(0, clampX(t1) - left)}%)`;
    if (top !== undefined) el.style.top = `${top}px`;
    return el;
  };
  const bar = (item, cls, label, title, onclick) => drawn(`bar:${item.id}`, item, () => {
    const el = h("div", { class: `bar ${cls}`, dataset: { id: item.id }, title, onclick },
      label ? h("span", { class: "bar-label" }, label) : null);
    return el;
  });
  const chart = $("#chart");
  if (!chart.firstElementChild) {
    const selection = h("div", { class: "selection", hidden: true });
    const tracks = h("div", { class: "tracks" }, h("div", { class: "axis" }), selection);
    dragToZoom(tracks, selection);
    chart.append(tracks);
    S.lanes = new Map();
    S.densities = new Map();
  }
  const tracks = chart.firstElementChild;
  const axisEl = tracks.querySelector(".axis");
  axisEl.replaceChildren(...axis(from, to));
  const lanes = [];
  const lane = (kind, name, height, bars, buckets) => {
    let l = S.lanes.get(kind);
    if (!l) {
      const track = h("div", { class: "track" });
      l = { el: h("div", { class: `lane lane-${kind}` }, h("div", { class: "lane-name" }, name), track), track };
      S.lanes.set(kind, l);
    }
    l.track.style.height = `${height}px`;
    let d = S.densities.get(kind);
    if (buckets && (!d || d.buckets !== buckets)) S.densities.set(kind, (d = { buckets, el: density(buckets) }));
    patchChildren(l.track, buckets ? [d.el, ...bars] : bars);
    lanes.push(l.el);
  };
  const calls = shown.filter((i) => i.kind === "llm");
  if (S.kinds.has("llm")) {
    lane("llm", "LLM calls", 24, calls.map((c) => {
      const el = bar(c, `llm${c.incomplete ? " incomplete" : ""}`, c.model || "?",
        `${c.model || "?"} · ${tokens(c.in)} in / ${tokens(c.out)} out · ${dur(c.t1 - c.t0)}` +
        (c.ttft !== null && c.ttft !== undefined ? ` · first token ${dur(c.ttft)}` : ""), () => openCall(c.id));
      if (c.ttft && c.t1 > c.t0 && !el.querySelector(".ttft")) {
        const t = h("div", { class: "ttft" });
        t.style.width = `${Math.min(100, (c.ttft / (c.t1 - c.t0)) * 100)}%`;
        el.prepend(t);
      }
      return place(el, c.t0, c.t1 || c.t0);
    }));
  }
  if (S.kinds.has("tool")) {
    const tools = calls.flatMap((c) => (c.tools || []).map((t) => [c, t]));
    lane("tool", "tool calls", 18, tools.map(([c, t]) => {
      let end = t.t0;
      for (const l of t.links) {
        const target = S.items.get(l.target) || l.item;
        if (target) end = Math.max(end, target.t1 || target.t0 || end);
      }
      const el = drawn(`bar:${t.id}`, c, () => h("div", { class: "bar tool", dataset: { id: t.id },
        title: `${t.name}: ${t.command || t.args || ""}` }, h("span", { class: "bar-label" }, t.name || "?")));
      return place(el, t.t0, end);
    }));
  }
  if (S.kinds.has("process")) {
    const procs = shown.filter((i) => i.kind === "process");
    const rowsEnd = [];
    const minGap = span / 400;
    const bars = procs.map((p) => {
      const end = p.t1 || Math.max(to, p.t0);
      let row = rowsEnd.findIndex((e) => e + minGap < p.t0);
      if (row < 0) row = rowsEnd.length < MAX_PROCESS_ROWS ? rowsEnd.length : MAX_PROCESS_ROWS - 1;
      rowsEnd[row] = Math.max(rowsEnd[row] || 0, end);
      const cls = `process${p.unexplained ? " unexplained" : ""}${p.link ? " linked" : ""}${p.startup ? " startup" : ""}`;
      const el = bar(p, cls, p.argv ? p.argv[0].split("/").pop() : p.comm,
        `pid ${p.pid} · ${cmdline(p.argv)} · ${ending(p)}${p.unexplained ? ` · unexplained: ${p.unexplained}` : ""}`,
        () => selectProcess(p.id));
      return place(el, p.t0, end, row * 12 + 2);
    });
    lane("process", "processes", Math.max(1, rowsEnd.length) * 12 + 4, bars, S.buckets.process);
  }
  if (S.kinds.has("file")) {
    const files = shown.filter((i) => i.kind === "file");
    lane("file", "files", 16, files.map((f) => place(bar(f, `file${f.unexplained ? " unexplained" : ""}${f.link ? " linked" : ""}`,
      null, `${f.op} ${f.path}${f.new_path ? ` → ${f.new_path}` : ""} (pid ${f.pid})`, () => f.proc && selectProcess(f.proc)),
    f.t0, f.t0)), S.buckets.file);
  }
  const marks = S.kinds.has("loss") ? shown.filter((i) => i.kind === "loss" || (i.kind === "llm" && i.incomplete)) : [];
  const overlay = h("div", { class: "marks" }, marks.map((m) => {
    const el = h("div", { class: "mark", dataset: { id: m.id }, title: m.kind === "loss" ? m.what : `incomplete LLM call: ${m.incomplete_reason || ""}` });
    el.style.left = `${clampX(m.t0)}%`;
    return el;
  }));
  const selection = tracks.querySelector(".selection");
  patchChildren(tracks, [axisEl, ...lanes, overlay, selection]);
}

function density(buckets) {
  const peak = Math.max(1, ...buckets);
  const el = h("div", { class: "density" }, buckets.map((n) => {
    const b = h("span");
    b.style.opacity = n ? String(0.15 + (0.6 * n) / peak) : "0";
    return b;
  }));
  return el;
}

function axis(from, to) {
  const span = to - from;
  const steps = [1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8, 2e8, 5e8, 1e9, 2e9, 5e9, 1e10, 3e10, 6e10, 1.2e11, 3e11, 6e11,
    1.2e12, 3.6e12];
  const step = steps.find((s) => span / s <= 10) || 3.6e12;
  const ticks = [];
  for (let t = Math.ceil((from - S.origin) / step) * step + S.origin; t <= to; t += step) {
    const tick = h("span", { class: "tick" }, `${((t - S.origin) / 1e9).toFixed(step < 1e9 ? 3 : 0)} s`);
    tick.style.left = `${((t - from) / span) * 100}%`;
    ticks.push(tick);
  }
  return [h("div", { class: "lane-name" }, clock(from)), h("div", { class: "track" }, ticks)];
}

function dragToZoom(tracks, selection) {
  let start = null;
  const fraction = (e) => {
    const track = $(".lane .track", tracks) || tracks;
    const r = track.getBoundingClientRect();
    return { f: Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)), r };
  };
  tracks.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    start = fraction(e);
    start.x = e.clientX;
  });
  tracks.addEventListener("pointermove", (e) => {
    if (!start || Math.abs(e.clientX - start.x) < 5) return;
    const now = fraction(e);
    const base = tracks.getBoundingClientRect().left;
    selection.hidden = false;
    selection.style.left = `${Math.min(e.clientX, start.x) - base}px`;
    selection.style.width = `${Math.abs(e.clientX - start.x)}px`;
    start.last = now.f;
  });
  const end = (e) => {
    if (start && start.last !== undefined && Math.abs(e.clientX - start.x) >= 5) {
      const { from, to } = S.view;
      const [a, b] = [start.f, start.last].sort((p, q) => p - q);
      setView(from + a * (to - from), from + b * (to - from));
    }
    start = null;
    selection.hidden = true;
  };
  tracks.addEventListener("pointerup", end);
  tracks.addEventListener("pointerleave", end);
}

// -- the list --------------------------------------------------------------------------------

const MAX_ROWS = 3000;

// A row of the list: one line of facts, then what goes below it (evidence, a snippet).
function row(props, line, below) {
  return h("div", props, h("div", { class: "line" }, line), below);
}

function renderList(shown) {
  // What a tool call in view caused is shown under it (or counted there), not again on its own.
  const nested = new Set();
  const toolsShown = new Set();
  for (const item of shown) {
    if (item.kind !== "llm" || !S.kinds.has("tool")) continue;
    for (const t of item.tools || []) {
      toolsShown.add(t.id);
      for (const l of t.links) nested.add(l.target);
    }
  }
  const rows = [];
  for (const item of shown) {
    if (rows.length >= MAX_ROWS) break;
    if (nested.has(item.id) || (item.link && toolsShown.has(item.link.tool))) continue;
    const make = item.kind === "llm" ? () => callRow(item) : item.kind === "process" ? () => processRow(item)
      : item.kind === "file" ? () => fileRow(item) : item.kind === "loss" ? () => row({ class: "row loss", dataset: { id: item.id } },
        [h("span", { class: "time" }, rel(item.t0)), h("span", { class: "badge loss" }, "loss"), h("span", null, item.what)]) : null;
    if (make) rows.push(drawn(`row:${item.id}`, item, make));
  }
  if (!rows.length) rows.push(h("p", { class: "muted" }, "Nothing in this range" + (filtering() ? " for this filter." : ".")));
  patchChildren($("#list"), rows);
}

function callRow(c) {
  const head = row({ class: `row llm${c.incomplete ? " incomplete" : ""}`, dataset: { id: c.id }, onclick: () => openCall(c.id) },
    [h("span", { class: "time", title: clock(c.t0) }, rel(c.t0)),
    h("span", { class: "badge llm" }, "LLM"),
    h("span", { class: "model" }, c.model || "?"),
    h("span", { class: "facts" }, `${tokens(c.in)} in / ${tokens(c.out)} out · ${dur(c.t1 - c.t0)}` +
      (c.ttft !== null && c.ttft !== undefined ? ` · first token ${dur(c.ttft)}` : "") +
      (c.status && c.status !== 200 ? ` · status ${c.status}` : "")),
    c.incomplete ? h("span", { class: "badge loss" }, `incomplete${c.incomplete_reason ? `: ${c.incomplete_reason}` : ""}`) : null,
    h("a", { class: "open", href: `#/s/${S.sid}/call/${encodeURIComponent(c.id)}` }, "details")],
    c.text ? h("div", { class: "snippet" }, c.text + (c.text_cut ? "…" : "")) : null);
  if (!S.kinds.has("llm")) head.hidden = true;
  const tools = S.kinds.has("tool") ? (c.tools || []).map(toolBlock) : [];
  return h("div", { class: "call-group" }, head, tools);
}

const LINKS_SHOWN = 5;

function toolBlock(t) {
  const linked = t.links.slice(0, LINKS_SHOWN).map((l) => {
    const target = S.items.get(l.target) || l.item;
    if (!target) return row({ class: "row linked-row", dataset: { id: l.target } }, [`${l.target_kind} ${l.target}`]);
    const shown = target.link ? target : Object.assign({}, target, { link: { tool: t.id, role: l.role } });
    return shown.kind === "file" ? fileRow(shown, l.evidence) : processRow(shown, l.evidence);
  });
  const total = Math.max(t.links_total || 0, t.links.length);
  const more = total > linked.length ? h("div", { class: "more-links" },
    h("a", { href: `#/s/${S.sid}/call/${encodeURIComponent(t.call)}` }, `and ${total - linked.length} more linked`)) : null;
  return h("div", { class: "tool-group" },
    row({ class: "row tool", dataset: { id: t.id } },
      [h("span", { class: "time", title: clock(t.t0) }, rel(t.t0)),
      h("span", { class: "badge tool" }, "tool"),
      h("span", { class: "tool-name" }, t.name || "?"),
      h("code", { class: "command" }, t.command !== null && t.command !== undefined ? t.command : t.args),
      t.args_cut || (t.command && t.command.length >= 2000) ? h("span", { class: "muted" }, " …") : null,
      t.links.length ? null : h("span", { class: "muted" }, " (no activity linked)"),
      t.result ? h("span", { class: `facts${t.result.is_error ? " failed" : ""}` }, resultText(t.result)) : null]),
    linked.length ? h("div", { class: "nested" }, linked, more) : more);
}

function resultText(r) {
  return `result back after ${dur(r.duration_ns)}${r.is_error ? " (an error)" : ""} · ${r.size} characters`;
}

// What a linked row was to its tool call, when it was not the command's own doing.
function roleBadge(link) {
  return link && link.role && link.role !== "command" ? h("span", { class: `badge role ${link.role}` }, link.role) : null;
}

function processRow(p, evidence) {
  const cls = `row process${p.unexplained ? " unexplained" : ""}${evidence ? " linked-row" : ""}`;
  return row({ class: cls, dataset: { id: p.id }, onclick: (e) => { e.stopPropagation(); selectProcess(p.id); } },
    [h("span", { class: "time", title: clock(p.t0) }, rel(p.t0)),
    h("span", { class: "badge process" }, "ran"),
    h("code", { class: "argv" }, cmdline(p.argv) + (p.argv_cut ? " …" : "")),
    h("span", { class: "facts" }, `pid ${p.pid} · ${ending(p)}${p.t1 ? ` · ${dur(p.t1 - p.t0)}` : ""}`),
    p.unexplained ? h("span", { class: "badge unexplained" }, `unexplained: ${p.unexplained}`) : null,
    p.startup ? h("span", { class: "badge startup" }, "start-up") : null, evidence ? roleBadge(p.link) : null],
    evidence ? h("div", { class: "evidence" }, evidenceText(evidence)) : null);
}

function fileRow(f, evidence) {
  const cls = `row file${f.unexplained ? " unexplained" : ""}${evidence ? " linked-row" : ""}`;
  return row({ class: cls, dataset: { id: f.id }, onclick: (e) => { e.stopPropagation(); if (f.proc) selectProcess(f.proc); } },
    [h("span", { class: "time", title: clock(f.t0) }, rel(f.t0)),
    h("span", { class: "badge file" }, f.op),
    h("code", { class: "path" }, f.path + (f.new_path ? ` → ${f.new_path}` : "")),
    h("span", { class: "facts" }, `pid ${f.pid}`),
    f.unexplained ? h("span", { class: "badge unexplained" }, `unexplained: ${f.unexplained}`) : null,
    f.startup ? h("span", { class: "badge startup" }, "start-up") : null, evidence ? roleBadge(f.link) : null],
    evidence ? h("div", { class: "evidence" }, evidenceText(evidence)) : null);
}

// -- selecting a process --------------------------------------------------------------------------

async function selectProcess(id) {
  S.selected = id;
  S.selectedDetail = null;
  applyHighlight();
  const pane = $("#detail-pane");
  if (!pane) return;
  try {
    const p = await api(`/api/s/${S.sid}/process`, { id });
    if (S.selected !== id) return;
    S.selectedDetail = p;
    applyHighlight();
    pane.replaceChildren(processDetail(p));
  } catch (err) {
    pane.replaceChildren(h("p", { class: "error" }, err.message));
  }
}

function related(id) {
  const ids = new Set([id]);
  const tools = new Set();
  const p = S.items.get(id) || S.selectedDetail;
  const link = (S.items.get(id) || {}).link || (S.selectedDetail && S.selectedDetail.link);
  if (link && link.tool) tools.add(link.tool);
  // Its descendants, as far as they are loaded.
  let grew = true;
  while (grew) {
    grew = false;
    for (const item of S.items.values()) {
      if (item.kind === "process" && item.parent && ids.has(item.parent) && !ids.has(item.id)) { ids.add(item.id); grew = true; }
    }
  }
  for (const item of S.items.values()) {
    if (item.kind === "file" && item.proc && ids.has(item.proc)) ids.add(item.id);
    if (item.kind === "llm" && p && item.pid === p.pid && item.t0 >= (p.t0 || 0) && item.t0 <= (p.t1 || Infinity)) ids.add(item.id);
  }
  return { ids, tools };
}

function applyHighlight() {
  for (const el of document.querySelectorAll(".hl, .hl-tool, .selected")) el.classList.remove("hl", "hl-tool", "selected");
  if (!S.selected) return;
  const { ids, tools } = related(S.selected);
  for (const el of document.querySelectorAll("[data-id]")) {
    const id = el.dataset.id;
    if (id === S.selected) el.classList.add("selected");
    if (ids.has(id)) el.classList.add("hl");
    if (tools.has(id)) el.classList.add("hl-tool");
  }
}

function processDetail(p) {
  const tool = p.tool;
  return h("div", { class: "process-detail", dataset: { id: p.id } },
    h("h2", null, `pid ${p.pid}`, p.comm ? ` · ${p.comm}` : ""),
    h("pre", { class: "argv" }, cmdline(p.argv) + (p.argv_cut ? " … (argv cut by the kernel)" : "")),
    h("dl", null,
      h("dt", null, "program"), h("dd", null, p.filename || "(no exec)"),
      h("dt", null, "cwd"), h("dd", null, p.cwd || "?"),
      h("dt", null, "started"), h("dd", null, `${clock(p.t0)} (${rel(p.t0)})`),
      h("dt", null, "ended"), h("dd", null, `${ending(p)}${p.t1 ? ` after ${dur(p.t1 - p.t0)}` : ""}`),
      h("dt", null, "parent"), h("dd", null, p.ppid !== null && p.ppid !== undefined ? `pid ${p.ppid}` : "?"),
      h("dt", null, "children"), h("dd", null, `${p.children} (${p.descendants} descendants)`)),
    p.unexplained ? h("p", { class: "badge unexplained" }, `unexplained: ${p.unexplained}`) : null,
    p.startup ? h("p", { class: "muted" }, "start-up: the agent ran it before its first LLM call") : null,
    tool ? h("div", { class: "tool-link" }, h("h3", null, "Tool call"),
      h("a", { href: `#/s/${S.sid}/call/${encodeURIComponent(tool.call)}` }, `${tool.name || "?"} (${tool.model || "?"})`),
      h("code", { class: "command" }, tool.command !== null && tool.command !== undefined ? tool.command : tool.args),
      h("div", { class: "evidence" }, (p.link.role && p.link.role !== "command" ? `as the tool's ${p.link.role}; ` : "") +
        evidenceText(p.link.evidence)),
      tool.result ? h("div", { class: "muted" }, resultText(tool.result)) : null) : null,
    h("h3", null, `Files changed (${p.files.length}${p.files_more ? "+" : ""})`),
    h("ul", { class: "files" }, p.files.map((f) => h("li", null, `${f.op} `, h("code", null, f.path), f.new_path ? ` → ${f.new_path}` : ""))),
    h("div", { class: "buttons" },
      h("button", { type: "button", onclick: () => { S.proc = p.id; S.procLabel = `pid ${p.pid}`; fetchTimeline(); } }, "only this process"),
      h("button", { type: "button", onclick: () => setView(p.t0 - 1e6, (p.t1 || nowNs()) + 1e6) }, "zoom to it")));
}

// -- the process tree ----------------------------------------------------------------------------

async function loadTree() {
  S.tree = { nodes: new Map(), loaded: new Set() };
  const ul = $("#tree");
  ul.replaceChildren();
  const roots = await loadChildren(null, ul);
  if (roots && roots.length <= 3) for (const r of roots) toggle(r.id);
}

async function loadChildren(parent, ul, offset = 0) {
  let page;
  try {
    page = await api(`/api/s/${S.sid}/children`, { parent, offset });
  } catch (err) {
    ul.append(h("li", { class: "error" }, err.message));
    return null;
  }
  S.tree.loaded.add(parent);
  for (const node of page.nodes) {
    if (S.tree.nodes.has(node.id)) continue;
    const known = S.items.get(node.id);
    ul.append(treeNode(known ? mergeFields(node, known) : node));
  }
  if (S.summary.live && offset === 0) {
    for (const item of S.items.values()) {
      if (item.kind === "process" && (item.parent || null) === parent && !S.tree.nodes.has(item.id)) treeAdd(item);
    }
  }
  if (page.offset + page.nodes.length < page.total) {
    const more = h("li", { class: "more" }, h("button", { type: "button", onclick: () => {
      more.remove();
      loadChildren(parent, ul, page.offset + page.nodes.length);
    } }, `${page.total - page.offset - page.nodes.length} more…`));
    ul.append(more);
  }
  return page.nodes;
}

function treeNode(item) {
  const kids = h("ul", { class: "tree", hidden: true });
  const twisty = h("button", { type: "button", class: "twisty", onclick: () => toggle(item.id) }, item.children ? "▸" : "·");
  const label = h("span", { class: "node-label", onclick: () => selectProcess(item.id) });
  const li = h("li", { class: "node", dataset: { id: item.id } }, twisty, label, kids);
  S.tree.nodes.set(item.id, { item, li, kids, twisty, label });
  nodeLabel(item.id);
  return li;
}

function nodeLabel(id) {
  const n = S.tree.nodes.get(id);
  const p = n.item;
  n.label.replaceChildren(h("span", { class: "pid" }, String(p.pid)), " ",
    h("span", { class: "argv" }, p.argv ? cmdline(p.argv) : `(${p.comm || "fork"})`), " ",
    h("span", { class: `end${p.exit_code ? " failed" : ""}` }, `${ending(p)}${p.t1 ? ` · ${dur(p.t1 - p.t0)}` : ""}`));
  n.label.title = printable(`${cmdline(p.argv)}\ncwd ${p.cwd || "?"}`);
  n.li.classList.toggle("unexplained", Boolean(p.unexplained));
}

async function toggle(id) {
  const n = S.tree.nodes.get(id);
  if (!n) return;
  const open = n.kids.hidden;
  n.kids.hidden = !open;
  n.twisty.textContent = n.item.children || n.kids.children.length ? (open ? "▾" : "▸") : "·";
  if (open && !S.tree.loaded.has(id)) await loadChildren(id, n.kids);
}

function treeUpdate(update) {
  if (!S.tree) return;
  const item = S.items.get(update.id) || update; // everything known of it, not only what changed
  const n = S.tree.nodes.get(item.id);
  if (n) {
    mergeFields(n.item, item);
    nodeLabel(item.id);
    return;
  }
  if (item.t0 === undefined || item.parent === undefined) return; // not enough known yet
  treeAdd(item);
}

function treeAdd(item) {
  if (!item.parent) {
    if (S.tree.loaded.has(null)) $("#tree").append(treeNode(Object.assign({ children: 0 }, item)));
    return;
  }
  const parent = S.tree.nodes.get(item.parent);
  if (!parent) return;
  if (S.tree.loaded.has(item.parent)) parent.kids.append(treeNode(Object.assign({ children: 0 }, item)));
  parent.item.children = (parent.item.children || 0) + 1;
  parent.twisty.textContent = parent.kids.hidden ? "▸" : "▾";
}

// -- one LLM call ------------------------------------------------------------------------------------

function openCall(id) {
  location.hash = `#/s/${S.sid}/call/${encodeURIComponent(id)}`;
}

async function showCall(id) {
  const main = $("#main");
  main.replaceChildren(h("p", { class: "muted" }, "Loading the call…"));
  const c = await api(`/api/s/${S.sid}/call`, { id });
  const t = c.timings;
  const usage = Object.entries(c.usage || {}).filter(([, v]) => typeof v === "number");
  main.replaceChildren(h("article", { id: "call", dataset: { id: c.id } },
    h("p", null, h("a", { href: `#/s/${S.sid}` }, "← timeline")),
    h("h1", null, `${c.model || "?"}`, h("span", { class: "muted" }, ` · ${c.provider} ${c.api || ""} · ${c.method} ${c.host}${c.path}`)),
    h("dl", { class: "facts-grid" },
      h("dt", null, "started"), h("dd", null, `${clock(t.started_ns)} (${rel(t.started_ns)})`),
      h("dt", null, "first token"), h("dd", null, t.ttft_ns !== null ? dur(t.ttft_ns) : "(not streamed)"),
      h("dt", null, "latency"), h("dd", null, dur(t.latency_ns)),
      h("dt", null, "status"), h("dd", null, `${c.status ?? "?"}${c.stream ? " · streamed" : ""} · ${c.protocol}`),
      h("dt", null, "process"), h("dd", null, `pid ${c.pid} (${c.comm || "?"})`),
      usage.map(([k, v]) => [h("dt", null, k.replace(/_/g, " ")), h("dd", null, String(v))])),
    c.incomplete_reason ? h("p", { class: "note loss" }, `incomplete: ${c.incomplete_reason}`) : null,
    c.request_truncated ? h("p", { class: "note loss" }, "the request was too large to keep whole: it is cut") : null,
    c.analysis_error ? h("p", { class: "note loss" }, `analysis: ${c.analysis_error}`) : null,
    c.error ? section("Error", h("pre", null, JSON.stringify(c.error, null, 2))) : null,
    conversationView(c),
    section("Response", c.response.thinking ? h("details", { class: "thinking" }, h("summary", null, "thinking"),
      textBlock(c, c.response.thinking, "thinking")) : null,
      c.response.text ? textBlock(c, c.response.text, "response-text") : h("p", { class: "muted" }, "(no text)"),
      h("p", { class: "muted" }, `stop reason: ${c.response.stop_reason || "?"}`)),
    c.tool_calls.length ? section("Tool calls", c.tool_calls.map((tc) => h("div", { class: "tool-call", dataset: { id: tc.id } },
      h("h3", null, tc.name || "?", h("span", { class: "muted" }, tc.call_id ? ` · ${tc.call_id}` : "")),
      textBlock(c, tc.arguments, "arguments"),
      tc.result ? h("p", { class: "muted" }, resultText(tc.result)) : null,
      h("h4", null, `Linked activity (${tc.links_total || 0})`),
      tc.links.length ? h("div", { class: "nested" }, tc.links.map((l) => {
        if (!l.item) return row({ class: "row" }, [l.target]);
        const it = Object.assign({}, l.item, { link: { tool: tc.id, role: l.role } });
        return l.target_kind === "file" ? fileRow(it, l.evidence) : processRow(it, l.evidence);
      })) :
        h("p", { class: "muted" }, S.summary.live ? "(none yet: links are made as the tool's activity is seen)" : "(none)")))) : null,
    section("Headers", headerTable("request", c.request_headers), headerTable("response", c.response_headers))));
  for (const row of main.querySelectorAll(".row.process")) row.addEventListener("click", () => {
    location.hash = `#/s/${S.sid}`;
    setTimeout(() => selectProcess(row.dataset.id), 50);
  });
}

function section(title, ...children) {
  return h("section", { class: "call-section" }, h("h2", null, title), children);
}

function textBlock(call, part, cls) {
  const pre = h("pre", { class: `text ${cls || ""}` }, part.text || "");
  if (!part.cut) return pre;
  const button = h("button", { type: "button", class: "show-all", onclick: async () => {
    button.disabled = true;
    try {
      const full = await api(`/api/s/${S.sid}/text`, { id: call.id, part: part.address });
      setText(pre, full.text);
      button.remove();
    } catch (err) {
      setText(button, err.message);
    }
  } }, `show ${part.cut} more characters`);
  return h("div", null, pre, button);
}

const FOLD_AFTER = 6;

function conversationView(c) {
  const conv = c.conversation;
  const systemText = conv.system.map((p) => p.text || "").join("\n");
  const system = conv.system.length ? h("details", { class: "system", open: systemText.length < 600 },
    h("summary", null, `system prompt (${systemText.length} characters)`), conv.system.map((p) => textBlock(c, p, "system-text"))) : null;
  const msgs = conv.messages.map((m) => h("div", { class: `msg ${/^[a-z]+$/.test(m.role) ? m.role : "other"}` },
    h("div", { class: "role" }, m.role), m.parts.map((p) => partView(c, p))));
  const older = msgs.length > FOLD_AFTER ? msgs.splice(0, msgs.length - FOLD_AFTER) : [];
  const tools = conv.tools.length ? h("details", { class: "tools-offered" },
    h("summary", null, `${conv.tools.length} tools offered: ${conv.tools.map((t) => t.name).join(", ")}`),
    conv.tools.map((t) => h("div", { class: "tool-def" }, h("b", null, t.name), t.description ? ` ${t.description}` : "",
      t.text ? textBlock(c, t, "schema") : null))) : null;
  const params = Object.entries(conv.parameters || {});
  return section("Request", params.length ? h("p", { class: "muted" }, params.map(([k, v]) => `${k} ${v}`).join(" · ")) : null,
    system, tools,
    older.length ? h("details", { class: "older" }, h("summary", null, `${older.length} earlier messages`), older) : null,
    msgs.length ? msgs : h("p", { class: "muted" }, "(no messages)"));
}

function partView(c, p) {
  if (p.type === "tool_call") return h("div", { class: "part tool-call-part" }, h("span", { class: "badge tool" }, `calls ${p.name || "?"}`), textBlock(c, p, "args"));
  if (p.type === "tool_result") return h("div", { class: `part tool-result${p.error ? " error" : ""}` }, h("span", { class: "badge tool" }, "tool result"), textBlock(c, p, "result"));
  if (p.type === "thinking") return h("details", { class: "part thinking" }, h("summary", null, "thinking"), textBlock(c, p, "thinking"));
  return h("div", { class: `part ${p.type}` }, textBlock(c, p, p.type === "text" ? "message-text" : "other"));
}

function headerTable(title, headers) {
  const rows = Object.entries(headers || {});
  return h("table", { class: "headers" }, h("caption", null, `${title} (${rows.length})`),
    h("tbody", null, rows.map(([k, v]) => h("tr", null, h("th", null, k), h("td", null, String(v))))));
}
