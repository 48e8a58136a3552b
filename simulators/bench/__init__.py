"""The benchmark drivers: ``python -m simulators.bench NAME [args]`` (``./hubctl bench NAME``).

One module per benchmark, plus what they share:

- ``harness.py``: the command line (``BENCHMARKS``, the delegated names, the one JSON last
  line), what every benchmark shares (the bench environment, scratch databases, a hub
  process, CPU and memory probes) and the ``ingest`` benchmark;
- ``loadgen.py``: the lean MQTT load generator (its own process) and its token bucket;
- ``alarm.py`` (``alarm``), ``console.py`` (``console``), ``replay.py`` (``replay``);
- ``dispatch_modes.py``: the command line of ``dispatch`` over its modes
  (``dispatch_bench.py`` the replay, ``dispatch_latency.py``, ``dispatch_hub.py``,
  ``dispatch_from_db.py``);
- ``results.py`` (every run's saved result) and ``report.py`` (``report``: plots and the
  PERFORMANCE.md table).

Nothing outside the benchmarks and ``simulators/chaos.py`` imports this package; the hub never
does (the import-layer contracts in pyproject.toml).
"""
