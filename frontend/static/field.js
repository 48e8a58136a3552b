// The field app (hub/field_*.py): enrolment, the live inbox with resume, case steps with
// photos, navigation, reports, patrol. The phone's token stays on the phone
// (localStorage); every request carries it. Actions and reports go through the outbox
// (field_queue.js) whether or not the network is up, so offline and online work alike.

import { STRINGS, t, label, fmtDistance, fmtDuration, fmtDateTime } from "./i18n.js";
import * as queue from "./field_queue.js";

Object.assign(STRINGS, JSON.parse(document.getElementById("i18n-field").textContent));

const TOKEN_KEY = "gridhub.field.token";
const ME_KEY = "gridhub.field.me";
const SEQ_KEY = "gridhub.field.seq";
// The inbox as of the seq above, so an app opened with no network shows the cases it had
// and the feed resumes on top of them.
const CASES_KEY = "gridhub.field.cases";
// A shorter heartbeat this phone asks the hub for (seconds; the hub keeps it between 1 s
// and its own HUB_FIELD_PING_S): set on a phone that must notice a dead link sooner.
const PING_KEY = "gridhub.field.ping_s";
const UNIT_OPEN = ["dispatched", "accepted", "handling"];
const DONE = ["closed", "evaluated", "archived", "cancelled"];
const REASON_ACTIONS = ["decline", "request_extension", "verify_fail"];
const PHOTO_ACTIONS = ["give_feedback", "verify_ok", "verify_fail"];
// Reconnect after 1 s, then up to 5 s between tries: a dispatch must not wait long.
const RECONNECT_MS = [1000, 2000, 5000];
// A socket that has not said hello this long after it was opened is dropped and tried
// again: a handshake can hang where the network half-works (and did under Chromium's
// offline emulation), and a hung one would hold the feed for minutes.
const HELLO_TIMEOUT_MS = 6000;
// The hub sends a heartbeat every `ping_s` of quiet (its hello says how often); hearing
// nothing for this many of them means the socket is dead without having closed (a
// half-open connection after a change of network), so it is dropped and reopened.
const PING_MISSES = 2.5;
// The outbox is retried this often while something waits, besides on `online` and on
// each (re)connection: the `online` event can come before requests get through again.
const FLUSH_RETRY_MS = 3000;
// Patrol fixes are sent in batches this often (and kept while offline, up to the cap).
const PATROL_SEND_MS = 5000;
const PATROL_BUFFER_MAX = 2000;
const PATROL_STATS_MS = 30000;
const GEO_TIMEOUT_MS = 10000;

const $ = (id) => document.getElementById(id);
const S = {
  token: localStorage.getItem(TOKEN_KEY),
  me: JSON.parse(localStorage.getItem(ME_KEY) || "null"),
  seq: Number(localStorage.getItem(SEQ_KEY) || 0),
  cases: new Map(JSON.parse(localStorage.getItem(CASES_KEY) || "[]").map((c) => [c.id, c])),
  current: null, detail: null, ws: null, live: false, attempt: 0,
  retry: null, watchdog: null, reconnects: 0, pingMs: 15000, heardAt: 0,
  events: [], notices: [], formAction: null, patrol: { watch: null, buffer: [], sent: 0 },
};
window.field = S;  // for the browser tests and for debugging on a phone

// ------------------------------------------------------------------ helpers
class Refused extends Error {
  constructor(status, code, message) { super(message || code); this.status = status; this.code = code; }
}

