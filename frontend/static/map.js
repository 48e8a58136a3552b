// The console's map: the town, sensors coloured by alarm state, units moving live (one
// canvas for all points, so thousands of markers stay smooth), incidents as pins, the
// highlighted first-level grid, and the "new case here" click.

import { $, el, hasPoint, setClass, setText } from "./dom.js";
import { fmtTime, label, t } from "./i18n.js";
import { drawTown, makePane } from "./town.js";
import { UnitLayer } from "./unitlayer.js";
import { addButtons, addLegend } from "./mapcontrols.js";

export const PRIORITY_COLOR = { 1: "#ff4d4f", 2: "#ff9f1a", 3: "#ffd43b", 4: "#4dabf7" };
export const UNIT_STATUS_COLOR = {
  available: "#37d67a", dispatched: "#ffb020", en_route: "#3fa9ff", on_scene: "#ff5ca8",
  returning: "#a58bff", off_duty: "#5b6b80",
};
const UNIT_RADIUS = { squad: 7, police: 6, grid_worker: 5 };
const DEVICE_KIND_COLOR = { traffic: "#38c6f4", safety: "#f7a440", environment: "#8bd450" };
const DEVICE_ALARM_COLOR = { active: "#ff3b3b", acknowledged: "#ffb020" };
// Incidents past handling are drawn dimmed.
export const DONE_STATES = new Set(["closed", "evaluated", "archived", "shelved", "cancelled"]);
// Level-2 grid names appear once the map is zoomed in this far beyond the town view.
const L2_LABEL_ZOOM_DELTA = 1.5;

export class ConsoleMap {
  // ctx: {feed, town: {grids, level1, meta}, devices: Map, config}
  constructor(ctx) {
    this.ctx = ctx;
    this.map = null;
    this.fitBounds = null;
    this.townZoom = 0;
    this.deviceMarkers = new Map();  // device id -> L.CircleMarker
    this.deviceAlarmState = new Map();  // device id -> "active" | "acknowledged"
    this.alarmPulses = new Map();  // device id -> L.Marker (ring on active alarms)
    this.unitLayer = null;  // UnitLayer: every unit on one canvas
    this.incidentMarkers = new Map();  // incident id -> {marker, parts, priority, lat, lon}
    this.legendUnitCounts = new Map();  // status -> count element
    this.highlight = null;  // {id, layer}
    this.creating = false;
    this.onCreateAt = null;  // (lat, lon) => void
    this.townDrawn = false;
    this.devicesDrawn = false;
  }

  get ready() { return !!this.map && this.townDrawn && this.devicesDrawn; }

  message(text) {
    const node = $("map-message");
    node.textContent = text || "";
    node.hidden = !text;
  }

