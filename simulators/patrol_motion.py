"""Pure movement and GPS of a patrol unit: ``Mover`` + ``advance(mover, dt) -> Mover``
(along a ``Path`` at the unit's cruise speed, capped by each leg's speed limit) and
``gps_fix``: what the phone reports for a true position: ~5 m Gaussian error and, about
once in 500 fixes, a multipath jump of 100-300 m.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from simulators.patrol_roads import Path, heading_deg, to_lonlat

# Phone GPS: horizontal error ~5 m (a standard deviation per axis of 5/sqrt(2) m gives a
# 5 m root-mean-square radial error), a rare multipath jump.
GPS_SIGMA_M = 5.0 / math.sqrt(2.0)
GPS_ACCURACY_M = 5.0
GPS_JUMP_P = 1.0 / 500.0
GPS_JUMP_M = (100.0, 300.0)
DEFAULT_GPS_INTERVAL_S = 5.0


# ---------------------------------------------------------------- pure movement

@dataclass(frozen=True, slots=True)
class Mover:
    """Where a unit is and what it is following. ``speed`` m/s, ``heading`` degrees."""

    x: float
    y: float
    cruise: float  # m/s the unit would like to go
    heading: float = 0.0
    speed: float = 0.0
    path: Path | None = None
    leg: int = 0
    along: float = 0.0  # metres along the current leg

    @property
    def arrived(self) -> bool:
        return self.path is None or self.leg >= len(self.path.lengths)

    def follow(self, path: Path, cruise: float | None = None) -> Mover:
        """Start along ``path`` (from its first point, which should be here)."""
        return replace(self, path=path, leg=0, along=0.0,
                       cruise=self.cruise if cruise is None else cruise)

    def remaining(self) -> float:
        if self.path is None:
            return 0.0
        return sum(self.path.lengths[self.leg:]) - self.along


def advance(m: Mover, dt: float) -> Mover:
    """The mover ``dt`` seconds later: along its path at min(cruise, leg limit); stopped
    (speed 0) once at the end of the path. Pure."""
    path = m.path
    if path is None or m.leg >= len(path.lengths) or dt <= 0:
        return m if m.speed == 0 or dt <= 0 else replace(m, speed=0.0)
    leg, along, budget = m.leg, m.along, dt
    speed = 0.0
    while leg < len(path.lengths):
        speed = min(m.cruise, path.limits[leg])
        rest = path.lengths[leg] - along
        if speed * budget < rest:
            along += speed * budget
            break
        budget -= rest / speed
        leg, along = leg + 1, 0.0
    if leg >= len(path.lengths):
        (ax, ay), (bx, by) = path.points[-2], path.points[-1]
        return replace(m, x=bx, y=by, leg=leg, along=0.0, speed=0.0,
                       heading=heading_deg(bx - ax, by - ay))
    (ax, ay), (bx, by) = path.points[leg], path.points[leg + 1]
    f = along / path.lengths[leg]
    return replace(m, x=ax + f * (bx - ax), y=ay + f * (by - ay), leg=leg, along=along,
                   speed=speed, heading=heading_deg(bx - ax, by - ay))


@dataclass(frozen=True, slots=True)
class Fix:
    """One GPS report: WGS-84 degrees, speed m/s, heading degrees, accuracy m."""

    unit_id: str
    ts: float
    lat: float
    lon: float
    speed: float
    heading: float | None
    acc: float


def gps_fix(unit_id: str, m: Mover, ts: float, rng: random.Random,
            sigma_m: float = GPS_SIGMA_M, jump_p: float = GPS_JUMP_P) -> Fix:
    """What the phone reports for the true position ``m`` (pure given ``rng``)."""
    ex, ey = rng.gauss(0.0, sigma_m), rng.gauss(0.0, sigma_m)
    if rng.random() < jump_p:
        angle = rng.uniform(0.0, 2.0 * math.pi)
        r = rng.uniform(*GPS_JUMP_M)
        ex, ey = ex + r * math.cos(angle), ey + r * math.sin(angle)
    lon, lat = to_lonlat(m.x + ex, m.y + ey)
    moving = m.speed > 0.3
    speed = max(0.0, m.speed + rng.gauss(0.0, 0.3)) if moving else 0.0
    acc = round(GPS_ACCURACY_M * rng.uniform(0.7, 1.6), 1)
    return Fix(unit_id, ts, round(lat, 7), round(lon, 7), round(speed, 2),
               round(m.heading, 1) if moving else None, acc)
