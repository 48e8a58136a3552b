"""Every recorded actor is the authenticated principal, whatever the request body says.

The routes come from the app itself (``route_keys(app.routes)``, the table hub/access.py
enforces): every state-changing route must have a recorder here (call it as some principal
with a body that names someone else, read back who was recorded), or be listed as
recording nobody (with why). A new route fails
``test_every_state_changing_route_is_accounted_for`` until it is one of the two.

Against a real hub process on its own scratch database (the demo town), real PostgreSQL and
the shared test Mosquitto.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
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
    ("DELETE", "/api/rules/backtest/{job_id}"): "stops a running backtest, which changes "
                                                "nothing either",
    ("POST", "/api/inspections/draws/{draw_id}/verify"): "re-checks a stored draw; changes "
                                                         "nothing",
    ("POST", "/api/field/enrol"): "public: a phone trades a one-time code; the token it gets "
                                  "is recorded as made by the code's creator (created_by), "
                                  "and the audit trail names the phone (field.enrolled)",
    ("POST", "/api/admin/town/preview"): "validates a GeoJSON upload and compares it with the "
                                         "stored grids; changes nothing",
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


@records("POST", "/api/units/{unit_id}/redirect")
async def _redirect(c: Ctx) -> tuple[str, list[str]]:
    iid, unit = await _dispatched(c)
    before = await _last_seq(c, iid)
    r = c.post(c.op, f"/api/units/{unit}/redirect",
               {"reason_code": "local_knowledge", "note": "actor test"})
    assert r.status_code == 200, r.text
    # The redirect is the unit's withdrawal from the case; planning the case again after
    # it is the system's (its own dispatch entry).
    log = [e for e in await _log_after(c, iid, before) if e["action"] == "withdraw"]
    assert log, "a redirect is logged"
    return c.op.name, [e["actor"] for e in log]


SLA_LIMITS = {"register_s": 420.0, "dispatch_s": 900.0, "accept_s": 1500.0,
              "arrive_s": 2700.0, "resolve_s": 28800.0, "resolve_working": False}


def _category() -> str:
    """A category no case has (lower-case letters and _): its limits change nobody's clock."""
    return "actor_" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8))


async def _sla_log(c: Ctx, target: str, after_id: int = 0) -> list[str]:
    return [r["actor"] for r in await c.db.fetch(
        "SELECT actor FROM sla_config_log WHERE target = $1 AND id > $2 ORDER BY id",
        target, after_id)]


@records("PUT", "/api/sla/limits/{category}/{priority}")
async def _sla_put(c: Ctx) -> tuple[str, list[str]]:
    cat = _category()
    r = c.post(c.sup, f"/api/sla/limits/{cat}/2", SLA_LIMITS, method="PUT")
    assert r.status_code == 200, r.text
    by = await c.db.fetchval(
        "SELECT updated_by FROM sla_limits WHERE category = $1 AND priority = 2", cat)
    return c.sup.name, [by, *await _sla_log(c, f"limits:{cat}:2")]


@records("DELETE", "/api/sla/limits/{category}/{priority}")
async def _sla_delete(c: Ctx) -> tuple[str, list[str]]:
    cat = _category()
    r = c.post(c.sup2, f"/api/sla/limits/{cat}/2", SLA_LIMITS, method="PUT")
    assert r.status_code == 200, r.text
    edited = int(await c.db.fetchval("SELECT max(id) FROM sla_config_log WHERE target = $1",
                                     f"limits:{cat}:2"))
    r = c.post(c.sup, f"/api/sla/limits/{cat}/2", method="DELETE")
    assert r.status_code == 200, r.text
    return c.sup.name, await _sla_log(c, f"limits:{cat}:2", edited)


@records("PUT", "/api/sla/warn-share")
async def _sla_warn_share(c: Ctx) -> tuple[str, list[str]]:
    share = httpx.get(c.hub.url + "/api/sla", headers=c.sup.headers).json()["warn_share"]
    before = int(await c.db.fetchval("SELECT coalesce(max(id), 0) FROM sla_config_log"))
    r = c.post(c.sup, "/api/sla/warn-share", {"warn_share": share}, method="PUT")  # as it was
    assert r.status_code == 200, r.text
    by = await c.db.fetchval("SELECT updated_by FROM sla_options WHERE key = 'warn_share'")
    return c.sup.name, [by, *await _sla_log(c, "warn_share", before)]


def _free_day() -> str:
    """A date no calendar has a holiday on (the file stops at 2027): a new one each call."""
    return (date(2099, 1, 1) + timedelta(days=next(_PLACE))).isoformat()