async function api(method, path, { json, body, headers = {}, key } = {}) {
  const h = { Authorization: `Bearer ${S.token}`, Accept: "application/json", ...headers };
  if (json !== undefined) { h["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (key) h["Idempotency-Key"] = key;
  let res;
  try {
    res = await fetch(path, { method, headers: h, body });
  } catch {
    throw new Refused(0, "network", t("error.network"));
  }
  if (!res.ok) {
    let code = `http.${res.status}`, message = "";
    try { const b = await res.json(); code = b.error.code; message = b.error.message; } catch { /* not JSON */ }
    if (res.status === 401 && code === "auth.invalid_token") revoked();
    throw new Refused(res.status, code, message);
  }
  return res.json();
}

function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
}

function alertUser() {
  if (navigator.vibrate) navigator.vibrate([300, 100, 300]);
  try {
    const ctx = new (window.AudioContext || window.webkitAudioContext)();
    const osc = ctx.createOscillator();
    osc.frequency.value = 880;
    osc.connect(ctx.destination);
    osc.start();
    osc.stop(ctx.currentTime + 0.4);
  } catch { /* no sound before the first touch on some phones */ }
}

function notice(text, cls = "") {
  S.notices.unshift({ text, cls });
  S.notices = S.notices.slice(0, 5);
  const box = $("notices");
  box.replaceChildren(...S.notices.map((n) => {
    const d = document.createElement("div");
    d.textContent = n.text;
    if (n.cls) d.className = n.cls;
    return d;
  }));
}

function show(name) {
  for (const s of document.querySelectorAll(".screen")) s.hidden = s.id !== `screen-${name}`;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.go === name);
  S.screen = name;
}

function position() {
  return new Promise((resolve, reject) => {
    if (!navigator.geolocation) { reject(new Error("no geolocation")); return; }
    navigator.geolocation.getCurrentPosition(resolve, reject,
      { enableHighAccuracy: true, timeout: GEO_TIMEOUT_MS, maximumAge: 30000 });
  });
}

const isUnit = () => S.me && S.me.role === "unit";
const unitId = () => (S.me && S.me.unit ? S.me.unit.id : "");

// ------------------------------------------------------------------ enrolment
async function enrol(code) {
  let res;
  try {
    res = await fetch("/api/field/enrol", { method: "POST", headers: { "Content-Type": "application/json" },
                                            body: JSON.stringify({ code }) });
  } catch { toast(t("f.enrol_failed", { error: t("error.network") })); return; }
  const body = await res.json();
  if (!res.ok) { toast(t("f.enrol_failed", { error: body.error ? body.error.message : res.status })); return; }
  S.token = body.token;
  localStorage.setItem(TOKEN_KEY, body.token);
  localStorage.removeItem(SEQ_KEY);
  localStorage.removeItem(CASES_KEY);
  S.seq = 0;
  S.cases = new Map();
  history.replaceState(null, "", "/field");
  toast(t("f.enrolled", { unit: body.unit_name || body.unit_id }));
  await start();
}

function revoked() {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(ME_KEY);
  localStorage.removeItem(CASES_KEY);
  S.token = null;
  dropFeed();
  toast(t("f.revoked"));
  $("tabs").hidden = true;
  show("enrol");
}

// ------------------------------------------------------------------ inbox and live feed
function mine(inc) {
  if (isUnit()) return inc.assigned_unit === unitId() && UNIT_OPEN.includes(inc.state);
  const grids = S.me.grids || [];
  return (grids.includes(inc.grid_id) && inc.state === "feedback")
    || (inc.reporter === unitId() && !DONE.includes(inc.state));
}

function applyEvent(msg) {
  const inc = msg.incident;
  if (!inc) return;
  const had = S.cases.has(inc.id);
  const now = mine(inc);
  if (isUnit() && had && !now && (msg.released_unit === unitId() || msg.action === "withdraw")) {
    S.cases.delete(inc.id);
    notice(t("f.withdrawn", { id: inc.id }), "withdrawn");
    alertUser();
  } else if (now && !had) {
    S.cases.set(inc.id, inc);
    if (inc.reporter !== unitId() || inc.state === "feedback") {
      notice(t(isUnit() ? "f.dispatched" : "f.to_verify", { id: inc.id, title: inc.title }));
      alertUser();
    }
  } else if (now) {
    S.cases.set(inc.id, inc);
  } else if (had) {
    S.cases.delete(inc.id);
    notice(t("f.updated", { id: inc.id, state: label("state", inc.state) }));
  }
  renderCases();
  if (S.current === inc.id && S.screen === "case") openCase(inc.id, { quiet: true });
}

