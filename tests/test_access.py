"""Who may do what, against the hub as a real process on real PostgreSQL.

Every route of the app (``app.routes``: API, pages, the websocket, mounts) is in the one
policy table and refuses every role below the one it needs; sessions, CSRF, the login
rate limit, unit tokens confined to their own incidents, revoked tokens, Argon2 hashes,
cookie flags and the body-size limit.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from core.settings import Settings
from hub.access import FIELD_ONLY, POLICY, Rule, route_keys
from hub.app import create_app
from hub.auth import STAFF_ROLES
from tests.conftest import ROOT, HubProcess, cli_user, town_doc, wait_for

PARAM = re.compile(r"\{[^}]+\}")


@pytest.fixture(scope="module")
def tokens(hub: HubProcess) -> dict[str, str]:
    """One token per role; the unit token is for a unit no test case is assigned to."""
    out = {role: hub.make_token(role) for role in STAFF_ROLES}
    out["unit"] = hub.make_token("unit", unit=town_doc()["units"][-1]["id"])
    gw = next(u for u in town_doc()["units"] if u["type"] == "grid_worker")
    out["grid_worker"] = hub.make_token("grid_worker", unit=gw["id"])
    return out


@pytest.fixture(scope="module")
def app_keys() -> list[tuple[str, str]]:
    app = create_app(Settings(database_url="postgresql://unused/none"))
    return [k for rk in route_keys(app.routes) for k in rk.keys()]


def _below(rule: Rule) -> list[str | None]:
    """The callers ``rule`` must refuse: no credentials, lower staff roles, and a unit
    token unless the route is marked for units."""
    assert rule.role is not None
    if rule.role == FIELD_ONLY:  # phones only (hub/field_api.py)
        return [None, *STAFF_ROLES]
    lower: list[str | None] = [None, *STAFF_ROLES[:STAFF_ROLES.index(rule.role)]]
    if not rule.unit:
        lower.append("unit")
    if not rule.grid_worker:
        lower.append("grid_worker")
    return lower


def _allowed(rule: Rule) -> list[str]:
    assert rule.role is not None
    if rule.role == FIELD_ONLY:
        return ["unit", "grid_worker"]
    ok = list(STAFF_ROLES[STAFF_ROLES.index(rule.role):])
    return ok + (["unit"] if rule.unit else []) + (["grid_worker"] if rule.grid_worker else [])


def _concrete(key: tuple[str, str]) -> str:
    path = PARAM.sub("999999999", key[1])
    return path + "/base.css" if key[0] == "MOUNT" else path


def _http(hub: HubProcess, key: tuple[str, str], token: str | None) -> httpx.Response:
    method = "GET" if key[0] == "MOUNT" else key[0]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kw: dict[str, Any] = {}
    if method in ("POST", "PUT"):
        kw["json"] = {}
    return httpx.request(method, hub.url + _concrete(key), headers=headers, timeout=10,
                         follow_redirects=False, **kw)


def _auth_refusal(r: httpx.Response) -> str | None:
    """The stable code when the access layer refused, else None."""
    if r.status_code == 303 and r.headers.get("location", "").startswith("/login?next="):
        return "redirect_to_login"
    if r.status_code in (401, 403, 503):
        try:
            code = r.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None
        return code if code.startswith("auth.") else None
    return None


async def _ws_refused(hub: HubProcess, path: str, *, headers: dict[str, str] | None = None,
                      query: str = "") -> bool:
    try:
        async with websockets.connect(f"ws://127.0.0.1:{hub.port}{path}{query}",
                                      additional_headers=headers or {}, open_timeout=10) as ws:
            await ws.send('{"type": "hello", "last_seq": null}')
            await asyncio.wait_for(ws.recv(), 10)
            return False
    except InvalidStatus as e:
        assert e.response.status_code == 403
        return True


# ---------------------------------------------------------------- the policy table
def test_every_route_is_in_the_policy(app_keys: list[tuple[str, str]]) -> None:
    missing = [k for k in app_keys if k not in POLICY]
    assert not missing, f"routes without an access rule in hub/access.py: {missing}"
    stale = [k for k in POLICY if k not in app_keys and k != ("MOUNT", "/vendor/uplot")]
    assert not stale, f"access rules for routes that do not exist: {stale}"
    assert ("WS", "/ws/live") in app_keys and ("MOUNT", "/static") in app_keys
    public = sorted(k for k in app_keys if POLICY[k].role is None)
    assert public == sorted([("GET", "/login"), ("POST", "/login"), ("GET", "/api/health"),
                             ("MOUNT", "/static"), ("MOUNT", "/vendor/leaflet"),
                             # Open311 GeoReport v2 is public by specification (hub/open311.py)
                             *[("GET", "/open311/v2/" + p) for p in (
                                 "discovery.{fmt}", "services.{fmt}",
                                 "services/{service_code}.{fmt}", "requests.{fmt}",
                                 "requests/{request_id}.{fmt}")],
                             ("POST", "/open311/v2/requests.{fmt}"),
                             # the "one public" of inspections (hub/inspections_api.py)
                             ("GET", "/inspections/public"), ("GET", "/api/inspections/public"),
                             ("GET", "/api/inspections/public/draws/{draw_id}"),
                             # the field app's shell, and trading an enrolment code
                             # (hub/field_views.py, hub/field_enrol.py)
                             ("GET", "/field"), ("GET", "/field/sw.js"),
                             ("GET", "/field/manifest.webmanifest"),
                             ("POST", "/api/field/enrol"),
                             *([("MOUNT", "/vendor/uplot")]
                               if ("MOUNT", "/vendor/uplot") in app_keys else [])])


async def test_every_route_refuses_the_roles_below_it(
        hub: HubProcess, tokens: dict[str, str], app_keys: list[tuple[str, str]]) -> None:
    checked = 0
    for key in app_keys:
        rule = POLICY[key]
        if rule.role is None:
            r = _http(hub, key, None)
            assert _auth_refusal(r) is None, f"public {key} refused: {r.status_code} {r.text}"
            continue
        for who in _below(rule):
            token = tokens[who] if who else None
            if key[0] == "WS":
                refused = await _ws_refused(
                    hub, key[1], headers={"Authorization": f"Bearer {token}"} if token else {})
                assert refused, f"{key} let {who or 'no credentials'} in"
            else:
                r = _http(hub, key, token)
                code = _auth_refusal(r)
                expected = ("redirect_to_login" if rule.page else "auth.required") if who is None \
                    else "auth.forbidden"
                assert code == expected, (f"{key} as {who or 'nobody'}: {r.status_code} "
                                          f"{r.text[:200]} (wanted {expected})")
            checked += 1
        for who in _allowed(rule):
            if key[0] == "WS":
                assert not await _ws_refused(
                    hub, key[1], headers={"Authorization": f"Bearer {tokens[who]}"}), key
            else:
                r = _http(hub, key, tokens[who])
                assert _auth_refusal(r) is None, (f"{key} refused {who}: {r.status_code} "
                                                  f"{r.text[:200]}")
    assert checked > 100


def test_a_bad_token_is_refused(hub: HubProcess) -> None:
    r = httpx.get(hub.url + "/api/units", headers={"Authorization": "Bearer nope-" + "x" * 40})
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.invalid_token"
    assert r.headers["www-authenticate"] == "Bearer"


def test_a_revoked_token_is_refused(hub: HubProcess) -> None:
    name = f"revoke-me-{uuid.uuid4().hex[:6]}"
    token = hub.make_token("viewer", name=name)
    h = {"Authorization": f"Bearer {token}"}
    assert httpx.get(hub.url + "/api/me", headers=h).json()["role"] == "viewer"
    subprocess.run([sys.executable, "-m", "hub", "revoke-token", "--name", name], cwd=ROOT,
                   env={**hub.env, "HUB_DATABASE_URL": hub.db_url}, check=True,
                   capture_output=True)
    r = httpx.get(hub.url + "/api/me", headers=h)
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.invalid_token"


# ---------------------------------------------------------------- sessions and CSRF
def _cookies(r: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name (whole header, flags included)."""
    return {h.split("=", 1)[0]: h for h in r.headers.get_list("set-cookie")}


