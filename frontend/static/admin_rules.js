// Alarm rules (/admin/rules): list, edit, enable/disable, and backtest the form's draft on
// recorded history (POST /api/rules/backtest with the rule inline) before saving it.

import { getJson } from "./api.js";
import { t } from "./i18n.js";
import { $, button, cell, fillForm, fmtTime, followEvents, formValues, send, showDone,
  showError } from "./admin_common.js";

const form = $("rule-form");
const errorBox = $("rule-error");
let rules = [];
let editing = null;  // the stored rule being edited: fields the form lacks are kept

async function load() {
  rules = await getJson("/api/rules");
  $("rule-list").querySelector("tbody").replaceChildren(...rules.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.ruleId = r.id;
    if (!r.enabled) tr.className = "retired";
    tr.append(cell(r.id), cell(r.name), cell(r.kind), cell(r.metric), cell(r.severity),
      cell(JSON.stringify(r.params), "small"), cell(r.open_alarms, "num"),
      cell(r.enabled ? t("rule.enabled") : t("rule.disabled"), "state"), cell(r.updated_by || ""));
    const actions = document.createElement("td");
    actions.className = "row-actions";
    actions.append(button(t("admin.edit"), "act-edit", () => startEdit(r)));
    if (r.enabled) actions.append(button(t("rule.disable"), "danger act-disable", () => disable(r)));
    else actions.append(button(t("rule.enable"), "act-enable", () => save({ ...r, enabled: true }, r.id)));
    tr.append(actions);
    return tr;
  }));
}

function startEdit(r) {
  editing = r;
  fillForm(form, { ...r, params: JSON.stringify(r.params) });
  $("r-id").disabled = true;
  $("rule-form-title").textContent = t("rule.form_edit", { id: r.id });
  $("rule-cancel").hidden = false;
  showError(errorBox, null);
}

function stopEdit() {
  editing = null;
  form.reset();
  $("r-id").disabled = false;
  $("rule-form-title").textContent = t("rule.form_new");
  $("rule-cancel").hidden = true;
}

// The rule the form describes, as RuleBody wants it; throws a coded error if the
// parameters are not JSON (the server checks everything else: rule.invalid).
function draft() {
  const v = formValues(form);
  let params;
  try {
    params = JSON.parse(v.params || "{}");
  } catch {
    params = null;
  }
  if (!params || typeof params !== "object" || Array.isArray(params)) {
    throw { code: "rule.params_not_json", message: t("rule.params_not_json") };
  }
  const body = { ...(editing || {}), ...v, params };
  for (const k of ["metric", "device_model", "incident_category", "qualification", "hours"]) {
    if (body[k] === "") body[k] = null;
  }
  for (const k of ["id", "open_alarms", "updated_at", "updated_by", "suppressed_total", "created_at"]) delete body[k];
  return body;
}

async function save(body, id) {
  showError(errorBox, null);
  try {
    const saved = await send("PUT", `/api/rules/${encodeURIComponent(id)}`, body);
    showDone($("rule-done"), t("rule.saved", { id: saved.id }));
    await load();
    return true;
  } catch (err) {
    showError(errorBox, err);
    return false;
  }
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  let body;
  try {
    body = draft();
  } catch (err) {
    showError(errorBox, err);
    return;
  }
  const id = editing ? editing.id : $("r-id").value.trim();
  if (await save(body, id)) stopEdit();
});
$("rule-cancel").addEventListener("click", () => { stopEdit(); showError(errorBox, null); });

async function disable(r) {
  showError(errorBox, null);
  try {
    await send("DELETE", `/api/rules/${encodeURIComponent(r.id)}`);
    await load();
  } catch (err) {
    showError(errorBox, err);
  }
}

$("rule-backtest").addEventListener("click", async () => {
  showError(errorBox, null);
  const box = $("backtest-result");
  try {
    const rule = draft();
    const hours = Number($("r-backtest-hours").value || 24);
    const now = Date.now() / 1000;
    const res = await send("POST", "/api/rules/backtest", {
      rule, rule_id: editing ? editing.id : ($("r-id").value.trim() || null),
      since: now - hours * 3600, until: now });
    $("backtest-summary").textContent = t("rule.backtest_summary", { readings: res.readings, alarms: res.alarms });
    $("backtest-episodes").querySelector("tbody").replaceChildren(...res.episodes.slice(0, 200).map((e) => {
      const tr = document.createElement("tr");
      tr.append(cell(e.device_id), cell(fmtTime(e.raised_at)), cell(fmtTime(e.cleared_at)),
        cell(e.value, "num"));
      return tr;
    }));
    box.hidden = false;
    box.dataset.alarms = String(res.alarms);
  } catch (err) {
    showError(errorBox, err);
  }
});

load().then(() => {
  document.body.dataset.ready = "1";
  // A rule saved, enabled or disabled elsewhere (another tab or user): listed at once.
  followEvents(["rule.changed"], () => load().catch((err) => showError(errorBox, err)));
}).catch((err) => showError(errorBox, err));
