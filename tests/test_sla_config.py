"""SLA configuration on the real database and a running hub: supervisors' edits recorded
with the authenticated principal and surviving a restart, clocks computed on the town's
calendar across Spring Festival, and "cases today" counted by the town's day.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import httpx
import pytest
import pytest_asyncio

from core.db import connect, create_pool
from dispatch import sla, sla_clocks, sla_config, sla_settings, store, workflow
from tests.conftest import HubProcess, town_database, town_doc, wait_for

TOWN = town_doc()
CST = timezone(timedelta(hours=8))
H = 3600.0
UNIT = TOWN["units"][0]["id"]


def cst(y: int, mo: int, d: int, hh: int = 0, mm: int = 0) -> float:
    return datetime(y, mo, d, hh, mm, tzinfo=CST).timestamp()


@pytest_asyncio.fixture(scope="module")
async def sla_db(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "sla") as url:
        yield url


@pytest_asyncio.fixture
async def conn(sla_db: str) -> AsyncIterator[asyncpg.Connection]:
    c = await connect(sla_db)
    yield c
    await c.close()


@pytest.fixture
def in_force() -> Iterator[None]:
    """Tests that load a configuration into this process put the previous one back."""
    saved = {k: v for k, v in vars(sla_config.InForce).items() if not k.startswith("__")}
    yield
    for k, v in saved.items():
        setattr(sla_config.InForce, k, v)


async def _incident(c: asyncpg.Connection, opened_at: float, category: str = "city_order",
                    priority: int = 3) -> int:
    """A case row for the clocks and counts alone: 'closed', so that the hub's dispatcher
    on this database (the API test's) leaves it alone; it has no case log to replay."""
    d = TOWN["devices"][0]
    iid: int = await c.fetchval(
        """INSERT INTO incidents (category, priority, qualification, title, lon, lat, source,
                                  state, opened_at)
           VALUES ($1, $2, 'city_management', 'test', $3, $4, 'operator', 'closed', $5)
           RETURNING id""", category, priority, d["lon"], d["lat"], store.ts(opened_at))
    return iid


# ---------------------------------------------------------------- cases today
async def test_cases_today_counts_the_town_day(conn: asyncpg.Connection) -> None:
    """A unit's "cases today" starts at the town's midnight (00:00 Asia/Shanghai = 16:00
    UTC), not at UTC's (08:00 in the town). Which UTC day the discriminating case falls in
    depends on when the test runs; either way the town day decides."""
    cal = sla_config.shipped_calendar().calendar
    now = time.time()
    town_start = sla.local_day_start(cal, sla.local_date(cal, now))
    utc_start = datetime.fromtimestamp(now, UTC).replace(
        hour=0, minute=0, second=0, microsecond=0).timestamp()
    if town_start < utc_start:
        # 07:30 in the town today = 23:30 UTC yesterday: the town's today, not UTC's.
        discriminating, counts = town_start + 7.5 * H, True
    else:
        # 23:30 in the town yesterday = 15:30 UTC today: UTC's today, not the town's.
        discriminating, counts = town_start - 0.5 * H, False
    assert min(discriminating, town_start + 1) < now
    times = {"just after town midnight": (town_start + 1, True),
             "just before town midnight": (town_start - 1, False),
             "discriminating": (discriminating, counts)}
    for at, _ in times.values():
        iid = await _incident(conn, at - 60)
        await conn.execute(
            """INSERT INTO assignments (incident_id, unit_id, assigned_at, status, reason)
               VALUES ($1, $2, $3, 'done', 'test')""", iid, UNIT, store.ts(at))
    units = {u.id: u for u in await store.unit_states(conn)}
    expected = sum(1 for _, c in times.values() if c)
    utc_count = sum(1 for at, _ in times.values() if at >= utc_start)
    assert units[UNIT].cases_today == expected, (
        f"town day counts {expected}, a UTC day would count {utc_count}: {times}")
    assert expected != utc_count  # the case really tells the two days apart


# ---------------------------------------------------------------- clocks over a holiday
async def test_clocks_across_spring_festival(conn: asyncpg.Connection, in_force: None) -> None:
    """The hub's clock rows (sla_clocks) for a normal case reported on the Friday before
    Spring Festival 2026: resolve due Wednesday 25 February 16:00, three working days
    that skip the holiday and include Saturday 14 February (调休)."""
    opened = cst(2026, 2, 13, 16)
    warnings = await sla_settings.load(
        conn, sla_file=sla_config.DEFAULT_SLA_FILE,
        calendar_file=sla_config.DEFAULT_CALENDAR_FILE, tz="Asia/Shanghai", now=opened)
    assert warnings == ["the working calendar's 2027 dates are statutory-only (not from the "
                        "State Council's notice): adjusted working days are missing"]
    results = {}
    for closed_at in (cst(2026, 2, 24, 10), cst(2026, 2, 25, 17)):
        iid = await _incident(conn, opened)
        inc = await store.incident_row(conn, iid)
        assert inc is not None
        registered = workflow.CaseState(state="registered")
        summary = await sla_clocks.update_clocks(conn, inc, registered, "register", opened)
        assert summary["resolve"]["deadline"] == cst(2026, 2, 25, 16)
        row = await conn.fetchrow(
            "SELECT deadline, warn_at FROM sla_clocks WHERE incident_id = $1 "
            "AND stage = 'resolve'", iid)
        assert row["deadline"].timestamp() == cst(2026, 2, 25, 16)
        # amber at 80 % of the working time, on the Wednesday morning, not in the holiday
        assert row["warn_at"].timestamp() == pytest.approx(cst(2026, 2, 25, 10, 36))
        closed = workflow.CaseState(state="closed")
        summary = await sla_clocks.update_clocks(conn, inc, closed, "close", closed_at)
        results[closed_at] = summary["resolve"]["state"]
    assert results == {cst(2026, 2, 24, 10): "met", cst(2026, 2, 25, 17): "breached"}


# ---------------------------------------------------------------- the API and a restart
@pytest.fixture(scope="module")
def sla_hub(sla_db: str, mqtt_url: str) -> Iterator[HubProcess]:
    hub = HubProcess(sla_db, mqtt_url).start()
    yield hub
    hub.stop()


def _as(hub: HubProcess, token: str) -> httpx.Client:
    return httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {token}"},
                        timeout=10)


