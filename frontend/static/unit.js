// Track playback (轨迹回放) of one or more units on one shared timeline: each unit's GPS
// track as a polyline in its colour and a marker that moves with the playback clock.
// Play, pause, speed (1x / 10x / 60x / 300x) and a scrub slider; mileage and duty time per
// unit from /api/units/{id}/patrol (an estimate from the track where that is unavailable).

import { bindActorField, errorText, getJson, getJsonRetry, getOptional } from "./api.js";
import { $, el, setText, toast } from "./dom.js";
import { fmtDateTime, fmtDistance, fmtDuration, label, pad2, t } from "./i18n.js";
import { drawTown, makePane } from "./town.js";

const CONFIG = JSON.parse($("unit-config").textContent);
const COLORS = ["#3fc8ff", "#ff9f1a", "#37d67a", "#ff5ca8", "#ffd43b", "#a58bff", "#ff6b6b",
  "#4dd4ac", "#f783ac", "#94d82d"];
const DEFAULT_RANGE_H = 2;
// A marker holds still (dimmed) across a silence longer than this: the phone was off, and
// drawing a straight line through the gap would invent a route.
const GAP_S = 600;
// The travelled part of each track is redrawn at most this often (ms) while playing.
const TRAIL_REDRAW_MS = 100;

const ids = CONFIG.unit_ids;
const tracks = [];  // {id, color, points, line, done, marker, row}
const play = { t0: 0, t1: 0, t: 0, playing: false, speed: 60, lastFrame: 0, lastTrail: 0 };
let map = null;
let unitsById = new Map();

// ------------------------------------------------------------------ time range inputs
const toLocalInput = (tsS) => {
  const d = new Date(tsS * 1000);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}T${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
};
const fromLocalInput = (v) => new Date(v).getTime() / 1000;

function setRange(hours) {
  const until = Math.ceil(Date.now() / 60000) * 60;
  $("since").value = toLocalInput(until - hours * 3600);
  $("until").value = toLocalInput(until);
}

// ------------------------------------------------------------------ map
function initMap(townDoc) {
  map = L.map("track-map", { preferCanvas: true, zoomSnap: 0.1, attributionControl: !!CONFIG.tile_url });
  makePane(map, "grids", 1, false);
  makePane(map, "roads", 2, false);
  makePane(map, "labels", 3, false);
  if (CONFIG.tile_url) L.tileLayer(CONFIG.tile_url, { maxZoom: 19, className: "tiles-dark" }).addTo(map);
  const bounds = drawTown(map, townDoc, {
    renderers: { grids: L.canvas({ pane: "grids" }), roads: L.canvas({ pane: "roads" }) },
    hasTiles: !!CONFIG.tile_url, labelPane: "labels", l2Labels: false,
    ccName: t("town.command_center"),
  });
  if (bounds.isValid()) map.fitBounds(bounds, { padding: [10, 10] }); else map.setView([31.8, 120.43], 13);
}

// ------------------------------------------------------------------ tracks
function metres(a, b) {
  const k = Math.PI / 180;
  const x = (b.lon - a.lon) * k * Math.cos(((a.lat + b.lat) / 2) * k);
  const y = (b.lat - a.lat) * k;
  return Math.sqrt(x * x + y * y) * 6371008.8;
}

// A rough figure from the fixes themselves, for hubs without the patrol route.
function estimate(points) {
  let distance = 0, duty = 0;
  for (let k = 1; k < points.length; k += 1) {
    const dt = points[k].ts - points[k - 1].ts;
    if (dt > GAP_S) continue;
    duty += dt;
    distance += metres(points[k - 1], points[k]);
  }
  return { distance_m: distance, duty_s: duty };
}

function patrolFigures(doc) {
  if (!doc) return null;
  const p = doc.patrol || doc.stats || doc;
  const distance = typeof p.distance_m === "number" ? p.distance_m
    : typeof p.distance_km === "number" ? p.distance_km * 1000 : null;
  const duty = typeof p.duty_s === "number" ? p.duty_s
    : typeof p.duty_h === "number" ? p.duty_h * 3600 : null;
  return distance === null && duty === null ? null : { distance_m: distance, duty_s: duty };
}

