"""What a scenario file may name in the town, checked: the town as the checks see it
(``_Town``), typed fields whose errors name the file, step and field, device and unit
selectors (``select_devices``, ``select_units``) and places (``resolve_place``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from simulators.patrol_roads import to_lonlat, to_xy
from simulators.scenario_model import (
    ScenarioError,
)


class _Town:
    """Look-ups over the town file for selectors and places."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.devices: dict[str, Mapping[str, Any]] = {d["id"]: d for d in doc["devices"]}
        self.units: dict[str, Mapping[str, Any]] = {u["id"]: u for u in doc["units"]}
        self.grids = {f["properties"]["id"] for f in doc["grids"]["features"]}

    def distance_m(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
        ax, ay = to_xy(a["lon"], a["lat"])
        bx, by = to_xy(b["lon"], b["lat"])
        return math.hypot(ax - bx, ay - by)


def _keys(spec: Any, allowed: Iterable[str], where: str, required: Iterable[str] = ()
          ) -> Mapping[str, Any]:
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where}: expected a table, got {spec!r}")
    allowed = set(allowed)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: "
                            f"{', '.join(sorted(allowed))}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ScenarioError(f"{where}: missing field(s) {', '.join(missing)}")
    return spec


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise ScenarioError(f"{where}: expected a non-empty string, got {v!r}")
    return v


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ScenarioError(f"{where}: expected a number, got {v!r}")
    return float(v)


def _int(v: Any, where: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ScenarioError(f"{where}: expected an integer >= {lo}, got {v!r}")
    return int(v)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ScenarioError(f"{where}: expected true or false, got {v!r}")
    return v


def _str_list(v: Any, where: str) -> list[str]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items:
        raise ScenarioError(f"{where}: expected a string or a non-empty list, got {v!r}")
    return [_str(x, where) for x in items]


SELECTOR_KEYS = ("ids", "model", "grid", "zone", "name_contains", "near", "within_m",
                 "exclude")


def select_devices(town: _Town, sel: Any, where: str) -> tuple[str, ...]:
    """Resolve a device selector to device ids (town file order); at least one."""
    if isinstance(sel, str | list):
        ids = _str_list(sel, where)
        unknown = [i for i in ids if i not in town.devices]
        if unknown:
            raise ScenarioError(f"{where}: unknown device(s) {', '.join(unknown)}")
        return tuple(dict.fromkeys(ids))
    spec = _keys(sel, SELECTOR_KEYS, where)
    if not spec:
        raise ScenarioError(f"{where}: an empty selector would select every device; name "
                            "at least one of " + ", ".join(SELECTOR_KEYS))
    cands = list(town.devices.values())
    if "ids" in spec:
        chosen = set(select_devices(town, spec["ids"], f"{where}.ids"))
        cands = [d for d in cands if d["id"] in chosen]
    if "model" in spec:
        models = set(_str_list(spec["model"], f"{where}.model"))
        cands = [d for d in cands if d["model"] in models]
    if "grid" in spec:
        grid = _str(spec["grid"], f"{where}.grid")
        if grid not in town.grids:
            raise ScenarioError(f"{where}.grid: unknown grid {grid!r}")
        cands = [d for d in cands if d["grid"] == grid or d["grid"].startswith(grid + "-")]
    if "zone" in spec:
        zones = set(_str_list(spec["zone"], f"{where}.zone"))
        cands = [d for d in cands if d.get("zone") in zones]
    if "name_contains" in spec:
        text = _str(spec["name_contains"], f"{where}.name_contains")
        cands = [d for d in cands if text in d.get("name", "")]
    if ("near" in spec) != ("within_m" in spec):
        raise ScenarioError(f"{where}: near and within_m go together")
    if "near" in spec:
        ref = town.devices.get(_str(spec["near"], f"{where}.near"))
        if ref is None:
            raise ScenarioError(f"{where}.near: unknown device {spec['near']!r}")
        radius = _num(spec["within_m"], f"{where}.within_m")
        cands = [d for d in cands if town.distance_m(d, ref) <= radius]
    if "exclude" in spec:
        drop = set(select_devices(town, spec["exclude"], f"{where}.exclude"))
        cands = [d for d in cands if d["id"] not in drop]
    if not cands:
        raise ScenarioError(f"{where}: the selector {sel!r} selects no device")
    return tuple(d["id"] for d in cands)


def select_units(town: _Town, sel: Any, where: str) -> tuple[str, ...]:
    if isinstance(sel, str | list):
        ids = _str_list(sel, where)
        unknown = [i for i in ids if i not in town.units]
        if unknown:
            raise ScenarioError(f"{where}: unknown unit(s) {', '.join(unknown)}")
        return tuple(dict.fromkeys(ids))
    spec = _keys(sel, ("ids", "qualification", "type"), where)
    cands = list(town.units.values())
    if "ids" in spec:
        chosen = set(select_units(town, spec["ids"], f"{where}.ids"))
        cands = [u for u in cands if u["id"] in chosen]
    if "qualification" in spec:
        q = _str(spec["qualification"], f"{where}.qualification")
        cands = [u for u in cands if q in u["qualifications"]]
    if "type" in spec:
        t = _str(spec["type"], f"{where}.type")
        cands = [u for u in cands if u["type"] == t]
    if not cands or not spec:
        raise ScenarioError(f"{where}: the selector {sel!r} selects no unit")
    return tuple(u["id"] for u in cands)


PLACE_KEYS = ("near", "lon", "lat", "offset_m")


def _place(town: _Town, spec: Mapping[str, Any], where: str, allow_home: bool = False
           ) -> dict[str, Any]:
    """A validated place: {"near": id | "home"} or {"lon", "lat"}, plus offset_m."""
    out: dict[str, Any] = {}
    if "near" in spec:
        ref = _str(spec["near"], f"{where}.near")
        if not (ref in town.devices or ref in town.units or (allow_home and ref == "home")):
            raise ScenarioError(f"{where}.near: {ref!r} is no device or unit"
                                + (" (or \"home\")" if allow_home else ""))
        out["near"] = ref
    elif "lon" in spec and "lat" in spec:
        out["lon"] = _num(spec["lon"], f"{where}.lon")
        out["lat"] = _num(spec["lat"], f"{where}.lat")
    else:
        raise ScenarioError(f"{where}: give a place: near = device/unit id, or lon and lat")
    off = spec.get("offset_m", [0.0, 0.0])
    if not (isinstance(off, list) and len(off) == 2):
        raise ScenarioError(f"{where}.offset_m: expected [east, north] metres, got {off!r}")
    out["offset_m"] = (_num(off[0], f"{where}.offset_m"), _num(off[1], f"{where}.offset_m"))
    return out


def resolve_place(town: Mapping[str, Any] | _Town, place: Mapping[str, Any],
                  unit_id: str | None = None) -> tuple[float, float]:
    """(lon, lat) of a validated place; ``near = "home"`` is ``unit_id``'s start point."""
    t = town if isinstance(town, _Town) else _Town(town)
    if "near" in place:
        ref = str(unit_id if place["near"] == "home" else place["near"])
        obj = t.devices.get(ref) or t.units[ref]
        lon, lat = float(obj["lon"]), float(obj["lat"])
    else:
        lon, lat = float(place["lon"]), float(place["lat"])
    dx, dy = place.get("offset_m", (0.0, 0.0))
    if dx or dy:
        x, y = to_xy(lon, lat)
        lon, lat = to_lonlat(x + dx, y + dy)
    return round(lon, 6), round(lat, 6)
