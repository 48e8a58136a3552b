// The case page: the whole nine-step trail with actors, times and reasons (and the rework,
// extension and shelving entries), flags, SLA clocks, the dispatch recommendation with its
// ranked candidates, attached alarms, the case log with its hash-chain check, and the
// actions the workflow allows next. Live: the feed's events for this case re-read it.

import { renderActionButtons } from "./actions.js";
import { bindActorField, errorText, getJson } from "./api.js";
import { $, el, fillFacts, setData, setText, toast } from "./dom.js";
import { LiveFeed } from "./feed.js";
import { fmtDateTime, fmtDistance, fmtDuration, fmtNumber, label, reasonText, t } from "./i18n.js";
import { STAGES, slaView } from "./sla.js";

const INCIDENT_ID = String(document.querySelector("[data-incident-id]").dataset.incidentId);
// Side entries (declines, extensions, ...) shown under a step: the latest few; the case
// log below has them all.
const SIDE_SHOWN = 3;
// Assignments listed: the latest few.
const ASSIGNMENTS_SHOWN = 6;
// Events come in bursts (a step, its unit, its clocks): one re-read per burst.
const REFRESH_DEBOUNCE_MS = 200;

// The loop's steps and the state each one reaches (dispatch/workflow.py).
const STEPS = [
  ["report", "reported"], ["register", "registered"], ["dispatch", "dispatched"],
  ["accept", "accepted"], ["handle", "handling"], ["feedback", "feedback"],
  ["verify", "verified"], ["close", "closed"], ["evaluate", "evaluated"], ["archive", "archived"],
];
const STEP_OF_STATE = Object.fromEntries(STEPS.map(([step, state], k) => [state, k]));
// Log entries that are not a step forward, and the step they are shown under.
const SIDE_STEP = {
  decline: "accept", withdraw: "dispatch", verify_fail: "verify", cancel: null, shelve: null,
  reopen: null, request_extension: null, approve_extension: null, reject_extension: null,
  resume: null,
};
const SIDE_KIND = {
  verify_fail: "rework", request_extension: "extension", approve_extension: "extension",
  reject_extension: "extension", resume: "extension", shelve: "shelve", reopen: "shelve",
  decline: "redispatch", withdraw: "redispatch", cancel: "cancel",
};

let detail = null;
let units = new Map();  // unit id -> unit (names for the candidates)
let refreshTimer = 0;

const feed = new LiveFeed({ onChange, onStatus });

function onStatus({ phase }) {
  const node = $("conn-status");
  node.dataset.state = phase;
  setText(node.querySelector(".label"), t(`conn.${phase}`));
}

function concernsThisCase(ev) {
  const d = ev.data || {};
  return (d.incident && String(d.incident.id) === INCIDENT_ID)
    || (d.alarm && String(d.alarm.incident_id) === INCIDENT_ID)
    || (d.alert && String(d.alert.incident_id) === INCIDENT_ID);
}

function onChange(change) {
  for (const [id, u] of Object.entries(feed.state.units)) units.set(id, u);
  if (change.reset || change.incidents.has(INCIDENT_ID) || change.events.some(concernsThisCase)) {
    scheduleRefresh();
  }
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, REFRESH_DEBOUNCE_MS);
}

async function refresh() {
  try {
    detail = await getJson(`/api/incidents/${encodeURIComponent(INCIDENT_ID)}`);
  } catch (err) {
    setText($("case-title"), err.status === 404 ? t("case.not_found", { id: INCIDENT_ID }) : errorText(err));
    $("case-actions").replaceChildren();
    document.body.dataset.loaded = "error";
    return;
  }
  render();
  verifyChain();
  document.body.dataset.loaded = "true";
  document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
}

function unitName(id) {
  const u = units.get(id);
  return u ? u.name : id;
}