function renderCases() {
  const list = $("cases");
  const cases = [...S.cases.values()].sort((a, b) => a.priority - b.priority || a.id - b.id);
  localStorage.setItem(CASES_KEY, JSON.stringify(cases));
  if (!cases.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = t("f.no_cases");
    list.replaceChildren(li);
  } else {
    list.replaceChildren(...cases.map((c) => {
      const li = document.createElement("li");
      li.className = `p${c.priority}`;
      li.dataset.id = c.id;
      li.innerHTML = `<span class="st"></span><b></b><div class="meta"></div>`;
      li.querySelector(".st").textContent = label("state", c.state);
      li.querySelector("b").textContent = `#${c.id} ${c.title}`;
      li.querySelector(".meta").textContent = `${label("priority", c.priority)} · ${label("category", c.category)}`;
      li.addEventListener("click", () => openCase(c.id));
      return li;
    }));
  }
  const badge = $("badge");
  badge.hidden = !cases.length;
  badge.textContent = String(cases.length);
}

async function loadInbox() {
  const box = await api("GET", "/api/field/inbox");
  S.cases = new Map(box.cases.map((c) => [c.id, c]));
  if (!S.seq) setSeq(box.seq);  // first start: the feed continues from the list's seq
  renderCases();
}

function setSeq(seq) {
  if (seq > S.seq) {
    S.seq = seq;
    localStorage.setItem(SEQ_KEY, String(seq));
  }
}

// The live feed. One socket at a time (S.ws); a socket that is replaced or given up on
// is dropped: its handlers detached first, so a late close from it (a socket closed
// while the network is down stays "closing" until the network returns) cannot disturb
// the next one. navigator.onLine is only a hint: `online` reconnects at once, but the
// retries go on while it says offline, since phones report it wrongly both ways.
function connect() {
  clearTimeout(S.retry);
  S.retry = null;
  if (!S.token || S.ws) return;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ping = Number(localStorage.getItem(PING_KEY)) > 0 ? `&ping=${Number(localStorage.getItem(PING_KEY))}` : "";
  const ws = new WebSocket(`${proto}//${location.host}/ws/field?token=${encodeURIComponent(S.token)}&after=${S.seq}${ping}`);
  S.ws = ws;
  watch(HELLO_TIMEOUT_MS);
  ws.onmessage = (ev) => {
    if (S.ws !== ws) return;
    const msg = JSON.parse(ev.data);
    if (msg.type === "hello") {
      S.live = true;
      S.attempt = 0;
      S.pingMs = (msg.ping_s || 15) * 1000;
      netStatus();
      flushSoon(0);  // the hub is reachable: send what waits
    } else if (msg.type === "ping") {
      setSeq(msg.seq);  // everything up to it that concerns this phone has arrived
    } else if (msg.type === "event" && msg.seq > S.seq) {
      S.events.push(msg);
      applyEvent(msg);
      setSeq(msg.seq);
    }
    S.heardAt = Date.now();
    watch(S.pingMs * PING_MISSES);
  };
  ws.onclose = () => { if (S.ws === ws) dropFeed(); };
}

// Give up on the current socket (if any) and try again: at once, or after the backoff.
function dropFeed({ now = false } = {}) {
  const ws = S.ws;
  S.ws = null;
  clearTimeout(S.watchdog);
  if (ws) {
    ws.onmessage = ws.onclose = null;
    if (ws.readyState < WebSocket.CLOSING) ws.close();
  }
  if (S.live) { S.live = false; netStatus(); }
  clearTimeout(S.retry);
  S.retry = null;
  if (!S.token) return;
  const wait = now ? 0 : RECONNECT_MS[Math.min(S.attempt, RECONNECT_MS.length - 1)];
  if (!now) S.attempt += 1;
  S.reconnects += 1;
  S.retry = setTimeout(connect, wait);
}

// The socket must say something within `ms` (its hello, an event or a heartbeat).
function watch(ms) {
  clearTimeout(S.watchdog);
  const ws = S.ws;
  S.watchdog = setTimeout(() => { if (S.ws === ws) dropFeed(); }, ms);
}

