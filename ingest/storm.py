"""Storm control: pure bookkeeping between rule verdicts and alarm writes.

Three small classes, each with explicit in-memory state and methods that take the time
(``ts``/``now``) as an argument; nothing here reads a clock or does I/O. The I/O shell
feeds them the verdicts of ``ingest.rules`` and applies what they decide.

- ``FlapDetector``: an alarm that raises and clears too often is held active, flagged
  flapping, until it has been quiet for a while; then one clear is released.
- ``StormGrouper``: many devices of one second-level grid going offline together become one
  situation alarm for the grid instead of one alarm per device.
- ``RateCap``: at most N individual raises of one rule per window; the shell turns the
  raises over the cap into members of the rule's grouped alarm (``AlarmGroups``), never
  drops them.
- ``AlarmGroups``: which subjects are members of which grouped alarm (storm situation or
  capped rule), so their clears leave the group rather than clear an alarm of their own.

Time: use one clock per instance. The verdict times are device times; the timer calls
(``FlapDetector.due``) should pass the same clock (device time of the latest reading, or the
wall clock when device clocks are trusted to be synchronised).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["raise", "clear"]

# --- flapping ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one verdict.

    ``action``: "forward" (apply the verdict as usual) or "hold" (do not apply it: the alarm
    stays active, flagged flapping; on a held raise the shell may bump the open alarm's
    count). ``flapping``: the key is flapping after this verdict. ``flap_started``: it
    became flapping with this verdict (flag the alarm; one event). ``flap_ended``: an
    earlier flapping spell ended before this verdict, at ``ended_at`` (unflag the alarm);
    if ``release_clear`` the held clear must be applied first, at ``ended_at``, and only
    then this verdict.
    """

    action: Literal["forward", "hold"]
    flapping: bool
    flap_started: bool = False
    flap_ended: bool = False
    ended_at: float | None = None
    release_clear: bool = False


@dataclass(frozen=True, slots=True)
class Release:
    """A flapping spell that ended at ``at`` (found by ``FlapDetector.due``): unflag the
    alarm and, if ``clear``, apply the single held clear at ``at``. If not ``clear``, the
    rule's last verdict was a raise and the alarm simply stays active."""

    key: Hashable
    at: float
    clear: bool


@dataclass(slots=True)
class _Flaps:
    clears: deque[float] = field(default_factory=deque)  # clear times within the window
    last: float = float("-inf")                          # time of the last transition
    raised: bool = False                                 # the rule's last verdict was raise
    flapping: bool = False


