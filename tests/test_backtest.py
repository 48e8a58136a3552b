"""Backtest episodes: pure, table-driven."""

from __future__ import annotations

import pytest

from ingest import backtest, rules


def _rule(kind: str, **params: object) -> rules.Rule:
    return rules.Rule(id="r", name="r", kind=kind, metric="m", device_model=None,
                      params=params)


@pytest.mark.parametrize(("rule", "series", "expected"), [
    # threshold with hysteresis: one episode, cleared only under the clear limit
    (_rule("threshold", raise_above=10, clear_below=5),
     [(0, 1), (1, 12), (2, 7), (3, 4), (4, 11)], [(1, 3), (4, None)]),
    # duration: must stay over for 2 s
    (_rule("duration", raise_above=10, for_s=2), [(0, 11), (1, 11), (2, 11), (3, 1)],
     [(2, 3)]),
    (_rule("duration", raise_above=10, for_s=2), [(0, 11), (1, 1), (2, 11)], []),
    # no data: silent for more than 3 x 10 s between readings
    (rules.Rule(id="n", name="n", kind="nodata", metric=None, device_model=None,
                params={"factor": 3}), [(0, 1), (10, 1), (50, 1), (60, 1)], [(40, 50)]),
])
def test_backtest_episodes(rule: rules.Rule, series: list[tuple[float, float]],
                           expected: list[tuple[float, float | None]]) -> None:
    eps = backtest.backtest(rule, {"d": series}, {"d": 10.0})
    assert [(e.raised_at, e.cleared_at) for e in eps] == expected