function netStatus() {
  const el = $("net");
  const online = navigator.onLine;
  el.textContent = !online ? t("f.offline") : S.live ? t("f.live_on") : t("f.live_off");
  el.classList.toggle("off", !online || !S.live);
}

// ------------------------------------------------------------------ the outbox
async function send(item) {
  const body = { ...item.body };
  if (item.photos && item.photos.length) {
    body.photos = [];
    for (const blob of item.photos) {
      const up = await api("POST", "/api/field/photos",
                           { body: blob, headers: { "Content-Type": blob.type || "application/octet-stream" } });
      body.photos.push(up.sha256);
    }
  }
  return api("POST", item.path, { json: body, key: item.key });
}

// Flush soon (coalesced); while something still waits afterwards, try again later.
function flushSoon(ms = FLUSH_RETRY_MS) {
  clearTimeout(S.flushTimer);
  S.flushTimer = setTimeout(flush, ms);
}

async function flush() {
  if (!S.token) return;
  clearTimeout(S.flushTimer);
  await queue.flush(send, ({ item, answer, error }) => {
    if (answer) {
      toast(t("f.sent", { what: item.label }));
      if (answer.incident) applyEvent({ incident: answer.incident, action: item.body.action || "report" });
    } else {
      toast(t("f.refused", { what: item.label, error: error.message || error.code }));
    }
  });
  await renderPending();
  if (S.pending.some((i) => i.state === "waiting")) flushSoon();
}

async function renderPending() {
  const items = await queue.all();
  S.pending = items.map((i) => ({ key: i.key, label: i.label, state: i.state, error: i.error }));
  $("pending-summary").textContent = items.length ? t("f.pending_n", { n: items.length }) : t("f.pending_none");
  $("pending").replaceChildren(...items.map((i) => {
    const li = document.createElement("li");
    li.className = i.state;
    const span = document.createElement("span");
    span.textContent = i.state === "failed" ? `${i.label} — ${i.error}` : i.label;
    li.append(span);
    if (i.state === "failed") {
      const b = document.createElement("button");
      b.textContent = t("f.discard");
      b.onclick = async () => { await queue.remove(i.key); renderPending(); };
      li.append(b);
    }
    return li;
  }));
}

async function submit(req) {
  await queue.enqueue(req);
  toast(t("f.queued"));
  await renderPending();
  flush();
}

// ------------------------------------------------------------------ a case
function actionsFor(inc, log) {
  if (isUnit()) {
    if (inc.assigned_unit !== unitId()) return [];
    const arrived = log.length && log[log.length - 1].action === "arrive";
    return {
      dispatched: ["accept", "decline"],
      accepted: [...(arrived ? [] : ["arrive"]), "start_handling", "request_extension"],
      handling: ["give_feedback", "request_extension"],
    }[inc.state] || [];
  }
  return inc.state === "feedback" && (S.me.grids || []).includes(inc.grid_id) ? ["verify_ok", "verify_fail"] : [];
}

const actionLabel = (a) => (a === "arrive" ? t("f.action.arrive") : label("action", a));

async function openCase(id, { quiet = false } = {}) {
  S.current = id;
  if (!quiet) { show("case"); $("route-info").textContent = ""; $("case-form").hidden = true; }
  let detail = { incident: S.cases.get(id), photos: [], log: [] };
  try { detail = await api("GET", `/api/field/cases/${id}`); } catch { /* offline: what the list has */ }
  if (!detail.incident) return;
  S.detail = detail;
  const inc = detail.incident;
  $("case-title").textContent = `#${inc.id} ${inc.title}`;
  $("case-meta").textContent = `${label("state", inc.state)} · ${label("priority", inc.priority)} · ${label("category", inc.category)} · ${inc.grid_id || ""}`;
  $("case-desc").textContent = inc.description || "";
  $("case-actions").replaceChildren(...actionsFor(inc, detail.log).map((a) => {
    const b = document.createElement("button");
    b.dataset.action = a;
    b.textContent = actionLabel(a);
    if (a === "decline" || a === "verify_fail") b.className = "danger";
    b.onclick = () => chooseAction(inc, a);
    return b;
  }));
  $("case-photos").replaceChildren(...detail.photos.map((p) => {
    const f = document.createElement("figure");
    if (!p.intact) f.className = "broken";
    const img = document.createElement("img");
    img.alt = t(`f.stage.${p.stage}`);
    authImage(img, p.thumb_url);
    const cap = document.createElement("figcaption");
    cap.textContent = `${t(`f.stage.${p.stage}`)} · ${p.taken_at ? fmtDateTime(p.taken_at) : ""}`;
    f.append(img, cap);
    return f;
  }));
  $("case-log").replaceChildren(...detail.log.map((e) => {
    const li = document.createElement("li");
    li.textContent = `${fmtDateTime(e.ts)} ${e.action === "arrive" ? t("f.action.arrive") : label("action", e.action)} · ${e.actor}${e.reason && e.action !== "evidence" ? ` · ${e.reason}` : ""}`;
    return li;
  }));
}