// ------------------------------------------------------------------ render
function render() {
  const inc = detail.incident;
  const p = [1, 2, 3, 4].includes(inc.priority) ? inc.priority : 4;
  const prio = $("case-priority");
  prio.className = `prio p${p}`;
  setText(prio, label("priority", inc.priority));
  setText($("case-title"), inc.title);
  document.title = `#${inc.id} ${inc.title}`;
  const state = $("case-state");
  setText(state, label("state", inc.state));
  state.dataset.state = inc.state;
  const flags = $("case-flags");
  flags.replaceChildren(...(detail.flags || []).map((f) => {
    const s = el("span", `flag flag-${f}`, label("flag", f));
    s.dataset.flag = f;
    return s;
  }));
  renderFacts(inc);
  const desc = $("case-description");
  setText(desc, inc.description || "");
  desc.hidden = !inc.description;
  renderActionButtons($("case-actions"), inc, detail.allowed_actions, {
    units: () => [...units.values()],
    onDone: () => scheduleRefresh(),
  });
  renderSla(inc, feed.serverNow());
  renderTrail(inc, detail.log || []);
  renderRecommendation(detail.assignments || []);
  renderAlarms(detail.alarms || []);
  renderLog(detail.log || []);
}

function renderFacts(inc) {
  let unit = t("board.unassigned");
  if (inc.assigned_unit) {  // a link to the unit's track
    unit = el("a", "", unitName(inc.assigned_unit));
    unit.href = `/units/${encodeURIComponent(inc.assigned_unit)}`;
  }
  const facts = [
    ["case.category", label("category", inc.category)],
    ["case.department", label("dept", inc.qualification)],
    ["case.grid", inc.grid_id || "—"],
    ["case.source", label("source", inc.source)],
    ["case.reporter", inc.reporter || "—"],
    ["case.opened", fmtDateTime(inc.opened_at)],
    ["case.unit", unit],
    ["case.handler", inc.handler || "—"],
    ["case.rework", String(inc.rework_count || 0)],
    ["case.extensions", String(inc.extension_count || 0)],
    ["case.location", typeof inc.lat === "number" ? `${inc.lat.toFixed(5)}, ${inc.lon.toFixed(5)}` : "—"],
  ];
  fillFacts($("case-facts"), facts.map(([key, value]) => [t(key), value]));
}

function renderSla(inc, now) {
  const tbody = $("sla-table").querySelector("tbody");
  const sla = inc.sla || {};
  const current = slaView(inc, now);
  if (tbody.children.length !== STAGES.length) {
    tbody.replaceChildren(...STAGES.map((stage) => {
      const tr = el("tr");
      tr.dataset.stage = stage;
      tr.append(el("td", "", label("sla.stage", stage)), el("td"), el("td"), el("td", "sla"));
      return tr;
    }));
  }
  for (const tr of tbody.children) {
    const info = sla[tr.dataset.stage] || {};
    const [, deadline, met, status] = tr.children;
    setText(deadline, typeof info.deadline === "number" ? fmtDateTime(info.deadline) : "—");
    setText(met, typeof info.met_at === "number" ? fmtDateTime(info.met_at) : "—");
    const isCurrent = current.stage === tr.dataset.stage;
    tr.classList.toggle("current", isCurrent);
    if (isCurrent) {
      setText(status, `${current.text}`);
      setData(status, "level", current.level);
      status.title = current.title;
    } else {
      let s = info.state || "";
      if (info.met_at == null && typeof info.deadline !== "number" && s !== "breached") s = "paused";
      const late = s === "breached" || (s === "met" && typeof info.deadline === "number"
        && typeof info.met_at === "number" && info.met_at > info.deadline);
      setText(status, label("sla.state", s));
      setData(status, "level", late ? "red" : s === "met" ? "met" : "none");
      status.title = "";
    }
  }
}

// A log entry's reason in the page's language where the record allows: the dispatcher's
// "dispatch" entries carry the English text of their assignment's reason code, written in
// the same transaction at the same instant, so the code is taken from that assignment.
function entryReason(e) {
  if (e.action !== "dispatch" || !e.reason) return e.reason || "";
  const at = Date.parse(e.ts);
  const coded = (detail.assignments || []).filter((x) => x.why && !x.override_reason);
  // Same instant (milliseconds may round apart by one), else the same English text.
  const a = coded.find((x) => Math.abs(Date.parse(x.assigned_at) - at) <= 1)
    || coded.find((x) => x.reason === e.reason);
  return a ? reasonText(a.why, e.reason) : e.reason;
}

