// After-action replay (复盘): the console fed from the hub's records of a past window instead
// of the live websocket. ReplayFeed has LiveFeed's interface (feed.js: `state`, `lastSeq`,
// `onChange(change)`, `onStatus({connected, phase})`, `serverNow()`), so the console's own
// modules (board, alarms, map, KPI tiles, SLA countdowns) draw a replay exactly as they draw
// the live picture; `serverNow()` is the replay clock, so countdowns and "3 min ago" read
// as they did then.
//
// Protocol (hub/replay_api.py):
// - seek(t): GET /api/replay/picture?at=t, the live feed's snapshot frame at t (folded on
//   the server from the nearest saved snapshot), plus `clock` (the events' effective time)
//   and `unit_set_at` (when each unit's entity was last replaced).
// - playing: GET /api/replay/chunk for the span ahead of the clock: events (as the live feed
//   sends them) and unit fixes, applied as the clock passes them, merged in time order with
//   the server fold's rules (hub/replay_fold.py): an event happens at its effective time
//   (the running max of ts), a fix at its ts, moving a marker only if newer than the
//   marker's fix and than the unit's last replacement; at equal times the event first.

import { getJson } from "./api.js";
import { applyToState } from "./feed.js";
import { $, setText } from "./dom.js";
import { fmtClock, fmtLongDate } from "./i18n.js";

export const SPEEDS = [1, 2, 5, 10, 30, 60];
// Playback advances the clock this often (ms of real time): smooth enough for markers and
// countdowns, cheap at 60x (a tick applies 12 s of history at most).
export const TICK_MS = 200;
// The span of one chunk request, in seconds of real playback time: at 60x this is two
// minutes of history per request, the server's cap (CHUNK_MAX_SPAN_S).
const CHUNK_REAL_S = 2;
const CHUNK_MAX_SPAN_S = 120;
const CHUNK_MIN_SPAN_S = 10;
// Fixes are thinned on the server to one per unit per this many real seconds of playback
// (at least 1 s of history, the live feed's own per-unit rate): markers step twice a second
// on screen, and each step costs the server one index probe per unit (hub/replay_store.chunk).
const FIX_REAL_S = 0.5;
// The server KPI tiles are asked for every this many seconds of replay time (the live
// console polls every 10 s), and at most once a real second.
const KPI_REPLAY_S = 10;
const KPI_MIN_REAL_MS = 1000;
// Without a window in the URL, a replay covers the last hour it can.
const DEFAULT_WINDOW_S = 3600;

function newChange(reset) {
  return { reset, alarms: new Set(), incidents: new Set(), units: new Set(), positions: new Set(),
    events: [] };
}