// Photos need the token: fetched, then shown from a blob URL.
async function authImage(img, url) {
  try {
    const res = await fetch(url, { headers: { Authorization: `Bearer ${S.token}` } });
    if (res.ok) img.src = URL.createObjectURL(await res.blob());
  } catch { /* offline */ }
}

function chooseAction(inc, action) {
  if (!REASON_ACTIONS.includes(action) && !PHOTO_ACTIONS.includes(action)) {
    act(inc, action, "", []);
    return;
  }
  S.formAction = action;
  $("case-form").hidden = false;
  $("case-note").value = "";
  $("case-photo").value = "";
  $("case-thumbs").replaceChildren();
  $("case-photo").parentElement.querySelector(".photo-label").hidden = !PHOTO_ACTIONS.includes(action);
  $("case-photo").hidden = !PHOTO_ACTIONS.includes(action);
  $("case-submit").textContent = actionLabel(action);
  $("case-note").focus();
}

function act(inc, action, note, files) {
  submit({
    path: `/api/field/cases/${inc.id}/actions`,
    body: { action, reason: note || null },
    photos: files,
    label: t("f.item.action", { action: actionLabel(action), id: inc.id }),
  });
}

function thumbs(input, box) {
  box.replaceChildren(...[...input.files].map((f) => {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(f);
    return img;
  }));
}

// The town's roads and grids under the phone's maps (no tile server, as on the console).
let townDoc = null;
async function townLayers(m) {
  if (!townDoc) {
    try { townDoc = await api("GET", "/api/field/town"); } catch { return; }
  }
  L.geoJSON(townDoc.grids, { filter: (f) => f.properties.level === 2, interactive: false,
                             style: { color: "#9aa7b8", weight: 1, fill: false } }).addTo(m);
  L.geoJSON(townDoc.roads, { interactive: false, style: { color: "#555", weight: 2 } }).addTo(m);
}

let map = null;
async function navigate() {
  const inc = S.detail && S.detail.incident;
  if (!inc) return;
  let q = "";
  try {
    const pos = await position();
    q = `?lon=${pos.coords.longitude}&lat=${pos.coords.latitude}`;
  } catch { /* the hub uses the unit's last fix */ }
  let r;
  try { r = await api("GET", `/api/field/cases/${inc.id}/route${q}`); } catch (err) { toast(err.message); return; }
  const eta = fmtDuration(r.eta_s);
  const info = t(r.by_road ? "f.route" : "f.route_line", { d: fmtDistance(r.distance_m), eta });
  if (!window.L) { S.route = r; $("route-info").textContent = info; return; }
  if (!map) map = L.map("map", { zoomControl: true, attributionControl: false });
  map.eachLayer((l) => map.removeLayer(l));
  const latlngs = r.points.map(([x, y]) => [y, x]);
  // A view first: Leaflet's vector renderer needs one before layers are added.
  map.fitBounds(L.latLngBounds(latlngs), { padding: [20, 20] });
  await townLayers(map);
  const line = L.polyline(latlngs, { color: "#0b3d91", weight: 6 }).addTo(map);
  const [sx, sy] = r.points[0];
  L.circleMarker([sy, sx], { radius: 9, color: "#000", fillColor: "#1b5e20", fillOpacity: 1 }).addTo(map);
  L.circleMarker([inc.lat, inc.lon], { radius: 11, color: "#000", fillColor: "#b00020", fillOpacity: 1 }).addTo(map);
  map.fitBounds(line.getBounds(), { padding: [20, 20] });
  S.route = r;
  $("route-info").textContent = info;
}