function entryLine(e) {
  const line = el("div", "step-entry");
  line.append(el("span", "who", e.actor), el("span", "when", fmtDateTime(e.ts)));
  if (e.reason) line.append(el("span", "why", entryReason(e)));
  return line;
}

function renderTrail(inc, log) {
  const trail = $("trail");
  trail.replaceChildren();
  // The last entry that reached each step's state (after rework a step may be reached twice).
  const reached = new Map();
  const sides = new Map();  // step -> [entries]
  let lastStep = null;
  for (const e of log) {
    const k = STEP_OF_STATE[e.to_state];
    const forward = e.action === "report" || (k !== undefined && e.from_state !== e.to_state
      && !(e.action in SIDE_KIND));
    if (forward) {
      reached.set(STEPS[k][0], e);
      lastStep = STEPS[k][0];
    } else {
      const step = SIDE_STEP[e.action] || lastStep || "report";
      if (!sides.has(step)) sides.set(step, []);
      sides.get(step).push(e);
    }
  }
  const at = STEP_OF_STATE[inc.state];
  const halted = at === undefined;  // shelved or cancelled
  // How far the case got: its state's step, or (halted) the last step it reached before.
  let upto = halted ? -1 : at;
  if (halted) for (const [k, [step]] of STEPS.entries()) if (reached.has(step)) upto = Math.max(upto, k);
  STEPS.forEach(([step], k) => {
    const li = el("li", "step");
    li.dataset.step = step;
    let status = k <= upto ? "done" : (k === upto + 1 && !halted ? "current" : "pending");
    if (k === upto + 1 && halted) status = "halted";
    if (inc.state === "archived" && k === STEPS.length - 1) status = "done";
    li.dataset.status = status;
    li.className = `step ${status}`;
    const head = el("div", "step-head");
    head.append(el("i", "dot"), el("span", "step-name", label("step", step)),
      el("span", "step-status", label("step_status", status)));
    li.append(head);
    const e = reached.get(step);
    if (e && status === "done") li.append(entryLine(e));
    const side = sides.get(step) || [];
    if (side.length > SIDE_SHOWN) {
      li.append(el("div", "step-more dim", t("case.more_entries", { n: side.length - SIDE_SHOWN })));
    }
    for (const s of side.slice(-SIDE_SHOWN)) {
      const side = el("div", `step-side side-${SIDE_KIND[s.action] || "other"}`);
      side.dataset.action = s.action;
      side.append(el("span", "side-kind", label("action", s.action)), entryLine(s));
      li.append(side);
    }
    trail.append(li);
  });
  const banner = $("trail-banner");
  banner.hidden = !halted;
  if (halted) setText(banner, t(`case.halted.${inc.state}`));
}

