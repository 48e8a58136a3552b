"""Rule evaluation: pure code. A rule, its state and a reading in; new state and verdict out.

Time is always passed in (the reading's device time; the wall clock only for the no-data
timer, see ``check_silence``); nothing here reads a clock or does I/O. The verdict is
``"raise"``, ``"clear"`` or ``None`` (nothing changed for the operators).

Common contract of every kind
-----------------------------
- A reading older than the last one evaluated (``ts < state.last_ts``) never changes the
  state: ``(state, None)`` comes back unchanged. Equal times are evaluated.
- ``RuleState`` is everything a (rule, device) pair remembers. It round-trips through JSON
  (``to_json`` / ``from_json``) so the I/O shell can persist it: a restart that restores it
  continues exactly, neither re-firing an active alarm nor forgetting a pending duration.
- ``since`` in the state is "when the pending transition began": the start of a pending
  raise (``duration`` held for ``for_s``, ``geofence`` outside for ``dwell_s``) while the
  alarm is inactive, or of a pending clear (``clear_after_s``, ``clear_dwell_s``) while it
  is active. It is ``None`` when nothing is pending.
- A limit is reached *at* the limit: ``raise_above = 25`` raises at 25.0, and
  ``clear_below = 10`` clears only strictly under 10.0 (mirrored for ``raise_below``).
- A reading in the hysteresis band (between the clear and raise limits) neither raises nor
  clears, neither starts nor resets a pending raise, and resets a pending clear.
- Optional on every kind: ``cap_raises`` (int >= 1) with ``cap_window_s`` (> 0): at most
  that many raises of the rule (all devices together) per window, enforced by the shell with
  ``ingest.storm.RateCap``; read them with ``rate_cap(rule)``.

Kinds and their ``params``
--------------------------
``threshold`` — hysteresis.
    ``raise_above`` (raise when value >= it) with optional ``clear_below`` (clear when
    value < it; default = raise_above, must be <= raise_above); or the mirror image
    ``raise_below`` / ``clear_above``. Optional ``clear_after_s`` (>= 0, default 0): the
    value must have stayed past the clear limit continuously (every reading) for that long,
    in device time, before the alarm clears (Zabbix-style recovery delay); any reading not
    past the clear limit restarts that wait.

``duration`` — "over the limit for N seconds", on the instantaneous value or a window mean.
    Limits as for ``threshold`` (``raise_above``/``clear_below`` or ``raise_below``/
    ``clear_above``), plus ``clear_after_s`` as above, plus ``mode``:
    ``"instant"`` (default): ``for_s`` (required, >= 0). The first reading at/over the
    limit starts the pending time (kept in ``state.since``); a later reading at
    ``ts >= since + for_s`` that is still at/over the limit raises. A reading past the clear
    limit (default: under the raise limit) resets the pending time. Gaps between readings
    are not judged (a silent device is the ``nodata`` rule's business).
    ``"mean"``: the value judged is the mean over a sliding window: ``window_s`` (required)
    split into buckets of ``bucket_s`` (default window_s / 24; window_s must be a whole
    multiple of it, at most ``MAX_BUCKETS`` buckets). Buckets are aligned to multiples of
    bucket_s; the window at time ts is the bucket holding ts and the ones before it, whole
    buckets covering ``window_s``. The mean is the mean of the bucket means (each bucket's
    readings averaged first, like GB 3095-2012's 24-hour mean of hourly means), so a device
    reporting unevenly does not weigh its busy hours more. ``min_buckets`` (default
    ceil(5/6 of the buckets): GB 3095-2012 table 4 asks for at least 20 of 24 hourly values)
    buckets must hold data before the mean is judged at all; until then nothing changes.
    ``for_s`` (default 0) applies to the mean as in instant mode. State: per-bucket
    ``[start, sum, count]``, at most window_s / bucket_s of them.

``rate`` — rate of change over a window.
    ``window_s`` (required, > 0); ``rise_per_s`` (raise when the value rises at least that
    fast) and/or ``fall_per_s`` (raise when it falls at least that fast; a positive number);
    optional ``clear_rise_per_s`` / ``clear_fall_per_s`` (clear once the rate is strictly
    under them; defaults: the raise rates; must not exceed them); ``clear_after_s``.
    The rate at ts is ``(value - v0) / (ts - t0)`` where (t0, v0) is the latest kept sample
    at or before ``ts - window_s``; ``ts - t0 >= window_s``, equal to it when a sample sits
    exactly at the window start, longer over a gap, where it is the true mean rate over the
    longer span (never overstated by dividing a long rise by a short window). Until such a
    sample exists (the first window_s of data) nothing is judged. State: at most
    ``RATE_SAMPLES`` (ts, value) pairs, thinned to be at least window_s / (RATE_SAMPLES - 4)
    apart, so they always span the window and, with frequent readings, the baseline is at
    most 1/60 of the window (plus one reading interval) older than the ideal one.

``nodata`` — a device silent longer than its expected interval times a factor.
    ``factor`` (>= 1, default 3); ``interval_s`` (> 0, optional: the default expected
    interval when the caller has none for the device). Readings only refresh
    ``state.last_ts`` (the last time the device was seen; also ``state.last_seen``);
    ``evaluate`` returns ``"clear"`` when a reading arrives while the alarm is active. The
    raise comes from ``check_silence(rule, state, now, interval_s)``, called by a timer:
    ``"raise"`` when ``now - last_ts > interval_s * factor`` (strictly). ``now`` must be on
    the same clock as the readings' ``ts``. A device never seen (``last_ts = -inf``) is not
    judged: the shell seeds ``last_ts`` from the database (its last stored reading) if it
    wants never-seen devices covered.

``geofence`` — a unit (positions, not telemetry) outside its assigned grids.
    ``dwell_s`` (required, >= 0): raise once the unit has been continuously outside every
    allowed polygon for that long (each position fix counts; one fix back inside resets,
    which debounces GPS jitter at a boundary); ``clear_dwell_s`` (>= 0, default dwell_s):
    clear once back inside for that long. Evaluated by ``evaluate_position``; ``evaluate``
    ignores telemetry for it. No allowed polygons (a unit without an assignment) counts as
    inside. Points exactly on a boundary may count either way; the dwell makes that moot.

State JSON shape (``RuleState.to_json``)
----------------------------------------
``{"v": 1, "active": bool, "last_ts": float | null}`` plus, only when set,
``"since": float``, ``"samples": [[ts, value], ...]`` (rate),
``"buckets": [[start, sum, count], ...]`` (duration/mean). ``last_ts`` null means never
(-inf, which JSON cannot carry).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from core.geometry import Polygon, Ring, point_in_polygon

Verdict = Literal["raise", "clear"]
Step = tuple["RuleState", Verdict | None]

KINDS = ("threshold", "duration", "rate", "nodata", "geofence")
SEVERITIES = ("critical", "major", "minor", "warning")

# A rate rule keeps at most this many (ts, value) samples per (rule, device): enough to find
# the window's baseline within 1/60 of the window, small enough (~1 KB of JSON) to persist.
RATE_SAMPLES = 64
# Kept rate samples are at least window_s / _RATE_GAPS apart (all but the newest), so the
# ones from the baseline to now number at most _RATE_GAPS + 2 <= RATE_SAMPLES.
_RATE_GAPS = RATE_SAMPLES - 4
# A mean window holds at most this many buckets (24 h in 5-minute buckets): bounds the
# state's size and the cost of a bucket roll-over (one pass over the buckets).
MAX_BUCKETS = 288
# Default share of a mean window's buckets that must hold data before the mean is judged:
# GB 3095-2012 table 4 requires at least 20 hourly values for a valid 24-hour mean.
MIN_COVERAGE = 5 / 6
STATE_VERSION = 1


class RuleError(ValueError):
    code = "rule.invalid"


class RuleState(NamedTuple):
    """What one (rule, device) pair remembers. A frozen, cheap value (a tuple).

    ``active``: the alarm is raised. ``last_ts``: device time of the last reading evaluated
    (for ``nodata`` the last time the device was seen). ``since``: start of the pending
    transition, see the module docstring. ``samples``: (ts, value) pairs of a ``rate`` rule.
    ``buckets``: (start, sum, count) of a ``duration`` rule in mean mode. ``closed``:
    derived from ``buckets`` (see ``_closed_sum``), rebuilt by ``from_json``; so build a
    state with buckets through ``from_json`` or ``evaluate``, not by hand.
    """

    active: bool = False
    last_ts: float = -math.inf
    since: float | None = None
    samples: tuple[tuple[float, float], ...] = ()
    buckets: tuple[tuple[float, float, int], ...] = ()
    # Derived, not persisted: the sum of the means of the closed buckets (all but the last),
    # so a reading costs O(1) until its bucket rolls over.
    closed: float = 0.0

    @property
    def last_seen(self) -> float:
        return self.last_ts

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (see the module docstring for its shape)."""
        d: dict[str, Any] = {
            "v": STATE_VERSION, "active": self.active,
            "last_ts": self.last_ts if math.isfinite(self.last_ts) else None,
        }
        if self.since is not None:
            d["since"] = self.since
        if self.samples:
            d["samples"] = [[t, v] for t, v in self.samples]
        if self.buckets:
            d["buckets"] = [[s, total, n] for s, total, n in self.buckets]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RuleState:
        """The inverse of ``to_json``; ``ValueError`` on anything malformed."""
        try:
            if int(d.get("v", STATE_VERSION)) != STATE_VERSION:
                raise ValueError(f"unsupported rule state version {d.get('v')!r}")
            active = d.get("active", False)
            if not isinstance(active, bool):
                raise ValueError("active must be a boolean")
            last = d.get("last_ts")
            since = d.get("since")
            buckets = tuple((_json_num(s), _json_num(total), int(n))
                            for s, total, n in d.get("buckets", ()))
            if any(n < 1 for _, _, n in buckets):
                raise ValueError("bucket counts must be >= 1")
            return cls(
                active,
                -math.inf if last is None else _json_num(last),
                None if since is None else _json_num(since),
                tuple((_json_num(t), _json_num(v)) for t, v in d.get("samples", ())),
                buckets, _closed_sum(buckets),
            )
        except (TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"malformed rule state: {e}") from e


