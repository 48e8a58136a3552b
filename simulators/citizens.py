"""Citizens and hotline callers of the demo town: reports through the hub's public doors.

``Citizens`` (pure, seeded) decides what is reported and when: a report every ``every_s``
seconds on average (exponential gaps), half through the Open311 GeoReport v2 endpoint (a
citizen's app, ``POST /open311/v2/requests.json`` with the demo's application key), half
as hotline calls an operator types in (``POST /api/incidents`` with ``source=hotline``),
for a service of hub/open311_services.py at a place in a random grid, with the service's
required attributes answered. Such reports wait for an operator to register them
(dispatch/service.py): ``operator_verdict`` says whether the operator registers one or
cancels it as a duplicate (with a reason), and after how long.

``run_citizens`` is the I/O loop (httpx). ``ensure_key`` issues the demo's Open311 key once
(the hub keeps only its hash) and keeps it under ``$HUB_VAR_DIR/secrets``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hub.open311_services import SERVICES
from simulators.history_plan import CANCEL_REASONS, grid_point

log = logging.getLogger("simulators.citizens")

# A report every 2 minutes on average: with the sensors' event a minute, about a third of
# the demo's new cases come from people, as in a township's real mix.
DEFAULT_EVERY_S = 120.0
OPEN311_SHARE = 0.5  # the rest are hotline calls
# Share of people's reports an operator finds to be duplicates and cancels.
DUPLICATE_P = 0.05
# The demo's operator registers a report within 20-90 s (a real one takes minutes:
# history_plan.REGISTER_S), so a newcomer sees the report move on to dispatch.
OPERATOR_S = (20.0, 90.0)
APP_NAME = "demo-citizens"
KEY_FILE = "open311-demo-key"
STREETS = ("人民路", "振兴路", "芦墩街", "徐霞客大道", "祝塘路", "南环路")
WORDS = {
    "city_order": "门口有人占道摆摊，堵住了人行道",
    "illegal_construction": "邻居在楼顶加盖彩钢棚",
    "pollution": "河边有股刺鼻的味道",
    "noise": "工地晚上还在施工，噪音很大",
    "safety_hazard": "路边电线杆倾斜，看着很危险",
    "road_damage": "路面有个大坑，电动车差点摔倒",
    "public_order": "路口有人聚集吵架",
    "flooding": "下雨后这里积水很深",
}


@dataclass(frozen=True, slots=True)
class Report:
    channel: str  # open311 | hotline
    service_code: str
    lon: float
    lat: float
    description: str
    address: str
    attributes: Mapping[str, str] = field(default_factory=dict)

    def open311_form(self, api_key: str) -> dict[str, str]:
        """The GeoReport v2 form fields of this report."""
        form = {"api_key": api_key, "service_code": self.service_code,
                "lat": f"{self.lat:.6f}", "long": f"{self.lon:.6f}",
                "description": self.description, "address_string": self.address,
                "locale": "zh_CN"}
        form.update({f"attribute[{k}]": v for k, v in self.attributes.items()})
        return form

    def hotline_body(self) -> dict[str, Any]:
        """The body of ``POST /api/incidents`` for the operator who took the call."""
        svc = SERVICES[self.service_code]
        return {"category": svc.code, "qualification": svc.qualification,
                "priority": svc.priority, "title": f"12345热线：{svc.name}",
                "description": f"{self.description}（{self.address}）",
                "lon": self.lon, "lat": self.lat, "source": "hotline"}


class Citizens:
    """Seeded reports of the town's people (module docstring)."""

    def __init__(self, town: Mapping[str, Any], *, seed: int, every_s: float = DEFAULT_EVERY_S
                 ) -> None:
        self.town = town
        self.every_s = every_s
        self.rng = random.Random(f"citizens:{seed}")
        self.codes = sorted(SERVICES)

    def gap_s(self) -> float:
        """Seconds until the next report."""
        return self.rng.expovariate(1.0 / self.every_s)

    def next_report(self) -> Report:
        rng = self.rng
        svc = SERVICES[rng.choice(self.codes)]
        lon, lat, _ = grid_point(rng, self.town)
        attrs = {a.code: rng.choice(a.values)[0] for a in svc.attributes
                 if a.required and a.values}
        address = f"{rng.choice(STREETS)}{rng.randint(1, 300)}号附近"
        return Report("open311" if rng.random() < OPEN311_SHARE else "hotline", svc.code,
                      lon, lat, WORDS.get(svc.code, svc.name), address, attrs)

    def operator_verdict(self) -> tuple[str, float, str | None]:
        """(``register`` or ``cancel``, after how many seconds, the reason for a cancel)."""
        delay = self.rng.uniform(*OPERATOR_S)
        if self.rng.random() < DUPLICATE_P:
            return "cancel", delay, self.rng.choice(CANCEL_REASONS)
        return "register", delay, None


