// "Double random, one public" (双随机一公开): announcing a draw (a commitment: the hub's
// secret, published as its SHA-256), drawing with an announced commitment, the draws
// (matter, seed, targets with their inspectors), re-running a stored one to verify it,
// publishing, and the published results. Routes: /api/inspections/commitments,
// /api/inspections/draws[/{id}[/verify|/publish]], /api/inspections/public (and
// /api/inspections/matters for the matter list). The hub records the logged-in user as
// the actor of every step: no name is sent.

import { errorText, getJson, getOptional, postJson } from "./api.js";
import { $, el, fillFacts, setText, toast } from "./dom.js";
import { fmtDateTime, label, t } from "./i18n.js";

let draws = [];
let commitments = [];
let current = null;
const verified = new Map();  // draw id -> reproduced (this page's checks)
const matterNames = new Map();

const asTs = (v) => (typeof v === "number" ? v : typeof v === "string" ? Date.parse(v) / 1000 : null);
const picksOf = (d) => ((d && d.picks) || (d && d.result && d.result.picks) || []);
const nameOf = (x) => (x && typeof x === "object" ? x.name || x.id : x);

function matterName(d) {
  return d.matter_name || (d.matter && d.matter.name) || matterNames.get(d.matter_id) || d.matter_id || "—";
}

async function loadMatters() {
  let list = null;
  try {
    list = await getOptional("/api/inspections/matters");
  } catch (err) {
    console.warn("gridhub: matters unavailable", err);
  }
  const select = $("matter-select");
  const input = $("matter-input");
  const items = Array.isArray(list) ? list : (list && (list.matters || list.items)) || [];
  if (items.length) {
    for (const m of items) {
      matterNames.set(m.id, m.name);
      const o = el("option", "", `${m.name} · ${label("dept", m.department)}`);
      o.title = m.description || "";
      o.value = m.id;
      select.append(o);
    }
    select.hidden = false;
    select.required = true;
    input.hidden = true;
    input.required = false;
  } else {
    select.hidden = true;
    select.required = false;
    input.hidden = false;
    input.required = true;
  }
}

function renderDraws() {
  const tbody = $("draws").querySelector("tbody");
  tbody.replaceChildren(...draws.map((d) => {
    const tr = el("tr", current && String(current.id) === String(d.id) ? "selected" : "");
    tr.dataset.drawId = String(d.id);
    tr.append(el("td", "num", d.id), el("td", "", matterName(d)), el("td", "mono", d.seed || ""),
      el("td", "", fmtDateTime(asTs(d.drawn_at))), el("td", "", d.drawn_by || "—"),
      el("td", "num", d.targets ?? (picksOf(d).length || "—")),
      el("td", "", d.published ? t("insp.published") : t("insp.not_published")),
      el("td", "verify", !verified.has(String(d.id)) ? ""
        : verified.get(String(d.id)) ? t("insp.reproduced") : t("insp.not_reproduced")));
    return tr;
  }));
}

async function loadDraws() {
  const empty = $("draws-empty");
  try {
    const doc = await getOptional("/api/inspections/draws");
    if (doc === null) {
      draws = [];
      setText(empty, t("insp.unavailable"));
      empty.hidden = false;
      $("commit-run").disabled = true;
    } else {
      draws = Array.isArray(doc) ? doc : doc.draws || doc.items || [];
      setText(empty, t("insp.no_draws"));
      empty.hidden = draws.length > 0;
      $("commit-run").disabled = false;
    }
  } catch (err) {
    setText(empty, errorText(err));
    empty.hidden = false;
  }
  renderDraws();
  document.body.dataset.loaded = "true";
}

function renderCommitments() {
  const tbody = $("commitments").querySelector("tbody");
  tbody.replaceChildren(...commitments.map((c) => {
    const tr = el("tr");
    tr.dataset.commitmentId = String(c.id);
    tr.dataset.status = c.status;
    const action = el("td");
    if (c.status === "open") {
      const b = el("button", "btn small primary draw-now", t("insp.draw_now"));
      b.type = "button";
      b.dataset.commitmentId = String(c.id);
      action.append(b);
    } else if (c.draw_id !== null && c.draw_id !== undefined) {
      action.append(el("span", "dim", `#${c.draw_id}`));
    } else if (c.failure) {
      action.append(el("span", "mono dim", c.failure));
    }
    tr.append(el("td", "num", c.id), el("td", "", matterName(c)), el("td", "num", c.targets),
      el("td", "", fmtDateTime(asTs(c.committed_at))), el("td", "", c.committed_by || "—"),
      el("td", "mono small", c.commitment), el("td", "", t(`insp.status.${c.status}`)), action);
    return tr;
  }));
  const empty = $("commitments-empty");
  setText(empty, t("insp.no_commitments"));
  empty.hidden = commitments.length > 0;
}

async function loadCommitments() {
  try {
    const doc = await getOptional("/api/inspections/commitments");
    commitments = Array.isArray(doc) ? doc : [];
  } catch (err) {
    commitments = [];
    toast(errorText(err));
  }
  renderCommitments();
}

async function drawWith(commitmentId) {
  try {
    const d = await postJson("/api/inspections/draws", { commitment_id: Number(commitmentId) });
    toast(t("insp.made", { id: d && d.id }), "ok");
    await Promise.all([loadDraws(), loadCommitments()]);
    if (d && d.id !== undefined) showDraw(d.id);
  } catch (err) {
    toast(errorText(err));
  }
}

