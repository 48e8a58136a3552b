"""Rule evaluation: pure code. A rule, its state and a reading in; new state and verdict out.

The foundation has the threshold rule with hysteresis (raise at one value, clear at
another, so a value hovering at the limit does not flap). Time is the reading's device
time, passed in; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["raise", "clear"]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    name: str
    kind: str
    metric: str | None
    device_model: str | None
    params: Mapping[str, Any] = field(default_factory=dict)
    severity: str = "major"
    incident_category: str | None = None
    qualification: str | None = None
    priority: int = 3

    @staticmethod
    def from_row(row: Mapping[str, Any]) -> Rule:
        return Rule(
            id=row["id"], name=row["name"], kind=row["kind"], metric=row["metric"],
            device_model=row["device_model"], params=dict(row["params"] or {}),
            severity=row["severity"], incident_category=row["incident_category"],
            qualification=row["qualification"], priority=int(row["priority"]),
        )


@dataclass(frozen=True, slots=True)
class RuleState:
    active: bool = False
    last_ts: float = float("-inf")


INITIAL = RuleState()


class RuleError(ValueError):
    code = "rule.invalid"


def validate(rule: Rule) -> None:
    """Raise RuleError if the rule's parameters do not make sense for its kind."""
    if rule.kind != "threshold":
        raise RuleError(f"unsupported rule kind {rule.kind!r}")
    p = rule.params
    if "raise_above" in p:
        if float(p.get("clear_below", p["raise_above"])) > float(p["raise_above"]):
            raise RuleError("clear_below must not exceed raise_above")
    elif "raise_below" in p:
        if float(p.get("clear_above", p["raise_below"])) < float(p["raise_below"]):
            raise RuleError("clear_above must not be below raise_below")
    else:
        raise RuleError("threshold rule needs raise_above or raise_below")


def evaluate_threshold(rule: Rule, state: RuleState, value: float, ts: float
                       ) -> tuple[RuleState, Verdict | None]:
    """Hysteresis: active when value crosses ``raise_*``; inactive again only past ``clear_*``.

    A reading older than the last one evaluated is ignored (device-time order per device).
    """
    if ts < state.last_ts:
        return state, None
    p = rule.params
    if "raise_above" in p:
        hi = float(p["raise_above"])
        lo = float(p.get("clear_below", hi))
        on, off = value >= hi, value < lo
    else:
        lo = float(p["raise_below"])
        hi = float(p.get("clear_above", lo))
        on, off = value <= lo, value > hi
    if not state.active and on:
        return RuleState(True, ts), "raise"
    if state.active and off:
        return RuleState(False, ts), "clear"
    return RuleState(state.active, ts), None


def evaluate(rule: Rule, state: RuleState, value: float, ts: float
             ) -> tuple[RuleState, Verdict | None]:
    if rule.kind == "threshold":
        return evaluate_threshold(rule, state, value, ts)
    return state, None


def describe(rule: Rule, value: float) -> str:
    """A one-line message for operators, in the words of the rule."""
    p = rule.params
    if "raise_above" in p:
        return f"{rule.name}: {rule.metric}={value:g} ≥ {p['raise_above']}"
    if "raise_below" in p:
        return f"{rule.name}: {rule.metric}={value:g} ≤ {p['raise_below']}"
    return f"{rule.name}: {rule.metric}={value:g}"
