"""The load generator's pure parts: line formatting, unique ids, pacing maths. No services."""

import json
import random

import pytest

from ingest import wire
from simulators.bench import loadgen, loadgen_lines
from simulators.bench.loadgen import LoadConfig
from simulators.bench.loadgen_lines import (
    LineMaker,
    TokenBucket,
    device_ids,
    format_ts,
    partition,
    point_id,
    split_counts,
    split_point_id,
)

NOW = 1767225600.0
GATEWAY_TOPIC = f"gridhub/v1/gateways/{loadgen_lines.GATEWAY_PREFIX}0/telemetry"


def _lines(data: bytes) -> list[bytes]:
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


# --------------------------------------------------------------------------- ids


def test_device_ids_are_padded_unique_and_valid() -> None:
    ids = device_ids(10_000)
    assert ids[0] == "BENCH-00001" and ids[-1] == "BENCH-10000"
    assert len(set(ids)) == 10_000
    assert device_ids(123_456)[-1] == "BENCH-123456"
    assert all(wire.telemetry_topic(d) for d in ids[:10])  # raises on an invalid id


@pytest.mark.parametrize("count,parts", [(10, 3), (10_000, 2), (7, 7), (5, 1)])
def test_partition_is_disjoint_and_complete(count: int, parts: int) -> None:
    ids = device_ids(count)
    split = partition(ids, parts)
    assert len(split) == parts
    assert sorted(d for p in split for d in p) == sorted(ids)
    assert max(map(len, split)) - min(map(len, split)) <= 1


@pytest.mark.parametrize("worker,n,i", [(0, 0, 0), (3, 12345, 49), (63, 10**9 - 1, 999)])
def test_point_ids_round_trip_and_stay_exact_in_a_double(worker: int, n: int, i: int) -> None:
    v = point_id(worker, n, i)
    assert split_point_id(v) == (worker, n, i)
    assert float(v) == v and v < 1e15  # stored as double precision, within the decoder's bound


def test_format_ts_is_exact_microseconds() -> None:
    assert format_ts(1_767_225_600_000_001) == "1767225600.000001"
    assert format_ts(1_767_225_600_999_999) == "1767225600.999999"
    assert float(format_ts(1_767_225_600_123_456)) == pytest.approx(1767225600.123456, abs=1e-6)


# --------------------------------------------------------------------------- lines


def test_single_lines_decode_as_one_reading_each() -> None:
    devices = partition(device_ids(10), 2)[1]
    maker = LineMaker(1, devices)
    lines = _lines(maker.make(7, NOW))
    assert len(lines) == 7
    for n, line in enumerate(lines):
        obj = json.loads(line)
        assert set(obj) == {"device", "ts", "values"}
        res = wire.decode(GATEWAY_TOPIC, line, NOW)
        assert isinstance(res, wire.Decoded), res
        (r,) = res.readings
        assert r.device_id == devices[n % len(devices)]
        assert r.metric == loadgen_lines.METRIC
        assert r.value == point_id(1, n)
    assert maker.n == 7


def test_batched_lines_carry_distinct_devices() -> None:
    devices = partition(device_ids(100), 2)[0]  # 50 devices
    maker = LineMaker(0, devices, batch=20)
    lines = _lines(maker.make(6, NOW))  # 120 readings: wraps around the 50 devices
    assert len(lines) == 6
    seen_values: set[float] = set()
    for n, line in enumerate(lines):
        res = wire.decode(GATEWAY_TOPIC, line, NOW)
        assert isinstance(res, wire.Decoded), res
        assert len(res.readings) == 20
        assert len({r.device_id for r in res.readings}) == 20
        assert {r.device_id for r in res.readings} <= set(devices)
        assert len({r.ts for r in res.readings}) == 1
        assert [r.value for r in res.readings] == [point_id(0, n, i) for i in range(20)]
        seen_values.update(r.value for r in res.readings)
    assert len(seen_values) == 120


def test_payload_ts_is_the_send_time() -> None:
    maker = LineMaker(0, device_ids(4))
    (line,) = _lines(maker.make(1, NOW + 0.25))
    assert json.loads(line)["ts"] == pytest.approx(NOW + 0.25, abs=1e-6)