class FlapDetector:
    """Per key (e.g. (rule_id, device_id)) flap detection over the rules' verdicts.

    Exact semantics:

    - Every verdict given to ``observe`` is a transition at ``ts`` (a ``ts`` earlier than
      the key's last transition is taken as that time). A *flap* is a clear.
    - Not flapping: a raise is forwarded. A clear is forwarded unless it makes the number
      of clears in ``(ts - window_s, ts]`` exceed ``max_flaps``: then the key becomes
      flapping and this clear is held (``flap_started``). So with ``max_flaps = 3`` the
      first three raise/clear cycles in a window pass, the fourth clear is held.
    - Flapping: every verdict is held; the alarm stays active. The detector remembers
      whether the rule's last verdict was a raise or a clear.
    - A flapping key that sees no transition for ``stable_s`` stops flapping at
      ``last transition + stable_s``. If the rule's last verdict was a clear, exactly one
      clear is released then. This is reported by ``due(now)`` (call it from a timer), or
      by the next ``observe`` if a verdict arrives first (``flap_ended``); that verdict is
      then judged as if the key were fresh. Ending a spell forgets the counted clears.
    - Memory: at most ``max_flaps + 1`` times per key; keys with nothing to remember are
      dropped by ``due``.
    """

    def __init__(self, max_flaps: int, window_s: float, stable_s: float) -> None:
        if max_flaps < 1 or window_s <= 0 or stable_s <= 0:
            raise ValueError("max_flaps must be >= 1, window_s and stable_s > 0")
        self.max_flaps = max_flaps
        self.window_s = window_s
        self.stable_s = stable_s
        self._keys: dict[Hashable, _Flaps] = {}

    def is_flapping(self, key: Hashable) -> bool:
        st = self._keys.get(key)
        return st is not None and st.flapping

    def flapping(self) -> list[Hashable]:
        return [k for k, st in self._keys.items() if st.flapping]

    def observe(self, key: Hashable, verdict: Verdict, ts: float) -> Decision:
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _Flaps()
        ts = max(ts, st.last)
        ended = False
        ended_at: float | None = None
        release = False
        if st.flapping and ts - st.last >= self.stable_s:
            ended, ended_at, release = True, st.last + self.stable_s, not st.raised
            st.flapping = False
            st.clears.clear()
        st.last = ts
        st.raised = verdict == "raise"
        if verdict == "clear":
            st.clears.append(ts)
            horizon = ts - self.window_s
            while st.clears and st.clears[0] <= horizon:
                st.clears.popleft()
            while len(st.clears) > self.max_flaps + 1:
                st.clears.popleft()
        if st.flapping:
            return Decision("hold", True)
        if verdict == "clear" and len(st.clears) > self.max_flaps:
            st.flapping = True
            return Decision("hold", True, flap_started=True, flap_ended=ended,
                            ended_at=ended_at, release_clear=release)
        return Decision("forward", False, flap_ended=ended, ended_at=ended_at,
                        release_clear=release)

    def due(self, now: float) -> list[Release]:
        """Flapping spells that have been stable for ``stable_s`` by ``now``; also drops
        keys with nothing left to remember."""
        out: list[Release] = []
        horizon = now - self.window_s
        for key in list(self._keys):
            st = self._keys[key]
            if st.flapping:
                if now - st.last >= self.stable_s:
                    out.append(Release(key, st.last + self.stable_s, not st.raised))
                    del self._keys[key]
            elif not st.clears or st.clears[-1] <= horizon:
                del self._keys[key]
        return out

    def to_json(self) -> list[dict[str, Any]]:
        """Keys must be JSON-able (a (rule_id, device_id) tuple becomes a list)."""
        return [{"key": list(k) if isinstance(k, tuple) else k, "clears": list(st.clears),
                 "last": st.last, "raised": st.raised, "flapping": st.flapping}
                for k, st in self._keys.items()]

    def load_json(self, items: list[dict[str, Any]]) -> None:
        """Restore ``to_json`` output (list keys come back as tuples)."""
        self._keys = {}
        for d in items:
            k = d["key"]
            self._keys[tuple(k) if isinstance(k, list) else k] = _Flaps(
                deque(float(t) for t in d["clears"]), float(d["last"]), bool(d["raised"]),
                bool(d["flapping"]))


# --- storm grouping ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupDecision:
    """What to do with one device going offline (``offer``) or coming back (``back``).

    ``mode``: "individual" (raise/clear the device's own nodata alarm as usual) or "group"
    (the device is part of the grid's situation ``key``: do not raise a per-device alarm).
    ``started``: this offer opened the group: raise one situation alarm for the grid.
    ``absorbed``: devices already raised individually earlier in the window that are now
    members (the shell may link or clear their own alarms). ``members``: devices in the
    group now. ``suppressed``: per-device raises suppressed by the group so far (show it).
    ``ended``: (``back``) the group is empty: clear the situation alarm.
    """

    mode: Literal["individual", "group"]
    key: str | None = None
    started: bool = False
    absorbed: tuple[str, ...] = ()
    members: int = 0
    suppressed: int = 0
    ended: bool = False


INDIVIDUAL = GroupDecision("individual")


@dataclass(slots=True)
class _Grid:
    offline: dict[str, float] = field(default_factory=dict)  # not grouped: device -> since
    members: set[str] = field(default_factory=set)            # the open group, if any
    suppressed: int = 0


def situation_key(grid_id: str) -> str:
    """The device id the shell raises the grid's situation alarm under."""
    return f"storm:{grid_id}"


