// The big-screen console: wires the live feed (feed.js) to the map, alarm feed, assignment
// board, KPI tiles, per-grid view and supervisor strip (one module each).
//
// Data comes from the websocket picture plus documents fetched once (/api/town,
// /api/devices) or polled (/api/kpis). Every change only marks ids dirty; one render per
// animation frame applies them to the DOM and the map, touching only what changed.

import { AlarmFeed } from "./alarms.js";
import { openCreateDialog } from "./actions.js";
import { bindActorField, getJson, getJsonRetry } from "./api.js";
import { Board } from "./board.js";
import { LiveFeed } from "./feed.js";
import { GridView } from "./grids.js";
import { $, setText } from "./dom.js";
import { fmtClock, fmtLongDate, t } from "./i18n.js";
import { Kpis } from "./kpis.js";
import { ConsoleMap } from "./map.js";
import { ReplayFeed } from "./replay.js";
import { SupervisorStrip } from "./supervisor.js";
import { indexTown, level1Of } from "./town.js";

const CONFIG = JSON.parse(($("console-config") || {}).textContent || "{}");
// The feed starts once the town and devices are drawn, so that the first live picture lands
// on a complete map (and `connected` means a usable console); if they are slow to come, it
// starts anyway after this long.
const FEED_WAITS_FOR_MAP_MS = 5000;
// How many recent render durations (ms) window.gridhub.renderTimes keeps.
const RENDER_SAMPLES = 600;

const pending = {
  reset: true, alarms: new Set(), incidents: new Set(), units: new Set(),
  positions: new Set(), statics: false,
};
let rafId = 0;
let renderedSeq = null;
const renderTimes = [];

// After-action replay (/replay): the same console fed from the hub's records of a past
// window (replay.js) instead of the live websocket; read only, and marked on every side.
const REPLAY = CONFIG.replay || null;
const feed = REPLAY
  ? new ReplayFeed({ span: REPLAY, onChange, onStatus, onSeek: () => ctx.supervisor.load(),
    onKpis: replayKpis })
  : new LiveFeed({ onChange, onStatus });
const ctx = {
  feed,
  config: CONFIG,
  town: { meta: {}, grids: new Map(), level1: new Map() },
  devices: new Map(),
  now: () => feed.serverNow(),
  markDirty(kind, id) {
    pending[kind].add(id);
    scheduleRender();
  },
};
ctx.map = new ConsoleMap(ctx);
ctx.alarms = new AlarmFeed(ctx);
ctx.board = new Board(ctx);
ctx.kpis = new Kpis(ctx);
ctx.grids = new GridView(ctx);
ctx.supervisor = new SupervisorStrip(ctx);
if (REPLAY) ctx.supervisor.url = () => `/api/replay/alerts?at=${encodeURIComponent(feed.now)}`;

// The server-computed KPI tiles as they were at t (replay only; live polls /api/kpis).
async function replayKpis(at) {
  try {
    ctx.kpis.server = await getJson(`/api/replay/kpis?at=${encodeURIComponent(at)}`);
    ctx.kpis.renderServer(false);
  } catch (err) {
    ctx.kpis.renderServer(true);
  }
}

function onChange(change) {
  if (change.reset) pending.reset = true;
  for (const id of change.alarms) pending.alarms.add(id);
  for (const id of change.incidents) pending.incidents.add(id);
  for (const id of change.units) pending.units.add(id);
  for (const id of change.positions) pending.positions.add(id);
  if (change.events && change.events.length) ctx.supervisor.onEvents(change.events);
  if (change.reset) ctx.supervisor.load();  // a snapshot: events may have been skipped
  scheduleRender();
}

function scheduleRender() {
  if (!rafId) rafId = requestAnimationFrame(render);
}

