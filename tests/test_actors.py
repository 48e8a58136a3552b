"""Every recorded actor is the authenticated principal, whatever the request body says.

The routes come from the app itself (``route_keys(app.routes)``, the table hub/access.py
enforces): every state-changing route must have a recorder here (call it as some principal
with a body that names someone else, read back who was recorded), or be listed as
recording nobody (with why) or as converted by another part of issue 12. A new route fails
``test_every_state_changing_route_is_accounted_for`` until it is one of the three.

Against a real hub process on its own scratch database (the demo town), real PostgreSQL and
the shared test Mosquitto.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from core.db import connect
from core.settings import Settings
from hub.access import POLICY, UNSAFE_METHODS, route_keys
from hub.app import create_app
from tests.conftest import HubProcess, cli_user, town_database, town_doc, wait_for

TOWN = town_doc()
# Every name field a body has ever carried for "who did this": all of them are ignored.
FORGED: dict[str, str] = {k: "forged-name" for k in (
    "actor", "by", "reporter", "drawn_by", "recorded_by", "requested_by", "approved_by")}

# State-changing routes that record no actor, and why.
NOT_RECORDING: dict[tuple[str, str], str] = {
    ("POST", "/login"): "public: no principal yet; the audit trail names the username tried "
                        "(tests/test_access.py test_login_throttle_...)",
    ("POST", "/api/rules/backtest"): "runs a rule over stored readings; changes nothing",
}
# Converted by other parts of issue 12 (their routes and their actors); each part moves
# its routes from here to RECORDERS when it lands.
OWNED_ELSEWHERE: dict[tuple[str, str], str] = {
    ("POST", "/api/inspections/draws"): "inspections",
    ("POST", "/api/inspections/draws/{draw_id}/verify"): "inspections",
    ("POST", "/api/inspections/draws/{draw_id}/results"): "inspections",
    ("POST", "/api/inspections/draws/{draw_id}/publish"): "inspections",
    ("POST", "/open311/v2/requests.json"): "open311 (a citizen's report, via an api_key)",
}


@dataclass
class Caller:
    """A principal and the headers that make a request act as it."""

    name: str
    headers: dict[str, str]
    form_csrf: str = ""  # sessions: the token a form post carries


@dataclass
class Ctx:
    hub: HubProcess
    db: asyncpg.Connection
    op: Caller
    op2: Caller
    sup: Caller
    sup2: Caller
    admin: Caller
    session: Caller  # a person logged in through the form (operator)
    seen: dict[str, int] = field(default_factory=dict)

    def post(self, who: Caller, path: str, body: dict[str, Any] | None = None,
             method: str = "POST") -> httpx.Response:
        return httpx.request(method, self.hub.url + path, headers=who.headers,
                             json={**FORGED, **(body or {})}, timeout=15)


def _token(hub: HubProcess, role: str, prefix: str) -> Caller:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return Caller(name, {"Authorization": "Bearer " + hub.make_token(role, name=name)})


def _session(hub: HubProcess, role: str) -> Caller:
    """Log a new user in through the login form; the caller carries cookie and CSRF."""
    name, password = f"person-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    cli_user(hub.db_url, name, role, password)
    form = httpx.get(hub.url + "/login")
    login_cookie = form.headers["set-cookie"].split(";")[0]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf
    r = httpx.post(hub.url + "/login", headers={"Cookie": login_cookie},
                   data={"username": name, "password": password,
                         "csrf_token": csrf.group(1)})
    assert r.status_code == 303, r.text
    cookie = next(c for c in r.headers.get_list("set-cookie")
                  if c.startswith("gridhub_session=")).split(";")[0]
    page = httpx.get(hub.url + "/reports", headers={"Cookie": cookie})
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert token
    return Caller(name, {"Cookie": cookie, "X-CSRF-Token": token.group(1)}, token.group(1))


@pytest_asyncio.fixture(scope="module")
async def actors_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "actors") as url:
        yield url


@pytest.fixture(scope="module")
def actors_hub(actors_db: str, mqtt_url: str, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[HubProcess]:
    # MQTT account changes render broker files: into a scratch directory, never the shared
    # test broker's (no pid file there, so nothing is reloaded).
    files = tmp_path_factory.mktemp("broker")
    hub = HubProcess(actors_db, mqtt_url, extra_env={
        "HUB_MQTT_PASSWORD_FILE": str(files / "passwords"),
        "HUB_MQTT_ACL_FILE": str(files / "acl"),
        "HUB_MQTT_BROKER_PID_FILE": str(files / "none.pid")}).start()
    yield hub
    hub.stop()


@pytest_asyncio.fixture(scope="module")
async def ctx(actors_hub: HubProcess, actors_db: str) -> AsyncIterator[Ctx]:
    conn = await connect(actors_db)
    hub = actors_hub
    yield Ctx(hub, conn, op=_token(hub, "operator", "op"), op2=_token(hub, "operator", "op2"),
              sup=_token(hub, "supervisor", "sup"), sup2=_token(hub, "supervisor", "sup2"),
              admin=_token(hub, "admin", "adm"), session=_session(hub, "supervisor"))
    await conn.close()


# ---------------------------------------------------------------- helpers
_PLACE = iter(range(10_000))


def _somewhere() -> dict[str, float]:
    d = TOWN["devices"][next(_PLACE) % len(TOWN["devices"])]
    return {"lon": d["lon"], "lat": d["lat"]}


def _incident(c: Ctx, who: Caller, **kw: Any) -> int:
    body = {"category": "city_order", "qualification": "city_management", "priority": 3,
            "title": "actor test", **_somewhere(), **kw}
    r = c.post(who, "/api/incidents", body)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def _log_after(c: Ctx, iid: int, seq: int) -> list[asyncpg.Record]:
    return list(await c.db.fetch(
        "SELECT seq, action, actor FROM case_log WHERE incident_id = $1 AND seq > $2 "
        "ORDER BY seq", iid, seq))


async def _last_seq(c: Ctx, iid: int) -> int:
    return int(await c.db.fetchval(
        "SELECT coalesce(max(seq), 0) FROM case_log WHERE incident_id = $1", iid))


async def _alarm(c: Ctx) -> int:
    rule = await c.db.fetchval("SELECT id FROM rules ORDER BY id LIMIT 1")
    return int(await c.db.fetchval(
        """INSERT INTO alarms (rule_id, device_id, severity, raised_at, last_seen)
           VALUES ($1, $2, 'major', now(), now()) RETURNING id""",
        rule, f"actor-dev-{uuid.uuid4().hex[:8]}"))


async def _audit_actor(c: Ctx, kind: str, target: str) -> list[str]:
    return [r["actor"] for r in await c.db.fetch(
        "SELECT actor FROM security_events WHERE kind = $1 AND target = $2", kind, target)]


async def _dispatched(c: Ctx) -> tuple[int, str]:
    """A case the engine has dispatched: (incident id, unit id)."""
    iid = _incident(c, c.admin, source="operator", priority=4)
    row = await wait_for(lambda: c.db.fetchrow(
        "SELECT unit_id FROM assignments WHERE incident_id = $1 AND status = 'active'", iid),
        timeout=30)
    return iid, str(row["unit_id"])


# ---------------------------------------------------------------- recorders
# Each performs the route as some principal, with FORGED names in the body, and returns
# (the principal's name, every actor the hub recorded for it).
Recorder = Callable[[Ctx], Awaitable[tuple[str, list[str]]]]
RECORDERS: dict[tuple[str, str], Recorder] = {}


def records(method: str, path: str) -> Callable[[Recorder], Recorder]:
    def add(fn: Recorder) -> Recorder:
        RECORDERS[(method, path)] = fn
        return fn
    return add


@records("POST", "/api/incidents")
async def _report(c: Ctx) -> tuple[str, list[str]]:
    iid = _incident(c, c.op, source="operator")
    reporter = await c.db.fetchval("SELECT reporter FROM incidents WHERE id = $1", iid)
    log = await c.db.fetch("SELECT actor FROM case_log WHERE incident_id = $1 AND action IN "
                           "('report', 'register')", iid)
    return c.op.name, [reporter, *(r["actor"] for r in log)]


@records("POST", "/api/incidents/{incident_id}/actions")
async def _action(c: Ctx) -> tuple[str, list[str]]:
    iid = _incident(c, c.admin, source="hotline")  # waits in "reported" for an operator
    before = await _last_seq(c, iid)
    r = c.post(c.session, f"/api/incidents/{iid}/actions", {"action": "register"})
    assert r.status_code == 200, r.text
    log = await _log_after(c, iid, before)
    return c.session.name, [e["actor"] for e in log if e["action"] == "register"]


@records("POST", "/api/incidents/{incident_id}/assign")
async def _override(c: Ctx) -> tuple[str, list[str]]:
    iid, picked = await _dispatched(c)
    other = await c.db.fetchval(
        "SELECT id FROM units WHERE status = 'available' AND id <> $1 AND "
        "'city_management' = ANY(qualifications) ORDER BY id LIMIT 1", picked)
    assert other is not None, "no second unit to override to"
    before = await _last_seq(c, iid)
    r = c.post(c.op, f"/api/incidents/{iid}/assign",
               {"unit_id": other, "reason_code": "local_knowledge", "note": "actor test"})
    assert r.status_code == 200, r.text
    log = await _log_after(c, iid, before)
    assert log, "an override is logged"
    return c.op.name, [e["actor"] for e in log]


@records("POST", "/api/alarms/{alarm_id}/ack")
async def _ack(c: Ctx) -> tuple[str, list[str]]:
    aid = await _alarm(c)
    r = c.post(c.op, f"/api/alarms/{aid}/ack")
    assert r.status_code == 200, r.text
    return c.op.name, [await c.db.fetchval("SELECT acked_by FROM alarms WHERE id = $1", aid)]


@records("POST", "/api/alarms/{alarm_id}/clear")
async def _clear(c: Ctx) -> tuple[str, list[str]]:
    aid = await _alarm(c)
    r = c.post(c.session, f"/api/alarms/{aid}/clear", {"reason": "sensor cleaned"})
    assert r.status_code == 200, r.text
    return c.session.name, [await c.db.fetchval("SELECT cleared_by FROM alarms WHERE id = $1",
                                                aid)]


@records("POST", "/api/supervisor/alerts/{alert_id}/ack")
async def _alert_ack(c: Ctx) -> tuple[str, list[str]]:
    alert = await c.db.fetchval("INSERT INTO supervisor_alerts (kind, message) VALUES "
                                "('sla_breach', 'actor test') RETURNING id")
    r = c.post(c.sup, f"/api/supervisor/alerts/{alert}/ack")
    assert r.status_code == 200, r.text
    return c.sup.name, [await c.db.fetchval(
        "SELECT acked_by FROM supervisor_alerts WHERE id = $1", alert)]


RULE_BODY = {"name": "actor test", "kind": "threshold", "metric": "gas_lel_pct",
             "params": {"raise_above": 50.0, "clear_below": 25.0}, "severity": "minor",
             "enabled": False}


@records("PUT", "/api/rules/{rule_id}")
async def _rule_put(c: Ctx) -> tuple[str, list[str]]:
    rid = f"actor_{uuid.uuid4().hex[:6]}"
    r = c.post(c.sup, f"/api/rules/{rid}", RULE_BODY, method="PUT")
    assert r.status_code == 200, r.text
    by = await c.db.fetchval("SELECT updated_by FROM rules WHERE id = $1", rid)
    return c.sup.name, [by, *await _audit_actor(c, "rule.changed", rid)]


@records("DELETE", "/api/rules/{rule_id}")
async def _rule_delete(c: Ctx) -> tuple[str, list[str]]:
    rid = f"actor_{uuid.uuid4().hex[:6]}"
    assert c.post(c.sup2, f"/api/rules/{rid}", RULE_BODY, method="PUT").status_code == 200
    r = c.post(c.sup, f"/api/rules/{rid}", method="DELETE")
    assert r.status_code == 200, r.text
    by = await c.db.fetchval("SELECT updated_by FROM rules WHERE id = $1", rid)
    return c.sup.name, [by, *await _audit_actor(c, "rule.disabled", rid)]


def _device() -> str:
    return str(TOWN["devices"][next(_PLACE) % len(TOWN["devices"])]["id"])


@records("POST", "/api/mqtt/accounts")
async def _mqtt_provision(c: Ctx) -> tuple[str, list[str]]:
    dev = _device()
    await c.db.execute("UPDATE mqtt_accounts SET revoked_at = now() WHERE principal = $1", dev)
    r = c.post(c.admin, "/api/mqtt/accounts", {"principal": dev, "kind": "device"})
    assert r.status_code == 201, r.text
    return c.admin.name, await _audit_actor(c, "mqtt_account.provisioned", dev)


@records("POST", "/api/mqtt/accounts/{principal}/rotate")
async def _mqtt_rotate(c: Ctx) -> tuple[str, list[str]]:
    dev = _device()
    r = c.post(c.admin, f"/api/mqtt/accounts/{dev}/rotate")
    assert r.status_code == 200, r.text
    return c.admin.name, await _audit_actor(c, "mqtt_account.rotated", dev)


@records("DELETE", "/api/mqtt/accounts/{principal}")
async def _mqtt_revoke(c: Ctx) -> tuple[str, list[str]]:
    dev = _device()
    r = c.post(c.admin, f"/api/mqtt/accounts/{dev}", method="DELETE")
    assert r.status_code == 200, r.text
    return c.admin.name, await _audit_actor(c, "mqtt_account.revoked", dev)


@records("POST", "/logout")
async def _logout(c: Ctx) -> tuple[str, list[str]]:
    who = _session(c.hub, "viewer")
    r = httpx.post(c.hub.url + "/logout", headers={"Cookie": who.headers["Cookie"]},
                   data={"csrf_token": who.form_csrf, **FORGED})
    assert r.status_code == 303, r.text
    return who.name, await _audit_actor(c, "session.ended", who.name)


# ---------------------------------------------------------------- the tests
def _state_changing() -> set[tuple[str, str]]:
    app = create_app(Settings(database_url="postgresql://unused/none"))
    return {k for rk in route_keys(app.routes) for k in rk.keys() if k[0] in UNSAFE_METHODS}


def test_every_state_changing_route_is_accounted_for() -> None:
    routes = _state_changing()
    assert routes, "the app has state-changing routes"
    assert routes <= set(POLICY), "every route is in the policy table (test_access checks)"
    listed = set(RECORDERS) | set(NOT_RECORDING) | set(OWNED_ELSEWHERE)
    assert routes - listed == set(), "state-changing routes with no actor check here"
    assert listed - routes == set(), "checks for routes the app no longer has"
    assert not set(RECORDERS) & (set(NOT_RECORDING) | set(OWNED_ELSEWHERE))


@pytest.mark.parametrize("route", sorted(RECORDERS), ids=lambda k: f"{k[0]} {k[1]}")
async def test_recorded_actor_is_the_principal(ctx: Ctx, route: tuple[str, str]) -> None:
    principal, recorded = await RECORDERS[route](ctx)
    assert recorded, f"{route}: nothing recorded"
    assert set(recorded) == {principal}, f"{route}: recorded {recorded}, caller {principal}"


async def test_verification_by_the_handlers_own_login_is_refused(ctx: Ctx) -> None:
    """Separation of duties by identity: whoever accepted and handled the case cannot
    verify it, whatever name the body gives; someone else can."""
    iid, _unit = await _dispatched(ctx)
    for action, body in (("accept", {}), ("start_handling", {}),
                         ("give_feedback", {"reason": "done"})):
        r = ctx.post(ctx.session, f"/api/incidents/{iid}/actions", {"action": action, **body})
        assert r.status_code == 200, (action, r.text)
    r = ctx.post(ctx.session, f"/api/incidents/{iid}/actions",
                 {"action": "verify_ok", "actor": ctx.op2.name})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "case.verifier_is_handler"
    r = ctx.post(ctx.op2, f"/api/incidents/{iid}/actions", {"action": "verify_ok"})
    assert r.status_code == 200 and r.json()["state"] == "verified", r.text
    log = await _log_after(ctx, iid, 0)
    by = {e["action"]: e["actor"] for e in log}
    assert by["accept"] == by["give_feedback"] == ctx.session.name
    assert by["verify_ok"] == ctx.op2.name


async def test_extension_is_approved_by_another_supervisor(ctx: Ctx) -> None:
    iid, _unit = await _dispatched(ctx)
    assert ctx.post(ctx.op, f"/api/incidents/{iid}/actions",
                    {"action": "accept"}).status_code == 200
    r = ctx.post(ctx.sup, f"/api/incidents/{iid}/actions",
                 {"action": "request_extension", "reason": "waiting for a permit"})
    assert r.status_code == 200, r.text
    r = ctx.post(ctx.sup, f"/api/incidents/{iid}/actions",
                 {"action": "approve_extension", "actor": ctx.sup2.name})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "case.approver_is_requester"
    r = ctx.post(ctx.sup2, f"/api/incidents/{iid}/actions", {"action": "approve_extension"})
    assert r.status_code == 200 and r.json()["extension_count"] == 1, r.text


async def test_audit_trail_is_for_supervisors_and_filterable(ctx: Ctx) -> None:
    # something to find: a token created (CLI) and a login (the session fixture)
    made = _token(ctx.hub, "viewer", "audited")
    r = httpx.get(ctx.hub.url + "/api/audit", headers=ctx.sup.headers,
                  params={"kind": "token.created", "target": made.name})
    assert r.status_code == 200, r.text
    events = r.json()["events"]
    assert len(events) == 1 and events[0]["actor"].startswith("cli:")
    assert events[0]["detail"]["role"] == "viewer"
    r = httpx.get(ctx.hub.url + "/api/audit", headers=ctx.admin.headers,
                  params={"kind": "login.", "actor": ctx.session.name})
    assert {e["kind"] for e in r.json()["events"]} == {"login.succeeded"}
    # the session user was made with create-user: who made it, with which role
    r = httpx.get(ctx.hub.url + "/api/audit", headers=ctx.sup.headers,
                  params={"target": ctx.session.name, "kind": "user.created"})
    (made_user,) = r.json()["events"]
    assert made_user["actor"].startswith("cli:") and made_user["detail"]["role"] == "supervisor"
    assert "login.throttled" in r.json()["kinds"]
    r = httpx.get(ctx.hub.url + "/api/audit", headers=ctx.op.headers)  # not for operators
    assert r.status_code == 403 and r.json()["error"]["code"] == "auth.forbidden"
    r = httpx.get(ctx.hub.url + "/api/audit", headers=ctx.sup.headers,
                  params={"kind": "Not A Kind"})
    assert r.status_code == 422


async def test_audit_page_lists_and_filters(ctx: Ctx) -> None:
    made = _token(ctx.hub, "viewer", "paged")
    r = httpx.get(ctx.hub.url + "/audit", headers=ctx.sup.headers,
                  params={"kind": "token.created", "target": made.name, "lang": "en"})
    assert r.status_code == 200, r.text
    rows = re.findall(r'<tr data-kind="([a-z_.]+)">', r.text)
    assert rows == ["token.created"] and made.name in r.text
    assert 'href="/audit"' in r.text  # in the supervisor's navigation
    r = httpx.get(ctx.hub.url + "/audit", headers=ctx.sup.headers,
                  params={"kind": "token.created", "target": "nobody-at-all"})
    assert 'id="audit-empty"' in r.text
    r = httpx.get(ctx.hub.url + "/audit", headers=ctx.op.headers, follow_redirects=False)
    assert r.status_code == 403
    r = httpx.get(ctx.hub.url + "/reports", headers=ctx.op.headers)
    assert r.status_code == 200 and 'href="/audit"' not in r.text


def test_no_route_model_takes_an_actor() -> None:
    """No request body model of the app has a field naming who acts (they would be
    ignored anyway; a field would invite a client to think it counts)."""
    app = create_app(Settings(database_url="postgresql://unused/none"))
    schema = app.openapi()
    names = set(FORGED)
    offenders = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if (method.upper(), path) in OWNED_ELSEWHERE:
                continue
            ref = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                   .get("schema", {}).get("$ref", ""))
            if ref:
                model = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
                offenders += [f"{method.upper()} {path}: {f}"
                              for f in model.get("properties", {}) if f in names]
    assert offenders == []

