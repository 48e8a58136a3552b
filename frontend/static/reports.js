// Result assessment (结果考核) per grid, squad or officer over a date range: closure rate,
// on-time rate, rework rate, response p50/p90, from GET /api/reports/assessment, with the
// same figures as CSV from /api/reports/assessment.csv. Columns sort on click.

import { bindActorField, errorText, getJson, getOptional } from "./api.js";
import { $, el, setText } from "./dom.js";
import { fmtDuration, fmtPercent, pad2, t } from "./i18n.js";

const form = $("report-form");
let rows = [];
let total = null;
let sortKey = "key", sortDir = 1;
const names = { grid: new Map(), grid1: new Map(), unit: new Map(), officer: new Map() };

const dateValue = (d) => `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
const dayStart = (v) => new Date(`${v}T00:00:00`).getTime() / 1000;

function preset(name) {
  const today = new Date();
  let from = new Date(today);
  if (name === "month") from = new Date(today.getFullYear(), today.getMonth(), 1);
  else if (name !== "today") from.setDate(today.getDate() - Number(name) + 1);
  $("since").value = dateValue(from);
  $("until").value = dateValue(today);
}

function query() {
  const by = form.elements.by.value;
  const since = dayStart($("since").value);
  const until = dayStart($("until").value) + 86400;  // the whole last day
  return { by, since, until, qs: `by=${by}&since=${since}&until=${until}` };
}

function displayName(by, key) {
  if (key === null || key === undefined) return t("report.none");
  const n = (names[by] || new Map()).get(key);
  return n ? t("fmt.paren", { a: n, b: key }) : String(key);
}

function render() {
  const { by } = query();
  const tbody = $("report").querySelector("tbody");
  const sorted = [...rows].sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * sortDir;
  });
  const unitOnly = by === "unit";
  const cells = (r, name) => {
    const out = [
      el("td", "", name),
      el("td", "num", r.cases ?? "—"),
      el("td", "num", r.closed ?? "—"),
      el("td", "num", fmtPercent(r.closure_rate)),
      el("td", "num", fmtPercent(r.on_time_rate)),
      el("td", "num", fmtPercent(r.rework_rate)),
      el("td", "num", fmtPercent(r.extension_rate)),
      el("td", "num", fmtDuration(r.response_p50_s)),
      el("td", "num", fmtDuration(r.response_p90_s)),
    ];
    if (unitOnly) {
      out.push(el("td", "num", typeof r.patrol_km === "number" ? r.patrol_km.toFixed(1) : "—"),
        el("td", "num", typeof r.duty_h === "number" ? r.duty_h.toFixed(1) : "—"));
    }
    return out;
  };
  tbody.replaceChildren(...sorted.map((r) => {
    const tr = el("tr");
    tr.dataset.key = r.key ?? "";
    tr.append(...cells(r, r.name ? t("fmt.paren", { a: r.name, b: r.key }) : displayName(by, r.key)));
    return tr;
  }));
  const tfoot = $("report").querySelector("tfoot");
  tfoot.replaceChildren();
  if (total && rows.length) {
    const tr = el("tr", "total");
    tr.append(...cells(total, t("report.total")));
    tfoot.append(tr);
  }
  for (const th of $("report").querySelectorAll(".unit-only")) th.hidden = !unitOnly;
  for (const th of $("report").querySelectorAll("th[data-key]")) {
    th.dataset.sort = th.dataset.key === sortKey ? (sortDir > 0 ? "asc" : "desc") : "";
  }
}

async function load() {
  const { qs } = query();
  $("csv-link").href = `/api/reports/assessment.csv?${qs}`;
  const empty = $("report-empty");
  try {
    const doc = await getOptional(`/api/reports/assessment?${qs}`);
    if (doc === null) {
      rows = [];
      total = null;
      setText(empty, t("report.unavailable"));
      empty.hidden = false;
      $("csv-link").classList.add("disabled");
    } else {
      rows = Array.isArray(doc) ? doc : doc.groups || doc.rows || doc.items || [];
      total = Array.isArray(doc) ? null : doc.total || null;
      setText(empty, t("report.empty"));
      empty.hidden = rows.length > 0;
      $("csv-link").classList.remove("disabled");
    }
  } catch (err) {
    rows = [];
    setText(empty, errorText(err));
    empty.hidden = false;
  }
  render();
  document.body.dataset.loaded = "true";
}

form.addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
form.addEventListener("change", (ev) => { if (ev.target.name === "by") load(); });
for (const b of document.querySelectorAll("[data-preset]")) {
  b.addEventListener("click", () => { preset(b.dataset.preset); load(); });
}
for (const th of $("report").querySelectorAll("th[data-key]")) {
  th.addEventListener("click", () => {
    if (sortKey === th.dataset.key) sortDir = -sortDir; else { sortKey = th.dataset.key; sortDir = 1; }
    render();
  });
}
bindActorField($("actor"));
preset("7");
Promise.all([getJson("/api/town").catch(() => null), getJson("/api/units").catch(() => [])]).then(([town, units]) => {
  for (const f of (town && town.grids && town.grids.features) || []) {
    names.grid.set(f.properties.id, f.properties.name);
    names.grid1.set(f.properties.id, f.properties.name);
  }
  for (const u of units || []) names.unit.set(u.id, u.name);
  render();
});
load();
