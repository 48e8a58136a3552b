"""Reading and validating a scenario file against the town: every error names the file,
the step and the field (``load``, ``parse``)."""

from __future__ import annotations

import logging
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dispatch.sla import STAGES as SLA_STAGES
from dispatch.workflow import ACTIONS as CASE_ACTIONS
from dispatch.workflow import STATES as CASE_STATES
from simulators.patrol import to_lonlat, to_xy
from simulators.scenario_model import (
    ACTION_KINDS,
    ALARM_STATES,
    MAX_HISTORY,
    PROGRAM_KINDS,
    REPORT_SOURCES,
    SLA_STATES,
    TAIL_S,
    Expectation,
    History,
    Scenario,
    ScenarioError,
    Step,
    available,
    fmt_tau,
    load_town,
    parse_duration,
    path_for,
)

log = logging.getLogger("simulators.scenario")


# ---------------------------------------------------------------- validation

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


def _value_spec(v: Any, where: str) -> tuple[float | None, float]:
    """(from, to) of a publish value; from None = the device's current value."""
    if isinstance(v, list):
        if len(v) != 2:
            raise ScenarioError(f"{where}: a ramp is [from, to], got {v!r}")
        return _num(v[0], where), _num(v[1], where)
    if isinstance(v, dict):
        _keys(v, ("to",), where, required=("to",))
        return None, _num(v["to"], f"{where}.to")
    x = _num(v, where)
    return x, x


def _v_publish(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("devices", "values", "over", "every", "jitter", "source", "falloff_m",
                     "spread_mps"), where, required=("devices", "values"))
    devices = select_devices(town, s["devices"], f"{where}.devices")
    out: dict[str, Any] = {"devices": devices}
    if s["values"] == "normal":
        out["values"] = "normal"
    else:
        vals = _keys(s["values"], [m for d in devices for m in town.devices[d]["metrics"]],
                     f"{where}.values")
        if not vals:
            raise ScenarioError(f"{where}.values: name at least one metric, or \"normal\"")
        for d in devices:
            missing = [m for m in vals if m not in town.devices[d]["metrics"]]
            if missing:
                raise ScenarioError(f"{where}.values: device {d} ({town.devices[d]['model']}) "
                                    f"has no metric {', '.join(missing)}")
        out["values"] = {m: _value_spec(v, f"{where}.values.{m}") for m, v in vals.items()}
    out["over"] = max(0.0, parse_duration(s.get("over", 0), f"{where}.over"))
    if "every" in s:
        out["every"] = parse_duration(s["every"], f"{where}.every")
        if out["every"] <= 0:
            raise ScenarioError(f"{where}.every: must be positive")
    out["jitter"] = abs(_num(s.get("jitter", 0.0), f"{where}.jitter"))
    if "source" in s:
        src = _str(s["source"], f"{where}.source")
        if src not in town.devices:
            raise ScenarioError(f"{where}.source: unknown device {src!r}")
        out["source"] = src
        out["falloff_m"] = _num(s.get("falloff_m", math.inf), f"{where}.falloff_m")
        out["spread_mps"] = _num(s.get("spread_mps", math.inf), f"{where}.spread_mps")
        if out["falloff_m"] <= 0 or out["spread_mps"] <= 0:
            raise ScenarioError(f"{where}: falloff_m and spread_mps must be positive")
    elif "falloff_m" in s or "spread_mps" in s:
        raise ScenarioError(f"{where}: falloff_m and spread_mps need a source device")
    return out


def _v_report(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("as", "via", "category", "qualification", "priority", "title",
                     "description", "source", "reporter", "service_code", "first_name",
                     "phone", "attributes", *PLACE_KEYS), where, required=("as",))
    via = s.get("via", "api")
    out: dict[str, Any] = {"as": _str(s["as"], f"{where}.as"), "via": via,
                           "place": _place(town, s, where),
                           "description": str(s.get("description", ""))}
    if via == "api":
        for k in ("category", "qualification", "title"):
            if k not in s:
                raise ScenarioError(f"{where}: a report through the API needs {k}")
            out[k] = _str(s[k], f"{where}.{k}")
        out["priority"] = _int(s.get("priority", 3), f"{where}.priority", 1)
        if out["priority"] > 4:
            raise ScenarioError(f"{where}.priority: 1 (critical) .. 4 (low)")
        out["source"] = s.get("source", "operator")
        if out["source"] not in REPORT_SOURCES:
            raise ScenarioError(f"{where}.source: one of {', '.join(REPORT_SOURCES)}")
        out["reporter"] = _str(s.get("reporter", "operator:scenario"), f"{where}.reporter")
    elif via == "open311":
        code = s.get("service_code", s.get("category"))
        out["service_code"] = _str(code, f"{where}.service_code")
        for k in ("first_name", "phone"):
            if k in s:
                out[k] = _str(s[k], f"{where}.{k}")
        attrs = s.get("attributes", {})
        if not isinstance(attrs, dict):
            raise ScenarioError(f"{where}.attributes: a table of attribute code = value(s)")
        out["attributes"] = {
            _str(k, f"{where}.attributes"): [_str(x, f"{where}.attributes.{k}") for x in
                                             (v if isinstance(v, list) else [v])]
            for k, v in attrs.items()}
    else:
        raise ScenarioError(f"{where}.via: \"api\" or \"open311\", got {via!r}")
    return out


