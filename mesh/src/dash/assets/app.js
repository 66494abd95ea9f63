// The mesh dashboard: everything arrives from this process's JSON API (mesh/README.md).
// Live numbers come pushed on /api/events (one `tick` a second); the request stream on
// /api/tap while its tab is open; traces are fetched when new ones have arrived.
"use strict";
const $ = (s, el = document) => el.querySelector(s);
const NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#4d7c0f", "#9333ea", "#0f766e"];
const state = { graph: null, history: null, selected: null, tab: "metrics", colors: {}, traceCount: -1, traceAt: 0, trace: null };

function el(tag, attrs = {}, ...kids) {
  const svg = ["svg", "g", "path", "rect", "text", "line", "polyline", "circle", "title", "tspan"].includes(tag);
  const e = svg ? document.createElementNS(NS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "onclick") e.addEventListener("click", v); else e.setAttribute(k, v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k.nodeType ? k : document.createTextNode(String(k)));
  return e;
}
const fmt = {
  rps: (v) => v == null ? "-" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2),
  pct: (v) => v == null ? "-" : (v * 100).toFixed(v >= 0.9995 || v === 0 ? 0 : 1) + "%",
  ms: (v) => v == null ? "-" : v >= 1000 ? (v / 1000).toFixed(2) + " s" : v >= 10 ? v.toFixed(0) + " ms" : v.toFixed(v >= 1 ? 1 : 2) + " ms",
  bytes: (v) => v == null ? "-" : v >= 1 << 20 ? (v / (1 << 20)).toFixed(1) + " MB" : (v / 1024).toFixed(0) + " KB",
};
const short = (a) => (a || "").replace(/\.svc\.cluster\.local/, "").replace(/\.[a-z0-9-]+(:\d+)$/, "$1");
const health = (t) => !t || !t.rps || t.success_rate == null ? "idle" : t.success_rate >= 0.995 ? "ok" : t.success_rate >= 0.95 ? "warn" : "bad";
const COLOR = { ok: "#16a34a", warn: "#d97706", bad: "#dc2626", idle: "#a3acb9" };
const srClass = (v) => v == null ? "" : v >= 0.995 ? "sr-ok" : v >= 0.95 ? "sr-warn" : "sr-bad";
function color(name) {
  if (!(name in state.colors)) state.colors[name] = PALETTE[Object.keys(state.colors).length % PALETTE.length];
  return state.colors[name];
}

// ---- live events ------------------------------------------------------------------------
function connect() {
  const live = $("#pill-live");
  const es = new EventSource("api/events");
  es.addEventListener("open", () => { live.className = "pill live on"; live.lastChild.textContent = " live"; });
  es.addEventListener("error", () => { live.className = "pill live off"; live.lastChild.textContent = " reconnecting"; });
  es.addEventListener("tick", (e) => {
    const d = JSON.parse(e.data);
    if (d.graph) { state.graph = d.graph; renderGraph(); renderWorkloads(); }
    if (d.sample) addSample(d.sample);
    if (d.status) renderStatus(d.status);
  });
}
async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

function renderStatus(s) {
  $("#mesh-name").textContent = s.mesh || "(proxies)";
  document.title = "mesh " + (s.mesh || "") + " · dashboard";
  $("#pill-rss").textContent = "this process " + fmt.bytes(s.rss_bytes);
  const t = s.traces;
  if (t) {
    const ws = t.services.filter((n) => n !== "load").length;
    $("#pill-traces").textContent = `traces ${t.stored} kept · ${t.collected} seen · ${ws} workloads`;
    $("#trace-count").textContent = t.stored;
    if (t.collected !== state.traceCount) { state.traceCount = t.collected; if (state.tab === "traces") loadTraces(); }
  } else {
    $("#pill-traces").textContent = s.trace_collector ? "traces → " + s.trace_collector : "no traces";
  }
  $("#trace-note").textContent = s.trace_collector ? `Sidecars export to ${s.trace_collector}; only the load generator's spans are here.` : "";
}

