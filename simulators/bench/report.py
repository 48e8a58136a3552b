"""Benchmark report: ``./hubctl bench report [--run] [--out FILE] [--doc FILE]``.

Reads the last saved result of each benchmark (simulators/bench/results.py; every
``./hubctl bench NAME`` run saves one), or with ``--run`` first runs the benchmark set
(``BENCH_SET``) one after the other. Then:

- writes one self-contained HTML page (``--out``, default var/bench-results/report.html):
  the headline table, and plots rendered by matplotlib as SVG inlined in the page (no file
  or network reference): throughput over time, latency CDFs of the commit, alarm and
  console paths, CPU per message by process;
- rewrites the headline table of docs/PERFORMANCE.md (``--doc``), between the markers
  ``HEADLINE_BEGIN`` and ``HEADLINE_END``, with each row's date, the machine and the load.

The pure parts take values and return values: the table in report_table.py (``label_of``,
``latest``, ``headline_rows``, ``table_lines``, ``replace_headline``), the plotted series in
report_plots.py (``cdf_series``, ``cpu_per_message``), where ``render_html`` draws; ``main``
here does the I/O.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from simulators.bench.report_plots import render_html
from simulators.bench.report_table import headline_rows, latest, replace_headline, table_lines
from simulators.bench.results import RESULTS_DIR, ROOT, load_results, machine_description

DOC = ROOT / "docs" / "PERFORMANCE.md"

# The set ``--run`` runs: each target of the performance issues once, at lengths that keep
# the whole set near ten minutes on this machine (the figures in docs/PERFORMANCE.md come
# from the full-length runs each section names).
BENCH_SET: list[list[str]] = [
    ["ingest", "--mode", "single", "--duration", "30"],
    ["ingest", "--mode", "batched", "--batch", "50", "--duration", "30"],
    ["alarm", "--rate", "10000"],
    ["console"],
    ["console", "--clients", "500", "--duration", "30"],
]


# --------------------------------------------------------------------------- I/O


def run_set(python: str = sys.executable) -> None:
    """Runs ``BENCH_SET`` one after the other (each saves its result); a failed run is
    reported and the set goes on."""
    for argv in BENCH_SET:
        print(f"[report] running {' '.join(argv)}", file=sys.stderr, flush=True)
        rc = subprocess.run([python, "-m", "simulators.bench", *argv], cwd=ROOT,
                            stdout=subprocess.DEVNULL, check=False).returncode
        if rc:
            print(f"[report] {argv[0]} failed (rc {rc})", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.bench report",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="store_true", help="run the benchmark set first")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="saved results")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "report.html")
    p.add_argument("--doc", type=Path, default=DOC,
                   help="Markdown file whose headline table is rewritten")
    p.add_argument("--no-doc", action="store_true", help="leave the Markdown file alone")
    args = p.parse_args(argv)
    if args.run:
        run_set()
    runs = latest(load_results(args.results))
    if not runs:
        print(json.dumps({"benchmark": "report", "error": f"no results in {args.results}"}))
        return 1
    machine = next(iter(runs.values())).machine or machine_description()
    page = render_html(runs, machine, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    if not args.no_doc:
        lines = table_lines(headline_rows(runs), machine)
        args.doc.write_text(replace_headline(args.doc.read_text(), lines))
    print(json.dumps({"benchmark": "report", "page": str(args.out),
                      "doc": None if args.no_doc else str(args.doc),
                      "runs": {k: s.saved_at for k, s in runs.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