function buildRows() {
  const list = $("unit-rows");
  list.replaceChildren();
  for (const tr of tracks) {
    const li = el("li", "unit-row");
    li.dataset.unitId = tr.id;
    const sw = el("i", "swatch");
    sw.style.background = tr.color;
    const u = unitsById.get(tr.id);
    const name = el("a", "name", u ? u.name : tr.id);
    name.href = `/units/${encodeURIComponent(tr.id)}`;
    const meta = el("span", "dim", u ? `${label("unit_type", u.type)} · ${tr.id}` : tr.id);
    const figures = el("dl", "figures");
    const fig = (key, cls) => {
      const dd = el("dd", cls, "…");
      figures.append(el("dt", "", t(key)), dd);
      return dd;
    };
    tr.row = { li, mileage: fig("unit.mileage", "mileage"), duty: fig("unit.duty", "duty"),
      fixes: fig("unit.fixes", "fixes") };
    const remove = el("button", "icon-btn", "×");
    remove.type = "button";
    remove.title = t("unit.remove");
    remove.hidden = tracks.length < 2;
    remove.addEventListener("click", () => {
      const rest = ids.filter((x) => x !== tr.id);
      location.search = queryFor(rest);
    });
    li.append(sw, name, remove, meta, figures);
    list.append(li);
  }
}

function queryFor(unitIds) {
  const q = new URLSearchParams(location.search);
  q.delete("also");
  if (unitIds.length > 1) q.set("also", unitIds.slice(1).join(","));
  return `${q.toString()}`.replace(/^/, "?");
}

async function loadTracks() {
  const since = fromLocalInput($("since").value);
  const until = fromLocalInput($("until").value);
  if (!(until > since)) {
    toast(t("unit.bad_range"));
    return;
  }
  pause();
  for (const tr of tracks) {
    if (tr.line) tr.line.remove();
    if (tr.done) tr.done.remove();
    if (tr.marker) tr.marker.remove();
  }
  const q = `since=${since}&until=${until}`;
  await Promise.all(tracks.map(async (tr) => {
    try {
      const doc = await getJson(`/api/units/${encodeURIComponent(tr.id)}/track?${q}`);
      tr.points = (doc.points || []).filter((p) => typeof p.lat === "number");
    } catch (err) {
      tr.points = [];
      toast(`${tr.id}: ${errorText(err)}`);
    }
    let figures = null, estimated = false;
    try {
      figures = patrolFigures(await getOptional(`/api/units/${encodeURIComponent(tr.id)}/patrol?${q}`));
    } catch (err) {
      console.warn("gridhub: patrol figures unavailable", err);
    }
    if (!figures) { figures = estimate(tr.points); estimated = true; }
    setText(tr.row.mileage, fmtDistance(figures.distance_m) + (estimated ? ` ${t("unit.estimate")}` : ""));
    setText(tr.row.duty, fmtDuration(figures.duty_s) + (estimated ? ` ${t("unit.estimate")}` : ""));
    tr.row.li.dataset.estimated = String(estimated);
    setText(tr.row.fixes, String(tr.points.length));
  }));
  const all = tracks.flatMap((tr) => tr.points);
  $("track-empty").hidden = all.length > 0;
  play.t0 = all.length ? Math.min(...tracks.filter((x) => x.points.length).map((x) => x.points[0].ts)) : since;
  play.t1 = all.length ? Math.max(...tracks.filter((x) => x.points.length).map((x) => x.points[x.points.length - 1].ts)) : until;
  const bounds = L.latLngBounds([]);
  for (const tr of tracks) {
    if (!tr.points.length) continue;
    const latlngs = tr.points.map((p) => [p.lat, p.lon]);
    tr.line = L.polyline(latlngs, { color: tr.color, weight: 2.5, opacity: 0.35 }).addTo(map);
    tr.done = L.polyline([], { color: tr.color, weight: 4, opacity: 0.95 }).addTo(map);
    tr.marker = L.circleMarker(latlngs[0], { radius: 8, color: "#ffffff", weight: 2,
      fillColor: tr.color, fillOpacity: 1 }).addTo(map);
    tr.marker.bindTooltip(unitsById.get(tr.id)?.name || tr.id, { permanent: true, direction: "right",
      offset: [10, 0], className: "hub-tip track-tip" });
    bounds.extend(tr.line.getBounds());
  }
  if (bounds.isValid()) map.fitBounds(bounds, { padding: [40, 40], maxZoom: 16 });
  const scrub = $("scrub");
  scrub.min = String(Math.floor(play.t0));
  scrub.max = String(Math.ceil(play.t1));
  scrub.disabled = !all.length;
  $("play").disabled = !all.length;
  seek(play.t0, true);
  document.body.dataset.loaded = "true";
  document.body.dataset.fixes = String(all.length);
}