# ====================================================================== I/O
async def ensure_key(var_dir: Path, database_url: str | None) -> str | None:
    """The demo's Open311 application key: from ``var_dir/secrets``, else issued now in the
    database (as the set-up, like the demo's tokens). ``None`` without a database."""
    path = var_dir / "secrets" / KEY_FILE
    if path.exists():
        return path.read_text().strip()
    if not database_url:
        return None
    from core.db import connect
    from hub import open311_keys

    conn = await connect(database_url)
    try:
        _, key = await open311_keys.issue(conn, APP_NAME, "system:demo-setup")
    except Exception as e:  # e.g. the app exists but its key file was deleted
        log.warning("no Open311 key for the demo's citizens (%s); they phone the hotline", e)
        return None
    finally:
        await conn.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key)
    path.chmod(0o600)
    return key


async def _report(client: httpx.AsyncClient, who: Citizens, key: str | None) -> int | None:
    rep = who.next_report()
    if rep.channel == "open311" and key:
        r = await client.post("/open311/v2/requests.json", data=rep.open311_form(key))
        if r.status_code != 201:
            log.warning("Open311 report refused: %s %s", r.status_code, r.text[:200])
            return None
        iid = int(r.json()[0]["service_request_id"])
    else:
        r = await client.post("/api/incidents", json=rep.hotline_body())
        if r.status_code != 201:
            log.warning("hotline report refused: %s %s", r.status_code, r.text[:200])
            return None
        iid = int(r.json()["id"])
    log.info("case %s: %s report (%s) at %s", iid, rep.channel, rep.service_code, rep.address)
    return iid


async def _operator(client: httpx.AsyncClient, iid: int, verdict: tuple[str, float, str | None]
                    ) -> None:
    action, delay, reason = verdict
    await asyncio.sleep(delay)
    body: dict[str, Any] = {"action": action}
    if reason:
        body["reason"] = reason
    try:
        r = await client.post(f"/api/incidents/{iid}/actions", json=body)
    except httpx.HTTPError as e:
        log.warning("case %s: %s not sent: %s", iid, action, e)
        return
    if r.status_code not in (200, 409, 422):  # 409/422: someone else was faster
        log.warning("case %s: %s answered %s", iid, action, r.status_code)


async def run_citizens(hub_url: str, who: Citizens, headers: Mapping[str, str],
                       key: str | None) -> None:
    """Report, and register (or cancel) each report a little later, until cancelled."""
    pending: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=hub_url, timeout=5.0, headers=dict(headers)
                                 ) as client:
        try:
            while True:
                await asyncio.sleep(who.gap_s())
                try:
                    iid = await _report(client, who, key)
                except httpx.HTTPError as e:
                    log.warning("hub not reachable for a report: %s", e)
                    continue
                if iid is not None:
                    t = asyncio.create_task(_operator(client, iid, who.operator_verdict()))
                    pending.add(t)
                    t.add_done_callback(pending.discard)
        finally:
            for t in pending:
                t.cancel()


def var_dir() -> Path:
    return Path(os.environ.get("HUB_VAR_DIR", "var/demo"))
