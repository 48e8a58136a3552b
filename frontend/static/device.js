// A device's metrics over a chosen range (1 h / 24 h / 7 d), read from the rollups: the
// 1-minute table up to 24 hours, the hourly one beyond; raw readings only for ranges of at
// most an hour (and, automatically, when the minute rollups have not caught up yet). Each
// metric is one uPlot chart: a min-max band and the average line.

import { bindActorField, errorText, getJson, getJsonRetry, getOptional } from "./api.js";
import { $, el, fillFacts, setText, toast } from "./dom.js";
import { LANG, fmtDateTime, fmtNumber, label, pad2, t } from "./i18n.js";

const DEVICE_ID = document.querySelector("[data-device-id]").dataset.deviceId;
const RAW_MAX_S = 3600;
const MINUTE_MAX_S = 24 * 3600;
const BUCKET_S = { "1m": 60, "1h": 3600 };
const CHART_HEIGHT = 220;
const COLORS = { band: "rgba(63, 200, 255, 0.18)", avg: "#3fc8ff", edge: "rgba(63, 200, 255, 0.45)",
  raw: "#ffb020", axis: "#8aa3bf", grid: "rgba(63, 120, 180, 0.18)" };

let device = null;
let rangeS = 3600;
const charts = new Map();  // metric -> uPlot

// uPlot's axis dates in the page's language.
function dateNames() {
  const months = (style) => [...Array(12).keys()].map((m) =>
    new Intl.DateTimeFormat(LANG, { month: style }).format(new Date(2024, m, 1)));
  const days = (style) => [...Array(7).keys()].map((d) =>
    new Intl.DateTimeFormat(LANG, { weekday: style }).format(new Date(2024, 0, 7 + d)));
  return { MMMM: months("long"), MMM: months("short"), WWWW: days("long"), WWW: days("short") };
}
const NAMES = dateNames();

function resolutionFor(span) {
  const chosen = $("resolution").value;
  if (chosen === "raw") return span <= RAW_MAX_S ? "raw" : "1m";
  if (chosen === "1m" || chosen === "1h") return chosen;
  return span <= MINUTE_MAX_S ? "1m" : "1h";
}

// Points -> uPlot columns [x, min, max, avg]; a missing bucket becomes a gap, not a slope.
function columns(points, resolution) {
  const xs = [], mins = [], maxs = [], avgs = [];
  const step = BUCKET_S[resolution];
  let prev = null;
  for (const p of points) {
    const x = resolution === "raw" ? p.ts : p.bucket;
    if (typeof x !== "number") continue;
    if (step && prev !== null && x - prev > 2 * step) {
      xs.push(prev + step); mins.push(null); maxs.push(null); avgs.push(null);
    }
    if (resolution === "raw") {
      xs.push(x); mins.push(p.value); maxs.push(p.value); avgs.push(p.value);
    } else {
      xs.push(x); mins.push(p.min); maxs.push(p.max); avgs.push(p.avg);
    }
    prev = x;
  }
  return [xs, mins, maxs, avgs];
}

