"""What the console's KPI tiles count: shared by the live job (hub/jobs.py refresh_kpis) and
after-action replay (hub/replay_store.py), so a replayed tile means what the live one did."""

# A device is online when it reported within this many of its own intervals: one missed
# reading is noise, three in a row is a device that is down.
ONLINE_INTERVALS = 3
# Ingest rate shown on the console: readings of the last minute, per second.
INGEST_RATE_WINDOW_S = 60