// Position of a track at time `ts`: interpolated between the fixes around it; null before
// the first fix; `stale` across a gap or after the last fix.
function positionAt(points, ts) {
  if (!points.length || ts < points[0].ts) return null;
  let lo = 0, hi = points.length - 1;
  if (ts >= points[hi].ts) return { lat: points[hi].lat, lon: points[hi].lon, k: hi, stale: ts - points[hi].ts > GAP_S };
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (points[mid].ts <= ts) lo = mid; else hi = mid;
  }
  const a = points[lo], b = points[hi];
  if (b.ts - a.ts > GAP_S) return { lat: a.lat, lon: a.lon, k: lo, stale: true };
  const f = (ts - a.ts) / (b.ts - a.ts || 1);
  return { lat: a.lat + (b.lat - a.lat) * f, lon: a.lon + (b.lon - a.lon) * f, k: lo, stale: false };
}

function seek(ts, redrawTrail) {
  play.t = Math.max(play.t0, Math.min(play.t1, ts));
  const now = performance.now();
  const trail = redrawTrail || now - play.lastTrail > TRAIL_REDRAW_MS;
  if (trail) play.lastTrail = now;
  for (const tr of tracks) {
    if (!tr.marker) continue;
    const p = positionAt(tr.points, play.t);
    if (!p) {
      tr.marker.setStyle({ opacity: 0.3, fillOpacity: 0.3 });
      tr.marker.setLatLng([tr.points[0].lat, tr.points[0].lon]);
      if (trail) tr.done.setLatLngs([]);
      continue;
    }
    tr.marker.setLatLng([p.lat, p.lon]);
    tr.marker.setStyle({ opacity: p.stale ? 0.5 : 1, fillOpacity: p.stale ? 0.5 : 1 });
    if (trail) {
      const latlngs = tr.points.slice(0, p.k + 1).map((q) => [q.lat, q.lon]);
      latlngs.push([p.lat, p.lon]);
      tr.done.setLatLngs(latlngs);
    }
  }
  $("scrub").value = String(Math.round(play.t));
  setText($("play-time"), fmtDateTime(play.t));
  document.body.dataset.playT = String(Math.round(play.t));
}

function frame(now) {
  if (!play.playing) return;
  const dt = (now - play.lastFrame) / 1000;
  play.lastFrame = now;
  const next = play.t + dt * play.speed;
  seek(next, false);
  if (next >= play.t1) { pause(); return; }
  requestAnimationFrame(frame);
}

function start() {
  if (play.t >= play.t1) seek(play.t0, true);
  play.playing = true;
  play.lastFrame = performance.now();
  const b = $("play");
  b.dataset.playing = "true";
  b.textContent = t("unit.pause");
  requestAnimationFrame(frame);
}

function pause() {
  play.playing = false;
  const b = $("play");
  b.dataset.playing = "false";
  b.textContent = t("unit.play");
}

// ------------------------------------------------------------------ start
$("play").addEventListener("click", () => (play.playing ? pause() : start()));
$("speed").addEventListener("change", (ev) => { play.speed = Number(ev.target.value) || 1; });
$("scrub").addEventListener("input", (ev) => seek(Number(ev.target.value), true));
$("range-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadTracks(); });
for (const b of document.querySelectorAll(".presets [data-hours]")) {
  b.addEventListener("click", () => { setRange(Number(b.dataset.hours)); loadTracks(); });
}
$("add-unit").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = $("add-unit-select").value;
  if (id && !ids.includes(id)) location.search = queryFor([...ids, id]);
});
bindActorField($("actor"));
play.speed = Number($("speed").value) || 60;

window.gridhub = {
  get playback() { return { t: play.t, t0: play.t0, t1: play.t1, playing: play.playing, speed: play.speed }; },
  get tracks() { return tracks.map((tr) => ({ id: tr.id, points: tr.points.length,
    marker: tr.marker ? tr.marker.getLatLng() : null })); },
  get map() { return map; },
  seek: (ts) => seek(ts, true),
  play: start,
  pause,
};

(async () => {
  setRange(DEFAULT_RANGE_H);
  ids.forEach((id, k) => tracks.push({ id, color: COLORS[k % COLORS.length], points: [] }));
  const [townDoc, unitList] = await Promise.all([getJsonRetry("/api/town"), getJsonRetry("/api/units")]);
  unitsById = new Map((unitList || []).map((u) => [u.id, u]));
  const select = $("add-unit-select");
  for (const u of unitList || []) {
    if (ids.includes(u.id)) continue;
    const o = el("option", "", t("fmt.paren", { a: u.name, b: u.id }));
    o.value = u.id;
    select.append(o);
  }
  initMap(townDoc);
  buildRows();
  await loadTracks();
})().catch((err) => toast(errorText(err)));
