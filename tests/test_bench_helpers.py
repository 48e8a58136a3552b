"""Pure parts of the alarm and console benchmarks: percentiles, schedules, feed parsing,
histograms, seq checking, tracks. No services."""

import itertools
import json
import math

import pytest

from core.events import Envelope
from core.stats import percentile
from hub.live import batch_frame
from ingest import wire
from ingest.watch import CAP_RAISES, CAP_WINDOW_S
from simulators.bench import loadgen_lines
from simulators.bench.alarm_backtests import split_by_spans
from simulators.bench.alarm_feed import Trigger
from simulators.bench.alarm_setup import (
    CAP_MARGIN,
    RULE_ID,
    detector_ids,
    max_in_window,
    raised_alarms,
    run_prefixes,
    summarize,
    trigger_schedule,
)
from simulators.bench.console_clients import _frame_decoder, client_procs_for, split_evenly
from simulators.bench.console_counts import Histogram, SeqTracker, event_summary_by_kind
from simulators.bench.console_gps import M_PER_DEG, Track, make_tracks
from simulators.bench.console_load import unit_ids


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([1.0], 50, 1.0),
    ([1.0], 99, 1.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
    ([1.0, 2.0, 3.0, 4.0], 75, 3.0),
    ([1.0, 2.0, 3.0, 4.0], 76, 4.0),
    ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
    ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
    ([float(i) for i in range(1, 201)], 99, 198.0),  # 200 triggers: p99 is the 198th
    ([], 50, None),
])
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float | None
                                    ) -> None:
    assert percentile(values, q, nearest_rank=True) == expected


def test_percentile_rejects_bad_q() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101, nearest_rank=True)


def test_summarize_names_and_rounds() -> None:
    s = summarize([3.04, 1.0, 2.0], "x_")
    assert s == {"x_p50_ms": 2.0, "x_p90_ms": 3.0, "x_p99_ms": 3.0, "x_max_ms": 3.0,
                 "x_mean_ms": 2.0}
    assert summarize([])["p99_ms"] is None


def test_trigger_schedule_ascending_within_jitter_and_deterministic() -> None:
    offs = trigger_schedule(200, 0.7, 0.1, seed=3)
    assert len(offs) == 200
    assert all(b > a for a, b in itertools.pairwise(offs))
    assert all(abs(o - i * 0.7) <= 0.1 + 1e-9 for i, o in enumerate(offs) if i)
    assert offs == trigger_schedule(200, 0.7, 0.1, seed=3)
    assert offs != trigger_schedule(200, 0.7, 0.1, seed=4)


@pytest.mark.parametrize(("count", "interval", "jitter"), [
    (0, 0.7, 0.1), (10, 0.0, 0.0), (10, 0.7, 0.35), (10, 0.7, -0.1)])