NEW_P2 = {"register_s": 420.0, "dispatch_s": 900.0, "accept_s": 1500.0, "arrive_s": 2700.0,
          "resolve_s": 8 * H, "resolve_working": False}


async def test_supervisor_edit_is_recorded_and_survives_a_restart(
        sla_hub: HubProcess, mqtt_url: str, sla_db: str) -> None:
    supervisor = _as(sla_hub, sla_hub.make_token("supervisor", name="sup-wang"))
    operator = _as(sla_hub, sla_hub.make_token("operator", name="op-li"))
    viewer = _as(sla_hub, sla_hub.make_token("viewer", name="viewer-zhao"))
    try:
        shown = viewer.get("/api/sla").json()
        assert shown["tz"] == "Asia/Shanghai" and shown["warn_share"] == 0.8
        # the shipped calendar's gaps (2027 statutory-only): told, not hidden
        shipped = sla_config.shipped_calendar()
        assert shown["warnings"] == shipped.coverage_warnings(
            sla.local_date(shipped.calendar, time.time()))
        assert {y["year"]: y["status"] for y in shown["calendar"]["years"]} == {
            2026: "official", 2027: "statutory-only"}
        assert "2026-02-17" in shown["calendar"]["holidays"]
        assert "2026-02-14" in shown["calendar"]["adjusted_workdays"]
        keys = {(r["category"], r["priority"]) for r in shown["limits"]}
        assert ("*", 2) in keys and ("city_order", 2) not in keys  # "*" applies to it

        url = "/api/sla/limits/city_order/2"
        r = operator.put(url, json=NEW_P2)
        assert r.status_code == 403 and r.json()["error"]["code"] == "auth.forbidden"
        bad = {**NEW_P2, "dispatch_s": 60.0}  # dispatch before register
        r = supervisor.put(url, json=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "sla.invalid", r.text
        r = supervisor.put("/api/sla/limits/City-Order/2", json=NEW_P2)
        assert r.status_code == 422 and r.json()["error"]["code"] == "request.invalid", r.text
        # A name in the body is not who acted: the token's principal is.
        r = supervisor.put(url, json={**NEW_P2, "updated_by": "mallory", "actor": "mallory"})
        assert r.status_code == 200, r.text
        assert r.json()["updated_by"] == "sup-wang"
        r = supervisor.put("/api/sla/warn-share", json={"warn_share": 0.7, "by": "mallory"})
        assert r.status_code == 200 and r.json()["updated_by"] == "sup-wang"
        assert operator.put("/api/sla/warn-share", json={"warn_share": 0.5}).status_code == 403
        # an edit of the "*" row, then undone: back to the file's value, both recorded
        star = {**NEW_P2, "resolve_s": 12 * H}
        assert supervisor.put("/api/sla/limits/*/2", json=star).status_code == 200
        r = supervisor.delete("/api/sla/limits/*/2")
        assert r.status_code == 200, r.text
        assert supervisor.delete("/api/sla/limits/*/2").json()["error"]["code"] == \
            "sla.not_edited"
    finally:
        for c in (supervisor, operator, viewer):
            c.close()

    sla_hub.stop()
    sla_hub.start()
    client = sla_hub.client
    shown = client.get("/api/sla").json()
    rows = {(r["category"], r["priority"]): r for r in shown["limits"]}
    assert rows[("city_order", 2)] == {"category": "city_order", "priority": 2, **NEW_P2,
                                       "origin": "edited"}
    assert rows[("*", 2)]["origin"] == "file" and rows[("*", 2)]["resolve_s"] == 24 * H
    assert shown["warn_share"] == 0.7
    changes = client.get("/api/sla/changes").json()
    assert [(c["actor"], c["target"], c["after"] is None) for c in changes] == [
        ("sup-wang", "limits:*:2", True),
        ("sup-wang", "limits:*:2", False),
        ("sup-wang", "warn_share", False),
        ("sup-wang", "limits:city_order:2", False)]
    assert changes[-1]["before"] is None  # the "*" row was in force before: no own row
    assert changes[-1]["after"] == NEW_P2
    assert changes[2]["before"] == 0.8 and changes[2]["after"] == 0.7

    # The restarted hub's clocks run on the edit: a new city_order p2 case.
    d = TOWN["devices"][0]
    r = client.post("/api/incidents", json={
        "category": "city_order", "qualification": "city_management", "priority": 2,
        "title": "占道经营", "lon": d["lon"], "lat": d["lat"], "reporter": "op-li"})
    assert r.status_code == 201, r.text
    c = await connect(sla_db)
    try:
        reg = await c.fetchrow(
            "SELECT started_at, deadline, warn_at FROM sla_clocks WHERE incident_id = $1 "
            "AND stage = 'register'", r.json()["id"])
    finally:
        await c.close()
    allowed = (reg["deadline"] - reg["started_at"]).total_seconds()
    assert allowed == pytest.approx(NEW_P2["register_s"])
    assert (reg["warn_at"] - reg["started_at"]).total_seconds() == pytest.approx(0.7 * allowed)


async def test_calendar_days_edited_through_the_api(sla_hub: HubProcess, sla_db: str,
                                                    in_force: None) -> None:
    """Holidays and adjusted working days: added and removed by a supervisor (recorded
    under the token's principal), refused with stable codes for a bad date, a duplicate, a
    working day that works anyway or a day that is neither; kept in the database over the
    file, which every process's next load puts in force."""
    supervisor = _as(sla_hub, sla_hub.make_token("supervisor", name="sup-chen"))
    operator = _as(sla_hub, sla_hub.make_token("operator", name="op-sun"))
    url = "/api/sla/calendar/days"
    try:
        days = {d["date"]: d for d in operator.get(url).json()}
        assert days["2026-10-01"] == {"date": "2026-10-01", "kind": "holiday",
                                      "name": "国庆节 National Day", "origin": "file"}
        assert days["2026-02-14"]["kind"] == "workday"
        town_day = {"date": "2026-11-02", "kind": "holiday", "name": "镇庆"}  # a Monday
        r = operator.post(url, json=town_day)
        assert r.status_code == 403 and r.json()["error"]["code"] == "auth.forbidden"
        for bad in ("2026-02-30", "tomorrow", "2026-1-5", "2206-11-02"):
            r = supervisor.post(url, json={**town_day, "date": bad})
            assert r.status_code == 422 and r.json()["error"]["code"] == "sla.bad_date", bad
        r = supervisor.delete(url + "/2026-13-01")
        assert r.status_code == 422 and r.json()["error"]["code"] == "sla.bad_date"
        r = supervisor.post(url, json={"date": "2026-10-01", "kind": "holiday"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "sla.day_exists"
        r = supervisor.post(url, json={"date": "2026-02-14", "kind": "holiday"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "sla.day_exists"
        r = supervisor.post(url, json={"date": "2026-12-07", "kind": "workday"})  # Monday
        assert r.status_code == 422 and r.json()["error"]["code"] == "sla.bad_day"

        r = supervisor.post(url, json={**town_day, "actor": "mallory"})
        assert r.status_code == 201 and r.json()["updated_by"] == "sup-chen", r.text
        r = supervisor.post(url, json={"date": "2026-11-07", "kind": "workday"})  # Saturday
        assert r.status_code == 201, r.text
        r = supervisor.delete(url + "/2026-10-01")
        assert r.status_code == 200, r.text
        cal = r.json()["calendar"]
        assert "2026-11-02" in cal["holidays"] and "2026-10-01" not in cal["holidays"]
        assert "2026-11-07" in cal["adjusted_workdays"]
        days = {d["date"]: d for d in cal["days"]}
        assert days["2026-10-01"]["kind"] == "normal" and days["2026-10-01"]["origin"] == "edited"
        assert days["2026-11-02"] == {**town_day, "origin": "edited", "updated_by": "sup-chen",
                                      "file_kind": "normal"}
        r = supervisor.delete(url + "/2026-10-01")
        assert r.status_code == 404 and r.json()["error"]["code"] == "sla.day_unknown"
        # an added day removed is gone altogether; a removed file day can be restored
        assert supervisor.delete(url + "/2026-11-07").status_code == 200
        assert "2026-11-07" not in {d["date"] for d in supervisor.get(url).json()}
        r = supervisor.post(url, json={"date": "2026-10-01", "kind": "holiday",
                                       "name": "国庆节 National Day"})
        assert r.status_code == 201, r.text
        assert supervisor.delete(url + "/2026-10-01").status_code == 200

        changes = [c for c in supervisor.get("/api/sla/changes").json()
                   if c["target"].startswith("calendar:")]
        assert {c["actor"] for c in changes} == {"sup-chen"}
        assert [c["target"] for c in changes][::-1] == [
            "calendar:2026-11-02", "calendar:2026-11-07", "calendar:2026-10-01",
            "calendar:2026-11-07", "calendar:2026-10-01", "calendar:2026-10-01"]
    finally:
        supervisor.close()
        operator.close()

    # Any process loading the configuration runs its clocks on the edited calendar: each
    # edit told every process, in its own transaction.
    c = await connect(sla_db)
    try:
        told = [r["t"] for r in await c.fetch(
            "SELECT payload->>'target' AS t FROM events WHERE kind = 'sla.config_changed' "
            "AND payload->>'target' LIKE 'calendar:%' ORDER BY seq")]
        assert told == [c["target"] for c in changes][::-1]
        await sla_settings.load(c, sla_file=sla_config.DEFAULT_SLA_FILE,
                                calendar_file=sla_config.DEFAULT_CALENDAR_FILE,
                                tz="Asia/Shanghai")
    finally:
        await c.close()
    cal = sla_config.InForce.calendar
    assert not cal.is_workday(datetime(2026, 11, 2).date())   # the town's own holiday
    assert cal.is_workday(datetime(2026, 10, 1).date())       # the file's, removed
    assert not cal.is_workday(datetime(2026, 11, 7).date())   # added, then removed
    # a resolve limit of one working day opened on Friday 30 Oct runs to Tuesday 3 Nov
    due = sla.add_working_seconds(cal, cst(2026, 10, 30, 17, 30), 9 * H)
    assert due == cst(2026, 11, 3, 17, 30)


async def test_an_edit_retimes_open_cases_and_reaches_every_process(
        sla_hub: HubProcess, sla_db: str, mqtt_url: str) -> None:
    """An edit is in force when it commits: the open cases' running clocks are recomputed
    in its transaction (an ``incident.updated`` each) and its ``sla.config_changed`` makes
    another process (here a web node whose periodic reload would take an hour) reload."""
    other = HubProcess(sla_db, mqtt_url, roles="web",
                       extra_env={"HUB_SLA_RELOAD_S": "3600"}).start()
    supervisor = _as(sla_hub, sla_hub.make_token("supervisor", name="sup-he"))
    c = await connect(sla_db)
    category = "retime_probe"
    try:
        d = TOWN["devices"][1]
        r = sla_hub.client.post("/api/incidents", json={
            "category": category, "qualification": "city_management", "priority": 3,
            "title": "时限探针", "lon": d["lon"], "lat": d["lat"]})
        assert r.status_code == 201, r.text
        iid = r.json()["id"]
        opened = r.json()["opened_at"]
        seq = int(await c.fetchval("SELECT max(seq) FROM events"))
        limits = {**NEW_P2, "resolve_s": 5 * H}
        r = supervisor.put(f"/api/sla/limits/{category}/3", json=limits)
        assert r.status_code == 200, r.text
        deadline = await c.fetchval("SELECT deadline FROM sla_clocks WHERE incident_id = $1 "
                                    "AND stage = 'resolve'", iid)
        assert deadline.timestamp() == pytest.approx(opened + 5 * H)
        events = await c.fetch("SELECT kind, payload FROM events WHERE seq > $1 ORDER BY seq",
                               seq)
        retimed = [e["payload"]["incident"] for e in events if e["kind"] == "incident.updated"
                   and e["payload"]["action"] == "sla_retimed"]
        mine = [inc for inc in retimed if inc["id"] == iid]
        assert len(mine) == 1
        assert mine[0]["sla"]["resolve"]["deadline"] == pytest.approx(opened + 5 * H)
        (changed,) = [e["payload"] for e in events if e["kind"] == "sla.config_changed"]
        assert changed["target"] == f"limits:{category}:3" and changed["after"] == limits
        assert changed["retimed"] == len(retimed) >= 1

        def other_has_it() -> bool:
            rows = other.client.get("/api/sla").json()["limits"]
            return any(x["category"] == category for x in rows)
        await wait_for(lambda: asyncio.to_thread(other_has_it), timeout=10)
        # undone: back to the "*" row, retimed again, the other process follows
        assert supervisor.delete(f"/api/sla/limits/{category}/3").status_code == 200
        star = next(x for x in supervisor.get("/api/sla").json()["limits"]
                    if x["category"] == "*" and x["priority"] == 3)
        deadline = await c.fetchval("SELECT deadline FROM sla_clocks WHERE incident_id = $1 "
                                    "AND stage = 'resolve'", iid)
        assert deadline.timestamp() != pytest.approx(opened + 5 * H)
        assert star["resolve_s"] != 5 * H
        await wait_for(lambda: asyncio.to_thread(lambda: not other_has_it()), timeout=10)
    finally:
        supervisor.close()
        await c.close()
        other.stop()


async def test_a_due_warning_and_an_sla_edit_take_their_locks_in_the_same_order(
        sla_db: str, conn: asyncpg.Connection) -> None:
    """An SLA edit locks the open cases, then rewrites their clocks (sla_retime); the timer's
    warning must wait for the case's lock before touching its clock, or the two deadlock
    (the API fuzzer found it: a due warning lost to "deadlock detected")."""
    iid = await _incident(conn, time.time() - 600)
    await conn.execute(
        """INSERT INTO sla_clocks (incident_id, stage, started_at, deadline, warn_at)
           VALUES ($1, 'accept', now() - interval '10 minutes', now() + interval '1 hour',
                   now() - interval '1 minute')""", iid)
    pool = await create_pool(sla_db, min_size=1, max_size=2)
    edit = await connect(sla_db)
    try:
        async with edit.transaction():
            await edit.execute("SELECT id FROM incidents WHERE id = $1 FOR UPDATE", iid)
            warning = asyncio.create_task(sla_clocks.fire(pool, iid, "accept", "warn"))
            await asyncio.sleep(0.5)  # the timer's transaction is waiting on its locks now
            assert not warning.done()
            await edit.execute("UPDATE sla_clocks SET warn_at = warn_at WHERE incident_id = $1",
                               iid)  # as the retime rewrites the clocks it locked
        assert await asyncio.wait_for(warning, 10) is True  # fired once the edit committed
        assert await conn.fetchval("SELECT warned_at IS NOT NULL FROM sla_clocks "
                                   "WHERE incident_id = $1", iid)
    finally:
        await edit.close()
        await pool.close()


def test_a_warn_share_at_the_edge_retimes_open_cases_without_a_server_error(
        sla_hub: HubProcess) -> None:
    """The smallest share the API takes (the fuzzer sent 5e-324) with cases running."""
    d = TOWN["devices"][3]
    made = sla_hub.client.post("/api/incidents", json={
        "category": "city_order", "qualification": "city_management", "priority": 3,
        "title": "占道经营 (edge share)", "lon": d["lon"], "lat": d["lat"]})
    assert made.status_code == 201, made.text
    supervisor = _as(sla_hub, sla_hub.make_token("supervisor", name="sup-edge"))
    try:
        for share in (5e-324, 0.999999999, 0.8):
            r = supervisor.put("/api/sla/warn-share", json={"warn_share": share})
            assert r.status_code == 200, r.text
    finally:
        supervisor.close()
