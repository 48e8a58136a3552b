"""How a scenario's expectations are judged against the hub's API answers (the player's
view of alarms, cases, units and SLA clocks), and the words its failures are told in."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from simulators.scenario_model import Expectation

if TYPE_CHECKING:  # the player hands itself to its view; no import cycle at run time
    from simulators.scenario_player import Player

log = logging.getLogger("simulators.scenario")


class _View:
    """One consistent read of the hub for checking a batch of expectations."""

    def __init__(self, player: Player, alarms: list[dict[str, Any]],
                 incidents: list[dict[str, Any]]) -> None:
        self.p = player
        self.alarms = alarms
        self.incidents = incidents
        self.units: dict[str, dict[str, Any]] = {}
        self.snapshot_alarms: set[int] = set()
        self._details: dict[int, dict[str, Any]] = {}

    async def detail(self, iid: int) -> dict[str, Any]:
        if iid not in self._details:
            self._details[iid] = await self.p._get(f"/api/incidents/{iid}")
        return self._details[iid]

    async def check(self, e: Expectation) -> str | None:
        if e.kind == "alarm":
            return self._alarm(e)
        if e.kind == "situation":
            return self._situation(e)
        return await self._case(e)

    # alarms
    @staticmethod
    def _in_state(a: Mapping[str, Any], states: Sequence[str]) -> bool:
        st = a["state"]
        return any(s == "any" or s == st or (s == "open" and st != "cleared") for s in states)

    def _alarm(self, e: Expectation) -> str | None:
        s = e.spec
        states = s["state"]
        rule = [a for a in self.alarms if a["rule_id"] == e.subject and not a.get("situation")]
        devices: Sequence[str | None] = s.get("devices") or [None]
        problems = []
        for d in devices:
            mine = [a for a in rule if d is None or a["device_id"] == d]
            hits = [a for a in mine if self._in_state(a, states)]
            at = f" at {d}" if d else ""
            if e.absent:
                if hits:
                    problems.append(f"expected none{at}, found #{hits[0]['id']} "
                                    f"({hits[0]['state']}, value {hits[0]['value']})")
                continue
            if not hits:
                seen = ", ".join(f"#{a['id']} {a['state']}" for a in mine)
                problems.append(f"no {'/'.join(states)} alarm{at}"
                                + (f" (only {seen})" if seen else ""))
                continue
            a = hits[0]
            if "severity" in s and a["severity"] != s["severity"]:
                problems.append(f"#{a['id']}{at} is {a['severity']}, expected {s['severity']}")
            if "before" in s:
                other = [b for b in self.alarms if b["rule_id"] == s["before"]
                         and b["device_id"] == a["device_id"]]
                if other and min(b["raised_at"] for b in other) < a["raised_at"]:
                    problems.append(f"#{a['id']}{at} was raised after {s['before']}")
            if s.get("in_snapshot") and int(a["id"]) not in self.snapshot_alarms:
                problems.append(f"#{a['id']}{at} is not in the console's live snapshot")
        return "; ".join(problems) or None

    def _situation(self, e: Expectation) -> str | None:
        s = e.spec
        key = f"storm:{e.subject}"
        mine = [a for a in self.alarms if a.get("situation") == key]
        hits = [a for a in mine if self._in_state(a, s["state"])]
        problems = []
        if not hits:
            seen = ", ".join(f"#{a['id']} {a['state']}" for a in mine)
            problems.append(f"no {'/'.join(s['state'])} situation alarm {key}"
                            + (f" (only {seen})" if seen else ""))
        else:
            a = hits[-1]
            if len([x for x in mine if x["state"] != "cleared"]) > 1:
                problems.append("more than one open situation alarm for the grid")
            if "members" in s and a.get("members") != s["members"]:
                problems.append(f"#{a['id']} has {a.get('members')} members, expected "
                                f"{s['members']}")
            if "members_min" in s and (a.get("members") or 0) < s["members_min"]:
                problems.append(f"#{a['id']} has {a.get('members')} members, expected at "
                                f"least {s['members_min']}")
            if s.get("in_snapshot") and int(a["id"]) not in self.snapshot_alarms:
                problems.append(f"#{a['id']} is not in the console's live snapshot")
        if "individual_open" in s:
            devs = set(s["grid_devices"])
            open_ = [a for a in self.alarms if a["rule_id"] == "device_offline"
                     and not a.get("situation") and a["device_id"] in devs
                     and a["state"] != "cleared"]
            if len(open_) != s["individual_open"]:
                problems.append(f"{len(open_)} individual device_offline alarm(s) open for "
                                f"the grid's devices ({', '.join(a['device_id'] for a in open_)})"
                                f", expected {s['individual_open']}")
        return "; ".join(problems) or None

    # cases
    async def _case(self, e: Expectation) -> str | None:
        s = e.spec
        if e.subject.startswith("@"):
            iid = self.p.labels.get(e.subject[1:])
            cases = [i for i in self.incidents if int(i["id"]) == iid]
            if not cases:
                return f"case {e.subject} was never reported"
        else:
            cases = [i for i in self.incidents if i["category"] == e.subject
                     and (s["grids"] is None or i["grid_id"] in s["grids"])]
            where = f" in {', '.join(s['grids'])}" if s["grids"] else ""
            if "count" in s and len(cases) != s["count"]:
                return (f"{len(cases)} {e.subject} case(s){where} "
                        f"({', '.join('#' + str(i['id']) for i in cases)}), expected "
                        f"{s['count']}")
            if not cases and s.get("count") != 0:
                return f"no {e.subject} case{where}"
        problems = []
        for inc in cases:
            for p in await self._one_case(inc, s):
                problems.append(f"case #{inc['id']} ({inc['grid_id']}): {p}")
        return "; ".join(problems) or None

    async def _one_case(self, inc: Mapping[str, Any], s: Mapping[str, Any]) -> list[str]:
        out = []
        iid = int(inc["id"])
        if "priority" in s and inc["priority"] != s["priority"]:
            out.append(f"priority {inc['priority']}, expected {s['priority']}")
        if "state" in s and inc["state"] not in s["state"]:
            out.append(f"state {inc['state']}, expected {'/'.join(s['state'])}")
        if "source" in s and inc["source"] != s["source"]:
            out.append(f"source {inc['source']}, expected {s['source']}")
        if "alarms_cleared" in s and bool(inc.get("alarms_cleared")) != s["alarms_cleared"]:
            out.append(f"alarms_cleared is {inc.get('alarms_cleared')}")
        for stage, states in s.get("sla", {}).items():
            got = ((inc.get("sla") or {}).get(stage) or {}).get("state")
            if got not in states:
                out.append(f"SLA {stage} is {got}, expected {'/'.join(states)}")
        unit_id = inc.get("assigned_unit")
        unit_keys = ("unit", "not_unit", "unit_qualification", "unit_type", "diverted_from")
        if any(k in s for k in unit_keys):
            if not unit_id:
                out.append(f"no unit assigned (state {inc['state']})")
            else:
                unit = self.units.get(unit_id, {})
                if "unit" in s and unit_id != s["unit"]:
                    out.append(f"unit {unit_id} assigned, expected {s['unit']}")
                if "not_unit" in s and unit_id == s["not_unit"]:
                    out.append(f"unit {unit_id} assigned, expected another unit")
                if "unit_qualification" in s and s["unit_qualification"] not in (
                        unit.get("qualifications") or []):
                    out.append(f"unit {unit_id} ({'/'.join(unit.get('qualifications') or [])})"
                               f" lacks {s['unit_qualification']}")
                if "unit_type" in s and unit.get("type") != s["unit_type"]:
                    out.append(f"unit {unit_id} is a {unit.get('type')}, expected "
                               f"{s['unit_type']}")
                if "diverted_from" in s:
                    other = self.p.labels.get(s["diverted_from"])
                    if other is None:
                        out.append(f"case @{s['diverted_from']} was never reported")
                    else:
                        det = await self.detail(other)
                        if not any(a["unit_id"] == unit_id and a["status"] == "preempted"
                                   for a in det["assignments"]):
                            seen = ", ".join(f"{a['unit_id']} {a['status']}"
                                             for a in det["assignments"])
                            out.append(f"{unit_id} was not diverted from case #{other} "
                                       f"(its assignments: {seen or 'none'})")
        if any(k in s for k in ("alarms", "alarms_min", "assignments_include")):
            det = await self.detail(iid)
            n = len(det["alarms"])
            if "alarms" in s and n != s["alarms"]:
                out.append(f"{n} alarm(s) attached, expected {s['alarms']}")
            if "alarms_min" in s and n < s["alarms_min"]:
                out.append(f"{n} alarm(s) attached, expected at least {s['alarms_min']}")
            statuses = [a["status"] for a in det["assignments"]]
            for want in s.get("assignments_include", ()):
                if want not in statuses:
                    out.append(f"no {want} assignment (assignments: "
                               f"{', '.join(statuses) or 'none'})")
        return out


def _devs(ids: Sequence[str]) -> str:
    return ", ".join(ids) if len(ids) <= 4 else f"{', '.join(ids[:3])} and {len(ids) - 3} more"


def _ref(ref: Mapping[str, Any]) -> str:
    if "label" in ref:
        return f"@{ref['label']}"
    return str(ref["category"]) + (f" in {', '.join(ref['grids'])}" if ref["grids"] else "")


def _error_text(r: httpx.Response) -> str:
    try:
        err = r.json().get("error", {})
        return f"{err.get('code')}: {err.get('message')}"
    except (ValueError, AttributeError):
        return r.text[:200]


async def _sleep_until(wall: float) -> None:
    while True:
        wait = wall - time.time()
        if wait <= 0:
            return
        await asyncio.sleep(min(wait, 1.0))
