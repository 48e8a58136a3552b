"""The rules' reorder buffer: pure code. Readings that arrive out of device-time order within
the reorder window are evaluated in device-time order, without holding the in-order ones
back (an alarm reaches the console within milliseconds of its reading).

Per (rule, subject) the shell keeps a short ``History``: the readings evaluated within the
window of the newest one, each with the state the rule had *before* it and the verdict it
gave. A reading older than the newest evaluated one but within the window is inserted in
its place and the rule is re-run from the state before it over the later readings
(``replay``). The verdicts to apply are the ones that change what the operators see:
starting from the alarm's current state, each replayed verdict that differs from the one
given the first time and flips the alarm, then one final verdict if the alarm's state
after the replay differs from that. So a gateway's late gas spike between two normal
readings raises (and clears), and a replay that changes nothing emits nothing.

Memory: at most ``max_entries`` readings per key, and only those within ``window_s`` of
the newest (plus the one just before); a reading older than the oldest kept one is not
evaluated (the shell counts it; it is stored and marked late like a reading beyond the
window).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import NamedTuple

from ingest import rules


class Entry(NamedTuple):
    ts: float
    value: float
    before: rules.RuleState   # the rule's state before this reading
    verdict: rules.Verdict | None


History = list[Entry]


class Applied(NamedTuple):
    verdict: rules.Verdict
    ts: float
    value: float
    state: rules.RuleState   # the state after the verdict (for the message)


def record(hist: History, entry: Entry, window_s: float, max_entries: int) -> None:
    """Append an in-order entry; forget the ones older than the window of the newest, but
    the newest of those: its successor's ``before`` is the state a reading at the window's
    start is replayed from."""
    hist.append(entry)
    horizon = entry.ts - window_s
    drop = 0
    while drop + 1 < len(hist) and hist[drop + 1].ts < horizon:
        drop += 1
    drop = max(drop, len(hist) - max_entries)
    if drop > 0:
        del hist[:drop]


def replay(rule: rules.Rule, hist: History, value: float, ts: float, active: bool,
           window_s: float) -> tuple[rules.RuleState, list[Applied]] | None:
    """Insert the out-of-order reading (``ts`` < the newest in ``hist``) and re-run the rule.

    ``active``: the alarm's state as the operators see it now. Returns the rule's new state
    and the verdicts to apply, in device-time order; ``hist`` is updated in place. None if
    the reading is older than the window of the newest or the oldest kept entry (it is
    not evaluated)."""
    if not hist or ts < hist[0].ts or ts < hist[-1].ts - window_s:
        return None
    i = bisect_right([e.ts for e in hist], ts)
    if i >= len(hist):  # not out of order after all
        return None
    state = hist[i].before
    redone: History = []
    changes: list[tuple[Applied, bool]] = []
    new, v = rules.evaluate(rule, state, value, ts)
    redone.append(Entry(ts, value, state, v))
    if v is not None:
        changes.append((Applied(v, ts, value, new), True))
    state = new
    for e in hist[i:]:
        new, v = rules.evaluate(rule, state, e.value, e.ts)
        redone.append(Entry(e.ts, e.value, state, v))
        if v is not None:
            changes.append((Applied(v, e.ts, e.value, new), v != e.verdict))
        state = new
    hist[i:] = redone
    out: list[Applied] = []
    shown = active
    for applied, differs in changes:
        if differs and (applied.verdict == "raise") != shown:
            out.append(applied)
            shown = applied.verdict == "raise"
    if shown != state.active:
        last = hist[-1]
        out.append(Applied("raise" if state.active else "clear", last.ts, last.value, state))
    return state, out
