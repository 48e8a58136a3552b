"""The benchmark's workload: the seeded incident stream (``make_stream``) from the daily
call profile (``DIURNAL``) and the incident mix (``CATEGORIES``), and the arrive limits its
breaches are counted against (``ARRIVE_LIMITS``)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from dispatch.model import IncidentState
from dispatch.sla import DEFAULT_LIMITS_BY_PRIORITY
from simulators.bench.dispatch_town import Place, Town

# Local midnight of a Monday (2026-03-02 00:00 China time), the start of every run. Only
# the time of day matters (the arrival profile); a fixed date keeps runs byte-identical.
T0 = 1_772_380_800.0

DEFAULT_SEED = 1
# A week of arrivals. One day holds ~800 incidents but only ~8 baseline breaches of the
# township limits, so a one-day comparison swings by tens of percent from seed to seed;
# a week (the queue drains every night, so days are nearly independent) brings the
# seed-to-seed spread of breach_reduction_nfpa to a few points, in ~30 s.
DEFAULT_HOURS = 168.0
# Mean incidents an hour over the day (~820 a day) on the 45 town units. Tuned so that
# the baseline breaches the NFPA-style limits for ~11 % of incidents (the 10-30 % band
# asked for) without running away: squads, the only holders of six qualifications, are
# all busy at the daytime peaks and a quarter of incidents find no qualified unit free,
# but every night the queue drains. Under the township limits no unsaturated rate gives
# 10 % (p3/p4 would have to wait a day): the baseline breaches them for ~1 %.
DEFAULT_RATE = 34.0

# Relative incident rate by local hour (0-23), normalised to mean 1 below. Shape of the
# call load of a Chinese township command center / 12345 hotline: quiet at night,
# rising from 07:00, peaks late morning and mid-afternoon, a lunch dip, evening tail.
_DIURNAL_RAW: tuple[float, ...] = (
    0.35, 0.30, 0.25, 0.25, 0.30, 0.40, 0.60, 0.90, 1.20, 1.40, 1.50, 1.45,
    1.25, 1.30, 1.45, 1.50, 1.50, 1.40, 1.20, 1.05, 0.90, 0.75, 0.60, 0.45,
)  # fmt: skip
DIURNAL: tuple[float, ...] = tuple(
    x * len(_DIURNAL_RAW) / sum(_DIURNAL_RAW) for x in _DIURNAL_RAW
)

# Handling times are log-normal around each category's median with this sigma
# (a factor of ~1.65 either side for one sigma), clipped to these bounds.
HANDLING_SIGMA = 0.5
HANDLING_MIN_S = 5 * 60.0
HANDLING_MAX_S = 4 * 3600.0

# Arrive limits (seconds from opening) by priority. "township": the hub's own SLA table
# (dispatch/sla.py; p3/p4 are ordinary government matters with 24 h / 72 h to arrive,
# so in practice only p1/p2 can breach). "nfpa": emergency-service style limits for a
# semi-rural area, for a view in which every priority can breach: p1 10 min and p2 14 min
# are NFPA 1720's suburban and rural demand-zone response times (80 % of calls);
# p3 30 min and p4 60 min are the "arrive within half an hour / an hour" promises
# Chinese urban-management hotlines make for ordinary complaints.
TOWNSHIP_ARRIVE_S: Mapping[int, float] = {
    p: lim.arrive_s for p, lim in DEFAULT_LIMITS_BY_PRIORITY.items()
}
NFPA_ARRIVE_S: Mapping[int, float] = {1: 600.0, 2: 840.0, 3: 1800.0, 4: 3600.0}
ARRIVE_LIMITS: Mapping[str, Mapping[int, float]] = {
    "township": TOWNSHIP_ARRIVE_S,
    "nfpa": NFPA_ARRIVE_S,
}


@dataclass(frozen=True, slots=True)
class Category:
    """One kind of incident: who can handle it, how often, how urgent, how long, where."""

    name: str
    qualification: str
    share: float  # of all incidents
    priorities: tuple[float, float, float, float]  # weights of priorities 1..4
    handling_median_s: float
    device_models: tuple[str, ...] = ()  # incidents at such devices ...
    device_share: float = 0.0  # ... this often; otherwise at a road vertex
    # Road-vertex weight by the grid's zone (missing zones weigh 1).
    zones: Mapping[str, float] = field(default_factory=dict)


# The incident mix (a benchmark assumption, shaped by the load of a township grid
# platform and by the town's roster): city appearance and environment reports from grid
# members dominate (grid workers and squads), then public order and traffic (police),
# then the matters only the integrated squads hold (work safety, fire, water, market,
# health, housing). About 4 % of incidents are critical (p1) and a fifth high (p2).
# Median on-scene times of 25-50 minutes: a squad checks, records and rectifies.
CATEGORIES: tuple[Category, ...] = (
    Category("city_management", "city_management", 0.36, (0.0, 0.05, 0.55, 0.40),
             25 * 60.0, (), 0.0,
             {"commercial": 3.0, "residential": 2.0, "mixed": 2.0, "rural": 0.5}),
    Category("environment", "environment", 0.22, (0.02, 0.15, 0.53, 0.30), 35 * 60.0,
             ("air_station", "noise_meter", "water_station"), 0.5,
             {"industrial": 3.0, "mixed": 1.5, "commercial": 0.5}),
    Category("public_security", "public_security", 0.15, (0.08, 0.35, 0.45, 0.12),
             35 * 60.0, (), 0.0,
             {"commercial": 3.0, "residential": 2.5, "mixed": 2.0, "rural": 0.7}),
    Category("traffic", "traffic", 0.11, (0.08, 0.40, 0.40, 0.12), 30 * 60.0,
             ("traffic_counter",), 0.6, {"commercial": 2.0, "mixed": 1.5, "rural": 0.7}),
    Category("work_safety", "work_safety", 0.06, (0.08, 0.32, 0.45, 0.15), 50 * 60.0,
             ("gas_detector", "smoke_detector"), 0.5,
             {"industrial": 4.0, "mixed": 2.0, "commercial": 1.0, "residential": 0.5,
              "rural": 0.5}),
    Category("fire", "fire", 0.025, (0.40, 0.40, 0.15, 0.05), 40 * 60.0,
             ("smoke_detector", "gas_detector"), 0.6,
             {"industrial": 2.0, "commercial": 2.0, "residential": 2.0, "mixed": 1.5}),
    Category("water", "water", 0.03, (0.03, 0.30, 0.47, 0.20), 50 * 60.0,
             ("water_station",), 0.6, {"rural": 1.5}),
    Category("market_supervision", "market_supervision", 0.02, (0.0, 0.10, 0.50, 0.40),
             40 * 60.0, (), 0.0, {"commercial": 3.0, "mixed": 1.5, "rural": 0.3}),
    Category("health", "health", 0.01, (0.05, 0.25, 0.50, 0.20), 40 * 60.0, (), 0.0,
             {"residential": 2.0, "commercial": 2.0}),
    Category("housing_construction", "housing_construction", 0.015, (0.0, 0.15, 0.55, 0.30),
             45 * 60.0, (), 0.0, {"residential": 2.0, "mixed": 1.5}),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Incident:
    """One incident of the stream, with everything random about it drawn up front."""

    id: str
    category: str
    qualification: str
    priority: int
    lon: float
    lat: float
    grid: str
    opened_at: float
    handling_s: float

    def state(self, assigned_unit: str | None = None) -> IncidentState:
        return IncidentState(self.id, self.category, self.priority, self.qualification,
                             self.lon, self.lat, self.grid, self.opened_at, assigned_unit)


class _Sampler:
    """Draws categories, priorities, places and handling times from one ``Random``."""

    def __init__(self, town: Town, rng: random.Random) -> None:
        self.rng = rng
        self.cat_weights = [c.share for c in CATEGORIES]
        self.vertex_cum: dict[str, list[float]] = {}
        self.devices: dict[str, list[Place]] = {}
        for c in CATEGORIES:
            acc = 0.0
            cum = []
            for v in town.vertices:
                acc += c.zones.get(v.zone, 1.0)
                cum.append(acc)
            self.vertex_cum[c.name] = cum
            self.devices[c.name] = [d for d in town.devices if d.model in c.device_models]
        self.vertices = town.vertices

    def draw(self, iid: str, opened_at: float) -> Incident:
        rng = self.rng
        cat = rng.choices(CATEGORIES, weights=self.cat_weights)[0]
        priority = rng.choices((1, 2, 3, 4), weights=cat.priorities)[0]
        devs = self.devices[cat.name]
        if devs and rng.random() < cat.device_share:
            place = rng.choice(devs)
        else:
            place = rng.choices(self.vertices, cum_weights=self.vertex_cum[cat.name])[0]
        handling = cat.handling_median_s * math.exp(rng.gauss(0.0, HANDLING_SIGMA))
        handling = min(HANDLING_MAX_S, max(HANDLING_MIN_S, handling))
        return Incident(iid, cat.name, cat.qualification, priority, place.lon, place.lat,
                        place.grid, opened_at, round(handling, 1))


def make_stream(town: Town, seed: int, hours: float, rate: float) -> tuple[Incident, ...]:
    """The seeded incident stream: piecewise-constant Poisson arrivals (``DIURNAL``)."""
    rng = random.Random(f"stream/{seed}")
    sampler = _Sampler(town, rng)
    out: list[Incident] = []
    end = hours * 3600.0
    for hour in range(math.ceil(hours)):
        lam = rate * DIURNAL[hour % 24] / 3600.0
        t = hour * 3600.0
        stop = min(end, t + 3600.0)
        while lam > 0:
            # Memorylessness: restarting the clock at each hour boundary is exact.
            t += rng.expovariate(lam)
            if t >= stop:
                break
            out.append(sampler.draw(f"I{len(out) + 1:05d}", T0 + t))
    return tuple(out)

