"""Where benchmark results are kept, so that ``./hubctl bench report`` can read the last ones.

Every successful benchmark run (``simulators.bench.harness.run_and_report``) writes its JSON result,
the same object it prints as its last stdout line, to ``RESULTS_DIR`` as
``<benchmark>-<run_id>.json``, wrapped with what the report needs to say where and when it
was measured::

    {"benchmark": "console", "saved_at": "2026-12-03T09:01:02Z", "machine": "...",
     "argv": ["--clients", "500"], "result": {...}}
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# Under var/ (never committed): results are this machine's, not the project's; the figures
# worth keeping go to docs/PERFORMANCE.md through the report.
RESULTS_DIR = ROOT / "var" / "bench-results"


@dataclass(frozen=True)
class Saved:
    """One saved run."""

    benchmark: str
    saved_at: str  # UTC, ISO 8601
    machine: str
    argv: list[str]
    result: dict[str, Any]
    path: Path | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any], path: Path | None = None) -> Saved:
        return cls(str(doc["benchmark"]), str(doc["saved_at"]), str(doc.get("machine", "")),
                   [str(a) for a in doc.get("argv", [])], dict(doc["result"]), path)


def machine_description() -> str:
    """CPU model and count, memory, OS: e.g. ``2 × AMD EPYC, 24 GiB, Debian 12.11``."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{os.cpu_count()} × {model}"]
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        parts.append(f"{round(kb / 1024 / 1024)} GiB")
    except (OSError, ValueError, IndexError):
        pass
    debian = Path("/etc/debian_version")
    if debian.exists():
        parts.append(f"Debian {debian.read_text().strip()}")
    else:
        parts.append(platform.platform(terse=True))
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


def save_result(name: str, result: dict[str, Any], argv: list[str] | None = None,
                directory: Path = RESULTS_DIR) -> Path:
    """Writes one run's result (see the module docstring); returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    run_id = str(result.get("run_id") or time.strftime("%Y%m%d_%H%M%S"))
    path = directory / f"{name}-{run_id}.json"
    doc = {"benchmark": name, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine_description(),
           "argv": list(sys.argv[1:] if argv is None else argv), "result": result}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)
    return path


def load_results(directory: Path = RESULTS_DIR) -> list[Saved]:
    """Every saved run in ``directory``, oldest first (unreadable files are skipped)."""
    out: list[Saved] = []
    for p in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            out.append(Saved.from_json(json.loads(p.read_text()), p))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    out.sort(key=lambda s: s.saved_at)
    return out
