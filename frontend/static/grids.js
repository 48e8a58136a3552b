// Open cases per first-level grid (一级网格): one cell per grid with its count by priority.
// Clicking a cell outlines that grid on the map (and zooms to it); clicking it again, or
// the map's overview button, clears it.

import { $, el, setData, setText } from "./dom.js";
import { t } from "./i18n.js";
import { isOpenCase } from "./kpis.js";
import { level1Of } from "./town.js";

export class GridView {
  // ctx: {feed, town, map (ConsoleMap)}
  constructor(ctx) {
    this.ctx = ctx;
    this.cells = new Map();  // level-1 grid id -> {li, total, prios[]}
    this.list = $("grid-list");
    this.selected = null;
    this.list.addEventListener("click", (ev) => {
      const li = ev.target.closest("li.grid-cell");
      if (li) this.toggle(li.dataset.gridId);
    });
    document.addEventListener("gridhub:highlight", (ev) => {
      if (ev.detail.id === null) this.mark(null);
    });
  }

  // Once the town is known: one cell per first-level grid, in id order.
  build() {
    this.list.replaceChildren();
    this.cells.clear();
    const ids = [...this.ctx.town.level1.keys()].sort();
    for (const id of ids) {
      const props = this.ctx.town.grids.get(id);
      const li = el("li", "grid-cell");
      li.dataset.gridId = id;
      li.tabIndex = 0;
      li.title = t("grids.cell_title", { name: props.name, id });
      const name = el("span", "g-name", props.name);
      const total = el("b", "g-total", "0");
      const bar = el("span", "g-prios");
      const prios = [];
      for (const p of [1, 2, 3, 4]) {
        const n = el("span", `g-p p${p} zero`, "0");
        n.dataset.priority = String(p);
        prios.push(n);
        bar.append(n);
      }
      li.append(name, total, bar);
      li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") this.toggle(id); });
      this.list.append(li);
      this.cells.set(id, { li, total, prios });
    }
    $("grid-empty").hidden = this.cells.size > 0;
    this.render();
  }

  render() {
    if (!this.cells.size) return;
    const counts = new Map();
    let unknown = 0;
    for (const inc of Object.values(this.ctx.feed.state.incidents)) {
      if (!isOpenCase(inc)) continue;
      const g = level1Of(this.ctx.town.grids, inc.grid_id);
      if (!g || !this.cells.has(g)) { unknown += 1; continue; }
      let c = counts.get(g);
      if (!c) counts.set(g, (c = [0, 0, 0, 0]));
      const p = [1, 2, 3, 4].includes(inc.priority) ? inc.priority : 4;
      c[p - 1] += 1;
    }
    let busiest = 0;
    for (const [id, cell] of this.cells) {
      const c = counts.get(id) || [0, 0, 0, 0];
      const total = c[0] + c[1] + c[2] + c[3];
      busiest = Math.max(busiest, total);
      setText(cell.total, total);
      setData(cell.li, "count", total);
      for (let k = 0; k < 4; k += 1) {
        setText(cell.prios[k], c[k]);
        cell.prios[k].classList.toggle("zero", c[k] === 0);
      }
      cell.li.classList.toggle("has-cases", total > 0);
      cell.li.classList.toggle("has-p1", c[0] > 0);
    }
    setText($("grid-summary"), unknown
      ? t("grids.summary_unknown", { n: counts.size, unknown }) : t("grids.summary", { n: counts.size }));
  }

  toggle(id) {
    if (this.selected === id) {
      this.ctx.map.clearHighlight();
      this.mark(null);
    } else {
      this.ctx.map.highlightGrid(id);
      this.mark(id);
    }
  }

  mark(id) {
    this.selected = id;
    for (const [key, cell] of this.cells) {
      cell.li.classList.toggle("selected", key === id);
      cell.li.setAttribute("aria-pressed", String(key === id));
    }
    document.body.dataset.highlightGrid = id || "";
  }
}
