// The desa console: the three queries of the public HTTP API (top-K, a
// device's average step by step, the average inside a box) for one type and
// window. The URL holds the whole view, so a link restores it exactly:
// /?type=T&start=S&end=E&k=K&device=D&bbox=minLat,minLon,maxLat,maxLon
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_CHART_POINTS = 200;
const state = { type: "", start: null, end: null, k: 10, device: "", bbox: null, preset: null };
let land = [];
let watermark = null;
let timer = null;
// API requests in flight, shown as body[data-pending] (0 once the page is
// settled).
let pending = 0;

function readUrl() {
  const q = new URLSearchParams(location.search);
  const int = (name) => (q.has(name) && /^-?\d+$/.test(q.get(name)) ? Number(q.get(name)) : null);
  state.type = q.get("type") || "";
  state.start = int("start");
  state.end = int("end");
  state.k = int("k") || 10;
  state.device = q.get("device") || "";
  state.bbox = parseBox(q.get("bbox") || "");
  // A box across the antimeridian is shown on a map centred on it.
  mapCentre = state.bbox && state.bbox[1] > state.bbox[3] ? 180 : 0;
}

function writeUrl() {
  const q = new URLSearchParams();
  if (state.type) q.set("type", state.type);
  if (state.start !== null) q.set("start", state.start);
  if (state.end !== null) q.set("end", state.end);
  q.set("k", state.k);
  if (state.device) q.set("device", state.device);
  if (state.bbox) q.set("bbox", state.bbox.join(","));
  history.replaceState(null, "", "/?" + q.toString());
}

// "minLat,minLon,maxLat,maxLon"; minLon > maxLon crosses the antimeridian.
function parseBox(text) {
  const v = text.split(",").map(Number);
  if (v.length !== 4 || v.some((x) => !Number.isFinite(x))) return null;
  return v;
}

// GET `path` with `params` (see `ask`), counted in body[data-pending].
async function api(path, params) {
  document.body.dataset.pending = ++pending;
  try {
    return await ask(path, params);
  } finally {
    document.body.dataset.pending = --pending;
  }
}

// GET `path` with `params`; resolves to the answer and the time it took as
// the browser measured it, or rejects with the API's own error message.
async function ask(path, params) {
  const headers = {};
  const token = sessionStorage.getItem("desa-token");
  if (token) headers.Authorization = "Bearer " + token;
  const url = path + (params ? "?" + new URLSearchParams(params).toString() : "");
  const t0 = performance.now();
  const r = await fetch(url, { headers });
  const ms = performance.now() - t0;
  const text = await r.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (_) {
    body = { error: text || r.statusText };
  }
  if (r.status === 401 || r.status === 403) {
    $("login").hidden = false;
    $("login-error").textContent = body.error || "";
    throw new Error("this node wants a token: " + (body.error || r.statusText));
  }
  if (!r.ok) throw new Error(body.error || r.status + " " + r.statusText);
  return { body, ms };
}

function showLatency(id, ms) {
  $(id).textContent = ms.toFixed(1) + " ms";
}

function window_() {
  return { type: state.type, start: state.start, end: state.end };
}

async function loadTypes() {
  const { body } = await api("/v1/types");
  const select = $("type");
  select.innerHTML = "";
  for (const t of body.types) {
    const o = document.createElement("option");
    o.value = t.type;
    o.textContent = t.type + " (" + t.events + ")";
    select.appendChild(o);
  }
  watermark = body.types.length ? Math.max(...body.types.map((t) => t.last)) + 1 : null;
  if (!state.type && body.types.length) state.type = body.types[0].type;
  select.value = state.type;
  if ((state.start === null || state.end === null) && watermark !== null) pickPreset(86400);
}

function pickPreset(secs) {
  state.preset = secs;
  const end = watermark !== null ? watermark : Math.floor(Date.now() / 1000);
  state.start = end - secs;
  state.end = end;
}

function showWindow() {
  $("start").value = state.start ?? "";
  $("end").value = state.end ?? "";
  $("k").value = String(state.k);
  $("bbox").value = state.bbox ? state.bbox.join(",") : "";
  const iso = (s) => new Date(s * 1000).toISOString().replace(".000Z", "Z");
  $("window-text").textContent =
    state.start !== null && state.end !== null ? iso(state.start) + " to " + iso(state.end) : "";
}

async function refresh() {
  writeUrl();
  showWindow();
  drawMap();
  if (!state.type || state.start === null || state.end === null) return;
  await Promise.all([topk(), series(), geo()]);
}

