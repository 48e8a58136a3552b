"""Benchmark report: ``./hubctl bench report [--run] [--out FILE] [--doc FILE]``.

Reads the last saved result of each benchmark (simulators/bench_results.py; every
``./hubctl bench NAME`` run saves one), or with ``--run`` first runs the benchmark set
(``BENCH_SET``) one after the other. Then:

- writes one self-contained HTML page (``--out``, default var/bench-results/report.html):
  the headline table, and plots rendered by matplotlib as SVG inlined in the page (no file
  or network reference): throughput over time, latency CDFs of the commit, alarm and
  console paths, CPU per message by process;
- rewrites the headline table of docs/PERFORMANCE.md (``--doc``), between the markers
  ``HEADLINE_BEGIN`` and ``HEADLINE_END``, with each row's date, the machine and the load.

The pure parts (``label_of``, ``latest``, ``headline_rows``, ``table_lines``,
``replace_headline``, ``cdf_series``, ``cpu_per_message``) take values and return values;
``render_html`` draws; ``main`` does the I/O.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulators.bench.results import RESULTS_DIR, ROOT, Saved, load_results, machine_description

HEADLINE_BEGIN = "<!-- bench-report:headline:begin (written by ./hubctl bench report) -->"
HEADLINE_END = "<!-- bench-report:headline:end -->"
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
# Processes whose CPU the benchmarks report, in the order the bars are drawn.
PROCESSES = ("hub", "db", "broker", "generator", "clients")


# --------------------------------------------------------------------------- pure parts


def label_of(s: Saved) -> str:
    """What a result is a run of, finely enough that the latest of each label is the one
    to show: ``ingest single``, ``ingest batched 50``, ``alarm 10000/s``, ``console 200``."""
    r = s.result
    if s.benchmark == "ingest":
        mode = r.get("mode", "single")
        return f"ingest {mode}" + (f" {r.get('batch')}" if mode == "batched" else "")
    if s.benchmark == "alarm":
        return f"alarm {_num(r.get('target_rate'))}/s"
    if s.benchmark == "console":
        return f"console {r.get('clients')} clients"
    return s.benchmark


def latest(saved: list[Saved]) -> dict[str, Saved]:
    """The newest successful run of each label (``saved`` oldest first)."""
    out: dict[str, Saved] = {}
    for s in saved:
        if "error" not in s.result:
            out[label_of(s)] = s
    return out


@dataclass(frozen=True)
class Check:
    """One headline figure: the result key, how it is compared and the target."""

    name: str
    key: str
    op: str  # ">=" or "<=" or "=="
    target: float
    unit: str = ""

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        if self.op == ">=":
            return value >= self.target
        if self.op == "<=":
            return value <= self.target
        return value == self.target


# Headline figures per benchmark (issues 3, 4, 7 and 16's targets).
CHECKS: dict[str, list[Check]] = {
    "ingest": [Check("msgs/s (single) or points/s (batched), durable", "_rate", ">=", 0.0),
               Check("lost", "lost", "==", 0), Check("duplicated", "duplicated", "==", 0)],
    "alarm": [Check("publish → alarm p99", "p99_ms", "<=", 60, " ms"),
              Check("missed", "missed", "==", 0)],
    "console": [Check("operator event p99", "event_p99_ms", "<=", 100, " ms"),
                Check("position p99", "p99_ms", "<=", 200, " ms"),
                Check("positions per unit per s, slowest client",
                      "position_rate_per_unit_min", ">=", 0.95),
                Check("gaps", "gaps", "==", 0)],
}
INGEST_TARGETS = {"single": 24_000.0, "batched": 100_000.0}
CONSOLE_500_EVENT_P99_MS = 250.0


def _checks_for(s: Saved) -> list[Check]:
    r = s.result
    if s.benchmark == "ingest":
        mode = str(r.get("mode", "single"))
        rate = Check("points/s durable" if mode == "batched" else "msgs/s durable",
                     "points_per_s" if mode == "batched" else "msgs_per_s", ">=",
                     INGEST_TARGETS.get(mode, 0.0))
        return [rate, *CHECKS["ingest"][1:]]
    if s.benchmark == "console" and int(r.get("clients") or 0) >= 500:
        # 500 clients: no gap, events within 250 ms (issue 16); positions are not a target.
        return [Check("operator event p99", "event_p99_ms", "<=", CONSOLE_500_EVENT_P99_MS,
                      " ms"), Check("gaps", "gaps", "==", 0)]
    return CHECKS.get(s.benchmark, [])


@dataclass(frozen=True)
class HeadlineRow:
    label: str
    figure: str
    value: float | None
    unit: str
    target: str
    met: bool | None
    date: str
    load: str


def _load_of(r: dict[str, Any]) -> str:
    load = r.get("load")
    if isinstance(load, dict) and load.get("start"):
        return f"{load['start'][0]:.1f}"
    if r.get("load_avg_at_start") is not None:
        return f"{float(r['load_avg_at_start']):.1f}"
    return "—"


def headline_rows(latest_runs: dict[str, Saved]) -> list[HeadlineRow]:
    rows: list[HeadlineRow] = []
    for label in sorted(latest_runs):
        s = latest_runs[label]
        for c in _checks_for(s):
            raw = s.result.get(c.key)
            value = float(raw) if isinstance(raw, int | float) else None
            rows.append(HeadlineRow(
                label, c.name, value, c.unit, f"{c.op} {_num(c.target)}{c.unit}", c.met(value),
                s.saved_at.replace("T", " ").removesuffix("Z") + " UTC", _load_of(s.result)))
    return rows


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return "—" if x is None else str(x)
    if float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.3f}".rstrip("0").rstrip(".") if abs(x) < 10 else f"{x:,.1f}"


def _measured(r: HeadlineRow) -> str:
    return _num(r.value) + (r.unit if r.value is not None else "")


def table_lines(rows: list[HeadlineRow], machine: str) -> list[str]:
    """The Markdown headline table (with a line naming the machine)."""
    mark = {True: "yes", False: "**no**", None: "—"}
    out = ["Written by `./hubctl bench report` from the last saved run of each benchmark "
           "(var/bench-results/; plots in var/bench-results/report.html); the sections "
           "below say which code path each figure measures.", "",
           f"Machine: {machine}. Load = 1-minute load average at the run's start "
           "(other work may share the machine).", "",
           "| benchmark | figure | measured | target | met | run (UTC) | load |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.label} | {r.figure} | {_measured(r)} | {r.target} | "
                   f"{mark[r.met]} | {r.date} | {r.load} |")
    return out


def replace_headline(doc: str, lines: list[str]) -> str:
    """``doc`` with the text between the markers replaced by ``lines``; without markers, a
    "Headline figures" section holding them goes before the first second-level heading."""
    block = "\n".join([HEADLINE_BEGIN, *lines, HEADLINE_END])
    if HEADLINE_BEGIN in doc and HEADLINE_END in doc:
        head, rest = doc.split(HEADLINE_BEGIN, 1)
        _old, tail = rest.split(HEADLINE_END, 1)
        return head + block + tail
    section = ("## Headline figures: `./hubctl bench report`\n\n" + block + "\n\n")
    at = doc.find("\n## ")
    if at < 0:
        return doc.rstrip("\n") + "\n\n" + section
    return doc[:at + 1] + section + doc[at + 1:]


def _hist_cdf(h: dict[str, Any]) -> tuple[list[float], list[float]]:
    counts = sorted((int(b), int(c)) for b, c in h.get("counts", {}).items())
    total = sum(c for _b, c in counts)
    xs: list[float] = []
    ys: list[float] = []
    seen = 0
    for b, c in counts:
        seen += c
        xs.append((b + 1) * float(h["bin_ms"]))
        ys.append(seen / total)
    return xs, ys


def _samples_cdf(samples: list[float]) -> tuple[list[float], list[float]]:
    s = sorted(samples)
    n = len(s)
    return s, [(i + 1) / n for i in range(n)]


def _percentile_cdf(r: dict[str, Any], fmt: str) -> tuple[list[float], list[float]]:
    raw = [(r.get(fmt.format(q)), p) for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))]
    pts = [(float(x), p) for x, p in raw if isinstance(x, int | float)]
    return [x for x, _ in pts], [p for _, p in pts]


def cdf_series(label: str, s: Saved) -> list[tuple[str, list[float], list[float]]]:
    """(name, latency ms, cumulative fraction) of each latency path a result measures:
    from its histogram or samples when it has them, else from its percentiles (points)."""
    r = s.result
    out: list[tuple[str, list[float], list[float]]] = []
    if s.benchmark == "ingest":
        out.append((f"{label}: publish → commit (p50/p90/p99)",
                    *_percentile_cdf(r, "{}_commit_ms")))
    elif s.benchmark == "alarm":
        if r.get("latencies_ms"):
            out.append((f"{label}: publish → alarm on the websocket",
                        *_samples_cdf([float(x) for x in r["latencies_ms"]])))
        else:
            out.append((f"{label}: publish → alarm (p50/p90/p99)",
                        *_percentile_cdf(r, "{}_ms")))
    elif s.benchmark == "console":
        for key, what in (("pos_hist", "position publish → client"),
                          ("event_hist", "operator event → client")):
            if r.get(key):
                out.append((f"{label}: {what}", *_hist_cdf(r[key])))
        if not out:
            out.append((f"{label}: position (p50/p90/p99)", *_percentile_cdf(r, "{}_ms")))
            out.append((f"{label}: event (p50/p90/p99)", *_percentile_cdf(r, "event_{}_ms")))
    return [o for o in out if o[1]]


def _messages_per_s(s: Saved) -> float | None:
    """The input rate a benchmark's CPU is divided by: stored messages (ingest), the
    background telemetry (alarm), GPS fixes (console)."""
    r = s.result
    key = {"ingest": "msgs_per_s", "alarm": "background_msgs_per_s",
           "console": "gps_fixes_per_s"}.get(s.benchmark)
    v = r.get(key) if key else None
    return float(v) if isinstance(v, int | float) and v > 0 else None


def cpu_per_message(s: Saved) -> dict[str, float]:
    """µs of CPU per input message of each process the result reports (``<p>_cpu_pct``, or
    ``<p>_cpu_s`` over ``measured_s``)."""
    rate = _messages_per_s(s)
    if rate is None:
        return {}
    r = s.result
    out: dict[str, float] = {}
    for p in PROCESSES:
        pct = r.get(f"{p}_cpu_pct")
        if not isinstance(pct, int | float) and isinstance(r.get(f"{p}_cpu_s"), int | float) \
                and r.get("measured_s"):
            pct = 100.0 * float(r[f"{p}_cpu_s"]) / float(r["measured_s"])
        if isinstance(pct, int | float):
            out[p] = round(float(pct) / 100.0 / rate * 1e6, 1)
    return out


def throughput_series(label: str, s: Saved) -> list[tuple[str, list[float], list[float]]]:
    """(name, seconds, per second) of the results that record a per-second series."""
    r = s.result
    out = []
    for key, what in (("per_second_points", "points stored/s"),
                      ("per_second_msgs", "messages/s")):
        series = r.get(key)
        if isinstance(series, list) and series:
            out.append((f"{label}: {what}", [float(i) for i in range(len(series))],
                        [float(v) for v in series]))
    return out


# --------------------------------------------------------------------------- drawing


def _svg(draw: Callable[[Any], None], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Text stays text (not paths): smaller pages, searchable labels.
    plt.rcParams["svg.fonttype"] = "none"
    fig, ax = plt.subplots(figsize=(9, 4.2))
    try:
        draw(ax)
        ax.set_title(title)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
    finally:
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prologue and DOCTYPE: inline in HTML


def _command(s: Saved) -> list[str]:
    """The benchmark's arguments as ``./hubctl bench`` takes them (its name first)."""
    return s.argv if s.argv[:1] == [s.benchmark] else [s.benchmark, *s.argv]


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in the results read", ha="center", va="center",
            transform=ax.transAxes)
    ax.set_axis_off()