def _case_ref(town: _Town, ref: Any, where: str) -> dict[str, Any]:
    if isinstance(ref, str):
        if not ref.startswith("@") or len(ref) < 2:
            raise ScenarioError(f"{where}: a case is \"@label\" or {{ category, grid }}")
        return {"label": ref[1:]}
    s = _keys(ref, ("category", "grid", "grid_of"), where, required=("category",))
    return {"category": _str(s["category"], f"{where}.category"),
            "grids": _grids(town, s, where)}


def _grids(town: _Town, s: Mapping[str, Any], where: str) -> tuple[str, ...] | None:
    if "grid" in s and "grid_of" in s:
        raise ScenarioError(f"{where}: grid or grid_of, not both")
    if "grid" in s:
        g = _str(s["grid"], f"{where}.grid")
        if g not in town.grids:
            raise ScenarioError(f"{where}.grid: unknown grid {g!r}")
        return (g,)
    if "grid_of" in s:
        devs = select_devices(town, s["grid_of"], f"{where}.grid_of")
        return tuple(dict.fromkeys(town.devices[d]["grid"] for d in devs))
    return None


def _v_action(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("case", "action", "actor", "reason", "crew"), where,
              required=("case", "action", "actor"))
    action = _str(s["action"], f"{where}.action")
    if action not in CASE_ACTIONS:
        raise ScenarioError(f"{where}.action: unknown action {action!r}; one of "
                            + ", ".join(CASE_ACTIONS))
    actor = _str(s["actor"], f"{where}.actor")
    out = {"case": _case_ref(town, s["case"], f"{where}.case"), "action": action,
           "actor": actor, "crew": _bool(s.get("crew", actor == "@assigned"), f"{where}.crew")}
    if "reason" in s:
        out["reason"] = _str(s["reason"], f"{where}.reason")
    return out


def _v_ack(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("alarm", "devices", "by"), where, required=("alarm", "by"))
    out: dict[str, Any] = {"alarm": _str(s["alarm"], f"{where}.alarm"),
                           "by": _str(s["by"], f"{where}.by"), "devices": None}
    if "devices" in s:
        out["devices"] = select_devices(town, s["devices"], f"{where}.devices")
    return out


def _v_gps(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("units", *PLACE_KEYS), where, required=("units",))
    return {"units": select_units(town, s["units"], f"{where}.units"),
            "place": _place(town, s, where, allow_home=True)}


def _v_devices_only(town: _Town, spec: Any, where: str) -> dict[str, Any]:
    s = _keys(spec, ("devices",), where, required=("devices",))
    return {"devices": select_devices(town, s["devices"], f"{where}.devices")}


VALIDATORS = {"publish": _v_publish, "offline": _v_devices_only, "online": _v_devices_only,
              "report": _v_report, "action": _v_action, "ack": _v_ack, "gps": _v_gps}

EXPECT_KEYS = {
    "alarm": ("devices", "state", "severity", "absent", "before", "in_snapshot"),
    "situation": ("state", "members", "members_min", "individual_open", "in_snapshot"),
    "case": ("grid", "grid_of", "count", "priority", "state", "source", "alarms",
             "alarms_min", "alarms_cleared", "unit", "not_unit", "unit_qualification",
             "unit_type", "diverted_from", "assignments_include", "sla"),
}


def _state_list(v: Any, allowed: Sequence[str], where: str) -> tuple[str, ...]:
    states = tuple(_str_list(v, where))
    bad = [x for x in states if x not in allowed]
    if bad:
        raise ScenarioError(f"{where}: unknown state(s) {', '.join(bad)}; one of "
                            + ", ".join(allowed))
    return states


