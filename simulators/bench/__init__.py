"""The benchmark drivers: ``python -m simulators.bench NAME [args]`` (``./hubctl bench NAME``).

One module per benchmark, plus what they share:

- ``harness.py``: the command line (``BENCHMARKS``: name -> module, the one JSON last
  line) and what every benchmark shares (the bench environment, scratch databases, a hub
  process, CPU and memory probes);
- ``ingest.py`` (``ingest``): MQTT -> TimescaleDB throughput, loss and latency;
- ``loadgen.py``: the lean MQTT load generator (its own process) and its token bucket;
- ``alarm.py`` (``alarm``), ``console.py`` (``console``), ``replay.py`` (``replay``);
- ``dispatch_modes.py``: the command line of ``dispatch`` over its modes: the replay
  (``dispatch_town.py``, ``dispatch_workload.py`` the seeded stream, ``dispatch_sim.py`` the
  simulation, ``dispatch_bench.py`` the figures and the core's latency), the running
  leader's latency (``dispatch_latency.py``), ``--hub`` (``dispatch_hub.py`` with
  ``dispatch_hub_crews.py`` and ``dispatch_hub_figures.py``) and ``--from-db``
  (``dispatch_from_db.py``);
- ``results.py`` (every run's saved result) and ``report.py`` (``report``: the
  PERFORMANCE.md table in ``report_table.py``, the plots in ``report_plots.py``).

Nothing outside the benchmarks and ``simulators/chaos.py`` imports this package; the hub never
does (the import-layer contracts in pyproject.toml).
"""