// ---- service graph ----------------------------------------------------------------------
function layout(g) {
  const depth = {};
  for (const n of g.nodes) depth[n.name] = n.kind === "external" ? 0 : 1;
  if (!g.nodes.some((n) => n.kind === "external")) for (const n of g.nodes) depth[n.name] = 0;
  for (let i = 0; i < g.nodes.length; i++) {
    let changed = false;
    for (const e of g.edges) {
      if (e.src === e.dst || !(e.src in depth) || !(e.dst in depth)) continue;
      if (depth[e.dst] < depth[e.src] + 1) { depth[e.dst] = depth[e.src] + 1; changed = true; }
    }
    if (!changed) break;
  }
  const cols = [];
  const svcOf = (n) => n.service || n.name;
  for (const n of g.nodes) (cols[depth[n.name]] = cols[depth[n.name]] || []).push(n);
  for (const c of cols) if (c) c.sort((a, b) => svcOf(a).localeCompare(svcOf(b)) || a.name.localeCompare(b.name));
  return { cols: cols.filter(Boolean), svcOf };
}

function renderGraph() {
  const g = state.graph, svg = $("#graph");
  if (!g) return;
  const NW = 190, NH = 62, CW = 430, RH = 96, PAD = 24;
  const { cols, svcOf } = layout(g);
  const rows = Math.max(1, ...cols.map((c) => c.length));
  const W = PAD * 2 + (cols.length - 1) * CW + NW, H = PAD * 2 + rows * RH - (RH - NH) + 14;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.style.maxHeight = Math.max(260, H) + "px";
  const pos = {};
  cols.forEach((c, ci) => {
    const top = PAD + 14 + ((rows - c.length) * RH) / 2;
    c.forEach((n, ri) => (pos[n.name] = { x: PAD + ci * CW, y: top + ri * RH }));
  });
  const groups = el("g"), edges = el("g"), labels = el("g"), nodes = el("g");
  // A service with several workloads: a box around them.
  for (const s of g.services) {
    const ps = s.workloads.map((w) => pos[w]).filter(Boolean);
    if (ps.length < 2 || new Set(ps.map((p) => p.x)).size > 1) continue;
    const y0 = Math.min(...ps.map((p) => p.y)), y1 = Math.max(...ps.map((p) => p.y)) + NH;
    groups.append(el("rect", { class: "group", x: ps[0].x - 10, y: y0 - 20, width: NW + 20, height: y1 - y0 + 30, rx: 10 }),
      el("text", { class: "group-label", x: ps[0].x - 2, y: y0 - 7 }, "service " + short(s.name)));
  }
  const maxRps = Math.max(1, ...g.edges.map((e) => e.rps || 0));
  for (const e of g.edges) {
    const a = pos[e.src], b = pos[e.dst];
    if (!a || !b) continue;
    const h = health(e), x1 = a.x + NW, y1 = a.y + NH / 2, x2 = b.x - 6, y2 = b.y + NH / 2;
    const mx = (x1 + x2) / 2;
    const w = 1.5 + 5 * Math.sqrt((e.rps || 0) / maxRps);
    const ge = el("g", { class: "edge", "data-src": e.src, "data-dst": e.dst, "data-rps": (e.rps || 0).toFixed(3), "data-mtls": e.mtls_rate ?? "", "data-success": e.success_rate ?? "" });
    ge.append(el("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, stroke: COLOR[h], "stroke-width": w.toFixed(1), "marker-end": `url(#arrow-${h})` }),
      el("title", {}, `${e.src} → ${e.dst}${e.authority ? " (" + e.authority + ")" : ""}\n${fmt.rps(e.rps)} rps, success ${fmt.pct(e.success_rate)}, p50 ${fmt.ms(e.p50_ms)}, p99 ${fmt.ms(e.p99_ms)}, mTLS ${fmt.pct(e.mtls_rate)}`));
    edges.append(ge);
    const tls = e.mtls_rate === 1 ? "mTLS" : e.mtls_rate > 0 ? fmt.pct(e.mtls_rate) + " mTLS" : "";
    const text = `${fmt.rps(e.rps)} rps · ${fmt.pct(e.success_rate)} · p99 ${fmt.ms(e.p99_ms)}`;
    const lw = text.length * 6.2 + (tls ? tls.length * 6.4 + 8 : 0) + 14, lx = mx - lw / 2, ly = (y1 + y2) / 2 - 9;
    labels.append(el("g", { class: "label" }, el("rect", { x: lx, y: ly, width: lw, height: 18, rx: 9 }),
      el("text", { x: lx + 7, y: ly + 13 }, tls ? el("tspan", { class: "tls" }, tls + " ") : null, text)));
  }
  for (const n of g.nodes) {
    const p = pos[n.name], t = n.inbound;
    const h = n.kind === "external" ? "idle" : n.state && n.state !== "ready" ? "bad" : health(t);
    const sub = n.kind === "external" ? "clients outside the mesh" : short(n.service || "");
    const nums = n.kind === "external" ? "" : t && t.rps ? `${fmt.rps(t.rps)} rps · ${fmt.pct(t.success_rate)} · p99 ${fmt.ms(t.p99_ms)}` : n.state && n.state !== "ready" ? n.state : "no inbound traffic";
    const gn = el("g", { class: "node" + (state.selected === n.name ? " selected" : ""), "data-name": n.name, transform: `translate(${p.x},${p.y})`, onclick: () => n.kind !== "external" && select(n.name) },
      el("rect", { class: "box", width: NW, height: NH, rx: 9, stroke: n.kind === "external" ? "#94a3b8" : COLOR[h], "stroke-dasharray": n.kind === "external" ? "5 4" : null }),
      el("circle", { cx: 14, cy: 17, r: 5, fill: n.kind === "external" ? "#94a3b8" : color(n.name) }),
      el("text", { x: 26, y: 22, "font-weight": 600 }, n.name),
      el("text", { class: "sub", x: 12, y: 38 }, sub),
      el("text", { class: "nums", x: 12, y: 54 }, nums));
    nodes.append(gn);
  }
  const defs = el("defs");
  defs.innerHTML = Object.entries(COLOR).map(([k, c]) => `<marker id="arrow-${k}" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="5" markerHeight="5" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="${c}"/></marker>`).join("");
  svg.replaceChildren(defs, groups, edges, nodes, labels);
  if (!g.nodes.length) svg.append(el("text", { x: 20, y: 40, fill: "#6b7686" }, "waiting for the sidecars' metrics…"));
  const ws = g.nodes.filter((n) => n.kind === "workload");
  $("#pill-workloads").textContent = `${ws.filter((n) => n.state == null || n.state === "ready").length}/${ws.length} workloads ready`;
  const front = g.edges.filter((e) => e.src === "outside").reduce((s, e) => s + (e.rps || 0), 0);
  $("#pill-rps").textContent = `${fmt.rps(front)} rps in`;
}

// ---- workloads, routes and charts -------------------------------------------------------
function renderWorkloads() {
  const g = state.graph, tb = $("#workloads tbody");
  const ws = g.nodes.filter((n) => n.kind === "workload");
  if (!state.selected && ws.length) state.selected = ws[0].name;
  tb.replaceChildren(...ws.map((n) => {
    const t = n.inbound, out = g.edges.filter((e) => e.src === n.name);
    const mtls = n.ingress && out.length ? out.reduce((s, e) => s + (e.mtls_rate || 0) * e.rps, 0) / Math.max(1e-9, out.reduce((s, e) => s + e.rps, 0)) : t.mtls_rate;
    return el("tr", { class: state.selected === n.name ? "selected" : null, "data-name": n.name, onclick: () => select(n.name) },
      el("td", {}, el("span", { class: "dot", style: `background:${color(n.name)}` }), n.name),
      el("td", {}, short(n.service || "")), el("td", { class: "n" }, fmt.rps(t.rps)),
      el("td", { class: "n " + srClass(t.success_rate) }, fmt.pct(t.success_rate)),
      el("td", { class: "n" }, fmt.ms(t.p50_ms)), el("td", { class: "n" }, fmt.ms(t.p99_ms)),
      el("td", { class: "n" }, fmt.pct(mtls)), el("td", { class: "n" }, fmt.bytes(n.sidecar_rss_bytes)));
  }));
  const sel = $("#tap-filters select[name=workload]"), ts = $("#trace-service");
  for (const s of [sel, ts]) if (s.options.length - 1 !== ws.length) {
    const v = s.value;
    s.replaceChildren(el("option", { value: "" }, "all"), ...ws.map((n) => el("option", {}, n.name)));
    s.value = v;
  }
  renderDetail();
}
function select(name) { state.selected = name; renderGraph(); renderWorkloads(); }

function addSample(s) {
  const h = state.history;
  if (!h) return;
  h.t.push(s.t);
  const seen = new Set();
  for (const [key, p] of s.series) {
    const id = key.workload + "\u0000" + (key.route || "");
    seen.add(id);
    let ser = h.series.find((x) => x.workload === key.workload && (x.route || "") === (key.route || ""));
    if (!ser) { ser = { workload: key.workload, route: key.route, points: h.t.slice(1).map(() => [null, null, null, null]) }; h.series.push(ser); }
    ser.points.push(p);
  }
  for (const ser of h.series) if (!seen.has(ser.workload + "\u0000" + (ser.route || ""))) ser.points.push([null, null, null, null]);
  if (h.t.length > 900) { h.t.shift(); for (const ser of h.series) ser.points.shift(); }
  if (state.tab === "metrics") renderDetail();
}

function chart(title, t, lines, opt = {}) {
  const W = 320, H = opt.small ? 70 : 110, L = 38, B = opt.small ? 4 : 16, T = 6;
  let max = opt.max ?? 0, min = opt.min ?? 0;
  for (const l of lines) for (const v of l.values) if (v != null) max = Math.max(max, v);
  if (opt.max == null) max = max <= 0 ? 1 : max * 1.15;
  if (opt.min != null && opt.floor) { let lo = 1; for (const l of lines) for (const v of l.values) if (v != null) lo = Math.min(lo, v); min = Math.max(0, Math.min(opt.floor, lo - 0.01)); }
  const n = Math.max(2, t.length), x = (i) => L + ((W - L - 4) * i) / (n - 1), y = (v) => T + (H - T - B) * (1 - (v - min) / (max - min || 1));
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  for (const f of [0, 0.5, 1]) {
    const v = min + (max - min) * f;
    svg.append(el("line", { class: "gridline", x1: L, x2: W, y1: y(v), y2: y(v) }), el("text", { class: "axis", x: L - 4, y: y(v) + 3, "text-anchor": "end" }, v === 0 ? "0" : opt.fmt(v, true)));
  }
  if (!opt.small && t.length > 1) {
    const span = (t[t.length - 1] - t[0]) / 60000;
    svg.append(el("text", { class: "axis", x: L, y: H - 3 }, `-${span.toFixed(span < 2 ? 1 : 0)} min`), el("text", { class: "axis", x: W - 4, y: H - 3, "text-anchor": "end" }, "now"));
  }
  for (const l of lines) {
    let d = "", pen = false;
    l.values.forEach((v, i) => { if (v == null) { pen = false; return; } d += (pen ? "L" : "M") + x(i).toFixed(1) + "," + y(v).toFixed(1); pen = true; });
    svg.append(el("path", { d, fill: "none", stroke: l.color, "stroke-width": 1.6, "vector-effect": "non-scaling-stroke" }));
  }
  const last = lines.map((l) => { for (let i = l.values.length - 1; i >= 0; i--) if (l.values[i] != null) return l.label + opt.fmt(l.values[i]); return l.label + "-"; });
  return el("div", { class: "chart" }, el("div", { class: "t" }, el("span", {}, title), el("b", {}, last.join(" · "))), svg);
}
function charts(ser, t, small) {
  const col = (i) => ser.points.map((p) => p[i]);
  return [
    chart("Requests/s", t, [{ values: col(0), color: "#2563eb", label: "" }], { fmt: (v) => fmt.rps(v), small }),
    chart("Success rate", t, [{ values: col(1), color: "#16a34a", label: "" }], { fmt: (v) => fmt.pct(v), max: 1, min: 0.9, floor: 0.9, small }),
    chart("Latency", t, [{ values: col(2), color: "#7c3aed", label: "p50 " }, { values: col(3), color: "#d97706", label: "p99 " }], { fmt: (v, axis) => axis ? fmt.ms(v).replace(" ", "") : fmt.ms(v), small }),
  ];
}
function renderDetail() {
  const h = state.history, w = state.selected;
  if (!h || !w) return;
  const inb = h.series.find((s) => s.workload === w && !s.route);
  $("#detail-title").textContent = `${w} · inbound (what its sidecar received, over the last ${Math.round(h.t.length / 60) || 1} min)`;
  $("#detail-charts").replaceChildren(...(inb ? charts(inb, h.t, false) : [el("p", { class: "empty" }, "no samples yet")]));
  const routes = h.series.filter((s) => s.workload === w && s.route);
  $("#routes").replaceChildren(...(routes.length ? routes.map((r) => el("div", { class: "route" }, el("div", { class: "name", title: r.route }, "→ " + short(r.route)), el("div", { class: "charts" }, charts(r, h.t, true))))
    : [el("p", { class: "empty" }, `${w} calls no other service.`)]));
}

// ---- live requests (tap) ----------------------------------------------------------------
const tap = { es: null, paused: false, rows: [], pending: [] };
function startTap() {
  stopTap();
  const q = new URLSearchParams(new FormData($("#tap-filters")));
  tap.es = new EventSource("api/tap?" + q);
  $("#tap-status").textContent = "watching every sidecar…";
  tap.es.addEventListener("tap", (e) => { if (!tap.paused) tap.pending.push(JSON.parse(e.data)); });
  tap.es.addEventListener("dropped", (e) => ($("#tap-status").textContent = `${e.data} events/s over the page's limit were skipped`));
  tap.es.addEventListener("error", () => ($("#tap-status").textContent = "the stream broke; retrying…"));
}
function stopTap() { if (tap.es) tap.es.close(); tap.es = null; }
function flushTap() {
  if (!tap.pending.length) return;
  const tb = $("#tap tbody");
  const rows = tap.pending.splice(0).reverse().slice(0, 200).map((ev) => {
    const ok = !ev.error && ev.status < 500 && (ev.grpc_status == null || ev.grpc_status === 0) && ev.status !== 403 && ev.status !== 429;
    const st = ev.error ? ev.error : ev.grpc_status != null && ev.grpc_status !== 0 ? `grpc ${ev.grpc_status}` : ev.status ?? "-";
    return el("tr", { "data-workload": ev.workload },
      el("td", {}, new Date().toLocaleTimeString()), el("td", {}, el("span", { class: "dot", style: `background:${color(ev.workload)}` }), ev.workload),
      el("td", {}, ev.direction === "inbound" ? "in" : "out"), el("td", {}, ev.method), el("td", {}, short(ev.authority)),
      el("td", { class: "path", title: ev.path }, ev.path), el("td", { class: "n " + (ok ? "sr-ok" : "sr-bad") }, st),
      el("td", { class: "n" }, fmt.ms(ev.latency_us / 1000)), el("td", { class: ev.tls ? "tls-yes" : "tls-no" }, ev.tls ? "mTLS" : "plain"));
  });
  tb.prepend(...rows);
  while (tb.rows.length > 200) tb.deleteRow(-1);
}

// ---- traces -----------------------------------------------------------------------------
async function loadTraces() {
  const now = Date.now();
  if (now - state.traceAt < 1500) return;
  state.traceAt = now;
  const svc = $("#trace-service").value;
  const d = await getJSON("api/traces?limit=100" + (svc ? "&service=" + encodeURIComponent(svc) : ""));
  const tb = $("#trace-table tbody");
  if (!d.traces.length) { tb.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "No traces yet: they appear as the sidecars export spans."))); return; }
  tb.replaceChildren(...d.traces.map((t) => el("tr", { class: state.trace === t.trace_id ? "selected" : null, "data-trace": t.trace_id, "data-services": t.services.join(" "), onclick: () => openTrace(t.trace_id) },
    el("td", {}, new Date(t.start_unix_ms).toLocaleTimeString()), el("td", {}, `${t.root_service} ${t.root_name}`),
    el("td", { class: "n" + (t.errors ? " sr-bad" : "") }, fmt.ms(t.duration_ms)), el("td", { class: "n" }, t.spans),
    el("td", { class: "chips" }, t.services.map((s) => el("span", { class: "chip", style: `background:${color(s)}` }, s))))));
  // The open trace gains spans as the sidecars export them: show them.
  const open = d.traces.find((t) => t.trace_id === state.trace);
  if (open && open.spans !== state.traceSpans) openTrace(open.trace_id);
}
async function openTrace(id) {
  state.trace = id;
  for (const tr of document.querySelectorAll("#trace-table tr")) tr.classList.toggle("selected", tr.dataset.trace === id);
  const t = await getJSON("api/traces/" + id);
  state.traceSpans = t.spans.length;
  const kids = {}, ids = new Set(t.spans.map((s) => s.span_id));
  for (const s of t.spans) { const p = ids.has(s.parent_span_id) ? s.parent_span_id : ""; (kids[p] = kids[p] || []).push(s); }
  const order = [];
  const walk = (p, d) => { for (const s of (kids[p] || []).sort((a, b) => a.start_ms - b.start_ms)) { order.push([s, d]); if (d < 40) walk(s.span_id, d + 1); } };
  walk("", 0);
  const total = Math.max(t.duration_ms, 0.001), wf = $("#waterfall"), info = el("div", { class: "attrs" }, "Click a span for its attributes.");
  const rows = order.map(([s, d]) => {
    const left = (100 * s.start_ms) / total, width = Math.max(0.3, (100 * s.duration_ms) / total);
    const row = el("div", { class: "wf-row", "data-service": s.service, onclick: () => { for (const r of wf.querySelectorAll(".wf-row")) r.classList.remove("selected"); row.classList.add("selected"); info.replaceChildren(attrs(s)); } },
      el("div", { class: "wf-name", style: `padding-left:${d * 14}px`, title: `${s.service} ${s.kind} ${s.name}` }, el("span", { class: "chip", style: `background:${color(s.service)}` }, s.service), el("span", { class: "kind" }, s.kind), s.name,
        s.kind === "client" && s.attributes["mesh.peer.identity"] ? el("span", { class: "kind" }, " → " + s.attributes["mesh.peer.identity"].split(".")[0]) : null),
      el("div", { class: "wf-track" }, el("div", { class: "wf-bar" + (s.error ? " err" : ""), style: `left:${left}%;width:${width}%;background:${color(s.service)}` }),
        el("span", { class: "wf-dur", style: left + width > 80 ? `right:${100 - left + 0.5}%` : `left:${left + width + 0.5}%` }, fmt.ms(s.duration_ms))));
    return row;
  });
  wf.replaceChildren(el("div", { class: "head" }, el("b", {}, `${t.root_service} ${t.root_name}`), el("span", {}, `${fmt.ms(t.duration_ms)} · ${t.spans.length} spans · ${t.services.length} workloads`), el("code", {}, t.trace_id)),
    el("div", { class: "wf-scale" }, el("div", {}), el("div", {}, el("span", {}, "0"), el("span", {}, fmt.ms(total / 2)), el("span", {}, fmt.ms(total)))), ...rows, info);
}
function attrs(s) {
  const rows = [["service", s.service], ["kind", s.kind], ["span", s.span_id], ["parent", s.parent_span_id || "-"], ["start", "+" + fmt.ms(s.start_ms)], ["duration", fmt.ms(s.duration_ms)], ...Object.entries(s.attributes)];
  return el("table", {}, rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v))));
}

// ---- tabs and start ---------------------------------------------------------------------
function show(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("hidden", s.id !== "tab-" + tab);
  if (tab === "tap") startTap(); else stopTap();
  if (tab === "traces") { state.traceAt = 0; loadTraces(); }
  if (tab === "metrics") renderDetail();
}
for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => show(b.dataset.tab));
$("#tap-filters").addEventListener("change", startTap);
$("#tap-filters").addEventListener("submit", (e) => { e.preventDefault(); startTap(); });
$("#tap-pause").addEventListener("click", (e) => { tap.paused = !tap.paused; e.target.textContent = tap.paused ? "Resume" : "Pause"; });
$("#trace-service").addEventListener("change", () => { state.traceAt = 0; loadTraces(); });
setInterval(flushTap, 250);
getJSON("api/history").then((h) => { state.history = h; renderDetail(); }).catch(() => {});
connect();
