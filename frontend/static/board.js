// The assignment board: one row per open case (most urgent first), its step, its unit and
// the live SLA countdown of its current stage (green / amber / red, ticking every second).
// Selecting a row opens the case drawer below the list: the actions the workflow allows,
// assign / re-assign with a reason, and the link to the case page.

import { renderActionButtons } from "./actions.js";
import { errorText, getJson } from "./api.js";
import { $, el, reconcileOrder, setClass, setData, setText } from "./dom.js";
import { label, t } from "./i18n.js";
import { DONE_STATES } from "./map.js";
import { slaView } from "./sla.js";

// States in which nobody has the case yet.
const WAITING_STATES = new Set(["reported", "registered"]);
// A selected case's detail (its allowed actions) is re-read this long after its last change,
// so a burst of events costs one request.
const DETAIL_REFRESH_MS = 250;

function boardOrder(a, b) {
  // Most urgent first, then the longest waiting.
  const pa = a.priority ?? 9, pb = b.priority ?? 9;
  if (pa !== pb) return pa - pb;
  const ta = a.opened_at || 0, tb = b.opened_at || 0;
  if (ta !== tb) return ta - tb;
  return Number(a.id) - Number(b.id);
}

export class Board {
  // ctx: {feed, town, map (ConsoleMap), now()}
  constructor(ctx) {
    this.ctx = ctx;
    this.rows = new Map();  // id -> row record
    this.list = $("board");
    this.selected = null;
    this.detailTimer = 0;
    this.list.addEventListener("click", (ev) => {
      if (ev.target.closest("a")) return;  // the id link opens the case page
      const li = ev.target.closest("li.case");
      if (!li) return;
      this.select(li.dataset.incidentId);
      this.ctx.map.openIncident(li.dataset.incidentId);
    });
    $("drawer-close").addEventListener("click", () => this.select(null));
  }

  createRow(id) {
    const li = el("li", "case");
    li.dataset.incidentId = id;
    const idCell = el("a", "c-id");
    idCell.href = `/cases/${encodeURIComponent(id)}`;
    idCell.target = "_blank";
    idCell.title = t("board.open_case");
    const prio = el("span", "c-prio prio");
    const titleCell = el("span", "c-title");
    const title = el("span", "title");
    const sub = el("span", "sub");
    titleCell.append(title, sub);
    const state = el("span", "c-state state");
    const unitCell = el("span", "c-unit");
    const unit = el("span", "unit");
    const unitStatus = el("span", "unit-status");
    unitCell.append(unit, unitStatus);
    const sla = el("span", "c-sla sla");
    const slaStage = el("span", "sla-stage");
    const slaTime = el("span", "sla-time");
    sla.append(slaStage, slaTime);
    li.append(idCell, prio, titleCell, state, unitCell, sla);
    return { id, li, idCell, prio, title, sub, state, unit, unitStatus, sla, slaStage, slaTime,
      orderKey: "" };
  }

  updateRow(row, inc) {
    const units = this.ctx.feed.state.units;
    const p = [1, 2, 3, 4].includes(inc.priority) ? inc.priority : 4;
    const waiting = WAITING_STATES.has(inc.state) && !inc.assigned_unit;
    const sel = this.selected === row.id ? " selected" : "";
    setClass(row.li, `case p${p} st-${inc.state}${waiting ? " waiting" : ""}${DONE_STATES.has(inc.state) ? " done" : ""}${sel}`);
    setData(row.li, "priority", inc.priority);
    setData(row.li, "state", inc.state);
    setText(row.idCell, `#${inc.id}`);
    setText(row.prio, label("priority", inc.priority));
    setText(row.title, inc.title);
    row.title.title = inc.description ? `${inc.title}\n${inc.description}` : inc.title || "";
    const grid = this.ctx.town.grids.get(inc.grid_id);
    const parts = [grid ? grid.name : inc.grid_id];
    if (inc.rework_count > 0) parts.push(t("board.rework", { n: inc.rework_count }));
    if (inc.extension_count > 0) parts.push(t("board.extension", { n: inc.extension_count }));
    setText(row.sub, parts.filter(Boolean).join(" · "));
    setText(row.state, label("state", inc.state));
    const unit = inc.assigned_unit ? units[inc.assigned_unit] : null;
    if (inc.assigned_unit) {
      setText(row.unit, unit ? unit.name : inc.assigned_unit);
      row.unit.title = unit ? t("fmt.paren", { a: unit.name, b: label("unit_type", unit.type) }) : "";
      setText(row.unitStatus, unit ? label("unit_status", unit.status) : "");
      setData(row.unitStatus, "status", unit ? unit.status : "");
    } else {
      setText(row.unit, waiting ? t("board.to_dispatch") : "—");
      row.unit.title = "";
      setText(row.unitStatus, "");
      setData(row.unitStatus, "status", "");
    }
    row.unit.classList.toggle("none", !inc.assigned_unit);
    this.tickRow(row, inc, this.ctx.now());
    const key = `${inc.priority}|${inc.opened_at}`;
    const moved = key !== row.orderKey;
    row.orderKey = key;
    return moved;
  }

