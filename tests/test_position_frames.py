"""Pure tests of the live feed's position path (hub/position_frames.py): what is released per
tick, that one tick's frame is the same text for every client, and how a slow client's
frames coalesce."""

from __future__ import annotations

import json

from hub.live import batch_frame
from hub.position_frames import (
    OUTBOX_MERGE_AT,
    PositionBatcher,
    PositionOutbox,
    SharedFrame,
)


def _fix(ts: float, lon: float = 120.0) -> dict[str, float | None]:
    return {"lon": lon, "lat": 30.0, "ts": ts, "speed": 5.0, "heading": None}


def test_a_fix_that_comes_early_is_held_until_its_interval_passes_then_sent() -> None:
    b = PositionBatcher(0.8)
    b.put("U1", _fix(1.0))
    assert b.take(100.0) == {"U1": _fix(1.0)}
    b.put("U1", _fix(1.5))
    assert b.take(100.5) == {}  # 0.5 s after the last release: held
    b.put("U1", _fix(1.7))  # newer fix replaces the held one
    assert len(b) == 1
    assert b.take(100.79) == {}
    assert b.take(100.8) == {"U1": _fix(1.7)}
    assert b.take(101.0) == {}  # nothing new: nothing out


def test_units_at_one_hertz_with_jitter_get_every_fix_through() -> None:
    # Fixes 1 s apart, arriving up to 150 ms late at random: every fix is released once,
    # and no fix waits more than one tick past its arrival (20 ticks/s).
    jitter = [0.0, 0.15, 0.02, 0.11, 0.0, 0.14, 0.05, 0.0, 0.15, 0.01]
    b = PositionBatcher(0.8)
    tick = 0.05
    arrivals = [(i + jitter[i], float(i)) for i in range(len(jitter))]
    released: list[tuple[float, float]] = []  # (release time, fix ts)
    t, k = 0.0, 0
    while t < len(jitter) + 1:
        while k < len(arrivals) and arrivals[k][0] <= t:
            b.put("U1", _fix(arrivals[k][1]))
            k += 1
        for pos in b.take(t).values():
            released.append((t, float(pos["ts"])))  # type: ignore[arg-type]
        t = round(t + tick, 6)
    assert [ts for _t, ts in released] == [float(i) for i in range(len(jitter))]
    for (rt, ts), (arr, _ts) in zip(released, arrivals, strict=True):
        assert rt - arr <= tick + 1e-9, (ts, rt, arr)


def test_the_shared_frame_is_the_feeds_batch_frame_and_one_text_for_all_clients() -> None:
    positions = {"U1": _fix(1.0), "U2": _fix(1.0, 121.0)}
    frame = SharedFrame.of(positions)
    assert json.loads(frame.text) == json.loads(batch_frame([], positions))
    a, b = PositionOutbox(), PositionOutbox()
    a.put(frame)
    b.put(frame)
    ta, tb = a.take_one(), b.take_one()
    assert ta == frame.text and tb == frame.text
    assert ta is tb  # the same object: encoded once, not per client
    assert a.take_one() is None and not a


def test_a_client_behind_gets_its_frames_merged_latest_fix_per_unit() -> None:
    o = PositionOutbox()
    frames = [SharedFrame.of({"U1": _fix(float(i)), f"V{i}": _fix(float(i))})
              for i in range(OUTBOX_MERGE_AT + 1)]
    for f in frames[:OUTBOX_MERGE_AT - 1]:
        o.put(f)
    assert o.merges == 0  # a tick or two behind is jitter: the shared texts as they are
    o.put(frames[OUTBOX_MERGE_AT - 1])
    o.put(frames[OUTBOX_MERGE_AT])
    assert o.merges == 1
    text = o.take_one()
    assert text is not None and o.take_one() is None
    msg = json.loads(text)
    assert msg["type"] == "batch" and msg["events"] == []
    assert msg["positions"]["U1"]["ts"] == float(OUTBOX_MERGE_AT)  # the newest fix of U1
    assert set(msg["positions"]) == {"U1", *(f"V{i}" for i in range(OUTBOX_MERGE_AT + 1))}
    assert not o


def test_shared_frames_while_keeping_up_come_out_oldest_first() -> None:
    o = PositionOutbox()
    f1, f2 = SharedFrame.of({"U1": _fix(1.0)}), SharedFrame.of({"U1": _fix(2.0)})
    o.put(f1)
    o.put(f2)
    assert [o.take_one(), o.take_one(), o.take_one()] == [f1.text, f2.text, None]