def test_trigger_schedule_rejects(count: int, interval: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        trigger_schedule(count, interval, jitter)


def test_default_schedule_stays_under_the_rule_rate_cap() -> None:
    # The defaults of the alarm benchmark must never have a raise suppressed.
    offs = trigger_schedule(200, 0.7, 0.1, seed=1)
    assert max_in_window(offs, CAP_WINDOW_S) + CAP_MARGIN <= CAP_RAISES
    # ...while a 0.5 s interval would not fit.
    assert max_in_window(trigger_schedule(200, 0.5, 0.1), CAP_WINDOW_S) + CAP_MARGIN > CAP_RAISES


@pytest.mark.parametrize(("times", "window", "expected"), [
    ([0.0], 60.0, 1),
    ([0.0, 1.0, 2.0], 60.0, 3),
    ([0.0, 60.0], 60.0, 1),  # half-open: (t - 60, t]
    ([0.0, 59.9], 60.0, 2),
    ([0.0, 10.0, 20.0, 70.0, 71.0], 60.0, 3),
    ([], 60.0, 0),
])
def test_max_in_window(times: list[float], window: float, expected: int) -> None:
    assert max_in_window(times, window) == expected


def test_detector_ids_unique_and_disjoint_from_background() -> None:
    ids = detector_ids(200)
    assert len(set(ids)) == 200 and ids[0] == "BENCHGAS-0001"
    assert not set(ids) & set(loadgen_lines.device_ids(10_000))
    # The background count in the database is "device_id LIKE 'BENCH-%'".
    assert not any(i.startswith(loadgen_lines.DEVICE_PREFIX) for i in ids)
    assert all(wire.telemetry_topic(i) for i in ids)  # valid ids for topics


def test_run_prefixes_keep_runs_and_kinds_apart() -> None:
    gas, bg = run_prefixes("ab12")
    assert (gas, bg) == ("BENCHGASab12-", "BENCH-ab12-")
    detectors = detector_ids(200, gas)
    background = loadgen_lines.device_ids(10_000, bg)
    # The database counts background rows with LIKE '<bg>%'; detectors never match it.
    assert not any(d.startswith(bg) for d in detectors)
    assert not any(b.startswith(gas) for b in background)
    assert not set(detectors) & set(detector_ids(200, run_prefixes("cd34")[0]))
    assert all(wire.telemetry_topic(d) for d in [*detectors, gas + "PROBE", background[-1]])


def _env(seq: int, kind: str, data: dict[str, object]) -> Envelope:
    return Envelope.make(seq, 1767225600.0 + seq, kind, data)


def test_raised_alarms_from_a_real_batch_frame() -> None:
    frame = json.loads(batch_frame([
        _env(7, "alarm.raised", {"alarm": {"rule_id": RULE_ID, "device_id": "BENCHGAS-0001"}}),
        _env(8, "alarm.raised", {"alarm": {"rule_id": "gas_rising_fast",
                                           "device_id": "BENCHGAS-0002"}}),
        _env(9, "alarm.cleared", {"alarm": {"rule_id": RULE_ID, "device_id": "BENCHGAS-0003"}}),
        _env(10, "incident.opened", {"incident": {"id": 1}}),
    ], {}))
    assert raised_alarms(frame) == [("BENCHGAS-0001", 7, 1767225607.0)]
    assert raised_alarms({"type": "snapshot", "seq": 3}) == []
    assert raised_alarms({"type": "resync"}) == []


def test_histogram_percentiles_within_one_bin() -> None:
    h = Histogram(bins=1000, bin_ms=1.0)
    for ms in range(1, 101):  # 1..100 ms
        h.add(ms - 0.5)
    assert h.total == 100
    assert h.percentile(50) == 50.0
    assert h.percentile(99) == 99.0
    assert h.percentile(100) == 100.0
    assert h.max_ms == 99.5
    assert Histogram().percentile(99) is None


def test_histogram_clamps_negative_and_overflow() -> None:
    h = Histogram(bins=10, bin_ms=1.0)
    h.add(-3.0)
    h.add(5000.0)
    assert h.counts[0] == 1 and h.counts[9] == 1
    assert h.percentile(100) == 10.0  # the overflow bin's edge; max_ms keeps the truth
    assert h.max_ms == 5000.0


def test_event_summary_by_kind_most_samples_first() -> None:
    opened, assigned = Histogram(bins=1000), Histogram(bins=1000)
    for ms in (10.5, 20.5, 30.5):
        assigned.add(ms)
    opened.add(4.5)
    out = event_summary_by_kind({"incident.opened": opened, "unit.assigned": assigned})
    assert list(out) == ["unit.assigned", "incident.opened"]
    assert out["unit.assigned"] == {"p50_ms": 21.0, "p99_ms": 31.0, "max_ms": 30.5,
                                    "samples": 3}
    assert out["incident.opened"]["p99_ms"] == 5.0


def test_frame_decoder_reads_each_events_kind() -> None:
    f = _frame_decoder.decode(
        b'{"type":"batch","events":[{"seq":7,"ts":1.5,"kind":"unit.assigned","data":{}}],'
        b'"positions":{}}')
    assert [(e.seq, e.kind) for e in f.events] == [(7, "unit.assigned")]


def test_histogram_add_since_matches_add() -> None:
    now = 1767225600.0
    stamps = [now - d for d in (0.0004, 0.0123, 0.050, 0.2, -0.001)]
    a, b = Histogram(bins=500), Histogram(bins=500)
    a.add_since(now, stamps)
    for ts in stamps:
        b.add((now - ts) * 1000.0)
    assert a.counts == b.counts
    assert a.max_ms == pytest.approx(b.max_ms)


def test_histogram_sparse_round_trip_merges() -> None:
    a, b = Histogram(bins=100), Histogram(bins=100)
    for ms in (1.0, 2.0, 2.5, 70.0):
        a.add(ms)
    b.add(3.0)
    b.merge_sparse(json.loads(json.dumps(a.to_sparse())))
    assert b.total == 5 and b.max_ms == 70.0 and b.counts[2] == 2
    with pytest.raises(ValueError):
        Histogram(bins=50).merge_sparse(a.to_sparse())


def test_seq_tracker_in_order() -> None:
    t = SeqTracker()
    t.snapshot(10)
    assert [t.event(s) for s in (11, 12, 13)] == [True, True, True]
    assert (t.first, t.last, t.gaps, t.duplicates) == (10, 13, 0, 0)
    assert t.missing_at_end(13) == 0
    assert t.missing_at_end(16) == 3


def test_seq_tracker_gaps_duplicates_and_resync() -> None:
    t = SeqTracker()
    t.snapshot(10)
    t.event(11)
    assert t.event(14)  # 12 and 13 missed
    assert not t.event(14) and not t.event(12)  # seen / older: duplicates
    assert (t.gaps, t.duplicates) == (2, 2)
    t.snapshot(20)  # resync: the snapshot covers 15..20
    assert t.resync_skipped == 6 and t.last == 20
    t.event(21)
    assert t.gaps == 2
    t.snapshot(21)  # a reconnect's snapshot at the same seq skips nothing
    assert t.resync_skipped == 6


def test_seq_tracker_never_started() -> None:
    assert SeqTracker().missing_at_end(100) == 0


def test_client_decoder_reads_a_real_batch_frame() -> None:
    positions = {"BU-00001": {"lon": 120.1, "lat": 30.2, "ts": 1767225600.25, "speed": 5.0,
                              "heading": 90.0}}
    raw = batch_frame([_env(5, "incident.opened", {"incident": {"id": 1, "title": "x"}})],
                      positions)
    f = _frame_decoder.decode(raw)
    assert f.type == "batch"
    assert [(e.seq, e.ts) for e in f.events] == [(5, 1767225605.0)]
    assert f.positions["BU-00001"].ts == 1767225600.25
    snap = _frame_decoder.decode(json.dumps(
        {"type": "snapshot", "seq": 42, "alarms": [], "incidents": [], "units": [{"id": "u"}]}))
    assert (snap.type, snap.seq, snap.events, snap.positions) == ("snapshot", 42, [], {})
    assert _frame_decoder.decode('{"type":"resync"}').type == "resync"


def test_track_drives_its_circle_at_its_speed() -> None:
    tr = Track(lon0=120.0, lat0=30.0, radius_deg=0.003, speed_ms=8.0, phase=1.0)
    coslat = math.cos(math.radians(30.0))
    pts = [tr.fix(1767225600.0 + s) for s in range(0, 11)]
    for lat, lon, speed, heading in pts:
        r = math.hypot((lon - 120.0) * coslat, lat - 30.0)
        assert r == pytest.approx(0.003, rel=1e-6)
        assert speed == 8.0 and 0.0 <= heading < 360.0
        payload = wire.encode_gps(1767225600.0, lat, lon, speed, heading)
        assert not isinstance(wire.decode(wire.gps_topic("BU-00001"), payload, 1767225600.0),
                              wire.DecodeError)
    # ~8 m per second along the circle (in degrees of latitude scaled to metres).
    (la0, lo0, *_), (la1, lo1, *_) = pts[0], pts[1]
    step_m = math.hypot((lo1 - lo0) * coslat, la1 - la0) * M_PER_DEG
    assert step_m == pytest.approx(8.0, rel=0.01)


def test_make_tracks_deterministic() -> None:
    centres = [(120.0, 30.0), (120.1, 30.1)]
    assert make_tracks(centres, 7) == make_tracks(centres, 7)
    assert [t.lon0 for t in make_tracks(centres)] == [120.0, 120.1]


def test_client_processes_scale_with_the_clients() -> None:
    # 200 clients stay in 2 processes; 500 get 5 (2 left each loop seconds late).
    assert [client_procs_for(n) for n in (1, 100, 200, 201, 500, 5000)] == [1, 1, 2, 3, 5, 8]


def test_split_evenly_and_unit_ids() -> None:
    assert split_evenly(200, 2) == [100, 100]
    assert split_evenly(7, 3) == [3, 2, 2]
    assert sum(split_evenly(2001, 8)) == 2001
    ids = unit_ids(2000)
    assert ids[0] == "BU-00001" and ids[-1] == "BU-02000" and len(set(ids)) == 2000
    run = unit_ids(2000, "BUab12-")
    assert run[0] == "BUab12-00001" and not set(run) & set(ids)
    assert all(wire.gps_topic(u) for u in [*ids, *run])


def test_split_by_spans_tells_triggers_during_a_backtest_from_the_others() -> None:
    def trig(sent: float, ms: float | None) -> Trigger:
        t = Trigger(f"d{sent}", sent_at=sent)
        if ms is not None:
            t.received_at = sent + ms / 1000
        return t

    triggers = [trig(1.0, 10), trig(5.0, 30), trig(6.0, 20), trig(9.0, None), trig(12.0, 5)]
    inside, outside = split_by_spans(triggers, [(4.0, 7.0), (11.5, 12.0)])
    assert inside == pytest.approx([5, 20, 30])  # sorted; the unanswered one in neither
    assert outside == pytest.approx([10])
