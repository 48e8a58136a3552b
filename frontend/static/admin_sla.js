// SLA and calendar (/admin/sla): the limits per category and priority (edited in minutes,
// stored in seconds), the warn share, the working calendar with its holidays and adjusted
// working days (added and removed here), and the log of edits.

import { getJson } from "./api.js";
import { t } from "./i18n.js";
import { $, button, cell, fillForm, fmtTime, followEvents, formValues, send, showDone,
  showError } from "./admin_common.js";

const STAGES = ["register_s", "dispatch_s", "accept_s", "arrive_s", "resolve_s"];
const errorBox = $("limits-error");
const minutes = (s) => Math.round((s / 60) * 100) / 100;

function fact(list, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

async function load() {
  const [view, changes] = await Promise.all([getJson("/api/sla"), getJson("/api/sla/changes")]);
  $("w-share").value = String(view.warn_share);
  $("limits-list").querySelector("tbody").replaceChildren(...view.limits.map((l) => {
    const tr = document.createElement("tr");
    tr.dataset.key = `${l.category}/${l.priority}`;
    tr.append(cell(l.category), cell(l.priority, "num"),
      ...STAGES.map((k) => cell(minutes(l[k]), "num")),
      cell(l.resolve_working ? t("admin.yes") : t("admin.no")),
      cell(l.origin === "file" ? t("sla.file") : t("sla.edited"), "origin"));
    const actions = document.createElement("td");
    actions.className = "row-actions";
    actions.append(button(t("admin.edit"), "act-edit", () => {
      fillForm($("limits-form"), { ...l, ...Object.fromEntries(STAGES.map((k) => [k, minutes(l[k])])) });
      showError(errorBox, null);
    }));
    if (l.origin !== "file") {
      actions.append(button(t("sla.reset"), "act-reset", () => act("DELETE",
        `/api/sla/limits/${encodeURIComponent(l.category)}/${l.priority}`)));
    }
    tr.append(actions);
    return tr;
  }));
  const cal = view.calendar;
  const facts = $("calendar-facts");
  facts.replaceChildren();
  fact(facts, t("sla.time_zone"), view.tz);
  fact(facts, t("sla.warn_share"), String(view.warn_share));
  fact(facts, t("sla.workdays"), cal.workdays.join(", "));
  fact(facts, t("sla.hours"), `${cal.day_start}–${cal.day_end}`);
  fact(facts, t("sla.holidays"), cal.holidays.join(", ") || "—");
  fact(facts, t("sla.adjusted"), cal.adjusted_workdays.join(", ") || "—");
  $("day-list").querySelector("tbody").replaceChildren(...cal.days.map(dayRow));
  $("sla-changes").querySelector("tbody").replaceChildren(...changes.slice(0, 50).map((c) => {
    const tr = document.createElement("tr");
    tr.append(cell(fmtTime(c.at)), cell(c.actor), cell(c.target),
      cell(`${JSON.stringify(c.before)} → ${JSON.stringify(c.after)}`, "small"));
    return tr;
  }));
}

// A calendar day: a removed file day can be restored (added again as the file had it).
function dayRow(d) {
  const tr = document.createElement("tr");
  tr.dataset.date = d.date;
  tr.dataset.kind = d.kind;
  tr.append(cell(d.date), cell(t(`sla.day.${d.kind}`), "kind"), cell(d.name),
    cell(d.origin === "file" ? t("sla.file") : t("sla.edited"), "origin"));
  const actions = document.createElement("td");
  actions.className = "row-actions";
  if (d.kind === "normal") {
    actions.append(button(t("sla.day.restore"), "act-restore", () => act("POST",
      "/api/sla/calendar/days", { date: d.date, kind: d.file_kind, name: d.name },
      $("day-error"))));
  } else {
    actions.append(button(t("sla.day.remove"), "act-remove", () => act("DELETE",
      `/api/sla/calendar/days/${encodeURIComponent(d.date)}`, undefined, $("day-error"))));
  }
  tr.append(actions);
  return tr;
}

async function act(method, url, body, box = errorBox) {
  showError(box, null);
  try {
    await send(method, url, body);
    await load();
    return true;
  } catch (err) {
    showError(box, err);
    return false;
  }
}

$("limits-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const v = formValues($("limits-form"));
  const body = { resolve_working: !!v.resolve_working };
  for (const k of STAGES) body[k] = v[k] === undefined ? null : v[k] * 60;
  const ok = await act("PUT",
    `/api/sla/limits/${encodeURIComponent(v.category || "")}/${v.priority}`, body);
  if (ok) showDone($("limits-done"), t("sla.saved", { category: v.category, priority: v.priority }));
});

$("warn-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act("PUT", "/api/sla/warn-share", { warn_share: Number($("w-share").value) });
});

$("day-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const sent = formValues($("day-form"));
  const ok = await act("POST", "/api/sla/calendar/days", sent, $("day-error"));
  // Cleared for the next day, unless the user is already typing it (the list may have
  // shown the new day first, through the live feed).
  if (ok && $("d-date").value.trim() === sent.date) $("day-form").reset();
});

load().then(() => {
  document.body.dataset.ready = "1";
  // An edit made elsewhere (another tab or user): shown without a reload.
  followEvents(["sla.config_changed"], () => load().catch((err) => showError(errorBox, err)));
}).catch((err) => showError(errorBox, err));
