// Drives headless Chromium (Debian's `chromium`) against a running `mesh up`'s dashboard:
// node dashboard.mjs URL OUT_DIR [--traces N]
//
// Checks that the page shows the demo's workloads and its edges with live numbers, that the
// live request stream fills, and (unless --traces 0) that a trace opens with spans from at least
// N workloads; saves screenshots in OUT_DIR. Prints one JSON line of what it found; exits
// non-zero on the first failed check. mesh/tests/dashboard.rs runs it.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [url, out = "screenshots", ...rest] = process.argv.slice(2);
const minWorkloads = rest[0] === "--traces" ? Number(rest[1]) : 3;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(out, { recursive: true });

const found = {};
const fail = (msg) => { console.error("FAIL: " + msg); console.log(JSON.stringify(found)); process.exit(1); };
const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(url, { waitUntil: "load" });

  // The graph: the demo's workloads, and its edges with live numbers.
  const names = ["frontend", "backend-v1", "backend-v2", "ratings", "quotes"];
  for (const n of names) await page.waitForSelector(`#graph .node[data-name="${n}"]`, { timeout: 20000 }).catch(() => fail(`no node ${n}`));
  const demoEdges = [["frontend", "backend-v1"], ["frontend", "quotes"], ["backend-v1", "ratings"], ["outside", "frontend"]];
  await page.waitForFunction((edges) => edges.every(([s, d]) => {
    const e = document.querySelector(`#graph .edge[data-src="${s}"][data-dst="${d}"]`);
    return e && Number(e.dataset.rps) > 0;
  }), demoEdges, { timeout: 20000 }).catch(() => fail("the demo's edges have no live numbers"));
  found.edges = await page.$$eval("#graph .edge[data-src]", (es) => es.map((e) => ({ src: e.dataset.src, dst: e.dataset.dst, rps: Number(e.dataset.rps), mtls: e.dataset.mtls })));
  for (const e of found.edges) if (e.src !== "outside" && e.rps > 0 && e.mtls !== "1") fail(`${e.src} -> ${e.dst} is not all mTLS`);
  const text = await page.textContent("body");
  for (const n of names) if (!text.includes(n)) fail(`the page does not name ${n}`);
  found.labels = await page.$$eval("#graph .label text", (ts) => ts.map((t) => t.textContent));
  if (!found.labels.some((l) => /^mTLS \d/.test(l))) fail(`no edge labelled with mTLS and its rate: ${found.labels}`);
  // Charts fill as samples arrive.
  await page.waitForFunction(() => document.querySelectorAll("#detail-charts .chart path").length >= 3, null, { timeout: 15000 }).catch(() => fail("no charts"));
  await page.waitForTimeout(1500);
  await page.screenshot({ path: `${out}/dashboard.png`, fullPage: true });

  // Live requests.
  await page.click('.tabs button[data-tab="tap"]');
  await page.waitForFunction(() => document.querySelectorAll("#tap tbody tr").length >= 10, null, { timeout: 15000 }).catch(() => fail("no live requests"));
  found.tap_workloads = [...new Set(await page.$$eval("#tap tbody tr", (rs) => rs.map((r) => r.dataset.workload)))];
  await page.selectOption('#tap-filters select[name="workload"]', "quotes");
  await page.waitForTimeout(1500);
  const tapRows = await page.$$eval("#tap tbody tr", (rs) => rs.slice(0, 5).map((r) => r.dataset.workload));
  if (!tapRows.every((w) => w === "quotes")) fail(`the workload filter let through ${tapRows}`);
  await page.screenshot({ path: `${out}/tap.png` });

  // Traces: open one with spans from several workloads.
  await page.click('.tabs button[data-tab="traces"]');
  await page.waitForSelector("#trace-table tbody tr[data-trace]", { timeout: 20000 }).catch(() => fail("no traces listed"));
  if (minWorkloads > 0) {
    // Spans arrive as each sidecar exports its batch: wait for a trace complete enough.
    const id = await page.waitForFunction((n) => {
      for (const r of document.querySelectorAll("#trace-table tbody tr[data-trace]")) {
        if (r.dataset.services.split(" ").filter((s) => s !== "load").length >= n) return r.dataset.trace;
      }
      return false;
    }, minWorkloads, { timeout: 30000, polling: 500 }).catch(() => fail(`no trace with spans from ${minWorkloads} workloads`));
    await page.click(`#trace-table tbody tr[data-trace="${await id.jsonValue()}"]`);
  } else {
    await page.click("#trace-table tbody tr[data-trace]");
  }
  await page.waitForSelector("#waterfall .wf-row", { timeout: 10000 }).catch(() => fail("the trace did not open"));
  const spans = await page.$$eval("#waterfall .wf-row", (rs) => rs.map((r) => r.dataset.service));
  found.trace_spans = spans.length;
  found.trace_workloads = [...new Set(spans)].filter((s) => s !== "load");
  if (found.trace_workloads.length < minWorkloads) fail(`the trace has spans from ${found.trace_workloads}`);
  const rows = await page.$$("#waterfall .wf-row");
  if (rows.length > 1) await rows[1].click();
  await page.waitForTimeout(300);
  await page.screenshot({ path: `${out}/traces.png` });

  found.requests = [...new Set(requests.map((r) => new URL(r).host))];
  if (found.requests.length !== 1) fail(`the page loaded from other hosts: ${found.requests}`);
  found.errors = errors;
  if (errors.length) fail(`errors in the page: ${errors.join("; ")}`);
  console.log(JSON.stringify(found));
} finally {
  await browser.close();
}
