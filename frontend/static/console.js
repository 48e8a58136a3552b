// The big-screen console: map, alarm feed, assignment board, KPIs.
//
// Data comes from feed.js (the live websocket picture) plus two static documents fetched
// once (/api/town, /api/devices). Every change only marks ids dirty; one render per
// animation frame applies them to the DOM and the map, touching only what changed. Text
// from data is always set with textContent, never parsed as HTML.

import { LiveFeed } from "./feed.js";

// ----------------------------------------------------------------- constants
const CONFIG = JSON.parse(document.getElementById("console-config").textContent || "{}");

// Who acknowledges: one shared operator identity until operator log-in exists.
const OPERATOR = "operator";

// Placeholder colouring of the board's elapsed timer (seconds since the case was opened):
// amber from 10 min, red from 20 min. The real per-case SLA countdown replaces this.
const ELAPSED_ALERT_THRESHOLDS_S = { amber: 10 * 60, red: 20 * 60 };

// The static documents are retried on failure (the hub may still be starting).
const FETCH_RETRY_MS = [1000, 2000, 5000];
// An acknowledged alarm comes back through the feed; if it has not within this long, the
// button is offered again (the POST may have succeeded while the feed was down: harmless).
const ACK_PENDING_TIMEOUT_MS = 15000;
const TOAST_MS = 6000;
// The feed starts once the town and devices are drawn, so that the first live picture lands
// on a complete map (and `connected` means a usable console); if they are slow to come, it
// starts anyway after this long.
const FEED_WAITS_FOR_MAP_MS = 5000;

const SEVERITY_LABEL = { critical: "紧急", major: "重要", minor: "次要", warning: "提示" };
const SEVERITY_RANK = { critical: 0, major: 1, minor: 2, warning: 3 };
const ALARM_STATE_LABEL = { active: "未确认", acknowledged: "已确认", cleared: "已消除" };
const PRIORITY_LABEL = { 1: "特急", 2: "紧急", 3: "一般", 4: "较低" };
const PRIORITY_COLOR = { 1: "#ff4d4f", 2: "#ff9f1a", 3: "#ffd43b", 4: "#4dabf7" };
const INCIDENT_STATE_LABEL = {
  reported: "上报", registered: "立案", dispatched: "派遣", accepted: "签收",
  handling: "处置", feedback: "反馈", verified: "核查", closed: "结案",
  evaluated: "评价", archived: "归档", shelved: "挂账", cancelled: "取消",
};
// States in which nobody has the case yet, and states past handling (shown dimmed).
const WAITING_STATES = new Set(["reported", "registered"]);
const DONE_STATES = new Set(["closed", "evaluated", "archived", "shelved", "cancelled"]);
const SOURCE_LABEL = {
  operator: "值班员", grid_worker: "网格员", hotline: "12345热线", alarm: "告警联动",
};
const UNIT_TYPE_LABEL = { squad: "执法中队", police: "巡逻警力", grid_worker: "网格员" };
const UNIT_STATUS_LABEL = {
  available: "待命", dispatched: "已派遣", en_route: "在途", on_scene: "到场",
  returning: "返回", off_duty: "离岗",
};
const UNIT_STATUS_COLOR = {
  available: "#37d67a", dispatched: "#ffb020", en_route: "#3fa9ff", on_scene: "#ff5ca8",
  returning: "#a58bff", off_duty: "#5b6b80",
};
const UNIT_RADIUS = { squad: 7, police: 6, grid_worker: 5 };
const DEVICE_KIND_LABEL = { traffic: "治安交通", safety: "安全生产", environment: "环境保护" };
const DEVICE_KIND_COLOR = { traffic: "#38c6f4", safety: "#f7a440", environment: "#8bd450" };
const DEVICE_ALARM_COLOR = { active: "#ff3b3b", acknowledged: "#ffb020" };
const ZONE_FILL = {
  residential: "#1d3b63", commercial: "#3a2d63", industrial: "#4a3421", rural: "#163a2e",
  mixed: "#263f55",
};
const ROAD_STYLE = {
  main: { color: "#b9c8dc", weight: 3.2, opacity: 0.75 },
  secondary: { color: "#8aa0bb", weight: 1.9, opacity: 0.6 },
  local: { color: "#5f7590", weight: 1.0, opacity: 0.55 },
};
// Level-2 grid names appear once the map is zoomed in this far beyond the town view.
const L2_LABEL_ZOOM_DELTA = 1.5;
const WEEKDAY = ["日", "一", "二", "三", "四", "五", "六"];

// ----------------------------------------------------------------- small helpers
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// Write only when different: most frames change few fields of few rows.
function setText(node, text) {
  const s = text === undefined || text === null ? "" : String(text);
  if (node.textContent !== s) node.textContent = s;
}

function setClass(node, className) {
  if (node.className !== className) node.className = className;
}

const pad2 = (n) => (n < 10 ? "0" : "") + n;

