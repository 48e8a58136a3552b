"""Value generators for the demo town's sensors: pure, seeded, time passed in.

``make_generator(device, seed, ...)`` returns a generator for one device of the town file
(any model it lists); ``gen.sample(t)`` gives the values the device reports at UNIX time
``t`` as ``{metric: value}``, or ``None`` while the device is dead (silent). Calls must
come in non-decreasing ``t``; the same seed and the same times give the same values.

Normal operation is a daily pattern (local time, UTC+8) + slow drift (an Ornstein-Uhlenbeck
walk) + measurement noise, clamped to keep every value clear of the alarm thresholds in
simulators/data/rules.toml and below their *clear* levels, so an alarm raised by an event
always clears afterwards. Faults: a device now and then goes dead (no data) or sticks
(repeats its last values exactly) for a while.

Events are rare, deliberate excursions over an alarm limit, shaped as ramp up, plateau,
ramp down, and then back to normal: a gas leak, a smoke alarm, a river over its warning
level or a traffic jam lasting 1-3 minutes (threshold rules raise at once); a PM2.5 episode
(42-55 min: the spike rule wants 150 µg/m³ held for 30 min) or night-time construction
noise (17-27 min: the noise rules want the zone limit exceeded for 10 min). Their rate is
per device (``event_rate_per_s``); ``event_rates`` spreads a town-wide rate over the devices.

Normal values also respect the other rules of rules.toml: gas never climbs as fast as the
``gas_rising_fast`` rate rule (5 %LEL per minute) outside a leak, and dead sensors are rare
enough that ``device_offline`` alarms stay occasional.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

# China Standard Time: the town's daily rhythm follows local clocks.
UTC_OFFSET_S = 8 * 3600

# GB 3096-2008 table 1: environmental noise limits, dB(A), (day 06-22, night 22-06), by
# acoustic functional zone; "4" is 4a (beside main roads).
NOISE_LIMITS = {"0": (50.0, 40.0), "1": (55.0, 45.0), "2": (60.0, 50.0), "3": (65.0, 55.0),
                "4": (70.0, 55.0)}

# Relative likelihood of an event by model. Gas leaks and traffic jams are what a command
# center sees most; floods are rarer; PM2.5 episodes and construction noise last long, so
# they come less often.
EVENT_WEIGHTS = {"gas_detector": 1.0, "traffic_counter": 0.8, "smoke_detector": 0.6,
                 "water_station": 0.4, "air_station": 0.3, "noise_meter": 0.3}
# Default: on average one event a minute in the whole town (issue 15: a newcomer should see
# the town's pulse within the first minute; 30-90 s is the range that stays readable, not a
# wall of red). `./hubctl demo --event-every S` sets it; the "calm" scenario turns it off.
DEFAULT_EVENT_EVERY_S = 60.0
# Faults per device: dead about once in ten days for 5-20 min (each one raises the hub's
# device_offline alarm: with ~300 devices about one an hour), stuck about every two days
# for 10-40 min (no rule sees a frozen value; the console's charts do).
DEFAULT_DEAD_RATE_PER_S = 1.0 / 864_000
DEFAULT_STUCK_RATE_PER_S = 1.0 / 172_800
DEAD_DURATION_S = (300.0, 1200.0)
STUCK_DURATION_S = (600.0, 2400.0)
# Event length: 1-3 minutes, and at least two reporting intervals so that a sample always
# lands on the plateau. Models whose rules want the limit held for a while get longer
# events: the plateau must outlast the rule's for_s (pm25_spike 1800 s, noise 600 s) plus a
# reporting interval.
EVENT_DURATION_S = (60.0, 180.0)
EVENT_DURATION_BY_MODEL = {"air_station": (2520.0, 3300.0), "noise_meter": (1020.0, 1620.0)}
# The ramps take this fraction of the event at each end, at most RAMP_MAX_S.
RAMP_FRACTION = 0.15
RAMP_MAX_S = 300.0


def local_hour(t: float) -> float:
    """Hour of the day (0..24, fractional) in the town's local time."""
    return ((t + UTC_OFFSET_S) % 86_400.0) / 3600.0


def _bump(h: float, centre: float, width: float) -> float:
    """A Gaussian bump over the hour of day (wraps around midnight)."""
    d = min(abs(h - centre), 24.0 - abs(h - centre))
    return math.exp(-0.5 * (d / width) ** 2)


