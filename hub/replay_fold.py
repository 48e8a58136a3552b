"""The console's picture at a past time: a pure fold of a snapshot, events and unit fixes.

After-action replay (复盘) rebuilds what the live console showed at time ``t`` from what
the hub recorded: the latest saved picture at or before ``t`` (``replay_snapshots``), the
events after it (the ``events`` table: each carries the full new state of what it touched,
so the live feed's own projection rule ``core.events.apply_to_state`` applies them), and
the units' GPS fixes (the ``positions`` table: fixes are not events).

Time rules (the same in this fold and in the browser's playback, frontend/static/replay.js):
- An event's ``ts`` is its transaction's start, and sequence order is commit order, so
  ``ts`` is not monotonic in ``seq``. An event counts as happened at its *effective time*,
  the largest ``ts`` of it and every event before it: events are applied in ``seq`` order
  while the effective time is <= ``t``. (A console saw an event at its commit, a few
  milliseconds after its ``ts``; replay shows it that much earlier.)
- A fix happens at its own ``ts`` (the device's time). Merged with the events in time
  order, a fix moves a unit's marker only if it is newer than the unit's shown fix (a late
  fix never moves it backwards, as ``hub.live.LiveState.on_position``) and newer than the
  moment an event last replaced the unit's entity (the event carries the unit's latest
  stored fix, as the live projection takes it); at equal times the event comes first. A
  snapshot replaces nothing on a live console: a fix older than the snapshot but stored
  after it (the writer's batch was still open) still moves the marker, if newer.

No I/O and no clock: callers pass the records and the time (hub/replay_store.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.events import apply_to_state

State = dict[str, dict[str, dict[str, Any]]]
COLLECTIONS = ("alarms", "incidents", "units")


@dataclass(frozen=True, slots=True)
class Fix:
    """One GPS fix of a unit (a row of ``positions``), times in UNIX seconds."""

    unit_id: str
    ts: float
    lon: float
    lat: float
    speed: float | None
    heading: float | None


@dataclass(slots=True)
class Picture:
    """The console's state at ``at``: the open alarms, incidents and every unit.

    ``seq`` is the last event folded in, ``clock`` the effective time reached by the events
    (never above ``at``), ``unit_set_at`` the effective time of the last event that replaced
    each unit's entity (units no event touched since the snapshot have none)."""

    seq: int
    at: float
    clock: float
    state: State
    unit_set_at: dict[str, float] = field(default_factory=dict)


def start(state: Mapping[str, Mapping[str, Mapping[str, Any]]], seq: int, taken_at: float
          ) -> Picture:
    """A picture from a saved snapshot (copied: the snapshot is never changed)."""
    own: State = {c: {str(k): dict(v) for k, v in state.get(c, {}).items()}
                  for c in COLLECTIONS}
    return Picture(seq=seq, at=taken_at, clock=taken_at, state=own)


def apply_events(pic: Picture, events: Iterable[tuple[int, float, Mapping[str, Any]]],
                 until: float) -> bool:
    """Fold ``(seq, ts, payload)`` events (ascending seq, all after ``pic.seq``) while their
    effective time is <= ``until``. True if it stopped at an event after ``until`` (the
    caller has every event up to ``until``), False if the events ran out first."""
    for seq, ts, payload in events:
        if seq <= pic.seq:
            continue  # already in the picture (the snapshot, or an earlier chunk)
        effective = max(pic.clock, ts)
        if effective > until:
            return True
        apply_to_state(pic.state, payload)
        unit = payload.get("unit")
        if unit is not None:
            pic.unit_set_at[str(unit["id"])] = effective
        pic.seq = seq
        pic.clock = effective
    return False


def apply_fix(pic: Picture, fix: Fix) -> bool:
    """Move a unit's marker to ``fix`` if it is newer than what the picture shows (see the
    module's time rules). True if it moved."""
    unit = pic.state["units"].get(fix.unit_id)
    if unit is None:
        return False
    if fix.ts <= pic.unit_set_at.get(fix.unit_id, float("-inf")):
        return False  # an event replaced the entity after this fix, as the live feed did
    shown = unit.get("position_ts")
    if shown is not None and fix.ts <= shown:
        return False  # a late fix never moves the marker backwards
    unit.update(lon=fix.lon, lat=fix.lat, speed=fix.speed, heading=fix.heading,
                position_ts=fix.ts)
    return True


def advance(pic: Picture, events: Iterable[tuple[int, float, Mapping[str, Any]]],
            latest_fixes: Iterable[Fix], until: float) -> Picture:
    """The picture at ``until``: ``events`` are every event after ``pic.seq`` up to at
    least ``until`` (ascending seq); ``latest_fixes`` the newest fix of each unit with
    ``ts <= until`` (fixes no newer than the unit's shown one may be left out). Only the
    newest fix of a unit matters: an older one is either overtaken by it or came before
    the event that last replaced the unit."""
    apply_events(pic, events, until)
    for fix in latest_fixes:
        if fix.ts <= until:
            apply_fix(pic, fix)
    pic.at = until
    return pic


def frame(pic: Picture) -> dict[str, Any]:
    """The picture as the live feed's snapshot frame (hub/live.py), plus the replay's
    ``at``, ``clock`` and ``unit_set_at`` the browser continues from."""
    return {
        "type": "snapshot",
        "seq": pic.seq,
        "at": pic.at,
        "clock": pic.clock,
        "unit_set_at": dict(pic.unit_set_at),
        **{c: [copy.copy(e) for e in pic.state[c].values()] for c in COLLECTIONS},
    }


def keyed(frame_or_state: Mapping[str, Any]) -> State:
    """A snapshot frame's lists (or a state's dicts) keyed by id, for comparing pictures."""
    out: State = {}
    for c in COLLECTIONS:
        items = frame_or_state.get(c) or {}
        values = items.values() if isinstance(items, Mapping) else items
        out[c] = {str(e["id"]): dict(e) for e in values}
    return out
