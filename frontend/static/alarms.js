// The live alarm feed: newest first, severity, repeat count, device and grid, state, the
// case it joined, and an acknowledge button for active alarms. Rows are kept per id and
// only the changed ones are touched.

import { ackAlarm, askReason, clearAlarm } from "./actions.js";
import { errorText } from "./api.js";
import { $, el, reconcileOrder, setClass, setText, toast } from "./dom.js";
import { fmtTime, label, t } from "./i18n.js";

const SEVERITY_RANK = { critical: 0, major: 1, minor: 2, warning: 3 };
// An acknowledged alarm comes back through the feed; if it has not within this long, the
// button is offered again (the POST may have succeeded while the feed was down: harmless).
const ACK_PENDING_TIMEOUT_MS = 15000;

function alarmOrder(a, b) {
  // Newest first; ties by id (the later alarm first).
  const ta = a.raised_at || 0, tb = b.raised_at || 0;
  if (ta !== tb) return tb - ta;
  return Number(b.id) - Number(a.id);
}

export class AlarmFeed {
  // ctx: {feed, town, devices, map (ConsoleMap), now(), markDirty(kind, id)}
  constructor(ctx) {
    this.ctx = ctx;
    this.rows = new Map();  // id -> row record
    this.pendingAcks = new Map();  // alarm id -> timer
    this.list = $("alarm-list");
    this.list.addEventListener("click", (ev) => this.onClick(ev));
    this.list.addEventListener("animationend", (ev) => {
      const li = ev.target.closest && ev.target.closest("li.alarm");
      const row = li && this.rows.get(li.dataset.alarmId);
      if (row && row.fresh && ev.animationName === "alarm-fresh") {
        row.fresh = false;
        li.classList.remove("fresh");
      }
    });
  }

  createRow(id) {
    const li = el("li", "alarm");
    li.dataset.alarmId = id;
    const sev = el("span", "sev");
    const body = el("div", "alarm-body");
    const line1 = el("div", "alarm-line1");
    const msg = el("span", "msg");
    const count = el("span", "count");
    const members = el("span", "members");
    line1.append(msg, members, count);
    const line2 = el("div", "alarm-line2");
    const device = el("span", "device");
    const grid = el("span", "grid");
    line2.append(device, grid);
    const line3 = el("div", "alarm-line3");
    const time = el("span", "time");
    const state = el("span", "state");
    const incident = el("a", "incident");
    incident.target = "_blank";
    line3.append(time, state, incident);
    body.append(line1, line2, line3);
    const actions = el("div", "alarm-actions");
    li.append(sev, body, actions);
    return { id, li, sev, msg, count, members, device, grid, time, state, incident, actions, ack: null,
      raisedAt: null, fresh: true };
  }

  updateRow(row, a) {
    const sev = SEVERITY_RANK[a.severity] !== undefined ? a.severity : "warning";
    setClass(row.li, `alarm sev-${sev} state-${a.state}${row.fresh ? " fresh" : ""}`);
    row.li.dataset.severity = a.severity;
    row.li.dataset.state = a.state;
    setText(row.sev, label("severity", a.severity));
    setText(row.msg, a.message || a.rule_id);
    row.msg.title = a.message || "";
    setText(row.count, `×${a.count ?? 1}`);
    row.count.classList.toggle("repeated", (a.count ?? 1) > 1);
    // A grouped alarm (a grid's storm, or a rule over its cap): how many devices are in it
    // now; each one is listed at /api/rules/alarm-groups/{id}.
    const grouped = a.situation != null && a.members != null;
    setText(row.members, grouped ? t("alarm.members", { n: a.members }) : "");
    row.members.title = grouped ? t("alarm.members_title", { n: a.members }) : "";
    row.members.hidden = !grouped;
    const dev = this.ctx.devices.get(a.device_id);
    setText(row.device, dev ? dev.name : a.device_id);
    row.device.title = a.device_id || "";
    const grid = this.ctx.town.grids.get(a.grid_id);
    setText(row.grid, grid ? grid.name : a.grid_id || "");
    setText(row.time, fmtTime(a.raised_at, this.ctx.now()));
    row.time.title = typeof a.last_seen === "number"
      ? t("alarm.last_seen", { t: fmtTime(a.last_seen, this.ctx.now()) }) : "";
    let stateText = label("alarm_state", a.state);
    if (a.state === "acknowledged" && a.acked_by) stateText += ` · ${a.acked_by}`;
    setText(row.state, stateText);
    if (a.incident_id != null) {
      setText(row.incident, t("alarm.case", { id: a.incident_id }));
      const href = `/cases/${a.incident_id}`;
      if (row.incident.getAttribute("href") !== href) row.incident.setAttribute("href", href);
    } else {
      setText(row.incident, "");
      row.incident.removeAttribute("href");
    }
    if (a.state === "active") {
      if (!row.ack) {
        row.ack = el("button", "ack", t("alarm.ack"));
        row.ack.type = "button";
        row.actions.append(row.ack);
      }
      const waiting = this.pendingAcks.has(row.id);
      row.ack.disabled = waiting;
      setText(row.ack, waiting ? t("alarm.acking") : t("alarm.ack"));
    } else {
      if (row.ack) { row.ack.remove(); row.ack = null; }
      this.clearPendingAck(row.id);
    }
    // Any open alarm may be cleared by an operator, with a reason (the rule clears it by
    // itself when the condition has gone).
    if (!row.clear) {
      row.clear = el("button", "clear", t("alarm.clear"));
      row.clear.type = "button";
      row.actions.append(row.clear);
    }
    const moved = row.raisedAt !== a.raised_at;
    row.raisedAt = a.raised_at;
    return moved;
  }

