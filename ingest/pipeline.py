"""The ingest pipeline: deliveries in; rows, dead letters and alarms out.

decode (pure, ingest/wire.py) -> registry check -> batched writer (acks after commit)
and, on the live path, rule evaluation (pure, ingest/rules.py) -> alarm writes. Rules run
on the live path rather than after a batch flush so that an alarm reaches the console
within milliseconds of the reading.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from core.db import Querier
from ingest import alarms, rules, wire
from ingest.mqtt import Delivery
from ingest.writer import BatchWriter, ts_of

log = logging.getLogger("ingest.pipeline")

# Alarm writes waiting for the database; beyond this the oldest transitions would be
# delayed, never dropped: the queue applies backpressure to nothing but itself.
ALARM_QUEUE_MAX = 10000


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    id: str
    model: str
    grid_id: str


class Registry:
    """Known devices and units, and the rules by metric; reloaded when they change."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceInfo] = {}
        self.units: set[str] = set()
        self.rules_by_metric: dict[str, list[rules.Rule]] = defaultdict(list)

    async def load(self, conn: Querier) -> None:
        devs = await conn.fetch(
            "SELECT id, model, grid_id FROM devices WHERE revoked_at IS NULL")
        self.devices = {r["id"]: DeviceInfo(r["id"], r["model"], r["grid_id"]) for r in devs}
        self.units = {r["id"] for r in await conn.fetch("SELECT id FROM units")}
        by_metric: dict[str, list[rules.Rule]] = defaultdict(list)
        for r in await conn.fetch("SELECT * FROM rules WHERE enabled ORDER BY id"):
            rule = rules.Rule.from_row(r)
            if rule.metric:
                by_metric[rule.metric].append(rule)
        self.rules_by_metric = by_metric


# Smoothing of a device's clock skew: each reading moves the estimate 10% of the way, so
# one delayed message does not flag a device but a clock that is really off does within
# a few dozen readings.
SKEW_ALPHA = 0.1


@dataclass(slots=True)
class DeviceClock:
    """What the hub knows of one device's clock and ordering."""

    newest_ts: float = float("-inf")  # newest device time seen
    skew_s: float = 0.0               # smoothed received - device time
    last_skew_s: float = 0.0
    samples: int = 0
    late: int = 0
    flagged: bool = False

    def observe(self, ts: float, received_at: float, limit_s: float) -> None:
        skew = received_at - ts
        self.skew_s = skew if self.samples == 0 else (
            self.skew_s + SKEW_ALPHA * (skew - self.skew_s))
        self.last_skew_s = skew
        self.samples += 1
        self.flagged = abs(self.skew_s) > limit_s


def _by_ts(r: wire.Reading) -> float:
    return r.ts


