"""The ingest pipeline: deliveries in; rows, dead letters and alarms out.

decode (pure, ingest/wire.py) -> registry check -> batched writer (acks after commit)
and, on the live path, rule evaluation (ingest/evaluator.py) -> alarm writes. Rules run
on the live path rather than after a batch flush so that an alarm reaches the console
within milliseconds of the reading.

Three shapes (ingest/service.py picks): store and evaluate (one ingest process: a message
is acknowledged once its batch committed *and* the evaluator checkpointed), store only (a
storage consumer on the shared subscription when scaled out) and evaluate only (the
leader-elected evaluator's own subscription when scaled out).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import asyncpg

from core.db import Querier
from core.geometry import Polygon
from ingest import senml_names, wire
from ingest.batch import TelemetryRow, ts_of
from ingest.evaluator import RuleEvaluator
from ingest.mqtt import Delivery
from ingest.subjects import Subject, Watched
from ingest.writer import BatchWriter

log = logging.getLogger("ingest.pipeline")

@dataclass(frozen=True, slots=True)
class DeviceInfo:
    id: str
    model: str
    grid_id: str


# What the registry is built from, as one digest per table (md5 of the rows' text in a
# fixed order): the same rows give the same digests, any edit another.
_REGISTRY_DIGEST = """SELECT
  (SELECT md5(coalesce(string_agg((id, model, grid_id, props, interval_s, senml_map)::text,
                                  '|' ORDER BY id), '')) FROM devices WHERE revoked_at IS NULL),
  (SELECT md5(coalesce(string_agg((id, geometry)::text, '|' ORDER BY id), ''))
     FROM grids WHERE level = 2),
  (SELECT md5(coalesce(string_agg((id, type, home_grid, patrol_grids)::text, '|' ORDER BY id),
                       '')) FROM units),
  (SELECT md5(coalesce(string_agg(r::text, '|' ORDER BY r.id), ''))
     FROM rules r WHERE r.enabled)"""


class Registry:
    """Known devices and units, and the alarm rules over them; reloaded when they change."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceInfo] = {}
        self.units: set[str] = set()
        self.watched: list[Watched] = []
        # SenML names of devices alone and LwM2M paths, with each device's overrides.
        self.senml_names = senml_names.EMPTY
        self.device_subjects: dict[str, Subject] = {}
        self.unit_subjects: dict[str, Subject] = {}
        self._seen: tuple[Any, ...] | None = None  # the digest of the last load

    async def load(self, conn: Querier) -> bool:
        """Read devices, grids, units and enabled rules; False (and nothing rebuilt) when
        they are as at the last load. The ingest role reloads every few seconds: rebuilding
        the rules' subjects for thousands of devices each time would stall the event loop
        and throw away the watch's per-device rule cache for nothing."""
        # A digest of the rows first, computed by the database: reading and comparing
        # 10,000 device rows in the hub took one piece of 20-40 ms of the event loop every
        # reload, which alarms and console events waited behind (docs/PERFORMANCE.md).
        digest = await conn.fetchrow(_REGISTRY_DIGEST)
        assert digest is not None  # one row, always
        seen = tuple(digest)
        if seen == self._seen:
            return False
        devs = await conn.fetch("SELECT id, model, grid_id, props, interval_s, senml_map "
                                "FROM devices WHERE revoked_at IS NULL")
        grid_rows = await conn.fetch("SELECT id, geometry FROM grids WHERE level = 2")
        units = await conn.fetch("SELECT id, type, home_grid, patrol_grids FROM units")
        rule_rows = await conn.fetch("SELECT * FROM rules WHERE enabled ORDER BY id")
        self._seen = seen
        self.devices = {r["id"]: DeviceInfo(r["id"], r["model"], r["grid_id"]) for r in devs}
        self.senml_names = senml_names.NameMap(
            self.devices, {r["id"]: dict(r["senml_map"]) for r in devs if r["senml_map"]})
        self.device_subjects = {
            r["id"]: Subject(r["id"], r["model"], r["grid_id"], dict(r["props"] or {}),
                             float(r["interval_s"])) for r in devs}
        grids = {r["id"]: Polygon.of(r["geometry"]["coordinates"][0]) for r in grid_rows}
        self.units = {r["id"] for r in units}
        self.unit_subjects = {
            r["id"]: Subject(r["id"], r["type"], r["home_grid"],
                             fence=tuple(grids[g] for g in r["patrol_grids"] if g in grids))
            for r in units}
        self.watched = [Watched.from_row(dict(r)) for r in rule_rows]
        return True


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
    # Updated per reading by Pipeline.handle (inlined there: it runs for every reading):
    # skew_s is an exponential average of received - device time (SKEW_ALPHA), flagged
    # when its size passes the clock-skew limit.


