// Users and API tokens (/admin/users): create (random password shown once), disable,
// reset a password, issue and revoke tokens, last login.

import { getJson } from "./api.js";
import { t } from "./i18n.js";
import { $, bindReveal, button, cell, fmtTime, formValues, reveal, send, showDone,
  showError } from "./admin_common.js";

const userError = $("user-error");
const tokenError = $("token-error");

async function load() {
  const [users, tokens] = await Promise.all([getJson("/api/admin/users"), getJson("/api/admin/tokens")]);
  $("user-list").querySelector("tbody").replaceChildren(...users.map((u) => {
    const tr = document.createElement("tr");
    tr.dataset.username = u.username;
    tr.append(cell(u.username), cell(u.display_name), cell(u.role),
      cell(u.disabled ? t("user.disabled") : t("user.active"), "state"),
      cell(u.last_login ? fmtTime(u.last_login) : t("user.never"), "last-login"),
      cell(u.sessions, "num"));
    const actions = document.createElement("td");
    actions.className = "row-actions";
    actions.append(button(t("user.reset"), "act-reset", () => resetPassword(u.username)));
    if (!u.disabled) actions.append(button(t("user.disable"), "danger act-disable", () => disable(u.username)));
    tr.append(actions);
    return tr;
  }));
  $("token-list").querySelector("tbody").replaceChildren(...tokens.map((k) => {
    const tr = document.createElement("tr");
    tr.dataset.tokenName = k.name;
    if (k.revoked_at) tr.className = "retired";
    tr.append(cell(k.name), cell(k.role), cell(k.unit_id), cell(k.created_by),
      cell(fmtTime(k.created_at)), cell(k.last_used_at ? fmtTime(k.last_used_at) : t("user.never")),
      cell(k.revoked_at ? t("user.revoked") : t("user.active"), "state"));
    const actions = document.createElement("td");
    actions.className = "row-actions";
    if (!k.revoked_at) actions.append(button(t("user.revoke"), "danger act-revoke", () => revoke(k.name)));
    tr.append(actions);
    return tr;
  }));
}

$("user-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError(userError, null);
  try {
    const u = await send("POST", "/api/admin/users", formValues($("user-form")));
    $("user-form").reset();
    showDone($("user-done"), t("user.created", { name: u.username }));
    reveal({ title: t("user.password_title", { name: u.username }),
      fields: [[t("user.username"), u.username], [t("user.password"), u.password]] });
    await load();
  } catch (err) {
    showError(userError, err);
  }
});

async function disable(name) {
  if (!window.confirm(t("user.confirm_disable", { name }))) return;
  showError(userError, null);
  try {
    await send("POST", `/api/admin/users/${encodeURIComponent(name)}/disable`);
    await load();
  } catch (err) {
    showError(userError, err);
  }
}

async function resetPassword(name) {
  if (!window.confirm(t("user.confirm_reset", { name }))) return;
  showError(userError, null);
  try {
    const u = await send("POST", `/api/admin/users/${encodeURIComponent(name)}/password`);
    reveal({ title: t("user.password_title", { name }),
      fields: [[t("user.username"), name], [t("user.password"), u.password]] });
    await load();
  } catch (err) {
    showError(userError, err);
  }
}

$("token-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError(tokenError, null);
  const values = formValues($("token-form"));
  if (!values.unit_id) delete values.unit_id;
  try {
    const k = await send("POST", "/api/admin/tokens", values);
    $("token-form").reset();
    reveal({ title: t("user.token_title", { name: k.name }), fields: [[t("user.token"), k.token]] });
    await load();
  } catch (err) {
    showError(tokenError, err);
  }
});

async function revoke(name) {
  if (!window.confirm(t("user.confirm_revoke", { name }))) return;
  showError(tokenError, null);
  try {
    await send("DELETE", `/api/admin/tokens/${encodeURIComponent(name)}`);
    await load();
  } catch (err) {
    showError(tokenError, err);
  }
}

bindReveal();
load().then(() => { document.body.dataset.ready = "1"; }).catch((err) => showError(userError, err));
