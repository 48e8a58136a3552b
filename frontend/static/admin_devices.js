// Device administration (/admin/devices): the list, the register/edit form, MQTT
// credentials revealed once with a QR code, the SenML name-mapping overrides,
// decommissioning and a device's health.

import { getJson } from "./api.js";
import { t } from "./i18n.js";
import { $, bindEditForm, bindReveal, button, cell, fillForm, fmtTime, reveal, send,
  showDone, showError } from "./admin_common.js";

const API = "/api/admin/devices";
const form = $("device-form");
const errorBox = $("device-error");
const doneBox = $("device-done");
let devices = [];
let editing = null;  // the id being edited, or null for a new device
const gridNames = new Map();

async function loadGrids() {
  const town = await getJson("/api/town");
  const select = $("f-grid");
  for (const f of (town.grids && town.grids.features) || []) {
    const p = f.properties;
    gridNames.set(p.id, p.name);
    const opt = document.createElement("option");
    opt.value = p.id;
    opt.textContent = `${p.name} (${p.id})`;
    select.append(opt);
  }
}

async function load() {
  devices = await getJson(API);
  render();
}

function render() {
  const filter = $("device-filter").value.trim().toLowerCase();
  const retired = $("show-retired").checked;
  const body = $("device-list").querySelector("tbody");
  const rows = [];
  for (const d of devices) {
    if (!retired && !d.active) continue;
    if (filter && !`${d.id} ${d.name} ${d.model}`.toLowerCase().includes(filter)) continue;
    const tr = document.createElement("tr");
    tr.dataset.deviceId = d.id;
    if (!d.active) tr.className = "retired";
    tr.append(cell(d.id), cell(d.name), cell(d.kind), cell(d.model),
      cell(gridNames.get(d.grid_id) || d.grid_id),
      cell(`${Number(d.lon).toFixed(5)}, ${Number(d.lat).toFixed(5)}`, "small"),
      cell((d.metrics || []).join(", "), "small"), cell(d.interval_s, "num"),
      cell(!d.active ? t("dev.retired") : d.mqtt_active ? t("dev.mqtt_active") : t("dev.mqtt_none")));
    const actions = document.createElement("td");
    actions.className = "row-actions";
    if (d.active) {
      actions.append(
        button(t("admin.edit"), "act-edit", () => startEdit(d)),
        button(t("dev.credentials"), "act-credentials", () => credentials(d)),
        button(t("dev.health"), "act-health", () => health(d)),
        button(t("dev.senml"), "act-senml", () => openSenml(d)),
        button(t("dev.decommission"), "danger act-decommission", () => decommission(d)));
    } else {
      actions.append(button(t("dev.health"), "act-health", () => health(d)));
    }
    tr.append(actions);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function startEdit(d) {
  editing = d.id;
  fillForm(form, d);
  $("f-id").disabled = true;
  $("f-kind").disabled = true;
  $("device-form-title").textContent = t("dev.form_edit", { id: d.id });
  $("device-cancel").hidden = false;
  showError(errorBox, null);
  form.scrollIntoView({ block: "nearest" });
}

function stopEdit() {
  editing = null;
  form.reset();
  $("f-id").disabled = false;
  $("f-kind").disabled = false;
  $("device-form-title").textContent = t("dev.form_new");
  $("device-cancel").hidden = true;
}

bindEditForm(form, {
  api: API, errorBox, editingId: () => editing,
  onSaved: async (saved, wasEdit) => {
    showDone(doneBox, t(wasEdit ? "dev.updated" : "dev.registered", { id: saved.id }));
    stopEdit();
    await load();
  },
});
$("device-cancel").addEventListener("click", () => { stopEdit(); showError(errorBox, null); });
$("device-filter").addEventListener("input", render);
$("show-retired").addEventListener("change", render);

async function credentials(d) {
  showError(errorBox, null);
  try {
    const c = await send("POST", `${API}/${encodeURIComponent(d.id)}/credentials`);
    reveal({ title: t("dev.reveal_title", { id: d.id }), qrSvg: c.qr_svg,
      fields: [[t("dev.username"), c.username], [t("dev.password"), c.password],
        [t("dev.broker"), `${c.host}:${c.port}`]] });
    if (c.broker && c.broker.files_written === false) {
      showError(errorBox, { code: "mqtt.broker_not_updated",
        message: t("dev.broker_not_updated", { detail: c.broker.detail || "" }) });
    }
    await load();
  } catch (err) {
    showError(errorBox, err);
  }
}

async function decommission(d) {
  if (!window.confirm(t("dev.confirm_decommission", { id: d.id }))) return;
  showError(errorBox, null);
  try {
    await send("DELETE", `${API}/${encodeURIComponent(d.id)}`);
    showDone(doneBox, t("dev.decommissioned", { id: d.id }));
    if (editing === d.id) stopEdit();
    await load();
  } catch (err) {
    showError(errorBox, err);
  }
}

function fact(list, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

async function health(d) {
  const card = $("health-card");
  try {
    const h = await getJson(`${API}/${encodeURIComponent(d.id)}/health`);
    $("health-title").textContent = t("dev.health_title", { id: d.id });
    const facts = $("health-facts");
    facts.replaceChildren();
    const c = h.clock;
    fact(facts, t("dev.skew"), c ? Number(c.skew_s).toFixed(2) : t("dev.skew_none"));
    fact(facts, t("dev.late"), c ? String(c.late) : "0");
    const latest = $("health-latest").querySelector("tbody");
    latest.replaceChildren(...h.latest.map((r) => {
      const tr = document.createElement("tr");
      tr.append(cell(r.metric), cell(r.value, "num"), cell(fmtTime(r.ts)),
        cell(Number(r.lag_s).toFixed(2), "num"));
      return tr;
    }));
    if (!h.latest.length) {
      const tr = document.createElement("tr");
      const td = cell(t("dev.no_readings"), "dim");
      td.colSpan = 4;
      tr.append(td);
      latest.append(tr);
    }
    const dead = $("health-dead").querySelector("tbody");
    dead.replaceChildren(...h.dead_letters.map((r) => {
      const tr = document.createElement("tr");
      tr.append(cell(fmtTime(r.received_at)), cell(r.reason), cell(r.detail, "small"),
        cell(r.topic, "small"));
      return tr;
    }));
    if (!h.dead_letters.length) {
      const tr = document.createElement("tr");
      const td = cell(t("dev.no_dead"), "dim");
      td.colSpan = 4;
      tr.append(td);
      dead.append(tr);
    }
    card.hidden = false;
    card.scrollIntoView({ block: "nearest" });
  } catch (err) {
    showError(errorBox, err);
  }
}

// ---- SenML name mapping (PUT /api/devices/{id}/senml-map, hub/senml_map_api.py):
// edited as "key = metric" lines; the server checks keys and metrics (senml_map.invalid).
let senmlDevice = null;
const senmlError = $("senml-error");

async function openSenml(d) {
  showError(senmlError, null);
  try {
    const m = await getJson(`/api/devices/${encodeURIComponent(d.id)}/senml-map`);
    senmlDevice = d.id;
    $("senml-title").textContent = t("dev.senml_title", { id: d.id });
    $("senml-map").value = Object.entries(m.map || {}).map(([k, v]) => `${k} = ${v}`).join("\n");
    const defs = m.defaults;
    const rows = [...Object.entries(defs.units),
      ...Object.entries(defs.lwm2m_objects).map(([o, v]) => [`${o}/*/${defs.lwm2m_resource}`, v])];
    $("senml-defaults").querySelector("tbody").replaceChildren(...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      tr.append(cell(k), cell(v));
      return tr;
    }));
    const card = $("senml-card");
    card.hidden = false;
    card.dataset.deviceId = d.id;
    card.scrollIntoView({ block: "nearest" });
  } catch (err) {
    showError(errorBox, err);
  }
}

// The textarea's lines as a map; throws a coded error naming a line that is not one.
function senmlMap(text) {
  const map = {};
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line) return;
    const at = line.lastIndexOf("=");
    const key = at < 0 ? "" : line.slice(0, at).trim();
    const metric = at < 0 ? "" : line.slice(at + 1).trim();
    if (!key || !metric) {
      throw { code: "senml_map.bad_line", message: t("dev.senml_bad_line", { n: i + 1, line }) };
    }
    map[key] = metric;
  });
  return map;
}

$("senml-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError(senmlError, null);
  try {
    const map = senmlMap($("senml-map").value);
    await send("PUT", `/api/devices/${encodeURIComponent(senmlDevice)}/senml-map`, { map });
    showDone($("senml-done"), t("dev.senml_saved", { id: senmlDevice }));
  } catch (err) {
    showError(senmlError, err);
  }
});
$("senml-close").addEventListener("click", () => {
  $("senml-card").hidden = true;
  senmlDevice = null;
});

bindReveal();
Promise.all([loadGrids(), load()]).then(() => {
  render();
  document.body.dataset.ready = "1";
}).catch((err) => showError(errorBox, err));
