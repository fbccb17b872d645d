// The live view: polls /api/status and redraws the figures when a sweep's records change.
// Every figure is the report's own matplotlib SVG; a phase-grid cell is the element out.ids[i]
// for row i of the figure's table (out.cells), so a click finds its networks.
"use strict";

const POLL_MS = 1500;
const params = new URLSearchParams(location.search);
const token = params.get("token");
const $ = (id) => document.getElementById(id);
let sweep = params.get("sweep");
let stamp = null;
let controlsFor = null;

async function call(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token) headers["X-Phasemap-Token"] = token;
  const response = await fetch(path, { ...options, headers });
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const body = isJson ? await response.json() : await response.text();
  if (!response.ok) throw new Error(isJson ? body.error : `${response.status} ${body}`);
  return body;
}

function showError(error) {
  $("error").hidden = !error;
  $("error").textContent = error ? String(error.message || error) : "";
}

function query(extra = {}) {
  const q = new URLSearchParams({ sweep, ...extra });
  for (const name of ["x", "y", "facet", "layer", "tau", "against"]) {
    const value = $(name).value;
    if (value) q.set(name, value);
  }
  return q.toString();
}

function fill(select, values, labels, keep) {
  select.replaceChildren(...values.map((v, i) => new Option(labels[i], v)));
  if (values.includes(keep)) select.value = keep;
}

function setControls(status) {
  const key = JSON.stringify([status.sweep, status.axes, status.hidden_layers]);
  if (key === controlsFor) return;
  const first = !controlsFor || JSON.parse(controlsFor)[0] !== status.sweep;
  controlsFor = key;
  if (first) {  // the sweep's own defaults (a boundary search judges at its own layer, tau, against)
    $("tau").value = status.judged.tau;
    $("against").value = status.judged.against;
    $("layer").value = "";
  }
  const axes = ["", ...status.axes];
  for (const name of ["x", "y", "facet"]) {
    fill($(name), axes, axes.map((a) => a || (name === "facet" ? "none (automatic)" : "automatic")), $(name).value);
  }
  const layers = ["last", "output", ...Array.from({ length: status.hidden_layers }, (_, i) => String(i + 1))];
  const layer = $("layer").value || String(status.judged.layer);
  if (!layers.includes(layer)) layers.push(layer);  // a fraction of the hidden layers, say
  fill($("layer"), layers, layers.map((l) => (/^\d+$/.test(l) ? `layer ${l}` : l === "last" ? "last hidden" : l)),
       layer);
}

function table(element, columns, rows) {
  const head = document.createElement("thead");
  head.append(row(columns, "th"));
  const body = document.createElement("tbody");
  body.append(...rows.map((r) => row(r, "td")));
  element.replaceChildren(head, body);
}

function row(values, tag) {
  const tr = document.createElement("tr");
  for (const v of values) {
    const cell = document.createElement(tag);
    cell.textContent = v === null ? "" : typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(4) : String(v);
    tr.append(cell);
  }
  return tr;
}

function showProgress(s) {
  const total = s.networks || 1;
  $("bar").replaceChildren(...Object.entries(s.counts).filter(([, n]) => n > 0).map(([state, n]) => {
    const span = document.createElement("span");
    span.className = state;
    span.style.width = `${(100 * n) / total}%`;
    span.title = `${n} ${state}`;
    return span;
  }));
  $("counts").textContent = "networks: " + Object.entries(s.counts).map(([k, n]) => `${n} ${k}`).join(", ")
    + ` of ${s.networks}`;
  $("measured").textContent = `${s.measured} networks with records, ${s.records.toLocaleString()} records`;
  const running = s.counts.running > 0;
  $("time-left").textContent = s.time_left_s === null ? (running ? "time left: estimating…" : "")
    : s.time_left_s === 0 ? "done" : `time left: about ${formatSeconds(s.time_left_s)}`;
  const b = s.boundary;
  $("boundary").textContent = b ? ` · boundary search ${b.finished ? "finished" : "round " + b.round}: ${b.used} of ${b.budget} networks, ${b.measured} of ${b.cells} cells measured` : "";
  $("summary").textContent = `${s.counts.complete} of ${s.networks} networks complete`;
  table($("packs"), ["state", "step", "members", "configs", "run"], s.packs.map((p) => [
    p.state, `${p.last_step ?? "-"}/${p.steps ?? "?"}`, p.members ?? "?", p.configs, p.run_id]));
}

