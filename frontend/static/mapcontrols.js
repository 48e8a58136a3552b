// The console map's controls: the "new case" and "overview" buttons and the legend (with
// the live count of units per status).

import { el } from "./dom.js";
import { label, t } from "./i18n.js";

// cmap: the ConsoleMap (its map, setCreating, clearHighlight, fitTown).
export function addButtons(cmap) {
  const Buttons = L.Control.extend({
    options: { position: "bottomright" },
    onAdd() {
      const box = el("div", "map-buttons");
      const create = el("button", "map-btn map-create", t("map.new_case"));
      create.type = "button";
      create.id = "map-create";
      create.title = t("map.new_case_title");
      create.setAttribute("aria-pressed", "false");
      create.addEventListener("click", () => cmap.setCreating(!cmap.creating));
      const home = el("button", "map-btn map-home", t("map.home"));
      home.type = "button";
      home.title = t("map.home_title");
      home.addEventListener("click", () => { cmap.clearHighlight(); cmap.fitTown(true); });
      box.append(create, home);
      L.DomEvent.disableClickPropagation(box);
      return box;
    },
  });
  new Buttons().addTo(cmap.map);
}

function legendRow(color, text, shape = "dot") {
  const row = el("div", "lg-row");
  const sw = el("i", `lg-${shape}`);
  sw.style.setProperty("--c", color);
  row.append(sw, el("span", "lg-label", text));
  return row;
}

// colors: {units: {status: color}, devices: {kind: color}, alarms: {active, acknowledged},
// priorities: {1..4: color}}. The unit counts go to cmap.legendUnitCounts (status -> node).
export function addLegend(cmap, colors) {
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
      const units = group(t("legend.units"));
      for (const [status, color] of Object.entries(colors.units)) {
        const row = legendRow(color, label("unit_status", status));
        const n = el("b", "lg-n", "0");
        n.id = `units-${status}`;
        row.append(n);
        cmap.legendUnitCounts.set(status, n);
        units.append(row);
      }
      const sensors = group(t("legend.devices"));
      for (const [kind, color] of Object.entries(colors.devices)) {
        sensors.append(legendRow(color, label("device_kind", kind), "small"));
      }
      sensors.append(legendRow(colors.alarms.active, t("legend.alarm_active"), "small"));
      sensors.append(legendRow(colors.alarms.acknowledged, t("legend.alarm_acked"), "small"));
      const cases = group(t("legend.cases"));
      for (const p of [1, 2, 3, 4]) cases.append(legendRow(colors.priorities[p], label("priority", p), "diamond"));
      return box;
    },
  });
  new Legend().addTo(cmap.map);
}
