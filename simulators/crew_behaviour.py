"""How simulated crews behave: pure, seeded, no clock and no I/O.

The live crews (simulators/crews.py) and the demo's history (simulators/history_plan.py)
ask the same questions of one ``CrewBehaviour``, so the past the newcomer sees and the
pulse that follows look alike:

- ``answer(priority)``: how long a crew takes to answer a dispatch, and whether it
  declines (with a reason) or answers late, after the hub's accept time-out
  (dispatch/service.py ``ACCEPT_TIMEOUT_S``), so the hub escalates the case to the next
  unit and alerts the supervisor;
- ``handling_s(category)``: on-scene work, by the case's category (a blocked drain takes
  longer than moving a street stall);
- ``verification()``: whether the grid worker finds the work not done (rework) and why;
- ``extension()``: whether the crew asks for more time, and why.

Every answer is drawn from ``random.Random(seed)`` in call order: the same seed and the same
questions give the same answers (the tests replay a seeded run).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# On-scene handling time (seconds at speed 1) by case category: (shortest, longest).
# Rough orders of a township's work: moving a stall or quieting a noise source is minutes,
# a gas leak made safe or a flooded underpass pumped is the better part of an hour, an
# illegal building stopped is an afternoon's paperwork. Unknown categories take DEFAULT.
HANDLING_S: dict[str, tuple[float, float]] = {
    # Citizen and hotline reports (hub/open311_services.py)
    "city_order": (120.0, 420.0),
    "noise": (90.0, 300.0),
    "public_order": (180.0, 600.0),
    "road_damage": (600.0, 1800.0),
    "safety_hazard": (600.0, 1500.0),
    "pollution": (900.0, 2400.0),
    "flooding": (1200.0, 3600.0),
    "illegal_construction": (1800.0, 4800.0),
    # Sensor alarms (simulators/data/rules.toml incident_category)
    "noise_nuisance": (90.0, 300.0),
    "traffic_congestion": (300.0, 900.0),
    "air_pollution": (900.0, 2400.0),
    "gas_leak": (900.0, 2700.0),
    "fire_risk": (1200.0, 3000.0),
    "flood_risk": (1200.0, 3600.0),
}
DEFAULT_HANDLING_S = (300.0, 1200.0)

# Time to answer a dispatch (s at speed 1) when the crew answers in time: a phone in a
# pocket, picked up between two tasks.
ANSWER_S = (5.0, 60.0)
# An answer after the time-out comes this much later than the time-out (share of it): the
# hub has escalated by then, so the late "accept" meets a case already given to another.
LATE_SHARE = (1.05, 1.6)

# Odds per dispatch, per verification, per case. A pulse shows each several times an hour
# at the demo's rate (an event a minute): an escalation about every ten cases, a decline
# about every twelve, a rework about every eight, an extension about every fifteen.
LATE_P = 0.10
DECLINE_P = 0.08
VERIFY_FAIL_P = 0.12
EXTENSION_P = 0.07

DECLINE_REASONS = ("车辆故障，无法前往", "正在处置另一紧急警情", "人员不足，请改派",
                   "不具备该事项执法资格")
VERIFY_FAIL_REASONS = ("现场问题未彻底整改", "整改照片与现场不符", "群众反映问题仍存在")
EXTENSION_REASONS = ("需协调产权单位共同处置", "等待专业设备到场", "当事人不在现场，需再次约谈")


@dataclass(frozen=True, slots=True)
class Answer:
    """A crew's answer to one dispatch: after ``delay_s`` it declines (``decline_reason``)
    or accepts; ``late`` means the delay is past the hub's accept time-out."""

    delay_s: float
    decline_reason: str | None = None
    late: bool = False


@dataclass(frozen=True, slots=True)
class Odds:
    """The behaviour's probabilities (see the constants for why these values)."""

    late_p: float = LATE_P
    decline_p: float = DECLINE_P
    verify_fail_p: float = VERIFY_FAIL_P
    extension_p: float = EXTENSION_P


class CrewBehaviour:
    """Seeded answers to "what does the crew do now" (module docstring)."""

    def __init__(self, seed: int | str, odds: Odds = Odds()) -> None:
        self.rng = random.Random(f"crew-behaviour:{seed}")
        self.odds = odds

    def answer(self, accept_timeout_s: float) -> Answer:
        """The answer to a dispatch whose accept time-out is ``accept_timeout_s``."""
        x = self.rng.random()
        if x < self.odds.late_p:
            return Answer(accept_timeout_s * self.rng.uniform(*LATE_SHARE), late=True)
        delay = self.rng.uniform(*ANSWER_S)
        if x < self.odds.late_p + self.odds.decline_p:
            return Answer(delay, decline_reason=self.rng.choice(DECLINE_REASONS))
        return Answer(delay)

    def handling_s(self, category: str) -> float:
        lo, hi = HANDLING_S.get(category, DEFAULT_HANDLING_S)
        return self.rng.uniform(lo, hi)

    def verification(self) -> str | None:
        """``None``: the work passes; else the reason it fails (the case is reworked)."""
        if self.rng.random() < self.odds.verify_fail_p:
            return self.rng.choice(VERIFY_FAIL_REASONS)
        return None

    def extension(self) -> str | None:
        """``None``: no extension asked; else the crew's reason for asking one."""
        if self.rng.random() < self.odds.extension_p:
            return self.rng.choice(EXTENSION_REASONS)
        return None