function fmtClock(tsS) {
  const d = new Date(tsS * 1000);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

function fmtTime(tsS) {
  if (typeof tsS !== "number") return "—";
  const d = new Date(tsS * 1000);
  const now = new Date(feedNow() * 1000);
  const sameDay = d.toDateString() === now.toDateString();
  const hms = fmtClock(tsS);
  return sameDay ? hms : `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${hms}`;
}

function fmtElapsed(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${pad2(Math.floor(s / 60))}:${pad2(s % 60)}`;
}

function elapsedLevel(seconds) {
  if (seconds >= ELAPSED_ALERT_THRESHOLDS_S.red) return "red";
  if (seconds >= ELAPSED_ALERT_THRESHOLDS_S.amber) return "amber";
  return "green";
}

const hasPoint = (e) => e && typeof e.lon === "number" && typeof e.lat === "number";

// ----------------------------------------------------------------- state
const town = { grids: new Map(), meta: null, loaded: false };
const devices = new Map();  // id -> device
let devicesLoaded = false;

const pending = {
  reset: true, alarms: new Set(), incidents: new Set(), units: new Set(),
  positions: new Set(), statics: false,
};
let rafId = 0;
let renderedSeq = null;
const pendingAcks = new Map();  // alarm id -> timer

const feed = new LiveFeed({ onChange, onStatus });
const feedNow = () => feed.serverNow();

function onChange(change) {
  if (change.reset) pending.reset = true;
  for (const id of change.alarms) pending.alarms.add(id);
  for (const id of change.incidents) pending.incidents.add(id);
  for (const id of change.units) pending.units.add(id);
  for (const id of change.positions) pending.positions.add(id);
  scheduleRender();
}

function scheduleRender() {
  if (!rafId) rafId = requestAnimationFrame(render);
}

// ----------------------------------------------------------------- render loop
function render() {
  rafId = 0;
  const state = feed.state;
  const reset = pending.reset || pending.statics;
  const alarmIds = reset ? new Set([...Object.keys(state.alarms), ...alarmRows.keys()]) : pending.alarms;
  const incidentIds = reset
    ? new Set([...Object.keys(state.incidents), ...boardRows.keys()]) : pending.incidents;
  const unitIds = reset ? new Set([...Object.keys(state.units), ...unitMarkers.keys()]) : pending.units;
  const positionIds = pending.positions;
  pending.reset = false;
  pending.statics = false;
  pending.alarms = new Set();
  pending.incidents = new Set();
  pending.units = new Set();
  pending.positions = new Set();

  try {
    if (alarmIds.size) renderAlarms(alarmIds, !reset);
    if (incidentIds.size || unitIds.size) renderBoard(incidentIds, unitIds.size > 0);
    if (mapReady()) {
      if (alarmIds.size) renderDeviceAlarms();
      if (incidentIds.size || unitIds.size) renderIncidentMarkers(incidentIds, unitIds.size > 0);
      if (unitIds.size || positionIds.size) renderUnits(unitIds, positionIds);
    }
    if (alarmIds.size || incidentIds.size || unitIds.size) renderKpis();
  } catch (err) {
    console.error("gridhub console: render failed", err);
    pending.reset = true;  // redraw everything with the next change
  }
  renderSeq();
}

function renderSeq() {
  renderedSeq = feed.lastSeq;
  setText($("kpi-seq"), renderedSeq === null ? "—" : renderedSeq);
  setText($("kpi-reconnects"), feed.reconnects);
  if (renderedSeq !== null) document.body.dataset.renderedSeq = String(renderedSeq);
}

// ----------------------------------------------------------------- connection status
function onStatus({ phase }) {
  const node = $("conn-status");
  node.dataset.state = phase;
  const label = { live: "实时", reconnecting: "重连中", connecting: "连接中" }[phase] || phase;
  setText(node.querySelector(".label"), label);
  node.title = phase === "live" ? "实时数据连接正常" : "与指挥平台的实时连接已断开，正在重连";
  document.body.classList.toggle("offline", phase !== "live");
  $("offline-banner").hidden = phase !== "reconnecting";
  renderSeq();
}

// ----------------------------------------------------------------- KPIs
function renderKpis() {
  const { alarms, incidents, units } = feed.state;
  const byPrio = { 1: 0, 2: 0, 3: 0, 4: 0 };
  let open = 0;
  for (const inc of Object.values(incidents)) {
    open += 1;
    if (byPrio[inc.priority] !== undefined) byPrio[inc.priority] += 1;
  }
  for (const p of [1, 2, 3, 4]) setText($(`kpi-p${p}`), byPrio[p]);
  setText($("kpi-open"), open);

  let active = 0, acked = 0;
  for (const a of Object.values(alarms)) {
    if (a.state === "active") active += 1;
    else if (a.state === "acknowledged") acked += 1;
  }
  setText($("kpi-alarms"), active);
  setText($("kpi-alarms-acked"), acked);
  $("kpi-alarms-tile").classList.toggle("hot", active > 0);

  const byStatus = {};
  let total = 0;
  for (const u of Object.values(units)) {
    total += 1;
    byStatus[u.status] = (byStatus[u.status] || 0) + 1;
  }
  const available = byStatus.available || 0;
  const busy = (byStatus.dispatched || 0) + (byStatus.en_route || 0) + (byStatus.on_scene || 0);
  setText($("kpi-units-available"), available);
  setText($("kpi-units-total"), total);
  setText($("kpi-units-busy"), busy);
  for (const [status, node] of legendUnitCounts) setText(node, byStatus[status] || 0);

  const activeBySev = { critical: 0, major: 0, minor: 0, warning: 0 };
  for (const a of Object.values(alarms)) {
    if (a.state === "active" && activeBySev[a.severity] !== undefined) activeBySev[a.severity] += 1;
  }
  renderAlarmSummary(activeBySev, active, acked);
}

function renderAlarmSummary(bySev, active, acked) {
  const box = $("alarm-summary");
  if (!box.firstChild) {
    for (const sev of Object.keys(SEVERITY_LABEL)) {
      const chip = el("span", `chip sev-${sev}`);
      chip.append(el("i"), el("span", "chip-label", SEVERITY_LABEL[sev]), el("b", "chip-n", "0"));
      chip.dataset.severity = sev;
      chip.title = `未确认${SEVERITY_LABEL[sev]}告警`;
      box.append(chip);
    }
  }
  for (const chip of box.children) setText(chip.querySelector(".chip-n"), bySev[chip.dataset.severity]);
  $("alarm-panel").dataset.active = String(active);
  $("alarm-panel").dataset.acknowledged = String(acked);
}

// ----------------------------------------------------------------- alarm feed
const alarmRows = new Map();  // id -> row record
const alarmList = $("alarm-list");

function alarmOrder(a, b) {
  // Newest first; ties by id (the later alarm first).
  const ta = a.raised_at || 0, tb = b.raised_at || 0;
  if (ta !== tb) return tb - ta;
  return Number(b.id) - Number(a.id);
}

function createAlarmRow(id) {
  const li = el("li", "alarm");
  li.dataset.alarmId = id;
  const sev = el("span", "sev");
  const body = el("div", "alarm-body");
  const line1 = el("div", "alarm-line1");
  const msg = el("span", "msg");
  const count = el("span", "count");
  line1.append(msg, count);
  const line2 = el("div", "alarm-line2");
  const device = el("span", "device");
  const grid = el("span", "grid");
  line2.append(device, grid);
  const line3 = el("div", "alarm-line3");
  const time = el("span", "time");
  const state = el("span", "state");
  const incident = el("span", "incident");
  line3.append(time, state, incident);
  body.append(line1, line2, line3);
  const actions = el("div", "alarm-actions");
  li.append(sev, body, actions);
  return { id, li, sev, msg, count, device, grid, time, state, incident, actions, ack: null,
    raisedAt: null, fresh: true };
}

function updateAlarmRow(row, a) {
  const sev = SEVERITY_RANK[a.severity] !== undefined ? a.severity : "warning";
  setClass(row.li, `alarm sev-${sev} state-${a.state}${row.fresh ? " fresh" : ""}`);
  row.li.dataset.severity = a.severity;
  row.li.dataset.state = a.state;
  setText(row.sev, SEVERITY_LABEL[a.severity] || a.severity);
  setText(row.msg, a.message || a.rule_id);
  row.msg.title = a.message || "";
  setText(row.count, `×${a.count ?? 1}`);
  row.count.classList.toggle("repeated", (a.count ?? 1) > 1);
  const dev = devices.get(a.device_id);
  setText(row.device, dev ? dev.name : a.device_id);
  row.device.title = a.device_id || "";
  const grid = town.grids.get(a.grid_id);
  setText(row.grid, grid ? grid.name : a.grid_id || "");
  setText(row.time, fmtTime(a.raised_at));
  row.time.title = typeof a.last_seen === "number" ? `最近一次：${fmtTime(a.last_seen)}` : "";
  let stateText = ALARM_STATE_LABEL[a.state] || a.state;
  if (a.state === "acknowledged" && a.acked_by) stateText += ` · ${a.acked_by}`;
  setText(row.state, stateText);
  setText(row.incident, a.incident_id != null ? `案件 #${a.incident_id}` : "");

  if (a.state === "active") {
    if (!row.ack) {
      row.ack = el("button", "ack", "确认");
      row.ack.type = "button";
      row.actions.append(row.ack);
    }
    const waiting = pendingAcks.has(row.id);
    row.ack.disabled = waiting;
    setText(row.ack, waiting ? "确认中" : "确认");
  } else {
    if (row.ack) { row.ack.remove(); row.ack = null; }
    clearPendingAck(row.id);
  }
  const moved = row.raisedAt !== a.raised_at;
  row.raisedAt = a.raised_at;
  return moved;
}

// `animate`: new rows flash (not on a snapshot, which redraws the whole list).
function renderAlarms(ids, animate) {
  const alarms = feed.state.alarms;
  let reorder = false;
  for (const id of ids) {
    const a = alarms[id];
    let row = alarmRows.get(id);
    if (!a) {
      if (row) { row.li.remove(); alarmRows.delete(id); }
      clearPendingAck(id);
      continue;
    }
    if (!row) {
      row = createAlarmRow(id);
      alarmRows.set(id, row);
      row.fresh = animate;
      reorder = true;
    }
    if (updateAlarmRow(row, a)) reorder = true;
  }
  if (reorder) {
    const sorted = Object.values(alarms).sort(alarmOrder);
    reconcileOrder(alarmList, sorted.map((a) => alarmRows.get(String(a.id))).filter(Boolean).map((r) => r.li));
  }
  $("alarm-empty").hidden = alarmRows.size > 0;
}

// Put `nodes` into `parent` in this order, moving only the nodes that are out of place.
function reconcileOrder(parent, nodes) {
  let cursor = parent.firstElementChild;
  for (const node of nodes) {
    if (node === cursor) {
      cursor = cursor.nextElementSibling;
    } else {
      parent.insertBefore(node, cursor);
    }
  }
  while (cursor) {  // anything left over is not in the list any more
    const next = cursor.nextElementSibling;
    cursor.remove();
    cursor = next;
  }
}

alarmList.addEventListener("click", (ev) => {
  const li = ev.target.closest("li.alarm");
  if (!li) return;
  const id = li.dataset.alarmId;
  if (ev.target.closest("button.ack")) {
    acknowledge(id, ev.target.closest("button.ack"));
    return;
  }
  const a = feed.state.alarms[id];
  const dev = a && devices.get(a.device_id);
  if (dev) focusPoint(dev.lat, dev.lon, () => deviceMarkers.get(dev.id)?.openTooltip());
});

alarmList.addEventListener("animationend", (ev) => {
  const li = ev.target.closest && ev.target.closest("li.alarm");
  const row = li && alarmRows.get(li.dataset.alarmId);
  if (row && row.fresh && ev.animationName === "alarm-fresh") {
    row.fresh = false;
    li.classList.remove("fresh");
  }
});

async function acknowledge(id, button) {
  if (pendingAcks.has(id)) return;
  pendingAcks.set(id, setTimeout(() => { clearPendingAck(id); markAlarm(id); }, ACK_PENDING_TIMEOUT_MS));
  button.disabled = true;
  button.textContent = "确认中";
  try {
    const res = await fetch(`/api/alarms/${encodeURIComponent(id)}/ack`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ by: OPERATOR }),
    });
    if (!res.ok) {
      let detail = `HTTP ${res.status}`;
      try {
        const body = await res.json();
        if (body && body.error) detail = body.error.message || body.error.code || detail;
      } catch { /* not JSON */ }
      throw new Error(detail);
    }
    // Success: the acknowledged alarm arrives through the feed and re-renders the row.
  } catch (err) {
    clearPendingAck(id);
    markAlarm(id);
    toast(`告警 #${id} 确认失败：${err.message || err}`);
  }
}

