// Small DOM helpers shared by every page. Text from data is always set with textContent,
// never parsed as HTML.

export const $ = (id) => document.getElementById(id);

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// Write only when different: most frames change few fields of few rows.
export function setText(node, text) {
  const s = text === undefined || text === null ? "" : String(text);
  if (node.textContent !== s) node.textContent = s;
}

export function setClass(node, className) {
  if (node.className !== className) node.className = className;
}

export function setData(node, key, value) {
  const s = value === undefined || value === null ? "" : String(value);
  if (node.dataset[key] !== s) node.dataset[key] = s;
}

// Put `nodes` into `parent` in this order, moving only the nodes that are out of place;
// children not in `nodes` are removed.
export function reconcileOrder(parent, nodes) {
  let cursor = parent.firstElementChild;
  for (const node of nodes) {
    if (node === cursor) {
      cursor = cursor.nextElementSibling;
    } else {
      parent.insertBefore(node, cursor);
    }
  }
  while (cursor) {
    const next = cursor.nextElementSibling;
    cursor.remove();
    cursor = next;
  }
}

export const hasPoint = (e) => !!e && typeof e.lon === "number" && typeof e.lat === "number";

// A message in the page's toast (#toast): errors in red, confirmations in green.
const TOAST_MS = 6000;
let toastTimer = 0;
export function toast(message, kind = "error") {
  const node = $("toast");
  if (!node) {
    console.warn("gridhub:", message);
    return;
  }
  node.textContent = message;
  node.dataset.kind = kind;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, TOAST_MS);
}

// Fill a <dl> with [label, value] pairs, each pair in its own <div> (so a grid lays the
// pairs out, not the terms and definitions separately). A value may be a node.
export function fillFacts(dl, pairs) {
  dl.replaceChildren(...pairs.map(([term, value]) => {
    const box = el("div", "fact");
    const dd = el("dd");
    dd.append(value === null || value === undefined ? "—" : value);
    box.append(el("dt", "", term), dd);
    return box;
  }));
}