async function topk() {
  $("topk-error").textContent = "";
  const body = $("topk").tBodies[0];
  try {
    const r = await api("/v1/query/topk", { ...window_(), k: state.k });
    showLatency("topk-latency", r.ms);
    body.innerHTML = "";
    r.body.devices.forEach((d, i) => {
      const tr = document.createElement("tr");
      tr.dataset.device = d.device_id;
      tr.dataset.count = d.count;
      if (d.device_id === state.device) tr.className = "picked";
      for (const text of [i + 1, d.device_id, d.count]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tr.addEventListener("click", () => {
        state.device = d.device_id;
        refresh();
      });
      body.appendChild(tr);
    });
  } catch (e) {
    body.innerHTML = "";
    $("topk-error").textContent = e.message;
  }
}

async function series() {
  $("series-error").textContent = "";
  const svg = $("series");
  $("device-name").textContent = state.device || "(pick one in the table)";
  if (!state.device) {
    svg.innerHTML = "";
    svg.dataset.points = 0;
    $("series-summary").textContent = "";
    return;
  }
  const step = Math.max(1, Math.ceil((state.end - state.start) / MAX_CHART_POINTS));
  try {
    const r = await api("/v1/query/series", { ...window_(), device_id: state.device, step });
    showLatency("series-latency", r.ms);
    const s = r.body;
    const summary = $("series-summary");
    summary.dataset.count = s.count;
    summary.dataset.avg = s.avg === null ? "" : s.avg;
    summary.textContent =
      s.count + " events, average " + (s.avg === null ? "none" : s.avg.toFixed(3)) + ", step " + step + " s";
    drawSeries(svg, s.points, step);
  } catch (e) {
    svg.innerHTML = "";
    $("series-error").textContent = e.message;
  }
}

function drawSeries(svg, points, step) {
  const W = 600, H = 220, pad = 28;
  svg.dataset.points = points.length;
  const values = points.filter((p) => p.avg !== null).map((p) => p.avg);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!values.length) (lo = 0), (hi = 1);
  if (lo === hi) (lo -= 1), (hi += 1);
  const x = (i) => pad + ((W - 2 * pad) * i) / Math.max(1, points.length - 1);
  const y = (v) => H - pad - ((H - 2 * pad) * (v - lo)) / (hi - lo);
  const ns = "http://www.w3.org/2000/svg";
  svg.innerHTML = "";
  let d = "";
  points.forEach((p, i) => {
    if (p.avg === null) return;
    d += (d ? "L" : "M") + x(i).toFixed(1) + " " + y(p.avg).toFixed(1);
    const c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", x(i));
    c.setAttribute("cy", y(p.avg));
    c.setAttribute("r", 2);
    const title = document.createElementNS(ns, "title");
    title.textContent = new Date(p.start * 1000).toISOString() + ": " + p.avg + " (" + p.count + ")";
    c.appendChild(title);
    svg.appendChild(c);
  });
  const line = document.createElementNS(ns, "path");
  line.setAttribute("class", "line");
  line.setAttribute("d", d);
  svg.prepend(line);
  for (const [v, yy] of [[hi, pad], [lo, H - pad]]) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", 2);
    t.setAttribute("y", yy);
    t.textContent = Number(v.toPrecision(4));
    svg.appendChild(t);
  }
}

async function geo() {
  $("geo-error").textContent = "";
  const count = $("geo-count"), avg = $("geo-avg");
  if (!state.bbox) {
    count.textContent = avg.textContent = "-";
    return;
  }
  const [minLat, minLon, maxLat, maxLon] = state.bbox;
  try {
    const r = await api("/v1/query/geo", {
      ...window_(), min_lat: minLat, max_lat: maxLat, min_lon: minLon, max_lon: maxLon,
    });
    showLatency("geo-latency", r.ms);
    count.textContent = r.body.count;
    count.dataset.count = r.body.count;
    avg.dataset.avg = r.body.avg === null ? "" : r.body.avg;
    avg.textContent = r.body.avg === null ? "none" : r.body.avg.toFixed(3);
  } catch (e) {
    count.textContent = avg.textContent = "-";
    $("geo-error").textContent = e.message;
  }
}

// The map: an equirectangular world, land from Natural Earth 1:110m,
// centred on Greenwich or on the antimeridian (`mapCentre`, 0 or 180), so a
// box across the antimeridian can be dragged in one stroke.
const canvas = $("map");
let mapCentre = 0;
// x of a longitude, unwrapped: values outside the canvas are drawn again one
// canvas width to the side.
const px = (lon) => ((lon - mapCentre + 180) / 360) * canvas.width;
const py = (lat) => ((90 - lat) / 180) * canvas.height;
const wrapLon = (lon) => ((((lon + 180) % 360) + 360) % 360) - 180;
const latOf = (y) => 90 - (y / canvas.height) * 180;
let drag = null;

// Runs `draw` at the canvas and one canvas width to each side; the
// canvas clips what falls outside.
function wrapped(g, draw) {
  for (const shift of [-canvas.width, 0, canvas.width]) {
    g.save();
    g.translate(shift, 0);
    draw();
    g.restore();
  }
}

