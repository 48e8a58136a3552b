// Squads and units (/admin/units): create and edit units, and the duty roster: on/off duty
// by hand with a handover note, shifts, and the duty log.

import { getJson } from "./api.js";
import { label, t } from "./i18n.js";
import { $, bindEditForm, button, cell, fillForm, fmtTime, formValues, send,
  showDone, showError } from "./admin_common.js";

const API = "/api/admin/units";
const form = $("unit-form");
const errorBox = $("unit-error");
const doneBox = $("unit-done");
const dutyError = $("duty-error");
let units = [];
let editing = null;
let selected = null;  // the unit whose roster is open
const gridNames = new Map();

for (const span of document.querySelectorAll("[data-dept]")) {
  span.textContent = label("dept", span.dataset.dept);
}

async function loadGrids() {
  const town = await getJson("/api/town");
  const select = $("u-grid");
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
  units = await getJson(API);
  render();
  if (selected) {
    const u = units.find((x) => x.id === selected);
    if (u) await openRoster(u);
  }
}

const shiftText = (s) => `${s.weekdays.map((d) => t(`unit.weekday.${d}`)).join("")} ${s.starts}–${s.ends}`;

function render() {
  const filter = $("unit-filter").value.trim().toLowerCase();
  const rows = [];
  for (const u of units) {
    if (filter && !`${u.id} ${u.name}`.toLowerCase().includes(filter)) continue;
    const tr = document.createElement("tr");
    tr.dataset.unitId = u.id;
    const last = u.last_duty;
    tr.append(cell(u.id), cell(u.name), cell(u.type),
      cell((u.qualifications || []).map((q) => label("dept", q)).join(", "), "small"),
      cell(u.members, "num"), cell(gridNames.get(u.home_grid) || u.home_grid),
      cell(t(`unit.status.${u.status}`), `status status-${u.status}`),
      cell((u.shifts || []).map(shiftText).join("; "), "small"),
      cell(last ? `${fmtTime(last.at)} ${last.note || ""}` : "", "small"));
    const actions = document.createElement("td");
    actions.className = "row-actions";
    actions.append(button(t("admin.edit"), "act-edit", () => startEdit(u)),
      button(t("unit.duty"), "act-duty", () => openRoster(u)));
    tr.append(actions);
    rows.push(tr);
  }
  $("unit-list").querySelector("tbody").replaceChildren(...rows);
}

function startEdit(u) {
  editing = u.id;
  fillForm(form, u);
  $("u-id").disabled = true;
  $("u-type").disabled = true;
  $("unit-form-title").textContent = t("unit.form_edit", { id: u.id });
  $("unit-cancel").hidden = false;
  showError(errorBox, null);
}

function stopEdit() {
  editing = null;
  form.reset();
  $("u-id").disabled = false;
  $("u-type").disabled = false;
  $("unit-form-title").textContent = t("unit.form_new");
  $("unit-cancel").hidden = true;
}

bindEditForm(form, {
  api: API, errorBox, editingId: () => editing,
  onSaved: async (saved, wasEdit) => {
    showDone(doneBox, t(wasEdit ? "unit.saved" : "unit.created", { id: saved.id }));
    stopEdit();
    await load();
  },
});
$("unit-cancel").addEventListener("click", () => { stopEdit(); showError(errorBox, null); });
$("unit-filter").addEventListener("input", render);

async function openRoster(u) {
  selected = u.id;
  $("duty-card").hidden = false;
  $("duty-card").dataset.unitId = u.id;
  $("duty-title").textContent = `${t("unit.duty_title", { name: u.name, id: u.id })} · ${t(`unit.status.${u.status}`)}`;
  const list = $("shift-list");
  list.replaceChildren(...(u.shifts || []).map((s) => {
    const li = document.createElement("li");
    li.dataset.shiftId = String(s.id);
    li.append(document.createTextNode(shiftText(s)), button(t("unit.remove_shift"), "act-remove-shift",
      () => act("DELETE", `${API}/${encodeURIComponent(u.id)}/shifts/${s.id}`)));
    return li;
  }));
  if (!(u.shifts || []).length) {
    const li = document.createElement("li");
    li.className = "dim";
    li.textContent = t("unit.no_shifts");
    list.append(li);
  }
  const log = await getJson(`${API}/${encodeURIComponent(u.id)}/duty-log`);
  $("duty-log").querySelector("tbody").replaceChildren(...log.map((r) => {
    const tr = document.createElement("tr");
    tr.append(cell(fmtTime(r.at)),
      cell(`${r.on_duty ? t("unit.on_duty") : t("unit.off_duty")} (${r.source === "hand" ? t("unit.by_hand") : t("unit.by_schedule")})`),
      cell(r.actor), cell(r.note));
    return tr;
  }));
}

async function act(method, url, body) {
  showError(dutyError, null);
  try {
    await send(method, url, body);
    await load();
    return true;
  } catch (err) {
    showError(dutyError, err);
    return false;
  }
}

async function setDuty(onDuty) {
  if (!selected) return;
  const ok = await act("POST", `${API}/${encodeURIComponent(selected)}/duty`,
    { on_duty: onDuty, note: $("duty-note").value.trim() });
  if (ok) $("duty-note").value = "";
}
$("duty-on").addEventListener("click", () => setDuty(true));
$("duty-off").addEventListener("click", () => setDuty(false));
$("shift-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (selected) act("POST", `${API}/${encodeURIComponent(selected)}/shifts`, formValues($("shift-form")));
});

Promise.all([loadGrids(), load()]).then(() => {
  render();
  document.body.dataset.ready = "1";
}).catch((err) => showError(errorBox, err));
