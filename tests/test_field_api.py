"""The field app's API against the real hub: enrolment codes and revocation, role limits,
idempotent actions and reports, photo validation (fake extension, oversized, truncated,
EXIF read, metadata stripped), photo evidence in the case-log chain (a swapped file is
caught), the same case actions as the console under the phone's identity, and patrol
fixes checked like GPS over MQTT."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from PIL import Image

from core import photo_check
from hub import field_feed
from tests.conftest import ROOT, HubProcess
from tests.field_helpers import (
    dispatch_to,
    enrol,
    free_unit,
    jpeg,
    key,
    new_case,
    phone,
    upload,
)

LIMITS = photo_check.Limits(max_bytes=10 * 1024 * 1024, max_pixels=50_000_000)
TZ = ZoneInfo("Asia/Shanghai")


def photo_root() -> Path:
    return ROOT / os.environ.get("HUB_VAR_DIR", "var/demo") / "photos"


# ------------------------------------------------------------------ pure photo checks
def test_photo_check_reads_exif_and_strips_it_from_copies() -> None:
    c = photo_check.check(jpeg(), LIMITS, TZ)
    assert c.mime == "image/jpeg" and (c.width, c.height) == (320, 240)
    # 2026-12-01 09:30:00 in the town's zone (UTC+8)
    assert c.taken_at == 1796088600.0
    assert c.lat == pytest.approx(31 + 49 / 60 + 12 / 3600)
    assert c.lon == pytest.approx(120 + 25 / 60 + 30 / 3600)
    for copy in (c.display, c.thumb):
        img = Image.open(io.BytesIO(copy))
        assert img.format == "JPEG" and not img.getexif() and "exif" not in img.info
    assert b"TestPhone" not in c.display and b"TestPhone" not in c.thumb


@pytest.mark.parametrize(("data", "code"), [
    (b"", "photo.empty"),
    (b"GIF89a but really just text pretending", "photo.not_an_image"),
    (b"this is a text file named photo.jpg", "photo.not_an_image"),
])
def test_photo_check_refuses_non_images(data: bytes, code: str) -> None:
    with pytest.raises(photo_check.PhotoError) as e:
        photo_check.check(data, LIMITS, TZ)
    assert e.value.code == code


def test_photo_check_refuses_other_formats_truncation_size_and_bombs() -> None:
    gif = io.BytesIO()
    Image.new("RGB", (10, 10)).save(gif, "GIF")
    noisy = io.BytesIO()
    Image.effect_noise((400, 300), 60).convert("RGB").save(noisy, "JPEG")
    data = noisy.getvalue()
    cases = [
        (gif.getvalue(), LIMITS, "photo.unsupported_type"),
        (data[: len(data) // 2], LIMITS, "photo.truncated"),
        (data, photo_check.Limits(max_bytes=len(data) - 1, max_pixels=10**8), "photo.too_large"),
        (data, photo_check.Limits(max_bytes=10**8, max_pixels=400 * 300 - 1),
         "photo.too_many_pixels"),
    ]
    for blob, limits, code in cases:
        with pytest.raises(photo_check.PhotoError) as e:
            photo_check.check(blob, limits, TZ)
        assert e.value.code == code


def test_feed_relevance_is_per_phone() -> None:
    inc = {"id": 1, "assigned_unit": "SQ-01", "grid_id": "G01-01", "handler": None,
           "reporter": "op"}
    assert field_feed.relevant("incident.updated", {"incident": inc}, "SQ-01", [])
    assert not field_feed.relevant("incident.updated", {"incident": inc}, "SQ-02", [])
    withdrawn = {"incident": {**inc, "assigned_unit": None}, "released_unit": "SQ-01"}
    assert field_feed.relevant("incident.updated", withdrawn, "SQ-01", [])
    assert field_feed.relevant("incident.updated", {"incident": inc}, "GW-01", ["G01-01"])
    assert not field_feed.relevant("alarm.raised", {"incident": inc}, "SQ-01", [])


def test_feed_heartbeat_is_bounded() -> None:
    assert field_feed.heartbeat(None, 15.0) == 15.0
    assert field_feed.heartbeat("2", 15.0) == 2.0
    assert field_feed.heartbeat("0.01", 15.0) == field_feed.PING_MIN_S  # not a flood
    assert field_feed.heartbeat("600", 15.0) == 15.0  # not longer than the hub's
    assert field_feed.heartbeat("nan", 15.0) == 15.0
    assert field_feed.heartbeat("soon", 15.0) == 15.0


# ------------------------------------------------------------------ enrolment
def test_enrolment_code_works_once_and_revocation_stops_the_phone(hub: HubProcess) -> None:
    r = hub.client.post("/api/field/enrolments", json={"role": "unit", "unit_id": "PO-01"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["qr_svg"].startswith("<svg") and body["url"].endswith("#enrol=" + body["code"])
    # typed by hand: lower case and spaces are fine
    typed = " ".join(body["code"][i:i + 5] for i in (0, 5)).lower()
    got = httpx.post(hub.url + "/api/field/enrol", json={"code": typed}).json()
    assert got["role"] == "unit" and got["unit_id"] == "PO-01"
    again = httpx.post(hub.url + "/api/field/enrol", json={"code": body["code"]})
    assert again.status_code == 422 and again.json()["error"]["code"] == "field.bad_code"
    with phone(hub, got["token"]) as ph:
        assert ph.get("/api/field/me").json()["unit"]["id"] == "PO-01"
        names = [p["name"] for p in hub.client.get("/api/field/phones").json()]
        assert got["name"] in names
        assert hub.client.delete(f"/api/field/phones/{got['name']}").status_code == 200
        r = ph.get("/api/field/me")
        assert r.status_code == 401 and r.json()["error"]["code"] == "auth.invalid_token"


def test_enrolment_needs_admin_and_the_right_unit_type(hub: HubProcess) -> None:
    op = hub.make_token("operator")
    r = httpx.post(hub.url + "/api/field/enrolments", headers={"Authorization": f"Bearer {op}"},
                   json={"role": "unit", "unit_id": "SQ-01"})
    assert r.status_code == 403
    r = hub.client.post("/api/field/enrolments", json={"role": "grid_worker", "unit_id": "SQ-01"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "field.wrong_unit_type"
    r = hub.client.post("/api/field/enrolments",
                        json={"role": "grid_worker", "unit_id": "GW-01", "grids": ["nope"]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "field.unknown_grid"


# ------------------------------------------------------------------ role limits
def test_role_limits(hub: HubProcess) -> None:
    unit = enrol(hub, "PO-02")
    worker = enrol(hub, "GW-02", role="grid_worker")
    case = new_case(hub, "role limits")
    with phone(hub, unit["token"]) as u, phone(hub, worker["token"]) as w:
        # phones read nothing of the console's
        for ph in (u, w):
            assert ph.get("/api/units").status_code == 403
            assert ph.get("/api/town").status_code == 403
        # a grid worker has no unit routes and no case outside its grids
        assert w.get("/api/incidents").status_code == 403
        assert w.post(f"/api/incidents/{case['id']}/actions",
                      json={"action": "accept"}).status_code == 403
        r = w.post(f"/api/field/cases/{case['id']}/actions", json={"action": "accept"},
                   headers={"Idempotency-Key": key()})
        assert r.status_code == 404  # not its grid: it does not see the case at all
        # a unit's phone may not act on a case that is not its unit's
        r = u.post(f"/api/field/cases/{case['id']}/actions", json={"action": "accept"},
                   headers={"Idempotency-Key": key()})
        assert r.status_code == 404
    # staff are not phones
    assert hub.client.get("/api/field/inbox").status_code == 403


# ------------------------------------------------------------------ the loop, by API
def test_case_closed_through_the_field_endpoints_with_photo_evidence(hub: HubProcess) -> None:
    squad = free_unit(hub)
    case = new_case(hub, "field api loop")
    inc = dispatch_to(hub, case["id"], squad)
    unit = enrol(hub, squad)
    worker = enrol(hub, "GW-03", role="grid_worker", grids=[inc["grid_id"]])
    cid = inc["id"]
    with phone(hub, unit["token"]) as u, phone(hub, worker["token"]) as w:
        inbox = u.get("/api/field/inbox").json()
        assert cid in [c["id"] for c in inbox["cases"]] and inbox["seq"] > 0

        def step(client: httpx.Client, action: str, **body: object) -> httpx.Response:
            return client.post(f"/api/field/cases/{cid}/actions",
                               json={"action": action, **body},
                               headers={"Idempotency-Key": key()})

        for action in ("accept", "arrive", "start_handling"):
            r = step(u, action)
            assert r.status_code == 200, r.text
        assert step(u, "arrive").status_code == 409  # once only, and only when accepted
        route = u.get(f"/api/field/cases/{cid}/route",
                      params={"lon": inc["lon"] - 0.01, "lat": inc["lat"] - 0.01}).json()
        assert route["distance_m"] > 1000 and route["eta_s"] > 0 and len(route["points"]) >= 2
        after = upload(u, jpeg((10, 120, 10))).json()
        assert after["taken_at"] and after["lat"] and after["lon"]
        r = step(u, "give_feedback", reason="stall removed", photos=[after["sha256"]])
        assert r.status_code == 200 and r.json()["incident"]["state"] == "feedback", r.text
        # the handler cannot verify his own work (and a unit's phone may not verify at all)
        assert step(u, "verify_ok").status_code == 403
        # the grid worker cannot attach the unit's photo as its own
        assert step(w, "verify_ok", photos=[after["sha256"]]).json()["error"]["code"] \
            == "photo.unknown"
        check = upload(w, jpeg((10, 10, 200))).json()
        seen = w.get(f"/api/field/cases/{cid}").json()
        assert [p["stage"] for p in seen["photos"]] == ["feedback"]
        assert w.get(seen["photos"][0]["thumb_url"]).status_code == 200
        r = step(w, "verify_ok", reason="checked on site", photos=[check["sha256"]])
        assert r.status_code == 200 and r.json()["incident"]["state"] == "verified", r.text
        # someone else's phone may not see these photos
        other = enrol(hub, "PO-03")
        with phone(hub, other["token"]) as o:
            assert o.get(f"/api/photos/{after['sha256']}/display").status_code == 403
    # the operator closes it: every field step went through the field app's endpoints
    r = hub.client.post(f"/api/incidents/{cid}/actions", json={"action": "close"})
    assert r.status_code == 200 and r.json()["state"] == "closed", r.text
    log = hub.client.get(f"/api/incidents/{cid}").json()["log"]
    actions = [e["action"] for e in log]
    assert actions[-7:] == ["arrive", "start_handling", "evidence", "give_feedback",
                            "evidence", "verify_ok", "close"]
    assert {e["actor"] for e in log if e["action"] in ("accept", "give_feedback")} == {squad}
    assert [e["actor"] for e in log if e["action"] == "verify_ok"] == ["GW-03"]
    assert hub.client.get(f"/api/incidents/{cid}/log/verify").json()["ok"]
    photos = hub.client.get(f"/api/incidents/{cid}/photos").json()
    assert photos["intact"] and [p["stage"] for p in photos["photos"]] == ["feedback", "verify"]
    # the shown copy carries no metadata
    shown = hub.client.get(photos["photos"][0]["display_url"]).content
    assert b"TestPhone" not in shown and not Image.open(io.BytesIO(shown)).getexif()
    # a photo swapped on disk no longer matches its hash in the case log
    orig = photo_root() / after["sha256"][:2] / (after["sha256"] + ".orig")
    saved = orig.read_bytes()
    try:
        orig.write_bytes(jpeg((0, 0, 0)))
        photos = hub.client.get(f"/api/incidents/{cid}/photos").json()
        assert not photos["intact"]
        assert [p["file_ok"] for p in photos["photos"]] == [False, True]
    finally:
        orig.write_bytes(saved)


# ------------------------------------------------------------------ idempotency
def test_replayed_report_is_applied_once(hub: HubProcess, db_url: str) -> None:
    worker = enrol(hub, "GW-04", role="grid_worker")
    k = key()
    body = {"category": "road_damage", "description": "pothole", "lon": 120.43, "lat": 31.80}
    with phone(hub, worker["token"]) as w:
        first = w.post("/api/field/reports", json=body, headers={"Idempotency-Key": k})
        second = w.post("/api/field/reports", json=body, headers={"Idempotency-Key": k})
        assert first.status_code == second.status_code == 201, first.text
        assert first.json()["incident"]["id"] == second.json()["incident"]["id"]
        assert (first.json()["replayed"], second.json()["replayed"]) == (False, True)
        inc = first.json()["incident"]
        assert inc["state"] == "reported" and inc["reporter"] == "GW-04"
        assert inc["source"] == "grid_worker"
        other = w.post("/api/field/reports", json={**body, "description": "other"},
                       headers={"Idempotency-Key": k})
        assert other.status_code == 409 and other.json()["error"]["code"] == "field.key_reused"
        assert w.post("/api/field/reports", json=body).json()["error"]["code"] \
            == "field.idempotency_key_required"
        # concurrent duplicates: still one case
        k2 = key()

        async def both() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=hub.url, headers={
                    "Authorization": f"Bearer {worker['token']}"}, timeout=15) as c:
                return await asyncio.gather(*[
                    c.post("/api/field/reports", json=body, headers={"Idempotency-Key": k2})
                    for _ in range(4)])

        ids = {r.json()["incident"]["id"] for r in asyncio.run(both())}
        assert len(ids) == 1
    mine = [i for i in hub.client.get("/api/incidents", params={"state": "all"}).json()
            if i["reporter"] == "GW-04"]
    assert len(mine) == 2


def test_replayed_case_action_is_applied_once(hub: HubProcess) -> None:
    """The outbox may send a step twice (its answer lost): the second gets the first's
    answer, the case log has the step once, and the key cannot carry another step."""
    squad = free_unit(hub)
    case = new_case(hub, "replayed accept")
    dispatch_to(hub, case["id"], squad)
    unit = enrol(hub, squad)
    k = key()
    with phone(hub, unit["token"]) as u:
        path = f"/api/field/cases/{case['id']}/actions"
        first = u.post(path, json={"action": "accept"}, headers={"Idempotency-Key": k})
        second = u.post(path, json={"action": "accept"}, headers={"Idempotency-Key": k})
        assert first.status_code == second.status_code == 200, second.text
        assert (first.json()["replayed"], second.json()["replayed"]) == (False, True)
        assert second.json()["incident"] == first.json()["incident"]
        other = u.post(path, json={"action": "start_handling"}, headers={"Idempotency-Key": k})
        assert other.status_code == 409 and other.json()["error"]["code"] == "field.key_reused"
    log = hub.client.get(f"/api/incidents/{case['id']}").json()["log"]
    assert [e["action"] for e in log].count("accept") == 1
    assert hub.client.get(f"/api/incidents/{case['id']}").json()["incident"]["state"] \
        == "accepted"


def test_action_on_a_case_that_moved_on_is_refused_cleanly(hub: HubProcess) -> None:
    squad = free_unit(hub, exclude=set())
    case = new_case(hub, "moved on")
    dispatch_to(hub, case["id"], squad)
    unit = enrol(hub, squad)
    with phone(hub, unit["token"]) as u:
        ok = u.post(f"/api/field/cases/{case['id']}/actions", json={"action": "accept"},
                    headers={"Idempotency-Key": key()})
        assert ok.status_code == 200
        r = u.post(f"/api/field/cases/{case['id']}/actions", json={"action": "accept"},
                   headers={"Idempotency-Key": key()})
        assert r.status_code == 409 and r.json()["error"]["code"] == "case.illegal_transition"
        r = u.post(f"/api/field/cases/{case['id']}/actions",
                   json={"action": "request_extension"}, headers={"Idempotency-Key": key()})
        assert r.json()["error"]["code"] == "case.reason_required"
        u.post(f"/api/field/cases/{case['id']}/actions",
               json={"action": "start_handling"}, headers={"Idempotency-Key": key()})
        u.post(f"/api/field/cases/{case['id']}/actions",
               json={"action": "give_feedback", "reason": "done"},
               headers={"Idempotency-Key": key()})


# ------------------------------------------------------------------ photo uploads
def test_photo_uploads_are_checked(hub: HubProcess) -> None:
    worker = enrol(hub, "GW-05", role="grid_worker")
    with phone(hub, worker["token"]) as w:
        r = upload(w, b"MZ\x90\x00 an executable named photo.jpg")
        assert r.status_code == 422 and r.json()["error"]["code"] == "photo.not_an_image"
        good = jpeg(size=(640, 480))
        r = upload(w, good[: len(good) // 2])
        assert r.status_code == 422 and r.json()["error"]["code"] == "photo.truncated"
        big = os.urandom(10 * 1024 * 1024 + 1)
        r = upload(w, big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request.too_large"
        png = io.BytesIO()
        Image.new("RGB", (50, 40), (1, 2, 3)).save(png, "PNG")
        r = upload(w, png.getvalue(), "image/jpeg")  # the declared type is not trusted
        assert r.status_code == 201 and r.json()["mime"] == "image/png"
        assert r.json()["taken_at"] is None
        r = upload(w, jpeg())
        assert r.status_code == 201
        assert r.json()["taken_at"] == 1796088600.0 and r.json()["lat"] > 31.8
    # staff see only photos attached to a case, not loose uploads
    assert hub.client.get(f"/api/photos/{r.json()['sha256']}/thumb").status_code == 403


# ------------------------------------------------------------------ patrol
def test_patrol_positions_are_checked_like_gps_over_mqtt(hub: HubProcess, db_url: str
                                                         ) -> None:
    unit = enrol(hub, "PO-04")
    import time
    now = time.time()
    fixes = [{"lat": 31.80 + k * 0.0005, "lon": 120.43, "ts": now - 60 + k * 10, "acc": 5.0,
              "speed": 4.0} for k in range(6)]
    with phone(hub, unit["token"]) as u:
        r = u.post("/api/field/positions", json=fixes)
        assert r.status_code == 200 and r.json()["stored"] == 6
        bad = u.post("/api/field/positions", json={"lat": 95.0, "lon": 120.4, "ts": now})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "position.bad_position"
        late = u.post("/api/field/positions", json={"lat": 31.8, "lon": 120.4, "ts": 1.0})
        assert late.json()["error"]["code"] == "position.bad_time"
        p = u.get("/api/field/patrol").json()
        assert p["fixes"] >= 6 and p["distance_m"] > 200
    dead = hub.client.get("/api/dead-letters", params={"reason": "bad_position"}).json()
    assert any(d["topic"].endswith("/PO-04") for d in dead["items"])


# ------------------------------------------------------------------ retention
def test_photo_retention_removes_loose_uploads_only(hub: HubProcess, db_url: str) -> None:
    from core.db import create_pool
    from core.settings import Settings
    from hub import photos

    worker = enrol(hub, "GW-08", role="grid_worker")
    with phone(hub, worker["token"]) as w:
        loose = upload(w, jpeg((5, 6, 7))).json()["sha256"]
        kept = upload(w, jpeg((7, 6, 5))).json()["sha256"]
        r = w.post("/api/field/reports", headers={"Idempotency-Key": key()}, json={
            "category": "noise", "lon": 120.43, "lat": 31.80, "photos": [kept]})
        assert r.status_code == 201, r.text
    root = photo_root()
    settings = Settings(database_url=db_url, var_dir=root.parent)

    async def run() -> int:
        pool = await create_pool(db_url, 1, 2)
        try:
            await pool.execute("UPDATE photos SET uploaded_at = now() - interval '8 days' "
                               "WHERE sha256 = ANY($1::text[])", [loose, kept])
            return await photos.purge(pool, settings)
        finally:
            await pool.close()

    assert asyncio.run(run()) >= 1
    assert not (root / loose[:2] / (loose + ".orig")).exists()
    assert (root / kept[:2] / (kept + ".orig")).exists()  # its case is open: kept