def daytime(h: float) -> float:
    """0 at night, 1 by day, with smooth dawn (~06:00) and dusk (~22:00)."""
    return 1.0 / (1.0 + math.exp(-2.0 * (h - 6.0))) / (1.0 + math.exp(1.5 * (h - 22.0)))


def traffic_demand(h: float) -> float:
    """Traffic demand 0..1: quiet nights, busy days, peaks 07-09 and 17-19."""
    base = 0.06 + 0.36 * daytime(h)
    peaks = 0.55 * _bump(h, 8.0, 0.7) + 0.55 * _bump(h, 18.0, 0.75)
    return min(1.0, base + peaks)


def _clamp(v: float, lo: float, hi: float) -> float:
    return lo if v < lo else hi if v > hi else v


@dataclass(frozen=True, slots=True)
class Faults:
    """Per-device fault rates (per second) and event rate; zeros switch them off."""

    event_rate_per_s: float = 0.0
    dead_rate_per_s: float = DEFAULT_DEAD_RATE_PER_S
    stuck_rate_per_s: float = DEFAULT_STUCK_RATE_PER_S


NO_FAULTS = Faults(0.0, 0.0, 0.0)


@dataclass(slots=True)
class _Drift:
    """Ornstein-Uhlenbeck walk: mean-reverting drift with time constant ``tau_s`` and
    stationary standard deviation ``sd``."""

    sd: float
    tau_s: float
    x: float = 0.0

    def step(self, rng: random.Random, dt: float) -> float:
        if dt > 0:
            a = math.exp(-dt / self.tau_s)
            self.x = self.x * a + self.sd * math.sqrt(1.0 - a * a) * rng.gauss(0.0, 1.0)
        return self.x


@dataclass(slots=True)
class Event:
    start: float
    duration: float
    peak: dict[str, float]  # metric -> value on the plateau

    @property
    def ramp_s(self) -> float:
        return min(RAMP_FRACTION * self.duration, RAMP_MAX_S)

    def weight(self, t: float) -> float:
        """0 before/after, ramping to 1 on the plateau."""
        x = t - self.start
        ramp = self.ramp_s
        if x <= 0.0 or x >= self.duration:
            return 0.0
        if x < ramp:
            return x / ramp
        if x > self.duration - ramp:
            return (self.duration - x) / ramp
        return 1.0


class DeviceGenerator:
    """Base: faults, events and the sampling clock. Subclasses give ``normal`` values and
    ``event_peak`` values; ``DECIMALS`` rounds each metric as the device would."""

    DECIMALS: ClassVar[Mapping[str, int]] = {}

    def __init__(self, device: Mapping[str, Any], seed: int, faults: Faults = Faults()) -> None:
        self.device = device
        self.id: str = device["id"]
        self.model: str = device["model"]
        self.interval_s = float(device.get("interval_s", 60))
        self.faults = faults
        self.rng = random.Random(f"{seed}:{self.id}")
        self.last_t: float | None = None
        self.last_values: dict[str, float] | None = None
        self.event: Event | None = None
        self.events_started = 0
        self.dead_until = -math.inf
        self.stuck_until = -math.inf
        self.setup(self.rng)

    # ---- model specifics
    def setup(self, rng: random.Random) -> None:
        """Draw the device's own constants (base levels, site character)."""

    def normal(self, t: float, dt: float) -> dict[str, float]:
        raise NotImplementedError

    def event_peak(self, rng: random.Random, t: float) -> dict[str, float]:
        """Plateau values of an excursion starting at ``t`` (over the alarm limit);
        {} = this model has no events."""
        return {}

    # ---- shared
    def _chance(self, rate: float, dt: float) -> bool:
        return rate > 0.0 and self.rng.random() < 1.0 - math.exp(-rate * dt)

    def start_event(self, t: float, duration: float | None = None) -> Event | None:
        """Begin an excursion at ``t`` (None if this model has no alarm to trip)."""
        peak = self.event_peak(self.rng, t)
        if not peak:
            return None
        lo, hi = EVENT_DURATION_BY_MODEL.get(self.model, EVENT_DURATION_S)
        lo = max(lo, 2.0 * self.interval_s)
        d = duration if duration is not None else self.rng.uniform(lo, max(lo, hi))
        self.event = Event(t, d, peak)
        self.events_started += 1
        return self.event

    def sample(self, t: float) -> dict[str, float] | None:
        """Values at ``t`` or None while dead. Advances the drift, faults and events."""
        dt = self.interval_s if self.last_t is None else max(0.0, t - self.last_t)
        self.last_t = t
        values = self.normal(t, dt)
        f = self.faults
        if self.event is not None and t >= self.event.start + self.event.duration:
            self.event = None
        if self.event is None and t >= self.dead_until and t >= self.stuck_until:
            if self._chance(f.event_rate_per_s, dt):
                self.start_event(t)
            elif self._chance(f.dead_rate_per_s, dt):
                self.dead_until = t + self.rng.uniform(*DEAD_DURATION_S)
            elif self.last_values is not None and self._chance(f.stuck_rate_per_s, dt):
                self.stuck_until = t + self.rng.uniform(*STUCK_DURATION_S)
        if t < self.dead_until:
            return None
        if t < self.stuck_until and self.last_values is not None:
            return dict(self.last_values)
        if self.event is not None:
            w = self.event.weight(t)
            for metric, peak in self.event.peak.items():
                values[metric] = values[metric] + (peak - values[metric]) * w
        out = {m: round(v, self.DECIMALS.get(m, 2)) for m, v in values.items()}
        self.last_values = out
        return dict(out)