// ------------------------------------------------------------------ report
// The report's place: the phone's position, or a point tapped on the map.
let reportMap = null, pickMarker = null;
async function openReport() {
  S.pick = null;
  $("report-where").textContent = t("f.where_here");
  if (!window.L) return;
  if (!reportMap) {
    reportMap = L.map("report-map", { attributionControl: false });
    if (townDoc && townDoc.meta && townDoc.meta.command_center) {
      const cc = townDoc.meta.command_center;
      reportMap.setView([cc.lat, cc.lon], 13);
    } else {
      reportMap.setView([0, 0], 2);  // replaced below; Leaflet needs a view before layers
    }
    await townLayers(reportMap);
    reportMap.on("click", (ev) => {
      S.pick = { lon: ev.latlng.lng, lat: ev.latlng.lat };
      if (pickMarker) pickMarker.remove();
      pickMarker = L.circleMarker(ev.latlng, { radius: 10, color: "#000", fillColor: "#b00020", fillOpacity: 1 }).addTo(reportMap);
      $("report-where").textContent = t("f.where_picked", { lat: S.pick.lat.toFixed(5), lon: S.pick.lon.toFixed(5) });
    });
  }
  if (pickMarker) { pickMarker.remove(); pickMarker = null; }
  try {
    const pos = await position();
    reportMap.setView([pos.coords.latitude, pos.coords.longitude], 15);
  } catch {
    if (townDoc && townDoc.meta && townDoc.meta.command_center) {
      const cc = townDoc.meta.command_center;
      reportMap.setView([cc.lat, cc.lon], 13);
    }
  }
  reportMap.invalidateSize();
}

async function sendReport(ev) {
  ev.preventDefault();
  let lon, lat;
  if (S.pick) {
    ({ lon, lat } = S.pick);
  } else {
    try {
      const pos = await position();
      lon = pos.coords.longitude;
      lat = pos.coords.latitude;
    } catch (err) { toast(t("f.geo_denied", { error: err.message })); return; }
  }
  const category = $("report-category").value;
  await submit({
    path: "/api/field/reports",
    body: { category, description: $("report-desc").value, lon, lat },
    photos: [...$("report-photo").files],
    label: t("f.item.report", { category: label("category", category) }),
  });
  $("report-form").reset();
  $("report-thumbs").replaceChildren();
  S.pick = null;
  if (pickMarker) { pickMarker.remove(); pickMarker = null; }
  $("report-where").textContent = t("f.where_here");
  toast(t("f.report_done"));
}

// ------------------------------------------------------------------ patrol
function patrolToggle() {
  const p = S.patrol;
  if (p.watch !== null) {
    navigator.geolocation.clearWatch(p.watch);
    clearInterval(p.timer);
    p.watch = null;
    sendFixes();
  } else {
    p.watch = navigator.geolocation.watchPosition((pos) => {
      const c = pos.coords;
      const fix = { lat: c.latitude, lon: c.longitude, ts: pos.timestamp / 1000 };
      if (c.accuracy != null) fix.acc = c.accuracy;
      if (c.speed != null && c.speed >= 0) fix.speed = c.speed;
      if (c.heading != null && c.heading >= 0 && c.heading <= 360) fix.heading = c.heading;
      p.buffer.push(fix);
      if (p.buffer.length > PATROL_BUFFER_MAX) p.buffer.shift();
    }, (err) => toast(t("f.geo_denied", { error: err.message })), { enableHighAccuracy: true });
    p.timer = setInterval(sendFixes, PATROL_SEND_MS);
  }
  renderPatrol();
}