def _closed_sum(buckets: tuple[tuple[float, float, int], ...]) -> float:
    return math.fsum(total / n for _, total, n in buckets[:-1])


def _json_num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


INITIAL = RuleState()
_new = tuple.__new__  # RuleState without NamedTuple's Python-level __new__: the hot path


def _mk(active: bool, ts: float, since: float | None,
        samples: tuple[tuple[float, float], ...] = (),
        buckets: tuple[tuple[float, float, int], ...] = (), closed: float = 0.0) -> RuleState:
    return _new(RuleState, (active, ts, since, samples, buckets, closed))


def _step(state: RuleState, ts: float, on: bool, off: bool, for_s: float, clear_after_s: float,
          samples: tuple[tuple[float, float], ...] = (),
          buckets: tuple[tuple[float, float, int], ...] = (), closed: float = 0.0) -> Step:
    """The shared life of an alarm: pending raise for ``for_s``, pending clear for
    ``clear_after_s``. ``on``: at/over the raise limit; ``off``: past the clear limit;
    neither: in the band (a pending raise is kept, a pending clear reset)."""
    if not state.active:
        if on:
            since = ts if state.since is None else state.since
            if ts - since >= for_s:
                return _mk(True, ts, None, samples, buckets, closed), "raise"
            return _mk(False, ts, since, samples, buckets, closed), None
        return _mk(False, ts, None if off else state.since, samples, buckets, closed), None
    if off:
        since = ts if state.since is None else state.since
        if ts - since >= clear_after_s:
            return _mk(False, ts, None, samples, buckets, closed), "clear"
        return _mk(True, ts, since, samples, buckets, closed), None
    return _mk(True, ts, None, samples, buckets, closed), None