class TrafficCounter(DeviceGenerator):
    """vehicle_count per minute, mean speed_kmh, occupancy_pct: peaks 07-09 and 17-19
    (counts and occupancy up, speed down). Normal speed stays above the jam rule's clear
    level (20 km/h); a jam event drops it under 10 km/h."""

    DECIMALS: ClassVar[Mapping[str, int]] = {"vehicle_count": 0, "speed_kmh": 1, "occupancy_pct": 1}
    MIN_NORMAL_SPEED_KMH = 21.0

    def setup(self, rng: random.Random) -> None:
        self.capacity = rng.uniform(30.0, 60.0)  # vehicles/min at full demand
        self.free_speed = rng.uniform(40.0, 55.0)
        self.drift = _Drift(sd=0.06, tau_s=3 * 3600.0)

    def normal(self, t: float, dt: float) -> dict[str, float]:
        rng = self.rng
        demand = _clamp(traffic_demand(local_hour(t)) * (1.0 + self.drift.step(rng, dt)),
                        0.0, 1.0)
        mean = self.capacity * demand
        count = max(0.0, round(mean + rng.gauss(0.0, math.sqrt(mean + 0.25))))
        speed = self.free_speed * (1.0 - 0.45 * demand) + rng.gauss(0.0, 1.5)
        occupancy = 2.0 + 38.0 * demand ** 1.3 + rng.gauss(0.0, 1.5)
        return {"vehicle_count": count,
                "speed_kmh": _clamp(speed, self.MIN_NORMAL_SPEED_KMH, 70.0),
                "occupancy_pct": _clamp(occupancy, 0.5, 60.0)}

    def event_peak(self, rng: random.Random, t: float) -> dict[str, float]:
        return {"speed_kmh": rng.uniform(3.0, 8.0), "occupancy_pct": rng.uniform(70.0, 95.0),
                "vehicle_count": float(rng.randint(2, 8))}


class GasDetector(DeviceGenerator):
    """gas_lel_pct near 0-3 with rare small bumps (still under 10); a leak rises to 30-60."""

    DECIMALS: ClassVar[Mapping[str, int]] = {"gas_lel_pct": 1}
    MAX_NORMAL = 8.0  # under the rule's clear level of 10 %LEL

    # A whiff (a valve opened, a delivery truck) about every 6 hours, climbing and fading at
    # 1 %LEL a minute: a fifth of the gas_rising_fast rate rule (5 %LEL a minute).
    BUMP_EVERY_S = 6 * 3600.0
    BUMP_RATE_PER_S = 1.0 / 60.0

    def setup(self, rng: random.Random) -> None:
        self.base = rng.uniform(0.2, 1.5)
        self.drift = _Drift(sd=0.4, tau_s=2 * 3600.0)
        self.bump = 0.0
        self.bump_target = 0.0

    def normal(self, t: float, dt: float) -> dict[str, float]:
        rng = self.rng
        step = self.BUMP_RATE_PER_S * dt
        if self.bump_target > 0.0:
            self.bump = min(self.bump_target, self.bump + step)
            if self.bump >= self.bump_target:
                self.bump_target = 0.0  # peaked: fade
        elif self.bump > 0.0:
            self.bump = max(0.0, self.bump - step)
        elif rng.random() < 1.0 - math.exp(-dt / self.BUMP_EVERY_S):
            self.bump_target = rng.uniform(1.5, 4.0)
        v = self.base + self.drift.step(rng, dt) + self.bump + rng.gauss(0.0, 0.1)
        return {"gas_lel_pct": _clamp(v, 0.0, self.MAX_NORMAL)}

    def event_peak(self, rng: random.Random, t: float) -> dict[str, float]:
        return {"gas_lel_pct": rng.uniform(30.0, 60.0)}


