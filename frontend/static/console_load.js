// Synthetic units for the console's load check (tests/test_pages_browser.py): loaded by the
// test into an open console, never by the pages. The units live only in this page's picture
// and move when moveUnits() feeds a positions batch through the feed's own frame handler.
const PREFIX = "SIM-";

function change(ids) {
  return { reset: false, alarms: new Set(), incidents: new Set(), units: new Set(ids),
    positions: new Set(), events: [] };
}

export function injectUnits(g, n) {
  const b = g.ctx.map.fitBounds;
  const [s, w, nn, e] = b && b.isValid() ? [b.getSouth(), b.getWest(), b.getNorth(), b.getEast()]
    : [31.76, 120.36, 31.86, 120.5];
  const statuses = ["available", "dispatched", "en_route", "on_scene", "returning"];
  const types = ["squad", "police", "grid_worker"];
  const ids = [];
  const now = Date.now() / 1000;
  for (let k = 0; k < n; k += 1) {
    const id = `${PREFIX}${String(k).padStart(5, "0")}`;
    g.state.units[id] = {
      id, name: `Test unit ${k}`, type: types[k % 3], status: statuses[k % 5],
      qualifications: [], current_incident: null,
      lat: s + Math.random() * (nn - s), lon: w + Math.random() * (e - w),
      speed: 5, heading: Math.random() * 360, position_ts: now,
    };
    ids.push(id);
  }
  g.rerender(change(ids));
  return ids.length;
}

// Moves the synthetic units (all, or those whose number % parts === part: the server's
// batches carry a slice of the units every short tick, not all of them at once).
export function moveUnits(g, stepDeg = 0.0004, part = 0, parts = 1) {
  const positions = {};
  const ts = Date.now() / 1000;
  for (const [id, u] of Object.entries(g.state.units)) {
    if (!id.startsWith(PREFIX)) continue;
    if (parts > 1 && Number(id.slice(PREFIX.length)) % parts !== part) continue;
    const h = (u.heading * Math.PI) / 180;
    positions[id] = { lon: u.lon + stepDeg * Math.sin(h), lat: u.lat + stepDeg * Math.cos(h),
      speed: u.speed, heading: (u.heading + 7) % 360, ts };
  }
  g.applyFrame({ type: "batch", events: [], positions });
  return Object.keys(positions).length;
}

export function removeUnits(g) {
  const ids = Object.keys(g.state.units).filter((id) => id.startsWith(PREFIX));
  for (const id of ids) delete g.state.units[id];
  g.rerender(change(ids));
  return ids.length;
}