def _v_expect(town: _Town, spec: Any, where: str, labels: set[str]) -> Expectation:
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where}: expected a table")
    kinds = [k for k in EXPECT_KEYS if k in spec]
    if len(kinds) != 1:
        raise ScenarioError(f"{where}: an expectation names exactly one of alarm, situation, "
                            f"case (got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    s = _keys(spec, (kind, "note", "staged_only", *EXPECT_KEYS[kind]), where)
    subject = _str(s[kind], f"{where}.{kind}")
    out: dict[str, Any] = {"note": str(s.get("note", ""))}
    for k in ("absent", "in_snapshot", "alarms_cleared"):
        if k in s:
            out[k] = _bool(s[k], f"{where}.{k}")
    for k in ("members", "members_min", "individual_open", "count", "priority", "alarms",
              "alarms_min"):
        if k in s:
            out[k] = _int(s[k], f"{where}.{k}", 0)
    for k in ("severity", "before", "source", "unit", "not_unit", "unit_qualification",
              "unit_type"):
        if k in s:
            out[k] = _str(s[k], f"{where}.{k}")
    if kind in ("alarm", "situation"):
        out["state"] = _state_list(s.get("state", "any"), ALARM_STATES, f"{where}.state")
    if kind == "alarm" and "devices" in s:
        out["devices"] = select_devices(town, s["devices"], f"{where}.devices")
    if kind == "situation":
        if subject not in town.grids or "-" not in subject:
            raise ScenarioError(f"{where}.situation: {subject!r} is no second-level grid")
        out["grid_devices"] = tuple(d for d, v in town.devices.items() if v["grid"] == subject)
    if kind == "case":
        if subject.startswith("@"):
            if subject[1:] not in labels:
                raise ScenarioError(f"{where}.case: no earlier report is labelled "
                                    f"{subject[1:]!r}")
            if any(k in s for k in ("grid", "grid_of", "count")):
                raise ScenarioError(f"{where}: grid, grid_of and count apply to a category, "
                                    "not to a labelled case")
        out["grids"] = _grids(town, s, where)
        if "state" in s:
            out["state"] = _state_list(s["state"], CASE_STATES, f"{where}.state")
        if "diverted_from" in s:
            ref = _str(s["diverted_from"], f"{where}.diverted_from")
            if not ref.startswith("@") or ref[1:] not in labels:
                raise ScenarioError(f"{where}.diverted_from: \"@label\" of an earlier report")
            out["diverted_from"] = ref[1:]
        if "assignments_include" in s:
            out["assignments_include"] = tuple(_str_list(s["assignments_include"],
                                                         f"{where}.assignments_include"))
        if "sla" in s:
            sla = _keys(s["sla"], SLA_STAGES, f"{where}.sla")
            out["sla"] = {st: _state_list(v, SLA_STATES, f"{where}.sla.{st}")
                          for st, v in sla.items()}
        if "unit" in s and s["unit"] not in town.units:
            raise ScenarioError(f"{where}.unit: unknown unit {s['unit']!r}")
    return Expectation(kind, subject, out, where,
                       staged_only=_bool(s.get("staged_only", False), f"{where}.staged_only"),
                       absent=bool(out.get("absent", False)))


def _v_history(town: _Town, spec: Any, where: str) -> History:
    s = _keys(spec, ("devices", "every", "values", "jitter"), where,
              required=("devices", "every", "values"))
    devices = select_devices(town, s["devices"], f"{where}.devices")
    every = parse_duration(s["every"], f"{where}.every")
    if every <= 0:
        raise ScenarioError(f"{where}.every: must be positive")
    vals = s["values"]
    if not isinstance(vals, dict) or not vals:
        raise ScenarioError(f"{where}.values: expected {{ metric = [values, oldest first] }}")
    out: dict[str, tuple[float, ...]] = {}
    for m, series in vals.items():
        if not isinstance(series, list) or not series:
            raise ScenarioError(f"{where}.values.{m}: expected a non-empty list of numbers")
        out[m] = tuple(_num(x, f"{where}.values.{m}") for x in series)
        for d in devices:
            if m not in town.devices[d]["metrics"]:
                raise ScenarioError(f"{where}.values: device {d} has no metric {m}")
    lengths = {len(v) for v in out.values()}
    if len(lengths) != 1:
        raise ScenarioError(f"{where}.values: every metric needs the same number of values")
    if lengths.pop() > MAX_HISTORY:
        raise ScenarioError(f"{where}.values: at most {MAX_HISTORY} values")
    if every * len(next(iter(out.values()))) > 7 * 86400 - 3600:
        raise ScenarioError(f"{where}: history reaches back more than 7 days (the hub "
                            "refuses older device times)")
    return History(devices, every, out, abs(_num(s.get("jitter", 0.0), f"{where}.jitter")))


def parse(doc: Mapping[str, Any], town_doc: Mapping[str, Any], *, name: str,
          path: Path | None = None) -> Scenario:
    """Validate a scenario document (parsed TOML); ScenarioError says what is wrong."""
    town = _Town(town_doc)
    fname = path.name if path else f"{name}.toml"
    _keys(doc, ("scenario", "history", "steps"), fname, required=("scenario", "steps"))
    head = _keys(doc["scenario"], ("name", "title", "summary", "seed", "duration"),
                 f"{fname} [scenario]", required=("name", "title", "seed"))
    if head["name"] != name:
        raise ScenarioError(f"{fname} [scenario]: name {head['name']!r} must match the file "
                            f"name {name!r}")
    seed = _int(head["seed"], f"{fname} [scenario].seed")
    history = tuple(_v_history(town, h, f"{fname} history[{i}]")
                    for i, h in enumerate(_list(doc.get("history", []), f"{fname} history")))
    steps: list[Step] = []
    labels: set[str] = set()
    last = 0.0
    for i, raw in enumerate(_list(doc["steps"], f"{fname} steps")):
        where = f"{fname} steps[{i}]"
        s = _keys(raw, ("at", "note", "within", "expect", *ACTION_KINDS), where,
                  required=("at",))
        at = parse_duration(s["at"], f"{where}.at")
        where = f"{where} ({fmt_tau(at)})"
        if at < 0:
            raise ScenarioError(f"{where}.at: steps start at 0; the past is [[history]]")
        if at < last:
            raise ScenarioError(f"{where}.at: steps must be in time order ({fmt_tau(at)} "
                                f"comes after {fmt_tau(last)})")
        last = at
        kinds = [k for k in ACTION_KINDS if k in s]
        if len(kinds) > 1:
            raise ScenarioError(f"{where}: one action per step, got {', '.join(kinds)}")
        if not kinds and "expect" not in s:
            raise ScenarioError(f"{where}: a step needs an action ({', '.join(ACTION_KINDS)})"
                                " or expectations")
        kind = kinds[0] if kinds else None
        spec = VALIDATORS[kind](town, s[kind], f"{where}.{kind}") if kind else {}
        if kind == "report":
            if spec["as"] in labels:
                raise ScenarioError(f"{where}.report.as: label {spec['as']!r} used twice")
            labels.add(spec["as"])
        if kind == "action" and "label" in spec["case"] and spec["case"]["label"] not in labels:
            raise ScenarioError(f"{where}.action.case: no earlier report is labelled "
                                f"{spec['case']['label']!r}")
        expect = tuple(_v_expect(town, e, f"{where} expect[{j}]", labels)
                       for j, e in enumerate(_list(s.get("expect", []), f"{where}.expect")))
        within = parse_duration(s.get("within", "1m"), f"{where}.within")
        steps.append(Step(i, at, str(s.get("note", "")), kind, spec, expect, max(0.0, within)))
    if not steps:
        raise ScenarioError(f"{fname}: no steps")
    duration = parse_duration(head.get("duration", last + TAIL_S),
                              f"{fname} [scenario].duration")
    if duration < last:
        raise ScenarioError(f"{fname} [scenario].duration: {fmt_tau(duration)} ends before "
                            f"the last step ({fmt_tau(last)})")
    owned: dict[str, None] = {}
    for h in history:
        owned.update(dict.fromkeys(h.devices))
    for st in steps:
        if st.kind in PROGRAM_KINDS:
            owned.update(dict.fromkeys(st.spec["devices"]))
    return Scenario(name, _str(head["title"], f"{fname} [scenario].title"),
                    str(head.get("summary", "")).strip(), seed, duration, tuple(steps), history,
                    tuple(owned), town_doc, path)


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise ScenarioError(f"{where}: expected an array of tables ([[...]])")
    return v


def load(path_or_name: Path | str, town_doc: Mapping[str, Any] | None = None) -> Scenario:
    """Read and validate a scenario file (a path, or a name in simulators/scenarios/)."""
    path = Path(path_or_name)
    if path.suffix != ".toml":
        path = path_for(str(path_or_name))
    if not path.exists():
        raise ScenarioError(f"no scenario file {path} (available: {', '.join(available())})")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path.name}: not valid TOML: {e}") from e
    return parse(doc, town_doc if town_doc is not None else load_town(), name=path.stem,
                 path=path)