class SmokeDetector(DeviceGenerator):
    """smoke_obscuration_pct ~0-1; temperature_c with a daily curve (warmest ~15:00).
    A fire event: obscuration 10-25 %/m and the temperature up 15-35 °C."""

    DECIMALS: ClassVar[Mapping[str, int]] = {"smoke_obscuration_pct": 2, "temperature_c": 1}

    def setup(self, rng: random.Random) -> None:
        self.base_smoke = rng.uniform(0.05, 0.4)
        self.base_temp = rng.uniform(17.0, 24.0)  # indoor, depends on the site
        self.amplitude = rng.uniform(2.0, 5.0)
        self.drift = _Drift(sd=0.8, tau_s=6 * 3600.0)

    def normal(self, t: float, dt: float) -> dict[str, float]:
        rng = self.rng
        h = local_hour(t)
        temp = (self.base_temp + self.amplitude * math.cos(2 * math.pi * (h - 15.0) / 24.0)
                + self.drift.step(rng, dt) + rng.gauss(0.0, 0.15))
        smoke = self.base_smoke + abs(rng.gauss(0.0, 0.12))
        return {"smoke_obscuration_pct": _clamp(smoke, 0.0, 1.0),
                "temperature_c": _clamp(temp, 5.0, 38.0)}

    def event_peak(self, rng: random.Random, t: float) -> dict[str, float]:
        return {"smoke_obscuration_pct": rng.uniform(10.0, 25.0),
                "temperature_c": rng.uniform(40.0, 60.0)}


class AirStation(DeviceGenerator):
    """pm25 / pm10 in µg/m³: typical Jiangsu levels, higher at night and in the morning
    (inversion, rush hour), lowest in the afternoon. PM2.5 stays under 72 so that the
    rules' 75 (24 h mean limit, clear level of the spike rule) is never reached in normal
    operation. Events: an episode of 160-260 held for the spike rule's 30 minutes."""

    DECIMALS: ClassVar[Mapping[str, int]] = {"pm25": 1, "pm10": 1}
    MAX_NORMAL_PM25 = 72.0

    def setup(self, rng: random.Random) -> None:
        industrial = self.device.get("zone") == "industrial"
        self.base = rng.uniform(34.0, 46.0) + (6.0 if industrial else 0.0)
        self.ratio = rng.uniform(1.45, 1.85)  # PM10 / PM2.5
        self.drift = _Drift(sd=7.0, tau_s=4 * 3600.0)

    def normal(self, t: float, dt: float) -> dict[str, float]:
        rng = self.rng
        h = local_hour(t)
        pm25 = (self.base + 10.0 * math.cos(2 * math.pi * (h - 7.0) / 24.0)
                + 5.0 * _bump(h, 8.0, 1.0) + self.drift.step(rng, dt) + rng.gauss(0.0, 2.0))
        pm25 = _clamp(pm25, 12.0, self.MAX_NORMAL_PM25)
        pm10 = pm25 * self.ratio + rng.gauss(0.0, 3.0)
        return {"pm25": pm25, "pm10": _clamp(pm10, pm25, 140.0)}

    def event_peak(self, rng: random.Random, t: float) -> dict[str, float]:
        pm25 = rng.uniform(160.0, 260.0)
        return {"pm25": pm25, "pm10": pm25 * self.ratio}