class StormGrouper:
    """Groups nodata raises per second-level grid.

    - ``offer(grid, device, ts)``: a device's nodata raise. While the grid has no open
      group, it counts the devices of the grid that went offline in ``(ts - window_s, ts]``
      and are not back; once that reaches ``min_devices`` a group opens (``started``) with
      all of them (the earlier ones ``absorbed``, this one suppressed). Below that: the
      device is "individual".
    - While a group is open, every further device of the grid going offline joins it (an
      ongoing situation has no window) and its own alarm is suppressed.
    - ``back(grid, device, ts)``: the device reports again. A member leaves the group; the
      group ends (``ended``) when its last member leaves. A device not in the group is
      individual.
    - Offering a device already offline changes nothing (idempotent). Memory: devices
      currently offline per grid, dropped when they come back or leave the window.
    """

    def __init__(self, min_devices: int, window_s: float) -> None:
        if min_devices < 2 or window_s <= 0:
            raise ValueError("min_devices must be >= 2 and window_s > 0")
        self.min_devices = min_devices
        self.window_s = window_s
        self._grids: dict[str, _Grid] = {}

    def members(self, grid_id: str) -> frozenset[str]:
        g = self._grids.get(grid_id)
        return frozenset(g.members) if g else frozenset()

    def groups(self) -> dict[str, int]:
        """Open groups: situation key -> number of members."""
        return {situation_key(gid): len(g.members) for gid, g in self._grids.items()
                if g.members}

    def offer(self, grid_id: str, device_id: str, ts: float) -> GroupDecision:
        g = self._grids.get(grid_id)
        if g is None:
            g = self._grids[grid_id] = _Grid()
        key = situation_key(grid_id)
        if g.members:
            if device_id not in g.members:
                g.members.add(device_id)
                g.suppressed += 1
            return GroupDecision("group", key, members=len(g.members), suppressed=g.suppressed)
        horizon = ts - self.window_s
        for d in [d for d, t in g.offline.items() if t <= horizon]:
            del g.offline[d]
        g.offline.setdefault(device_id, ts)
        if len(g.offline) < self.min_devices:
            return INDIVIDUAL
        absorbed = tuple(sorted(d for d in g.offline if d != device_id))
        g.members = set(g.offline)
        g.offline.clear()
        g.suppressed = 1
        return GroupDecision("group", key, started=True, absorbed=absorbed,
                             members=len(g.members), suppressed=1)

    def back(self, grid_id: str, device_id: str, ts: float) -> GroupDecision:
        g = self._grids.get(grid_id)
        if g is None:
            return INDIVIDUAL
        if device_id not in g.members:
            g.offline.pop(device_id, None)
            if not g.offline and not g.members:
                del self._grids[grid_id]
            return INDIVIDUAL
        g.members.discard(device_id)
        key = situation_key(grid_id)
        if g.members:
            return GroupDecision("group", key, members=len(g.members), suppressed=g.suppressed)
        suppressed = g.suppressed
        g.suppressed = 0
        if not g.offline:
            del self._grids[grid_id]
        return GroupDecision("group", key, members=0, suppressed=suppressed, ended=True)

    def replace_members(self, by_grid: dict[str, set[str]]) -> None:
        """Set every grid's open group to the given members (none where not given): the
        database's record of open situations wins over remembered state."""
        for gid in set(self._grids) | set(by_grid):
            g = self._grids.setdefault(gid, _Grid())
            g.members = set(by_grid.get(gid, ()))
            for d in g.members:
                g.offline.pop(d, None)
            if not g.members:
                g.suppressed = 0
                if not g.offline:
                    del self._grids[gid]

    def to_json(self) -> dict[str, Any]:
        return {gid: {"offline": dict(g.offline), "members": sorted(g.members),
                      "suppressed": g.suppressed} for gid, g in self._grids.items()}

    def load_json(self, d: dict[str, Any]) -> None:
        self._grids = {gid: _Grid({k: float(v) for k, v in g["offline"].items()},
                                  set(g["members"]), int(g["suppressed"]))
                       for gid, g in d.items()}


# --- rate caps -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapDecision:
    """``allow``: write the raise, else suppress it. ``suppressed``: on a suppression, the
    raises of this rule suppressed since its last allowed one, this one included; on an
    allowed raise, how many were suppressed just before it (show "+N suppressed"), after
    which the run count restarts. ``total``: all raises of the rule suppressed so far."""

    allow: bool
    suppressed: int
    total: int


@dataclass(slots=True)
class _Cap:
    allowed: deque[float] = field(default_factory=deque)  # times of allowed raises
    run: int = 0
    total: int = 0