@records("POST", "/api/sla/calendar/days")
async def _sla_day_add(c: Ctx) -> tuple[str, list[str]]:
    day = _free_day()
    r = c.post(c.sup, "/api/sla/calendar/days", {"date": day, "kind": "holiday"})
    assert r.status_code == 201, r.text
    by = await c.db.fetchval("SELECT updated_by FROM sla_calendar_days WHERE day = $1",
                             date.fromisoformat(day))
    return c.sup.name, [by, *await _sla_log(c, f"calendar:{day}")]


@records("DELETE", "/api/sla/calendar/days/{day}")
async def _sla_day_remove(c: Ctx) -> tuple[str, list[str]]:
    day = _free_day()
    r = c.post(c.sup2, "/api/sla/calendar/days", {"date": day, "kind": "holiday"})
    assert r.status_code == 201, r.text
    added = int(await c.db.fetchval("SELECT max(id) FROM sla_config_log WHERE target = $1",
                                    f"calendar:{day}"))
    r = c.post(c.sup, f"/api/sla/calendar/days/{day}", method="DELETE")
    assert r.status_code == 200, r.text
    return c.sup.name, await _sla_log(c, f"calendar:{day}", added)


def _app_name() -> str:
    return f"actor-app-{uuid.uuid4().hex[:6]}"


def _issue_key(c: Ctx, app: str) -> dict[str, Any]:
    r = c.post(c.admin, "/api/open311/keys", {"app_name": app})
    assert r.status_code == 201, r.text
    return dict(r.json())


@records("POST", "/api/open311/keys")
async def _o311_issue(c: Ctx) -> tuple[str, list[str]]:
    key = _issue_key(c, _app_name())
    return c.admin.name, [await c.db.fetchval(
        "SELECT created_by FROM open311_keys WHERE id = $1", key["key_id"])]


@records("DELETE", "/api/open311/keys/{key_id}")
async def _o311_revoke(c: Ctx) -> tuple[str, list[str]]:
    key = _issue_key(c, _app_name())
    r = c.post(c.admin, f"/api/open311/keys/{key['key_id']}", method="DELETE")
    assert r.status_code == 200, r.text
    return c.admin.name, [await c.db.fetchval(
        "SELECT revoked_by FROM open311_keys WHERE id = $1", key["key_id"])]


CITIZEN = {"first_name": "王", "last_name": "小明", "email": "wxm@example.cn"}


@records("POST", "/open311/v2/requests.{fmt}")
async def _o311_report(c: Ctx) -> tuple[str, list[str]]:
    # No login here: the principal is the client application the api_key authenticates,
    # recorded as "open311:<app>". The citizen it reports for is not authenticated: the
    # name and e-mail are contact data (the contacts table), never the case's actor.
    app = _app_name()
    key = _issue_key(c, app)["api_key"]
    where = _somewhere()
    r = httpx.post(c.hub.url + "/open311/v2/requests.json", timeout=15, data={
        "api_key": key, "service_code": "noise", "lat": str(where["lat"]),
        "long": str(where["lon"]), "description": "actor test", **CITIZEN, **FORGED})
    assert r.status_code == 201, r.text
    iid = int(r.json()[0]["service_request_id"])
    contact = await c.db.fetchrow(
        "SELECT k.first_name, k.last_name, k.email FROM open311_requests o "
        "JOIN contacts k ON k.id = o.contact_id WHERE o.incident_id = $1", iid)
    assert contact is not None and dict(contact) == CITIZEN
    reporter = await c.db.fetchval("SELECT reporter FROM incidents WHERE id = $1", iid)
    log = await _log_after(c, iid, 0)
    assert log, "a report is logged"
    return f"open311:{app}", [reporter, *(e["actor"] for e in log)]


def _plain(c: Ctx, who: Caller, path: str, body: dict[str, Any]) -> httpx.Response:
    """A request without FORGED: for the inspection bodies, which refuse any name."""
    return httpx.post(c.hub.url + path, headers=who.headers, json=body, timeout=15)


async def _forged(c: Ctx, table: str, column: str) -> list[str]:
    """The actors of rows recorded under the forged name (there must be none)."""
    return [r[column] for r in await c.db.fetch(
        f"SELECT {column} FROM {table} WHERE {column} = $1", FORGED["by"])]


COMMITMENT = {"matter_id": "M02", "targets": 2}


