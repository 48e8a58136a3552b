"""The demo town's past, planned: pure, seeded, time passed in.

``plan_cases(...)`` returns the cases of the last ``days`` days as ``CaseStory`` values:
when each was reported, by whom (a sensor alarm, a citizen through Open311, a hotline call,
a grid worker, an operator), and how its people behave (simulators/crew_behaviour.py, the
same answers the live crews draw): late answers the hub escalates, declines with a reason,
category-dependent handling, failed verifications (rework), extensions, cases shelved while
another department is consulted and duplicates cancelled at registration. Nothing here
touches the database; simulators/backfill.py plays the stories through the product's own
services, at the stories' times.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from simulators.crew_behaviour import Answer, CrewBehaviour

# How a township's cases arrive by source (shares): sensors raise most, then citizens
# (Open311 app and the 12345 hotline), then the grid workers' own patrol finds.
SOURCE_SHARES = (("alarm", 0.35), ("open311", 0.2), ("hotline", 0.2), ("grid_worker", 0.15),
                 ("operator", 0.1))
# Reports by hour of the town's day (relative weights, 00..23): quiet nights, a morning and
# an afternoon peak, as a command center's logs show.
HOUR_WEIGHTS = (0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 1.0, 1.4, 1.5, 1.4, 1.2,
                1.0, 1.1, 1.3, 1.4, 1.3, 1.2, 1.0, 0.9, 0.7, 0.5, 0.4, 0.3)
TOWN_UTC_OFFSET_S = 8 * 3600  # the demo town is in China (UTC+8)
# An operator registers a citizen's, a hotline's or a grid worker's report within minutes.
REGISTER_S = (60.0, 900.0)
# Shares of registered reports that are duplicates (cancelled) or shelved while another
# department is consulted; of the shelved, the share reopened later (the rest stay shelved:
# the console's "挂账" list is never empty in a real town either).
CANCEL_P = 0.05
SHELVE_P = 0.05
REOPEN_P = 0.6
SHELVE_AFTER_S = (120.0, 600.0)
REOPEN_AFTER_S = (3 * 3600.0, 30 * 3600.0)
# A crew asks for a few more dispatches at most before someone accepts (the planner then
# has barred the ones that declined or timed out).
MAX_ANSWERS = 3
# Travel to the scene (s): the town is about 10 km across.
TRAVEL_S = (180.0, 1200.0)
# A supervisor answers an extension request within this long (s).
APPROVE_S = (300.0, 1800.0)
# An extension's extra work (share of the handling time).
EXTENSION_SHARE = (0.5, 1.5)
# After feedback: the grid worker checks, the operator closes, evaluates, archives (s).
VERIFY_S = (600.0, 7200.0)
CLOSE_S = (120.0, 1800.0)
EVALUATE_S = (600.0, 14400.0)
ARCHIVE_S = (3600.0, 86400.0)
# Stories of history take longer than the live pulse's: a real day's handling, not a demo's.
HISTORY_HANDLING_SCALE = 3.0

CANCEL_REASONS = ("重复上报，已并案处理", "经核实不属实")
SHELVE_REASONS = ("需住建、水务等部门会商后处置", "涉及产权纠纷，待司法确认")
DESCRIPTIONS = {
    "alarm": "设备告警自动立案",
    "open311": "市民通过“随手拍”上报",
    "hotline": "12345热线转办",
    "grid_worker": "网格员巡查发现",
    "operator": "指挥中心值班员发现",
}


@dataclass(frozen=True, slots=True)
class Shelving:
    after_s: float                 # after registration
    reason: str
    reopen_after_s: float | None   # None: stays shelved


@dataclass(frozen=True, slots=True)
class CaseStory:
    """One past case: what was reported, and how it went (times in UNIX seconds or as
    delays after the previous step)."""

    opened_at: float
    source: str
    category: str
    qualification: str
    priority: int
    title: str
    description: str
    lon: float
    lat: float
    grid: str | None
    rule_id: str | None = None     # an alarm's rule and device
    device_id: str | None = None
    register_after_s: float = 0.0
    cancel_reason: str | None = None
    shelving: Shelving | None = None
    answers: tuple[Answer, ...] = ()
    travel_s: float = 600.0
    rounds: tuple[float, ...] = (600.0,)   # handling per round: the first, then reworks
    fail_reasons: tuple[str, ...] = ()      # one per failed verification
    extension: str | None = None
    extension_extra_s: float = 0.0
    approve_after_s: float = 600.0
    verify_after_s: float = 1800.0
    close_after_s: float = 600.0
    evaluate_after_s: float = 3600.0
    archive_after_s: float = 43200.0


def report_times(rng: random.Random, since: float, until: float, n: int) -> list[float]:
    """``n`` report times in ``[since, until)``, by ``HOUR_WEIGHTS`` of the town's hours.

    Each time takes the same three draws whatever the window's time of day (a town day, an
    hour by weight, a moment in it; one past the window's end wraps to its start), so a
    seed gives the same stories, shifted, whenever it is played."""
    span = until - since
    if n <= 0 or span <= 0:
        return []
    day0 = since - (since + TOWN_UTC_OFFSET_S) % 86400.0  # the town's midnight before
    days = math.ceil((until - day0) / 86400.0)
    hours = range(24)
    out = []
    for _ in range(n):
        d = rng.randrange(days)
        h = rng.choices(hours, HOUR_WEIGHTS)[0]
        t = day0 + d * 86400.0 + (h + rng.random()) * 3600.0
        out.append(since + (t - since) % span)
    return sorted(out)


def _pick_source(rng: random.Random) -> str:
    x = rng.random()
    for name, share in SOURCE_SHARES:
        if x < share:
            return name
        x -= share
    return SOURCE_SHARES[-1][0]


def _near(rng: random.Random, lon: float, lat: float) -> tuple[float, float]:
    """A point within about 150 m (a report is not at the sensor's exact spot)."""
    return (lon + rng.uniform(-0.0015, 0.0015), lat + rng.uniform(-0.0012, 0.0012))


def grid_point(rng: random.Random, town: Mapping[str, Any],
               grids: Sequence[Mapping[str, Any]] | None = None
               ) -> tuple[float, float, str | None]:
    """A place in a random second-level grid (near its middle) and the grid's id; near the
    command center if the town has no grids."""
    if grids is None:
        grids = [g for g in town["grids"]["features"] if g["properties"].get("level") == 2]
    if not grids:
        cc = town["command_center"]
        lon, lat = _near(rng, float(cc["lon"]), float(cc["lat"]))
        return lon, lat, None
    g = rng.choice(list(grids))
    ring = g["geometry"]["coordinates"][0]
    lon = sum(p[0] for p in ring[:-1]) / max(1, len(ring) - 1)
    lat = sum(p[1] for p in ring[:-1]) / max(1, len(ring) - 1)
    lon, lat = _near(rng, lon, lat)
    return lon, lat, str(g["properties"]["id"])


def _answers(crews: CrewBehaviour, priority: int, accept_timeout_s: Mapping[int, float]
             ) -> tuple[Answer, ...]:
    out: list[Answer] = []
    timeout = accept_timeout_s.get(priority, 900.0)
    while len(out) < MAX_ANSWERS - 1:
        a = crews.answer(timeout)
        out.append(a)
        if not a.late and a.decline_reason is None:
            return tuple(out)
    # the last crew asked accepts in time
    return (*out, Answer(crews.rng.uniform(10.0, 60.0)))


def plan_cases(*, town: Mapping[str, Any], rules: Sequence[Mapping[str, Any]],
               services: Sequence[Mapping[str, Any]], since: float, until: float,
               cases_per_day: float, seed: int,
               accept_timeout_s: Mapping[int, float]) -> list[CaseStory]:
    """The stories of the cases reported in ``[since, until)``, in report order.

    ``rules``: the town's rules that open cases (``id, name, incident_category,
    qualification, priority, device_model``); ``services``: the Open311 services (``code,
    name, qualification, priority``); ``accept_timeout_s``: the hub's accept time-out by
    priority (late answers are drawn past it)."""
    rng = random.Random(f"history:{seed}")
    crews = CrewBehaviour(f"history:{seed}")
    n = max(0, math.floor(cases_per_day * (until - since) / 86400.0))
    devices_by_model: dict[str, list[Mapping[str, Any]]] = {}
    for d in town["devices"]:
        devices_by_model.setdefault(d["model"], []).append(d)
    alarm_rules = [r for r in rules if r.get("incident_category")
                   and devices_by_model.get(r.get("device_model") or "")]
    grids = [g for g in town["grids"]["features"] if g["properties"].get("level") == 2]
    stories: list[CaseStory] = []
    for t in report_times(rng, since, until, n):
        source = _pick_source(rng)
        if source == "alarm" and not alarm_rules:
            source = "hotline"
        rule_id = device_id = None
        if source == "alarm":
            rule = rng.choice(alarm_rules)
            dev = rng.choice(devices_by_model[rule["device_model"]])
            category, qual = str(rule["incident_category"]), str(rule["qualification"] or "")
            priority = int(rule["priority"])
            title = f"{rule['name']} · {dev.get('name', dev['id'])}"
            lon, lat, grid = float(dev["lon"]), float(dev["lat"]), dev.get("grid")
            rule_id, device_id = str(rule["id"]), str(dev["id"])
        else:
            svc = rng.choice(list(services))
            category, qual = str(svc["code"]), str(svc["qualification"])
            priority = int(svc["priority"])
            title = (f"市民报告：{svc['name']}" if source == "open311"
                     else f"{svc['name']}（{DESCRIPTIONS[source][:4]}）")
            lon, lat, grid = grid_point(rng, town, grids)
        waits = source not in ("alarm", "operator")  # registered by an operator
        cancel = shelving = None
        if waits and rng.random() < CANCEL_P:
            cancel = rng.choice(CANCEL_REASONS)
        elif rng.random() < SHELVE_P:
            shelving = Shelving(rng.uniform(*SHELVE_AFTER_S), rng.choice(SHELVE_REASONS),
                                rng.uniform(*REOPEN_AFTER_S) if rng.random() < REOPEN_P
                                else None)
        rounds = [crews.handling_s(category) * HISTORY_HANDLING_SCALE]
        fails: list[str] = []
        while len(fails) < 2:
            why = crews.verification()
            if why is None:
                break
            fails.append(why)
            rounds.append(crews.handling_s(category) * HISTORY_HANDLING_SCALE * 0.5)
        ext = crews.extension()
        stories.append(CaseStory(
            opened_at=t, source=source, category=category, qualification=qual,
            priority=priority, title=title, description=DESCRIPTIONS[source],
            lon=lon, lat=lat, grid=grid, rule_id=rule_id, device_id=device_id,
            register_after_s=rng.uniform(*REGISTER_S) if waits else 0.0,
            cancel_reason=cancel, shelving=shelving,
            answers=_answers(crews, priority, accept_timeout_s),
            travel_s=rng.uniform(*TRAVEL_S), rounds=tuple(rounds), fail_reasons=tuple(fails),
            extension=ext,
            extension_extra_s=rounds[0] * rng.uniform(*EXTENSION_SHARE) if ext else 0.0,
            approve_after_s=rng.uniform(*APPROVE_S), verify_after_s=rng.uniform(*VERIFY_S),
            close_after_s=rng.uniform(*CLOSE_S), evaluate_after_s=rng.uniform(*EVALUATE_S),
            archive_after_s=rng.uniform(*ARCHIVE_S)))
    return stories
