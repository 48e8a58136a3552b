// The case page's evidence photos (hub/photos.py): before (report) and after (feedback,
// verification), each checked by the hub against its hash in the case log. Strings come
// from the section's data attributes (translated in the template).

import { fmtDateTime } from "./i18n.js";

const card = document.getElementById("photos-card");
const id = document.querySelector("main[data-incident-id]").dataset.incidentId;
// Photos arrive with the phones' steps; the page re-reads them this often.
const REFRESH_MS = 15000;

async function load() {
  let body;
  try {
    const res = await fetch(`/api/incidents/${encodeURIComponent(id)}/photos`);
    if (!res.ok) return;
    body = await res.json();
  } catch { return; }
  const status = document.getElementById("photos-status");
  status.textContent = !body.photos.length ? card.dataset.none
    : body.intact ? card.dataset.ok : card.dataset.bad;
  status.dataset.ok = String(body.intact);
  document.getElementById("case-photo-list").replaceChildren(...body.photos.map((p) => {
    const fig = document.createElement("figure");
    fig.className = p.intact ? "photo" : "photo broken";
    fig.dataset.stage = p.stage;
    const a = document.createElement("a");
    a.href = p.display_url;
    a.target = "_blank";
    const img = document.createElement("img");
    img.src = p.thumb_url;
    img.alt = card.dataset[`stage${p.stage[0].toUpperCase()}${p.stage.slice(1)}`] || p.stage;
    a.append(img);
    const cap = document.createElement("figcaption");
    const when = p.taken_at ? fmtDateTime(p.taken_at) : "";
    cap.textContent = `${img.alt} · ${p.added_by}${when ? ` · ${when}` : ""}${p.intact ? "" : " ✗"}`;
    fig.append(a, cap);
    return fig;
  }));
}

load();
setInterval(load, REFRESH_MS);