# --- compiled parameters, one class per kind -------------------------------------------------

class _Spec:
    __slots__ = ()

    def step(self, state: RuleState, value: float, ts: float) -> Step:
        return state, None


@dataclass(frozen=True, slots=True)
class _Limits:
    above: bool       # raise_above form (else raise_below)
    raise_at: float
    clear_at: float


@dataclass(frozen=True, slots=True)
class _Threshold(_Spec):
    above: bool
    raise_at: float
    clear_at: float
    clear_after_s: float

    def step(self, state: RuleState, value: float, ts: float) -> Step:
        if ts < state.last_ts:
            return state, None
        if self.above:
            on, off = value >= self.raise_at, value < self.clear_at
        else:
            on, off = value <= self.raise_at, value > self.clear_at
        if not state.active:
            if on:
                return _new(RuleState, (True, ts, None, (), (), 0.0)), "raise"
            return _new(RuleState, (False, ts, None, (), (), 0.0)), None
        if self.clear_after_s > 0.0:
            return _step(state, ts, on, off, 0.0, self.clear_after_s)
        if off:
            return _new(RuleState, (False, ts, None, (), (), 0.0)), "clear"
        return _new(RuleState, (True, ts, None, (), (), 0.0)), None


@dataclass(frozen=True, slots=True)
class _Duration(_Spec):
    lim: _Limits
    for_s: float
    clear_after_s: float

    def step(self, state: RuleState, value: float, ts: float) -> Step:
        if ts < state.last_ts:
            return state, None
        lim = self.lim
        if lim.above:
            on, off = value >= lim.raise_at, value < lim.clear_at
        else:
            on, off = value <= lim.raise_at, value > lim.clear_at
        return _step(state, ts, on, off, self.for_s, self.clear_after_s)