function render() {
  rafId = 0;
  const started = performance.now();
  const state = feed.state;
  const map = ctx.map;
  const reset = pending.reset || pending.statics;
  const alarmIds = reset ? new Set([...Object.keys(state.alarms), ...ctx.alarms.rows.keys()]) : pending.alarms;
  const incidentIds = reset
    ? new Set([...Object.keys(state.incidents), ...ctx.board.rows.keys()]) : pending.incidents;
  const unitIds = reset ? new Set([...Object.keys(state.units), ...(map.unitLayer ? map.unitLayer.units.keys() : [])])
    : pending.units;
  const positionIds = pending.positions;
  pending.reset = false;
  pending.statics = false;
  pending.alarms = new Set();
  pending.incidents = new Set();
  pending.units = new Set();
  pending.positions = new Set();

  try {
    if (alarmIds.size) ctx.alarms.render(alarmIds, !reset);
    if (incidentIds.size || unitIds.size) ctx.board.render(incidentIds, unitIds.size > 0);
    if (map.ready) {
      if (alarmIds.size) map.renderDeviceAlarms();
      if (incidentIds.size || unitIds.size) map.renderIncidentMarkers(incidentIds, unitIds.size > 0);
      if (unitIds.size || positionIds.size) map.renderUnits(unitIds, positionIds);
    }
    if (alarmIds.size || incidentIds.size || unitIds.size) ctx.kpis.render();
    if (incidentIds.size) ctx.grids.render();
  } catch (err) {
    console.error("gridhub console: render failed", err);
    pending.reset = true;  // redraw everything with the next change
  }
  renderSeq();
  renderTimes.push(performance.now() - started);
  if (renderTimes.length > RENDER_SAMPLES) renderTimes.shift();
}

function renderSeq() {
  renderedSeq = feed.lastSeq;
  setText($("kpi-seq"), renderedSeq === null ? "—" : renderedSeq);
  setText($("kpi-reconnects"), feed.reconnects);
  if (renderedSeq !== null) document.body.dataset.renderedSeq = String(renderedSeq);
}

function onStatus({ phase }) {
  const node = $("conn-status");
  node.dataset.state = phase;
  setText(node.querySelector(".label"), t(`conn.${phase}`));
  node.title = phase === "live" ? t("conn.live_title") : t("conn.down_title");
  document.body.classList.toggle("offline", phase !== "live" && phase !== "replay");
  $("offline-banner").hidden = phase !== "reconnecting";
  renderSeq();
}

// Clock and countdowns: checked four times a second, redrawn when the second changes, so a
// late timer (a busy main thread) costs a quarter second, not a skipped second.
const TICK_CHECK_MS = 250;
let lastTickSecond = 0;
function tick() {
  const now = ctx.now();
  const second = Math.floor(now);
  if (second === lastTickSecond) return;
  lastTickSecond = second;
  try {
    setText($("clock-time"), fmtClock(now));
    setText($("clock-date"), fmtLongDate(now));
    ctx.board.tick(now);
    setText($("kpi-reconnects"), feed.reconnects);
  } catch (err) {
    console.error("gridhub console: tick failed", err);
  }
  document.body.dataset.ticks = String(Number(document.body.dataset.ticks || 0) + 1);
}

async function loadStatics() {
  const map = ctx.map;
  if (!map.init()) return;
  const onRetry = (attempt) => { if (attempt === 1) map.message(t("map.loading")); };
  const [townDoc, deviceList] = await Promise.all([
    getJsonRetry("/api/town", onRetry), getJsonRetry("/api/devices", onRetry)]);
  try {
    Object.assign(ctx.town, indexTown(townDoc));
    map.drawTown(townDoc);
    map.drawDevices(Array.isArray(deviceList) ? deviceList : []);
    ctx.grids.build();
    map.message("");
  } catch (err) {
    console.error("gridhub console: cannot draw the town", err);
    map.message(t("map.bad_data"));
  }
  pending.statics = true;
  scheduleRender();
}

ctx.map.onCreateAt = (lat, lon) => {
  if (REPLAY) return;  // nothing is changed from a replay
  // The grid is for the form's caption only; the server places the case itself.
  let where = "";
  for (const [id, f] of ctx.town.level1) {
    if (L.geoJSON(f).getBounds().contains([lat, lon])) { where = ctx.town.grids.get(id).name; break; }
  }
  openCreateDialog(lat, lon, where).then((inc) => {
    if (inc) ctx.board.select(String(inc.id));
  });
};

