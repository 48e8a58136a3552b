// Operator actions, through the same REST API as everything else; their results come
// back through the live feed. The hub records them under the login (shown as on duty in
// the header); bodies name nobody.
//
// - acknowledge an alarm;  - open a case at a point (the map's "new case" click);
// - move a case a step (the actions the workflow allows; a reason is asked where the
//   workflow requires one);  - assign or re-assign a unit with a reason code (override);
// - redirect the case's dispatched or en-route unit, with a reason code: the case goes back
//   to planning and the unit, if a case number is given, goes there.
// Forms are <dialog>s rendered by templates/_dialogs.html; an error keeps the dialog open
// and shows the server's message in it.

import { ApiError, errorText, getJson, postJson } from "./api.js";
import { $, el, toast } from "./dom.js";
import { fmtDistance, label, t } from "./i18n.js";

// Mirror of dispatch/workflow.py REASON_REQUIRED.
export const REASON_REQUIRED = new Set(["decline", "withdraw", "verify_fail",
  "request_extension", "reject_extension", "shelve", "cancel"]);
// Actions not offered as plain buttons: "dispatch" without a unit is the engine's job (or
// the operator's assign, which names the unit).
const HIDDEN_ACTIONS = new Set(["dispatch"]);
// States in which a unit may be assigned by hand (registered) or replaced (override).
const ASSIGNABLE_STATES = new Set(["registered", "dispatched", "accepted"]);
// States in which the case's unit is on its way and may be redirected (dispatch/planner.py
// takes a unit off its case only while it is dispatched or en route).
const REDIRECTABLE_STATES = new Set(["dispatched", "accepted"]);
// Actions shown as the primary (next step) button; the rest are secondary.
const FORWARD = new Set(["register", "accept", "start_handling", "give_feedback", "verify_ok",
  "close", "evaluate", "archive", "approve_extension", "resume", "reopen"]);

// ------------------------------------------------------------------ dialogs
// Shows `dialog` (with one <form>); `submit(formData)` runs on OK: the dialog closes when
// it resolves, and stays open with the error shown when it throws. Resolves to the
// submit's result, or null when cancelled.
export function runDialog(dialog, submit) {
  const form = dialog.querySelector("form");
  const error = dialog.querySelector(".dlg-error");
  const ok = dialog.querySelector("button[value=ok]");
  if (error) { error.textContent = ""; error.hidden = true; }
  return new Promise((resolve) => {
    let result = null;
    const onSubmit = async (ev) => {
      const submitter = ev.submitter;
      if (submitter && submitter.value === "cancel") return;  // closes with "cancel"
      ev.preventDefault();
      if (ok) ok.disabled = true;
      try {
        result = await submit(new FormData(form));
        dialog.close("ok");
      } catch (err) {
        if (error) { error.textContent = errorText(err); error.hidden = false; } else toast(errorText(err));
      } finally {
        if (ok) ok.disabled = false;
      }
    };
    const onClose = () => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("close", onClose);
      resolve(dialog.returnValue === "ok" ? result : null);
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", onClose);
    dialog.returnValue = "";
    dialog.showModal();
    const first = form.querySelector("[autofocus]") || form.querySelector("input, select, textarea");
    if (first) first.focus();
  });
}

// Asks for the reason an action needs; resolves to the text, or null if cancelled.
export function askReason(title, submit) {
  const dialog = $("reason-dialog");
  dialog.querySelector(".dlg-title").textContent = title;
  const area = dialog.querySelector("textarea[name=reason]");
  area.value = "";
  return runDialog(dialog, (data) => submit(String(data.get("reason") || "").trim()));
}

// ------------------------------------------------------------------ alarms
export function ackAlarm(id) {
  return postJson(`/api/alarms/${encodeURIComponent(id)}/ack`, {});
}

export function clearAlarm(id, reason) {
  return postJson(`/api/alarms/${encodeURIComponent(id)}/clear`, { reason });
}

// ------------------------------------------------------------------ case steps
function postAction(incidentId, action, reason) {
  const body = { action };
  if (reason) body.reason = reason;
  return postJson(`/api/incidents/${encodeURIComponent(incidentId)}/actions`, body);
}

