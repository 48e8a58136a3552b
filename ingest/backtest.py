"""Backtest: run a rule over stored readings and say what it would have raised. Pure.

The same ``ingest.rules`` evaluation as the live path, over each device's readings in
device-time order, with no-data rules judged at each reading's time against the gap
since the previous one. Nothing is written: the result is a list of episodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ingest import rules


@dataclass(frozen=True, slots=True)
class Episode:
    """An alarm the rule would have raised: when, on what, and when it would have cleared
    (``None``: still active at the end of the range)."""

    device_id: str
    raised_at: float
    value: float | None
    message: str
    cleared_at: float | None = None


def backtest(rule: rules.Rule, readings: Mapping[str, Sequence[tuple[float, float]]],
             intervals: Mapping[str, float] | None = None) -> list[Episode]:
    """``readings``: device id -> [(ts, value)] sorted by ts. ``intervals``: each device's
    expected reporting interval (no-data rules)."""
    out: list[Episode] = []
    for device_id, series in readings.items():
        state = rules.INITIAL
        open_ep: Episode | None = None
        for ts, value in series:
            verdicts: list[tuple[rules.Verdict | None, float, float | None]] = []
            if rule.kind == "nodata" and state.last_ts > float("-inf"):
                interval = (intervals or {}).get(device_id)
                seen = state.last_ts
                state, v = rules.check_silence(rule, state, ts, interval)
                if v == "raise":  # it went silent when the allowed gap ran out
                    allowed = (interval or float(rule.params.get("interval_s", 0))) * float(
                        rule.params.get("factor", 3))
                    verdicts.append((v, seen + allowed, None))
            state, v = rules.evaluate(rule, state, value, ts)
            verdicts.append((v, ts, value))
            for verdict, at, val in verdicts:
                if verdict == "raise" and open_ep is None:
                    open_ep = Episode(device_id, at, val, rules.describe(rule, val or 0.0,
                                                                         state))
                elif verdict == "clear" and open_ep is not None:
                    out.append(Episode(open_ep.device_id, open_ep.raised_at, open_ep.value,
                                       open_ep.message, at))
                    open_ep = None
        if open_ep is not None:
            out.append(open_ep)
    out.sort(key=lambda e: (e.raised_at, e.device_id))
    return out


def group_rows(rows: Iterable[tuple[str, float, float]]
               ) -> dict[str, list[tuple[float, float]]]:
    """(device, ts, value) rows ordered by device then ts -> the ``readings`` mapping."""
    out: dict[str, list[tuple[float, float]]] = {}
    for device_id, ts, value in rows:
        out.setdefault(device_id, []).append((ts, value))
    return out