  init() {
    if (typeof L === "undefined") {
      this.message(t("map.no_library"));
      return false;
    }
    const tileUrl = this.ctx.config.tile_url;
    const map = L.map("map", {
      preferCanvas: true, zoomControl: false, attributionControl: !!tileUrl,
      zoomSnap: 0.1, zoomDelta: 0.5, wheelPxPerZoomLevel: 120, worldCopyJump: false,
    });
    this.map = map;
    makePane(map, "grids", 1, false);
    makePane(map, "roads", 2, false);
    makePane(map, "highlight", 3, false);
    makePane(map, "labels", 4, false);
    makePane(map, "points", 5);
    makePane(map, "units", 6, false);
    makePane(map, "pulses", 590, false, map.getPane("mapPane"));
    // The static town has canvases of its own, so a moving unit never redraws it; devices
    // (few, static) are Leaflet circle markers; units have a canvas layer of their own.
    this.renderers = {
      grids: L.canvas({ pane: "grids" }), roads: L.canvas({ pane: "roads" }),
      devices: L.canvas({ pane: "points", tolerance: 3 }),
    };
    this.unitLayer = new UnitLayer({ pane: "units" });
    this.unitLayer.tooltipFor = (id) => this.unitInfo(id)();
    this.unitLayer.onClick = (id) => window.open(`/units/${encodeURIComponent(id)}`, "_blank");
    this.unitLayer.addTo(map);
    if (tileUrl) {
      L.tileLayer(tileUrl, { maxZoom: 19, className: "tiles-dark" }).addTo(map);
      document.body.classList.add("has-tiles");
    }
    L.control.zoom({ position: "bottomright", zoomInTitle: t("map.zoom_in"),
      zoomOutTitle: t("map.zoom_out") }).addTo(map);
    addButtons(this);
    addLegend(this, { units: UNIT_STATUS_COLOR, devices: DEVICE_KIND_COLOR, alarms: DEVICE_ALARM_COLOR,
      priorities: PRIORITY_COLOR });
    map.on("zoomend", () => this.updateLabelVisibility());
    // In "new case" mode any click on the map counts, also one on a marker or a canvas
    // point (which Leaflet would otherwise keep to itself): caught before Leaflet sees it.
    map.getContainer().addEventListener("click", (ev) => {
      if (!this.creating || ev.target.closest(".leaflet-control")) return;
      ev.stopPropagation();
      ev.preventDefault();
      const at = map.mouseEventToLatLng(ev);
      this.setCreating(false);
      if (this.onCreateAt) this.onCreateAt(at.lat, at.lng);
    }, true);
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && this.creating) this.setCreating(false);
    });
    map.on("contextmenu", (ev) => {  // right click: a new case here, without the button
      this.setCreating(false);
      if (this.onCreateAt) this.onCreateAt(ev.latlng.lat, ev.latlng.lng);
    });
    return true;
  }

  drawTown(doc) {
    // In a group of its own, so that an import (town.changed) can replace it (redrawTown).
    this.townLayer = L.layerGroup().addTo(this.map);
    this.fitBounds = drawTown(this.townLayer, doc, {
      renderers: this.renderers, hasTiles: !!this.ctx.config.tile_url, labelPane: "labels",
      ccName: t("town.command_center"),
    });
    if (this.fitBounds.isValid()) {
      this.fitTown(false);
      this.townZoom = this.map.getZoom();
      this.map.setMinZoom(Math.max(0, this.townZoom - 1.5));
      this.map.setMaxBounds(this.fitBounds.pad(0.6));
    } else {
      this.map.setView([31.8, 120.43], 13);
      this.townZoom = 13;
    }
    this.updateLabelVisibility();
    this.townDrawn = true;
  }

  fitTown(animate = true) {
    if (this.fitBounds && this.fitBounds.isValid()) {
      this.map.fitBounds(this.fitBounds, { padding: [18, 18], animate });
    }
  }

  updateLabelVisibility() {
    this.map.getContainer().classList.toggle("show-l2",
      this.map.getZoom() >= this.townZoom + L2_LABEL_ZOOM_DELTA);
  }

  focusPoint(lat, lon, then) {
    if (!this.map || typeof lat !== "number" || typeof lon !== "number") return;
    const zoom = Math.max(this.map.getZoom(), this.townZoom + 2);
    this.map.setView([lat, lon], zoom, { animate: true });
    if (then) this.map.once("moveend", then);
  }

  setCreating(on) {
    this.creating = on;
    if (on) this.map.closePopup();
    this.map.getContainer().classList.toggle("creating", on);
    const button = $("map-create");
    if (button) {
      button.classList.toggle("active", on);
      button.setAttribute("aria-pressed", String(on));
    }
    const hint = $("map-hint");
    if (hint) hint.hidden = !on;
  }

  renderUnitCounts(byStatus) {
    for (const [status, node] of this.legendUnitCounts) setText(node, byStatus[status] || 0);
  }

  // ------------------------------------------------------------- grid highlight
  highlightGrid(id) {
    this.clearHighlight();
    const f = this.ctx.town.level1.get(id);
    if (!f || !this.map) return;
    const layer = L.geoJSON(f, {
      pane: "highlight", interactive: false,
      style: () => ({ color: "#ffffff", weight: 3.5, opacity: 0.95, fillColor: "#3fc8ff",
        fillOpacity: 0.22 }),
    }).addTo(this.map);
    this.highlight = { id, layer };
    const b = layer.getBounds();
    if (b.isValid()) this.map.fitBounds(b, { padding: [60, 60], maxZoom: this.townZoom + 2.5 });
  }

  clearHighlight() {
    if (this.highlight) this.highlight.layer.remove();
    this.highlight = null;
    document.dispatchEvent(new CustomEvent("gridhub:highlight", { detail: { id: null } }));
  }

  // ------------------------------------------------------------- devices
  deviceStyle(device, alarmState) {
    if (alarmState) {
      return { radius: alarmState === "active" ? 5.5 : 4.5, stroke: true, color: "#ffffff",
        weight: alarmState === "active" ? 1.5 : 1, opacity: 0.9,
        fillColor: DEVICE_ALARM_COLOR[alarmState], fillOpacity: 1 };
    }
    return { radius: 3, stroke: false, weight: 0,
      fillColor: DEVICE_KIND_COLOR[device.kind] || "#9fb3c8", fillOpacity: 0.85 };
  }

  deviceTooltip(device) {
    return () => {
      const box = el("div", "tip");
      box.append(el("div", "tip-title", device.name));
      box.append(el("div", "tip-line",
        `${label("device_kind", device.kind)} · ${device.model || ""} · ${device.id}`));
      const grid = this.ctx.town.grids.get(device.grid_id);
      if (grid) box.append(el("div", "tip-line", grid.name));
      if (this.deviceAlarmState.get(device.id)) {
        const open = Object.values(this.ctx.feed.state.alarms).filter((a) => a.device_id === device.id);
        for (const a of open.slice(0, 4)) {
          box.append(el("div", `tip-alarm sev-${a.severity}`,
            t("fmt.paren", { a: `${label("severity", a.severity)} ${a.message || a.rule_id}`,
              b: label("alarm_state", a.state) })));
        }
      }
      box.append(el("div", "tip-line dim", t("map.device_click")));
      return box;
    };
  }

  drawDevices(list) {
    for (const d of list) {
      this.ctx.devices.set(d.id, d);
      if (!hasPoint(d) || !this.map) continue;
      const marker = L.circleMarker([d.lat, d.lon], Object.assign(
        { renderer: this.renderers.devices, bubblingMouseEvents: false }, this.deviceStyle(d, null)));
      marker.bindTooltip(this.deviceTooltip(d), { direction: "top", offset: [0, -4], className: "hub-tip" });
      marker.on("click", () => window.open(`/devices/${encodeURIComponent(d.id)}`, "_blank"));
      marker.addTo(this.map);
      this.deviceMarkers.set(d.id, marker);
    }
    this.devicesDrawn = true;
  }

  // The town's grids and roads replaced by an import: drawn again, the view kept.
  redrawTown(doc) {
    if (this.townLayer) this.townLayer.remove();
    this.townLayer = L.layerGroup().addTo(this.map);
    drawTown(this.townLayer, doc, {
      renderers: this.renderers, hasTiles: !!this.ctx.config.tile_url, labelPane: "labels",
      ccName: t("town.command_center"),
    });
    this.updateLabelVisibility();
  }

  // A device registered, edited, moved or decommissioned on the admin pages (the feed's
  // device.changed event): its marker is redrawn, or removed when it is no longer active.
  applyDevice(d) {
    const old = this.deviceMarkers.get(d.id);
    if (old) old.remove();
    this.deviceMarkers.delete(d.id);
    if (d.active === false) {
      this.ctx.devices.delete(d.id);
      return;
    }
    this.drawDevices([d]);
  }

  renderDeviceAlarms() {
    const next = new Map();
    for (const a of Object.values(this.ctx.feed.state.alarms)) {
      if (a.state === "active") next.set(a.device_id, "active");
      else if (a.state === "acknowledged" && !next.has(a.device_id)) next.set(a.device_id, "acknowledged");
    }
    const touched = new Set([...next.keys(), ...this.deviceAlarmState.keys()]);
    for (const id of touched) {
      const before = this.deviceAlarmState.get(id) || null;
      const after = next.get(id) || null;
      if (before === after) continue;
      if (after) this.deviceAlarmState.set(id, after); else this.deviceAlarmState.delete(id);
      const device = this.ctx.devices.get(id);
      const marker = this.deviceMarkers.get(id);
      if (marker && device) {
        marker.setStyle(this.deviceStyle(device, after));
        if (after) marker.bringToFront();
      }
      const pulse = this.alarmPulses.get(id);
      if (after === "active" && !pulse && device && hasPoint(device)) {
        this.alarmPulses.set(id, L.marker([device.lat, device.lon], {
          pane: "pulses", interactive: false, keyboard: false,
          icon: L.divIcon({ className: "alarm-pulse", iconSize: [0, 0] }),
        }).addTo(this.map));
      } else if (after !== "active" && pulse) {
        pulse.remove();
        this.alarmPulses.delete(id);
      }
    }
  }

  openDeviceTooltip(deviceId) {
    const m = this.deviceMarkers.get(deviceId);
    if (m) m.openTooltip();
  }

  // ------------------------------------------------------------- units
  unitStyle(unit) {
    return {
      radius: UNIT_RADIUS[unit.type] || 5,
      stroke: unit.type === "police" ? "#e6f0ff" : "#07111f", weight: 1.5,
      fill: UNIT_STATUS_COLOR[unit.status] || "#9fb3c8",
    };
  }

  unitInfo(id) {
    return () => {
      const state = this.ctx.feed.state;
      const u = state.units[id];
      const box = el("div", "tip");
      if (!u) return box;
      box.append(el("div", "tip-title", u.name));
      box.append(el("div", "tip-line", `${label("unit_type", u.type)} · ${label("unit_status", u.status)}`));
      if (u.current_incident != null) {
        const inc = state.incidents[String(u.current_incident)];
        box.append(el("div", "tip-line",
          t("map.unit_case", { id: u.current_incident, title: inc ? inc.title : "" })));
      }
      const facts = [];
      if (typeof u.speed === "number") facts.push(`${(u.speed * 3.6).toFixed(0)} km/h`);
      if (typeof u.position_ts === "number") facts.push(t("map.fix_at", { t: fmtTime(u.position_ts, this.ctx.now()) }));
      if (facts.length) box.append(el("div", "tip-line dim", facts.join(" · ")));
      box.append(el("div", "tip-line dim", t("map.unit_click")));
      return box;
    };
  }

  renderUnits(unitIds, positionIds) {
    const units = this.ctx.feed.state.units;
    const layer = this.unitLayer;
    const ids = unitIds.size ? new Set([...unitIds, ...positionIds]) : positionIds;
    for (const id of ids) {
      const u = units[id];
      if (!u || !hasPoint(u)) {
        if (!u) layer.delete(id);
        continue;
      }
      layer.set(id, u.lat, u.lon, unitIds.has(id) || !layer.has(id) ? this.unitStyle(u) : null);
    }
    layer.draw();
  }

  // ------------------------------------------------------------- incidents
  incidentIcon(priority) {
    const p = PRIORITY_COLOR[priority] ? priority : 4;
    const node = el("div", `inc-marker p${p}`);
    node.append(el("i"));
    return L.divIcon({ className: "inc-icon", html: node, iconSize: [0, 0] });
  }

  createIncidentPopup(id) {
    const box = el("div", "inc-popup");
    const head = el("div", "ip-head");
    const prio = el("span", "prio");
    const title = el("span", "ip-title");
    head.append(prio, title);
    const rows = {};
    const table = el("dl", "ip-facts");
    for (const key of ["id", "state", "unit", "grid", "source", "opened"]) {
      table.append(el("dt", "", t(`popup.${key}`)));
      rows[key] = el("dd", `ip-${key}`);
      table.append(rows[key]);
    }
    const desc = el("p", "ip-desc");
    const link = el("a", "ip-link", t("board.open_case"));
    link.href = `/cases/${encodeURIComponent(id)}`;
    link.target = "_blank";
    box.append(head, table, desc, link);
    return { box, prio, title, rows, desc };
  }

  updateIncidentPopup(parts, inc) {
    const state = this.ctx.feed.state;
    const p = PRIORITY_COLOR[inc.priority] ? inc.priority : 4;
    setClass(parts.prio, `prio p${p}`);
    setText(parts.prio, label("priority", inc.priority));
    setText(parts.title, inc.title);
    setText(parts.rows.id, `#${inc.id}`);
    setText(parts.rows.state, label("state", inc.state));
    const unit = inc.assigned_unit ? state.units[inc.assigned_unit] : null;
    setText(parts.rows.unit, unit ? t("fmt.paren", { a: unit.name, b: label("unit_status", unit.status) })
      : inc.assigned_unit || t("board.unassigned"));
    const grid = this.ctx.town.grids.get(inc.grid_id);
    setText(parts.rows.grid, grid ? t("fmt.paren", { a: grid.name, b: inc.grid_id }) : inc.grid_id || "—");
    setText(parts.rows.source, label("source", inc.source));
    setText(parts.rows.opened, fmtTime(inc.opened_at, this.ctx.now()));
    setText(parts.desc, inc.description || "");
    parts.desc.hidden = !inc.description;
  }

  renderIncidentMarkers(incidentIds, unitsChanged) {
    const incidents = this.ctx.feed.state.incidents;
    const ids = new Set(incidentIds);
    if (unitsChanged) for (const id of this.incidentMarkers.keys()) ids.add(id);
    for (const id of ids) {
      const inc = incidents[id];
      let entry = this.incidentMarkers.get(id);
      if (!inc || !hasPoint(inc)) {
        if (entry) { entry.marker.remove(); this.incidentMarkers.delete(id); }
        continue;
      }
      if (!entry) {
        const parts = this.createIncidentPopup(id);
        const marker = L.marker([inc.lat, inc.lon], {
          icon: this.incidentIcon(inc.priority), keyboard: false, riseOnHover: true,
          zIndexOffset: (5 - (inc.priority || 4)) * 100, title: "",
        });
        marker.bindPopup(parts.box, { className: "hub-popup", maxWidth: 320, minWidth: 240 });
        marker.addTo(this.map);
        entry = { marker, parts, priority: inc.priority, lat: inc.lat, lon: inc.lon };
        this.incidentMarkers.set(id, entry);
      }
      if (entry.priority !== inc.priority) {
        entry.marker.setIcon(this.incidentIcon(inc.priority));
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
      this.updateIncidentPopup(entry.parts, inc);
    }
  }

  openIncident(id) {
    const inc = this.ctx.feed.state.incidents[id];
    const entry = this.incidentMarkers.get(id);
    if (hasPoint(inc)) this.focusPoint(inc.lat, inc.lon, () => entry && entry.marker.openPopup());
  }
}