function clearPendingAck(id) {
  const timer = pendingAcks.get(id);
  if (timer !== undefined) { clearTimeout(timer); pendingAcks.delete(id); }
}

function markAlarm(id) {
  pending.alarms.add(id);
  scheduleRender();
}

let toastTimer = 0;
function toast(message) {
  const node = $("toast");
  node.textContent = message;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, TOAST_MS);
}

// ----------------------------------------------------------------- assignment board
const boardRows = new Map();  // id -> row record
const board = $("board");

function boardOrder(a, b) {
  // Most urgent first, then the longest waiting.
  const pa = a.priority ?? 9, pb = b.priority ?? 9;
  if (pa !== pb) return pa - pb;
  const ta = a.opened_at || 0, tb = b.opened_at || 0;
  if (ta !== tb) return ta - tb;
  return Number(a.id) - Number(b.id);
}

function createBoardRow(id) {
  const li = el("li", "case");
  li.dataset.incidentId = id;
  const idCell = el("span", "c-id");
  const prio = el("span", "c-prio prio");
  const titleCell = el("span", "c-title");
  const title = el("span", "title");
  const sub = el("span", "sub");
  titleCell.append(title, sub);
  const state = el("span", "c-state state");
  const unitCell = el("span", "c-unit");
  const unit = el("span", "unit");
  const unitStatus = el("span", "unit-status");
  unitCell.append(unit, unitStatus);
  const sla = el("span", "c-sla sla");
  li.append(idCell, prio, titleCell, state, unitCell, sla);
  return { id, li, idCell, prio, title, sub, state, unit, unitStatus, sla,
    openedAt: null, slaText: "", slaLevel: "", orderKey: "" };
}

