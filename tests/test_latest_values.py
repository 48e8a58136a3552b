"""Which readings of a batch update the latest-value table (ingest/latest_values.py)."""

from __future__ import annotations

import pytest

from ingest.copy_binary import TelemetryValues, copy_of, telemetry_copy, telemetry_rows
from ingest.latest_values import Encoded, fold_newest, newest_per_key, updated


def _r(ts: float, device: str, value: float, metric: str = "v") -> TelemetryValues:
    return (ts, device, metric, value, 1000.0, False)


@pytest.mark.parametrize(("rows", "newest"), [
    ([], []),
    # distinct keys: every row
    ([_r(1, "a", 1), _r(1, "b", 2), _r(1, "a", 3, "w")],
     [_r(1, "a", 1), _r(1, "b", 2), _r(1, "a", 3, "w")]),
    # a key twice, newest last / newest first
    ([_r(1, "a", 1), _r(2, "a", 2)], [_r(2, "a", 2)]),
    ([_r(2, "a", 2), _r(1, "a", 1), _r(1, "b", 5)], [_r(2, "a", 2), _r(1, "b", 5)]),
    # newest in the middle, and a tie: the later row
    ([_r(1, "a", 1), _r(9, "a", 9), _r(5, "a", 5)], [_r(9, "a", 9)]),
    ([_r(3, "a", 1), _r(3, "a", 2)], [_r(3, "a", 2)]),
])
def test_newest_per_key(rows: list[TelemetryValues], newest: list[TelemetryValues]) -> None:
    assert sorted(newest_per_key(rows)) == sorted(newest)


def test_distinct_keys_come_back_without_a_copy() -> None:
    rows = [_r(1, "a", 1), _r(1, "b", 2)]
    assert newest_per_key(rows) is rows


def test_updated_reads_the_command_tag() -> None:
    assert updated("UPDATE 4999") == 4999
    assert updated("UPDATE 0") == 0


def _fold(pending: dict[tuple[str, str], Encoded], rows: list[TelemetryValues],
          in_order: bool = False) -> None:
    fold_newest(pending, rows, telemetry_rows(rows), in_order)


def _rows_of(pending: dict[tuple[str, str], Encoded]) -> list[TelemetryValues]:
    for row, part in pending.values():  # each row with its own encoded bytes
        assert part == telemetry_rows([row])[0]
    return sorted(row for row, _ in pending.values())


def test_fold_newest_keeps_the_newer_row_of_each_key_across_batches() -> None:
    pending: dict[tuple[str, str], Encoded] = {}
    _fold(pending, [_r(5, "a", 5), _r(1, "b", 1)])
    _fold(pending, [_r(4, "a", 4), _r(2, "b", 2), _r(1, "c", 1)])  # a: older, kept
    _fold(pending, [_r(2, "b", 20)])  # same time, later batch: taken
    assert _rows_of(pending) == [_r(1, "c", 1), _r(2, "b", 20), _r(5, "a", 5)]


@pytest.mark.parametrize(("rows", "newest"), [
    ([_r(1, "a", 1), _r(2, "a", 2)], [_r(2, "a", 2)]),
    ([_r(9, "a", 9), _r(1, "a", 1), _r(1, "b", 5)], [_r(1, "b", 5), _r(9, "a", 9)]),
    ([_r(3, "a", 1), _r(3, "a", 2)], [_r(3, "a", 2)]),  # a tie: the later row
])
def test_fold_newest_takes_each_keys_newest_when_a_batch_repeats_it(
        rows: list[TelemetryValues], newest: list[TelemetryValues]) -> None:
    # The writer folds whole batches (every row), whose keys may repeat; into an empty
    # pending map too, where a plain dict of the rows would keep each key's last row.
    before_row = _r(0, "z", 0)
    for before in ({}, {("z", "v"): (before_row, telemetry_rows([before_row])[0])}):
        pending = dict(before)
        _fold(pending, rows)
        assert _rows_of(pending) == sorted(newest + [r for r, _ in before.values()])


def test_fold_newest_in_order_keeps_each_keys_last_row() -> None:
    # In order (no row older than an earlier one of its device): the last row of a key is
    # its newest, across batches and inside one; on equal times the later row.
    pending: dict[tuple[str, str], Encoded] = {}
    _fold(pending, [_r(1, "a", 1), _r(1, "b", 1), _r(2, "a", 2)], in_order=True)
    _fold(pending, [_r(2, "b", 2), _r(2, "b", 3), _r(1, "c", 1)], in_order=True)
    assert _rows_of(pending) == [_r(1, "c", 1), _r(2, "a", 2), _r(2, "b", 3)]


def test_encoded_rows_make_the_same_copy() -> None:
    rows = [_r(1, "a", 1), _r(1, "b", 2), _r(2.5, "c", 3, "w")]
    assert copy_of(telemetry_rows(rows)) == telemetry_copy(rows)
    assert copy_of([]) == telemetry_copy([])