def _commitment(c: Ctx, who: Caller) -> dict[str, Any]:
    r = _plain(c, who, "/api/inspections/commitments", COMMITMENT)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _draw(c: Ctx, who: Caller) -> dict[str, Any]:
    r = _plain(c, who, "/api/inspections/draws",
               {"commitment_id": _commitment(c, c.sup2)["id"]})
    assert r.status_code == 201, r.text
    return dict(r.json())


@records("POST", "/api/inspections/commitments")
async def _inspection_commit(c: Ctx) -> tuple[str, list[str]]:
    r = c.post(c.sup, "/api/inspections/commitments", COMMITMENT)
    assert r.status_code == 422, r.text  # a body naming anyone is refused, not recorded
    made = _commitment(c, c.sup)
    by = await c.db.fetchval("SELECT committed_by FROM inspection_commitments WHERE id = $1",
                             made["id"])
    return c.sup.name, [by, *await _forged(c, "inspection_commitments", "committed_by")]


@records("POST", "/api/inspections/draws")
async def _inspection_draw(c: Ctx) -> tuple[str, list[str]]:
    cid = _commitment(c, c.sup2)["id"]
    r = c.post(c.op, "/api/inspections/draws", {"commitment_id": cid})
    assert r.status_code == 422, r.text  # a body naming anyone is refused, not recorded
    r = _plain(c, c.op, "/api/inspections/draws", {"commitment_id": cid})
    assert r.status_code == 201, r.text
    by = await c.db.fetchval("SELECT drawn_by FROM inspection_draws WHERE id = $1",
                             r.json()["id"])
    return c.op.name, [by, *await _forged(c, "inspection_draws", "drawn_by")]


@records("POST", "/api/inspections/draws/{draw_id}/results")
async def _inspection_result(c: Ctx) -> tuple[str, list[str]]:
    draw = _draw(c, c.op2)
    target = draw["picks"][0]["entity_id"]
    r = c.post(c.op, f"/api/inspections/draws/{draw['id']}/results",
               {"entity_id": target, "outcome": "no_problem"})
    assert r.status_code == 201, r.text
    return c.op.name, [await c.db.fetchval(
        "SELECT recorded_by FROM inspection_results WHERE draw_id = $1 AND entity_id = $2",
        draw["id"], target)]


@records("POST", "/api/inspections/draws/{draw_id}/publish")
async def _inspection_publish(c: Ctx) -> tuple[str, list[str]]:
    draw = _draw(c, c.op2)
    r = _plain(c, c.op2, f"/api/inspections/draws/{draw['id']}/results",
               {"entity_id": draw["picks"][0]["entity_id"], "outcome": "no_problem"})
    assert r.status_code == 201, r.text
    r = c.post(c.sup, f"/api/inspections/draws/{draw['id']}/publish")
    assert r.status_code == 200, r.text
    by = await c.db.fetchval("SELECT published_by FROM inspection_draws WHERE id = $1",
                             draw["id"])
    results = await c.db.fetch("SELECT published_by FROM inspection_results WHERE draw_id = $1",
                               draw["id"])
    assert results, "the recorded result is published with the draw"
    return c.sup.name, [by, *(e["published_by"] for e in results)]


# ---------------------------------------------------------------- the administration pages
async def _audit_detail(c: Ctx, kind: str, target: str, key: str) -> list[str]:
    """Actors of ``kind`` events on ``target`` whose detail has ``key``."""
    return [r["actor"] for r in await c.db.fetch(
        "SELECT actor FROM security_events WHERE kind = $1 AND target = $2 AND detail ? $3",
        kind, target, key)]


def _register_device(c: Ctx, who: Caller) -> str:
    """A new device of its own (no metrics: no rule watches it)."""
    dev = f"actor-dv-{uuid.uuid4().hex[:8]}"
    where = TOWN["devices"][next(_PLACE) % len(TOWN["devices"])]
    r = c.post(who, "/api/admin/devices", {
        "id": dev, "kind": "environment", "model": "air_station", "name": "actor test",
        "grid_id": where["grid"], "lon": where["lon"], "lat": where["lat"], "metrics": []})
    assert r.status_code == 201, r.text
    return dev


@records("POST", "/api/admin/devices")
async def _device_register(c: Ctx) -> tuple[str, list[str]]:
    dev = _register_device(c, c.admin)
    return c.admin.name, await _audit_actor(c, "device.registered", dev)


