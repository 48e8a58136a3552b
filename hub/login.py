"""Logging in and out of the pages, and ``/api/me``.

- ``GET /login`` shows the form and sets a login-CSRF cookie (random, HttpOnly,
  SameSite=Strict) whose value the form echoes in ``csrf_token``. ``POST /login`` refuses
  a form whose field does not match the cookie (403 ``login.csrf``): another site can make
  a browser post the form but can neither read nor set that cookie, so it cannot log the
  browser in to an account of its choosing (login CSRF).
- A good password creates a server-side session (``hub/auth.py``) and sets the session
  cookie ``gridhub_session``: HttpOnly, SameSite=Strict, Secure unless
  ``HUB_COOKIE_SECURE=false``; then 303 to ``next`` (a path on this site only).
- Failures are counted per (username, client address) and per address in the database
  (``hub/auth.py``): after a few, each attempt from there must wait a growing delay; a
  too-early attempt answers 429 ``auth.rate_limited`` with ``Retry-After``, without
  looking at the password. Another address is not slowed down (no lockout from elsewhere).
- Every login, failure, throttled attempt and logout goes to the audit trail
  (``hub/audit.py``).
- ``POST /logout`` (CSRF-checked by the middleware) deletes the session row and the cookie.

Refusals on this page are HTML (it is a form), with the stable code in the ``data-code``
attribute of the message element and in the ``X-Error-Code`` header.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from hub import audit, auth
from hub.access import SESSION_COOKIE, principal_of
from hub.state import get_hub

log = logging.getLogger("hub.login")

router = APIRouter()

LOGIN_CSRF_COOKIE = "gridhub_login"
# The login form may sit open this long (a console left at the login screen overnight
# reloads it).
LOGIN_FORM_MAX_AGE_S = 12 * 3600
MAX_FORM_BYTES = 8 * 1024
# At most one audit row per (username, address) this often for throttled attempts.
THROTTLED_AUDIT_EVERY_S = 60.0


def throttle_of(s: Any) -> auth.Throttle:
    """The login throttle from the settings (core/settings.py says why each value)."""
    return auth.Throttle(free_per_pair=s.login_free_failures_per_pair,
                         free_per_ip=s.login_free_failures_per_ip,
                         base_delay_s=s.login_delay_base_s, max_delay_s=s.login_delay_max_s,
                         window_s=s.login_failure_window_s)


def safe_next(target: str | None) -> str:
    """Only a path on this site: never ``//host`` or ``https://...`` (open redirect)."""
    if (not target or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(ord(c) < 32 for c in target)):
        return "/"
    return target


def _cookie_secure(request: Request) -> bool:
    return bool(get_hub(request).settings.cookie_secure)


def _form_page(request: Request, *, status: int = 200, error: str | None = None,
               code: str | None = None, next_url: str = "/", username: str = "",
               headers: dict[str, str] | None = None) -> Response:
    from hub.views import page

    token = auth.new_secret()
    response = page(request, "login.html", login_csrf=token, error=error, error_code=code,
                    next_url=next_url, username=username, csrf_token="", user=None)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if code:
        response.headers["X-Error-Code"] = code
    for k, v in (headers or {}).items():
        response.headers[k] = v
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=LOGIN_FORM_MAX_AGE_S, path="/login",
                        httponly=True, samesite="strict", secure=_cookie_secure(request))
    return response


@router.get("/login", include_in_schema=False)
async def login_form(request: Request, next: str | None = None) -> Response:
    return _form_page(request, next_url=safe_next(next))


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form (small: the body-size limit applies), first value per field.
    Parsed here rather than with FastAPI's ``Form``, which needs python-multipart."""
    body = (await request.body())[:MAX_FORM_BYTES]
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


@router.post("/login", include_in_schema=False)
async def login_submit(request: Request) -> Response:
    from hub.i18n import gettext_for, pick_language

    form = await _form(request)
    username = form.get("username", "")[:64]
    password = form.get("password", "")[:auth.MAX_PASSWORD_LEN + 1]
    csrf_token = form.get("csrf_token", "")
    next = form.get("next", "/")[:2000]

    lang = pick_language(request.query_params.get("lang"), request.cookies.get("lang"))
    _ = lambda m: gettext_for(lang, m)  # noqa: E731
    next_url = safe_next(next)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), csrf_token.encode()):
        return _form_page(request, status=403, code="login.csrf", next_url=next_url,
                          error=_("The login form expired; please try again."))
    hub = get_hub(request)
    s = hub.settings
    client_ip = request.client.host if request.client else "unknown"
    result = await auth.login(hub.pool, username, password, client_ip, throttle_of(s))
    if result.retry_after_s is not None:
        log.warning("login throttled: user %r from %s", username, client_ip)
        # Throttled attempts cost the attacker nothing, so each is not a row: one a minute
        # per (username, address) shows the attack without letting it fill the table.
        if not await hub.pool.fetchval(
                """SELECT EXISTS (SELECT 1 FROM security_events WHERE kind = 'login.throttled'
                   AND target = $1 AND client_ip = $2
                   AND at > now() - make_interval(secs => $3))""",
                username, client_ip, THROTTLED_AUDIT_EVERY_S):
            await audit.record(hub.pool, "login.throttled", username, target=username,
                               client_ip=client_ip,
                               detail={"retry_after_s": result.retry_after_s,
                                       "failures": result.failures})
        return _form_page(request, status=429, code="auth.rate_limited", next_url=next_url,
                          username=username, headers={"Retry-After": str(result.retry_after_s)},
                          error=_("Too many failed logins; try again in %(s)s seconds.")
                          % {"s": result.retry_after_s})
    if result.user_id is None:
        log.info("login failed: user %r from %s", username, client_ip)
        await audit.record(hub.pool, "login.failed", username, target=username,
                           client_ip=client_ip, detail={"failures": result.failures})
        return _form_page(request, status=401, code="auth.bad_credentials", next_url=next_url,
                          username=username, error=_("Wrong username or password."))
    sid, _csrf = await auth.create_session(hub.pool, result.user_id, s.session_ttl_s)
    log.info("login: user %r from %s", username, client_ip)
    await audit.record(hub.pool, "login.succeeded", username, target=username,
                       client_ip=client_ip)
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(SESSION_COOKIE, sid, max_age=int(s.session_ttl_s), path="/",
                        httponly=True, samesite="strict", secure=s.cookie_secure)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    p = principal_of(request)
    if p is not None and p.session_hash is not None:
        pool = get_hub(request).pool
        await auth.end_session(pool, p.session_hash)
        await audit.record(pool, "session.ended", p.name, target=p.name,
                           client_ip=request.client.host if request.client else None)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=_cookie_secure(request))
    return response


@router.get("/api/me")
async def me(request: Request) -> dict[str, Any]:
    """Who the caller is: ``{"name", "role", "kind", "unit_id"}``."""
    p = principal_of(request)
    assert p is not None  # the policy requires a principal here
    return {"name": p.name, "role": p.role, "kind": p.kind, "unit_id": p.unit_id}
