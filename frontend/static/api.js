// The hub's REST API from the pages: JSON in, JSON out, errors as ApiError carrying the
// server's stable code ({"error": {"code", "message"}}), and the operator's name.

import { t } from "./i18n.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || `http.${status}`;
  }
}

// The session's CSRF token (hub/access.py): every state-changing request sends it in
// X-CSRF-Token. The page carries it in <meta name="csrf-token">.
export function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return (meta && meta.content) || "";
}

// The session ended (expired, logged out elsewhere): back to the login page, then here.
function toLogin() {
  const next = location.pathname + location.search;
  location.assign(`/login?next=${encodeURIComponent(next)}`);
}

async function errorOf(res) {
  if (res.status === 401) toLogin();
  let code = null, message = null;
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code;
      message = body.error.message;
    } else if (body && Array.isArray(body.detail)) {  // FastAPI's validation errors
      code = "invalid_input";
      message = body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    }
  } catch { /* not JSON */ }
  return new ApiError(res.status, code, message);
}

export async function getJson(url) {
  let res;
  try {
    res = await fetch(url, { headers: { accept: "application/json" } });
  } catch (err) {
    throw new ApiError(0, "network", t("error.network"));
  }
  if (!res.ok) throw await errorOf(res);
  return res.json();
}

// GET that retries until it succeeds (for the documents a page cannot work without, while
// the hub may still be starting). `onRetry(attempt, err)` is told of each failure.
const RETRY_MS = [1000, 2000, 5000];
export async function getJsonRetry(url, onRetry = () => {}) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await getJson(url);
    } catch (err) {
      if (err.status === 404) throw err;  // will not come by waiting
      onRetry(attempt, err);
      await new Promise((r) => setTimeout(r, RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)]));
    }
  }
}

// A GET whose route may not exist yet on this hub: null on 404 (the page shows an empty
// state), the data otherwise; other errors are thrown.
export async function getOptional(url) {
  try {
    return await getJson(url);
  } catch (err) {
    if (err.status === 404 || err.status === 405) return null;
    throw err;
  }
}

export async function postJson(url, body) {
  let res;
  try {
    res = await fetch(url, {
      method: "POST",
      headers: {
        "content-type": "application/json", accept: "application/json",
        "x-csrf-token": csrfToken(),
      },
      body: JSON.stringify(body ?? {}),
    });
  } catch (err) {
    throw new ApiError(0, "network", t("error.network"));
  }
  if (!res.ok) throw await errorOf(res);
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

// "Message (code)" for a toast.
export function errorText(err) {
  if (err instanceof ApiError) return err.code && err.message !== err.code
    ? `${err.message} (${err.code})` : err.message;
  return String((err && err.message) || err);
}

// ------------------------------------------------------------------ the operator
// Who acts is who is logged in (<meta name="gridhub-user">, shown in the header as on
// duty): the hub records every action under the login, never a name a request sends, so
// request bodies carry none. A shift handover is a log-out and a log-in.
export function getActor() {
  const meta = document.querySelector('meta[name="gridhub-user"]');
  return (meta && meta.content) || "";
}

// Kept for pages that still call it: there is no editable duty-officer field any more.
export function bindActorField(_el) {}