async function sendFixes() {
  const p = S.patrol;
  if (!p.buffer.length || !navigator.onLine) return;
  const batch = p.buffer.splice(0, p.buffer.length);
  try {
    await api("POST", "/api/field/positions", { body: JSON.stringify(batch), headers: { "Content-Type": "application/json" } });
    p.sent += batch.length;
  } catch (err) {
    if (!err.status) p.buffer.unshift(...batch);  // offline: keep them for later
    else toast(t("f.position_bad", { error: err.message }));
  }
  renderPatrol();
  loadPatrol();
}

async function loadPatrol() {
  try {
    const s = await api("GET", "/api/field/patrol");
    $("patrol-km").textContent = fmtDistance(s.distance_m);
    $("patrol-duty").textContent = fmtDuration(s.duty_s);
  } catch { /* offline */ }
}

function renderPatrol() {
  const on = S.patrol.watch !== null;
  $("patrol-state").textContent = on ? t("f.patrol_on") : t("f.patrol_off");
  $("patrol-toggle").textContent = on ? t("f.patrol_off") : t("f.patrol_on");
  $("patrol-sent").textContent = String(S.patrol.sent);
}

// ------------------------------------------------------------------ start
async function start() {
  if (!S.token) { show("enrol"); return; }
  $("tabs").hidden = false;
  try {
    S.me = await api("GET", "/api/field/me");
    localStorage.setItem(ME_KEY, JSON.stringify(S.me));
  } catch (err) {
    if (!S.me) { if (err.status) revoked(); return; }
  }
  if (!S.token) return;
  $("who").textContent = `${S.me.unit.name} (${S.me.unit.id})`;
  $("report-category").replaceChildren(...S.me.categories.map((c) => {
    const o = document.createElement("option");
    o.value = c.code;
    o.textContent = label("category", c.code);
    return o;
  }));
  show("inbox");
  renderPatrol();
  try { await loadInbox(); } catch { renderCases(); }
  connect();
  netStatus();
  await renderPending();
  flush();
  loadPatrol();
  S.ready = true;
}

function wire() {
  $("enrol-form").addEventListener("submit", (ev) => { ev.preventDefault(); enrol($("enrol-code").value); });
  for (const b of document.querySelectorAll("[data-go]")) {
    b.addEventListener("click", () => {
      show(b.dataset.go);
      if (b.dataset.go === "report") openReport();
    });
  }
  $("nav-btn").addEventListener("click", navigate);
  $("case-photo").addEventListener("change", () => thumbs($("case-photo"), $("case-thumbs")));
  $("report-photo").addEventListener("change", () => thumbs($("report-photo"), $("report-thumbs")));
  $("report-form").addEventListener("submit", sendReport);
  $("patrol-toggle").addEventListener("click", patrolToggle);
  $("case-submit").addEventListener("click", () => {
    const inc = S.detail.incident, action = S.formAction, note = $("case-note").value.trim();
    if (REASON_ACTIONS.includes(action) && !note) { toast(t("f.reason_needed")); return; }
    act(inc, action, note, [...$("case-photo").files]);
    $("case-form").hidden = true;
  });
  // Back online: whatever the socket seems to be (it may be half-open, or a close still
  // waiting for the network), a new one now, resuming from the last seq seen.
  window.addEventListener("online", () => {
    S.attempt = 0;
    dropFeed({ now: true });
    netStatus();
    flush();
  });
  window.addEventListener("offline", () => { dropFeed(); netStatus(); });
  // A phone's timers sleep with its screen: on waking, a feed silent too long is dead.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible" || !S.token) return;
    if (!S.ws) connect();
    else if (S.live && Date.now() - S.heardAt > S.pingMs * PING_MISSES) dropFeed({ now: true });
  });
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/field/sw.js", { scope: "/field" }).catch(() => {});
  }
}

wire();
const hash = new URLSearchParams(location.hash.slice(1));
if (hash.get("enrol")) {
  $("enrol-code").value = hash.get("enrol");
  enrol(hash.get("enrol"));
} else {
  start();
}