function formatSeconds(s) {
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

async function drawFigure(figure) {
  const kind = figure.dataset.kind;
  const out = await call(`/api/figure?${query({ kind })}`);
  const box = figure.querySelector(".svg");
  if (out.missing) {
    box.innerHTML = "";
    figure.querySelector("figcaption").textContent = out.missing;
    figure.dataset.cells = "0";
    return;
  }
  box.innerHTML = out.svg;
  figure.querySelector("figcaption").textContent = out.caption;
  const cells = new Map((out.ids || []).map((id, i) => [id, out.cells[i]]));
  figure.dataset.cells = String((out.cells || []).filter((c) => c.n > 0).length);
  for (const element of box.querySelectorAll('[id^="cell-"]')) {
    const cell = cells.get(element.id);
    if (cell) element.addEventListener("click", () => showCell(out, cell));
  }
}

async function showCell(figure, cell) {
  const keys = [figure.facet, figure.y, figure.x].filter(Boolean);
  const picked = Object.fromEntries(keys.map((k) => [k, cell[k]]));
  try {
    const out = await call(`/api/networks?${query({ cell: JSON.stringify(picked) })}`);
    $("cell").hidden = false;
    $("net-title").textContent = "Networks of the cell " + keys.map((k) => `${k} = ${cell[k]}`).join(", ")
      + ` (${out.rows.length})`;
    table($("net-table"), out.columns, out.rows.map((r) => out.columns.map((c) => r[c])));
    $("net-figure").innerHTML = out.svg || "";
    $("net-caption").textContent = out.caption;
    $("cell").scrollIntoView({ behavior: "smooth" });
  } catch (error) {
    showError(error);
  }
}

async function redraw() {
  await Promise.all([...document.querySelectorAll("#figures .figure")].map(drawFigure));
}

async function poll() {
  try {
    if (!sweep) {
      const { sweeps } = await call("/api/sweeps");
      fill($("sweep"), sweeps, sweeps, null);
      if (!sweeps.length) { $("summary").textContent = "no sweeps under this root yet"; return; }
      sweep = sweeps[0];
    }
    const s = await call(`/api/status?sweep=${encodeURIComponent(sweep)}`);
    showProgress(s);
    setControls(s);
    if (s.stamp !== stamp) {
      stamp = s.stamp;
      await redraw();
    }
    showError(null);
  } catch (error) {
    showError(error);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function runQuery(format) {
  $("sql-message").textContent = "running…";
  try {
    const body = JSON.stringify({ query: $("query").value, format });
    const out = await call("/api/sql", { method: "POST", body, headers: { "Content-Type": "application/json" } });
    if (format === "csv") {
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([out], { type: "text/csv" }));
      link.download = "query.csv";
      link.click();
      $("sql-message").textContent = "downloaded query.csv";
      return;
    }
    table($("result"), out.columns, out.rows);
    $("sql-message").textContent = `${out.rows.length} rows` + (out.truncated ? " (cut at the cap)" : "");
  } catch (error) {
    $("result").replaceChildren();  // no earlier query's rows under this query's error
    $("sql-message").textContent = String(error.message || error);
    $("sql-message").className = "error";
    return;
  }
  $("sql-message").className = "muted";
}

async function start() {
  const { sweeps } = await call("/api/sweeps");
  sweep = sweep || sweeps[0] || null;
  fill($("sweep"), sweeps, sweeps, sweep);
  $("sweep").addEventListener("change", () => {
    sweep = $("sweep").value;
    stamp = null;
    controlsFor = null;
    history.replaceState(null, "", `?${new URLSearchParams({ sweep, ...(token ? { token } : {}) })}`);
  });
  for (const name of ["x", "y", "facet", "layer", "tau", "against"]) {
    $(name).addEventListener("change", () => redraw().catch(showError));
  }
  $("run").addEventListener("click", () => runQuery("json"));
  $("csv").addEventListener("click", () => runQuery("csv"));
  poll();
}

start().catch(showError);