// "2026-12-03T09:30" in local time <-> UNIX seconds (the inputs are datetime-local).
export function toLocalInput(t) {
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
export function fromLocalInput(text) {
  const ms = new Date(text).getTime();
  return Number.isFinite(ms) ? ms / 1000 : null;
}

export class ReplayFeed {
  // span: {from, to} (UNIX seconds or null); onSeek(t): the console reloads what is not in
  // the picture (supervisor strip); onKpis(t): the server KPI tiles at t are due.
  constructor({ span = {}, onChange = () => {}, onStatus = () => {}, onSeek = () => {},
    onKpis = () => {} } = {}) {
    this.span = { from: span.from ?? null, to: span.to ?? null };
    this.onChange = onChange;
    this.onStatus = onStatus;
    this.onSeek = onSeek;
    this.onKpis = onKpis;
    this.state = { alarms: {}, incidents: {}, units: {} };
    this.lastSeq = null;
    this.connected = false;
    this.phase = "connecting";
    this.ws = null;
    this.frames = 0;
    this.reconnects = 0;
    this.now = 0;            // the replay clock (UNIX seconds)
    this.playing = false;
    this.speed = 10;
    this.loading = false;
    this._gen = 0;           // bumped by every seek: answers for an older one are dropped
    this._events = [];       // queued events, ascending seq, each with its effective time
    this._fixes = [];        // queued fixes [unit, ts, lon, lat, speed, heading], by ts
    this._loadedTo = 0;      // records are queued up to here
    this._queuedSeq = 0;     // the last event queued (the next chunk starts after it)
    this._queuedClock = 0;   // its effective time
    this._unitSetAt = {};
    this._timer = 0;
    this._lastTick = 0;
    this._kpiAt = null;
    this._kpiReal = 0;
  }

  serverNow() {
    return this.now;
  }

  async start() {
    this._bindControls();
    const h = await getJson("/api/replay/history");
    const to = Math.min(this.span.to ?? h.to, h.to);
    let from = this.span.from ?? to - DEFAULT_WINDOW_S;
    if (h.from !== null && from < h.from) from = h.from;
    this.span = { from, to: Math.max(from, to) };
    this._renderSpan();
    await this.seek(this.span.from);
    this._timer = setInterval(() => this._tick(), TICK_MS);
  }

  stop() {
    clearInterval(this._timer);
    this.playing = false;
  }

  // ------------------------------------------------------------------ controls
  play() {
    if (this.now >= this.span.to) return;
    this.playing = true;
    this._lastTick = performance.now();
    this._renderControls();
  }

  pause() {
    this.playing = false;
    this._renderControls();
  }

  setSpeed(speed) {
    if (SPEEDS.includes(speed)) this.speed = speed;
    this._renderControls();
  }

  // The picture at t, from the server's fold; playback continues from there.
  async seek(t) {
    t = Math.min(Math.max(t, this.span.from), this.span.to);
    const gen = ++this._gen;
    this.loading = true;
    this._renderControls();
    let frame;
    try {
      frame = await getJson(`/api/replay/picture?at=${encodeURIComponent(t)}`);
    } catch (err) {
      if (gen === this._gen) {
        this.loading = false;
        this._setStatus(false, "replay_error");
        console.warn("gridhub replay: cannot load the picture", err);
      }
      return false;
    }
    if (gen !== this._gen) return false;
    this._applyFrame(frame);
    this.loading = false;
    this._setStatus(true, "replay");
    this.onSeek(this.now);
    this._kpisDue(true);
    this._renderControls();
    return true;
  }

  _applyFrame(frame) {
    for (const c of ["alarms", "incidents", "units"]) {
      const bucket = this.state[c];
      for (const k of Object.keys(bucket)) delete bucket[k];
      for (const e of frame[c] || []) bucket[String(e.id)] = e;
    }
    this.frames += 1;
    this.lastSeq = frame.seq;
    this.now = frame.at;
    this._unitSetAt = Object.assign({}, frame.unit_set_at || {});
    this._events = [];
    this._fixes = [];
    this._loadedTo = frame.at;
    this._queuedSeq = frame.seq;
    this._queuedClock = frame.clock;
    document.body.dataset.seq = String(this.lastSeq);
    document.body.dataset.replayAt = String(this.now);
    this.onChange(newChange(true));
  }

  // ------------------------------------------------------------------ playback
  _tick() {
    const real = performance.now();
    const dt = (real - this._lastTick) / 1000;
    this._lastTick = real;
    if (!this.playing || this.loading) {
      this._renderClock();
      return;
    }
    // Never past what is loaded: a slow answer stalls the replay rather than skipping.
    const target = Math.min(this.now + dt * this.speed, this.span.to, this._loadedTo);
    this._advanceTo(target);
    if (this.now >= this.span.to) this.pause();
    this._fetchAhead();
    this._kpisDue(false);
    this._renderClock();
  }

  // Applies the queued records up to t, merged in time order (see the header), and moves
  // the clock to t.
  _advanceTo(t) {
    const change = newChange(false);
    const ev = this._events;
    const fx = this._fixes;
    let i = 0;
    let j = 0;
    while (true) {
      const e = i < ev.length && ev[i].eff <= t ? ev[i] : null;
      const f = j < fx.length && fx[j][1] <= t ? fx[j] : null;
      if (!e && !f) break;
      if (e && (!f || e.eff <= f[1])) {
        applyToState(this.state, e.data, change);
        if (e.data && e.data.unit) this._unitSetAt[String(e.data.unit.id)] = e.eff;
        this.lastSeq = e.seq;
        change.events.push(e);
        i += 1;
      } else {
        this._applyFix(f, change);
        j += 1;
      }
    }
    ev.splice(0, i);
    fx.splice(0, j);
    this.now = Math.max(this.now, t);
    document.body.dataset.replayAt = String(this.now);
    if (this.lastSeq !== null) document.body.dataset.seq = String(this.lastSeq);
    if (change.events.length || change.positions.size) this.onChange(change);
  }

  _applyFix(f, change) {
    const [id, ts, lon, lat, speed, heading] = f;
    const unit = this.state.units[id];
    if (!unit) return;
    if (ts <= (this._unitSetAt[id] ?? -Infinity)) return;
    if (unit.position_ts != null && ts <= unit.position_ts) return;
    Object.assign(unit, { lon, lat, speed, heading, position_ts: ts });
    change.positions.add(id);
  }

  async _fetchAhead() {
    if (this._fetching || this._loadedTo >= this.span.to) return;
    // The next chunk is asked for once less than a chunk's span is loaded ahead: at the
    // speed played, its answer has CHUNK_REAL_S of real time to come.
    const span = Math.min(CHUNK_MAX_SPAN_S, Math.max(CHUNK_MIN_SPAN_S, this.speed * CHUNK_REAL_S));
    if (this._loadedTo - this.now > span) return;
    const gen = this._gen;
    const start = this._loadedTo;
    const end = Math.min(start + span, this.span.to);
    const step = Math.min(60, Math.max(1, this.speed * FIX_REAL_S));
    const q = new URLSearchParams({ after_seq: this._queuedSeq, clock: this._queuedClock,
      start, end, step });
    this._fetching = true;
    try {
      const c = await getJson(`/api/replay/chunk?${q}`);
      if (gen !== this._gen) return;  // a seek happened meanwhile
      let clock = this._queuedClock;
      for (const e of c.events) {
        clock = Math.max(clock, e.ts);
        this._events.push(Object.assign(e, { eff: clock }));
        this._queuedSeq = e.seq;
      }
      this._queuedClock = clock;
      for (const f of c.positions) this._fixes.push(f);
      this._loadedTo = c.end;
    } catch (err) {
      console.warn("gridhub replay: cannot load the records ahead", err);
    } finally {
      this._fetching = false;
    }
  }

  _kpisDue(force) {
    const real = performance.now();
    const stale = this._kpiAt === null || Math.abs(this.now - this._kpiAt) >= KPI_REPLAY_S;
    if (!force && (!stale || real - this._kpiReal < KPI_MIN_REAL_MS)) return;
    this._kpiAt = this.now;
    this._kpiReal = real;
    this.onKpis(this.now);
  }

  _setStatus(connected, phase) {
    const was = [this.connected, this.phase];
    this.connected = connected;
    this.phase = phase;
    if (was[0] !== connected || was[1] !== phase) this.onStatus({ connected, phase });
  }

  // ------------------------------------------------------------------ the replay bar
  _bindControls() {
    $("replay-play").addEventListener("click", () => (this.playing ? this.pause() : this.play()));
    $("replay-speed").addEventListener("change", (ev) => this.setSpeed(Number(ev.target.value)));
    const seek = $("replay-seek");
    seek.addEventListener("input", () => setText($("replay-time"), fmtClock(Number(seek.value))));
    seek.addEventListener("change", () => this.seek(Number(seek.value)));
    $("replay-window").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const from = fromLocalInput($("replay-from").value);
      const to = fromLocalInput($("replay-to").value);
      if (from === null || to === null || !(from < to)) {
        $("replay-window").dataset.invalid = "true";
        return;
      }
      delete $("replay-window").dataset.invalid;
      const url = new URL(location.href);
      url.searchParams.set("from", String(from));
      url.searchParams.set("to", String(to));
      location.assign(url.toString());
    });
  }

  _renderSpan() {
    const seek = $("replay-seek");
    seek.min = String(this.span.from);
    seek.max = String(this.span.to);
    seek.step = "any";
    $("replay-from").value = toLocalInput(this.span.from);
    $("replay-to").value = toLocalInput(this.span.to);
  }

  _renderControls() {
    const bar = $("replay-bar");
    bar.dataset.playing = String(this.playing);
    bar.dataset.loading = String(this.loading);
    $("replay-play").setAttribute("aria-pressed", String(this.playing));
    $("replay-speed").value = String(this.speed);
    this._renderClock();
  }

  _renderClock() {
    const seek = $("replay-seek");
    if (document.activeElement !== seek) seek.value = String(this.now);
    setText($("replay-time"), `${fmtLongDate(this.now)} ${fmtClock(this.now)}`);
  }
}