@records("PUT", "/api/admin/devices/{device_id}")
async def _device_edit(c: Ctx) -> tuple[str, list[str]]:
    dev = _register_device(c, c.admin)
    where = _somewhere()
    grid = TOWN["devices"][0]["grid"]
    r = c.post(c.admin, f"/api/admin/devices/{dev}", {
        "name": "actor test, moved", "model": "air_station", "grid_id": grid, **where},
        method="PUT")
    assert r.status_code == 200, r.text
    return c.admin.name, await _audit_actor(c, "device.changed", dev)


@records("DELETE", "/api/admin/devices/{device_id}")
async def _device_decommission(c: Ctx) -> tuple[str, list[str]]:
    dev = _register_device(c, c.admin)
    r = c.post(c.admin, f"/api/admin/devices/{dev}", method="DELETE")
    assert r.status_code == 200, r.text
    return c.admin.name, await _audit_actor(c, "device.decommissioned", dev)


@records("POST", "/api/admin/devices/{device_id}/credentials")
async def _device_credentials(c: Ctx) -> tuple[str, list[str]]:
    dev = _register_device(c, c.admin)
    for rotated in (False, True):  # provisioned first, rotated the second time
        r = c.post(c.admin, f"/api/admin/devices/{dev}/credentials")
        assert r.status_code == 200 and r.json()["rotated"] is rotated, r.text
    return c.admin.name, [*await _audit_actor(c, "mqtt_account.provisioned", dev),
                          *await _audit_actor(c, "mqtt_account.rotated", dev)]


@records("PUT", "/api/devices/{device_id}/senml-map")
async def _senml_map(c: Ctx) -> tuple[str, list[str]]:
    dev = _register_device(c, c.admin)
    r = c.post(c.admin, f"/api/devices/{dev}/senml-map", {"map": {"Cel": "water_temp_c"}},
               method="PUT")
    assert r.status_code == 200, r.text
    return c.admin.name, await _audit_actor(c, "device.senml_map_changed", dev)


@records("POST", "/api/admin/town/import")
async def _town_import(c: Ctx) -> tuple[str, list[str]]:
    # The very town the hub was loaded with: nothing moves under the other recorders.
    r = c.post(c.admin, "/api/admin/town/import",
               {"grids": TOWN["grids"], "roads": TOWN["roads"], "name": TOWN["name"]})
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["grids"]["added"] == plan["grids"]["removed"] == [], plan["grids"]
    assert plan["roads"]["added"] == plan["roads"]["removed"] == [], plan["roads"]
    return c.admin.name, await _audit_actor(c, "town.imported", "town")


def _new_unit(c: Ctx, who: Caller) -> str:
    """A unit of its own, off duty and with no qualification: the dispatcher never
    picks it for another recorder's case."""
    unit = f"ACT-{uuid.uuid4().hex[:6]}"
    r = c.post(who, "/api/admin/units", {
        "id": unit, "name": "actor test", "type": "squad", "qualifications": [],
        "home_grid": TOWN["units"][0]["home_grid"], "on_duty": False})
    assert r.status_code == 201, r.text
    return unit


@records("POST", "/api/admin/units")
async def _unit_create(c: Ctx) -> tuple[str, list[str]]:
    unit = _new_unit(c, c.sup)
    return c.sup.name, await _audit_actor(c, "unit.created", unit)


@records("PUT", "/api/admin/units/{unit_id}")
async def _unit_edit(c: Ctx) -> tuple[str, list[str]]:
    unit = _new_unit(c, c.sup2)
    r = c.post(c.sup, f"/api/admin/units/{unit}", {
        "name": "actor test, renamed", "qualifications": [], "members": 2,
        "home_grid": TOWN["units"][0]["home_grid"]}, method="PUT")
    assert r.status_code == 200, r.text
    return c.sup.name, await _audit_actor(c, "unit.changed", unit)


@records("POST", "/api/admin/units/{unit_id}/duty")
async def _unit_duty(c: Ctx) -> tuple[str, list[str]]:
    unit = _new_unit(c, c.sup2)
    r = c.post(c.sup, f"/api/admin/units/{unit}/duty",
               {"on_duty": True, "note": "actor test handover"})
    assert r.status_code == 200, r.text
    logged = [r["actor"] for r in await c.db.fetch(
        "SELECT actor FROM unit_duty_log WHERE unit_id = $1 AND source = 'hand'", unit)]
    assert logged, "a duty change by hand is in the duty log"
    return c.sup.name, [*logged, *await _audit_actor(c, "unit.duty", unit)]


SHIFT = {"weekdays": [1, 2, 3, 4, 5], "starts": "08:00", "ends": "17:00"}


