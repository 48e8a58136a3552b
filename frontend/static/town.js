// The town drawn from our own data (/api/town: grids of both levels and roads), so a map
// works with no tile server. Shared by the console and the unit page.

import { el } from "./dom.js";

export const ZONE_FILL = {
  residential: "#1d3b63", commercial: "#3a2d63", industrial: "#4a3421", rural: "#163a2e",
  mixed: "#263f55",
};
export const ROAD_STYLE = {
  main: { color: "#b9c8dc", weight: 3.2, opacity: 0.75 },
  secondary: { color: "#8aa0bb", weight: 1.9, opacity: 0.6 },
  local: { color: "#5f7590", weight: 1.0, opacity: 0.55 },
};

// Our panes live inside Leaflet's overlay pane (z-index relative to it), where vector
// layers normally go, and below the marker, tooltip and popup panes.
export function makePane(map, name, zIndex, interactive = true, parent = map.getPane("overlayPane")) {
  const pane = map.createPane(name, parent);
  pane.style.zIndex = String(zIndex);
  if (!interactive) pane.style.pointerEvents = "none";
  return pane;
}

// Index of the town document: grid id -> properties, level-1 features by id, and each
// level-2 grid's first-level parent.
export function indexTown(doc) {
  const grids = new Map();
  const level1 = new Map();
  for (const f of (doc.grids && doc.grids.features) || []) {
    grids.set(f.properties.id, f.properties);
    if (f.properties.level === 1) level1.set(f.properties.id, f);
  }
  return { meta: doc.meta || {}, grids, level1 };
}

// The first-level grid a grid id belongs to (itself when it is one).
export function level1Of(grids, gridId) {
  const g = grids.get(gridId);
  if (!g) return null;
  return g.level === 1 ? g.id : g.parent || null;
}

// Draws grids, roads, grid names and the command centre. `renderers` has canvas
// renderers `grids` and `roads`; label markers go to the pane `labels` if given.
// Returns the town's bounds.
export function drawTown(map, doc, { renderers, hasTiles = false, labelPane = null,
  l2Labels = true, ccName = "" } = {}) {
  const features = (doc.grids && doc.grids.features) || [];
  const level1 = features.filter((f) => f.properties.level === 1);
  const level2 = features.filter((f) => f.properties.level === 2);

  L.geoJSON({ type: "FeatureCollection", features: level2 }, {
    renderer: renderers.grids, interactive: false,
    style: () => ({ color: "#3a6591", weight: 0.7, opacity: 0.65, dashArray: "3 4", fill: false }),
  }).addTo(map);
  const l1 = L.geoJSON({ type: "FeatureCollection", features: level1 }, {
    renderer: renderers.grids, interactive: false,
    style: (f) => ({ color: "#4cc3ff", weight: 1.8, opacity: 0.8,
      fillColor: ZONE_FILL[f.properties.zone] || "#1b2f4a", fillOpacity: hasTiles ? 0.12 : 0.55 }),
  }).addTo(map);

  const roads = ((doc.roads && doc.roads.features) || []).slice();
  const order = { local: 0, secondary: 1, main: 2 };  // main roads drawn last, on top
  roads.sort((a, b) => (order[a.properties.class] ?? 0) - (order[b.properties.class] ?? 0));
  L.geoJSON({ type: "FeatureCollection", features: roads }, {
    renderer: renderers.roads, interactive: false,
    style: (f) => Object.assign({ lineCap: "round", lineJoin: "round" },
      ROAD_STYLE[f.properties.class] || ROAD_STYLE.local),
  }).addTo(map);

  if (labelPane) {
    for (const f of features) {
      const c = f.properties.center;
      if (!Array.isArray(c) || (f.properties.level === 2 && !l2Labels)) continue;
      L.marker([c[1], c[0]], {
        pane: labelPane, interactive: false, keyboard: false,
        icon: L.divIcon({ className: `grid-label l${f.properties.level}`,
          html: el("span", "", f.properties.name), iconSize: [0, 0] }),
      }).addTo(map);
    }
  }

  const cc = (doc.meta || {}).command_center;
  if (cc && typeof cc.lon === "number") {
    const node = el("div", "cc-marker");
    node.append(el("i"), el("span", "", ccName || cc.name || ""));
    L.marker([cc.lat, cc.lon], {
      keyboard: false, interactive: false, zIndexOffset: -1000,
      icon: L.divIcon({ className: "cc-icon", html: node, iconSize: [0, 0] }),
    }).addTo(map);
  }
  return l1.getBounds().isValid() ? l1.getBounds() : L.geoJSON(doc.grids).getBounds();
}