class NoiseMeter(DeviceGenerator):
    """noise_db a few dB under the GB 3096-2008 limit of the meter's zone, day and night;
    roadside (zone 4) meters follow the traffic. Events: 4-10 dB over the limit."""

    DECIMALS: ClassVar[Mapping[str, int]] = {"noise_db": 1}

    def setup(self, rng: random.Random) -> None:
        self.zone = str(self.device.get("noise_zone", "2"))
        self.day_limit, self.night_limit = NOISE_LIMITS.get(self.zone, NOISE_LIMITS["2"])
        self.margin = rng.uniform(3.0, 7.0)
        self.drift = _Drift(sd=1.0, tau_s=2 * 3600.0)

    def limit(self, t: float) -> float:
        """The zone's legal limit at ``t``: day 06-22, night 22-06 (GB 3096-2008)."""
        h = local_hour(t)
        return self.day_limit if 6.0 <= h < 22.0 else self.night_limit

    def normal(self, t: float, dt: float) -> dict[str, float]:
        rng = self.rng
        h = local_hour(t)
        # The level changes smoothly at dawn and dusk; the legal limit switches at 06 and 22.
        level = self.night_limit + (self.day_limit - self.night_limit) * daytime(h)
        limit = self.limit(t)
        v = level - self.margin + self.drift.step(rng, dt) + rng.gauss(0.0, 1.2)
        if self.zone == "4":
            v += 4.0 * (traffic_demand(h) - 0.5)
        # 2.5 dB under the limit: below the noise rules' clear level (limit - 2), so an alarm
        # raised by an event always clears once it is over.
        return {"noise_db": _clamp(v, 30.0, limit - 2.5)}

    def event_peak(self, rng: random.Random, t: float) -> dict[str, float]:
        """Construction or a loudspeaker: 4-10 dB over the limit in force at the start."""
        return {"noise_db": self.limit(t) + rng.uniform(4.0, 10.0)}


class WaterStation(DeviceGenerator):
    """water_level_m ~2.5-3.5 with a slow daily swing and drift; COD 10-25 mg/L.
    A flood event: level 4.3-4.7 m (the warning level is 4.2 m)."""

    DECIMALS: ClassVar[Mapping[str, int]] = {"water_level_m": 2, "water_quality_cod_mg_l": 1}

    def setup(self, rng: random.Random) -> None:
        self.level = rng.uniform(2.75, 3.2)
        self.cod = rng.uniform(13.0, 20.0)
        self.phase = rng.uniform(0.0, 24.0)
        self.level_drift = _Drift(sd=0.1, tau_s=12 * 3600.0)
        self.cod_drift = _Drift(sd=2.0, tau_s=6 * 3600.0)

    def normal(self, t: float, dt: float) -> dict[str, float]:
        rng = self.rng
        h = local_hour(t)
        level = (self.level + 0.08 * math.sin(2 * math.pi * (h - self.phase) / 24.0)
                 + self.level_drift.step(rng, dt) + rng.gauss(0.0, 0.01))
        cod = self.cod + self.cod_drift.step(rng, dt) + rng.gauss(0.0, 0.6)
        return {"water_level_m": _clamp(level, 2.5, 3.5),
                "water_quality_cod_mg_l": _clamp(cod, 10.0, 25.0)}

    def event_peak(self, rng: random.Random, t: float) -> dict[str, float]:
        return {"water_level_m": rng.uniform(4.3, 4.7)}


GENERATORS: dict[str, type[DeviceGenerator]] = {
    "traffic_counter": TrafficCounter,
    "gas_detector": GasDetector,
    "smoke_detector": SmokeDetector,
    "air_station": AirStation,
    "noise_meter": NoiseMeter,
    "water_station": WaterStation,
}


def make_generator(device: Mapping[str, Any], seed: int,
                   faults: Faults = Faults()) -> DeviceGenerator:
    """The generator for a town-file device (KeyError for an unknown model)."""
    return GENERATORS[device["model"]](device, seed, faults)


def event_rates(devices: Sequence[Mapping[str, Any]],
                every_s: float = DEFAULT_EVENT_EVERY_S) -> dict[str, float]:
    """Per-device event rates (1/s) giving on average one event per ``every_s`` seconds in
    the whole town, spread by ``EVENT_WEIGHTS``. ``every_s <= 0`` switches events off."""
    total = sum(EVENT_WEIGHTS.get(d["model"], 0.0) for d in devices)
    if every_s <= 0 or total <= 0:
        return {d["id"]: 0.0 for d in devices}
    return {d["id"]: EVENT_WEIGHTS.get(d["model"], 0.0) / total / every_s for d in devices}