class RateCap:
    """At most ``max_raises`` allowed raises per rule in any window ``(now - window_s, now]``
    (a sliding window: exact, memory ``max_raises`` times per rule). Limits can be set per
    call (a rule's own ``cap_raises``/``cap_window_s``, see ``rules.rate_cap``), else the
    defaults given here. Only raises are capped; the shell applies clears as usual (a clear
    of a suppressed raise finds no open alarm and does nothing)."""

    def __init__(self, max_raises: int, window_s: float) -> None:
        if max_raises < 1 or window_s <= 0:
            raise ValueError("max_raises must be >= 1 and window_s > 0")
        self.max_raises = max_raises
        self.window_s = window_s
        self._rules: dict[str, _Cap] = {}

    def check(self, rule_id: str, now: float, max_raises: int | None = None,
              window_s: float | None = None) -> CapDecision:
        limit = self.max_raises if max_raises is None else max_raises
        window = self.window_s if window_s is None else window_s
        c = self._rules.get(rule_id)
        if c is None:
            c = self._rules[rule_id] = _Cap()
        horizon = now - window
        allowed = c.allowed
        while allowed and allowed[0] <= horizon:
            allowed.popleft()
        while len(allowed) > limit:  # the limit was lowered
            allowed.popleft()
        if len(allowed) < limit:
            allowed.append(now)
            run, c.run = c.run, 0
            return CapDecision(True, run, c.total)
        c.run += 1
        c.total += 1
        return CapDecision(False, c.run, c.total)

    def suppressed(self, rule_id: str) -> int:
        c = self._rules.get(rule_id)
        return c.total if c else 0

    def stats(self) -> dict[str, int]:
        """Suppressed raises per rule (rules that suppressed any)."""
        return {r: c.total for r, c in self._rules.items() if c.total}

    def to_json(self) -> dict[str, Any]:
        return {r: {"allowed": list(c.allowed), "run": c.run, "total": c.total}
                for r, c in self._rules.items()}

    def load_json(self, d: dict[str, Any]) -> None:
        self._rules = {r: _Cap(deque(float(t) for t in c["allowed"]), int(c["run"]),
                               int(c["total"])) for r, c in d.items()}


# --- grouped alarms ------------------------------------------------------------------------


def cap_key(rule_id: str) -> str:
    """The device id the shell raises a capped rule's grouped alarm under: one group per
    rule for the whole town, so a storm of one rule is one row on the console, whatever
    the number of grids it spans (each member row says its grid)."""
    return f"cap:{rule_id}"


class AlarmGroups:
    """Members of grouped alarms, per (rule id, group key): pure bookkeeping.

    - ``join(rule, group, subject)``: the subject is (now) a member; True if it was not.
    - ``leave(rule, subject)``: the group the subject was a member of under that rule (it
      leaves it), or None: the subject's alarm is its own.
    - ``size(rule, group)``: members now. A subject is in at most one group per rule.
    The database (``alarm_members``) is the record; this is the shell's index of it,
    rebuilt from it with ``replace`` at start and on reconciliation.
    """

    def __init__(self) -> None:
        self._of: dict[tuple[str, str], str] = {}           # (rule, subject) -> group
        self._members: dict[tuple[str, str], set[str]] = {}  # (rule, group) -> subjects

    def join(self, rule_id: str, group: str, subject: str) -> bool:
        old = self._of.get((rule_id, subject))
        if old == group:
            return False
        if old is not None:
            self.leave(rule_id, subject)
        self._of[(rule_id, subject)] = group
        self._members.setdefault((rule_id, group), set()).add(subject)
        return True

    def leave(self, rule_id: str, subject: str) -> str | None:
        group = self._of.pop((rule_id, subject), None)
        if group is None:
            return None
        members = self._members.get((rule_id, group))
        if members is not None:
            members.discard(subject)
            if not members:
                del self._members[(rule_id, group)]
        return group

    def group_of(self, rule_id: str, subject: str) -> str | None:
        return self._of.get((rule_id, subject))

    def size(self, rule_id: str, group: str) -> int:
        return len(self._members.get((rule_id, group), ()))

    def groups(self) -> dict[tuple[str, str], int]:
        return {k: len(v) for k, v in self._members.items()}

    def replace(self, members: list[tuple[str, str, str]]) -> None:
        """Rebuild from (rule id, group key, subject) triples (the open member rows)."""
        self._of, self._members = {}, {}
        for rule_id, group, subject in members:
            self.join(rule_id, group, subject)