// ------------------------------------------------------------------ test and debug hooks
// Synthetic units for load checks: they live only in this page's picture and move when
// debugMoveUnits() feeds a positions batch through the feed's own frame handler.
const SYNTHETIC_PREFIX = "SIM-";
function debugInjectUnits(n) {
  const b = ctx.map.fitBounds;
  const [s, w, nn, e] = b && b.isValid() ? [b.getSouth(), b.getWest(), b.getNorth(), b.getEast()]
    : [31.76, 120.36, 31.86, 120.5];
  const statuses = ["available", "dispatched", "en_route", "on_scene", "returning"];
  const types = ["squad", "police", "grid_worker"];
  const ids = [];
  const now = Date.now() / 1000;
  for (let k = 0; k < n; k += 1) {
    const id = `${SYNTHETIC_PREFIX}${String(k).padStart(5, "0")}`;
    feed.state.units[id] = {
      id, name: `${t("debug.unit")} ${k}`, type: types[k % 3], status: statuses[k % 5],
      qualifications: [], current_incident: null,
      lat: s + Math.random() * (nn - s), lon: w + Math.random() * (e - w),
      speed: 5, heading: Math.random() * 360, position_ts: now,
    };
    ids.push(id);
  }
  onChange({ reset: false, alarms: new Set(), incidents: new Set(), units: new Set(ids),
    positions: new Set(), events: [] });
  return ids.length;
}

// Moves the synthetic units (all, or those whose number % parts === part: the server's
// batches carry a slice of the units every short tick, not all of them at once).
function debugMoveUnits(stepDeg = 0.0004, part = 0, parts = 1) {
  const positions = {};
  const ts = Date.now() / 1000;
  for (const [id, u] of Object.entries(feed.state.units)) {
    if (!id.startsWith(SYNTHETIC_PREFIX)) continue;
    if (parts > 1 && Number(id.slice(SYNTHETIC_PREFIX.length)) % parts !== part) continue;
    const h = (u.heading * Math.PI) / 180;
    positions[id] = { lon: u.lon + stepDeg * Math.sin(h), lat: u.lat + stepDeg * Math.cos(h),
      speed: u.speed, heading: (u.heading + 7) % 360, ts };
  }
  feed._onFrame(JSON.stringify({ type: "batch", events: [], positions }));
  return Object.keys(positions).length;
}

function debugRemoveUnits() {
  const ids = Object.keys(feed.state.units).filter((id) => id.startsWith(SYNTHETIC_PREFIX));
  for (const id of ids) delete feed.state.units[id];
  onChange({ reset: false, alarms: new Set(), incidents: new Set(), units: new Set(ids),
    positions: new Set(), events: [] });
  return ids.length;
}

window.gridhub = {
  get state() { return feed.state; },
  get lastSeq() { return feed.lastSeq; },
  get connected() { return feed.connected; },
  get ws() { return feed.ws; },
  get phase() { return feed.phase; },
  get replay() { return REPLAY ? feed : null; },
  get renderedSeq() { return renderedSeq; },
  get mapReady() { return ctx.map.ready; },
  get map() { return ctx.map.map; },
  feed,
  ctx,
  devices: ctx.devices,
  renderTimes,
  // Apply one feed frame ({type: "batch" | "snapshot", ...}) as if the server had sent it.
  applyFrame: (msg) => feed._onFrame(JSON.stringify(msg)),
  selectCase: (id) => ctx.board.select(id === null ? null : String(id)),
  debugInjectUnits,
  debugMoveUnits,
  debugRemoveUnits,
  level1Of: (gridId) => level1Of(ctx.town.grids, gridId),
};

bindActorField($("actor"));
tick();
setInterval(tick, TICK_CHECK_MS);
if (!REPLAY) {
  ctx.kpis.start();
  ctx.supervisor.load();
}
const staticsDone = loadStatics().catch((err) => console.error("gridhub console: start failed", err));
Promise.race([staticsDone, new Promise((r) => setTimeout(r, FEED_WAITS_FOR_MAP_MS))])
  .then(() => feed.start());
