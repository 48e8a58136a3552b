"""The benchmark report (simulators/bench/report*.py) on recorded results: the saved runs in
tests/golden/bench_results/ are real outputs of ``./hubctl bench ingest|alarm|console`` on
this machine (the console one with its latency histograms), as ``save_result`` wrote them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from simulators.bench import report as bench_report
from simulators.bench import report_plots, report_table
from simulators.bench.results import Saved, load_results, save_result

SAMPLES = Path(__file__).parent / "golden" / "bench_results"

DOC = """# Performance

Intro paragraph.

## Ingest (issue 3): `./hubctl bench ingest`

Text that the report must leave alone.
"""


def _samples() -> list[Saved]:
    runs = load_results(SAMPLES)
    assert {s.benchmark for s in runs} == {"ingest", "alarm", "console"}
    return runs


def test_the_report_writes_a_self_contained_page_and_the_headline_table(
        tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(SAMPLES, results)
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text(DOC)
    out = tmp_path / "report.html"
    argv = ["--results", str(results), "--out", str(out), "--doc", str(doc)]
    assert bench_report.main(argv) == 0

    page = out.read_text()
    assert page.count("<svg") == 3  # throughput, latency CDFs, CPU per message
    # Self-contained: no script, stylesheet or image fetched from anywhere.
    assert not re.search(r"<(script|link|img|iframe)\b", page)
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page)
    for label in ("throughput over time", "latency cdfs", "cpu per message by process"):
        assert label in page.lower()
    # Every latency path is on the CDF (matplotlib keeps the legends as text).
    for path in ("publish → commit", "publish → alarm", "position publish → client",
                 "operator event → client"):
        assert path in page, path

    runs = report_table.latest(_samples())
    console = runs["console 200 clients"].result
    text = doc.read_text()
    assert text.startswith("# Performance\n\nIntro paragraph.\n\n## Headline figures")
    assert text.endswith(DOC[DOC.index("## Ingest"):])  # the rest untouched
    table = text[text.index(report_table.HEADLINE_BEGIN):text.index(report_table.HEADLINE_END)]
    row = next(line for line in table.splitlines() if "operator event p99" in line)
    assert f"| {report_table._num(console['event_p99_ms'])} ms |" in row
    assert "<= 100 ms" in row
    assert runs["console 200 clients"].saved_at.replace("T", " ").removesuffix("Z") in row
    assert f"| {console['load']['start'][0]:.1f} |" in row
    assert f"Machine: {runs['console 200 clients'].machine}" in table
    ingest = runs["ingest single"].result
    assert any(f"| {report_table._num(ingest['msgs_per_s'])} | >= 24,000 |" in line
               for line in table.splitlines())

    # A second run replaces the table in place: same document.
    assert bench_report.main(argv) == 0
    assert doc.read_text() == text


def test_latest_run_of_each_kind_wins_and_failed_runs_are_ignored(tmp_path: Path) -> None:
    console = next(s for s in _samples() if s.benchmark == "console")
    older = dict(console.result, event_p99_ms=999.0, run_id="a")
    newer = dict(console.result, event_p99_ms=42.0, run_id="b")
    for r in (older, newer):
        path = save_result("console", r, ["--clients", "200"], tmp_path)
        doc = json.loads(path.read_text())
        doc["saved_at"] = "2026-12-01T00:00:00Z" if r is older else "2026-12-02T00:00:00Z"
        path.write_text(json.dumps(doc))
    save_result("console", {"benchmark": "console", "error": "hub died", "run_id": "c"},
                [], tmp_path)
    runs = report_table.latest(load_results(tmp_path))
    assert list(runs) == ["console 200 clients"]
    assert runs["console 200 clients"].result["event_p99_ms"] == 42.0


def test_cpu_per_message_and_cdfs_come_from_the_recorded_figures() -> None:
    runs = report_table.latest(_samples())
    console = runs["console 200 clients"]
    cpu = report_plots.cpu_per_message(console)
    r = console.result
    assert cpu["hub"] == round(r["hub_cpu_pct"] / 100 / r["gps_fixes_per_s"] * 1e6, 1)
    (_, xs, ys), (_, exs, eys) = report_plots.cdf_series("c", console)
    assert ys[-1] == 1.0 and eys[-1] == 1.0
    assert xs == sorted(xs) and exs == sorted(exs)
    # The histogram's CDF crosses 0.99 at the p99 the benchmark reported.
    assert next(x for x, y in zip(xs, ys, strict=True) if y >= 0.99) == r["p99_ms"]
    alarm = runs[next(k for k in runs if k.startswith("alarm"))]
    (_, axs, _ays), = report_plots.cdf_series("a", alarm)
    assert len(axs) == alarm.result["alarmed"]
