// KPI tiles: open cases by priority, active alarms and units come from the live picture;
// today's on-time closure rate, p90 response, devices online and the ingest rate from
// GET /api/kpis (a server job refreshes them every 10 s; we poll as often).

import { getJson } from "./api.js";
import { $, setText } from "./dom.js";
import { fmtDuration, fmtNumber, fmtPercent, t } from "./i18n.js";

export const KPI_POLL_MS = 10000;
// Right after the hub starts its figures are not computed yet: ask again soon.
const KPI_EARLY_RETRY_MS = 2000;
// Incidents that count as open cases (as the server's open_cases: not closed or after).
const NOT_OPEN = new Set(["closed", "evaluated", "archived", "cancelled"]);
export const isOpenCase = (inc) => !NOT_OPEN.has(inc.state);

export class Kpis {
  // ctx: {feed, map (ConsoleMap), alarms (AlarmFeed)}
  constructor(ctx) {
    this.ctx = ctx;
    this.server = null;
    this.timer = 0;
  }

  // From the live picture, after each render that changed something.
  render() {
    const { alarms, incidents, units } = this.ctx.feed.state;
    const byPrio = { 1: 0, 2: 0, 3: 0, 4: 0 };
    let open = 0;
    for (const inc of Object.values(incidents)) {
      if (!isOpenCase(inc)) continue;
      open += 1;
      if (byPrio[inc.priority] !== undefined) byPrio[inc.priority] += 1;
    }
    for (const p of [1, 2, 3, 4]) setText($(`kpi-p${p}`), byPrio[p]);
    setText($("kpi-open"), open);

    let active = 0, acked = 0;
    const bySev = { critical: 0, major: 0, minor: 0, warning: 0 };
    for (const a of Object.values(alarms)) {
      if (a.state === "active") {
        active += 1;
        if (bySev[a.severity] !== undefined) bySev[a.severity] += 1;
      } else if (a.state === "acknowledged") acked += 1;
    }
    setText($("kpi-alarms"), active);
    setText($("kpi-alarms-acked"), acked);
    $("kpi-alarms-tile").classList.toggle("hot", active > 0);
    this.ctx.alarms.renderSummary(bySev, active, acked);

    const byStatus = {};
    let total = 0;
    for (const u of Object.values(units)) {
      total += 1;
      byStatus[u.status] = (byStatus[u.status] || 0) + 1;
    }
    const busy = (byStatus.dispatched || 0) + (byStatus.en_route || 0) + (byStatus.on_scene || 0);
    setText($("kpi-units-available"), byStatus.available || 0);
    setText($("kpi-units-total"), total);
    setText($("kpi-units-busy"), busy);
    this.ctx.map.renderUnitCounts(byStatus);
  }

  start() {
    const poll = async () => {
      let early = false;
      try {
        const k = await getJson("/api/kpis");
        early = !k || typeof k.updated_at !== "number";
        if (!early) this.server = k;
        this.renderServer(false);
      } catch (err) {
        this.renderServer(true);
      }
      this.timer = setTimeout(poll, early ? KPI_EARLY_RETRY_MS : KPI_POLL_MS);
    };
    poll();
  }

  renderServer(stale) {
    const k = this.server || {};
    for (const id of ["kpi-ontime-tile", "kpi-p90-tile", "kpi-devices-tile", "kpi-ingest-tile"]) {
      const node = $(id);
      if (node) node.dataset.stale = String(stale || !this.server);
    }
    const rate = k.on_time_rate_today;
    setText($("kpi-ontime"), fmtPercent(rate));
    $("kpi-ontime-tile").dataset.level = typeof rate !== "number" ? "none"
      : rate >= 0.9 ? "green" : rate >= 0.7 ? "amber" : "red";
    setText($("kpi-closed-today"), typeof k.closed_today === "number" ? k.closed_today : "—");
    setText($("kpi-p90"), fmtDuration(k.p90_response_s_today));
    setText($("kpi-devices-online"), typeof k.devices_online === "number" ? k.devices_online : "—");
    setText($("kpi-devices-total"), typeof k.devices === "number" ? k.devices : "—");
    setText($("kpi-devices-share"), k.devices ? fmtPercent(k.devices_online / k.devices, 0) : "—");
    setText($("kpi-ingest"), fmtNumber(k.ingest_points_per_s, 1));
    const updated = typeof k.updated_at === "number" ? new Date(k.updated_at * 1000).toLocaleTimeString() : "—";
    $("kpis").title = stale ? t("kpi.stale") : t("kpi.updated", { t: updated });
  }
}
