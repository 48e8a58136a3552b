"""The alarm watch: the I/O shell around the pure rules (ingest/rules.py) and storm control
(ingest/storm.py).

It keeps every (rule, subject) state in memory, feeds it readings in device-time order
(from the pipeline, on the live path), GPS fixes (geofence rules) and the wall clock (no-data
rules, flapping releases), and turns verdicts into alarm writes, one at a time and in order,
through ``ingest.alarms``. On the way a verdict passes the flap detector (an alarm that
keeps raising and clearing is held active and flagged instead of spamming), the storm
grouper (many devices of one grid going silent together become one situation alarm) and
the per-rule rate cap (suppressed raises are counted and shown on the rule).

Rule states are written to ``rule_state`` every ``PERSIST_INTERVAL_S`` and read back at
start, so a restart neither re-fires an active alarm nor forgets a pending duration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg

from ingest import alarms, rules
from ingest.storm import FlapDetector, RateCap, StormGrouper

log = logging.getLogger("ingest.watch")

# Flapping: more than 3 clears in 10 minutes is flapping; it ends after 5 quiet minutes.
# Three cycles is what a real intermittent fault shows; a sensor at its limit does more.
FLAP_MAX = 3
FLAP_WINDOW_S = 600.0
FLAP_STABLE_S = 300.0
# Storm: 3 devices of one second-level grid silent within 2 minutes is a situation (power
# or network cut), not 3 device faults.
STORM_MIN_DEVICES = 3
STORM_WINDOW_S = 120.0
# Default per-rule cap when a rule has none: 100 raises a minute is already more than any
# operator can read; the rest are counted.
CAP_RAISES = 100
CAP_WINDOW_S = 60.0
# Rule states are saved this often; a restart loses at most this much of a pending time.
PERSIST_INTERVAL_S = 2.0
# The no-data timer and flap releases run this often.
TICK_S = 1.0
# Alarm transitions waiting for the database (never dropped; see run()).
QUEUE_MAX = 100_000
# China Standard Time, for rules with active hours (e.g. GB 3096-2008 night limits).
LOCAL_OFFSET_S = 8 * 3600


def parse_hours(text: str | None) -> tuple[int, int] | None:
    """``"22:00-06:00"`` -> (79200, 21600) seconds of the local day; None for all day."""
    if not text:
        return None
    start, _, end = text.partition("-")

    def sec(hhmm: str) -> int:
        hh, _, mm = hhmm.strip().partition(":")
        return int(hh) * 3600 + int(mm or 0) * 60

    return sec(start), sec(end)


def in_hours(hours: tuple[int, int] | None, ts: float) -> bool:
    if hours is None:
        return True
    t = (ts + LOCAL_OFFSET_S) % 86400
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
    fence: tuple[rules.Polygon, ...] = ()

    def matches(self, w: Watched) -> bool:
        if w.rule.device_model and w.rule.device_model != self.model:
            return False
        return all(str(self.props.get(k)) == str(v) for k, v in w.device_filter.items())


Key = tuple[str, str]  # (rule id, subject id)


@dataclass
class Transition:
    kind: str  # raise | clear | flapping | unflap | situation | situation_clear
    rule: rules.Rule
    subject: str
    grid_id: str | None = None
    value: float | None = None
    ts: float = 0.0
    message: str = ""
    members: int | None = None


class AlarmWatch:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.states: dict[Key, rules.RuleState] = {}
        self.dirty: set[Key] = set()
        self.flaps = FlapDetector(FLAP_MAX, FLAP_WINDOW_S, FLAP_STABLE_S)
        self.storms = StormGrouper(STORM_MIN_DEVICES, STORM_WINDOW_S)
        self.caps = RateCap(CAP_RAISES, CAP_WINDOW_S)
        self.queue: asyncio.Queue[Transition] = asyncio.Queue(QUEUE_MAX)
        self.devices: dict[str, Subject] = {}
        self.units: dict[str, Subject] = {}
        self.by_metric: dict[str, list[Watched]] = {}
        self._matching: dict[str, tuple[list[Watched], dict[str, list[Watched]]]] = {}
        self.nodata: list[Watched] = []
        self.geofence: list[Watched] = []
        self.rules: dict[str, Watched] = {}
        self.suppressed: dict[str, int] = defaultdict(int)
        self.written = 0
        # Transitions ever queued; a checkpoint (ingest/evaluator.py) waits until ``written``
        # reaches the count it saw before acknowledging readings.
        self.enqueued = 0

    # ---------------------------------------------------------------- configuration
    def configure(self, watched: Iterable[Watched], devices: Mapping[str, Subject],
                  units: Mapping[str, Subject]) -> None:
        """Install rules and subjects; a rule whose definition changed starts afresh."""
        new = {w.rule.id: w for w in watched}
        for rid, old in self.rules.items():
            if rid not in new or new[rid].rule != old.rule:
                for key in [k for k in self.states if k[0] == rid]:
                    del self.states[key]
        self.rules = new
        self.devices = dict(devices)
        self.units = dict(units)
        by_metric: dict[str, list[Watched]] = defaultdict(list)
        self.nodata, self.geofence = [], []
        for w in new.values():
            if w.rule.kind == "nodata":
                self.nodata.append(w)
            elif w.rule.kind == "geofence":
                self.geofence.append(w)
            elif w.rule.metric:
                by_metric[w.rule.metric].append(w)
        self.by_metric = dict(by_metric)
        self._matching: dict[str, tuple[list[Watched], dict[str, list[Watched]]]] = {}

    def _rules_of(self, dev: Subject) -> tuple[list[Watched], dict[str, list[Watched]]]:
        """The no-data rules and the per-metric rules that apply to ``dev`` (cached: the
        filter match was a few per cent of the ingest process's time, per reading)."""
        found = self._matching.get(dev.id)
        if found is None:
            nodata = [w for w in self.nodata if dev.matches(w)]
            metric = {m: [w for w in ws if dev.matches(w)] for m, ws in self.by_metric.items()}
            found = self._matching[dev.id] = (nodata, {m: ws for m, ws in metric.items() if ws})
        return found

    async def restore(self) -> None:
        """Rule states from the last run; open alarms are active whatever the rows say."""
        for r in await self.pool.fetch("SELECT rule_id, subject, state FROM rule_state"):
            try:
                self.states[(r["rule_id"], r["subject"])] = rules.RuleState.from_json(
                    r["state"])
            except ValueError:
                log.warning("dropping unreadable state of %s/%s", r["rule_id"], r["subject"])
        for a in await alarms.open_alarms(self.pool):
            if a.get("situation"):
                continue
            key = (a["rule_id"], a["device_id"])
            st = self.states.get(key, rules.INITIAL)
            if not st.active:
                self.states[key] = st._replace(active=True,
                                               last_ts=max(st.last_ts, a["last_seen"]))
        # A no-data rule needs to know when a device was last seen, also after a restart.
        if self.nodata:
            for r in await self.pool.fetch(
                    "SELECT device_id, max(ts) AS ts FROM telemetry_latest GROUP BY device_id"):
                dev = self.devices.get(r["device_id"])
                if dev is None:
                    continue
                for w in self.nodata:
                    key = (w.rule.id, dev.id)
                    st = self.states.get(key, rules.INITIAL)
                    if dev.matches(w) and st.last_ts < r["ts"].timestamp():
                        self.states[key] = st._replace(last_ts=r["ts"].timestamp())

    # ---------------------------------------------------------------- inputs
    def readings(self, readings: Sequence[Any]) -> None:
        """Readings in device-time order (``ingest.wire.Reading``)."""
        states = self.states
        for r in readings:
            dev = self.devices.get(r.device_id)
            if dev is None:
                continue
            nodata, by_metric = self._rules_of(dev)
            for w in nodata:
                self._apply(w, dev, r.value, r.ts)
            candidates = by_metric.get(r.metric)
            if not candidates:
                continue
            for w in candidates:
                if not in_hours(w.hours, r.ts):
                    continue
                key = (w.rule.id, dev.id)
                st = states.get(key, rules.INITIAL)
                new, verdict = rules.evaluate(w.rule, st, r.value, r.ts)
                if new is not st:
                    states[key] = new
                    if new.since != st.since or new.active != st.active:
                        self.dirty.add(key)
                if verdict is not None:
                    self.dirty.add(key)
                    self._verdict(w, dev, verdict, r.value, r.ts, new)

    def _apply(self, w: Watched, dev: Subject, value: float, ts: float) -> None:
        key = (w.rule.id, dev.id)
        st = self.states.get(key, rules.INITIAL)
        new, verdict = rules.evaluate(w.rule, st, value, ts)
        self.states[key] = new
        if verdict is not None:
            self.dirty.add(key)
            self._nodata_verdict(w, dev, verdict, ts)

    def position(self, unit_id: str, lon: float, lat: float, ts: float) -> None:
        unit = self.units.get(unit_id)
        if unit is None or not unit.fence:
            return
        for w in self.geofence:
            if not unit.matches(w):
                continue
            key = (w.rule.id, unit_id)
            st = self.states.get(key, rules.INITIAL)
            new, verdict = rules.evaluate_position(w.rule, st, lon, lat, ts, unit.fence)
            if new != st:
                self.states[key] = new
                self.dirty.add(key)
            if verdict is not None:
                self._verdict(w, unit, verdict, 0.0, ts, new,
                              message=f"{w.rule.name}: {unit_id} 离开责任网格")

    def tick(self, now: float) -> None:
        """The wall-clock side: silent devices, and flapping spells that ended."""
        for w in self.nodata:
            for dev in self.devices.values():
                if not dev.matches(w):
                    continue
                key = (w.rule.id, dev.id)
                st = self.states.get(key)
                if st is None:
                    continue
                new, verdict = rules.check_silence(w.rule, st, now, dev.interval_s)
                if new is not st:
                    self.states[key] = new
                if verdict is not None:
                    self.dirty.add(key)
                    self._nodata_verdict(w, dev, verdict, now)
        for rel in self.flaps.due(now):
            rid, subject = cast(Key, rel.key)
            w = self.rules.get(rid)
            if w is None:
                continue
            self._put(Transition("unflap", w.rule, subject, ts=rel.at))
            if rel.clear:
                self._put(Transition("clear", w.rule, subject, ts=rel.at))

    # ---------------------------------------------------------------- verdicts
    def _verdict(self, w: Watched, subj: Subject, verdict: str, value: float, ts: float,
                 state: rules.RuleState, message: str | None = None) -> None:
        key = (w.rule.id, subj.id)
        d = self.flaps.observe(key, verdict, ts)  # type: ignore[arg-type]
        if d.flap_ended:
            self._put(Transition("unflap", w.rule, subj.id, ts=d.ended_at or ts))
            if d.release_clear:
                self._put(Transition("clear", w.rule, subj.id, ts=d.ended_at or ts))
        if d.flap_started:
            self._put(Transition("flapping", w.rule, subj.id, ts=ts))
        if d.action == "hold":
            return
        if verdict == "raise":
            cap = rules.rate_cap(w.rule)
            c = self.caps.check(w.rule.id, ts, *(cap or (None, None)))
            if not c.allow:
                self.suppressed[w.rule.id] += 1
                return
            self._put(Transition("raise", w.rule, subj.id, subj.grid_id, value, ts,
                                 message or rules.describe(w.rule, value, state)))
        else:
            self._put(Transition("clear", w.rule, subj.id, subj.grid_id, value, ts))

    def _nodata_verdict(self, w: Watched, dev: Subject, verdict: str, ts: float) -> None:
        if verdict == "raise":
            g = self.storms.offer(dev.grid_id, dev.id, ts)
            if g.mode == "individual":
                self._put(Transition("raise", w.rule, dev.id, dev.grid_id, None, ts,
                                     f"{w.rule.name}: {dev.id} 超时未上报"))
                return
            assert g.key is not None
            for absorbed in g.absorbed:  # now part of the situation: one alarm, not many
                self._put(Transition("clear", w.rule, absorbed, dev.grid_id, None, ts,
                                     "grouped into situation"))
            self._put(Transition("situation", w.rule, g.key, dev.grid_id, None, ts,
                                 f"{w.rule.name}: 网格 {dev.grid_id} 多个设备同时离线",
                                 g.members))
        else:
            was_member = dev.id in self.storms.members(dev.grid_id)
            g = self.storms.back(dev.grid_id, dev.id, ts)
            if not was_member:
                self._put(Transition("clear", w.rule, dev.id, dev.grid_id, None, ts))
            elif g.ended and g.key:
                self._put(Transition("situation_clear", w.rule, g.key, dev.grid_id, None, ts))
            elif g.key:
                self._put(Transition("situation", w.rule, g.key, dev.grid_id, None, ts,
                                     f"{w.rule.name}: 网格 {dev.grid_id} 多个设备同时离线",
                                     g.members))

    def _put(self, t: Transition) -> None:
        try:
            self.queue.put_nowait(t)
            self.enqueued += 1
        except asyncio.QueueFull:
            log.error("alarm queue full: %s of %s on %s dropped", t.kind, t.rule.id, t.subject)

    # ---------------------------------------------------------------- outputs
    async def run(self) -> None:
        """Write transitions in order; a failed write is retried until it lands."""
        while True:
            t = await self.queue.get()
            while True:
                try:
                    await self._write(t)
                    self.written += 1
                    break
                except Exception as e:  # a transition is a fact: retried, never dropped
                    log.warning("alarm write failed (%s: %s); retrying", type(e).__name__, e)
                    await asyncio.sleep(0.5)

    async def _write(self, t: Transition) -> None:
        r = t.rule
        if t.kind == "raise":
            await alarms.raise_alarm(self.pool, rule_id=r.id, device_id=t.subject,
                                     grid_id=t.grid_id, severity=r.severity,
                                     value=t.value, message=t.message, ts=t.ts)
        elif t.kind == "clear":
            await alarms.clear_alarm_for(self.pool, rule_id=r.id, device_id=t.subject,
                                         ts=t.ts, reason=t.message or "condition cleared")
        elif t.kind in ("flapping", "unflap"):
            await alarms.set_flapping(self.pool, r.id, t.subject, t.kind == "flapping")
        elif t.kind == "situation":
            await alarms.raise_alarm(self.pool, rule_id=r.id, device_id=t.subject,
                                     grid_id=t.grid_id, severity=r.severity, value=None,
                                     message=t.message, ts=t.ts, situation=t.subject,
                                     members=t.members)
        elif t.kind == "situation_clear":
            await alarms.clear_alarm_for(self.pool, rule_id=r.id, device_id=t.subject,
                                         ts=t.ts, reason="devices back online")

    async def persist(self) -> None:
        """Save changed rule states (and suppression counts) every few seconds."""
        while True:
            await asyncio.sleep(PERSIST_INTERVAL_S)
            await self.save()

    async def save(self) -> bool:
        """Write the changed states; False if the database did not take them (kept)."""
        dirty, self.dirty = self.dirty, set()
        rows = [(rid, subj, self.states[(rid, subj)].to_json())
                for rid, subj in dirty if (rid, subj) in self.states]
        try:
            if rows:
                await self.pool.executemany(
                    """INSERT INTO rule_state (rule_id, subject, state, updated_at)
                       VALUES ($1, $2, $3, now()) ON CONFLICT (rule_id, subject)
                       DO UPDATE SET state = excluded.state, updated_at = now()""", rows)
            if self.suppressed:
                counts, self.suppressed = self.suppressed, defaultdict(int)
                await self.pool.executemany(
                    "UPDATE rules SET suppressed_total = suppressed_total + $2 WHERE id = $1",
                    list(counts.items()))
        except Exception as e:
            self.dirty |= dirty  # try again next time
            log.warning("saving rule states failed (%s); will retry", e)
            return False
        return True

    async def clock(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.tick(time.time())
