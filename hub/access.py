"""Who may do what: the one policy table and the one place it is enforced.

``POLICY`` names the role every route requires, keyed by (method, path template) exactly
as the app routes them: ``("GET", "/api/units")``, ``("WS", "/ws/live")`` for websockets,
``("MOUNT", "/static")`` for mounted static files. Public routes say so (``PUBLIC``).
``AccessMiddleware`` resolves each request to the route the router will pick, looks the
route up, authenticates the caller (bearer token, else the session cookie) and refuses:

- a route missing from the table: 403 ``auth.no_policy`` (fail closed), logged;
- no valid credentials: pages 303 to ``/login?next=...``, API 401 ``auth.required``,
  websocket closed before it is accepted;
- a role below the one required: 403 ``auth.forbidden`` (a websocket is closed);
- a state-changing request authenticated by the session cookie without the session's CSRF
  token (header ``X-CSRF-Token`` or form field ``csrf_token``): 403 ``auth.csrf``.

Requests no route matches go on to the router (404/405): no handler runs for them.
Object-level rules (a unit acts only on its own incidents, supervisor-only case actions)
live in the handlers, using ``principal_of(request)`` and the helpers here.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

import asyncpg
from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.datastructures import Headers
from starlette.routing import Mount, WebSocketRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import Forbidden
from hub import auth
from hub.auth import Principal
from hub.errors import error_body

log = logging.getLogger("hub.access")

SESSION_COOKIE = "gridhub_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A form body read here to find its CSRF field is bounded by the body-size limit anyway;
# this is the most read for that purpose (a login or logout form is a few hundred bytes).
MAX_FORM_PEEK = 64 * 1024
# Credentials are checked against the database on every request (a revoked token or ended
# session stops at once). While the database cannot answer, a credential that was good
# within this long is still honoured, so that monitoring (/api/ingest/stats) and the live
# feed keep working through a database outage; nothing can be revoked meanwhile anyway.
STALE_CREDENTIALS_OK_S = 600.0
AUTH_LOOKUP_TIMEOUT_S = 3.0
LAST_GOOD_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Rule:
    """``role`` None: public. ``unit``: a unit token may call it too (the handler then
    limits it to the unit's own incidents). ``page``: an HTML page (redirects to the login
    page rather than answering 401)."""

    role: str | None
    unit: bool = False
    page: bool = False
    grid_worker: bool = False  # a grid worker's phone may call it too (hub/field_api.py)


PUBLIC = Rule(None)
VIEWER = Rule("viewer")
VIEWER_OR_UNIT = Rule("viewer", unit=True)
OPERATOR = Rule("operator")
OPERATOR_OR_UNIT = Rule("operator", unit=True)
SUPERVISOR = Rule("supervisor")
ADMIN = Rule("admin")
PAGE = Rule("viewer", page=True)
# The field app's own routes (hub/field_api.py): phones only, a unit's or a grid worker's;
# the handlers limit each to its unit's cases or its grids.
FIELD_ONLY = "field"
FIELD = Rule(FIELD_ONLY)
# Evidence photos: staff who read cases and phones; the handler checks the case.
PHOTO = Rule("viewer", unit=True, grid_worker=True)

POLICY: dict[tuple[str, str], Rule] = {
    # ---- public: the login page, the health probe (load balancers), static assets
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,  # guarded by its own login-CSRF cookie and the rate limit
    ("GET", "/api/health"): PUBLIC,
    ("MOUNT", "/static"): PUBLIC,
    ("MOUNT", "/vendor/leaflet"): PUBLIC,
    ("MOUNT", "/vendor/uplot"): PUBLIC,
    # Open311 GeoReport v2 (hub/open311.py): public as the specification has it, rate-limited
    # per client address; filing a report needs an application's api_key (checked there).
    ("GET", "/open311/v2/discovery.{fmt}"): PUBLIC,
    ("GET", "/open311/v2/services.{fmt}"): PUBLIC,
    ("GET", "/open311/v2/services/{service_code}.{fmt}"): PUBLIC,
    ("GET", "/open311/v2/requests.{fmt}"): PUBLIC,
    ("GET", "/open311/v2/requests/{request_id}.{fmt}"): PUBLIC,
    ("POST", "/open311/v2/requests.{fmt}"): PUBLIC,
    # The "one public" of double-random inspections: only what a supervisor published
    # (draws, results) or announced (commitments); hub/inspections_api.py.
    ("GET", "/inspections/public"): PUBLIC,
    ("GET", "/api/inspections/public"): PUBLIC,
    ("GET", "/api/inspections/public/draws/{draw_id}"): PUBLIC,
    # ---- sessions
    ("POST", "/logout"): VIEWER,
    ("GET", "/api/me"): VIEWER_OR_UNIT,
    # ---- API documentation: describes every route, so not for strangers
    ("GET", "/openapi.json"): VIEWER,
    ("GET", "/docs"): VIEWER,
    ("GET", "/docs/oauth2-redirect"): VIEWER,
    ("GET", "/redoc"): VIEWER,
    # ---- pages
    ("GET", "/"): PAGE,
    ("GET", "/cases/{incident_id}"): PAGE,
    ("GET", "/units/{unit_id}"): PAGE,
    ("GET", "/devices/{device_id}"): PAGE,
    ("GET", "/reports"): PAGE,
    ("GET", "/inspections"): PAGE,
    ("GET", "/audit"): Rule("supervisor", page=True),  # the security audit trail
    # The administration pages (hub/admin_pages.py): the duty roster is a supervisor's job;
    # devices, their MQTT credentials, users and tokens are an admin's.
    ("GET", "/admin/devices"): Rule("admin", page=True),
    ("GET", "/admin/units"): Rule("supervisor", page=True),
    ("GET", "/admin/users"): Rule("admin", page=True),
    ("GET", "/admin/grids"): Rule("admin", page=True),
    ("GET", "/admin/rules"): Rule("supervisor", page=True),  # the rules and SLA APIs'
    ("GET", "/admin/sla"): Rule("supervisor", page=True),    # edits are a supervisor's
    ("GET", "/replay"): PAGE,  # after-action replay: the console on a past window
    # ---- the live feed
    ("WS", "/ws/live"): VIEWER,
    # ---- reading the picture
    ("GET", "/api/ingest/stats"): VIEWER,
    ("GET", "/api/kpis"): VIEWER,
    # ---- after-action replay (hub/replay_api.py): what the console showed, read only
    ("GET", "/api/replay/history"): VIEWER,
    ("GET", "/api/replay/picture"): VIEWER,
    ("GET", "/api/replay/chunk"): VIEWER,
    ("GET", "/api/replay/alerts"): VIEWER,
    ("GET", "/api/replay/kpis"): VIEWER,
    ("GET", "/api/town"): VIEWER,
    ("GET", "/api/snapshot"): VIEWER,
    ("GET", "/api/events"): VIEWER,
    ("GET", "/api/devices"): VIEWER,
    ("GET", "/api/devices/{device_id}/latest"): VIEWER,
    ("GET", "/api/devices/{device_id}/series"): VIEWER,
    ("GET", "/api/devices/clocks"): VIEWER,
    ("GET", "/api/units"): VIEWER,
    ("GET", "/api/units/{unit_id}/track"): VIEWER,
    ("GET", "/api/units/{unit_id}/patrol"): VIEWER,
    ("GET", "/api/alarms"): VIEWER,
    ("GET", "/api/incidents"): VIEWER_OR_UNIT,  # a unit sees its own assignments only
    ("GET", "/api/incidents/{incident_id}"): VIEWER_OR_UNIT,  # ... and only its own
    ("GET", "/api/incidents/{incident_id}/log/verify"): VIEWER,
    ("GET", "/api/dispatch/override-reasons"): VIEWER,
    ("GET", "/api/supervisor/alerts"): VIEWER,
    ("GET", "/api/inspections/matters"): VIEWER,
    ("GET", "/api/inspections/draws"): VIEWER,
    ("GET", "/api/inspections/draws/{draw_id}"): VIEWER,
    ("GET", "/api/inspections/commitments"): VIEWER,
    ("GET", "/api/reports/assessment"): VIEWER,
    ("GET", "/api/reports/assessment.csv"): VIEWER,
    ("GET", "/api/rules"): VIEWER,
    ("GET", "/api/rules/{rule_id}"): VIEWER,
    ("GET", "/api/sla"): VIEWER,
    ("GET", "/api/sla/changes"): VIEWER,
    ("GET", "/api/sla/calendar/days"): VIEWER,
    ("GET", "/api/rules/alarm-groups/{alarm_id}"): VIEWER,
    # Raw payloads of rejected messages may carry device secrets or personal data.
    ("GET", "/api/dead-letters"): OPERATOR,
    # ---- operating: alarms, cases, inspections
    ("POST", "/api/alarms/{alarm_id}/ack"): OPERATOR,
    ("POST", "/api/alarms/{alarm_id}/clear"): OPERATOR,
    ("POST", "/api/incidents"): OPERATOR_OR_UNIT,  # a unit files field reports
    ("POST", "/api/incidents/{incident_id}/actions"): OPERATOR_OR_UNIT,  # see ACTION_ROLES
    ("POST", "/api/incidents/{incident_id}/assign"): OPERATOR,
    # Redirecting a unit on its way takes it off a citizen's case: an operator's call, as
    # an override is (the case is planned again at once).
    ("POST", "/api/units/{unit_id}/redirect"): OPERATOR,
    # Citizens' contact data (hub/contacts.py): those who act on reports, nobody else.
    ("GET", "/api/contacts/{contact_id}"): OPERATOR,
    ("GET", "/api/incidents/{incident_id}/contact"): OPERATOR,
    ("POST", "/api/inspections/draws"): OPERATOR,
    ("POST", "/api/inspections/draws/{draw_id}/verify"): OPERATOR,
    ("POST", "/api/inspections/draws/{draw_id}/results"): OPERATOR,
    # ---- administration (hub/admin_*.py)
    ("GET", "/api/admin/devices"): ADMIN,
    ("POST", "/api/admin/devices"): ADMIN,
    ("PUT", "/api/admin/devices/{device_id}"): ADMIN,
    ("DELETE", "/api/admin/devices/{device_id}"): ADMIN,
    ("POST", "/api/admin/devices/{device_id}/credentials"): ADMIN,
    ("GET", "/api/admin/devices/{device_id}/health"): ADMIN,
    ("GET", "/api/admin/units"): SUPERVISOR,
    ("POST", "/api/admin/units"): SUPERVISOR,
    ("PUT", "/api/admin/units/{unit_id}"): SUPERVISOR,
    ("POST", "/api/admin/units/{unit_id}/duty"): SUPERVISOR,
    ("GET", "/api/admin/units/{unit_id}/duty-log"): SUPERVISOR,
    ("POST", "/api/admin/units/{unit_id}/shifts"): SUPERVISOR,
    ("DELETE", "/api/admin/units/{unit_id}/shifts/{shift_id}"): SUPERVISOR,
    ("POST", "/api/admin/town/preview"): ADMIN,
    ("POST", "/api/admin/town/import"): ADMIN,
    ("GET", "/api/admin/users"): ADMIN,
    ("POST", "/api/admin/users"): ADMIN,
    ("POST", "/api/admin/users/{username}/disable"): ADMIN,
    ("POST", "/api/admin/users/{username}/password"): ADMIN,
    ("GET", "/api/admin/tokens"): ADMIN,
    ("POST", "/api/admin/tokens"): ADMIN,
    ("DELETE", "/api/admin/tokens/{name}"): ADMIN,
    # A backtest reads up to millions of readings: not for every viewer.
    ("POST", "/api/rules/backtest"): OPERATOR,
    ("GET", "/api/rules/backtest/{job_id}"): OPERATOR,  # its progress
    ("DELETE", "/api/rules/backtest/{job_id}"): OPERATOR,
    # ---- supervising: publishing draws, acting on supervisor alerts, changing alarm rules
    ("POST", "/api/inspections/commitments"): SUPERVISOR,  # announcing a draw publishes
    ("POST", "/api/inspections/draws/{draw_id}/publish"): SUPERVISOR,
    ("POST", "/api/supervisor/alerts/{alert_id}/ack"): SUPERVISOR,
    ("PUT", "/api/rules/{rule_id}"): SUPERVISOR,
    ("DELETE", "/api/rules/{rule_id}"): SUPERVISOR,
    # SLA limits and the warn share (hub/sla_api.py): the targets every case is judged by.
    ("PUT", "/api/sla/limits/{category}/{priority}"): SUPERVISOR,
    ("DELETE", "/api/sla/limits/{category}/{priority}"): SUPERVISOR,
    ("PUT", "/api/sla/warn-share"): SUPERVISOR,
    ("POST", "/api/sla/calendar/days"): SUPERVISOR,  # holidays, adjusted working days
    ("DELETE", "/api/sla/calendar/days/{day}"): SUPERVISOR,
    # The security audit trail (hub/audit.py): logins, failures, account and token changes.
    ("GET", "/api/audit"): SUPERVISOR,
    # ---- administering: devices' and units' MQTT credentials (hub/mqtt_accounts_api.py)
    ("GET", "/api/mqtt/accounts"): ADMIN,
    ("POST", "/api/mqtt/accounts"): ADMIN,
    ("POST", "/api/mqtt/accounts/{principal}/rotate"): ADMIN,
    ("DELETE", "/api/mqtt/accounts/{principal}"): ADMIN,
    # ---- administering: a device's SenML name mapping (hub/senml_map_api.py)
    ("GET", "/api/devices/{device_id}/senml-map"): ADMIN,
    ("PUT", "/api/devices/{device_id}/senml-map"): ADMIN,
    # ---- administering: Open311 client applications' API keys (hub/open311_keys.py)
    ("GET", "/api/open311/keys"): ADMIN,
    ("POST", "/api/open311/keys"): ADMIN,
    ("DELETE", "/api/open311/keys/{key_id}"): ADMIN,
    # ---- the field app (hub/field_*.py): the page shell and its service worker are public
    # (a phone authenticates with its own token, kept on the phone); enrolling trades a
    # one-time code, so it is public too but rate-limited per address.
    ("GET", "/field"): PUBLIC,
    ("GET", "/field/sw.js"): PUBLIC,
    ("GET", "/field/manifest.webmanifest"): PUBLIC,
    ("POST", "/api/field/enrol"): PUBLIC,
    ("POST", "/api/field/enrolments"): ADMIN,
    ("GET", "/api/field/phones"): ADMIN,
    ("DELETE", "/api/field/phones/{name}"): ADMIN,
    ("GET", "/api/field/me"): FIELD,
    ("GET", "/api/field/town"): FIELD,
    ("GET", "/api/field/inbox"): FIELD,
    ("GET", "/api/field/cases/{incident_id}"): FIELD,
    ("GET", "/api/field/cases/{incident_id}/route"): FIELD,
    ("POST", "/api/field/cases/{incident_id}/actions"): FIELD,
    ("POST", "/api/field/reports"): FIELD,
    ("POST", "/api/field/photos"): FIELD,
    ("POST", "/api/field/positions"): FIELD,
    ("GET", "/api/field/patrol"): FIELD,
    ("WS", "/ws/field"): FIELD,
    ("GET", "/api/incidents/{incident_id}/photos"): VIEWER_OR_UNIT,
    ("GET", "/api/photos/{sha256}/{variant}"): PHOTO,
}

# Case actions a patrol phone may post, on incidents assigned to its own unit
# (dispatch/workflow.py): answer the dispatch, work the case, ask for more time.
UNIT_ACTIONS = frozenset({"accept", "decline", "start_handling", "give_feedback",
                          "request_extension"})
# Case actions that need more than the route's operator role; the rest need operator.
ACTION_ROLES: dict[str, str] = {
    "approve_extension": "supervisor",
    "reject_extension": "supervisor",
}


# ---------------------------------------------------------------- route resolution
@dataclass(frozen=True, slots=True)
class RouteKey:
    """A route as the policy names it, with the regex the router matches it by."""

    kind: str  # "HTTP", "WS" or "MOUNT"
    path: str
    methods: frozenset[str]
    regex: re.Pattern[str]

    def keys(self) -> Iterator[tuple[str, str]]:
        if self.kind == "HTTP":
            for m in sorted(self.methods - {"HEAD"}) or ["GET"]:
                yield (m, self.path)
        else:
            yield (self.kind, self.path)


def route_keys(routes: list[Any]) -> list[RouteKey]:
    """Every route of the app, flattened through included routers, in routing order."""
    try:
        from fastapi.routing import iter_route_contexts
        flat: list[tuple[Any, str, Any]] = [
            (rc.original_route, str(rc.path), rc.methods) for rc in iter_route_contexts(routes)]
    except ImportError:  # FastAPI before included routers were kept lazily
        flat = [(r, r.path, getattr(r, "methods", None)) for r in routes]
    out = []
    for route, path, methods in flat:
        if isinstance(route, Mount):
            out.append(RouteKey("MOUNT", path.rstrip("/"), frozenset(),
                                compile_path(path.rstrip("/") + "/{path:path}")[0]))
        elif isinstance(route, WebSocketRoute):
            out.append(RouteKey("WS", path, frozenset(), compile_path(path)[0]))
        else:
            out.append(RouteKey("HTTP", path, frozenset(methods or ()), compile_path(path)[0]))
    return out


def resolve(keys: list[RouteKey], scope: Scope) -> tuple[str, str] | None:
    """The policy key of the route the router will run for ``scope``, or None (404/405)."""
    path = scope.get("path", "")
    ws = scope["type"] == "websocket"
    method = "GET" if scope.get("method") == "HEAD" else scope.get("method", "")
    for k in keys:
        if not k.regex.match(path):
            continue
        if k.kind == "MOUNT":
            return ("MOUNT", k.path)
        if ws and k.kind == "WS":
            return ("WS", k.path)
        if not ws and k.kind == "HTTP" and method in k.methods:
            return (method, k.path)
    return None


# ---------------------------------------------------------------- the principal
def principal_of(request: Request) -> Principal | None:
    """Who this request acts as (set by the middleware), or None on a public route."""
    return request.scope.get("state", {}).get("principal")  # type: ignore[no-any-return]


def actor_of(request: Request) -> str:
    """The name a recorded action is attributed to: the logged-in user's username, an API
    token's name, or, for a patrol phone's unit token (or a grid worker's phone), its unit
    id (the unit is who handles the case). Never a name from the request: bodies carry no
    actor (a stray ``actor`` or ``by`` field is ignored, see docs/SECURITY.md)."""
    p = principal_of(request)
    if p is None:
        raise Forbidden("not authenticated", code="auth.required")
    return str(p.unit_id) if p.is_field else p.name


def require_action_allowed(p: Principal | None, action: str, assigned_unit: str | None
                           ) -> None:
    """May ``p`` post case ``action`` on an incident assigned to ``assigned_unit``?"""
    if p is None:
        raise Forbidden("not authenticated", code="auth.required")
    if p.is_unit:
        if action not in UNIT_ACTIONS:
            raise Forbidden(f"a unit may not {action}", code="auth.forbidden")
        if assigned_unit != p.unit_id:
            raise Forbidden("this incident is not assigned to your unit",
                            code="auth.not_your_incident")
        return
    needed = ACTION_ROLES.get(action, "operator")
    if not p.at_least(needed):
        raise Forbidden(f"{action} needs the {needed} role", code="auth.forbidden")


def require_own_incident(p: Principal | None, assigned_unit: str | None) -> None:
    """A unit reads only incidents assigned to it; staff read every incident."""
    if p is not None and p.is_unit and assigned_unit != p.unit_id:
        raise Forbidden("this incident is not assigned to your unit",
                        code="auth.not_your_incident")


def allowed(rule: Rule, p: Principal) -> bool:
    if rule.role is None:
        return True
    if rule.role == FIELD_ONLY:
        return p.is_field
    if p.is_unit:
        return rule.unit
    if p.is_grid_worker:
        return rule.grid_worker
    return p.at_least(rule.role)


# ---------------------------------------------------------------- the middleware
def _bearer(headers: Headers, scope: Scope) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if scope["type"] == "websocket":  # browsers' WebSocket cannot set headers
        q = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        if q:
            return str(q[0])
    return None


def _cookie(headers: Headers, name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name and v:
            return v
    return None


class AuthUnavailable(Exception):
    """The database could not be asked and the credential was not seen good recently."""


class AccessMiddleware:
    """Pure ASGI: authenticate, authorise by ``POLICY``, check CSRF; see the module doc."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._keys: list[RouteKey] | None = None
        self._keys_for: int | None = None
        self._last_good: dict[bytes, tuple[Principal, float]] = {}

    async def _lookup(self, secret: str, ask: Callable[[], Awaitable[Principal | None]]
                      ) -> Principal | None:
        key = auth.digest(secret)
        try:
            p = await asyncio.wait_for(ask(), AUTH_LOOKUP_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            cached = self._last_good.get(key)
            if cached is not None and time.monotonic() - cached[1] < STALE_CREDENTIALS_OK_S:
                return cached[0]
            log.warning("cannot check credentials: %s", e)
            raise AuthUnavailable from e
        if p is None:
            self._last_good.pop(key, None)
        else:
            if len(self._last_good) >= LAST_GOOD_MAX:
                self._last_good.clear()
            self._last_good[key] = (p, time.monotonic())
        return p

    def _route_keys(self, scope: Scope) -> list[RouteKey]:
        routes = scope["app"].router.routes
        if self._keys is None or self._keys_for != len(routes):
            self._keys, self._keys_for = route_keys(routes), len(routes)
        return self._keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        key = resolve(self._route_keys(scope), scope)
        if key is None:
            await self.app(scope, receive, send)  # the router answers 404/405
            return
        rule = POLICY.get(key)
        if rule is None:
            log.error("refused %s %s: route %s %s has no entry in hub/access.py POLICY",
                      scope.get("method", "WS"), scope["path"], *key)
            await self._refuse(scope, receive, send, 403, "auth.no_policy",
                               "this route has no access rule")
            return
        if rule.role is None:
            await self.app(scope, receive, send)
            return
        hub = scope["app"].state.hub
        headers = Headers(scope=scope)
        principal: Principal | None = None
        token = _bearer(headers, scope)
        sid = _cookie(headers, SESSION_COOKIE)
        try:
            if token is not None:
                principal = await self._lookup(
                    token, lambda: auth.token_principal(hub.pool, token))
                if principal is None:
                    await self._refuse(scope, receive, send, 401, "auth.invalid_token",
                                       "the API token is unknown or revoked")
                    return
            elif sid:
                principal = await self._lookup(sid, lambda: auth.session_principal(
                    hub.pool, sid, hub.settings.session_touch_s))
        except AuthUnavailable:
            await self._refuse(scope, receive, send, 503, "auth.unavailable",
                               "credentials cannot be checked now; try again")
            return
        if principal is None:
            if rule.page and scope["type"] == "http":
                target = scope["path"] + ("?" + scope["query_string"].decode("latin-1")
                                          if scope.get("query_string") else "")
                await RedirectResponse("/login?next=" + quote(target, safe=""),
                                       status_code=303)(scope, receive, send)
                return
            await self._refuse(scope, receive, send, 401, "auth.required",
                               "log in or send an API token")
            return
        if not allowed(rule, principal):
            await self._refuse(scope, receive, send, 403, "auth.forbidden",
                               f"this needs the {rule.role} role")
            return
        if (principal.kind == "session" and scope["type"] == "http"
                and scope["method"] in UNSAFE_METHODS):
            receive, ok = await self._check_csrf(scope, receive, headers,
                                                 principal.csrf_token or "")
            if not ok:
                await self._refuse(scope, receive, send, 403, "auth.csrf",
                                   "missing or wrong CSRF token; reload the page")
                return
        # A fresh state dict: never one a server might share between requests.
        scope["state"] = {**scope.get("state", {}), "principal": principal}
        await self.app(scope, receive, send)

    async def _check_csrf(self, scope: Scope, receive: Receive, headers: Headers,
                          expected: str) -> tuple[Receive, bool]:
        given = headers.get(CSRF_HEADER)
        if given is None and headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"):
            body, receive = await _peek_body(receive)
            values = parse_qs(body.decode("utf-8", "replace")).get(CSRF_FIELD)
            given = values[0] if values else None
        ok = bool(expected) and given is not None and hmac.compare_digest(
            given.encode(), expected.encode())
        return receive, ok

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int,
                      code: str, message: str) -> None:
        if scope["type"] == "websocket":
            # Closing before accepting makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008, "reason": code})
            return
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        await JSONResponse(error_body(code, message), status_code=status,
                           headers=headers)(scope, receive, send)


async def _peek_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read a (small) request body and return it with a ``receive`` that replays it."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_PEEK:
            break
        chunks.append(chunk)
        more = msg.get("more_body", False)
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay
