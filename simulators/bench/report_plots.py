"""The plots of the benchmark report: series taken from saved results (pure:
``cdf_series``, ``cpu_per_message``, ``throughput_series``) and the one self-contained HTML
page with them drawn by matplotlib as inline SVG (``render_html``)."""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Callable
from typing import Any

from simulators.bench.report_table import headline_rows, measured
from simulators.bench.results import Saved

# Processes whose CPU the benchmarks report, in the order the bars are drawn.
PROCESSES = ("hub", "db", "broker", "generator", "clients")


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
        f"<td>{html.escape(r.figure)}</td><td>{measured(r)}</td>"
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
