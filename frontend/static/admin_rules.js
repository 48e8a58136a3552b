// Alarm rules (/admin/rules): list, edit, enable/disable, and backtest the form's draft on
// recorded history (POST /api/rules/backtest with the rule inline) before saving it, its
// progress shown while it runs (GET /api/rules/backtest/{job}) and cancellable (DELETE).

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

// How often the page asks a running backtest how far it has got: the child reports about
// once a second (PROGRESS_S in ingest/backtest_job.py), so asking faster shows nothing new.
const PROGRESS_POLL_MS = 1000;
let backtestJob = null;  // the running backtest's job id, while the page waits for it

// A job id of our own, so that its progress can be asked for and the job cancelled
// (crypto.randomUUID needs a secure context; getRandomValues does not).
function newJobId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return `page-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function showProgress(p) {
  const box = $("backtest-progress");
  const bar = $("backtest-bar");
  if (!p) {
    bar.removeAttribute("value");  // indeterminate until the child's first report
    $("backtest-progress-text").textContent = t("rule.backtest_starting");
    return;
  }
  bar.max = Math.max(1, p.devices || 1);
  bar.value = p.devices_done || 0;
  box.dataset.readings = String(p.readings);
  box.dataset.done = String(p.devices_done);
  box.dataset.devices = String(p.devices);
  $("backtest-progress-text").textContent = t("rule.backtest_progress", {
    readings: p.readings, done: p.devices_done, devices: p.devices ?? "?",
    elapsed: Math.round(p.elapsed_s || 0), max: Math.round(p.max_s || 0) });
}

// Polls GET /api/rules/backtest/{job} while `job` runs. A 404 is a job not started yet or
// just finished (the POST's answer says which); other failures leave the last figures up.
async function followProgress(job) {
  while (backtestJob === job) {
    try {
      const p = await getJson(`/api/rules/backtest/${encodeURIComponent(job)}`);
      if (backtestJob === job) showProgress(p);
    } catch { /* see above */ }
    await new Promise((r) => setTimeout(r, PROGRESS_POLL_MS));
  }
}

$("backtest-cancel").addEventListener("click", async () => {
  if (!backtestJob) return;
  try {
    await send("DELETE", `/api/rules/backtest/${encodeURIComponent(backtestJob)}`);
  } catch (err) {
    showError(errorBox, err);  // it had just finished (backtest.not_running)
  }
});

$("rule-backtest").addEventListener("click", async () => {
  showError(errorBox, null);
  const box = $("backtest-result");
  const progress = $("backtest-progress");
  let rule;
  try {
    rule = draft();
  } catch (err) {
    showError(errorBox, err);
    return;
  }
  const job = newJobId();
  backtestJob = job;
  $("rule-backtest").disabled = true;
  box.hidden = true;
  for (const k of ["readings", "done", "devices"]) delete progress.dataset[k];
  progress.dataset.job = job;
  showProgress(null);
  progress.hidden = false;
  followProgress(job);
  try {
    const hours = Number($("r-backtest-hours").value || 24);
    const now = Date.now() / 1000;
    const res = await send("POST", "/api/rules/backtest", {
      rule, rule_id: editing ? editing.id : ($("r-id").value.trim() || null),
      since: now - hours * 3600, until: now, job_id: job });
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
    showError(errorBox, err);  // backtest.cancelled, .timeout, .too_many_rows, rule.invalid
  } finally {
    backtestJob = null;
    progress.hidden = true;
    $("rule-backtest").disabled = false;
  }
});

load().then(() => {
  document.body.dataset.ready = "1";
  // A rule saved, enabled or disabled elsewhere (another tab or user): listed at once.
  followEvents(["rule.changed"], () => load().catch((err) => showError(errorBox, err)));
}).catch((err) => showError(errorBox, err));