def _login(hub: HubProcess, username: str, password: str, *, next_url: str = "/",
           address: str | None = None) -> httpx.Response:
    """Log in through the form. ``address``: the client address, as a reverse proxy on
    this host reports it (X-Forwarded-For; uvicorn trusts it from 127.0.0.1 only)."""
    extra = {"X-Forwarded-For": address} if address else {}
    form = httpx.get(hub.url + "/login", params={"next": next_url}, headers=extra)
    assert form.status_code == 200
    login_cookie = _cookies(form)["gridhub_login"].split(";")[0]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf
    return httpx.post(hub.url + "/login", headers={"Cookie": login_cookie, **extra},
                      data={"username": username, "password": password,
                            "csrf_token": csrf.group(1), "next": next_url})


@pytest.fixture(scope="module")
def user(hub: HubProcess) -> Iterator[tuple[str, str]]:
    name, password = f"op-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    cli_user(hub.db_url, name, "operator", password)
    yield name, password


async def test_password_hashes_are_argon2(db: asyncpg.Connection, user: tuple[str, str]
                                          ) -> None:
    stored = await db.fetchval("SELECT password_hash FROM users WHERE username = $1", user[0])
    assert stored.startswith("$argon2id$") and user[1] not in stored


def test_session_cookie_flags_and_csrf(hub: HubProcess, user: tuple[str, str]) -> None:
    r = _login(hub, *user, next_url="/reports?lang=en")
    assert r.status_code == 303 and r.headers["location"] == "/reports?lang=en"
    set_cookie = _cookies(r)["gridhub_session"]
    flags = {f.strip().lower() for f in set_cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= flags, set_cookie
    cookie = {"Cookie": set_cookie.split(";")[0]}
    me = httpx.get(hub.url + "/api/me", headers=cookie).json()
    assert me == {"name": user[0], "role": "operator", "kind": "session", "unit_id": None}
    page = httpx.get(hub.url + "/reports", headers=cookie)
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert csrf, "pages carry the session's CSRF token"
    url = hub.url + "/api/alarms/999999999/ack"
    for bad in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}):
        r = httpx.post(url, headers={**cookie, **bad}, json={})
        assert r.status_code == 403 and r.json()["error"]["code"] == "auth.csrf", bad
    r = httpx.post(url, headers={**cookie, "X-CSRF-Token": csrf.group(1)}, json={})
    assert r.status_code == 404  # past the access layer: there is no such alarm
    # operator, not supervisor
    r = httpx.put(hub.url + "/api/rules/x", headers={**cookie, "X-CSRF-Token": csrf.group(1)},
                  json={})
    assert r.status_code == 403 and r.json()["error"]["code"] == "auth.forbidden"
    # logout is a form post with the token; the session is gone afterwards
    r = httpx.post(hub.url + "/logout", headers=cookie, data={"csrf_token": "wrong"})
    assert r.status_code == 403
    r = httpx.post(hub.url + "/logout", headers=cookie, data={"csrf_token": csrf.group(1)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    r = httpx.get(hub.url + "/api/me", headers=cookie)
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.required"
    r = httpx.get(hub.url + "/reports?lang=en", headers=cookie)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Freports%3Flang%3Den"


def test_login_refuses_a_form_without_its_cookie(hub: HubProcess, user: tuple[str, str]
                                                 ) -> None:
    """Login CSRF: another site can post the form but not set our login cookie."""
    r = httpx.post(hub.url + "/login", data={"username": user[0], "password": user[1],
                                             "csrf_token": "forged"})
    assert r.status_code == 403 and r.headers["x-error-code"] == "login.csrf"
    assert "gridhub_session" not in _cookies(r)


def test_login_never_redirects_off_site(hub: HubProcess, user: tuple[str, str]) -> None:
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        r = _login(hub, *user, next_url=target)
        assert r.status_code == 303 and r.headers["location"] == "/", target


async def test_login_throttle_slows_the_guesser_not_the_operator(
        hub: HubProcess, db: asyncpg.Connection) -> None:
    """Failures count per (username, address): an attack on the duty officer's username
    from elsewhere gets growing delays; the officer logs in from the command room."""
    name, password = f"rl-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    cli_user(hub.db_url, name, "operator", password)
    attacker, command_room = "203.0.113.7", "198.51.100.20"
    try:
        for _ in range(3):  # the free failures (login_free_failures_per_pair)
            r = _login(hub, name, "wrong password!", address=attacker)
            assert r.status_code == 401 and r.headers["x-error-code"] == "auth.bad_credentials"
        # two more, as a script would (rows, not requests: the test must not sleep out the
        # first delays); 5 failures: 4 s after the last, even for the right password
        failures = "INSERT INTO login_failures (username, client_ip) VALUES ($1, $2)"
        await db.executemany(failures, [(name, attacker)] * 2)
        r = _login(hub, name, password, address=attacker)
        assert r.status_code == 429, r.text
        assert r.headers["x-error-code"] == "auth.rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 4
        assert 'data-code="auth.rate_limited"' in r.text
        # the attack goes on: each failure doubles the wait (10 failures: 2**7 s)
        await db.executemany(failures, [(name, attacker)] * 5)
        r = _login(hub, name, password, address=attacker)
        assert r.status_code == 429 and 120 <= int(r.headers["retry-after"]) <= 128
        # counted in the database: every web node sees the same failures
        assert await db.fetchval("SELECT count(*) FROM login_failures WHERE username = $1 "
                                 "AND client_ip = $2", name, attacker) == 10

        # meanwhile the operator in the command room logs in at once, and again
        for _ in range(2):
            r = _login(hub, name, password, address=command_room)
            assert r.status_code == 303, r.text
            assert "gridhub_session" in _cookies(r)
        # a typo there costs nothing, and a good login forgets that pair's failures
        assert _login(hub, name, "typo", address=command_room).status_code == 401
        assert _login(hub, name, password, address=command_room).status_code == 303
        assert await db.fetchval("SELECT count(*) FROM login_failures WHERE username = $1 "
                                 "AND client_ip = $2", name, command_room) == 0
        # ... while the attacker is still held off
        assert _login(hub, name, password, address=attacker).status_code == 429

        # all of it is in the audit trail, with the addresses
        kinds = {(r["kind"], r["client_ip"]) for r in await db.fetch(
            "SELECT kind, client_ip FROM security_events WHERE target = $1", name)}
        assert {("login.failed", attacker), ("login.throttled", attacker),
                ("login.succeeded", command_room), ("login.failed", command_room)} <= kinds
        assert ("login.succeeded", attacker) not in kinds
        # throttled attempts: one row a minute per pair, not one per attempt
        assert await db.fetchval(
            "SELECT count(*) FROM security_events WHERE kind = 'login.throttled' AND "
            "target = $1 AND client_ip = $2", name, attacker) == 1
    finally:
        # the per-address count would otherwise hold the other tests' logins from there
        await db.execute("DELETE FROM login_failures WHERE username = $1", name)


def test_login_delays_grow_and_are_capped() -> None:
    from hub.auth import delay_s

    assert [delay_s(n, 3, 1.0, 300.0) for n in range(12)] == [
        0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert delay_s(13, 3, 1.0, 300.0) == 300.0 and delay_s(10_000, 3, 1.0, 300.0) == 300.0


# ---------------------------------------------------------------- unit tokens
async def test_a_unit_acts_only_on_its_own_incidents(hub: HubProcess) -> None:
    cc = town_doc()["command_center"]
    r = hub.client.post("/api/incidents", json={
        "category": "city_order", "qualification": "city_management", "priority": 3,
        "title": "access test", "lon": cc["lon"] + 0.002, "lat": cc["lat"] + 0.001,
        "source": "operator"})
    assert r.status_code == 201, r.text
    iid = r.json()["id"]

    async def assigned() -> str | None:
        inc = hub.client.get(f"/api/incidents/{iid}").json()["incident"]
        return inc["assigned_unit"] if inc["state"] == "dispatched" else None

    mine = await wait_for(assigned, timeout=30)
    other = next(u["id"] for u in town_doc()["units"] if u["id"] != mine)
    own = {"Authorization": f"Bearer {hub.make_token('unit', unit=mine)}"}
    foreign = {"Authorization": f"Bearer {hub.make_token('unit', unit=other)}"}
    url = f"{hub.url}/api/incidents/{iid}"

    r = httpx.post(url + "/actions", headers=foreign, json={"action": "accept"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "auth.not_your_incident"
    r = httpx.get(url, headers=foreign)
    assert r.status_code == 403 and r.json()["error"]["code"] == "auth.not_your_incident"
    listed = httpx.get(hub.url + "/api/incidents", headers=foreign).json()
    assert iid not in [i["id"] for i in listed]
    assert httpx.get(hub.url + "/api/units", headers=own).status_code == 403

    assert httpx.get(url, headers=own).status_code == 200
    assert iid in [i["id"] for i in httpx.get(hub.url + "/api/incidents", headers=own).json()]
    r = httpx.post(url + "/actions", headers=own,
                   json={"action": "cancel", "reason": "not mine to cancel"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "auth.forbidden"
    r = httpx.post(url + "/actions", headers=own, json={"action": "accept", "actor": "someone"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "accepted"
    log = hub.client.get(f"/api/incidents/{iid}").json()["log"]
    assert log[-1]["actor"] == mine  # a unit acts under its own id, whatever it claims

    # a field report from the unit is signed by the unit
    r = httpx.post(hub.url + "/api/incidents", headers=own, json={
        "category": "city_order", "qualification": "city_management", "priority": 4,
        "title": "field report", "lon": cc["lon"], "lat": cc["lat"] + 0.002,
        "source": "operator", "reporter": "someone"})
    assert r.status_code == 201, r.text
    assert (r.json()["source"], r.json()["reporter"]) == ("grid_worker", mine)
    hub.client.post(f"/api/incidents/{r.json()['id']}/actions",
                    json={"action": "cancel", "reason": "test report"})


def test_supervisor_only_case_actions(hub: HubProcess, tokens: dict[str, str]) -> None:
    r = httpx.post(hub.url + "/api/incidents/999999999/actions",
                   headers={"Authorization": f"Bearer {tokens['operator']}"},
                   json={"action": "approve_extension"})
    assert r.status_code == 404  # the case is looked up first ...
    inc = hub.client.get("/api/incidents", params={"state": "all", "limit": 1}).json()[0]
    r = httpx.post(f"{hub.url}/api/incidents/{inc['id']}/actions",
                   headers={"Authorization": f"Bearer {tokens['operator']}"},
                   json={"action": "approve_extension"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "auth.forbidden"


# ---------------------------------------------------------------- the live feed
async def test_live_feed_credentials(hub: HubProcess, tokens: dict[str, str],
                                     user: tuple[str, str]) -> None:
    assert await _ws_refused(hub, "/ws/live")
    assert await _ws_refused(hub, "/ws/live", query="?token=wrong")
    assert await _ws_refused(hub, "/ws/live", query=f"?token={tokens['unit']}")
    assert not await _ws_refused(hub, "/ws/live", query=f"?token={tokens['viewer']}")
    session = _cookies(_login(hub, *user))["gridhub_session"].split(";")[0]
    assert not await _ws_refused(hub, "/ws/live", headers={"Cookie": session})


# ---------------------------------------------------------------- input size
def test_request_body_size_limit(hub: HubProcess) -> None:
    big = b'{"title": "' + b"x" * (300 * 1024) + b'"}'
    for headers in ({}, hub.headers):
        r = httpx.post(hub.url + "/api/incidents", content=big,
                       headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request.too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it is read
        for _ in range(40):
            yield b" " * 8192

    r = httpx.post(hub.url + "/api/incidents", content=chunks(),
                   headers={**hub.headers, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request.too_large"
    r = httpx.post(hub.url + "/login", content=chunks(),
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413


# ---------------------------------------------------------------- the demo's CLI path
def test_demo_credentials_are_registered_idempotently(hub: HubProcess, tmp_path: Any) -> None:
    """What ./hubctl demo does on every run: reset the admin from its password file and
    register the simulators' token from its file; twice is the same as once."""
    env = {**hub.env, "HUB_DATABASE_URL": hub.db_url}
    pw_file, token_file = tmp_path / "admin-password", tmp_path / "sim-token"
    pw_file.write_text(secrets.token_urlsafe(18) + "\n")
    token_file.write_text(secrets.token_urlsafe(24) + "\n")
    name = f"demo-admin-{uuid.uuid4().hex[:6]}"
    for _ in range(2):
        for args in (["create-user", name, "--role", "admin", "--update", "--password-file",
                      str(pw_file)],
                     ["create-token", "--name", f"sim-{name}", "--role", "supervisor",
                      "--token-file", str(token_file)]):
            subprocess.run([sys.executable, "-m", "hub", *args], cwd=ROOT, env=env,
                           check=True, capture_output=True)
    token = token_file.read_text().strip()
    me = httpx.get(hub.url + "/api/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["role"] == "supervisor"
    r = _login(hub, name, pw_file.read_text().strip())
    assert r.status_code == 303
    # without --update an existing user is refused, not silently changed
    r2 = subprocess.run([sys.executable, "-m", "hub", "create-user", name, "--role", "viewer",
                         "--password-file", str(pw_file)], cwd=ROOT, env=env,
                        capture_output=True, text=True)
    assert r2.returncode == 1 and "auth.user_exists" in r2.stderr
