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
  for (const ev of change.events || []) {
    // Devices are not part of the feed's picture: the admin pages' changes arrive as events.
    if (ev.kind === "device.changed" && ev.data && ev.data.device) ctx.map.applyDevice(ev.data.device);
    if (ev.kind === "town.changed") reloadTown();
  }
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

// Grids and roads replaced by an import (the admin pages): fetched and drawn again.
async function reloadTown() {
  try {
    const townDoc = await getJsonRetry("/api/town");
    Object.assign(ctx.town, indexTown(townDoc));
    ctx.map.redrawTown(townDoc);
    ctx.grids.build();
    document.body.dataset.townVersion = String(Number(document.body.dataset.townVersion || 0) + 1);
    scheduleRender();
  } catch (err) {
    console.error("gridhub console: cannot redraw the town", err);
  }
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
  // Re-render after a change made to the state from outside the feed (the load check's
  // synthetic units, static/console_load.js, which production pages never load).
  rerender: (change) => onChange(change),
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