function renderRecommendation(assignments) {
  const list = $("assignments");
  list.replaceChildren();
  const latest = [...assignments].reverse();
  for (const a of latest.slice(0, ASSIGNMENTS_SHOWN)) {
    const li = el("li", `assignment st-${a.status}`);
    li.dataset.assignmentId = String(a.id);
    li.append(el("b", "", unitName(a.unit_id)), el("span", "tag", label("assignment_status", a.status)),
      el("span", "dim", fmtDateTime(a.assigned_at)));
    if (typeof a.eta_s === "number") li.append(el("span", "dim", t("case.eta", { t: fmtDuration(a.eta_s) })));
    if (a.override_reason) li.append(el("div", "override", t("case.override", { reason: a.override_reason })));
    else if (a.reason) li.append(el("div", "dim", reasonText(a.why, a.reason)));
    list.append(li);
  }
  if (latest.length > ASSIGNMENTS_SHOWN) {
    list.append(el("li", "dim", t("case.more_entries", { n: latest.length - ASSIGNMENTS_SHOWN })));
  }
  const last = assignments.length ? assignments[assignments.length - 1] : null;
  const rec = last && last.recommendation;
  const table = $("candidates");
  if (!rec) {
    setText($("rec-summary"), t("case.no_recommendation"));
    table.hidden = true;
    return;
  }
  setText($("rec-summary"), t("case.recommended", { unit: rec.pick ? unitName(rec.pick) : "—", reason: reasonText(rec.why, rec.reason || "") }));
  const tbody = table.querySelector("tbody");
  tbody.replaceChildren();
  (rec.candidates || []).forEach((c, k) => {
    const tr = el("tr", c.unit_id === rec.pick ? "pick" : "");
    tr.dataset.unitId = c.unit_id;
    // Reason codes where the record has them (translated), else the stored English texts.
    const codes = c.codes || [];
    const reasons = codes.length ? codes.map((r) => reasonText(r)) : (c.reasons || []);
    const cases = codes.find((r) => r.code === "cand.cases_today");
    const legacy = (c.reasons || []).map((r) => /cases today (\d+)/.exec(r)).find(Boolean);
    const workload = cases ? [null, String(cases.params.n)] : legacy;
    tr.append(
      el("td", "", String(k + 1)),
      el("td", "", unitName(c.unit_id)),
      el("td", "num", typeof c.eta_s === "number" ? fmtDuration(c.eta_s) : "—"),
      el("td", "num", fmtDistance(c.distance_m)),
      el("td", "num", workload ? workload[1] : "—"),
      el("td", "num", fmtNumber(c.score, 0)),
      el("td", "reasons", reasons.join("; ") + (c.preempts ? ` · ${t("case.preempts", { id: c.preempts })}` : "")),
    );
    tbody.append(tr);
  });
  table.hidden = false;
}

function renderAlarms(alarms) {
  const list = $("case-alarms");
  list.replaceChildren();
  for (const a of alarms) {
    const li = el("li", `case-alarm sev-${a.severity} state-${a.state}`);
    li.dataset.alarmId = String(a.id);
    const dev = el("a", "", a.device_id);
    dev.href = `/devices/${encodeURIComponent(a.device_id)}`;
    li.append(el("span", "sev-tag", label("severity", a.severity)), el("span", "msg", a.message || a.rule_id),
      dev, el("span", "tag", label("alarm_state", a.state)), el("span", "dim", fmtDateTime(a.raised_at)));
    list.append(li);
  }
  $("case-alarms-empty").hidden = alarms.length > 0;
}

function renderLog(log) {
  const tbody = $("case-log").querySelector("tbody");
  tbody.replaceChildren();
  for (const e of log) {
    const tr = el("tr", e.action in SIDE_KIND ? `side side-${SIDE_KIND[e.action]}` : "");
    tr.dataset.seq = String(e.seq);
    const hash = el("td", "hash", (e.hash || "").slice(0, 12));
    hash.title = `${e.hash}\n← ${e.prev_hash || ""}`;
    tr.append(el("td", "num", String(e.seq)), el("td", "", fmtDateTime(e.ts)),
      el("td", "", label("action", e.action)),
      el("td", "", `${e.from_state ? label("state", e.from_state) + " → " : ""}${label("state", e.to_state)}`),
      el("td", "", e.actor), el("td", "why", entryReason(e)), hash);
    tbody.append(tr);
  }
}

async function verifyChain() {
  const node = $("chain-status");
  try {
    const v = await getJson(`/api/incidents/${encodeURIComponent(INCIDENT_ID)}/log/verify`);
    node.dataset.ok = String(!!v.ok);
    setText(node, v.ok ? t("chain.ok", { n: v.entries })
      : t("chain.bad", { seq: v.first_bad_seq ?? "—", head: v.head_ok ? t("chain.head_ok") : t("chain.head_bad") }));
  } catch (err) {
    node.dataset.ok = "";
    setText(node, t("chain.unknown", { error: errorText(err) }));
  }
}

function tick() {
  if (detail) renderSla(detail.incident, feed.serverNow());
  setTimeout(tick, 1000 - (Date.now() % 1000) + 5);
}

$("chain-verify").addEventListener("click", verifyChain);
bindActorField($("actor"));
window.gridhub = { feed, get detail() { return detail; }, refresh, incidentId: INCIDENT_ID };

getJson("/api/units").then((list) => {
  for (const u of list || []) units.set(u.id, u);
  if (detail) render();
}).catch((err) => toast(errorText(err)));
refresh();
tick();
feed.start();