function updateBoardRow(row, inc) {
  const units = feed.state.units;
  const p = PRIORITY_LABEL[inc.priority] ? inc.priority : 4;
  const waiting = WAITING_STATES.has(inc.state) && !inc.assigned_unit;
  const cls = `case p${p} st-${inc.state}${waiting ? " waiting" : ""}${DONE_STATES.has(inc.state) ? " done" : ""}`;
  setClass(row.li, cls);
  row.li.dataset.priority = String(inc.priority);
  row.li.dataset.state = inc.state;
  setText(row.idCell, `#${inc.id}`);
  setText(row.prio, PRIORITY_LABEL[inc.priority] || inc.priority);
  setText(row.title, inc.title);
  row.title.title = inc.description ? `${inc.title}\n${inc.description}` : inc.title || "";
  const grid = town.grids.get(inc.grid_id);
  const parts = [grid ? grid.name : inc.grid_id];
  if (inc.rework_count > 0) parts.push(`返工 ${inc.rework_count} 次`);
  setText(row.sub, parts.filter(Boolean).join(" · "));
  setText(row.state, INCIDENT_STATE_LABEL[inc.state] || inc.state);
  const unit = inc.assigned_unit ? units[inc.assigned_unit] : null;
  if (inc.assigned_unit) {
    setText(row.unit, unit ? unit.name : inc.assigned_unit);
    row.unit.title = unit ? `${unit.name}（${UNIT_TYPE_LABEL[unit.type] || unit.type}）` : "";
    setText(row.unitStatus, unit ? UNIT_STATUS_LABEL[unit.status] || unit.status : "");
    row.unitStatus.dataset.status = unit ? unit.status : "";
  } else {
    setText(row.unit, waiting ? "待派遣" : "—");
    row.unit.title = "";
    setText(row.unitStatus, "");
    row.unitStatus.dataset.status = "";
  }
  row.unit.classList.toggle("none", !inc.assigned_unit);
  row.openedAt = typeof inc.opened_at === "number" ? inc.opened_at : null;
  tickRow(row, feedNow());
  const key = `${inc.priority}|${inc.opened_at}`;
  const moved = key !== row.orderKey;
  row.orderKey = key;
  return moved;
}