def render_html(latest_runs: dict[str, Saved], machine: str, generated_at: str) -> str:
    """The report page: headline table, three plots, the results' figures."""
    rows = headline_rows(latest_runs)
    tput = [t for label, s in sorted(latest_runs.items()) for t in throughput_series(label, s)]
    cdfs = [c for label, s in sorted(latest_runs.items()) for c in cdf_series(label, s)]
    cpu = {label: cpu_per_message(s) for label, s in sorted(latest_runs.items())}
    cpu = {k: v for k, v in cpu.items() if v}

    def draw_tput(ax: Any) -> None:
        if not tput:
            return _no_data(ax, "per-second series")
        for name, xs, ys in tput:
            ax.plot(xs, ys, label=name)
        ax.set_xlabel("seconds into the run")
        ax.set_ylabel("per second")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return None

    def draw_cdf(ax: Any) -> None:
        if not cdfs:
            return _no_data(ax, "latencies")
        for name, xs, ys in cdfs:
            style = "o-" if len(xs) <= 4 else "-"
            ax.plot(xs, ys, style, label=name, drawstyle="steps-post" if len(xs) > 4 else None)
        ax.set_xscale("log")
        ax.set_xlabel("latency, ms (log scale)")
        ax.set_ylabel("fraction within")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
        return None

    def draw_cpu(ax: Any) -> None:
        if not cpu:
            return _no_data(ax, "CPU figures")
        labels = list(cpu)
        width = 0.8 / len(PROCESSES)
        for i, p in enumerate(PROCESSES):
            vals = [cpu[k].get(p, math.nan) for k in labels]
            ax.bar([j + i * width for j in range(len(labels))], vals, width, label=p)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, fontsize=8)
        ax.set_ylabel("µs CPU per input message")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        return None

    plots = [
        _svg(draw_tput, "Throughput over time"),
        _svg(draw_cdf, "Latency CDFs: commit, alarm and console paths"),
        _svg(draw_cpu, "CPU per message by process (ingest: stored msg; alarm: background "
                       "msg; console: GPS fix)"),
    ]
    mark = {True: "yes", False: "NO", None: "—"}
    trs = "\n".join(
        f"<tr class='{'' if r.met is not False else 'miss'}'><td>{html.escape(r.label)}</td>"
        f"<td>{html.escape(r.figure)}</td><td>{_measured(r)}</td>"
        f"<td>{html.escape(r.target)}</td><td>{mark[r.met]}</td><td>{r.date}</td>"
        f"<td>{r.load}</td></tr>" for r in rows)
    details = "\n".join(
        f"<details><summary>{html.escape(label)} — {html.escape(s.saved_at)} "
        f"<code>./hubctl bench {html.escape(' '.join(_command(s)))}</code></summary><pre>"
        + html.escape(json.dumps({k: v for k, v in s.result.items()
                                  if not isinstance(v, dict | list) or k == "load"},
                                 indent=1)) + "</pre></details>"
        for label, s in sorted(latest_runs.items()))
    figures = "\n".join(f"<figure>{svg}</figure>" for svg in plots)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gridhub benchmarks</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 62em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .2em .5em; }}
tr.miss td {{ background: #fde8e8; }} figure {{ margin: 1.5em 0; }} svg {{ max-width: 100%; }}
pre {{ font-size: 12px; }}
</style></head><body>
<h1>gridhub benchmarks</h1>
<p>Generated {html.escape(generated_at)} on {html.escape(machine)}. Latest run of each
benchmark; definitions of the figures in simulators/*bench*.py and docs/PERFORMANCE.md.</p>
<table><tr><th>benchmark</th><th>figure</th><th>measured</th><th>target</th><th>met</th>
<th>run (UTC)</th><th>load</th></tr>
{trs}
</table>
{figures}
<h2>Results</h2>
{details}
</body></html>
"""


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
