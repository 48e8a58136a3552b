// Supervisor alerts (督办提醒): escalated dispatches, preemptions, ... Loaded once from
// GET /api/supervisor/alerts (open ones), then added from the feed's supervisor.alerted
// events; acknowledging one posts to the API and takes it off the strip.

import { errorText, getJson, postJson } from "./api.js";
import { $, el, setText, toast } from "./dom.js";
import { fmtTime, label, reasonText, t } from "./i18n.js";

// The strip shows the newest few; the count says how many are open in all.
const SHOWN = 2;

export class SupervisorStrip {
  constructor(ctx) {
    this.ctx = ctx;
    this.alerts = new Map();  // id -> alert
    // Where the open alerts are read (a replay reads those open at its clock).
    this.url = () => "/api/supervisor/alerts";
    this.box = $("supervisor-list");
    this.box.addEventListener("click", (ev) => {
      const b = ev.target.closest("button.sv-ack");
      if (b) this.ack(b.dataset.alertId, b);
    });
  }

  async load() {
    try {
      const list = await getJson(this.url());
      this.alerts.clear();
      for (const a of list || []) this.alerts.set(String(a.id), a);
    } catch (err) {
      console.warn("gridhub: supervisor alerts unavailable", err);
    }
    this.render();
  }

  // Events of a feed change (the catch-up after a reconnect included).
  onEvents(events) {
    let changed = false;
    for (const ev of events) {
      if (ev.kind !== "supervisor.alerted" || !ev.data || !ev.data.alert) continue;
      const a = ev.data.alert;
      if (a.acked_at) continue;
      this.alerts.set(String(a.id), a);
      changed = true;
    }
    if (changed) this.render();
  }

  render() {
    const list = [...this.alerts.values()].sort((a, b) => Number(b.id) - Number(a.id));
    const box = this.box;
    box.replaceChildren();
    for (const a of list.slice(0, SHOWN)) {
      const li = el("li", `sv-alert kind-${a.kind}`);
      li.dataset.alertId = String(a.id);
      li.append(el("span", "sv-kind", label("alert_kind", a.kind)));
      const text = reasonText(a.why, a.message || "");
      const msg = el(a.incident_id != null ? "a" : "span", "sv-msg", text);
      msg.title = text;
      if (a.incident_id != null) {
        msg.href = `/cases/${a.incident_id}`;
        msg.target = "_blank";
      }
      li.append(msg, el("span", "sv-time", fmtTime(a.created_at, this.ctx.now())));
      const b = el("button", "sv-ack", t("supervisor.ack"));
      b.type = "button";
      b.dataset.alertId = String(a.id);
      li.append(b);
      box.append(li);
    }
    setText($("supervisor-count"), list.length);
    $("supervisor-strip").dataset.count = String(list.length);
    $("supervisor-empty").hidden = list.length > 0;
  }

  async ack(id, button) {
    button.disabled = true;
    try {
      await postJson(`/api/supervisor/alerts/${encodeURIComponent(id)}/ack`, {});
      this.alerts.delete(id);
      this.render();
    } catch (err) {
      button.disabled = false;
      if (err.status === 404) { this.alerts.delete(id); this.render(); return; }  // acked elsewhere
      toast(t("supervisor.ack_failed", { error: errorText(err) }));
    }
  }
}