@dataclass(frozen=True, slots=True)
class _Mean(_Spec):
    lim: _Limits
    for_s: float
    clear_after_s: float
    window_s: float
    bucket_s: float
    min_buckets: int

    def step(self, state: RuleState, value: float, ts: float) -> Step:
        if ts < state.last_ts:
            return state, None
        start = math.floor(ts / self.bucket_s) * self.bucket_s
        buckets = state.buckets
        if buckets and buckets[-1][0] == start:  # the common case: O(1)
            _, total, n = buckets[-1]
            buckets = (*buckets[:-1], (start, total + value, n + 1))
            closed = state.closed
        else:  # a new bucket: once per bucket_s
            buckets = (*buckets, (start, value, 1))
            cutoff = start - self.window_s + self.bucket_s * 0.5  # older starts have left
            if buckets[0][0] < cutoff:
                i = 1
                while buckets[i][0] < cutoff:
                    i += 1
                buckets = buckets[i:]
            closed = _closed_sum(buckets)
        if len(buckets) < self.min_buckets:
            return _mk(state.active, ts, state.since, (), buckets, closed), None
        _, total, n = buckets[-1]
        mean = (closed + total / n) / len(buckets)
        lim = self.lim
        if lim.above:
            on, off = mean >= lim.raise_at, mean < lim.clear_at
        else:
            on, off = mean <= lim.raise_at, mean > lim.clear_at
        return _step(state, ts, on, off, self.for_s, self.clear_after_s, (), buckets, closed)