// Runs one workflow action, asking for a reason first where one is required. Resolves to
// the incident view, or null when the operator cancelled or it failed (toast shown).
export async function runAction(incidentId, action) {
  const name = label("action", action);
  try {
    let result;
    if (REASON_REQUIRED.has(action)) {
      result = await askReason(t("actions.reason_for", { action: name, id: incidentId }),
        (reason) => {
          if (!reason) throw new ApiError(400, "case.reason_required", t("actions.reason_needed"));
          return postAction(incidentId, action, reason);
        });
      if (result === null) return null;
    } else {
      result = await postAction(incidentId, action, null);
    }
    toast(t("actions.done", { action: name, id: incidentId }), "ok");
    return result;
  } catch (err) {
    toast(t("actions.failed", { action: name, id: incidentId, error: errorText(err) }));
    return null;
  }
}

// Buttons for `allowed` actions of an incident in `container` (replacing its content),
// plus "assign / re-assign" where a unit may be chosen by hand. `ctx.units()` gives the
// unit list for the override dialog.
export function renderActionButtons(container, inc, allowed, ctx) {
  container.replaceChildren();
  const busy = (on) => { for (const b of container.querySelectorAll("button")) b.disabled = on; };
  for (const action of allowed || []) {
    if (HIDDEN_ACTIONS.has(action)) continue;
    const b = el("button", `act ${FORWARD.has(action) ? "primary" : "secondary"}`, label("action", action));
    b.type = "button";
    b.dataset.action = action;
    if (REASON_REQUIRED.has(action)) b.title = t("actions.needs_reason");
    b.addEventListener("click", async () => {
      busy(true);
      try {
        const r = await runAction(inc.id, action);
        if (r && ctx.onDone) ctx.onDone(r);
      } finally { busy(false); }
    });
    container.append(b);
  }
  if (ASSIGNABLE_STATES.has(inc.state)) {
    const b = el("button", "act override", inc.assigned_unit ? t("actions.override") : t("actions.assign"));
    b.type = "button";
    b.dataset.action = "override";
    b.addEventListener("click", async () => {
      const r = await openOverrideDialog(inc, ctx.units());
      if (r && ctx.onDone) ctx.onDone(r);
    });
    container.append(b);
  }
  if (REDIRECTABLE_STATES.has(inc.state) && inc.assigned_unit) {
    const b = el("button", "act redirect", t("actions.redirect"));
    b.type = "button";
    b.dataset.action = "redirect";
    b.addEventListener("click", async () => {
      const r = await openRedirectDialog(inc);
      if (r && ctx.onDone) ctx.onDone(r);
    });
    container.append(b);
  }
  if (!container.firstChild) container.append(el("span", "dim", t("actions.none")));
}

// ------------------------------------------------------------------ override
let overrideReasons = null;
async function loadOverrideReasons() {
  if (!overrideReasons) overrideReasons = await getJson("/api/dispatch/override-reasons");
  return overrideReasons;
}

function metres(a, b) {
  const k = Math.PI / 180;
  const x = (b.lon - a.lon) * k * Math.cos(((a.lat + b.lat) / 2) * k);
  const y = (b.lat - a.lat) * k;
  return Math.sqrt(x * x + y * y) * 6371008.8;
}

