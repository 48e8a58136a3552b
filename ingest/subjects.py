"""What the alarm rules watch: rules with their shell attributes (device filter, active
hours, devices or units) and the subjects (devices, units) they apply to. Pure values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core import geometry
from core.town_time import DEFAULT_TOWN_TZ, seconds_of_day
from ingest import rules


def parse_hours(text: str | None) -> tuple[int, int] | None:
    """``"22:00-06:00"`` -> (79200, 21600) seconds of the local day; None for all day."""
    if not text:
        return None
    start, _, end = text.partition("-")

    def sec(hhmm: str) -> int:
        hh, _, mm = hhmm.strip().partition(":")
        return int(hh) * 3600 + int(mm or 0) * 60

    return sec(start), sec(end)


def in_hours(hours: tuple[int, int] | None, ts: float, tz: str = DEFAULT_TOWN_TZ) -> bool:
    """Whether ``ts`` falls in ``hours`` of the town's day (zone ``tz``: the settings'
    ``town_tz``; e.g. GB 3096-2008 night limits run 22:00-06:00 local time)."""
    if hours is None:
        return True
    t = seconds_of_day(ts, tz)
    start, end = hours
    return start <= t < end if start <= end else (t >= start or t < end)


@dataclass(frozen=True, slots=True)
class Watched:
    """A rule with the shell's own attributes: which subjects it applies to, and when."""

    rule: rules.Rule
    device_filter: Mapping[str, str] = field(default_factory=dict)
    hours: tuple[int, int] | None = None
    applies_to: str = "devices"

    @staticmethod
    def from_row(row: Mapping[str, Any]) -> Watched:
        return Watched(rules.Rule.from_row(row), dict(row["device_filter"] or {}),
                       parse_hours(row["hours"]), row["applies_to"])


@dataclass(frozen=True, slots=True)
class Subject:
    """A device or unit as the rules see it."""

    id: str
    model: str
    grid_id: str
    props: Mapping[str, Any] = field(default_factory=dict)
    interval_s: float = 60.0
    fence: tuple[geometry.Polygon, ...] = ()

    def matches(self, w: Watched) -> bool:
        if w.rule.device_model and w.rule.device_model != self.model:
            return False
        return all(str(self.props.get(k)) == str(v) for k, v in w.device_filter.items())