@records("POST", "/api/admin/units/{unit_id}/shifts")
async def _shift_add(c: Ctx) -> tuple[str, list[str]]:
    unit = _new_unit(c, c.sup2)
    r = c.post(c.sup, f"/api/admin/units/{unit}/shifts", SHIFT)
    assert r.status_code == 201, r.text
    by = await c.db.fetchval("SELECT created_by FROM unit_shifts WHERE id = $1", r.json()["id"])
    return c.sup.name, [by, *await _audit_detail(c, "unit.changed", unit, "shift_added")]


@records("DELETE", "/api/admin/units/{unit_id}/shifts/{shift_id}")
async def _shift_delete(c: Ctx) -> tuple[str, list[str]]:
    unit = _new_unit(c, c.sup2)
    r = c.post(c.sup2, f"/api/admin/units/{unit}/shifts", SHIFT)
    assert r.status_code == 201, r.text
    r = c.post(c.sup, f"/api/admin/units/{unit}/shifts/{r.json()['id']}", method="DELETE")
    assert r.status_code == 200, r.text
    return c.sup.name, await _audit_detail(c, "unit.changed", unit, "shift_removed")


def _new_user(c: Ctx, who: Caller) -> str:
    name = f"actor-user-{uuid.uuid4().hex[:6]}"
    r = c.post(who, "/api/admin/users", {"username": name, "role": "viewer"})
    assert r.status_code == 201, r.text
    return name


@records("POST", "/api/admin/users")
async def _user_create(c: Ctx) -> tuple[str, list[str]]:
    name = _new_user(c, c.admin)
    return c.admin.name, await _audit_actor(c, "user.created", name)


@records("POST", "/api/admin/users/{username}/disable")
async def _user_disable(c: Ctx) -> tuple[str, list[str]]:
    name = _new_user(c, c.admin)
    r = c.post(c.admin, f"/api/admin/users/{name}/disable")
    assert r.status_code == 200, r.text
    return c.admin.name, await _audit_actor(c, "user.disabled", name)


@records("POST", "/api/admin/users/{username}/password")
async def _user_password(c: Ctx) -> tuple[str, list[str]]:
    name = _new_user(c, c.admin)
    r = c.post(c.admin, f"/api/admin/users/{name}/password")
    assert r.status_code == 200, r.text
    return c.admin.name, await _audit_actor(c, "user.changed", name)


@records("POST", "/api/admin/tokens")
async def _token_issue(c: Ctx) -> tuple[str, list[str]]:
    name = f"actor-tok-{uuid.uuid4().hex[:6]}"
    r = c.post(c.admin, "/api/admin/tokens", {"name": name, "role": "viewer"})
    assert r.status_code == 201, r.text
    made = [r["created_by"] for r in await c.db.fetch(
        "SELECT created_by FROM api_tokens WHERE name = $1", name)]
    return c.admin.name, [*made, *await _audit_actor(c, "token.created", name)]


@records("DELETE", "/api/admin/tokens/{name}")
async def _token_revoke(c: Ctx) -> tuple[str, list[str]]:
    name = _token(c.hub, "viewer", "actor-tok").name  # made by the command line
    r = c.post(c.admin, f"/api/admin/tokens/{name}", method="DELETE")
    assert r.status_code == 200 and r.json()["revoked"] == 1, r.text
    return c.admin.name, await _audit_actor(c, "token.revoked", name)


# ---------------------------------------------------------------- the field app's routes
# A phone's actor is its unit id (hub/access.actor_of), whatever the body says.
def _phone(c: Ctx, unit_id: str, role: str = "unit", grids: list[str] | None = None
           ) -> tuple[Caller, str]:
    r = c.post(c.admin, "/api/field/enrolments",
               {"role": role, "unit_id": unit_id, "grids": grids or []})
    assert r.status_code == 201, r.text
    got = httpx.post(c.hub.url + "/api/field/enrol", json={"code": r.json()["code"]}).json()
    return Caller(unit_id, {"Authorization": "Bearer " + got["token"]}), got["name"]


