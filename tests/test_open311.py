"""Open311 GeoReport v2 and citizens' contact data, against a real hub on a town database of
its own (it files reports), read by a third-party GeoReport v2 client from the registry.

``georeport`` (PyPI) is the one GeoReport v2 client there that runs on Python 3 (``three``
and ``open311`` import Python-2-only modules). It reads services, service definitions and
requests in JSON and XML, but has no call to file a report: reports are posted with
``requests``, the HTTP library georeport itself uses, as a form the specification describes.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
import requests
import schemathesis
import xmltodict
from fastapi import FastAPI
from georeport import GeoReport
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from core.db import create_pool
from core.settings import Settings
from dispatch import workflow
from hub import contacts, jobs, open311
from hub.gazetteer import AddressError, Gazetteer
from hub.open311_views import pick_lang
from hub.rate_limit import Buckets
from tests.conftest import HubProcess, town_database

JURISDICTION = "xuxiake-town"  # the demo town's English name, as the hub derives it
CONTACT = {"first_name": "王", "last_name": "小明", "phone": "13912345678",
           "email": "wxm@example.cn", "device_id": "dev-7f3a9c"}
SECRETS = ("小明", "13912345678", "wxm@example.cn", "dev-7f3a9c")
# Generated requests per Open311 operation and mode, as tests/test_api_fuzz.py does: the
# schema's boundaries first, then random data; the same requests every run.
FUZZ_EXAMPLES = 25


@pytest.fixture(scope="module")
def o311(base_db_url: str, mqtt_url: str) -> Iterator[HubProcess]:
    loop = asyncio.new_event_loop()
    ctx = town_database(base_db_url, "o")
    url = loop.run_until_complete(ctx.__aenter__())
    # Many requests from one address in this module: the per-address limit is tested on a
    # hub of its own below.
    hub = HubProcess(url, mqtt_url, extra_env={"HUB_OPEN311_REQUESTS_PER_MINUTE": "100000",
                                               "HUB_OPEN311_REPORTS_PER_HOUR_PER_KEY": "100000"})
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()
        loop.run_until_complete(ctx.__aexit__(None, None, None))
        loop.close()


@pytest.fixture(scope="module")
def api_key(o311: HubProcess) -> str:
    r = o311.client.post("/api/open311/keys", json={"app_name": "citizen-app"})
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    return str(r.json()["api_key"])


def is_xml(response: Any) -> bool:
    """Whether a response (requests', httpx's or schemathesis', whose headers map to lists)
    says it is XML."""
    value = next((v for k, v in response.headers.items() if k.lower() == "content-type"), "")
    return "xml" in (value[0] if isinstance(value, list) and value else str(value))


def open311_xml_error_problem(response: Any) -> str | None:
    """None if ``response`` is the specification's XML error for its status, else why not."""
    try:
        doc = ET.fromstring(response.content)
    except ET.ParseError as e:
        return f"{response.status_code}: not XML ({e}): {response.text[:200]!r}"
    code, text = doc.find("error/code"), doc.find("error/description")
    if doc.tag != "errors" or code is None or code.text != str(response.status_code) \
            or text is None or not text.text:
        return f"{response.status_code}: not a GeoReport XML error: {response.text[:200]!r}"
    return None


def root(hub: HubProcess) -> str:
    return hub.url + "/open311/v2"


def post(hub: HubProcess, fmt: str = "json", **form: Any) -> requests.Response:
    return requests.post(f"{root(hub)}/requests.{fmt}", data=form, timeout=10)


def town_point(hub: HubProcess) -> tuple[float, float]:
    town = hub.client.get("/api/town").json()
    g = next(f for f in town["grids"]["features"] if f["properties"]["level"] == 2)
    ring = g["geometry"]["coordinates"][0]
    return (sum(p[0] for p in ring[:-1]) / (len(ring) - 1),
            sum(p[1] for p in ring[:-1]) / (len(ring) - 1))


# ====================================================================== third-party client
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_georeport_client_reads_and_files(o311: HubProcess, api_key: str, fmt: str) -> None:
    client = GeoReport(root(o311), jurisdiction=JURISDICTION, output_format=fmt)
    services = client.get_service_list()
    by_code = {s["service_code"]: s for s in services}
    assert {"noise", "road_damage", "pollution", "flooding"} <= set(by_code)
    # XML carries text: booleans as "true"/"false".
    assert str(by_code["road_damage"]["metadata"]).lower() == "true"
    assert str(by_code["noise"]["metadata"]).lower() == "false"
    definition = client.get_service_definition("road_damage")
    attrs = definition["attributes"]
    attrs = attrs["attribute"] if fmt == "xml" else attrs
    codes = {a["code"]: a for a in attrs}
    assert codes["damage_kind"]["datatype"] == "singlevaluelist"
    values = codes["damage_kind"]["values"]
    values = values["value"] if fmt == "xml" else values
    assert {"pothole", "manhole"} <= {v["key"] for v in values}

    lon, lat = town_point(o311)
    r = post(o311, fmt, api_key=api_key, jurisdiction_id=JURISDICTION,
             service_code="road_damage", lat=str(lat), long=str(lon),
             description=f"路面塌陷 ({fmt})", **{"attribute[damage_kind]": "pothole",
                                                 "attribute[blocks_traffic]": "yes"})
    assert r.status_code == 201, r.text
    created = (r.json()[0] if fmt == "json"
               else xmltodict.parse(r.content)["service_requests"]["request"])
    rid = created["service_request_id"]
    assert created["service_notice"]

    one = client.get_service_request(rid)
    assert one["service_request_id"] == rid and one["status"] == "open"
    assert one["service_code"] == "road_damage" and one["agency_responsible"] == "交通"
    assert one["status_notes"] == "已受理，等待指挥中心核实立案"
    assert float(one["lat"]) == pytest.approx(lat) and one["requested_datetime"].endswith("Z")
    listed = client.get_service_requests(service_code="road_damage", status="open")
    listed = [listed] if isinstance(listed, dict) else listed
    assert rid in {x["service_request_id"] for x in listed}
    only = client.get_service_requests(service_request_id=rid)
    only = [only] if isinstance(only, dict) else only
    assert [x["service_request_id"] for x in only] == [rid]


def test_public_reads_need_no_login_and_writes_need_a_key(o311: HubProcess) -> None:
    for path in ("discovery.json", "discovery.xml", "services.json", "services.xml",
                 "services/flooding.json", "requests.json", "requests.xml"):
        r = requests.get(f"{root(o311)}/{path}", timeout=10)  # no credentials at all
        assert r.status_code == 200, (path, r.text)
    disc = requests.get(f"{root(o311)}/discovery.json", timeout=10).json()
    assert disc["endpoints"][0]["url"] == root(o311)
    assert "text/xml" in disc["endpoints"][0]["formats"]
    assert disc["contact"] == "徐霞客镇综合指挥中心"
    # The rest of the hub stays closed.
    assert requests.get(o311.url + "/api/incidents", timeout=10).status_code == 401


# ====================================================================== spec errors
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_spec_errors_in_both_formats(o311: HubProcess, api_key: str, fmt: str) -> None:
    lon, lat = town_point(o311)
    ok = {"api_key": api_key, "service_code": "noise", "lat": str(lat), "long": str(lon)}
    cases: list[tuple[int, requests.Response]] = [
        (403, post(o311, fmt, **{k: v for k, v in ok.items() if k != "api_key"})),
        (403, post(o311, fmt, **{**ok, "api_key": "o311_not-a-key"})),
        (404, post(o311, fmt, **{**ok, "jurisdiction_id": "somewhere-else"})),
        (400, post(o311, fmt, **{k: v for k, v in ok.items() if k != "service_code"})),
        (404, post(o311, fmt, **{**ok, "service_code": "nope"})),
        (400, post(o311, fmt, **{k: v for k, v in ok.items() if k not in ("lat", "long")})),
        (400, post(o311, fmt, **{**ok, "lat": "95"})),
        (400, post(o311, fmt, **{**ok, "lat": "40.0", "long": "116.4"})),  # not this town
        (400, post(o311, fmt, **{**ok, "media_url": "javascript:alert(1)"})),
        (400, post(o311, fmt, **{**ok, "phone": "call me maybe"})),
        (404, requests.get(f"{root(o311)}/services/nope.{fmt}", timeout=10)),
        (404, requests.get(f"{root(o311)}/requests/999999999.{fmt}", timeout=10)),
        (404, requests.get(f"{root(o311)}/services.{fmt}",
                           params={"jurisdiction_id": "elsewhere"}, timeout=10)),
        (400, requests.get(f"{root(o311)}/requests.{fmt}", params={"status": "lost"},
                           timeout=10)),
        (400, requests.get(f"{root(o311)}/requests.{fmt}",
                           params={"start_date": "2026-01-01T00:00:00Z",
                                   "end_date": "2026-12-01T00:00:00Z"}, timeout=10)),
    ]
    for status, r in cases:
        assert r.status_code == status, (status, r.request.url, r.text)
        if fmt == "json":
            (err,) = r.json()
            assert err["code"] == status and err["description"]
        else:
            doc = ET.fromstring(r.content)
            assert doc.tag == "errors"
            assert doc.find("error/code").text == str(status)  # type: ignore[union-attr]
            assert doc.find("error/description").text  # type: ignore[union-attr]
    too_big = post(o311, fmt, **{**ok, "description": "x" * 20_000})
    assert too_big.status_code == 413
    as_json = requests.post(f"{root(o311)}/requests.{fmt}", json=ok, timeout=10)
    assert as_json.status_code == 415
    unknown_format = requests.get(f"{root(o311)}/services.yaml", timeout=10)
    assert unknown_format.status_code == 404 and unknown_format.json()[0]["code"] == 404


# ====================================================================== api keys
def test_api_key_issue_list_revoke(o311: HubProcess) -> None:
    viewer = {"Authorization": f"Bearer {o311.make_token('viewer')}"}
    refused = requests.post(o311.url + "/api/open311/keys", json={"app_name": "x"},
                            headers=viewer, timeout=10)
    assert refused.status_code == 403
    issued = o311.client.post("/api/open311/keys", json={"app_name": "revocable-app"}).json()
    key, kid = issued["api_key"], issued["key_id"]
    twice = o311.client.post("/api/open311/keys", json={"app_name": "revocable-app"})
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "open311.key_exists"
    lon, lat = town_point(o311)
    form = {"api_key": key, "service_code": "noise", "lat": str(lat), "long": str(lon)}
    assert post(o311, **form).status_code == 201
    listed = {k["key_id"]: k for k in o311.client.get("/api/open311/keys").json()}
    assert listed[kid]["created_by"] == "test-admin" and listed[kid]["last_used_at"]
    assert "api_key" not in listed[kid] and key not in str(listed)
    assert o311.client.delete(f"/api/open311/keys/{kid}").status_code == 200
    after = post(o311, **form)
    assert after.status_code == 403 and "invalid api_key" in after.json()[0]["description"]
    revoked = {k["key_id"]: k for k in o311.client.get("/api/open311/keys").json()}[kid]
    assert revoked["revoked_by"] == "test-admin" and revoked["revoked_at"]
    again = o311.client.delete(f"/api/open311/keys/{kid}")
    assert again.status_code == 404
    # A revoked application may be given a new key.
    assert o311.client.post("/api/open311/keys",
                            json={"app_name": "revocable-app"}).status_code == 201


async def test_key_is_the_reports_channel(o311: HubProcess, api_key: str) -> None:
    lon, lat = town_point(o311)
    r = post(o311, api_key=api_key, service_code="noise", lat=str(lat), long=str(lon))
    rid = int(r.json()[0]["service_request_id"])
    conn = await asyncpg.connect(o311.db_url)
    try:
        row = await conn.fetchrow(
            "SELECT i.reporter, o.channel FROM incidents i JOIN open311_requests o "
            "ON o.incident_id = i.id WHERE i.id = $1", rid)
        first = await conn.fetchval(
            "SELECT actor FROM case_log WHERE incident_id = $1 AND seq = 1", rid)
    finally:
        await conn.close()
    assert (row["reporter"], row["channel"], first) == (
        "open311:citizen-app", "citizen-app", "open311:citizen-app")


# ====================================================================== address and attributes
def test_address_only_report(o311: HubProcess, api_key: str) -> None:
    base = {"api_key": api_key, "service_code": "city_order", "description": "摊位占道"}
    by_cell = post(o311, **base, address_string="北渚村第3网格")
    assert by_cell.status_code == 201, by_cell.text
    rid = by_cell.json()[0]["service_request_id"]
    assert o311.client.get(f"/api/incidents/{rid}").json()["incident"]["grid_id"] == "G01-03"
    by_road = post(o311, **base, address_string="江阴市徐霞客镇 北渚村 璜塘路 口")
    assert by_road.status_code == 201, by_road.text
    one = requests.get(f"{root(o311)}/requests/{by_road.json()[0]['service_request_id']}"
                       ".json", timeout=10).json()[0]
    assert one["address"].startswith("北渚村")  # the grid the point fell in
    village = post(o311, **base, address_string="马镇社区")
    assert village.status_code == 201, village.text
    one_village_road = post(o311, **base, address_string="湖庄西路")
    assert one_village_road.status_code == 201, one_village_road.text
    off_road = post(o311, **base, address_string="北渚村 湖庄路")
    assert off_road.status_code == 400
    assert "does not pass through" in off_road.json()[0]["description"]

    ambiguous_road = post(o311, **base, address_string="湖庄路")
    assert ambiguous_road.status_code == 400
    assert "runs through" in ambiguous_road.json()[0]["description"]
    two_places = post(o311, **base, address_string="北渚村和芦墩村之间")
    assert two_places.status_code == 400
    assert "ambiguous" in two_places.json()[0]["description"]
    unknown = post(o311, **base, address_string="人民广场")
    assert unknown.status_code == 400
    assert "names no village" in unknown.json()[0]["description"]


def test_gazetteer_rules() -> None:
    def box(x: float, y: float) -> dict[str, float]:
        return {"min_lon": x, "min_lat": y, "max_lon": x + 1, "max_lat": y + 1,
                "center_lon": x + 0.5, "center_lat": y + 0.5}
    g = Gazetteer.build(
        [{"id": "G1", "level": 1, "parent_id": None, "name": "甲村", **box(0, 0)},
         {"id": "G2", "level": 1, "parent_id": None, "name": "乙社区", **box(1, 0)},
         {"id": "G1-01", "level": 2, "parent_id": "G1", "name": "甲村第1网格", **box(0, 0)}],
        [{"name": "长路", "geometry": {"coordinates": [[0.2, 0.5], [1.8, 0.5]]}},
         {"name": "短路", "geometry": {"coordinates": [[1.2, 0.2], [1.4, 0.4]]}}])
    assert g.resolve("甲村第1网格").grid_hint == "G1-01"
    assert g.resolve("ｇ１－０１号").grid_hint == "G1-01"  # full-width, any case
    assert (g.resolve("乙社区 长路").lon, g.resolve("乙社区 长路").lat) == (1.8, 0.5)
    assert g.resolve("短路").matched == "短路"  # one village only
    assert g.resolve("乙社区").lon == 1.5
    for bad in ("长路", "甲村 乙社区", "丙村", "  ", "乙社区第1网格 甲村第1网格"):
        with pytest.raises(AddressError):
            g.resolve(bad)


def test_attributes_are_checked_and_kept(o311: HubProcess, api_key: str) -> None:
    lon, lat = town_point(o311)
    base = {"api_key": api_key, "lat": str(lat), "long": str(lon)}
    missing = post(o311, **base, service_code="flooding")
    assert missing.status_code == 400 and "attribute[depth]" in missing.json()[0]["description"]
    wrong = post(o311, **base, service_code="flooding", **{"attribute[depth]": "ocean"})
    assert wrong.status_code == 400 and "not one of" in wrong.json()[0]["description"]
    stray = post(o311, **base, service_code="noise", **{"attribute[depth]": "knee"})
    assert stray.status_code == 400
    ok = requests.post(f"{root(o311)}/requests.json", timeout=10, data=[
        *base.items(), ("service_code", "flooding"), ("attribute[depth]", "deeper"),
        ("attribute[affected][]", "road"), ("attribute[affected][]", "homes")])
    assert ok.status_code == 201, ok.text
    rid = int(ok.json()[0]["service_request_id"])
    case = o311.client.get(f"/api/incidents/{rid}").json()["incident"]
    assert case["priority"] == 1  # deeper than the knee: the most urgent
    assert "【积水深度】更深" in case["description"] and "道路、住户" in case["description"]


# ====================================================================== status as the case moves
def test_status_follows_the_case_in_the_citizens_language(o311: HubProcess,
                                                          api_key: str) -> None:
    lon, lat = town_point(o311)
    r = post(o311, api_key=api_key, service_code="pollution", lat=str(lat), long=str(lon),
             **{"attribute[pollution_kind]": "water", "attribute[ongoing]": "no"})
    rid = r.json()[0]["service_request_id"]
    url = f"{root(o311)}/requests/{rid}.json"
    before = requests.get(url, timeout=10).json()[0]
    act = o311.client.post(f"/api/incidents/{rid}/actions",
                           json={"action": "register", "actor": "operator:test"})
    assert act.status_code == 200, act.text
    # The dispatcher sends a squad as soon as the case is registered; no crew runs here to
    # accept it, so the case rests in "dispatched".
    deadline = time.monotonic() + 15
    while o311.client.get(f"/api/incidents/{rid}").json()["incident"]["state"] != "dispatched":
        assert time.monotonic() < deadline, "the case was not dispatched"
        time.sleep(0.1)
    zh = requests.get(url, timeout=10).json()[0]
    en = requests.get(url, headers={"Accept-Language": "en-US,en;q=0.9,zh;q=0.5"},
                      timeout=10).json()[0]
    assert zh["status"] == "open" and zh["status_notes"] == "已派遣处置力量"
    assert en["status_notes"] == "A team has been dispatched."
    assert en["agency_responsible"] == "Environmental Protection"
    assert zh["agency_responsible"] == "环保"  # a department's name, not a unit id
    assert requests.get(url, params={"locale": "en"}, timeout=10).json()[0][
        "status_notes"] == "A team has been dispatched."
    assert zh["updated_datetime"] >= before["updated_datetime"]
    assert zh["expected_datetime"] and zh["expected_datetime"] > zh["requested_datetime"]
    cancel = o311.client.post(f"/api/incidents/{rid}/actions", json={
        "action": "cancel", "actor": "operator:test", "reason": "重复上报"})
    assert cancel.status_code == 200, cancel.text
    done = requests.get(url, params={"locale": "en"}, timeout=10).json()[0]
    assert done["status"] == "closed" and done["expected_datetime"] is None
    closed = requests.get(f"{root(o311)}/requests.json", params={"status": "closed"},
                          timeout=10).json()
    assert rid in {x["service_request_id"] for x in closed}


@pytest.mark.parametrize(("locale", "accept", "lang"), [
    (None, None, "zh_CN"),
    (None, "en-GB,en;q=0.8", "en"),
    (None, "fr-FR, zh-CN;q=0.4, en;q=0.3", "zh_CN"),
    (None, "zh;q=0.2, en;q=0.9", "en"),
    (None, "en;q=0, zh-TW", "zh_CN"),
    ("en_US", "zh-CN", "en"),
    ("zh-CN", "en", "zh_CN"),
    ("xx", "en", "en"),
])
def test_language_of_status_notes(locale: str | None, accept: str | None, lang: str) -> None:
    assert pick_lang(locale, accept) == lang


# ====================================================================== contact data
async def test_contact_kept_apart_from_every_view(o311: HubProcess, api_key: str) -> None:
    lon, lat = town_point(o311)
    r = post(o311, api_key=api_key, service_code="safety_hazard", lat=str(lat),
             long=str(lon), description="配电箱门开着", **CONTACT)
    assert r.status_code == 201, r.text
    rid = int(r.json()[0]["service_request_id"])
    viewer = {"Authorization": f"Bearer {o311.make_token('viewer')}"}
    operator = {"Authorization": f"Bearer {o311.make_token('operator')}"}
    public = [f"{root(o311)}/requests/{rid}.json", f"{root(o311)}/requests/{rid}.xml",
              f"{root(o311)}/requests.json", f"{root(o311)}/requests.xml"]
    for url in public:
        body = requests.get(url, timeout=10).text
        assert str(rid) in body and not any(s in body for s in SECRETS), url
    for path in (f"/api/incidents/{rid}", "/api/incidents", "/api/snapshot",
                 "/api/events?after=0&limit=1000", f"/cases/{rid}",
                 f"/api/incidents/{rid}/log/verify"):
        resp = requests.get(o311.url + path, headers=viewer, timeout=10)
        assert resp.status_code == 200, (path, resp.text[:200])
        assert not any(s in resp.text for s in SECRETS), path
    conn = await asyncpg.connect(o311.db_url)
    try:
        inc = await conn.fetchrow("SELECT * FROM incidents WHERE id = $1", rid)
        log = await conn.fetch("SELECT * FROM case_log WHERE incident_id = $1", rid)
        events = await conn.fetch("SELECT payload::text AS p FROM events")
        cid = await conn.fetchval(
            "SELECT contact_id FROM open311_requests WHERE incident_id = $1", rid)
    finally:
        await conn.close()
    for text in (str(dict(inc)), str([dict(x) for x in log]), str([e["p"] for e in events])):
        assert not any(s in text for s in SECRETS)
    assert cid and cid.startswith("c_") and not any(s in cid for s in SECRETS)
    # Contact data for operators and above only.
    for path in (f"/api/contacts/{cid}", f"/api/incidents/{rid}/contact"):
        assert requests.get(o311.url + path, headers=viewer, timeout=10).status_code == 403
        assert requests.get(o311.url + path, timeout=10).status_code == 401
        got = requests.get(o311.url + path, headers=operator, timeout=10).json()
        assert {k: got[k] for k in CONTACT} == CONTACT and got["erased"] is False


async def test_retention_erases_contacts_and_the_chain_still_verifies(
        o311: HubProcess, api_key: str) -> None:
    assert "contacts.retention" in {name for name, *_ in jobs.JOBS}
    lon, lat = town_point(o311)
    r = post(o311, api_key=api_key, service_code="noise", lat=str(lat), long=str(lon),
             **CONTACT)
    rid = int(r.json()[0]["service_request_id"])
    assert o311.client.post(f"/api/incidents/{rid}/actions", json={
        "action": "register", "actor": "operator:test"}).status_code == 200
    pool = await asyncpg.create_pool(o311.db_url, min_size=1, max_size=2)
    try:
        cid = await pool.fetchval(
            "SELECT contact_id FROM open311_requests WHERE incident_id = $1", rid)
        due = await pool.fetchval("SELECT erase_after FROM contacts WHERE id = $1", cid)
        now = datetime.now(UTC)
        assert timedelta(days=179) < due - now <= timedelta(days=180)
        # Not yet due: nothing of this contact is erased.
        await contacts.erase_due(pool, now)
        assert await pool.fetchval("SELECT phone FROM contacts WHERE id = $1", cid)
        # The retention period over (time passed in): erased, tombstone kept.
        assert await contacts.erase_due(pool, now + timedelta(days=181)) >= 1
        row = await pool.fetchrow("SELECT * FROM contacts WHERE id = $1", cid)
        log = await pool.fetch(
            "SELECT seq, action, from_state, to_state, actor, extract(epoch FROM ts)::float8 "
            "AS ts, reason, prev_hash, hash FROM case_log WHERE incident_id = $1 ORDER BY seq",
            rid)
    finally:
        await pool.close()
    assert row["erased_at"] is not None
    assert all(row[f] is None for f in contacts.FIELDS)
    entries = [{**dict(e), "ts": round(e["ts"], 6)} for e in log]
    assert len(entries) >= 2 and workflow.verify_chain(entries, rid) is None
    verify = o311.client.get(f"/api/incidents/{rid}/log/verify").json()
    assert verify["ok"] is True and verify["entries"] >= len(entries)
    operator = {"Authorization": f"Bearer {o311.make_token('operator')}"}
    got = requests.get(f"{o311.url}/api/incidents/{rid}/contact", headers=operator,
                       timeout=10).json()
    assert got["erased"] is True and got["phone"] is None


# ====================================================================== rate limits
async def test_rate_limits_per_address_and_per_key(o311: HubProcess) -> None:
    key = o311.client.post("/api/open311/keys", json={"app_name": "limited-app"}).json()
    other = o311.client.post("/api/open311/keys", json={"app_name": "other-app"}).json()
    lon, lat = town_point(o311)
    form = {"service_code": "noise", "lat": str(lat), "long": str(lon)}
    # The Open311 routes in an app of their own on the same database, with small limits:
    # six requests a minute per address; four reports an hour per key (a burst of one).
    app = FastAPI()
    app.include_router(open311.router)
    pool = await create_pool(o311.db_url)
    app.state.hub = SimpleNamespace(pool=pool, settings=Settings(
        database_url=o311.db_url, open311_requests_per_minute=6,
        open311_reports_per_hour_per_key=4))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://hub.test/open311/v2") as c:
            first = await c.post("/requests.json", data={**form, "api_key": key["api_key"]})
            second = await c.post("/requests.json", data={**form, "api_key": key["api_key"]})
            another_app = await c.post("/requests.json",
                                       data={**form, "api_key": other["api_key"]})
            reads = [await c.get("/services.xml") for _ in range(4)]
    finally:
        await pool.close()
    assert first.status_code == 201, first.text
    assert second.status_code == 429 and int(second.headers["retry-after"]) > 60
    assert second.json()[0]["code"] == 429
    assert another_app.status_code == 201, another_app.text  # each key its own allowance
    # Six requests a minute from this address: the three posts and three reads pass.
    assert [r.status_code for r in reads] == [200, 200, 200, 429]
    assert int(reads[-1].headers["retry-after"]) >= 1
    assert open311_xml_error_problem(reads[-1]) is None


def test_token_buckets() -> None:
    b = Buckets(rate_per_s=1.0, burst=2.0)
    assert [b.take("a", 0.0), b.take("a", 0.0)] == [0.0, 0.0]
    assert b.take("a", 0.0) == pytest.approx(1.0)
    assert b.take("b", 0.0) == 0.0  # per key
    assert b.take("a", 1.0) == 0.0  # refilled
    small = Buckets(rate_per_s=1.0, burst=1.0, max_keys=4)
    for k in range(10):
        small.take(k, 0.0)
    assert len(small._state) <= 4


# ====================================================================== schemathesis
def _open311_problem(response: Any) -> str | None:
    """What is wrong with a GeoReport answer: a 5xx, an error not in the specification's
    shape, or a body not in the format its content type says."""
    if response.status_code >= 500:
        return f"{response.status_code}: {response.text[:300]}"
    xml = is_xml(response)
    if response.status_code >= 400:
        if xml:
            return open311_xml_error_problem(response)
        try:
            body = response.json()
        except ValueError:
            return f"{response.status_code}: not JSON: {response.text[:200]!r}"
        ok = (isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict)
              and body[0].get("code") == response.status_code and body[0].get("description"))
        return None if ok else f"{response.status_code}: not a GeoReport error: {body!r:.200}"
    try:
        ET.fromstring(response.content) if xml else response.json()
    except (ET.ParseError, ValueError) as e:
        return f"{response.status_code}: body does not parse as {'XML' if xml else 'JSON'}: {e}"
    return None


def _fuzz_run(strategy: Any, api_key: str | None) -> Any:
    """A hypothesis test calling the hub with each generated case; ``api_key`` goes into
    generated forms (past the key check, into the form's own checks)."""
    @given(case=strategy)
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    def run(case: Any) -> None:
        if api_key and isinstance(case.body, dict):
            case.body["api_key"] = api_key
        response = case.call(timeout=30)  # no credentials: the routes are public
        problem = _open311_problem(response)
        assert problem is None, f"{problem}\n{case.as_curl_command()}"
    return run


def test_schemathesis_over_the_open311_routes(o311: HubProcess, api_key: str) -> None:

    schema = schemathesis.openapi.from_url(o311.url + "/openapi.json", headers=o311.headers)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if not op.path.startswith("/open311/"):
            continue
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = _fuzz_run(op.as_strategy(mode), api_key if mode is GenerationMode.POSITIVE
                            else None)
            try:
                run()
            except AssertionError as e:
                failures.append(f"{op.label} ({mode.value}): {e}")
            except Unsatisfiable:
                pass  # no invalid request can be built for this operation
    assert operations == 6
    assert not failures, "\n\n".join(failures)
