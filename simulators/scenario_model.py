"""Scenario files' model: the validated steps, expectations and history of a storyline,
the constants of the format, and where the files live (simulators/scenario.py says how
scenarios are written and played)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("simulators.scenario")

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_TOWN = Path(__file__).resolve().parent / "data" / "xuxiake.json"

# Normal back-dated readings sent for each owned device before the start, one reporting
# interval apart: the gas rate rule looks back 60 s and the no-data rule needs a last-seen
# time; five intervals (150-300 s) cover both.
PRIME_READINGS = 5
# Expectations are polled at least this long (wall seconds) before they fail: the hub raises
# an alarm within ~100 ms of a reading and dispatches within ~1 s; 5 s absorbs a busy box.
MIN_WAIT_S = 5.0
POLL_S = 0.2
# "absent" expectations are checked this long after the step's other expectations held, so
# that the readings which could have raised the alarm have been evaluated.
SETTLE_S = 0.75
# Staged units send a fix this often (wall s): the hub calls a position stale after 120 s.
GPS_REPEAT_S = 20.0
# Default time after the last step before the scenario ends (scenario s).
TAIL_S = 30.0
# History is sent as one message per device: the wire format allows 1,000 records.
MAX_HISTORY = 500
# Cleanup moves each case at most this many times (withdraw, cancel, a re-dispatch race).
CLEANUP_ROUNDS = 6
CLEANUP_REASON = "演练结束，撤销演练案件 (scenario cleanup)"

ACTION_KINDS = ("publish", "offline", "online", "report", "action", "ack", "gps")
PROGRAM_KINDS = frozenset({"publish", "offline", "online"})
ALARM_STATES = ("open", "active", "acknowledged", "cleared", "any")
SLA_STATES = ("ok", "warning", "breached", "met", "stopped")
REPORT_SOURCES = ("operator", "grid_worker", "hotline")

_DURATION = re.compile(r"^(-)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")



class ScenarioError(ValueError):
    """A scenario file that cannot be played; the message says where and why."""


# ---------------------------------------------------------------- the model

@dataclass(frozen=True, slots=True)
class Expectation:
    kind: str  # alarm | situation | case
    subject: str  # rule id, grid id, category or "@label"
    spec: Mapping[str, Any]  # validated fields (devices/grid_of resolved to ids / grids)
    where: str  # "gas_leak.toml steps[4] (+2m15s)" for messages
    staged_only: bool = False
    absent: bool = False

    def describe(self) -> str:
        note = self.spec.get("note")
        return f"{self.kind} {self.subject}" + (f" ({note})" if note else "")


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    at: float
    note: str
    kind: str | None
    spec: Mapping[str, Any]
    expect: tuple[Expectation, ...]
    within: float

    @property
    def label(self) -> str:
        return f"steps[{self.index}] ({fmt_tau(self.at)})"


@dataclass(frozen=True, slots=True)
class History:
    devices: tuple[str, ...]
    every: float
    values: Mapping[str, tuple[float, ...]]
    jitter: float


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    summary: str
    seed: int
    duration: float
    steps: tuple[Step, ...]
    history: tuple[History, ...]
    devices: tuple[str, ...]  # every device the scenario drives (owned while it plays)
    town: Mapping[str, Any] = field(repr=False)
    path: Path | None = None

    def expectations(self) -> list[Expectation]:
        return [e for s in self.steps for e in s.expect]


def fmt_tau(tau: float) -> str:
    sign = "-" if tau < 0 else "+"
    t = abs(tau)
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{sign}{int(h)}h{int(m):02d}m"
    if m:
        return f"{sign}{int(m)}m{int(s):02d}s"
    return f"{sign}{s:.0f}s"


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or a string such as ``"90s"``, ``"2m30s"``, ``"-24h"``."""
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            secs = float(value)
            if math.isfinite(secs):
                return secs
        m = _DURATION.match(value.strip())
        if m and any(m.group(i) for i in (2, 3, 4)):
            secs = (float(m.group(2) or 0) * 3600 + float(m.group(3) or 0) * 60
                    + float(m.group(4) or 0))
            return -secs if m.group(1) else secs
    raise ScenarioError(f"{where}: {value!r} is not a duration (seconds, or e.g. \"90s\", "
                        "\"2m30s\", \"1h\")")


def available(directory: Path = SCENARIO_DIR) -> list[str]:
    """Names of the scenario files shipped in ``directory``."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def path_for(name: str, directory: Path = SCENARIO_DIR) -> Path:
    return directory / f"{name}.toml"


def load_town(path: Path = DEFAULT_TOWN) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