# The sort key of a burst (C-level: a Python function here was called per reading).
_by_ts = attrgetter("ts")
_device_of = attrgetter("device_id")


class Pipeline:
    def __init__(self, pool: asyncpg.Pool, writer: BatchWriter | None, registry: Registry,
                 limits: wire.Limits = wire.DEFAULT_LIMITS, *, reorder_window_s: float = 2.0,
                 clock_skew_limit_s: float = 60.0,
                 evaluator: RuleEvaluator | None = None) -> None:
        self.pool = pool
        self.writer = writer
        self.registry = registry
        self.limits = limits
        self.evaluator = evaluator
        self.configure_rules()
        self.decoded = 0
        self.late = 0
        self.rejected: dict[str, int] = defaultdict(int)
        self.reorder_window_s = reorder_window_s
        self.clock_skew_limit_s = clock_skew_limit_s
        self.clocks: dict[str, DeviceClock] = {}
        self.dirty_clocks: set[str] = set()
        # Readings of the current burst waiting to be evaluated in device-time order.
        self._to_evaluate: list[wire.Reading] = []
        self._rcv_at = -1.0
        self._rcv = ts_of(0.0)
        # Live positions for the console (set by the hub when a web role runs here too).
        self.on_position: (
            Callable[[str, float, float, float, float | None, float | None], None] | None
        ) = None

    # Called on the event loop with a burst of deliveries from the MQTT thread.
    def on_delivery(self, deliveries: list[Delivery]) -> None:
        w = self.writer
        for topic, payload, mid, received_at, gen in deliveries:
            self.handle(topic, payload, received_at)
            if w is not None:
                w.add_ack(mid, gen)
        if self._to_evaluate:
            # Everything that arrived together (a gateway batch, a backlog after a
            # reconnect) reaches the rules in device-time order; the sort is stable, so
            # each device's readings keep their order among equal times.
            burst, self._to_evaluate = self._to_evaluate, []
            burst.sort(key=_by_ts)
            self.evaluate(burst)
        if w is None and self.evaluator is not None:
            # Evaluate only: nothing to store, acknowledged at the evaluator's checkpoint.
            self.evaluator.hold((mid, gen) for _t, _p, mid, _r, gen in deliveries)

    def handle(self, topic: str, payload: bytes, received_at: float) -> None:
        res = wire.decode(topic, payload, received_at, self.limits, self.registry.senml_names)
        if isinstance(res, wire.DecodeError):
            self.reject(topic, payload, res.code, res.detail, received_at)
            return
        readings = res.readings
        devices = self.registry.devices
        if not all(map(devices.__contains__, map(_device_of, readings))):  # C-level
            unknown = next(r.device_id for r in readings if r.device_id not in devices)
            self.reject(topic, payload, "unknown_device", unknown, received_at)
            return
        for p in res.positions:
            if p.unit_id not in self.registry.units:
                self.reject(topic, payload, "unknown_unit", p.unit_id, received_at)
                return
        self.decoded += 1
        if readings:
            rows: list[TelemetryRow] = []
            append = rows.append
            clocks = self.clocks
            window = self.reorder_window_s
            limit_s = self.clock_skew_limit_s
            in_order = True  # every reading at least as new as its device's newest so far
            any_late = False
            for r in readings:
                ts = r.ts
                clock = clocks.get(r.device_id)
                if clock is None:
                    clock = clocks[r.device_id] = DeviceClock()
                # The clock's update, inlined: as a method call per reading it was ~6 % of
                # the hub's CPU in a batched run (py-spy, docs/PERFORMANCE.md).
                skew = received_at - ts
                clock.skew_s = smoothed = skew if clock.samples == 0 else (
                    clock.skew_s + SKEW_ALPHA * (skew - clock.skew_s))
                clock.last_skew_s = skew
                clock.samples += 1
                clock.flagged = abs(smoothed) > limit_s
                newest = clock.newest_ts
                late = False
                if ts >= newest:  # the usual case: in device order
                    clock.newest_ts = ts
                else:
                    in_order = False
                    if ts < newest - window:
                        # Stored by device time, but too old to change what the rules
                        # decided.
                        late = any_late = True
                        clock.late += 1
                        self.late += 1
                append((ts, r.device_id, r.metric, r.value, received_at, late))
            self.dirty_clocks.update(map(_device_of, readings))
            if self.evaluator is not None:
                self._to_evaluate.extend(
                    [r for r, row in zip(readings, rows, strict=True) if not row[5]]
                    if any_late else readings)
            if self.writer is not None:
                self.writer.add_telemetry(rows, in_order)
        if res.positions:
            # A burst shares one receive time (the adapter stamps a burst when it reads
            # it): one datetime per burst, not per message. (Readings carry UNIX seconds.)
            if received_at != self._rcv_at:
                self._rcv_at, self._rcv = received_at, ts_of(received_at)
            rcv = self._rcv
            if self.writer is not None:
                self.writer.add_positions(
                    (ts_of(p.ts), p.unit_id, p.lat, p.lon, p.speed, p.heading, p.accuracy,
                     rcv) for p in res.positions)
            if self.evaluator is not None:
                for p in res.positions:
                    self.evaluator.position(p.unit_id, p.lon, p.lat, p.ts)
            if self.on_position is not None:
                for p in res.positions:
                    self.on_position(p.unit_id, p.ts, p.lon, p.lat, p.speed, p.heading)

    def take_dirty_clocks(self) -> list[tuple[str, DeviceClock]]:
        ids, self.dirty_clocks = self.dirty_clocks, set()
        return [(i, self.clocks[i]) for i in ids]

    def reject(self, topic: str, payload: bytes, code: str, detail: str, received_at: float
               ) -> None:
        self.rejected[code] += 1
        if self.writer is not None:  # only storage writes dead letters (once per message)
            self.writer.add_dead_letter(topic, payload, code, detail, received_at)

    def configure_rules(self) -> None:
        if self.evaluator is not None:
            r = self.registry
            self.evaluator.watch.configure(r.watched, r.device_subjects, r.unit_subjects)

    def evaluate(self, readings: list[wire.Reading]) -> None:
        if self.evaluator is not None:
            self.evaluator.readings(readings)

    def stats(self) -> dict[str, Any]:
        """Storage figures (a storage pipeline's), plus the evaluator's when it has one."""
        assert self.writer is not None
        s = self.writer.stats
        ev = self.evaluator.stats() if self.evaluator is not None else {}
        return {
            "decoded": self.decoded,
            "alarm_writes": ev.get("alarm_writes", 0),
            "alarm_backlog": ev.get("alarm_backlog", 0),
            "rules": ev or None,
            "late": self.late,
            "devices_clock_flagged": sum(1 for c in self.clocks.values() if c.flagged),
            "rejected": dict(self.rejected),
            "pending_rows": self.writer.pending(),
            "telemetry_rows": s.telemetry_rows,
            "position_rows": s.position_rows,
            "dead_letters": s.dead_letters,
            "batches": s.flushed_batches,
            "merged_batches": s.merged_batches,
            "conflicts": s.conflicts,
            "flushes_in_flight": s.in_flight,
            "last_commit_ms": round(s.last_commit_ms, 2),
            "db_ok": s.db_ok,
            # Mean per flushed batch: waiting for a slot, flushing, commit to release.
            "flush_queue_ms": _mean_ms(s.queued_s, s.flushed_batches),
            "flush_ms": _mean_ms(s.flush_s, s.flushed_batches),
            "ack_hold_ms": _mean_ms(s.ack_hold_s, s.released_batches),
        }


def _mean_ms(total_s: float, n: int) -> float:
    return round(1000.0 * total_s / n, 2) if n else 0.0
