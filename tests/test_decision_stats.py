"""The dispatch leader's decision times by part (dispatch/decision_stats.py)."""

from dispatch.decision_stats import DecisionStats


def test_parts_are_the_gaps_between_marks_and_total_the_whole() -> None:
    stats = DecisionStats()
    stats.add([10.000, 10.001, 10.004, 10.010, 10.030, 10.032])
    # the latest decision's marks, as the dispatch process reports them to its hub
    assert stats.last == [10.000, 10.001, 10.004, 10.010, 10.030, 10.032]
    s = stats.summary()
    assert s["decisions"] == 1
    ms = s["ms"]
    assert isinstance(ms, dict)
    assert {k: v["p50"] for k, v in ms.items()} == {
        "wait": 1.0, "state": 3.0, "core": 6.0, "writes": 20.0, "commit": 2.0, "total": 32.0}


def test_window_keeps_the_last_decisions_and_counts_all() -> None:
    stats = DecisionStats(window=10)
    for i in range(100):
        t = float(i)
        stats.add([t, t, t, t, t, t + (i + 1) / 1000.0])
    s = stats.summary()
    assert s["decisions"] == 100
    ms = s["ms"]
    assert isinstance(ms, dict)
    # only decisions 90..99 (91..100 ms) remain
    assert ms["commit"]["max"] == 100.0
    assert ms["commit"]["p50"] == 95.0
    assert ms["total"]["p99"] == 100.0


def test_empty_summary_has_no_figures() -> None:
    s = DecisionStats().summary()
    assert s["decisions"] == 0
    ms = s["ms"]
    assert isinstance(ms, dict)
    assert ms["total"] == {"p50": None, "p99": None, "max": None}
