"""Helpers shared by the field app's tests: enrolling phones, making photos, putting a
case in a unit's hands, all through the real hub's API."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

import httpx
from PIL import Image

from tests.conftest import HubProcess, town_doc

# A case at a known point: the town's command centre, a little off.
CASE_DLON, CASE_DLAT = 0.004, 0.003


def enrol(hub: HubProcess, unit_id: str, role: str = "unit",
          grids: list[str] | None = None) -> dict[str, Any]:
    """An enrolment code from the admin API traded for a phone token (as the app does)."""
    r = hub.client.post("/api/field/enrolments",
                        json={"role": role, "unit_id": unit_id, "grids": grids or []})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    r = httpx.post(hub.url + "/api/field/enrol", json={"code": code}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def phone(hub: HubProcess, token: str) -> httpx.Client:
    return httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {token}"},
                        timeout=15)


def jpeg(color: tuple[int, int, int] = (200, 30, 30), *, exif: bool = True,
         size: tuple[int, int] = (320, 240)) -> bytes:
    """A JPEG as a phone camera writes it: capture time, GPS and the phone's model."""
    img = Image.new("RGB", size, color)
    out = io.BytesIO()
    if exif:
        ex = Image.Exif()
        ex[0x0110] = "TestPhone X"  # Model: must not survive on the shown copies
        ex.get_ifd(0x8769)[36867] = "2026:12:01 09:30:00"  # DateTimeOriginal
        gps = ex.get_ifd(0x8825)
        gps[1], gps[2] = "N", (31.0, 49.0, 12.0)
        gps[3], gps[4] = "E", (120.0, 25.0, 30.0)
        img.save(out, "JPEG", exif=ex, quality=90)
    else:
        img.save(out, "JPEG", quality=90)
    return out.getvalue()


def upload(client: httpx.Client, data: bytes, content_type: str = "image/jpeg"
           ) -> httpx.Response:
    return client.post("/api/field/photos", content=data,
                       headers={"Content-Type": content_type})


def key() -> str:
    return uuid.uuid4().hex


def new_case(hub: HubProcess, title: str, priority: int = 2) -> dict[str, Any]:
    cc = town_doc()["command_center"]
    r = hub.client.post("/api/incidents", json={
        "category": "city_order", "qualification": "city_management", "priority": priority,
        "title": title, "description": "field test", "lon": cc["lon"] + CASE_DLON,
        "lat": cc["lat"] + CASE_DLAT, "source": "operator"})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def dispatch_to(hub: HubProcess, incident_id: int, unit_id: str,
                timeout: float = 15.0) -> dict[str, Any]:
    """Send ``unit_id`` to the case (an operator's override: the plan may have picked
    another unit) and wait until the case is dispatched to it."""
    deadline = time.monotonic() + timeout
    while True:
        inc = hub.client.get(f"/api/incidents/{incident_id}").json()["incident"]
        if inc["assigned_unit"] == unit_id and inc["state"] == "dispatched":
            return inc  # type: ignore[no-any-return]
        if inc["state"] in ("registered", "dispatched"):
            r = hub.client.post(f"/api/incidents/{incident_id}/assign", json={
                "unit_id": unit_id, "reason_code": "local_knowledge", "note": "field test"})
            assert r.status_code in (200, 409, 422), r.text
        assert time.monotonic() < deadline, f"case {incident_id} not dispatched: {inc}"
        time.sleep(0.2)


def free_unit(hub: HubProcess, kind: str = "squad", qualification: str = "city_management",
              exclude: set[str] | None = None) -> str:
    """An available unit of ``kind`` with the qualification, not in ``exclude``."""
    for u in hub.client.get("/api/units").json():
        if (u["type"] == kind and u["status"] == "available" and qualification in
                u["qualifications"] and u["id"] not in (exclude or set())):
            return str(u["id"])
    raise AssertionError(f"no available {kind}")