function renderBoard(incidentIds, unitsChanged) {
  const incidents = feed.state.incidents;
  let reorder = false;
  const ids = new Set(incidentIds);
  if (unitsChanged) for (const id of boardRows.keys()) ids.add(id);  // unit names/statuses
  for (const id of ids) {
    const inc = incidents[id];
    let row = boardRows.get(id);
    if (!inc) {
      if (row) { row.li.remove(); boardRows.delete(id); }
      continue;
    }
    if (!row) {
      row = createBoardRow(id);
      boardRows.set(id, row);
      reorder = true;
    }
    if (updateBoardRow(row, inc)) reorder = true;
  }
  if (reorder) {
    const sorted = Object.values(incidents).sort(boardOrder);
    reconcileOrder(board, sorted.map((inc) => boardRows.get(String(inc.id))).filter(Boolean).map((r) => r.li));
  }
  $("board-empty").hidden = boardRows.size > 0;
  let waiting = 0;
  for (const inc of Object.values(incidents)) {
    if (WAITING_STATES.has(inc.state) && !inc.assigned_unit) waiting += 1;
  }
  setText($("board-summary"), `共 ${boardRows.size} 件 · 待派遣 ${waiting} 件`);
}

board.addEventListener("click", (ev) => {
  const li = ev.target.closest("li.case");
  if (!li) return;
  const inc = feed.state.incidents[li.dataset.incidentId];
  const entry = incidentMarkers.get(li.dataset.incidentId);
  if (hasPoint(inc)) focusPoint(inc.lat, inc.lon, () => entry && entry.marker.openPopup());
});

function tickRow(row, now) {
  let text = "--:--", level = "none";
  if (row.openedAt !== null) {
    const elapsed = now - row.openedAt;
    text = fmtElapsed(elapsed);
    level = elapsedLevel(elapsed);
  }
  if (text !== row.slaText) { row.sla.textContent = text; row.slaText = text; }
  if (level !== row.slaLevel) {
    row.sla.className = `c-sla sla sla-${level}`;
    row.sla.dataset.level = level;
    row.slaLevel = level;
  }
}

// ----------------------------------------------------------------- clock + timers
function tick() {
  const now = feedNow();
  setText($("clock-time"), fmtClock(now));
  const d = new Date(now * 1000);
  setText($("clock-date"), `${d.getFullYear()}年${d.getMonth() + 1}月${d.getDate()}日 星期${WEEKDAY[d.getDay()]}`);
  for (const row of boardRows.values()) tickRow(row, now);
  setText($("kpi-reconnects"), feed.reconnects);
  // Next run just after the next whole second, so the timers change together with the clock.
  setTimeout(tick, 1000 - (Date.now() % 1000) + 5);
}

// ----------------------------------------------------------------- map
let map = null;
let fitBounds = null;
let townZoom = 0;
const deviceMarkers = new Map();  // device id -> L.CircleMarker
const deviceAlarmState = new Map();  // device id -> "active" | "acknowledged"
const alarmPulses = new Map();  // device id -> L.Marker (DOM pulse ring on active alarms)
const unitMarkers = new Map();  // unit id -> {marker, status, type, lat, lon}
const incidentMarkers = new Map();  // incident id -> {marker, priority, lat, lon, popup parts}
const legendUnitCounts = new Map();  // status -> count element
let renderers = null;

const mapReady = () => !!map && town.loaded && devicesLoaded;

function showMapMessage(text) {
  const node = $("map-message");
  node.textContent = text || "";
  node.hidden = !text;
}