  // `animate`: new rows flash (not on a snapshot, which redraws the whole list).
  render(ids, animate) {
    const alarms = this.ctx.feed.state.alarms;
    let reorder = false;
    for (const id of ids) {
      const a = alarms[id];
      let row = this.rows.get(id);
      if (!a) {
        if (row) { row.li.remove(); this.rows.delete(id); }
        this.clearPendingAck(id);
        continue;
      }
      if (!row) {
        row = this.createRow(id);
        this.rows.set(id, row);
        row.fresh = animate;
        reorder = true;
      }
      if (this.updateRow(row, a)) reorder = true;
    }
    if (reorder) {
      const sorted = Object.values(alarms).sort(alarmOrder);
      reconcileOrder(this.list, sorted.map((a) => this.rows.get(String(a.id))).filter(Boolean).map((r) => r.li));
    }
    $("alarm-empty").hidden = this.rows.size > 0;
  }

  // The summary chips (active alarms by severity) in the panel head.
  renderSummary(bySev, active, acked) {
    const box = $("alarm-summary");
    if (!box.firstChild) {
      for (const sev of Object.keys(SEVERITY_RANK)) {
        const chip = el("span", `chip sev-${sev}`);
        chip.append(el("i"), el("span", "chip-label", label("severity", sev)), el("b", "chip-n", "0"));
        chip.dataset.severity = sev;
        chip.title = t("alarm.chip_title", { severity: label("severity", sev) });
        box.append(chip);
      }
    }
    for (const chip of box.children) setText(chip.querySelector(".chip-n"), bySev[chip.dataset.severity] || 0);
    $("alarm-panel").dataset.active = String(active);
    $("alarm-panel").dataset.acknowledged = String(acked);
  }

  onClick(ev) {
    const li = ev.target.closest("li.alarm");
    if (!li) return;
    if (ev.target.closest("a")) return;  // the case link opens the case page
    const id = li.dataset.alarmId;
    const button = ev.target.closest("button.ack");
    if (button) {
      this.acknowledge(id, button);
      return;
    }
    if (ev.target.closest("button.clear")) {
      this.clear(id);
      return;
    }
    const a = this.ctx.feed.state.alarms[id];
    const dev = a && this.ctx.devices.get(a.device_id);
    if (dev) this.ctx.map.focusPoint(dev.lat, dev.lon, () => this.ctx.map.openDeviceTooltip(dev.id));
  }

  async acknowledge(id, button) {
    if (this.pendingAcks.has(id)) return;
    this.pendingAcks.set(id, setTimeout(() => { this.clearPendingAck(id); this.ctx.markDirty("alarms", id); },
      ACK_PENDING_TIMEOUT_MS));
    button.disabled = true;
    button.textContent = t("alarm.acking");
    try {
      await ackAlarm(id);
      // Success: the acknowledged alarm arrives through the feed and re-renders the row.
    } catch (err) {
      this.clearPendingAck(id);
      this.ctx.markDirty("alarms", id);
      toast(t("alarm.ack_failed", { id, error: errorText(err) }));
    }
  }

  async clear(id) {
    // An error keeps the dialog open with the message; the cleared alarm then leaves the
    // list through the feed, like every change.
    await askReason(t("alarm.clear_reason", { id }), (reason) => {
      if (!reason) throw new Error(t("alarm.reason_needed"));
      return clearAlarm(id, reason);
    });
  }

  clearPendingAck(id) {
    const timer = this.pendingAcks.get(id);
    if (timer !== undefined) { clearTimeout(timer); this.pendingAcks.delete(id); }
  }
}