@pytest.mark.parametrize("batch", [0, 3])
def test_device_ts_pairs_unique_across_chunks_and_workers(batch: int) -> None:
    """Every (device, ts) is unique even when the clock stalls or steps back."""
    rng = random.Random(7)
    k = 3
    parts = partition(device_ids(12), k)
    makers = [LineMaker(w, parts[w], batch) for w in range(k)]
    clock = NOW
    pairs: set[tuple[str, float]] = set()
    values: set[float] = set()
    total = 0
    last_ts = [0.0] * k
    for _ in range(200):
        clock += rng.choice([0.0, 0.0, 1e-6, 0.001, -0.002])  # stalls and steps back
        w = rng.randrange(k)
        for line in _lines(makers[w].make(rng.randint(1, 9), clock)):
            res = wire.decode(GATEWAY_TOPIC, line, NOW)
            assert isinstance(res, wire.Decoded)
            ts = res.readings[0].ts
            assert ts > last_ts[w]  # strictly increasing per worker
            last_ts[w] = ts
            for r in res.readings:
                pairs.add((r.device_id, round(r.ts * 1e6)))
                values.add(r.value)
                total += 1
    assert len(pairs) == total
    assert len(values) == total


def test_maker_refuses_impossible_batches() -> None:
    with pytest.raises(ValueError):
        LineMaker(0, device_ids(3), batch=4)
    with pytest.raises(ValueError):
        LineMaker(0, [])


# --------------------------------------------------------------------------- pacing


def test_token_bucket_delivers_rate_times_elapsed_whatever_the_ticks() -> None:
    rng = random.Random(1)
    bucket = TokenBucket(10_000, capacity=200, now=0.0)
    t = 0.0
    got = 0
    while t < 5.0:
        t += rng.uniform(0.0001, 0.003)
        got += bucket.take(t)
    assert abs(got - 10_000 * t) <= 1


def test_token_bucket_caps_the_burst_after_a_pause() -> None:
    bucket = TokenBucket(1000, capacity=20, now=0.0)
    assert bucket.take(10.0) == 20  # not 10,000: a stalled generator does not burst
    assert bucket.take(10.0) == 0
    assert bucket.take(10.005) == 5


def test_token_bucket_limit_keeps_the_rest() -> None:
    bucket = TokenBucket(1000, capacity=100, now=0.0)
    assert bucket.take(0.05, limit=10) == 10
    assert bucket.take(0.05) == 40
    assert bucket.take(0.05, limit=-5) == 0


def test_token_bucket_wait() -> None:
    bucket = TokenBucket(1000, capacity=100, now=0.0)
    assert bucket.wait_s(1) == pytest.approx(0.001)
    bucket.take(0.0105)  # 10 taken, 0.5 left
    assert bucket.wait_s(2) == pytest.approx(0.0015)
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)


@pytest.mark.parametrize("total,parts,start", [(0, 3, 0), (10, 3, 0), (10, 3, 2), (2, 5, 4)])
def test_split_counts(total: int, parts: int, start: int) -> None:
    out = split_counts(total, parts, start)
    assert sum(out) == total and len(out) == parts
    assert max(out) - min(out) <= 1
    if total % parts:
        assert out[start % parts] == max(out)


# --------------------------------------------------------------------------- config


def test_config_defaults_and_validation() -> None:
    single = LoadConfig(port=1883)
    assert single.window == loadgen.DEFAULT_WINDOW_POINTS
    batched = LoadConfig(port=1883, mode="batched", batch=50)
    assert batched.window == max(loadgen.DEFAULT_WINDOW_MIN_MSGS,
                                 loadgen.DEFAULT_WINDOW_POINTS // 50)
    assert batched.points_per_msg == 50
    assert single.hard_timeout_s > single.duration_s + single.drain_timeout_s
    with pytest.raises(ValueError):
        LoadConfig(port=1883, host="10.0.0.1")  # loopback only
    with pytest.raises(ValueError):
        LoadConfig(port=1883, mode="batched", batch=60, devices=100, publishers=2)
    with pytest.raises(ValueError):
        LoadConfig(port=1883, devices=1, publishers=2)
    with pytest.raises(ValueError):
        LoadConfig(port=1883, mode="bulk")


def test_device_prefix_makes_run_specific_valid_ids() -> None:
    cfg = LoadConfig(port=1883, device_prefix="BENCH-a1f3-")
    assert device_ids(2, cfg.device_prefix) == ["BENCH-a1f3-00001", "BENCH-a1f3-00002"]
    assert not set(device_ids(10, "BENCH-a1f3-")) & set(device_ids(10))
    with pytest.raises(ValueError):
        LoadConfig(port=1883, device_prefix="BENCH a1f3/")  # not a valid id
    with pytest.raises(ValueError):
        LoadConfig(port=1883, device_prefix="X" * 60)  # ids longer than 64
