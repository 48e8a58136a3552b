// Grids and roads (/admin/grids): read two GeoJSON files, let the hub validate them and
// say what would change (preview), draw them on a map, and only then replace.

import { t } from "./i18n.js";
import { $, send, showDone, showError } from "./admin_common.js";

const errorBox = $("grid-error");
let upload = null;  // the body checked by the last successful preview
const map = L.map("grid-map", { zoomSnap: 0.1 }).setView([31.8, 120.43], 12);
let layer = null;

async function readJson(input) {
  const file = input.files && input.files[0];
  if (!file) return null;
  const text = await file.text();
  try {
    return JSON.parse(text);
  } catch {
    throw { code: "geojson.not_json", message: t("grid.not_json", { file: file.name }) };
  }
}

function fact(list, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

function showPlan(plan) {
  const list = $("grid-plan");
  list.replaceChildren();
  const ids = (xs) => (xs.length ? `${xs.length}: ${xs.slice(0, 20).join(", ")}${xs.length > 20 ? " …" : ""}` : "0");
  fact(list, t("grid.total"), String(plan.grids.total));
  fact(list, t("grid.added"), ids(plan.grids.added));
  fact(list, t("grid.changed"), ids(plan.grids.changed));
  fact(list, t("grid.removed"), ids(plan.grids.removed));
  fact(list, t("grid.in_use"), ids(plan.in_use));
  fact(list, t("grid.road_total"), String(plan.roads.total));
  fact(list, t("grid.roads_added"), ids(plan.roads.added));
  fact(list, t("grid.roads_removed"), ids(plan.roads.removed));
  list.hidden = false;
  list.dataset.inUse = String(plan.in_use.length);
}

function draw(town) {
  if (layer) layer.remove();
  layer = L.layerGroup().addTo(map);
  const grids = L.geoJSON(town.grids, { style: (f) => ({
    color: f.properties.level === 1 ? "#4cc3ff" : "#3a6591", weight: f.properties.level === 1 ? 2 : 0.8,
    fillOpacity: f.properties.level === 1 ? 0.25 : 0, dashArray: f.properties.level === 1 ? null : "3 4" }) });
  grids.eachLayer((l) => l.bindTooltip(`${l.feature.properties.name} (${l.feature.properties.id})`));
  grids.addTo(layer);
  L.geoJSON(town.roads, { style: () => ({ color: "#d8c48a", weight: 2 }) }).addTo(layer);
  if (grids.getBounds().isValid()) map.fitBounds(grids.getBounds());
  document.body.dataset.previewFeatures = String(town.grids.features.length);
}

$("grid-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError(errorBox, null);
  $("grid-import").disabled = true;
  upload = null;
  try {
    const grids = await readJson($("g-grids"));
    const roads = await readJson($("g-roads"));
    const body = { grids };
    if (roads) body.roads = roads;
    const res = await send("POST", "/api/admin/town/preview", body);
    showPlan(res);
    draw(res.town);
    upload = body;
    $("grid-import").disabled = res.in_use.length > 0;
  } catch (err) {
    $("grid-plan").hidden = true;
    showError(errorBox, err);
  }
});

$("grid-import").addEventListener("click", async () => {
  if (!upload) return;
  showError(errorBox, null);
  try {
    const res = await send("POST", "/api/admin/town/import", upload);
    showPlan(res);
    showDone($("grid-done"), t("grid.imported"));
    $("grid-import").disabled = true;
    upload = null;
  } catch (err) {
    showError(errorBox, err);
  }
});

fetch("/api/town").then((r) => r.json()).then((town) => {
  draw(town);
  document.body.dataset.ready = "1";
}).catch((err) => showError(errorBox, err));
