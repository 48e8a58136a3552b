"""``./hubctl bench ingest`` end to end, briefly: the benchmark that docs/PERFORMANCE.md's
ingest figures come from runs the hub, publishes, and counts what the database stored.

A few seconds at a low rate in both modes: the point is that the command works and counts
right (nothing lost or duplicated is what the hub must show), not a speed.
"""

from __future__ import annotations

import pytest

from tests.bench_cli import bench_json


@pytest.mark.parametrize("mode", ["single", "batched"])
def test_the_ingest_benchmark_counts_what_it_sent(mode: str) -> None:
    out = bench_json("ingest", "--mode", mode, "--batch", "10", "--duration", "3", "--rate", "200",
                 "--devices", "50", "--publishers", "1")
    assert out["benchmark"] == "ingest" and out["mode"] == mode and out["hubs"] == 1
    assert out["sent_msgs"] > 0 and out["stored_msgs"] == out["sent_msgs"]
    per_msg = 10 if mode == "batched" else 1
    assert out["sent_points"] == out["sent_msgs"] * per_msg == out["stored_points"]
    assert out["lost"] == out["duplicated"] == out["unexpected_rows"] == 0
    assert out["msgs_per_s"] > 0 and out["hub_cpu_us_per_point"] > 0
