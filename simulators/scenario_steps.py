"""The checks of a scenario's steps, one validator per step kind (``VALIDATORS``), its
expectations (``_v_expect``) and its history (``_v_history``): each returns the step's
normalised arguments or raises ``ScenarioError`` naming the file, the step and the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from dispatch.sla import STAGES as SLA_STAGES
from dispatch.workflow import ACTIONS as CASE_ACTIONS
from dispatch.workflow import STATES as CASE_STATES
from simulators.scenario_model import (
    ALARM_STATES,
    MAX_HISTORY,
    REPORT_SOURCES,
    SLA_STATES,
    Expectation,
    History,
    ScenarioError,
    parse_duration,
)
from simulators.scenario_selectors import (
    PLACE_KEYS,
    _bool,
    _int,
    _keys,
    _num,
    _place,
    _str,
    _str_list,
    _Town,
    select_devices,
    select_units,
)


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