function drawMap(extra) {
  canvas.dataset.centre = mapCentre;
  $("centre").textContent = mapCentre ? "centre on Greenwich" : "centre on the Pacific";
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.fillStyle = "#f3f0e6";
  g.strokeStyle = "#9aa5b1";
  g.lineWidth = 0.5;
  wrapped(g, () => {
    for (const ring of land) {
      g.beginPath();
      for (let i = 0; i < ring.length; i += 2) {
        const f = i ? "lineTo" : "moveTo";
        g[f](px(ring[i]), py(ring[i + 1]));
      }
      g.closePath();
      g.fill();
      g.stroke();
    }
  });
  const box = extra || state.bbox;
  if (!box) return;
  const [minLat, minLon, maxLat, maxLon] = box;
  const east = minLon <= maxLon ? maxLon : maxLon + 360;
  const x = ((px(minLon) % canvas.width) + canvas.width) % canvas.width;
  const w = ((east - minLon) / 360) * canvas.width;
  g.fillStyle = "rgba(47, 111, 214, 0.25)";
  g.strokeStyle = "#2f6fd6";
  g.lineWidth = 1.5;
  wrapped(g, () => {
    g.fillRect(x, py(maxLat), w, py(minLat) - py(maxLat));
    g.strokeRect(x, py(maxLat), w, py(minLat) - py(maxLat));
  });
}

// The pointer's [x, lat] on the canvas.
function pointer(ev) {
  const r = canvas.getBoundingClientRect();
  const x = ((ev.clientX - r.left) / r.width) * canvas.width;
  const y = ((ev.clientY - r.top) / r.height) * canvas.height;
  return [Math.max(0, Math.min(canvas.width, x)), Math.max(-90, Math.min(90, latOf(y)))];
}

// The box between two pointer positions: its west edge is the one further
// left on screen, so with the map centred on the Pacific a box across the
// antimeridian has minLon > maxLon, as the API wants.
function dragBox(a, b) {
  const round = (v) => Math.round(v * 100) / 100;
  const lon = (x) => {
    const l = wrapLon((x / canvas.width) * 360 - 180 + mapCentre);
    return x >= canvas.width && l === -180 ? 180 : l;
  };
  return [
    round(Math.min(a[1], b[1])), round(lon(Math.min(a[0], b[0]))),
    round(Math.max(a[1], b[1])), round(lon(Math.max(a[0], b[0]))),
  ];
}

canvas.addEventListener("mousedown", (ev) => (drag = pointer(ev)));
canvas.addEventListener("mousemove", (ev) => drag && drawMap(dragBox(drag, pointer(ev))));
canvas.addEventListener("mouseup", (ev) => {
  if (!drag) return;
  state.bbox = dragBox(drag, pointer(ev));
  drag = null;
  refresh();
});
$("centre").addEventListener("click", () => {
  mapCentre = mapCentre ? 0 : 180;
  drawMap();
});

// Controls.
$("type").addEventListener("change", (e) => {
  state.type = e.target.value;
  refresh();
});
for (const b of $("presets").querySelectorAll("button")) {
  b.addEventListener("click", () => {
    pickPreset(Number(b.dataset.secs));
    refresh();
  });
}
for (const id of ["start", "end"]) {
  $(id).addEventListener("change", (e) => {
    state[id] = /^-?\d+$/.test(e.target.value) ? Number(e.target.value) : state[id];
    state.preset = null;
    refresh();
  });
}
$("k").addEventListener("change", (e) => {
  state.k = Number(e.target.value);
  refresh();
});
$("bbox").addEventListener("change", (e) => {
  state.bbox = parseBox(e.target.value);
  if (state.bbox) mapCentre = state.bbox[1] > state.bbox[3] ? 180 : 0;
  refresh();
});
$("copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(location.href);
    $("copy").textContent = "copied";
  } catch (_) {
    prompt("Copy this link:", location.href);
  }
});
$("live").addEventListener("change", (e) => {
  clearInterval(timer);
  if (e.target.checked) {
    timer = setInterval(async () => {
      if (state.preset) {
        await loadTypes().catch(() => {});
        pickPreset(state.preset);
      }
      refresh();
    }, 5000);
  }
});
$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("desa-token", $("token").value);
  $("login").hidden = true;
  start();
});

async function start() {
  readUrl();
  try {
    await loadTypes();
  } catch (e) {
    $("topk-error").textContent = e.message;
  }
  await refresh();
  document.body.dataset.ready = "true";
}

// Longitudes made continuous along a ring (no jump of 360 degrees where it
// crosses the antimeridian); `wrapped` draws what falls off the canvas.
function unwrap(flat) {
  const ring = flat.slice();
  for (let i = 2; i < ring.length; i += 2) {
    while (ring[i] - ring[i - 2] > 180) ring[i] -= 360;
    while (ring[i] - ring[i - 2] < -180) ring[i] += 360;
  }
  return ring;
}

fetch("/console/land.json")
  .then((r) => r.json())
  .then((rings) => {
    land = rings.map(unwrap);
    drawMap();
  })
  .catch(() => {});
start();
