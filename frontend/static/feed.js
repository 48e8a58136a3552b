// The live feed client: one resumable websocket to /ws/live (protocol: hub/live.py).
//
// Contract
// - `state` is the open picture, `{alarms: {id: alarm}, incidents: {...}, units: {...}}`,
//   keyed by String(entity.id); the three objects keep their identity for the life of the
//   page (a snapshot empties and refills them), so a reference taken once stays current.
// - `lastSeq` is the highest seq applied (null until the first snapshot). Events with
//   seq <= lastSeq are ignored, so a replayed or duplicated event is never applied twice.
// - After every connect the client sends {"type":"hello","last_seq": lastSeq, "acks": true};
//   the server answers with the missed events (a batch) or a snapshot. On close it
//   reconnects with backoff (BACKOFF_INITIAL_MS doubling to BACKOFF_MAX_MS).
// - Flow control ("acks": true): every ACK_EVERY_FRAMES frames carrying positions, the
//   client sends {"type":"ack","positions": n} (n = such frames received on this
//   connection). The server keeps only a few position frames unacknowledged and merges the
//   rest (latest fix per unit) while a busy page catches up; events are never held.
// - `onChange(change)` is called once per frame that changed anything, after the frame is
//   applied: change = {reset, alarms: Set<id>, incidents: Set<id>, units: Set<id>,
//   positions: Set<unitId>, events: [{seq, ts, kind, data}]}. `reset` means "everything may
//   have changed" (a snapshot replaced the state).
// - `onStatus({connected, phase})`: phase is "connecting" (first attempt), "live" (synced:
//   the server answered our hello) or "reconnecting".

// First retry after half a second (a hub restart takes about that long to listen again);
// doubling, capped at 5 s so that a console recovers within seconds of the hub coming back.
export const BACKOFF_INITIAL_MS = 500;
export const BACKOFF_MAX_MS = 5000;
// A socket that neither opens nor closes within this long (black-holed network) is dropped
// and retried; the server itself gives a client 5 s to say hello.
export const CONNECT_TIMEOUT_MS = 10000;
// The server answers a hello at once; no answer within this long means a stuck connection.
export const HELLO_TIMEOUT_MS = 15000;
// Below this, a difference between our clock and the server's is network latency, not skew:
// only a clearly wrong clock is corrected (see serverNow()).
export const CLOCK_SKEW_TOLERANCE_S = 5;
// How many recent event timestamps the skew estimate looks at.
const SKEW_SAMPLES = 20;
// Acknowledge every this many position frames (about 5 acks/s at the server's 50 ms tick):
// well under the server's window of unacknowledged frames (hub/live.py
// POSITION_WINDOW_FRAMES = 10), so a page that keeps up is never held back.
export const ACK_EVERY_FRAMES = 4;

// Mirror of core/events.py: ENTITY_COLLECTIONS, CLOSED_INCIDENT_STATES, entity_is_open.
const ENTITY_COLLECTIONS = [["alarm", "alarms"], ["incident", "incidents"], ["unit", "units"]];
const CLOSED_INCIDENT_STATES = new Set(["archived", "cancelled"]);

export function entityIsOpen(collection, entity) {
  if (collection === "alarms") return entity.state !== "cleared";
  if (collection === "incidents") return !CLOSED_INCIDENT_STATES.has(entity.state);
  return true;
}

export function emptyState() {
  return { alarms: {}, incidents: {}, units: {} };
}

// Apply one event's entities to the state in place (mirror of core.events.apply_to_state).
// `changed`, if given, collects the touched ids per collection.
export function applyToState(state, payload, changed) {
  if (!payload) return;
  for (const [key, collection] of ENTITY_COLLECTIONS) {
    const entity = payload[key];
    if (entity === undefined || entity === null) continue;
    const bucket = state[collection] || (state[collection] = {});
    const ident = String(entity.id);
    if (entityIsOpen(collection, entity)) {
      bucket[ident] = Object.assign({}, entity);
    } else {
      delete bucket[ident];
    }
    if (changed) changed[collection].add(ident);
  }
}

function newChange(reset) {
  return {
    reset, alarms: new Set(), incidents: new Set(), units: new Set(), positions: new Set(),
    events: [],
  };
}

function clearObject(obj) {
  for (const k of Object.keys(obj)) delete obj[k];
}