def _field_post(c: Ctx, who: Caller, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(c.hub.url + path, json={**FORGED, **body}, timeout=15,
                      headers={**who.headers, "Idempotency-Key": uuid.uuid4().hex})


@records("POST", "/api/field/enrolments")
async def _field_code(c: Ctx) -> tuple[str, list[str]]:
    r = c.post(c.admin, "/api/field/enrolments", {"role": "unit", "unit_id": "PO-07"})
    assert r.status_code == 201, r.text
    by = await c.db.fetchval("SELECT created_by FROM field_enrolments WHERE id = $1",
                             r.json()["enrolment_id"])
    return c.admin.name, [by]


@records("DELETE", "/api/field/phones/{name}")
async def _field_revoke(c: Ctx) -> tuple[str, list[str]]:
    _, name = _phone(c, "PO-08")
    r = c.post(c.admin, f"/api/field/phones/{name}", method="DELETE")
    assert r.status_code == 200, r.text
    by = await c.db.fetchval("SELECT revoked_by FROM field_phones WHERE name = $1", name)
    return c.admin.name, [by, *await _audit_actor(c, "field.revoked", name)]


@records("POST", "/api/field/cases/{incident_id}/actions")
async def _field_action(c: Ctx) -> tuple[str, list[str]]:
    squad = await c.db.fetchval(
        "SELECT id FROM units WHERE type = 'squad' AND status = 'available' AND "
        "'city_management' = ANY(qualifications) ORDER BY id DESC LIMIT 1")
    iid = _incident(c, c.admin, source="operator", priority=4)
    await wait_for(lambda: c.db.fetchval(
        "SELECT state FROM incidents WHERE id = $1 AND state = 'dispatched'", iid), timeout=30)
    r = c.post(c.op, f"/api/incidents/{iid}/assign",
               {"unit_id": squad, "reason_code": "local_knowledge", "note": "actor test"})
    assert r.status_code == 200, r.text
    who, _ = _phone(c, squad)
    before = await _last_seq(c, iid)
    r = _field_post(c, who, f"/api/field/cases/{iid}/actions", {"action": "accept"})
    assert r.status_code == 200, r.text
    log = await _log_after(c, iid, before)
    return who.name, [e["actor"] for e in log]


@records("POST", "/api/field/reports")
async def _field_report(c: Ctx) -> tuple[str, list[str]]:
    who, _ = _phone(c, "GW-09", role="grid_worker")
    r = _field_post(c, who, "/api/field/reports",
                    {"category": "noise", "description": "actor test", **_somewhere()})
    assert r.status_code == 201, r.text
    iid = r.json()["incident"]["id"]
    reporter = await c.db.fetchval("SELECT reporter FROM incidents WHERE id = $1", iid)
    log = await c.db.fetch("SELECT actor FROM case_log WHERE incident_id = $1", iid)
    return who.name, [reporter, *(e["actor"] for e in log)]


@records("POST", "/api/field/photos")
async def _field_photo(c: Ctx) -> tuple[str, list[str]]:
    from tests.field_helpers import jpeg

    who, _ = _phone(c, "GW-10", role="grid_worker")
    r = httpx.post(c.hub.url + "/api/field/photos", headers=who.headers,
                   content=jpeg((uuid.uuid4().int % 255, 1, 2)), timeout=15)
    assert r.status_code == 201, r.text
    return who.name, [r.json()["uploaded_by"]]


@records("POST", "/api/field/positions")
async def _field_positions(c: Ctx) -> tuple[str, list[str]]:
    who, _ = _phone(c, "PO-09")
    at = time.time()
    r = httpx.post(c.hub.url + "/api/field/positions", headers=who.headers, timeout=15,
                   json={**_somewhere(), "ts": at})
    assert r.status_code == 200, r.text
    rows = await c.db.fetch("SELECT unit_id FROM positions WHERE unit_id = $1 "
                            "AND ts = to_timestamp($2)", who.name, at)
    return who.name, [r["unit_id"] for r in rows]


# ---------------------------------------------------------------- the tests
def _state_changing() -> set[tuple[str, str]]:
    app = create_app(Settings(database_url="postgresql://unused/none"))
    return {k for rk in route_keys(app.routes) for k in rk.keys() if k[0] in UNSAFE_METHODS}


def test_every_state_changing_route_is_accounted_for() -> None:
    routes = _state_changing()
    assert routes, "the app has state-changing routes"
    assert routes <= set(POLICY), "every route is in the policy table (test_access checks)"
    listed = set(RECORDERS) | set(NOT_RECORDING)
    assert routes - listed == set(), "state-changing routes with no actor check here"
    assert listed - routes == set(), "checks for routes the app no longer has"
    assert not set(RECORDERS) & set(NOT_RECORDING)


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
            ref = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                   .get("schema", {}).get("$ref", ""))
            if ref:
                model = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
                offenders += [f"{method.upper()} {path}: {f}"
                              for f in model.get("properties", {}) if f in names]
    assert offenders == []