// 24-hour tick labels: "HH:MM" within a day (with the date at midnight and on the first
// tick), "MM-DD" once ticks are a day or more apart.
function timeTicks(u, splits, axisIdx, space, incr) {
  return splits.map((ts, k) => {
    const d = new Date(ts * 1000);
    const md = `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
    if (incr >= 86400) return md;
    const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
    return k === 0 || (d.getHours() === 0 && d.getMinutes() === 0) ? `${hm}\n${md}` : hm;
  });
}

function chartOptions(metric, width, resolution) {
  const raw = resolution === "raw";
  const axis = { stroke: COLORS.axis, grid: { stroke: COLORS.grid, width: 1 },
    ticks: { stroke: COLORS.grid, width: 1 }, font: "12px sans-serif" };
  return {
    width, height: CHART_HEIGHT,
    fmtDate: (tpl) => uPlot.fmtDate(tpl, NAMES),
    scales: { x: { time: true } },
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
    series: [
      { label: t("device.time"), value: (u, v) => (v == null ? "—" : fmtDateTime(v)) },
      { label: t("device.min"), stroke: COLORS.edge, width: 1, show: !raw, value: (u, v) => fmtNumber(v, 2) },
      { label: t("device.max"), stroke: COLORS.edge, width: 1, show: !raw, value: (u, v) => fmtNumber(v, 2) },
      { label: raw ? t("device.value") : t("device.avg"), stroke: raw ? COLORS.raw : COLORS.avg, width: 2,
        points: { show: raw }, value: (u, v) => fmtNumber(v, 2) },
    ],
    bands: raw ? [] : [{ series: [2, 1], fill: COLORS.band }],
    axes: [Object.assign({ values: timeTicks, size: 44 }, axis), Object.assign({ size: 60 }, axis)],
  };
}

async function loadSeries(metric, since, until) {
  let resolution = resolutionFor(until - since);
  const url = (res) => `/api/devices/${encodeURIComponent(DEVICE_ID)}/series?metric=${encodeURIComponent(metric)}`
    + `&since=${since}&until=${until}&resolution=${res}`;
  let doc = await getJson(url(resolution));
  // The minute rollups trail the readings by up to ~90 s: a fresh device has none yet.
  if (!(doc.points || []).length && resolution === "1m" && until - since <= RAW_MAX_S
    && $("resolution").value === "auto") {
    resolution = "raw";
    doc = await getJson(url(resolution));
  }
  return { resolution, points: doc.points || [] };
}

async function drawCharts() {
  if (typeof uPlot === "undefined") {
    $("no-vendor").hidden = false;
    return;
  }
  const until = Date.now() / 1000;
  const since = until - rangeS;
  for (const b of document.querySelectorAll("#range [data-range]")) {
    b.classList.toggle("active", Number(b.dataset.range) === rangeS);
  }
  const box = $("charts");
  const metrics = (device && device.metrics) || [];
  if (!metrics.length) {
    box.replaceChildren(el("p", "dim", t("device.no_metrics")));
    return;
  }
  for (const u of charts.values()) u.destroy();
  charts.clear();
  box.replaceChildren();
  await Promise.all(metrics.map(async (metric) => {
    const card = el("div", "chart");
    card.dataset.metric = metric;
    const head = el("div", "chart-head");
    const res = el("span", "tag");
    head.append(el("h4", "", label("metric", metric)), el("span", "dim", metric), res);
    const plot = el("div", "plot");
    card.append(head, plot);
    box.append(card);
    try {
      const { resolution, points } = await loadSeries(metric, since, until);
      card.dataset.resolution = resolution;
      card.dataset.points = String(points.length);
      setText(res, label("resolution", resolution));
      const data = columns(points, resolution);
      const width = Math.max(300, plot.clientWidth || box.clientWidth - 24);
      const u = new uPlot(chartOptions(metric, width, resolution), data, plot);
      u.setScale("x", { min: since, max: until });
      charts.set(metric, u);
      if (!points.length) card.append(el("p", "chart-empty dim", t("device.no_data")));
    } catch (err) {
      card.dataset.points = "0";
      card.append(el("p", "error", errorText(err)));
    }
  }));
  document.body.dataset.loaded = "true";
}

async function loadLatest() {
  const doc = await getOptional(`/api/devices/${encodeURIComponent(DEVICE_ID)}/latest`);
  const tbody = $("latest").querySelector("tbody");
  tbody.replaceChildren();
  const metrics = (doc && doc.metrics) || {};
  for (const [metric, r] of Object.entries(metrics)) {
    const tr = el("tr");
    tr.dataset.metric = metric;
    tr.append(el("td", "", label("metric", metric)), el("td", "num", fmtNumber(r.value, 2)),
      el("td", "", fmtDateTime(r.ts)), el("td", "", fmtDateTime(r.received_at)));
    tbody.append(tr);
  }
  $("latest-empty").hidden = Object.keys(metrics).length > 0;
}

function renderDevice() {
  setText($("device-name"), device ? device.name : DEVICE_ID);
  setText($("device-kind"), device ? label("device_kind", device.kind) : t("device.unknown"));
  if (!device) { $("device-facts").replaceChildren(); return; }
  fillFacts($("device-facts"), [["device.id", device.id], ["device.model", device.model || "—"],
    ["case.grid", device.grid_id || "—"],
    ["device.interval", t("device.every", { s: device.interval_s })],
    ["case.location", `${device.lat.toFixed(5)}, ${device.lon.toFixed(5)}`]].map(([k, v]) => [t(k), v]));
}

for (const b of document.querySelectorAll("#range [data-range]")) {
  b.addEventListener("click", () => { rangeS = Number(b.dataset.range); drawCharts(); });
}
$("resolution").addEventListener("change", drawCharts);
$("reload").addEventListener("click", () => { loadLatest().catch(() => {}); drawCharts(); });
window.addEventListener("resize", () => {
  for (const [metric, u] of charts) {
    const plot = document.querySelector(`.chart[data-metric="${CSS.escape(metric)}"] .plot`);
    if (plot) u.setSize({ width: Math.max(300, plot.clientWidth), height: CHART_HEIGHT });
  }
});
bindActorField($("actor"));
window.gridhub = { get charts() { return charts; }, redraw: drawCharts };

(async () => {
  const list = await getJsonRetry("/api/devices");
  device = (list || []).find((d) => d.id === DEVICE_ID) || null;
  renderDevice();
  loadLatest().catch((err) => toast(errorText(err)));
  await drawCharts();
})().catch((err) => toast(errorText(err)));