async function fetchJson(url) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      const res = await fetch(url, { headers: { accept: "application/json" } });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      return await res.json();
    } catch (err) {
      const wait = FETCH_RETRY_MS[Math.min(attempt, FETCH_RETRY_MS.length - 1)];
      console.warn(`gridhub console: ${url} failed (${err.message}), retrying in ${wait} ms`);
      if (attempt === 1) showMapMessage("正在加载地图数据……");
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

// Our panes live inside Leaflet's overlay pane (z-index relative to it), where vector
// layers normally go, and below the marker, tooltip and popup panes.
function makePane(name, zIndex, interactive = true, parent = map.getPane("overlayPane")) {
  const pane = map.createPane(name, parent);
  pane.style.zIndex = String(zIndex);
  if (!interactive) pane.style.pointerEvents = "none";
  return pane;
}

function initMap() {
  if (typeof L === "undefined") {
    showMapMessage("地图组件未加载");
    return false;
  }
  map = L.map("map", {
    preferCanvas: true,
    zoomControl: false,
    attributionControl: !!CONFIG.tile_url,
    zoomSnap: 0.1,
    zoomDelta: 0.5,
    wheelPxPerZoomLevel: 120,
    worldCopyJump: false,
  });
  makePane("grids", 1, false);
  makePane("roads", 2, false);
  makePane("labels", 3, false);
  makePane("points", 4);
  makePane("pulses", 590, false, map.getPane("mapPane"));
  // The static town (grids, roads) has canvases of its own, so a moving unit never redraws
  // them. Devices and units share one: only the top canvas gets the mouse, and both have
  // tooltips. Devices are added first, so units draw above them.
  const points = L.canvas({ pane: "points", tolerance: 3 });
  renderers = {
    grids: L.canvas({ pane: "grids" }),
    roads: L.canvas({ pane: "roads" }),
    devices: points,
    units: points,
  };
  if (CONFIG.tile_url) {
    L.tileLayer(CONFIG.tile_url, { maxZoom: 19, className: "tiles-dark" }).addTo(map);
    document.body.classList.add("has-tiles");
  }
  L.control.zoom({ position: "bottomright", zoomInTitle: "放大", zoomOutTitle: "缩小" }).addTo(map);
  addHomeControl();
  addLegend();
  map.on("zoomend", updateLabelVisibility);
  return true;
}

function drawTown(doc) {
  town.meta = doc.meta || {};
  const features = (doc.grids && doc.grids.features) || [];
  for (const f of features) town.grids.set(f.properties.id, f.properties);
  const level1 = features.filter((f) => f.properties.level === 1);
  const level2 = features.filter((f) => f.properties.level === 2);
  const hasTiles = !!CONFIG.tile_url;

  L.geoJSON({ type: "FeatureCollection", features: level2 }, {
    renderer: renderers.grids, interactive: false,
    style: () => ({ color: "#3a6591", weight: 0.7, opacity: 0.65, dashArray: "3 4",
      fill: false }),
  }).addTo(map);
  const l1 = L.geoJSON({ type: "FeatureCollection", features: level1 }, {
    renderer: renderers.grids, interactive: false,
    style: (f) => ({ color: "#4cc3ff", weight: 1.8, opacity: 0.8,
      fillColor: ZONE_FILL[f.properties.zone] || "#1b2f4a", fillOpacity: hasTiles ? 0.12 : 0.55 }),
  }).addTo(map);

  const roads = (doc.roads && doc.roads.features) || [];
  const order = { local: 0, secondary: 1, main: 2 };  // main roads drawn last, on top
  roads.sort((a, b) => (order[a.properties.class] ?? 0) - (order[b.properties.class] ?? 0));
  L.geoJSON({ type: "FeatureCollection", features: roads }, {
    renderer: renderers.roads, interactive: false,
    style: (f) => Object.assign({ lineCap: "round", lineJoin: "round" },
      ROAD_STYLE[f.properties.class] || ROAD_STYLE.local),
  }).addTo(map);

  for (const f of features) {
    const c = f.properties.center;
    if (!Array.isArray(c)) continue;
    const span = el("span", "", f.properties.name);
    L.marker([c[1], c[0]], {
      pane: "labels", interactive: false, keyboard: false,
      icon: L.divIcon({ className: `grid-label l${f.properties.level}`, html: span, iconSize: [0, 0] }),
    }).addTo(map);
  }

  const cc = town.meta.command_center;
  if (cc && typeof cc.lon === "number") {
    const node = el("div", "cc-marker");
    node.append(el("i"), el("span", "", cc.name || "综合指挥中心"));
    L.marker([cc.lat, cc.lon], {
      keyboard: false, interactive: false, zIndexOffset: -1000,
      icon: L.divIcon({ className: "cc-icon", html: node, iconSize: [0, 0] }),
    }).addTo(map);
  }

  fitBounds = l1.getBounds().isValid() ? l1.getBounds() : L.geoJSON(doc.grids).getBounds();
  if (fitBounds.isValid()) {
    fitTown(false);
    townZoom = map.getZoom();
    map.setMinZoom(Math.max(0, townZoom - 1.5));
    map.setMaxBounds(fitBounds.pad(0.6));
  } else {
    map.setView([31.8, 120.43], 13);
    townZoom = 13;
  }
  updateLabelVisibility();
  town.loaded = true;
}

function fitTown(animate = true) {
  if (fitBounds && fitBounds.isValid()) map.fitBounds(fitBounds, { padding: [18, 18], animate });
}

function updateLabelVisibility() {
  if (!map) return;
  map.getContainer().classList.toggle("show-l2", map.getZoom() >= townZoom + L2_LABEL_ZOOM_DELTA);
}

function focusPoint(lat, lon, then) {
  if (!map || typeof lat !== "number" || typeof lon !== "number") return;
  const zoom = Math.max(map.getZoom(), townZoom + 2);
  map.setView([lat, lon], zoom, { animate: true });
  if (then) map.once("moveend", then);
}

function addHomeControl() {
  const Home = L.Control.extend({
    options: { position: "bottomright" },
    onAdd() {
      const button = el("button", "map-home", "全景");
      button.type = "button";
      button.title = "回到全镇视图";
      L.DomEvent.disableClickPropagation(button);
      button.addEventListener("click", () => fitTown(true));
      return button;
    },
  });
  new Home().addTo(map);
}

function legendRow(color, label, shape = "dot") {
  const row = el("div", "lg-row");
  const sw = el("i", `lg-${shape}`);
  sw.style.setProperty("--c", color);
  row.append(sw, el("span", "lg-label", label));
  return row;
}

function addLegend() {
  const Legend = L.Control.extend({
    options: { position: "topleft" },
    onAdd() {
      const box = el("div", "map-legend");
      L.DomEvent.disableClickPropagation(box);
      L.DomEvent.disableScrollPropagation(box);
      const group = (title) => {
        const g = el("div", "lg-group");
        g.append(el("span", "lg-title", title));
        box.append(g);
        return g;
      };
      const units = group("力量状态");
      for (const [status, label] of Object.entries(UNIT_STATUS_LABEL)) {
        const row = legendRow(UNIT_STATUS_COLOR[status], label);
        const n = el("b", "lg-n", "0");
        n.id = `units-${status}`;
        row.append(n);
        legendUnitCounts.set(status, n);
        units.append(row);
      }
      const sensors = group("感知设备");
      for (const [kind, label] of Object.entries(DEVICE_KIND_LABEL)) {
        sensors.append(legendRow(DEVICE_KIND_COLOR[kind], label, "small"));
      }
      sensors.append(legendRow(DEVICE_ALARM_COLOR.active, "告警中", "small"));
      sensors.append(legendRow(DEVICE_ALARM_COLOR.acknowledged, "告警已确认", "small"));
      const cases = group("案件级别");
      for (const p of [1, 2, 3, 4]) cases.append(legendRow(PRIORITY_COLOR[p], PRIORITY_LABEL[p], "diamond"));
      return box;
    },
  });
  new Legend().addTo(map);
}

// ------------------------------------------------- devices
function deviceStyle(device, alarmState) {
  if (alarmState) {
    return { radius: alarmState === "active" ? 5.5 : 4.5, stroke: true, color: "#ffffff",
      weight: alarmState === "active" ? 1.5 : 1, opacity: 0.9,
      fillColor: DEVICE_ALARM_COLOR[alarmState], fillOpacity: 1 };
  }
  return { radius: 3, stroke: false, weight: 0, fillColor: DEVICE_KIND_COLOR[device.kind] || "#9fb3c8",
    fillOpacity: 0.85 };
}

function deviceTooltip(device) {
  return () => {
    const box = el("div", "tip");
    box.append(el("div", "tip-title", device.name));
    const grid = town.grids.get(device.grid_id);
    box.append(el("div", "tip-line",
      `${DEVICE_KIND_LABEL[device.kind] || device.kind} · ${device.model || ""} · ${device.id}`));
    if (grid) box.append(el("div", "tip-line", grid.name));
    const alarmState = deviceAlarmState.get(device.id);
    if (alarmState) {
      const open = Object.values(feed.state.alarms).filter((a) => a.device_id === device.id);
      for (const a of open.slice(0, 4)) {
        box.append(el("div", `tip-alarm sev-${a.severity}`,
          `${SEVERITY_LABEL[a.severity] || a.severity} ${a.message || a.rule_id}（${ALARM_STATE_LABEL[a.state] || a.state}）`));
      }
    }
    return box;
  };
}

function drawDevices(list) {
  for (const d of list) {
    devices.set(d.id, d);
    if (!hasPoint(d) || !map) continue;
    const marker = L.circleMarker([d.lat, d.lon], Object.assign(
      { renderer: renderers.devices, bubblingMouseEvents: false }, deviceStyle(d, null)));
    marker.bindTooltip(deviceTooltip(d), { direction: "top", offset: [0, -4], className: "hub-tip" });
    marker.addTo(map);
    deviceMarkers.set(d.id, marker);
  }
  devicesLoaded = true;
}

function renderDeviceAlarms() {
  const next = new Map();
  for (const a of Object.values(feed.state.alarms)) {
    if (a.state === "active") next.set(a.device_id, "active");
    else if (a.state === "acknowledged" && !next.has(a.device_id)) next.set(a.device_id, "acknowledged");
  }
  const touched = new Set([...next.keys(), ...deviceAlarmState.keys()]);
  for (const id of touched) {
    const before = deviceAlarmState.get(id) || null;
    const after = next.get(id) || null;
    if (before === after) continue;
    if (after) deviceAlarmState.set(id, after); else deviceAlarmState.delete(id);
    const device = devices.get(id);
    const marker = deviceMarkers.get(id);
    if (marker && device) {
      marker.setStyle(deviceStyle(device, after));  // setStyle applies the radius too
      if (after) marker.bringToFront();
    }
    const pulse = alarmPulses.get(id);
    if (after === "active" && !pulse && device && hasPoint(device)) {
      alarmPulses.set(id, L.marker([device.lat, device.lon], {
        pane: "pulses", interactive: false, keyboard: false,
        icon: L.divIcon({ className: "alarm-pulse", iconSize: [0, 0] }),
      }).addTo(map));
    } else if (after !== "active" && pulse) {
      pulse.remove();
      alarmPulses.delete(id);
    }
  }
}

// ------------------------------------------------- units
function unitStyle(unit) {
  return {
    radius: UNIT_RADIUS[unit.type] || 5,
    stroke: true, color: unit.type === "police" ? "#e6f0ff" : "#07111f", weight: 1.5, opacity: 1,
    fillColor: UNIT_STATUS_COLOR[unit.status] || "#9fb3c8", fillOpacity: 0.95,
  };
}

function unitInfo(id) {
  return () => {
    const u = feed.state.units[id];
    const box = el("div", "tip");
    if (!u) return box;
    box.append(el("div", "tip-title", u.name));
    box.append(el("div", "tip-line",
      `${UNIT_TYPE_LABEL[u.type] || u.type} · ${UNIT_STATUS_LABEL[u.status] || u.status}`));
    if (u.current_incident != null) {
      const inc = feed.state.incidents[String(u.current_incident)];
      box.append(el("div", "tip-line", `当前案件 #${u.current_incident}${inc ? " " + inc.title : ""}`));
    }
    const facts = [];
    if (typeof u.speed === "number") facts.push(`${(u.speed * 3.6).toFixed(0)} km/h`);
    if (typeof u.position_ts === "number") facts.push(`定位 ${fmtTime(u.position_ts)}`);
    if (facts.length) box.append(el("div", "tip-line dim", facts.join(" · ")));
    return box;
  };
}

function renderUnits(unitIds, positionIds) {
  const units = feed.state.units;
  const ids = unitIds.size ? new Set([...unitIds, ...positionIds]) : positionIds;
  for (const id of ids) {
    const u = units[id];
    let entry = unitMarkers.get(id);
    if (!u || !hasPoint(u)) {
      if (entry && !u) { entry.marker.remove(); unitMarkers.delete(id); }
      continue;
    }
    if (!entry) {
      const marker = L.circleMarker([u.lat, u.lon], Object.assign(
        { renderer: renderers.units, bubblingMouseEvents: false }, unitStyle(u)));
      marker.bindTooltip(unitInfo(id), { direction: "top", offset: [0, -6], className: "hub-tip" });
      marker.addTo(map);
      entry = { marker, status: u.status, type: u.type, lat: u.lat, lon: u.lon };
      unitMarkers.set(id, entry);
      continue;
    }
    if (entry.lat !== u.lat || entry.lon !== u.lon) {
      entry.marker.setLatLng([u.lat, u.lon]);
      entry.lat = u.lat;
      entry.lon = u.lon;
    }
    if (entry.status !== u.status || entry.type !== u.type) {
      entry.marker.setStyle(unitStyle(u));
      entry.status = u.status;
      entry.type = u.type;
    }
    if (entry.marker.isTooltipOpen()) entry.marker.setTooltipContent(unitInfo(id));
  }
}

// ------------------------------------------------- incidents
function incidentIcon(priority) {
  const p = PRIORITY_LABEL[priority] ? priority : 4;
  const node = el("div", `inc-marker p${p}`);
  node.append(el("i"));
  return L.divIcon({ className: "inc-icon", html: node, iconSize: [0, 0] });
}

function createIncidentPopup() {
  const box = el("div", "inc-popup");
  const head = el("div", "ip-head");
  const prio = el("span", "prio");
  const title = el("span", "ip-title");
  head.append(prio, title);
  const rows = {};
  const table = el("dl", "ip-facts");
  for (const [key, label] of [["id", "编号"], ["state", "状态"], ["unit", "处置单位"],
    ["grid", "网格"], ["source", "来源"], ["opened", "上报时间"]]) {
    table.append(el("dt", "", label));
    rows[key] = el("dd", `ip-${key}`);
    table.append(rows[key]);
  }
  const desc = el("p", "ip-desc");
  box.append(head, table, desc);
  return { box, prio, title, rows, desc };
}

function updateIncidentPopup(parts, inc) {
  const p = PRIORITY_LABEL[inc.priority] ? inc.priority : 4;
  setClass(parts.prio, `prio p${p}`);
  setText(parts.prio, PRIORITY_LABEL[inc.priority] || inc.priority);
  setText(parts.title, inc.title);
  setText(parts.rows.id, `#${inc.id}`);
  setText(parts.rows.state, INCIDENT_STATE_LABEL[inc.state] || inc.state);
  const unit = inc.assigned_unit ? feed.state.units[inc.assigned_unit] : null;
  setText(parts.rows.unit, unit ? `${unit.name}（${UNIT_STATUS_LABEL[unit.status] || unit.status}）`
    : inc.assigned_unit || "未派遣");
  const grid = town.grids.get(inc.grid_id);
  setText(parts.rows.grid, grid ? `${grid.name}（${inc.grid_id}）` : inc.grid_id || "—");
  setText(parts.rows.source, SOURCE_LABEL[inc.source] || inc.source || "—");
  setText(parts.rows.opened, fmtTime(inc.opened_at));
  setText(parts.desc, inc.description || "");
  parts.desc.hidden = !inc.description;
}

function renderIncidentMarkers(incidentIds, unitsChanged) {
  const incidents = feed.state.incidents;
  const ids = new Set(incidentIds);
  if (unitsChanged) for (const id of incidentMarkers.keys()) ids.add(id);
  for (const id of ids) {
    const inc = incidents[id];
    let entry = incidentMarkers.get(id);
    if (!inc || !hasPoint(inc)) {
      if (entry) { entry.marker.remove(); incidentMarkers.delete(id); }
      continue;
    }
    if (!entry) {
      const parts = createIncidentPopup();
      const marker = L.marker([inc.lat, inc.lon], {
        icon: incidentIcon(inc.priority), keyboard: false, riseOnHover: true,
        zIndexOffset: (5 - (inc.priority || 4)) * 100,
        title: "",
      });
      marker.bindPopup(parts.box, { className: "hub-popup", maxWidth: 320, minWidth: 240 });
      marker.addTo(map);
      entry = { marker, parts, priority: inc.priority, lat: inc.lat, lon: inc.lon };
      incidentMarkers.set(id, entry);
    }
    if (entry.priority !== inc.priority) {
      entry.marker.setIcon(incidentIcon(inc.priority));
      entry.marker.setZIndexOffset((5 - (inc.priority || 4)) * 100);
      entry.priority = inc.priority;
    }
    if (entry.lat !== inc.lat || entry.lon !== inc.lon) {
      entry.marker.setLatLng([inc.lat, inc.lon]);
      entry.lat = inc.lat;
      entry.lon = inc.lon;
    }
    const iconNode = entry.marker.getElement();
    if (iconNode) iconNode.classList.toggle("done", DONE_STATES.has(inc.state));
    updateIncidentPopup(entry.parts, inc);
  }
}

// ----------------------------------------------------------------- start
function markAllDirty() {
  pending.statics = true;
  scheduleRender();
}

async function loadStatics() {
  if (!initMap()) return;
  const [townDoc, deviceList] = await Promise.all([fetchJson("/api/town"), fetchJson("/api/devices")]);
  try {
    drawTown(townDoc);
    drawDevices(Array.isArray(deviceList) ? deviceList : []);
    showMapMessage("");
  } catch (err) {
    console.error("gridhub console: cannot draw the town", err);
    showMapMessage("地图数据异常");
  }
  markAllDirty();
}

window.gridhub = {
  get state() { return feed.state; },
  get lastSeq() { return feed.lastSeq; },
  get connected() { return feed.connected; },
  get ws() { return feed.ws; },
  get phase() { return feed.phase; },
  get renderedSeq() { return renderedSeq; },
  get mapReady() { return mapReady(); },
  get map() { return map; },
  feed,
  devices,
  constants: { ELAPSED_ALERT_THRESHOLDS_S, OPERATOR },
};

tick();
const staticsDone = loadStatics().catch((err) => console.error("gridhub console: start failed", err));
Promise.race([staticsDone, new Promise((r) => setTimeout(r, FEED_WAITS_FOR_MAP_MS))])
  .then(() => feed.start());
