"""The alarm watch: the I/O shell around the pure rules (ingest/rules.py), their reorder
buffer (ingest/reorder.py) and storm control (ingest/storm.py).

It keeps every (rule, subject) state in memory, feeds it readings in device-time order
(from the pipeline, on the live path; one out of order within the reorder window is
replayed in its place), GPS fixes (geofence rules) and the wall clock (no-data rules,
flapping releases, re-alarms), and turns verdicts into alarm writes, one at a time and in
order, through ``ingest.alarms``. On the way every verdict, no-data ones included, passes
the flap detector (an alarm that keeps raising and clearing is held active and flagged),
then for no-data the storm grouper (many devices of one grid silent together become one
situation alarm whose members are listed), then the per-rule rate cap: a raise over the
cap becomes a member of the rule's grouped alarm (count and members on the console),
never dropped.

Time: metric rules judge device time (the readings' ``ts``); no-data rules judge the hub's
receive time (a device with a slow clock but healthy reporting is seen when it reports).

Rule states are written to ``rule_state`` and the storm/flap/cap memory to
``watch_state`` at every checkpoint of the rule evaluator (ingest/evaluator.py, every
``HUB_RULES_CHECKPOINT_S``) and read back at start; group membership is
read back from ``alarm_members``. The watch reconciles with the alarms table at start,
after a rule edit and every ``RECONCILE_S``: an open alarm's rule state is active (so it
clears when the condition ends), and an active condition whose alarm someone else cleared
(an operator) raises again after ``realarm_s`` if it still holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from core import clock
from core.town_time import DEFAULT_TOWN_TZ, zone
from ingest import alarms, reorder, rules
from ingest.silence import SilenceSchedule
from ingest.storm import AlarmGroups, FlapDetector, RateCap, StormGrouper, cap_key
from ingest.subjects import Subject, Watched, in_hours

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
# Default per-rule cap when a rule has none: 100 individual raises a minute is already more
# than any operator can read; the rest join one grouped alarm of the rule (counted, listed).
CAP_RAISES = 100
CAP_WINDOW_S = 60.0
# The no-data timer and flap releases run this often.
TICK_S = 1.0
# The watch compares its states with the alarms table this often (operators' clears made
# in any process): a re-alarm is late by at most this much.
RECONCILE_S = 2.0
# Default re-alarm interval (the setting ``alarm_realarm_s``): a condition still true 10
# minutes after an operator cleared its alarm raises it again.
REALARM_S = 600.0
# At start and after a rule edit, reconciliation waits this long for the alarm writes in
# flight (milliseconds each) before leaving it to the periodic round.
RECONCILE_WAIT_S = 2.0
# Reorder buffer per (rule, subject): readings kept for replay, at most this many (the
# window holds one or two at ordinary rates; a burst is bounded) and only within
# ``reorder_window_s`` (the setting) of the newest.
REORDER_MAX_ENTRIES = 32
REORDER_WINDOW_S = 2.0


Key = tuple[str, str]  # (rule id, subject id)


@dataclass
class Transition:
    kind: str  # raise | clear | flapping | unflap | join | leave
    rule: rules.Rule
    subject: str
    grid_id: str | None = None
    value: float | None = None
    ts: float = 0.0
    message: str = ""
    group: str | None = None       # join/leave: the grouped alarm's key
    group_grid: str | None = None  # join: the grouped alarm's grid (None: town-wide)
    group_message: str = ""


class AlarmWatch:
    def __init__(self, pool: asyncpg.Pool, town_tz: str = DEFAULT_TOWN_TZ) -> None:
        self.pool = pool
        zone(town_tz)  # an unknown zone stops the start, not the first night reading
        self.town_tz = town_tz  # rules' active hours are the town's (Settings.town_tz)
        self.states: dict[Key, rules.RuleState] = {}
        self.dirty: set[Key] = set()
        # The watch_state parts as last written (save() writes only the ones that differ).
        self._saved_parts: dict[str, Any] = {}
        self.flaps = FlapDetector(FLAP_MAX, FLAP_WINDOW_S, FLAP_STABLE_S)
        self.storms = StormGrouper(STORM_MIN_DEVICES, STORM_WINDOW_S)
        self.caps = RateCap(CAP_RAISES, CAP_WINDOW_S)
        self.groups = AlarmGroups()
        # Alarm transitions waiting for the database, never dropped (see run()). Unbounded
        # here, bounded in effect: a reading is acknowledged only once its transitions are
        # written (the evaluator's checkpoint), and ingest stops reading at
        # HUB_INGEST_MAX_UNACKED unacknowledged messages.
        self.queue: asyncio.Queue[Transition] = asyncio.Queue()
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
        self.reorder_window_s = REORDER_WINDOW_S
        self.realarm_s = REALARM_S
        self.history: dict[Key, reorder.History] = {}
        self.replayed = 0
        self.too_late = 0  # out of order by more than the kept history: not evaluated
        self.realarm: dict[Key, float] = {}  # key -> when to raise again if still true
        # The no-data timer's pairs by when each could first be silent (ingest/silence.py);
        # rebuilt from the states when rules, devices or restored states change.
        self.silence = SilenceSchedule()
        self._silence_stale = True
        self._writing = False
        # No-data rules judge when a device was last seen. For a "quiet" device (every
        # no-data pair of it timed and not raised) a reading changes nothing else, so the
        # time is kept here, one C-level dict update per burst, and folded into the pairs'
        # states where the timer looks (``_nodata_state``): a new state per reading was a
        # quarter of the ingest loop's CPU in batched ingest (docs/PERFORMANCE.md).
        self.seen: dict[str, float] = {}
        self._quiet: set[str] = set()

    # ---------------------------------------------------------------- configuration
    def configure(self, watched: Iterable[Watched], devices: Mapping[str, Subject],
                  units: Mapping[str, Subject]) -> None:
        """Install rules and subjects; a rule whose definition changed starts afresh (its
        open alarms are taken back by ``reconcile``)."""
        new = {w.rule.id: w for w in watched}
        for rid, old in self.rules.items():
            if rid not in new or new[rid].rule != old.rule:
                for key in [k for k in self.states if k[0] == rid]:
                    del self.states[key]
                    self.history.pop(key, None)
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
        self._matching = {}
        self._quiet.clear()  # which no-data rules apply may have changed
        self._silence_stale = True

    def _rules_of(self, dev: Subject) -> tuple[list[Watched], dict[str, list[Watched]]]:
        """The no-data rules and the per-metric rules that apply to ``dev`` (cached: the
        filter match was a few per cent of the ingest process's time, per reading)."""
        found = self._matching.get(dev.id)
        if found is None:
            nodata = [w for w in self.nodata if dev.matches(w)]
            metric = {m: [w for w in ws if dev.matches(w)] for m, ws in self.by_metric.items()}
            found = self._matching[dev.id] = (nodata, {m: ws for m, ws in metric.items() if ws})
        return found

    def _subject(self, w: Watched, subject: str) -> Subject | None:
        return (self.units if w.rule.kind == "geofence" else self.devices).get(subject)

    async def restore(self) -> None:
        """Rule states and storm/flap/cap memory from the last run, then reconciliation
        with the alarms table (open alarms are active whatever the rows say)."""
        for r in await self.pool.fetch("SELECT rule_id, subject, state FROM rule_state"):
            try:
                self.states[(r["rule_id"], r["subject"])] = rules.RuleState.from_json(
                    r["state"])
            except ValueError:
                log.warning("dropping unreadable state of %s/%s", r["rule_id"], r["subject"])
        parts = {r["part"]: r["state"] for r in await self.pool.fetch(
            "SELECT part, state FROM watch_state")}
        try:
            self.flaps.load_json(parts.get("flaps", []))
            self.storms.load_json(parts.get("storms", {}))
            self.caps.load_json(parts.get("caps", {}))
            self.realarm = {(k[0], k[1]): float(t) for k, t in parts.get("realarm", [])}
        except (KeyError, TypeError, ValueError, IndexError) as e:
            log.warning("storm/flap state unreadable (%s); starting those afresh", e)
        # A no-data rule needs to know when a device was last seen, also after a restart:
        # the hub's receive time of its latest reading (the clock no-data is judged on).
        if self.nodata:
            for r in await self.pool.fetch("SELECT device_id, max(received_at) AS ts "
                                           "FROM telemetry_latest GROUP BY device_id"):
                dev = self.devices.get(r["device_id"])
                if dev is None:
                    continue
                for w in self.nodata:
                    key = (w.rule.id, dev.id)
                    st = self.states.get(key, rules.INITIAL)
                    if dev.matches(w) and st.last_ts < r["ts"].timestamp():
                        self.states[key] = st._replace(last_ts=r["ts"].timestamp())
        self._quiet.clear()  # restored states may be raised
        self._silence_stale = True
        await self.reconcile(wait_s=RECONCILE_WAIT_S)

    async def reconcile(self, wait_s: float = 0.0) -> bool:
        """Compare with the alarms table; False if writes stayed in flight for ``wait_s``
        (the rows would be stale: the next round does it).

        Open alarms (own or as a group member) make their rule state active and rebuild
        the group index; an active state with no open alarm (cleared by an operator, here
        or in another process) is given a re-alarm time."""
        deadline = time.monotonic() + wait_s
        while True:
            if not self._busy():
                written = self.written
                own = await alarms.open_alarms(self.pool)
                members = await alarms.open_members(self.pool)
                if written == self.written and not self._busy():
                    self.apply_open(own, members, clock.now())
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)

    def _busy(self) -> bool:
        return self._writing or not self.queue.empty()

    def apply_open(self, own: Sequence[Mapping[str, Any]], members: list[tuple[str, str, str]],
                   now: float) -> None:
        """The reconciliation itself, on rows already read (see ``reconcile``)."""
        self.groups.replace([m for m in members if not m[1].startswith("storm:")])
        storm: dict[str, set[str]] = defaultdict(set)
        for _rid, grp, subj in members:
            if grp.startswith("storm:"):
                storm[grp.removeprefix("storm:")].add(subj)
        self.storms.replace_members(dict(storm))
        open_keys = {(a["rule_id"], a["device_id"]) for a in own if not a.get("situation")}
        open_keys |= {(rid, subj) for rid, _, subj in members}
        for key in open_keys:
            # A flapping alarm is held open on purpose while its rule says "clear"; the
            # flap detector releases it (taking it back would count more flaps).
            if key[0] not in self.rules or self.flaps.is_flapping(key):
                continue
            st = self.states.get(key, rules.INITIAL)
            if not st.active:
                self.states[key] = st._replace(active=True)
                self.dirty.add(key)
                self._quiet.discard(key[1])  # its next reading clears it (or a metric rule's)
            self.realarm.pop(key, None)
        for key, st in self.states.items():
            if st.active and key not in open_keys and key not in self.realarm \
                    and key[0] in self.rules:
                self.realarm[key] = now + self.realarm_s

    # ---------------------------------------------------------------- inputs
    def readings(self, readings: Sequence[Any], now: float | None = None) -> None:
        """Readings in device-time order (``ingest.wire.Reading``), received at ``now``
        (the hub's clock; default: the time of the call, on the live path the same)."""
        states = self.states
        history = self.history
        window = self.reorder_window_s
        rcv = clock.now() if now is None else now
        if self.nodata:
            self._seen(readings, rcv)
        any_metric = self.by_metric
        for r in readings:
            if r.metric not in any_metric:  # no rule watches this metric on any device
                continue
            dev = self.devices.get(r.device_id)
            if dev is None:
                continue
            candidates = self._rules_of(dev)[1].get(r.metric)
            if not candidates:
                continue
            for w in candidates:
                if not in_hours(w.hours, r.ts, self.town_tz):
                    continue
                key = (w.rule.id, dev.id)
                st = states.get(key, rules.INITIAL)
                if r.ts < st.last_ts:
                    self._replay(w, dev, key, st, r.value, r.ts)
                    continue
                new, verdict = rules.evaluate(w.rule, st, r.value, r.ts)
                if window > 0:
                    hist = history.get(key)
                    if hist is None:
                        hist = history[key] = []
                    reorder.record(hist, reorder.Entry(r.ts, r.value, st, verdict), window,
                                   REORDER_MAX_ENTRIES)
                if new is not st:
                    states[key] = new
                    if new.since != st.since or new.active != st.active:
                        self.dirty.add(key)
                if verdict is not None:
                    self.dirty.add(key)
                    self._verdict(w, dev, verdict, r.value, r.ts, new)

    def _replay(self, w: Watched, dev: Subject, key: Key, st: rules.RuleState, value: float,
                ts: float) -> None:
        hist = self.history.get(key)
        done = (reorder.replay(w.rule, hist, value, ts, st.active, self.reorder_window_s)
                if hist else None)
        if done is None:
            self.too_late += 1
            return
        self.replayed += 1
        new, applied = done
        self.states[key] = new
        self.dirty.add(key)
        for a in applied:
            self._verdict(w, dev, a.verdict, a.value, a.ts, a.state)

    def _seen(self, readings: Sequence[Any], now: float) -> None:
        """The no-data side of a burst received at ``now``: its devices were seen. Only a
        device that is not quiet (its first reading, a raised pair, rules just changed)
        has its pairs evaluated; each device once, as every reading of a burst shares
        ``now``."""
        ids = {r.device_id for r in readings}
        quiet = self._quiet
        for d in ids - quiet:
            dev = self.devices.get(d)
            if dev is None:
                continue
            nodata = self._rules_of(dev)[0]
            for w in nodata:
                self._apply(w, dev, now)
            if not any(self.states[(w.rule.id, d)].active for w in nodata):
                quiet.add(d)
        self.seen.update(dict.fromkeys(ids, now))

    def _nodata_state(self, key: Key) -> rules.RuleState | None:
        """A no-data pair's state with the device's last sighting folded in."""
        st = self.states.get(key)
        seen = self.seen.get(key[1])
        if st is not None and seen is not None and seen > st.last_ts:
            st = self.states[key] = st._replace(last_ts=seen)
        return st

    def _apply(self, w: Watched, dev: Subject, now: float) -> None:
        key = (w.rule.id, dev.id)
        st = self.states.get(key, rules.INITIAL)
        new, verdict = rules.evaluate(w.rule, st, 0.0, now)  # no-data ignores the value
        self.states[key] = new
        if key not in self.silence.known:  # a pair's first reading: its timer starts
            gap = rules.silence_gap(w.rule, dev.interval_s)
            self.silence.track(key, None if gap is None else now + gap)
        if verdict is not None:
            self.dirty.add(key)
            self._nodata_verdict(w, dev, verdict, now)

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
        """The wall-clock side: silent devices, flapping spells that ended, re-alarms."""
        if self._silence_stale:
            self._schedule_silence(now)
        for key in self.silence.pop_due(now):
            w = self.rules.get(key[0])
            dev = self.devices.get(key[1])
            st = self._nodata_state(key)
            gap = rules.silence_gap(w.rule, dev.interval_s) if w and dev else None
            if st is None or gap is None:
                self.silence.forget(key)
                self._quiet.discard(key[1])  # a reading of it tracks the pair anew
                continue
            assert w is not None and dev is not None
            new, verdict = rules.check_silence(w.rule, st, now, dev.interval_s)
            if new is not st:
                self.states[key] = new
                if new.active:
                    self._quiet.discard(key[1])  # its next reading clears the alarm
            if verdict is not None:
                self.dirty.add(key)
                self._nodata_verdict(w, dev, verdict, now)
            # Next look: when it could first be silent again; a silent one (raised) is
            # looked at again after a gap (a reading clears it on the reading path).
            due = now + gap if new.active else new.last_ts + gap
            self.silence.track(key, due if due > now else now + TICK_S)
        for rel in self.flaps.due(now):
            rid, subject = cast(Key, rel.key)
            flapped = self.rules.get(rid)
            if flapped is None:
                continue
            self._put(Transition("unflap", flapped.rule, subject, ts=rel.at))
            if rel.clear:
                subj = self._subject(flapped, subject)
                self._clear(flapped, subject, subj.grid_id if subj else None, None, rel.at,
                            "condition cleared")
        for key, due in list(self.realarm.items()):
            if due > now:
                continue
            del self.realarm[key]
            again = self.rules.get(key[0])
            st = self.states.get(key)
            subj = self._subject(again, key[1]) if again else None
            if again is None or st is None or subj is None or not st.active:
                continue
            msg = f"{again.rule.name}: {subj.id} 仍在告警 (cleared by an operator, still true)"
            self._raise(again, subj, None, now, msg)

    def _schedule_silence(self, now: float) -> None:
        """Every (no-data rule, device) pair with a state, under its next deadline."""
        self.silence.clear()
        for w in self.nodata:
            for dev in self.devices.values():
                key = (w.rule.id, dev.id)
                st = self._nodata_state(key)
                if st is None or not dev.matches(w):
                    continue
                gap = rules.silence_gap(w.rule, dev.interval_s)
                if gap is None:
                    self.silence.track(key, None)
                else:
                    self.silence.track(key, now if st.active else st.last_ts + gap)
        self._silence_stale = False

    # ---------------------------------------------------------------- verdicts
    def _verdict(self, w: Watched, subj: Subject, verdict: str, value: float, ts: float,
                 state: rules.RuleState, message: str | None = None) -> None:
        if not self._flap(w, subj, verdict, ts):
            return
        if verdict == "raise":
            self._raise(w, subj, value, ts, message or rules.describe(w.rule, value, state))
        else:
            self._clear(w, subj.id, subj.grid_id, value, ts, "condition cleared")

    def _flap(self, w: Watched, subj: Subject, verdict: str, ts: float) -> bool:
        """Pass the verdict through the flap detector; False if it is held."""
        d = self.flaps.observe((w.rule.id, subj.id), verdict, ts)  # type: ignore[arg-type]
        if d.flap_ended:
            self._put(Transition("unflap", w.rule, subj.id, ts=d.ended_at or ts))
            if d.release_clear:
                self._clear(w, subj.id, subj.grid_id, None, d.ended_at or ts,
                            "condition cleared")
        if d.flap_started:
            self._put(Transition("flapping", w.rule, subj.id, ts=ts))
        return d.action != "hold"

    def _raise(self, w: Watched, subj: Subject, value: float | None, ts: float,
               message: str) -> None:
        """An individual raise, unless the rule is over its cap: then the subject joins
        the rule's grouped alarm (counted and listed there; never dropped)."""
        self.realarm.pop((w.rule.id, subj.id), None)
        cap = rules.rate_cap(w.rule)
        c = self.caps.check(w.rule.id, ts, *(cap or (None, None)))
        if c.allow:
            self._put(Transition("raise", w.rule, subj.id, subj.grid_id, value, ts, message))
            return
        self.suppressed[w.rule.id] += 1
        limit, window = cap or (CAP_RAISES, CAP_WINDOW_S)
        key = cap_key(w.rule.id)
        self.groups.join(w.rule.id, key, subj.id)
        self._put(Transition(
            "join", w.rule, subj.id, subj.grid_id, value, ts, message, key, None,
            f"{w.rule.name}: over {limit} alarms in {window:g} s, grouped (see members)"))

    def _clear(self, w: Watched, subject: str, grid_id: str | None, value: float | None,
               ts: float, reason: str) -> None:
        self.realarm.pop((w.rule.id, subject), None)
        group = self.groups.leave(w.rule.id, subject)
        if group is not None:
            self._put(Transition("leave", w.rule, subject, grid_id, value, ts,
                                 "every member cleared", group))
        else:
            self._put(Transition("clear", w.rule, subject, grid_id, value, ts, reason))

    def _nodata_verdict(self, w: Watched, dev: Subject, verdict: str, ts: float) -> None:
        if not self._flap(w, dev, verdict, ts):
            return
        situation = f"{w.rule.name}: 网格 {dev.grid_id} 多个设备同时离线"
        if verdict == "raise":
            g = self.storms.offer(dev.grid_id, dev.id, ts)
            if g.mode == "individual":
                self._raise(w, dev, None, ts, f"{w.rule.name}: {dev.id} 超时未上报")
                return
            assert g.key is not None
            for absorbed in g.absorbed:  # now members of the situation: one alarm, listed
                self._clear(w, absorbed, dev.grid_id, None, ts, "grouped into situation")
                self._put(Transition("join", w.rule, absorbed, dev.grid_id, None, ts,
                                     f"{w.rule.name}: {absorbed} 超时未上报", g.key,
                                     dev.grid_id, situation))
            self._put(Transition("join", w.rule, dev.id, dev.grid_id, None, ts,
                                 f"{w.rule.name}: {dev.id} 超时未上报", g.key, dev.grid_id,
                                 situation))
        else:
            was_member = dev.id in self.storms.members(dev.grid_id)
            g = self.storms.back(dev.grid_id, dev.id, ts)
            if was_member and g.key:
                self._put(Transition("leave", w.rule, dev.id, dev.grid_id, None, ts,
                                     "devices back online", g.key))
            else:
                self._clear(w, dev.id, dev.grid_id, None, ts, "condition cleared")

    def _put(self, t: Transition) -> None:
        self.queue.put_nowait(t)
        self.enqueued += 1

    # ---------------------------------------------------------------- outputs
    async def run(self) -> None:
        """Write transitions in order; a failed write is retried until it lands."""
        while True:
            t = await self.queue.get()
            self._writing = True
            while True:
                try:
                    await self._write(t)
                    self.written += 1
                    break
                except Exception as e:  # a transition is a fact: retried, never dropped
                    log.warning("alarm write failed (%s: %s); retrying", type(e).__name__, e)
                    await asyncio.sleep(0.5)
            self._writing = False

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
        elif t.kind == "join":
            assert t.group is not None
            await alarms.join_group(
                self.pool, rule_id=r.id, group=t.group, grid_id=t.group_grid,
                severity=r.severity, message=t.group_message, device_id=t.subject,
                device_grid=t.grid_id, value=t.value, member_message=t.message, ts=t.ts)
        elif t.kind == "leave":
            assert t.group is not None
            await alarms.leave_group(self.pool, rule_id=r.id, group=t.group,
                                     device_id=t.subject, ts=t.ts,
                                     reason=t.message or "every member cleared")

    async def reconcile_loop(self) -> None:
        """Reconcile with the alarms table every ``RECONCILE_S`` (the rule evaluator runs
        this; its checkpoints save the states, ingest/evaluator.py)."""
        while True:
            await asyncio.sleep(RECONCILE_S)
            try:
                await self.reconcile()
            except Exception as e:
                log.warning("reconciling alarms failed (%s); will retry", e)

    def parts(self) -> list[tuple[str, Any]]:
        """The storm/flap/cap/re-alarm memory as JSON documents (``watch_state``)."""
        return [("flaps", self.flaps.to_json()), ("storms", self.storms.to_json()),
                ("caps", self.caps.to_json()),
                ("realarm", [[list(k), t] for k, t in self.realarm.items()])]

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
            # Checkpoints come every 0.1 s and the memory rarely changes between two: only
            # the parts unlike the last saved ones go to the database.
            changed = [(p, v) for p, v in self.parts() if self._saved_parts.get(p) != v]
            if changed:
                await self.pool.executemany(
                    """INSERT INTO watch_state (part, state, updated_at) VALUES ($1, $2, now())
                       ON CONFLICT (part) DO UPDATE SET state = excluded.state,
                       updated_at = now() WHERE watch_state.state IS DISTINCT FROM excluded.state
                    """, changed)
                self._saved_parts.update(changed)
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
            self.tick(clock.now())