class Pipeline:
    def __init__(self, pool: asyncpg.Pool, writer: BatchWriter, registry: Registry,
                 limits: wire.Limits = wire.DEFAULT_LIMITS, *, reorder_window_s: float = 2.0,
                 clock_skew_limit_s: float = 60.0) -> None:
        self.pool = pool
        self.writer = writer
        self.registry = registry
        self.limits = limits
        self.rule_state: dict[tuple[str, str], rules.RuleState] = {}
        self.alarm_queue: asyncio.Queue[tuple[str, rules.Rule, str, float, float]] = (
            asyncio.Queue(ALARM_QUEUE_MAX))
        self.decoded = 0
        self.late = 0
        self.rejected: dict[str, int] = defaultdict(int)
        self.reorder_window_s = reorder_window_s
        self.clock_skew_limit_s = clock_skew_limit_s
        self.clocks: dict[str, DeviceClock] = {}
        self.dirty_clocks: set[str] = set()
        # Readings of the current burst waiting to be evaluated in device-time order.
        self._to_evaluate: list[wire.Reading] = []
        # Live positions for the console (set by the hub when a web role runs here too).
        self.on_position: (
            Callable[[str, float, float, float, float | None, float | None], None] | None
        ) = None

    # Called on the event loop with a burst of deliveries from the MQTT thread.
    def on_delivery(self, deliveries: list[Delivery]) -> None:
        w = self.writer
        for topic, payload, mid, received_at, gen in deliveries:
            self.handle(topic, payload, received_at)
            w.add_ack(mid, gen)
        if self._to_evaluate:
            # Everything that arrived together (a gateway batch, a backlog after a
            # reconnect) reaches the rules in device-time order; the sort is stable, so
            # each device's readings keep their order among equal times.
            burst, self._to_evaluate = self._to_evaluate, []
            burst.sort(key=_by_ts)
            self.evaluate(burst)

    def handle(self, topic: str, payload: bytes, received_at: float) -> None:
        res = wire.decode(topic, payload, received_at, self.limits)
        if isinstance(res, wire.DecodeError):
            self.reject(topic, payload, res.code, res.detail, received_at)
            return
        devices = self.registry.devices
        for r in res.readings:
            if r.device_id not in devices:
                self.reject(topic, payload, "unknown_device", r.device_id, received_at)
                return
        for p in res.positions:
            if p.unit_id not in self.registry.units:
                self.reject(topic, payload, "unknown_unit", p.unit_id, received_at)
                return
        self.decoded += 1
        rcv = ts_of(received_at)
        if res.readings:
            rows = []
            clocks = self.clocks
            window = self.reorder_window_s
            for r in res.readings:
                clock = clocks.get(r.device_id)
                if clock is None:
                    clock = clocks[r.device_id] = DeviceClock()
                clock.observe(r.ts, received_at, self.clock_skew_limit_s)
                late = r.ts < clock.newest_ts - window
                if late:
                    # Stored by device time, but too old to change what the rules decided.
                    clock.late += 1
                    self.late += 1
                else:
                    if r.ts > clock.newest_ts:
                        clock.newest_ts = r.ts
                    self._to_evaluate.append(r)
                rows.append((ts_of(r.ts), r.device_id, r.metric, r.value, rcv, late))
            self.dirty_clocks.update(r.device_id for r in res.readings)
            self.writer.add_telemetry(rows)
        if res.positions:
            self.writer.add_positions(
                (ts_of(p.ts), p.unit_id, p.lat, p.lon, p.speed, p.heading, p.accuracy, rcv)
                for p in res.positions)
            if self.on_position is not None:
                for p in res.positions:
                    self.on_position(p.unit_id, p.ts, p.lon, p.lat, p.speed, p.heading)

    def take_dirty_clocks(self) -> list[tuple[str, DeviceClock]]:
        ids, self.dirty_clocks = self.dirty_clocks, set()
        return [(i, self.clocks[i]) for i in ids]

    def reject(self, topic: str, payload: bytes, code: str, detail: str, received_at: float
               ) -> None:
        self.rejected[code] += 1
        self.writer.add_dead_letter(topic, payload, code, detail, received_at)

    def evaluate(self, readings: list[wire.Reading]) -> None:
        by_metric = self.registry.rules_by_metric
        for r in readings:
            candidates = by_metric.get(r.metric)
            if not candidates:
                continue
            dev = self.registry.devices[r.device_id]
            for rule in candidates:
                if rule.device_model and rule.device_model != dev.model:
                    continue
                key = (rule.id, r.device_id)
                state = self.rule_state.get(key, rules.INITIAL)
                new_state, verdict = rules.evaluate(rule, state, r.value, r.ts)
                self.rule_state[key] = new_state
                if verdict is not None:
                    try:
                        self.alarm_queue.put_nowait((verdict, rule, r.device_id, r.value, r.ts))
                    except asyncio.QueueFull:
                        log.error("alarm queue full: transition of %s on %s delayed",
                                  rule.id, r.device_id)

    async def run_alarms(self) -> None:
        """Write alarm transitions in the order they were seen."""
        while True:
            verdict, rule, device_id, value, ts = await self.alarm_queue.get()
            dev = self.registry.devices.get(device_id)
            while True:
                try:
                    if verdict == "raise":
                        await alarms.raise_alarm(
                            self.pool, rule_id=rule.id, device_id=device_id,
                            grid_id=dev.grid_id if dev else None, severity=rule.severity,
                            value=value, message=rules.describe(rule, value), ts=ts)
                    else:
                        await alarms.clear_alarm_for(
                            self.pool, rule_id=rule.id, device_id=device_id, ts=ts)
                    break
                except Exception as e:  # retried until it lands: a transition is a fact
                    log.warning("alarm write failed (%s: %s); retrying", type(e).__name__, e)
                    await asyncio.sleep(0.5)

    async def restore_rule_state(self) -> None:
        """Open alarms mean active rule state: a restart does not re-fire them."""
        for a in await alarms.open_alarms(self.pool):
            self.rule_state[(a["rule_id"], a["device_id"])] = rules.RuleState(
                True, float(a["last_seen"]))

    def stats(self) -> dict[str, Any]:
        s = self.writer.stats
        return {
            "decoded": self.decoded,
            "late": self.late,
            "devices_clock_flagged": sum(1 for c in self.clocks.values() if c.flagged),
            "rejected": dict(self.rejected),
            "pending_rows": self.writer.pending(),
            "telemetry_rows": s.telemetry_rows,
            "position_rows": s.position_rows,
            "dead_letters": s.dead_letters,
            "batches": s.flushed_batches,
            "last_commit_ms": round(s.last_commit_ms, 2),
            "db_ok": s.db_ok,
        }