async function showDraw(id) {
  try {
    current = await getJson(`/api/inspections/draws/${encodeURIComponent(id)}`);
  } catch (err) {
    toast(errorText(err));
    return;
  }
  renderDraws();
  const box = $("draw-detail");
  box.hidden = false;
  box.dataset.drawId = String(current.id);
  setText($("detail-title"), t("insp.draw_title", { id: current.id, matter: matterName(current) }));
  const p = current.params || {};
  const c = current.commitment || {};
  fillFacts($("detail-facts"), [["insp.seed", current.seed], ["insp.algorithm", current.algorithm],
    ["insp.commitment", c.commitment || "—"], ["insp.secret", current.secret || "—"],
    ["insp.department", label("dept", p.department)], ["insp.drawn", `${fmtDateTime(asTs(current.drawn_at))} · ${current.drawn_by || ""}`],
    ["insp.pool", t("insp.pool_sizes", { inspectors: (p.inspectors || []).length, entities: (p.entities || []).length })],
  ].map(([k, v]) => [t(k), v]));
  const tbody = $("picks").querySelector("tbody");
  tbody.replaceChildren(...picksOf(current).map((pk, k) => {
    const tr = el("tr");
    tr.dataset.entityId = pk.entity_id;
    const r = pk.result;
    tr.append(el("td", "num", k + 1),
      el("td", "", `${pk.entity_name || pk.entity_id}${pk.grid_name ? " · " + pk.grid_name : ""}`),
      el("td", "", pk.risk_class || "—"),
      el("td", "inspectors", (pk.inspectors || []).map(nameOf).join(t("fmt.list_sep"))),
      el("td", "", r ? `${label("outcome", r.outcome)}${r.notes ? " · " + r.notes : ""}` : "—"));
    tr.dataset.outcome = r ? r.outcome : "";
    return tr;
  }));
  const v = $("detail-verified");
  const known = verified.get(String(current.id));
  v.dataset.ok = known === undefined ? "" : String(known);
  setText(v, known === undefined ? "" : known ? t("insp.reproduced") : t("insp.not_reproduced"));
  $("detail-publish").hidden = !!current.published;
}

async function verify() {
  if (!current) return;
  const v = $("detail-verified");
  try {
    const r = await postJson(`/api/inspections/draws/${encodeURIComponent(current.id)}/verify`, {});
    const ok = !!(r && (r.reproduced ?? r.ok));
    v.dataset.ok = String(ok);
    setText(v, ok ? t("insp.reproduced") : `${t("insp.not_reproduced")}${r && r.reason ? ": " + r.reason : ""}`);
    verified.set(String(current.id), ok);
    renderDraws();
  } catch (err) {
    v.dataset.ok = "false";
    setText(v, errorText(err));
  }
}

async function publish() {
  if (!current) return;
  try {
    current = await postJson(`/api/inspections/draws/${encodeURIComponent(current.id)}/publish`, {});
    toast(t("insp.published_ok", { id: current.id }), "ok");
    await loadDraws();
    await showDraw(current.id);
    await loadPublic();
  } catch (err) {
    toast(errorText(err));
  }
}

async function loadPublic() {
  const list = $("public");
  const empty = $("public-empty");
  let doc = null;
  try {
    doc = await getOptional("/api/inspections/public");
  } catch (err) {
    setText(empty, errorText(err));
    empty.hidden = false;
    return;
  }
  const items = doc === null ? [] : Array.isArray(doc) ? doc : doc.draws || doc.items || [];
  list.replaceChildren(...items.map((d) => {
    const li = el("li", "public-draw");
    li.dataset.drawId = String(d.id);
    li.append(el("b", "", t("insp.draw_title", { id: d.id, matter: matterName(d) })),
      el("span", "dim", fmtDateTime(asTs(d.published_at || d.drawn_at))),
      el("span", "mono dim", t("insp.seed_is", { seed: d.seed || "" })));
    const ul = el("ul");
    for (const pk of picksOf(d)) {
      const r = pk.result;
      ul.append(el("li", "", `${pk.entity_name || pk.entity_id} · ${(pk.inspectors || []).map(nameOf).join(t("fmt.list_sep"))}`
        + (r ? ` · ${label("outcome", r.outcome)}` : "")));
    }
    li.append(ul);
    return li;
  }));
  setText(empty, doc === null ? t("insp.unavailable") : t("insp.no_public"));
  empty.hidden = items.length > 0;
}

$("draws").addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr[data-draw-id]");
  if (tr) showDraw(tr.dataset.drawId);
});
$("draws-reload").addEventListener("click", () => { loadDraws(); loadCommitments(); loadPublic(); });
$("commitments").addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-commitment-id]");
  if (b) drawWith(b.dataset.commitmentId);
});
$("detail-verify").addEventListener("click", verify);
$("detail-publish").addEventListener("click", publish);
$("draw-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target.elements;
  const matter = $("matter-select").hidden ? f.matter_text.value.trim() : f.matter_id.value;
  $("commit-run").disabled = true;
  try {
    const c = await postJson("/api/inspections/commitments",
      { matter_id: matter, targets: Number(f.targets.value) });
    toast(t("insp.announced_ok", { id: c && c.id }), "ok");
    await loadCommitments();
  } catch (err) {
    toast(errorText(err));
  } finally {
    $("commit-run").disabled = false;
  }
});
window.gridhub = { get draws() { return draws; }, get commitments() { return commitments; },
  showDraw, verify, publish, drawWith };
loadMatters().then(() => Promise.all([loadDraws(), loadCommitments()]));
loadPublic();