export async function openOverrideDialog(inc, units) {
  const dialog = $("override-dialog");
  let reasons;
  try {
    reasons = await loadOverrideReasons();
  } catch (err) {
    toast(errorText(err));
    return null;
  }
  dialog.querySelector(".dlg-title").textContent = t(inc.assigned_unit ? "override.title" : "assign.title",
    { id: inc.id, title: inc.title || "" });
  dialog.querySelector(".dlg-sub").textContent = inc.assigned_unit
    ? t("override.current", { unit: inc.assigned_unit }) : "";
  const unitSelect = dialog.querySelector("select[name=unit_id]");
  const free = (units || []).filter((u) => (u.status === "available" || u.status === "returning")
    && u.id !== inc.assigned_unit);
  const withDist = free.map((u) => ({ u, d: typeof u.lat === "number" && typeof inc.lat === "number"
    ? metres(u, inc) : Infinity }));
  withDist.sort((a, b) => a.d - b.d);
  const qualified = withDist.filter(({ u }) => (u.qualifications || []).includes(inc.qualification));
  const others = withDist.filter(({ u }) => !(u.qualifications || []).includes(inc.qualification));
  unitSelect.replaceChildren();
  const option = ({ u, d }) => {
    const o = el("option", "", `${u.name} · ${label("unit_status", u.status)} · ${fmtDistance(d)}`);
    o.value = u.id;
    return o;
  };
  for (const [group, list] of [[t("override.qualified"), qualified], [t("override.others"), others]]) {
    if (!list.length) continue;
    const g = el("optgroup");
    g.label = group;
    for (const x of list) g.append(option(x));
    unitSelect.append(g);
  }
  unitSelect.disabled = !free.length;
  const reasonSelect = dialog.querySelector("select[name=reason_code]");
  reasonSelect.replaceChildren();
  for (const [code, text] of Object.entries(reasons)) {
    const key = `override.reason.${code}`;
    const o = el("option", "", t(key) !== key ? t(key) : text);
    o.value = code;
    reasonSelect.append(o);
  }
  dialog.querySelector("textarea[name=note]").value = "";
  const result = await runDialog(dialog, (data) => {
    const unitId = String(data.get("unit_id") || "");
    if (!unitId) throw new ApiError(400, "unit.required", t("override.no_unit"));
    return postJson(`/api/incidents/${encodeURIComponent(inc.id)}/assign`, {
      unit_id: unitId, reason_code: String(data.get("reason_code") || ""),
      note: String(data.get("note") || "").trim(),
    });
  });
  if (result) toast(t("override.done", { id: inc.id, unit: result.unit_id || "" }), "ok");
  return result;
}

// ------------------------------------------------------------------ redirect
function fillReasons(select, reasons) {
  select.replaceChildren();
  for (const [code, text] of Object.entries(reasons)) {
    const key = `override.reason.${code}`;
    const o = el("option", "", t(key) !== key ? t(key) : text);
    o.value = code;
    select.append(o);
  }
}

// Takes the case's unit off it (POST /api/units/{id}/redirect); resolves to the API's
// answer ({unit_id, withdrawn, assignments}) or null when cancelled.
export async function openRedirectDialog(inc) {
  const dialog = $("redirect-dialog");
  let reasons;
  try {
    reasons = await loadOverrideReasons();
  } catch (err) {
    toast(errorText(err));
    return null;
  }
  const unit = inc.assigned_unit;
  dialog.querySelector(".dlg-title").textContent = t("redirect.title", { unit, id: inc.id });
  dialog.querySelector(".dlg-sub").textContent = t("redirect.sub", { id: inc.id });
  fillReasons(dialog.querySelector("select[name=reason_code]"), reasons);
  dialog.querySelector("input[name=to_incident]").value = "";
  dialog.querySelector("textarea[name=note]").value = "";
  const result = await runDialog(dialog, (data) => {
    const to = String(data.get("to_incident") || "").trim();
    const body = { reason_code: String(data.get("reason_code") || ""),
      note: String(data.get("note") || "").trim() };
    if (to) body.to_incident = Number(to);
    return postJson(`/api/units/${encodeURIComponent(unit)}/redirect`, body);
  });
  if (result) toast(t("redirect.done", { unit, id: inc.id }), "ok");
  return result;
}

// ------------------------------------------------------------------ new case
// Opens the new-case form for a point; resolves to the created incident or null.
export async function openCreateDialog(lat, lon, where) {
  const dialog = $("create-dialog");
  const form = dialog.querySelector("form");
  dialog.querySelector(".dlg-sub").textContent =
    t("create.where", { lat: lat.toFixed(5), lon: lon.toFixed(5), grid: where || "" });
  const category = form.elements.category;
  const syncDefaults = () => {
    const o = category.selectedOptions[0];
    if (!o) return;
    if (o.dataset.qualification) form.elements.qualification.value = o.dataset.qualification;
    if (o.dataset.priority) form.elements.priority.value = o.dataset.priority;
  };
  category.onchange = syncDefaults;
  form.elements.title.value = "";
  form.elements.description.value = "";
  syncDefaults();
  const result = await runDialog(dialog, (data) => postJson("/api/incidents", {
    category: String(data.get("category")),
    qualification: String(data.get("qualification")),
    priority: Number(data.get("priority")),
    title: String(data.get("title") || "").trim(),
    description: String(data.get("description") || "").trim(),
    lon: Number(lon.toFixed(6)), lat: Number(lat.toFixed(6)),
    source: "operator",
  }));
  if (result) toast(t("create.done", { id: result.id }), "ok");
  return result;
}