export function liveUrl(path = "/ws/live") {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}${path}`;
}

export class LiveFeed {
  constructor({ url = liveUrl(), onChange = () => {}, onStatus = () => {} } = {}) {
    this.url = url;
    this.onChange = onChange;
    this.onStatus = onStatus;
    this.state = emptyState();
    this.lastSeq = null;
    this.connected = false;
    this.ws = null;
    this.phase = "connecting";
    this.frames = 0;
    this.reconnects = 0;
    this._backoff = BACKOFF_INITIAL_MS;
    this._retryTimer = 0;
    this._watchdog = 0;
    this._stopped = true;
    this._synced = false;
    this._skewSamples = [];
    this.clockSkewS = 0;
    this._positionFrames = 0;
  }

  start() {
    if (!this._stopped) return;
    this._stopped = false;
    this._onOnline = () => { if (!this.ws) this._retryNow(); };
    window.addEventListener("online", this._onOnline);
    this._connect();
  }

  stop() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    clearTimeout(this._watchdog);
    window.removeEventListener("online", this._onOnline);
    if (this.ws) this.ws.close();
  }

  // Server time in UNIX seconds: our clock, corrected only when clearly skewed.
  serverNow() {
    return Date.now() / 1000 + this.clockSkewS;
  }

  // --------------------------------------------------------------- connection
  _connect() {
    clearTimeout(this._retryTimer);
    this._retryTimer = 0;
    this._synced = false;
    this._positionFrames = 0;  // frames with positions received on this connection
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.warn("gridhub feed: cannot open websocket", err);
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    this._armWatchdog(CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      if (ws !== this.ws) return;
      ws.send(JSON.stringify({ type: "hello", last_seq: this.lastSeq, acks: true }));
      this._armWatchdog(HELLO_TIMEOUT_MS);
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this._onFrame(ev.data);
    };
    ws.onerror = () => { /* a close event follows; it decides what to do */ };
    ws.onclose = () => {
      if (ws !== this.ws) return;
      this.ws = null;
      clearTimeout(this._watchdog);
      this._setStatus(false, "reconnecting");
      if (!this._stopped) this._scheduleReconnect();
    };
  }

  _armWatchdog(ms) {
    clearTimeout(this._watchdog);
    const ws = this.ws;
    this._watchdog = setTimeout(() => {
      if (ws === this.ws && !this._synced) {
        console.warn("gridhub feed: no answer from the server, reconnecting");
        ws.close();
      }
    }, ms);
  }

  _scheduleReconnect() {
    clearTimeout(this._retryTimer);
    const delay = this._backoff;
    this._backoff = Math.min(this._backoff * 2, BACKOFF_MAX_MS);
    this._retryTimer = setTimeout(() => this._retryNow(), delay);
  }

  _retryNow() {
    if (this._stopped || this.ws) return;
    this.reconnects += 1;
    this._connect();
  }

  _setStatus(connected, phase) {
    const was = [this.connected, this.phase];
    this.connected = connected;
    this.phase = phase;
    if (was[0] !== connected || was[1] !== phase) this.onStatus({ connected, phase });
  }

  // --------------------------------------------------------------- frames
  _onFrame(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (err) {
      console.warn("gridhub feed: unreadable frame", err);
      return;
    }
    this.frames += 1;
    let change = null;
    switch (msg && msg.type) {
      case "snapshot":
        change = this._applySnapshot(msg);
        break;
      case "batch":
        change = this._applyBatch(msg);
        break;
      case "resync":
        // Drop the state; the snapshot that follows refills it. lastSeq goes too, so a
        // reconnect in between asks for a snapshot rather than resuming.
        this._clearState();
        this.lastSeq = null;
        break;
      default:
        console.warn("gridhub feed: unknown frame type", msg && msg.type);
        return;
    }
    if (!this._synced && msg.type !== "resync") {
      this._synced = true;
      clearTimeout(this._watchdog);
      this._backoff = BACKOFF_INITIAL_MS;
      this._setStatus(true, "live");
    }
    if (this.lastSeq !== null) document.body.dataset.seq = String(this.lastSeq);
    if (change) this.onChange(change);
  }

  _clearState() {
    for (const collection of ["alarms", "incidents", "units"]) clearObject(this.state[collection]);
  }

  _applySnapshot(msg) {
    this._clearState();
    const fill = (collection, list) => {
      const bucket = this.state[collection];
      for (const e of list || []) bucket[String(e.id)] = e;
    };
    fill("alarms", msg.alarms);
    fill("incidents", msg.incidents);
    fill("units", msg.units);
    this.lastSeq = typeof msg.seq === "number" ? msg.seq : null;
    return newChange(true);
  }

  _applyBatch(msg) {
    const change = newChange(false);
    const resumed = !this._synced;  // the catch-up batch after a hello: old timestamps
    let latestTs = null;
    for (const ev of msg.events || []) {
      if (this.lastSeq !== null && ev.seq <= this.lastSeq) continue;
      applyToState(this.state, ev.data, change);
      this.lastSeq = ev.seq;
      change.events.push(ev);
      if (typeof ev.ts === "number") latestTs = ev.ts;
    }
    if (latestTs !== null && !resumed) this._sampleClock(latestTs);
    const units = this.state.units;
    const positions = msg.positions || {};
    this._ackPositions(positions);
    for (const id of Object.keys(positions)) {
      const unit = units[id];
      const p = positions[id];
      if (!unit || !p) continue;
      // A late fix never moves the marker backwards (as LiveState.on_position).
      if (unit.position_ts != null && p.ts != null && p.ts <= unit.position_ts) continue;
      unit.lon = p.lon;
      unit.lat = p.lat;
      unit.speed = p.speed;
      unit.heading = p.heading;
      unit.position_ts = p.ts;
      change.positions.add(id);
    }
    const empty = !change.events.length && !change.positions.size;
    return empty ? null : change;
  }

  _ackPositions(positions) {
    // Only frames carrying positions count, as on the server.
    let any = false;
    for (const _id in positions) { any = true; break; }
    if (!any) return;
    this._positionFrames += 1;
    const ws = this.ws;
    if (this._positionFrames % ACK_EVERY_FRAMES === 0 && ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "ack", positions: this._positionFrames }));
    }
  }

  _sampleClock(serverTs) {
    // An event's ts is its commit time, a little before we see it: the largest recent
    // (serverTs - ourNow) is the best lower bound of the true offset.
    const samples = this._skewSamples;
    samples.push(serverTs - Date.now() / 1000);
    if (samples.length > SKEW_SAMPLES) samples.shift();
    const offset = Math.max(...samples);
    this.clockSkewS = Math.abs(offset) > CLOCK_SKEW_TOLERANCE_S ? offset : 0;
  }
}
