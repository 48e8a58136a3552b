"""Scenario files (simulators/scenarios/*.toml): the loader and validator, the readings a
scenario sends run through the hub's own rule code, and five scenarios played end to end
against a real hub (real Mosquitto and TimescaleDB), asserting what the hub does at each
step: which alarm, which case, which unit, which SLA state.

The hub of this module runs on a scratch database with every clock shrunk by the scenarios'
time scale: SLA limits (``HUB_SLA_TIME_SCALE``) and the reporting intervals of the devices
whose silence the no-data rule must notice. Scenarios that use disjoint units play
concurrently; after each test the players cancel their cases and clear their alarms.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import math
import os
import sys
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from core.db import connect
from ingest import rules
from ingest.mqtt import BrokerAddress
from simulators import scenario_model, scenario_parse, scenario_programs
from simulators.mqtt_pub import Publisher
from simulators.scenario import Player, PlayResult, ScenarioError
from simulators.scenario_selectors import _Town, resolve_place, select_devices, select_units
from tests.conftest import (
    ROOT,
    HubProcess,
    create_database,
    drop_database,
    gateway_url,
    town_doc,
)

TOWN = town_doc()
DEVICES = {d["id"]: d for d in TOWN["devices"]}
# Scenario seconds per wall second. 30 plays a 10-minute storyline in 20 s, and turns the
# 30 s / 60 s device intervals into whole seconds (the column is an integer).
SPEED = 30.0
RULES = tomllib.loads((ROOT / "simulators" / "data" / "rules.toml").read_text("utf-8"))["rules"]
REQUIRED = ("gas_leak", "rush_hour_collision", "pm25_episode", "river_rising", "grid_offline")


def rule(rule_id: str) -> rules.Rule:
    r = RULES[rule_id]
    return rules.Rule(id=rule_id, name=r["name"], kind=r["kind"], metric=r.get("metric"),
                      device_model=r.get("device_model"), params=r.get("params", {}),
                      severity=r["severity"])


def verdicts(name: str, rule_ids: list[str], *, speed: float, t0: float
             ) -> list[tuple[float, str, str, str]]:
    """(scenario second, rule, device, verdict) for every verdict the hub's rule code gives
    on the readings the scenario sends."""
    sc = scenario_parse.load(name, TOWN)
    checks = [rule(r) for r in rule_ids]
    states: dict[tuple[str, str], rules.RuleState] = {}
    out: list[tuple[float, str, str, str]] = []
    for ts, dev, values in scenario_programs.dry_run(sc, t0=t0, time_scale=speed):
        for r in checks:
            if r.metric not in values or (r.device_model and
                                          DEVICES[dev]["model"] != r.device_model):
                continue
            st, verdict = rules.evaluate(r, states.get((r.id, dev), rules.INITIAL),
                                         values[r.metric], ts)
            states[(r.id, dev)] = st
            if verdict:
                out.append(((ts - t0) * speed, r.id, dev, verdict))
    return out


# ================================================================ pure: files and loader

def test_every_required_scenario_ships_and_validates() -> None:
    names = scenario_model.available()
    assert set(REQUIRED) <= set(names)
    for name in names:
        sc = scenario_parse.load(name, TOWN)
        assert sc.name == name and sc.title and sc.summary and sc.devices
        assert sc.expectations(), f"{name} checks nothing"
        assert sc.duration >= sc.steps[-1].at
        kinds = {e.kind for e in sc.expectations()}
        assert kinds & {"alarm", "situation"}, f"{name} expects no alarm"


@pytest.mark.parametrize(("text", "want"), [
    ("90", 90.0), ("90s", 90.0), ("2m", 120.0), ("1m30s", 90.0), ("1h", 3600.0),
    ("-24h", -86400.0), ("1.5m", 90.0), (45, 45.0), (2.5, 2.5),
])
def test_durations(text: Any, want: float) -> None:
    assert scenario_model.parse_duration(text, "x") == want


@pytest.mark.parametrize("text", ["", "m", "90 s", "2x", "1s2m", True, None])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ScenarioError, match=r"x: .* is not a duration|x: expected a duration"):
        scenario_model.parse_duration(text, "x")


def _doc(**steps: Any) -> dict[str, Any]:
    return {"scenario": {"name": "t", "title": "T", "seed": 1},
            "steps": [{"at": 0, "publish": {"devices": "SAF-0006",
                                            "values": {"gas_lel_pct": 30}}},
                      *steps.values()]}


def _parse(doc: dict[str, Any]) -> scenario_model.Scenario:
    return scenario_parse.parse(doc, TOWN, name="t")


BAD: list[tuple[str, Any, str]] = [
    ("name", lambda d: d["scenario"].update(name="other"), "must match the file name 't'"),
    ("unknown top", lambda d: d.update(stepz=[]), r"unknown field\(s\) stepz"),
    ("no seed", lambda d: d["scenario"].pop("seed"), r"missing field\(s\) seed"),
    ("unknown device", lambda d: d["steps"][0]["publish"].update(devices="NOPE"),
     r"steps\[0\] \(\+0s\)\.publish\.devices: unknown device\(s\) NOPE"),
    ("empty selection", lambda d: d["steps"][0]["publish"].update(
        devices={"model": "gas_detector", "grid": "G13-08", "zone": "rural"}),
     "selects no device"),
    ("bad metric", lambda d: d["steps"][0]["publish"].update(values={"pm25": 3}),
     r"unknown field\(s\) pm25"),
    ("bad ramp", lambda d: d["steps"][0]["publish"].update(values={"gas_lel_pct": [1]}),
     r"values\.gas_lel_pct: a ramp is \[from, to\]"),
    ("two actions", lambda d: d["steps"][0].update(offline={"devices": "SAF-0006"}),
     "one action per step"),
    ("order", lambda d: d["steps"].append({"at": "-1s", "note": "x"}),
     "steps start at 0"),
    ("time order", lambda d: d["steps"][0].update(at="1m") or d["steps"].append(
        {"at": "10s", "offline": {"devices": "SAF-0006"}}), "must be in time order"),
    ("empty step", lambda d: d["steps"].append({"at": 5, "note": "x"}), "needs an action"),
    ("unknown label", lambda d: d["steps"].append(
        {"at": 5, "action": {"case": "@minor", "action": "accept", "actor": "@assigned"}}),
     "no earlier report is labelled 'minor'"),
    ("unknown action", lambda d: d["steps"].append(
        {"at": 5, "report": {"as": "a", "category": "x", "qualification": "y", "title": "z",
                             "near": "SAF-0006"}}) or d["steps"].append(
        {"at": 6, "action": {"case": "@a", "action": "fly", "actor": "op"}}),
     "unknown action 'fly'"),
    ("report place", lambda d: d["steps"].append(
        {"at": 5, "report": {"as": "a", "category": "x", "qualification": "y",
                             "title": "z"}}), "give a place"),
    ("open311 via", lambda d: d["steps"].append(
        {"at": 5, "report": {"as": "a", "via": "fax", "near": "SAF-0006"}}),
     "\"api\" or \"open311\""),
    ("two subjects", lambda d: d["steps"][0].update(
        expect=[{"alarm": "gas_lel_high", "case": "gas_leak"}]), "exactly one of"),
    ("alarm state", lambda d: d["steps"][0].update(
        expect=[{"alarm": "gas_lel_high", "state": "burning"}]), "unknown state"),
    ("sla stage", lambda d: d["steps"][0].update(
        expect=[{"case": "gas_leak", "sla": {"lunch": "ok"}}]), r"unknown field\(s\) lunch"),
    ("sla state", lambda d: d["steps"][0].update(
        expect=[{"case": "gas_leak", "sla": {"dispatch": "late"}}]), "unknown state"),
    ("situation grid", lambda d: d["steps"][0].update(
        expect=[{"situation": "G13"}]), "no second-level grid"),
    ("label count", lambda d: d["steps"].append(
        {"at": 5, "report": {"as": "a", "category": "x", "qualification": "y", "title": "z",
                             "near": "SAF-0006"},
         "expect": [{"case": "@a", "count": 1}]}), "apply to a category"),
    ("unit", lambda d: d["steps"][0].update(expect=[{"case": "gas_leak", "unit": "SQ-99"}]),
     "unknown unit 'SQ-99'"),
    ("history length", lambda d: d.update(history=[{
        "devices": "ENV-0001", "every": "1h", "values": {"pm25": [1, 2], "pm10": [1]}}]),
     "the same number of values"),
    ("history too old", lambda d: d.update(history=[{
        "devices": "ENV-0001", "every": "1d", "values": {"pm25": [1] * 8}}]),
     "is not a duration"),
    ("history 7 days", lambda d: d.update(history=[{
        "devices": "ENV-0001", "every": "24h", "values": {"pm25": [1] * 7}}]),
     "more than 7 days"),
    ("duration", lambda d: d["scenario"].update(duration="-1s"), "ends before the last step"),
    ("falloff", lambda d: d["steps"][0]["publish"].update(falloff_m=100),
     "need a source device"),
    ("gps units", lambda d: d["steps"].append(
        {"at": 1, "gps": {"units": {"qualification": "flying"}, "near": "home"}}),
     "selects no unit"),
]


@pytest.mark.parametrize(("case", "mutate", "message"), BAD, ids=[b[0] for b in BAD])
def test_invalid_files_say_where_and_why(case: str, mutate: Any, message: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(ScenarioError, match=message):
        _parse(doc)


def test_bad_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[scenario\nname = 1", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"broken\.toml: not valid TOML"):
        scenario_parse.load(bad, TOWN)
    with pytest.raises(ScenarioError, match=r"no scenario file .*available: .*gas_leak"):
        scenario_parse.load("no_such_story", TOWN)


def test_selectors() -> None:
    town = _Town(TOWN)
    near = select_devices(town, {"model": "gas_detector", "near": "SAF-0006",
                                        "within_m": 450}, "x")
    assert near == ("SAF-0006", "SAF-0030", "SAF-0034", "SAF-0099")
    assert all(town.distance_m(DEVICES[d], DEVICES["SAF-0006"]) <= 450 for d in near)
    grid = select_devices(town, {"grid": "G13-08"}, "x")
    assert len(grid) == 7 and {DEVICES[d]["grid"] for d in grid} == {"G13-08"}
    first = select_devices(town, {"grid": "G13", "model": "air_station"}, "x")
    assert first and all(DEVICES[d]["grid"].startswith("G13-") for d in first)
    ind = select_devices(town, {"model": "air_station", "zone": "industrial"}, "x")
    rest = select_devices(town, {"model": "air_station", "exclude": {
        "model": "air_station", "zone": "industrial"}}, "x")
    assert len(ind) == 14 and len(rest) == 16 and not set(ind) & set(rest)
    river = select_devices(town, {"name_contains": "璜塘河"}, "x")
    assert "ENV-0079" in river and all("璜塘河" in DEVICES[d]["name"] for d in river)
    assert select_units(town, {"qualification": "water"}, "x") == (
        "SQ-03", "SQ-06", "SQ-08", "SQ-10")
    assert set(select_units(town, {"type": "police"}, "x")) == {
        f"PO-{i:02d}" for i in range(1, 13)}


def test_places_and_offsets() -> None:
    lon, lat = resolve_place(TOWN, {"near": "SAF-0011", "offset_m": (300.0, -400.0)})
    d = DEVICES["SAF-0011"]
    east = (lon - d["lon"]) * 111_320 * math.cos(math.radians(d["lat"]))
    north = (lat - d["lat"]) * 110_574
    assert abs(east - 300) < 3 and abs(north + 400) < 3
    unit = TOWN["units"][0]
    assert resolve_place(TOWN, {"near": "home", "offset_m": (0, 0)}, unit["id"]) == (
        round(unit["lon"], 6), round(unit["lat"], 6))


def test_programs_ramp_hold_fall_off_and_return_to_normal() -> None:
    doc = _doc()
    doc["steps"] = [
        {"at": 0, "publish": {"devices": ["SAF-0006", "SAF-0099"], "values": "normal"}},
        {"at": 60, "publish": {"devices": ["SAF-0006", "SAF-0099"], "source": "SAF-0006",
                               "values": {"gas_lel_pct": [2, 62]}, "over": "2m",
                               "falloff_m": 700, "spread_mps": 4}},
        {"at": 400, "offline": {"devices": "SAF-0099"}},
        {"at": 500, "online": {"devices": "SAF-0099"}},
    ]
    sc = _parse(doc)
    t0 = 1_700_000_000.0
    rs = scenario_programs.dry_run(sc, t0=t0, time_scale=1.0)
    by = {d: [(ts - t0, v["gas_lel_pct"]) for ts, dd, v in rs if dd == d] for d in sc.devices}
    src = dict(by["SAF-0006"])
    assert src[60] == 2.0 and src[120] == 32.0 and src[180] == 62.0 and src[300] == 62.0
    dist = _Town(TOWN).distance_m(DEVICES["SAF-0099"], DEVICES["SAF-0006"])
    delay = dist / 4
    far = dict(by["SAF-0099"])
    peak = 2 + 60 * math.exp(-dist / 700)
    assert far[390] == pytest.approx(peak, abs=0.06)  # held after its (later) ramp
    assert max(v for t, v in by["SAF-0099"] if t < 60 + delay) < 10  # normal before
    assert not [t for t, _ in by["SAF-0099"] if 400 < t < 500]  # silent while offline
    assert all(v < 10 for t, v in by["SAF-0099"] if t >= 500)  # normal again
    # primed before the start: five normal readings one interval apart
    assert [t for t, _ in by["SAF-0006"] if t < 0] == [-150, -120, -90, -60, -30]


def test_history_is_back_dated_hourly_and_ends_an_hour_ago() -> None:
    sc = scenario_parse.load("pm25_episode", TOWN)
    h = sc.history[0]
    now = 1_700_000_123.0
    rs = scenario_programs.history_readings(h, "ENV-0005", now, sc.seed)
    assert len(rs) == 23 and rs[-1][0] == now - 3600 and rs[0][0] == now - 23 * 3600
    assert all(b[0] - a[0] == 3600 for a, b in itertools.pairwise(rs))
    assert all(abs(v["pm25"] - x) <= h.jitter + 1e-9
               for (_, v), x in zip(rs, h.values["pm25"], strict=True))
    assert rs == scenario_programs.history_readings(h, "ENV-0005", now, sc.seed)  # seeded


# ============================================ pure: the hub's rules over what is sent

@pytest.mark.parametrize("speed", [1.0, SPEED])
def test_gas_leak_warns_then_alarms_and_the_plume_reaches_the_neighbours(speed: float
                                                                           ) -> None:
    v = verdicts("gas_leak", ["gas_rising_fast", "gas_lel_high", "gas_lel_danger"],
                 speed=speed, t0=time.time())
    raised = {(r, d): t for t, r, d, verdict in v if verdict == "raise"}
    assert raised[("gas_rising_fast", "SAF-0006")] < raised[("gas_lel_high", "SAF-0006")]
    assert {d for r, d in raised if r == "gas_lel_high"} == {
        "SAF-0006", "SAF-0030", "SAF-0034", "SAF-0099"}
    assert {d for r, d in raised if r == "gas_lel_danger"} == {"SAF-0006"}
    assert 70 < raised[("gas_lel_high", "SAF-0006")] <= 140  # before the step that checks it
    assert max(t for (r, _), t in raised.items() if r == "gas_lel_high") < 300


@pytest.mark.parametrize("offset", [5.0, 1800.0, 3590.0, 3599.5])
@pytest.mark.parametrize("speed", [1.0, SPEED])
def test_pm25_history_lifts_only_the_industrial_24h_means_over_the_limit(
        speed: float, offset: float) -> None:
    t0 = 1_700_000_000 - 1_700_000_000 % 3600 + offset  # around an hour's turn as well
    v = verdicts("pm25_episode", ["pm25_high"], speed=speed, t0=t0)
    industrial = {d["id"] for d in TOWN["devices"]
                  if d["model"] == "air_station" and d["zone"] == "industrial"}
    assert {d for _, _, d, verdict in v if verdict == "raise"} == industrial
    assert all(0 < t <= 240 for t, *_ in v)  # none from the history, all by the check


@pytest.mark.parametrize(("name", "rule_id", "devices", "raise_by", "clear_by"), [
    ("river_rising", "water_level_high", {"ENV-0079"}, 240, 620),
    ("rush_hour_collision", "traffic_jam", {"TRF-0025", "TRF-0078"}, 160, 270),
])
def test_threshold_stories_raise_and_clear_in_time(name: str, rule_id: str,
                                                   devices: set[str], raise_by: float,
                                                   clear_by: float) -> None:
    v = verdicts(name, [rule_id], speed=SPEED, t0=time.time())
    assert {d for _, _, d, verdict in v if verdict == "raise"} == devices
    assert {d for _, _, d, verdict in v if verdict == "clear"} == devices
    assert max(t for t, *_, verdict in v if verdict == "raise") <= raise_by
    assert max(t for t, *_, verdict in v if verdict == "clear") <= clear_by


def test_dry_run_is_seeded() -> None:
    sc = scenario_parse.load("rush_hour_collision", TOWN)
    a = scenario_programs.dry_run(sc, t0=1_700_000_000.0, time_scale=SPEED)
    b = scenario_programs.dry_run(copy.deepcopy(sc), t0=1_700_000_000.0, time_scale=SPEED)
    assert a == b


# ================================================================ end to end

@pytest_asyncio.fixture(scope="module")
async def scenario_db(base_db_url: str) -> AsyncIterator[str]:
    name = f"gridhub_s{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = await create_database(base_db_url, name)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "load-town", env={**os.environ, "HUB_DATABASE_URL": url},
        stdout=asyncio.subprocess.DEVNULL)
    assert await proc.wait() == 0
    conn = await connect(url)
    # The grid that goes dark: its devices' intervals run at the scenario's pace, so the
    # no-data rule notices silence in scenario time (30 s -> 1 s, 60 s -> 2 s).
    dark = list(scenario_parse.load("grid_offline", TOWN).devices)
    await conn.execute("UPDATE devices SET interval_s = interval_s / $2 WHERE id = ANY($1)",
                       dark, int(SPEED))
    await conn.close()
    yield url
    await drop_database(base_db_url, name)


@pytest.fixture(scope="module")
def scenario_hub(scenario_db: str, mqtt_url: str) -> Iterator[HubProcess]:
    hub = HubProcess(scenario_db, mqtt_url, client_id=f"scen-{uuid.uuid4().hex[:6]}",
                     extra_env={"HUB_SLA_TIME_SCALE": repr(1.0 / SPEED)}).start()
    yield hub
    hub.stop()


@pytest_asyncio.fixture
async def sdb(scenario_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(scenario_db)
    yield conn
    await conn.close()


@pytest_asyncio.fixture
async def pub(mqtt_url: str) -> AsyncIterator[Publisher]:
    p = Publisher(BrokerAddress.parse(gateway_url(mqtt_url)), f"test-scen-{uuid.uuid4().hex[:8]}")
    assert await p.start(), "publisher could not connect"
    yield p
    await p.stop()


async def play(hub: HubProcess, pub: Publisher, *names: str) -> dict[str, PlayResult]:
    """Play scenarios together (they must not share units), then clean up after them."""
    players = [Player(scenario_parse.load(n, TOWN), hub_url=hub.url, publisher=pub, token=hub.token,
                      time_scale=SPEED) for n in names]
    results = await asyncio.gather(*(p.play() for p in players))
    for p in players:
        await p.cleanup()
    for r in results:
        print(r.report())  # shown with -s, or on a failure
    for r in results:
        assert r.ok, r.report()
        assert r.skipped == 0 and r.passed == len(
            scenario_parse.load(r.scenario, TOWN).expectations()), r.report()
    return {r.scenario: r for r in results}


async def test_gas_leak_and_a_grid_going_dark(scenario_hub: HubProcess, pub: Publisher,
                                              sdb: asyncpg.Connection) -> None:
    res = await play(scenario_hub, pub, "gas_leak", "grid_offline")
    # the same facts, straight from the database
    minor = res["gas_leak"].cases["minor"]
    leak = await sdb.fetchrow("SELECT * FROM incidents WHERE category = 'gas_leak' AND "
                              "grid_id = 'G09-07'")
    assert leak is not None and leak["priority"] == 1
    assert await sdb.fetchval("SELECT count(*) FROM alarms WHERE incident_id = $1 AND "
                              "rule_id = 'gas_lel_high'", leak["id"]) == 4
    first = await sdb.fetchrow("SELECT unit_id, status FROM assignments WHERE incident_id = $1"
                               " ORDER BY id LIMIT 1", minor)
    assert first is not None
    assert (first["unit_id"], first["status"]) == ("SQ-01", "preempted")
    assert await sdb.fetchval("SELECT unit_id FROM assignments WHERE incident_id = $1 ORDER "
                              "BY id LIMIT 1", leak["id"]) == "SQ-01"
    assert await sdb.fetchval("SELECT count(*) FROM supervisor_alerts WHERE incident_id = $1 "
                              "AND kind = 'preempted'", minor) == 1
    storms = await sdb.fetch("SELECT * FROM alarms WHERE situation = 'storm:G13-08'")
    assert len(storms) == 1
    assert storms[0]["state"] == "cleared" and storms[0]["clear_reason"] == "devices back online"
    assert await sdb.fetchval(  # it grew to the whole grid, then shrank as devices came back
        "SELECT max((payload->'alarm'->>'members')::int) FROM events WHERE "
        "(payload->'alarm'->>'id')::bigint = $1", storms[0]["id"]) == 7
    dark = list(scenario_parse.load("grid_offline", TOWN).devices)
    assert await sdb.fetchval(
        "SELECT count(*) FROM alarms WHERE rule_id = 'device_offline' AND device_id = ANY($1) "
        "AND clear_reason IS DISTINCT FROM 'grouped into situation'", dark) == 0


async def test_river_rising_and_rush_hour_collision(scenario_hub: HubProcess, pub: Publisher,
                                                    sdb: asyncpg.Connection) -> None:
    res = await play(scenario_hub, pub, "river_rising", "rush_hour_collision")
    citizen = res["river_rising"].cases["citizen"]
    row = await sdb.fetchrow("SELECT source, category, sla FROM incidents WHERE id = $1",
                             citizen)
    assert row is not None
    assert (row["source"], row["category"]) == ("open311", "flooding")
    assert await sdb.fetchval("SELECT count(*) FROM events WHERE kind = 'sla.warned' AND "
                              "(payload->'incident'->>'id')::bigint = $1 AND "
                              "payload->>'stage' = 'register'", citizen) == 1
    assert row["sla"]["register"]["state"] == "met"  # registered after amber, before red
    flood = await sdb.fetchrow("SELECT * FROM incidents WHERE category = 'flood_risk'")
    assert flood is not None and flood["alarms_cleared"] and flood["priority"] == 2
    jam = await sdb.fetchrow("SELECT * FROM incidents WHERE category = 'traffic_congestion'")
    assert jam is not None and jam["grid_id"] == "G18-08" and jam["alarms_cleared"]
    accident = res["rush_hour_collision"].cases["accident"]
    assert await sdb.fetchval("SELECT unit_id FROM assignments WHERE incident_id = $1 "
                              "ORDER BY id LIMIT 1", accident) == "PO-11"
    # cleanup released every unit the stories used
    busy = await sdb.fetch("SELECT id FROM units WHERE current_incident IS NOT NULL")
    assert not busy, busy


async def test_pm25_episode(scenario_hub: HubProcess, pub: Publisher,
                            sdb: asyncpg.Connection) -> None:
    await play(scenario_hub, pub, "pm25_episode")
    industrial = [d["id"] for d in TOWN["devices"]
                  if d["model"] == "air_station" and d["zone"] == "industrial"]
    rows = await sdb.fetch("SELECT device_id, acked_by FROM alarms WHERE rule_id = "
                           "'pm25_high'")
    assert sorted(r["device_id"] for r in rows) == sorted(industrial)
    # acknowledged under the scenario player's login (the hub's token), not the scenario's
    # descriptive "by" name
    assert {r["acked_by"] for r in rows} == {"test-admin"}
    # the 24 h mean came from a day of back-dated hourly readings, stored as such
    assert await sdb.fetchval(
        "SELECT count(*) FROM telemetry WHERE device_id = $1 AND metric = 'pm25' AND "
        "ts < now() - interval '50 minutes'", industrial[0]) == 23


async def test_check_says_what_the_hub_did_instead() -> None:
    """``Player.check`` against canned API answers: each failed expectation is one message
    naming the case or alarm, what was expected and what the hub shows."""
    sc = scenario_parse.load("gas_leak", TOWN)
    incident = {"id": 7, "category": "gas_leak", "priority": 2, "grid_id": "G09-07",
                "state": "dispatched", "source": "alarm", "assigned_unit": "SQ-06",
                "alarms_cleared": False,
                "sla": {"register": {"state": "met"}, "dispatch": {"state": "breached"}}}
    answers: dict[str, Any] = {
        "/api/alarms": [{"id": 3, "rule_id": "gas_lel_high", "device_id": "SAF-0006",
                         "state": "cleared", "severity": "critical", "value": 30.0,
                         "raised_at": 10.0, "situation": None, "incident_id": 7}],
        "/api/incidents": [incident],
        "/api/incidents/7": {"incident": incident, "assignments": [], "alarms": [{}]},
        "/api/units": [{"id": "SQ-06", "type": "squad", "qualifications": ["water"]}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[request.url.path])

    player = Player(sc, hub_url="http://hub", publisher=None,  # type: ignore[arg-type]
                    time_scale=SPEED)
    player.client = httpx.AsyncClient(base_url="http://hub",
                                       transport=httpx.MockTransport(handler))
    by_step = {e.describe(): e for e in sc.expectations()}
    want = [e for e in sc.expectations() if e.kind == "case" and e.subject == "gas_leak"
            and e.spec.get("count") == 1 and "sla" in e.spec]
    want.append(next(e for d, e in by_step.items() if d.startswith("alarm gas_lel_high")))
    failures = await player.check(want)
    await player.client.aclose()
    text = "\n".join(failures)
    assert "case #7 (G09-07): priority 2, expected 1" in text
    assert "SLA dispatch is breached, expected met" in text
    assert "unit SQ-06 (water) lacks work_safety" in text
    assert "no open alarm at SAF-0006 (only #3 cleared)" in text
    assert len(failures) == 2  # one message per expectation
