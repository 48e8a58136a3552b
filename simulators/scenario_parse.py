"""Reading and validating a scenario file against the town: every error names the file,
the step and the field (``load``, ``parse``; the town's names are checked in
scenario_selectors.py, the steps in scenario_steps.py)."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simulators.scenario_model import (
    ACTION_KINDS,
    PROGRAM_KINDS,
    TAIL_S,
    Scenario,
    ScenarioError,
    Step,
    available,
    fmt_tau,
    load_town,
    parse_duration,
    path_for,
)
from simulators.scenario_selectors import _int, _keys, _str, _Town
from simulators.scenario_steps import VALIDATORS, _v_expect, _v_history

log = logging.getLogger("simulators.scenario")


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
