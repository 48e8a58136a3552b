// Shared by the administration pages: their strings, JSON requests with every method,
// reading a form into an object, the error line under a form, and the one-time reveal.

import { ApiError, csrfToken } from "./api.js";
import { LiveFeed } from "./feed.js";
import { STRINGS, t } from "./i18n.js";

// The page's own strings (<script id="admin-i18n">), next to the common catalog.
const own = document.getElementById("admin-i18n");
if (own) Object.assign(STRINGS, JSON.parse(own.textContent || "{}"));

export const $ = (id) => document.getElementById(id);

export async function send(method, url, body) {
  let res;
  try {
    res = await fetch(url, {
      method,
      headers: { "content-type": "application/json", accept: "application/json",
        "x-csrf-token": csrfToken() },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "network", t("error.network"));
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!res.ok) {
    if (data && data.error) throw new ApiError(res.status, data.error.code, data.error.message);
    if (data && Array.isArray(data.detail)) {  // FastAPI's validation errors
      throw new ApiError(res.status, "invalid_input",
        data.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; "));
    }
    throw new ApiError(res.status, null, `HTTP ${res.status}`);
  }
  return data;
}

// Show what went wrong under a form: the server's message and its stable code.
export function showError(box, err) {
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    delete box.dataset.code;
    return;
  }
  const code = err.code || "error";
  box.dataset.code = code;
  box.textContent = t("admin.failed", { message: err.message || code, code });
  box.hidden = false;
}

export function showDone(box, text) {
  box.textContent = text;
  box.hidden = false;
  clearTimeout(box._timer);
  box._timer = setTimeout(() => { box.hidden = true; }, 6000);
}

// A form's fields as an object: numbers for type=number, lists for data-list="1"
// (comma-separated text, or the checked boxes of that name), booleans for checkboxes.
export function formValues(form) {
  const out = {};
  for (const elt of form.elements) {
    if (!elt.name || elt.disabled) continue;
    if (elt.type === "checkbox" && elt.dataset.list) {
      out[elt.name] = out[elt.name] || [];
      if (elt.checked) out[elt.name].push(elt.dataset.numeric ? Number(elt.value) : elt.value);
    } else if (elt.type === "checkbox") {
      out[elt.name] = elt.checked;
    } else if (elt.dataset.list) {
      out[elt.name] = elt.value.split(/[,，\s]+/).map((s) => s.trim()).filter(Boolean);
    } else if (elt.type === "number") {
      if (elt.value !== "") out[elt.name] = Number(elt.value);
    } else {
      out[elt.name] = elt.value.trim();
    }
  }
  return out;
}

export function fillForm(form, values) {
  for (const elt of form.elements) {
    if (!elt.name || !(elt.name in values)) continue;
    const v = values[elt.name];
    if (elt.type === "checkbox" && elt.dataset.list) elt.checked = (v || []).map(String).includes(elt.value);
    else if (elt.type === "checkbox") elt.checked = !!v;
    else if (Array.isArray(v)) elt.value = v.join(", ");
    else elt.value = v === null || v === undefined ? "" : String(v);
  }
}

// A secret shown once (a password, a token): the dialog says so and forgets it on close.
export function reveal({ title, fields, qrSvg }) {
  const dlg = $("reveal");
  $("reveal-title").textContent = title;
  const list = $("reveal-fields");
  list.replaceChildren();
  for (const [name, value] of fields) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.className = "secret";
    dd.textContent = value;
    list.append(dt, dd);
  }
  const qr = $("reveal-qr");
  qr.replaceChildren();
  if (qrSvg) {
    // The server made this SVG (hub/qr_codes.py): parsed as SVG, never as HTML.
    const doc = new DOMParser().parseFromString(qrSvg, "image/svg+xml");
    qr.append(document.importNode(doc.documentElement, true));
  }
  qr.hidden = !qrSvg;
  dlg.showModal();
}

export function bindReveal() {
  const dlg = $("reveal");
  $("reveal-close").addEventListener("click", () => {
    $("reveal-fields").replaceChildren();
    $("reveal-qr").replaceChildren();
    dlg.close();
  });
}

export function fmtTime(tsS) {
  if (tsS === null || tsS === undefined) return "—";
  const d = new Date(tsS * 1000);
  return d.toLocaleString(document.documentElement.lang || "zh-CN", { hour12: false });
}

export function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text === null || text === undefined ? "" : String(text);
  return td;
}

export function button(text, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `btn small ${cls || ""}`;
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

// A register-or-edit form: POST to ``api`` when new, PUT to ``api/<id>`` while
// ``editingId()`` names the row being edited; then ``onSaved(saved, wasEdit)``. A refusal
// shows in ``errorBox`` and changes nothing on the page.
export function bindEditForm(form, { api, errorBox, editingId, onSaved }) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(errorBox, null);
    const values = formValues(form);
    const id = editingId();
    try {
      const saved = id ? await send("PUT", `${api}/${encodeURIComponent(id)}`, values)
        : await send("POST", api, values);
      await onSaved(saved, Boolean(id));
    } catch (err) {
      showError(errorBox, err);
    }
  });
}

// Follow changes made elsewhere (another tab, another user, another hub process): the live
// feed's events of `kinds` call `refresh()` (once per frame that has any; also after a
// snapshot, which may have skipped some). `document.body.dataset.live` is "1" while synced.
export function followEvents(kinds, refresh) {
  const wanted = new Set(kinds);
  const feed = new LiveFeed({
    onChange: (change) => {
      if (change.reset || (change.events || []).some((ev) => wanted.has(ev.kind))) refresh();
    },
    onStatus: ({ phase }) => { document.body.dataset.live = phase === "live" ? "1" : "0"; },
  });
  feed.start();
  return feed;
}