  tickRow(row, inc, now) {
    const v = slaView(inc, now);
    setText(row.slaStage, v.stage ? label("sla.stage", v.stage) : "");
    setText(row.slaTime, v.text);
    setData(row.sla, "level", v.level);
    setData(row.sla, "stage", v.stage);
    setClass(row.sla, `c-sla sla sla-${v.level}`);
    if (row.sla.title !== v.title) row.sla.title = v.title;
    return v.level;
  }

  // Once a second: every countdown, and the board summary.
  tick(now) {
    const incidents = this.ctx.feed.state.incidents;
    let red = 0;
    for (const row of this.rows.values()) {
      const inc = incidents[row.id];
      if (inc && this.tickRow(row, inc, now) === "red") red += 1;
    }
    this.renderSummary(red);
    if (this.selected) this.tickDrawer(now);
  }

  render(incidentIds, unitsChanged) {
    const incidents = this.ctx.feed.state.incidents;
    let reorder = false;
    const ids = new Set(incidentIds);
    if (unitsChanged) for (const id of this.rows.keys()) ids.add(id);  // unit names/statuses
    for (const id of ids) {
      const inc = incidents[id];
      let row = this.rows.get(id);
      if (!inc) {
        if (row) { row.li.remove(); this.rows.delete(id); }
        continue;
      }
      if (!row) {
        row = this.createRow(id);
        this.rows.set(id, row);
        reorder = true;
      }
      if (this.updateRow(row, inc)) reorder = true;
    }
    if (reorder) {
      const sorted = Object.values(incidents).sort(boardOrder);
      reconcileOrder(this.list, sorted.map((inc) => this.rows.get(String(inc.id))).filter(Boolean).map((r) => r.li));
    }
    $("board-empty").hidden = this.rows.size > 0;
    if (this.selected && incidentIds.has(this.selected)) this.refreshDrawer();
    this.renderSummary(null);
  }

  renderSummary(red) {
    const incidents = this.ctx.feed.state.incidents;
    let waiting = 0;
    for (const inc of Object.values(incidents)) {
      if (WAITING_STATES.has(inc.state) && !inc.assigned_unit) waiting += 1;
    }
    if (red === null) red = this.lastRed || 0;
    this.lastRed = red;
    setText($("board-summary"), t("board.summary", { n: this.rows.size, waiting, late: red }));
  }

  // ------------------------------------------------------------- the case drawer
  select(id) {
    const before = this.selected;
    this.selected = id;
    for (const key of [before, id]) {
      const row = key && this.rows.get(key);
      if (row) row.li.classList.toggle("selected", key === id);
    }
    const drawer = $("case-drawer");
    drawer.hidden = !id;
    if (!id) return;
    drawer.dataset.incidentId = id;
    $("drawer-open").href = `/cases/${encodeURIComponent(id)}`;
    $("drawer-actions").replaceChildren(el("span", "dim", t("common.loading")));
    this.refreshDrawer(0);
  }

  refreshDrawer(delay = DETAIL_REFRESH_MS) {
    clearTimeout(this.detailTimer);
    const id = this.selected;
    this.renderDrawerHead();
    this.detailTimer = setTimeout(async () => {
      try {
        const detail = await getJson(`/api/incidents/${encodeURIComponent(id)}`);
        if (this.selected !== id) return;
        const inc = this.ctx.feed.state.incidents[id] || detail.incident;
        renderActionButtons($("drawer-actions"), inc, detail.allowed_actions, {
          units: () => Object.values(this.ctx.feed.state.units),
          onDone: () => this.refreshDrawer(),
        });
        const flags = (detail.flags || []).map((f) => label("flag", f)).join(" · ");
        setText($("drawer-flags"), flags);
      } catch (err) {
        if (this.selected === id) $("drawer-actions").replaceChildren(el("span", "error", errorText(err)));
      }
    }, delay);
  }

  renderDrawerHead() {
    const id = this.selected;
    const inc = this.ctx.feed.state.incidents[id];
    if (!inc) {
      setText($("drawer-title"), t("drawer.gone", { id }));
      setText($("drawer-state"), "");
      return;
    }
    setText($("drawer-title"), `#${inc.id} ${inc.title}`);
    setText($("drawer-state"), label("state", inc.state));
    this.tickDrawer(this.ctx.now());
  }

  tickDrawer(now) {
    const inc = this.ctx.feed.state.incidents[this.selected];
    const node = $("drawer-sla");
    if (!inc) { setText(node, ""); return; }
    const v = slaView(inc, now);
    setText(node, v.stage ? `${label("sla.stage", v.stage)} ${v.text}` : v.text);
    setData(node, "level", v.level);
  }
}