@dataclass(frozen=True, slots=True)
class _Rate(_Spec):
    window_s: float
    rise: float | None
    fall: float | None
    clear_rise: float
    clear_fall: float
    clear_after_s: float

    def step(self, state: RuleState, value: float, ts: float) -> Step:
        if ts < state.last_ts:
            return state, None
        samples = state.samples
        cutoff = ts - self.window_s
        # Drop samples that can no longer be the baseline: only the latest one at or
        # before the window start is needed.
        n = len(samples)
        i = 0
        while i + 1 < n and samples[i + 1][0] <= cutoff:
            i += 1
        if i:
            samples = samples[i:]
        base = samples[0] if samples and samples[0][0] <= cutoff else None
        if len(samples) >= 2 and samples[-1][0] - samples[-2][0] < self.window_s / _RATE_GAPS:
            # The previous newest sample is too close to the one before it to be kept: the
            # new one takes its place. Kept samples are thus >= window_s / _RATE_GAPS apart.
            samples = (*samples[:-1], (ts, value))
        else:
            samples = (*samples, (ts, value))
        if len(samples) > RATE_SAMPLES:
            samples = samples[-RATE_SAMPLES:]
        if base is None:
            return _mk(state.active, ts, state.since, samples), None
        rate = (value - base[1]) / (ts - base[0])
        rise, fall = self.rise, self.fall
        on = (rise is not None and rate >= rise) or (fall is not None and rate <= -fall)
        off = ((rise is None or rate < self.clear_rise)
               and (fall is None or rate > -self.clear_fall))
        return _step(state, ts, on, off, 0.0, self.clear_after_s, samples)


@dataclass(frozen=True, slots=True)
class _NoData(_Spec):
    factor: float
    interval_s: float | None

    def step(self, state: RuleState, value: float, ts: float) -> Step:
        if ts < state.last_ts:
            return state, None
        if state.active:
            return _new(RuleState, (False, ts, None, (), (), 0.0)), "clear"
        return _new(RuleState, (False, ts, None, (), (), 0.0)), None


@dataclass(frozen=True, slots=True)
class _Geofence(_Spec):
    dwell_s: float
    clear_dwell_s: float


# --- rules -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Rule:
    """A rule as stored. ``params`` are compiled once, at construction; do not mutate them
    (build a new Rule, e.g. with ``dataclasses.replace``). An invalid rule evaluates to
    nothing; ``validate`` says what is wrong with it."""

    id: str
    name: str
    kind: str
    metric: str | None
    device_model: str | None
    params: Mapping[str, Any] = field(default_factory=dict)
    severity: str = "major"
    incident_category: str | None = None
    qualification: str | None = None
    priority: int = 3
    _spec: _Spec | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            spec: _Spec | None = _compile(self)
        except (TypeError, ValueError):
            spec = None
        object.__setattr__(self, "_spec", spec)

    @staticmethod
    def from_row(row: Mapping[str, Any]) -> Rule:
        return Rule(
            id=row["id"], name=row["name"], kind=row["kind"], metric=row["metric"],
            device_model=row["device_model"], params=dict(row["params"] or {}),
            severity=row["severity"], incident_category=row["incident_category"],
            qualification=row["qualification"], priority=int(row["priority"]),
        )


_LIMIT_KEYS = frozenset({"raise_above", "clear_below", "raise_below", "clear_above",
                         "clear_after_s"})
_COMMON_KEYS = frozenset({"cap_raises", "cap_window_s"})
_KEYS: dict[str, frozenset[str]] = {
    "threshold": _LIMIT_KEYS,
    "duration/instant": _LIMIT_KEYS | {"mode", "for_s"},
    "duration/mean": _LIMIT_KEYS | {"mode", "for_s", "window_s", "bucket_s", "min_buckets"},
    "rate": frozenset({"window_s", "rise_per_s", "fall_per_s", "clear_rise_per_s",
                       "clear_fall_per_s", "clear_after_s"}),
    "nodata": frozenset({"factor", "interval_s"}),
    "geofence": frozenset({"dwell_s", "clear_dwell_s"}),
}


