"""Running a benchmark from a test as ``./hubctl bench NAME`` runs it, on the test services.

Shared by the tests of the benchmarks' own command lines (tests/test_ingest_bench.py,
tests/test_dispatch_hub_bench.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from simulators.bench.harness import ROOT


def bench_json(name: str, *args: str) -> dict[str, Any]:
    """``python -m simulators.bench NAME ARGS``; its last stdout line, the JSON. Asserts
    that it succeeded (with the end of its stderr if not)."""
    r = subprocess.run([sys.executable, "-m", "simulators.bench", name, *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                       env={**os.environ, "HUB_VAR_DIR": str(ROOT / "var" / "test")})
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out