def _num(p: Mapping[str, Any], key: str, *, required: bool = False,
         default: float | None = None, minimum: float | None = None,
         positive: bool = False) -> float | None:
    v = p.get(key)
    if v is None:
        if required:
            raise RuleError(f"{key} is required")
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise RuleError(f"{key} must be a number, not {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise RuleError(f"{key} must be finite, not {v!r}")
    if positive and f <= 0:
        raise RuleError(f"{key} must be > 0, not {v!r}")
    if minimum is not None and f < minimum:
        raise RuleError(f"{key} must be >= {minimum:g}, not {v!r}")
    return f


def _req(p: Mapping[str, Any], key: str, **kw: Any) -> float:
    f = _num(p, key, required=True, **kw)
    assert f is not None
    return f


def _limits(p: Mapping[str, Any]) -> _Limits:
    ra, rb = _num(p, "raise_above"), _num(p, "raise_below")
    if (ra is None) == (rb is None):
        raise RuleError("needs exactly one of raise_above or raise_below")
    if ra is not None:
        if "clear_above" in p:
            raise RuleError("clear_above goes with raise_below; use clear_below with raise_above")
        cb = _num(p, "clear_below", default=ra)
        assert cb is not None
        if cb > ra:
            raise RuleError(f"clear_below ({cb:g}) must not exceed raise_above ({ra:g})")
        return _Limits(True, ra, cb)
    assert rb is not None
    if "clear_below" in p:
        raise RuleError("clear_below goes with raise_above; use clear_above with raise_below")
    ca = _num(p, "clear_above", default=rb)
    assert ca is not None
    if ca < rb:
        raise RuleError(f"clear_above ({ca:g}) must not be below raise_below ({rb:g})")
    return _Limits(False, rb, ca)


def _clear_after(p: Mapping[str, Any]) -> float:
    return _num(p, "clear_after_s", default=0.0, minimum=0.0) or 0.0


def _compile(rule: Rule) -> _Spec:
    """Check the params of ``rule`` and turn them into its evaluator; RuleError if wrong."""
    kind, p = rule.kind, rule.params
    if not isinstance(p, Mapping):
        raise RuleError(f"params must be a table of parameters, not {type(p).__name__}")
    if kind not in KINDS:
        raise RuleError(f"unsupported rule kind {kind!r}; expected one of {', '.join(KINDS)}")
    variant = kind
    if kind == "duration":
        mode = p.get("mode", "instant")
        if mode not in ("instant", "mean"):
            raise RuleError(f"mode must be 'instant' or 'mean', not {mode!r}")
        variant = f"duration/{mode}"
    unknown = set(p) - _KEYS[variant] - _COMMON_KEYS
    if unknown:
        raise RuleError(f"unknown parameter(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"{variant} takes {', '.join(sorted(_KEYS[variant] | _COMMON_KEYS))}")
    if ("cap_raises" in p) != ("cap_window_s" in p):
        raise RuleError("cap_raises and cap_window_s go together")
    if "cap_raises" in p:
        cap = _req(p, "cap_raises", minimum=1)
        if cap != int(cap):
            raise RuleError(f"cap_raises must be a whole number, not {p['cap_raises']!r}")
        _req(p, "cap_window_s", positive=True)

    if variant == "threshold":
        lim = _limits(p)
        return _Threshold(lim.above, lim.raise_at, lim.clear_at, _clear_after(p))
    if variant == "duration/instant":
        return _Duration(_limits(p), _req(p, "for_s", minimum=0.0), _clear_after(p))
    if variant == "duration/mean":
        lim = _limits(p)
        window = _req(p, "window_s", positive=True)
        bucket = _num(p, "bucket_s", default=window / 24, positive=True)
        assert bucket is not None
        n = window / bucket
        if abs(n - round(n)) > 1e-9 * n or round(n) < 1:
            raise RuleError(f"window_s ({window:g}) must be a whole multiple of bucket_s "
                            f"({bucket:g})")
        nb = round(n)
        if nb > MAX_BUCKETS:
            raise RuleError(f"window_s / bucket_s = {nb} buckets; at most {MAX_BUCKETS}")
        mb = _num(p, "min_buckets", default=float(math.ceil(nb * MIN_COVERAGE)), minimum=1)
        assert mb is not None
        if mb != int(mb) or mb > nb:
            raise RuleError(f"min_buckets must be a whole number from 1 to {nb}, "
                            f"not {p['min_buckets']!r}")
        return _Mean(lim, _num(p, "for_s", default=0.0, minimum=0.0) or 0.0, _clear_after(p),
                     window, bucket, int(mb))
    if variant == "rate":
        window = _req(p, "window_s", positive=True)
        rise = _num(p, "rise_per_s", positive=True)
        fall = _num(p, "fall_per_s", positive=True)
        if rise is None and fall is None:
            raise RuleError("needs rise_per_s and/or fall_per_s")
        if "clear_rise_per_s" in p and rise is None:
            raise RuleError("clear_rise_per_s needs rise_per_s")
        if "clear_fall_per_s" in p and fall is None:
            raise RuleError("clear_fall_per_s needs fall_per_s")
        cr = _num(p, "clear_rise_per_s", default=rise)
        cf = _num(p, "clear_fall_per_s", default=fall)
        if rise is not None and cr is not None and cr > rise:
            raise RuleError(f"clear_rise_per_s ({cr:g}) must not exceed rise_per_s ({rise:g})")
        if fall is not None and cf is not None and cf > fall:
            raise RuleError(f"clear_fall_per_s ({cf:g}) must not exceed fall_per_s ({fall:g})")
        return _Rate(window, rise, fall, math.inf if cr is None else cr,
                     math.inf if cf is None else cf, _clear_after(p))
    if variant == "nodata":
        factor = _num(p, "factor", default=3.0, minimum=1.0)
        assert factor is not None
        return _NoData(factor, _num(p, "interval_s", positive=True))
    dwell = _req(p, "dwell_s", minimum=0.0)
    clear_dwell = _num(p, "clear_dwell_s", default=dwell, minimum=0.0)
    assert clear_dwell is not None
    return _Geofence(dwell, clear_dwell)


def validate(rule: Rule) -> None:
    """Raise RuleError if the rule does not make sense: its kind, its parameters for that
    kind (unknown ones included, to catch typos), its severity or priority."""
    try:
        if rule.severity not in SEVERITIES:
            raise RuleError(f"severity must be one of {', '.join(SEVERITIES)}, "
                            f"not {rule.severity!r}")
        if not 1 <= rule.priority <= 4:
            raise RuleError(f"priority must be 1 (critical) to 4 (low), not {rule.priority!r}")
        if rule.kind in ("threshold", "duration", "rate") and not rule.metric:
            raise RuleError(f"a {rule.kind} rule needs a metric")
        _compile(rule)
    except RuleError as e:
        raise RuleError(f"rule {rule.id!r} ({rule.kind}): {e}") from None


def rate_cap(rule: Rule) -> tuple[int, float] | None:
    """The rule's own raise cap (cap_raises per cap_window_s), if it sets one."""
    p = rule.params
    if rule._spec is None or "cap_raises" not in p:
        return None
    return int(p["cap_raises"]), float(p["cap_window_s"])


# --- evaluation --------------------------------------------------------------------------

def evaluate(rule: Rule, state: RuleState, value: float, ts: float) -> Step:
    """One telemetry reading at device time ``ts``: the new state and the verdict.

    Geofence rules ignore telemetry (see ``evaluate_position``); an invalid rule gives
    ``(state, None)``.
    """
    spec = rule._spec
    if spec is None:
        return state, None
    return spec.step(state, value, ts)


def evaluate_threshold(rule: Rule, state: RuleState, value: float, ts: float) -> Step:
    """Kept for callers of the foundation's name: ``evaluate`` on a threshold rule."""
    return evaluate(rule, state, value, ts)


def check_silence(rule: Rule, state: RuleState, now: float,
                  interval_s: float | None = None) -> Step:
    """The no-data timer: raise when a ``nodata`` rule's device has been silent for longer
    than ``interval_s * factor`` (``interval_s``: the device's expected reporting interval;
    None: the rule's ``interval_s`` param). ``now`` is on the readings' clock. The state's
    ``last_ts`` is left alone; the next reading clears the alarm through ``evaluate``."""
    gap = silence_gap(rule, interval_s)
    if gap is None or state.active or state.last_ts == -math.inf \
            or now - state.last_ts <= gap:
        return state, None
    return _mk(True, state.last_ts, None), "raise"


def silence_gap(rule: Rule, interval_s: float | None = None) -> float | None:
    """How long a ``nodata`` rule lets a device stay silent before it raises:
    ``interval_s * factor`` (``interval_s`` as in ``check_silence``). None for other kinds
    and when no interval is known (such a device never raises no-data)."""
    spec = rule._spec
    if not isinstance(spec, _NoData):
        return None
    interval = interval_s if interval_s is not None else spec.interval_s
    return None if interval is None else interval * spec.factor


# --- geofence ----------------------------------------------------------------------------

def evaluate_position(rule: Rule, state: RuleState, lon: float, lat: float, ts: float,
                      allowed_polygons: Sequence[Ring | Polygon]) -> Step:
    """One position fix of a unit at device time ``ts`` against a ``geofence`` rule:
    outside every allowed polygon for ``dwell_s`` raises; inside for ``clear_dwell_s``
    clears. No polygons counts as inside. Other kinds give ``(state, None)``."""
    spec = rule._spec
    if not isinstance(spec, _Geofence) or ts < state.last_ts:
        return state, None
    inside = not allowed_polygons or any(
        point_in_polygon(lon, lat, poly) for poly in allowed_polygons)
    return _step(state, ts, not inside, inside, spec.dwell_s, spec.clear_dwell_s)


# --- words -------------------------------------------------------------------------------

def window_mean(state: RuleState) -> float | None:
    """The current window mean of a ``duration`` rule in mean mode (None: no data)."""
    if not state.buckets:
        return None
    return math.fsum(t / n for _, t, n in state.buckets) / len(state.buckets)


def describe(rule: Rule, value: float, state: RuleState | None = None) -> str:
    """A one-line message for operators, in the words of the rule. Pass the state after
    the verdict to have a mean rule quote its window mean rather than the last reading."""
    p = rule.params
    head = f"{rule.name}: {rule.metric}={value:g}"
    if rule.kind == "nodata":
        return f"{rule.name}: no data for over {p.get('factor', 3)}× the reporting interval"
    if rule.kind == "geofence":
        return f"{rule.name}: outside the assigned grids for over {p.get('dwell_s', 0)} s"
    if rule.kind == "rate":
        parts = []
        if "rise_per_s" in p:
            parts.append(f"rising ≥ {p['rise_per_s']}/s")
        if "fall_per_s" in p:
            parts.append(f"falling ≥ {p['fall_per_s']}/s")
        return f"{head}, {' or '.join(parts)} over {p.get('window_s')} s"
    if "raise_above" in p:
        limit = f"≥ {p['raise_above']}"
    elif "raise_below" in p:
        limit = f"≤ {p['raise_below']}"
    else:
        return head
    if rule.kind == "duration":
        if p.get("mode") == "mean":
            mean = window_mean(state) if state is not None else None
            shown = f"{mean:.4g}" if mean is not None else "?"
            head = f"{rule.name}: {rule.metric} {p.get('window_s')} s mean={shown}"
        if p.get("for_s"):
            return f"{head} {limit} for {p['for_s']} s"
    return f"{head} {limit}"
