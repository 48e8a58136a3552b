"""The one typed settings object, read from ``HUB_*`` environment variables.

Built once in ``__main__`` (or by a test) and passed down; nothing else reads the
environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.town_time import DEFAULT_TOWN_TZ


class Settings(BaseSettings):
    """Every tunable of the hub, with the reason for its default."""

    model_config = SettingsConfigDict(env_prefix="HUB_", extra="ignore")

    database_url: str = Field(description="PostgreSQL with TimescaleDB, e.g. postgresql://u:p@host/db")
    mqtt_url: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt://[user:pass@]host:port")
    http_host: str = "127.0.0.1"
    http_port: int = 8081
    var_dir: Path = Path("var/demo")
    env: str = "demo"

    # Database pool: ingest holds one connection while flushing, the API and services share
    # the rest; 10 covers a busy console without starving PostgreSQL's 200 connections.
    db_pool_min: int = 2
    db_pool_max: int = 10

    # MQTT ingest.
    mqtt_client_id: str = "gridhub-ingest"
    # Shared subscription group, only when ingest is scaled out: several ingest processes
    # then split the storage work between them. Empty (the default) is one ingest process on
    # a plain persistent subscription, the configuration that loses nothing when the broker
    # restarts: Mosquitto 2.0 does not persist shared subscriptions (docs/DEPLOYMENT.md).
    mqtt_share_group: str = ""
    # Scaled out, the rules are evaluated by one leader-elected evaluator (ingest/evaluator.py)
    # on its own plain persistent subscription under this client id: the same in every ingest
    # process of a deployment, so whichever leads resumes the session the broker kept (and
    # queued readings in) while no one led. Unused with one ingest process.
    mqtt_rules_client_id: str = "gridhub-rules"
    # Unacknowledged messages the broker may hold out to us (MQTT 5 Receive Maximum). We ack
    # only after commit, so this caps throughput at about window / commit time.
    mqtt_receive_maximum: int = 5000
    # Ingest speaks MQTT 3.1.1 ("3.1.1") or 5 ("5"). 3.1.1 by default: paho builds property
    # objects for every MQTT 5 PUBLISH, and without them one ingest process stored 1.5x as
    # many messages per second (8,105 vs 5,309, same run; docs/PERFORMANCE.md).
    mqtt_ingest_protocol: str = "3.1.1"
    # The most unacknowledged messages an ingest process holds before it stops reading (the
    # broker queues the rest). Above the broker's in-flight window (max_inflight_messages
    # 10000), which bounds it while the database is away; this bounds the catch-up after,
    # when the broker was seen handing over ~3 windows at once. Not at the window itself: a
    # hub paused for a whole outage would miss its keepalive and reconnect over and over.
    ingest_max_unacked: int = 15000
    # Broker keeps our session (and queued QoS1 messages) this long while the hub is down.
    mqtt_session_expiry_s: int = 7 * 24 * 3600
    # MQTT accounts (hub/mqtt_accounts.py): the broker's password_file and acl_file, rendered
    # from the mqtt_accounts table, and its pid_file, signalled (SIGHUP) to re-read them.
    # Unset where the broker is not ours to write to: provisioning then updates the database
    # and says the files must be rendered (`python -m hub mqtt-accounts sync`) and reloaded.
    mqtt_password_file: Path | None = None
    mqtt_acl_file: Path | None = None
    mqtt_broker_pid_file: Path | None = None
    # The dynamic-security plugin's file that binds each device's and unit's client id to
    # its account (docs/MQTT.md, "Client ids"); unset: client ids are not bound.
    mqtt_client_ids_file: Path | None = None

    # Batched writer: flush at this many readings or this old, whichever comes first. 20 ms
    # keeps p99 publish-to-commit well under 100 ms; 5,000 rows amortise the commit.
    ingest_batch_size: int = 5000
    ingest_flush_interval_s: float = 0.02
    # Flushes in flight at once, each on its own pooled connection; acknowledgements are
    # still released in batch order, each after its batch and all earlier ones committed.
    # Two let the database store one batch while the next is staged (one flush at a time
    # left a core idle: docs/PERFORMANCE.md); more only add lock waits on telemetry_latest,
    # whose rows consecutive batches share. 1 is the old serial writer.
    ingest_flush_concurrency: int = 2
    # The latest-value table (telemetry_latest) is updated once per device and metric per
    # this interval, for every flush committed within it, not in each flush: a device that
    # reports faster than this costs one update, not one per flush (~3 µs of PostgreSQL
    # CPU each; the batched benchmark's database CPU per point fell by about a third,
    # docs/PERFORMANCE.md). Acknowledgements wait for it, so nothing is acknowledged before
    # it is reflected there (a crash means a redelivery, which writes it again); readers see
    # the table up to this much behind the readings, and the broker sees acknowledgements
    # that much later (the rules checkpoint already holds them 0.1 s). 0: each flush
    # updates it in its own transaction, together with the readings.
    ingest_latest_interval_s: float = 0.25
    # With an interval set, the update runs sooner once this many messages wait for it: a
    # fifth of the broker's in-flight window (mqtt_receive_maximum), so single-reading
    # ingest never stalls on a full window while it waits.
    ingest_latest_max_held: int = 1000
    # Payload bytes kept in a dead letter: enough to see what was wrong, bounded storage.
    dead_letter_max_bytes: int = 4096

    # Retention, in days, per table (drop_chunks by a scheduled job). Raw readings serve
    # recent charts and backtests; the rollups serve reports for years.
    retention_telemetry_days: int = 30
    retention_positions_days: int = 90
    retention_rollup_1m_days: int = 180
    retention_rollup_1h_days: int = 1825
    retention_dead_letters_days: int = 30
    # Citizens' contact data (hub/contacts.py) is erased this long after the report. A
    # citizen report is normally closed and its caller called back (回访) within weeks; 180
    # days also covers the six months in which a citizen may still appeal or sue over how
    # the report was handled (行政诉讼法 art. 46), when the handlers may need to reach them.
    # Keeping it longer serves no purpose of the report (PIPL art. 19: no longer than needed).
    retention_contacts_days: int = 180
    # Open311 (hub/open311*.py): requests per minute per client address on the public
    # GeoReport routes, and reports per hour per client application's API key. A citizen's
    # app reads a few pages a minute and files a report now and then; these stop one address
    # from scraping or flooding the database and one leaked key from filing case spam.
    open311_requests_per_minute: int = 60
    open311_reports_per_hour_per_key: int = 120

    # Event time. Readings are handed to the rules in device-time order per device; one
    # older than the newest already evaluated by more than this is stored, marked late and
    # not evaluated. 0 means "in order or late": MQTT keeps one device's messages in order.
    reorder_window_s: float = 2.0
    # A device whose clock (received minus device time, smoothed) is off by more than this
    # is flagged: its readings are stored by device time but operators are told.
    clock_skew_limit_s: float = 60.0
    # How often the device clocks are written to the database (a task of the ingest role).
    clock_save_interval_s: float = 30.0
    # How often the ingest role re-reads devices, units and rules: a device registered
    # meanwhile has its readings dead-lettered as unknown for at most this long.
    registry_reload_s: float = 10.0
    # The rule evaluator acknowledges a reading only once the rule states and alarm
    # transitions it produced are in the database (a checkpoint), so a successor restores
    # that state and gets every later reading redelivered. Acknowledgements wait up to this
    # long: at 10,000 msgs/s ~1,000 readings stay unacknowledged, well within the broker's
    # in-flight window (max_inflight_messages 10000), and the checkpoint is one small write.
    rules_checkpoint_s: float = 0.1
    # A rule condition still true this long after an operator cleared its alarm raises it
    # again (ingest/watch.py): time to act on it, but an unresolved hazard is not forgotten.
    alarm_realarm_s: float = 600.0
    # Backtests run in a child process (ingest/backtest.py), never on the hub's loop, with
    # these caps: 2M readings is about a month of one metric of a few hundred devices (or 7
    # days of 1,000 devices reporting every 5 minutes). At the CPU budget below such a
    # backtest takes ~30 s on a quiet 2-core hub (3.6 us of CPU a reading / 0.25 of a core)
    # and up to ~110 s on a saturated one (18,000-56,000 readings/s measured, 2026-12-03):
    # 120 s lets it finish and still bounds what a forgotten request costs.
    backtest_max_rows: int = 2_000_000
    backtest_max_s: float = 120.0
    # Backtests running at once (each is a process): one per core of a small hub.
    backtest_max_running: int = 2
    # CPU a running backtest may take, its child process and the PostgreSQL backend reading
    # for it together, as a share of one core, counting the time they wait runnable for a
    # CPU as taken (ingest/backtest_job.py paces itself to it, measured from /proc).
    # Priorities alone did not hide a backtest on a 2-core hub (alarm p99 doubled while one
    # ran); at this share the alarm path's latency stayed within the A/A control's noise
    # (docs/PERFORMANCE.md, "What was still shared"), and where a core is free a backtest of
    # the 2M-reading cap (~4 us of CPU a reading: ~35 s) still finishes inside
    # backtest_max_s. Not lower: with the queued time counted, 0.25 already measured
    # within the A/A control on a saturated 2-core machine, and 0.1 would bring that
    # backtest near the cap (~85 s of 120 s, no room for a slower machine).
    backtest_cpu_share: float = 0.25

    # SLA limits and accept time-outs run at this fraction of their real length. 1 in
    # production; demos and tests shrink a day's clocks into seconds.
    sla_time_scale: float = 1.0
    # The town's time zone: working hours, holidays and "today" (cases today, daily KPIs
    # and reports) are the town's, not UTC's. Mainland China is one zone, UTC+8.
    town_tz: str = DEFAULT_TOWN_TZ
    # SLA limits per category and priority, and the warn share (TOML); unset: the file
    # shipped in the package (dispatch/data/sla_limits.toml, which says where its values
    # come from). Supervisors' edits through the API are kept in the database on top.
    sla_file: Path | None = None
    # The working calendar: hours, weekends, public holidays and adjusted working days
    # (TOML); unset: the one shipped (dispatch/data/calendar_cn.toml, from the State
    # Council's notices). A town replaces it with its own file.
    calendar_file: Path | None = None
    # Every process re-reads the SLA edits this often, so an edit served by one web node
    # reaches the dispatcher and the other nodes within this long (the serving node at once).
    sla_reload_s: float = 30.0

    # Dispatch: a GPS fix older than this is "position unknown" (Resgrid-style staleness).
    position_stale_after_s: float = 120.0
    # Preemption, as tuned by the dispatch benchmark (docs/PERFORMANCE.md): high (p2) cases
    # may divert a unit en route to a normal or low one, when every free unit is more than
    # 6 minutes farther. Measured: 23 % fewer breaches than closest-idle, mean response
    # 2.5 % better (the engine's own defaults, p1 only and 2 minutes, gave ~10 %).
    dispatch_preempt_up_to_priority: int = 2
    dispatch_preempt_penalty_s: float = 360.0
    # No churn: a unit dispatched but not yet accepted moves to another case only when the
    # new plan saves more than this many priority-weighted seconds (DispatchPolicy's
    # replan_gain_s: two minutes of a normal case, about what the extra radio call and the
    # new crew's turnout cost). Accepted units move only by preemption.
    dispatch_replan_gain_s: float = 240.0
    # While a case waits, the dispatch leader looks this often for units with a new GPS fix
    # that could take it (free, or dispatched/en route and so re-plannable or preemptable)
    # and plans once if there is one (dispatch/leader.py). Fixes come at ~1 Hz per unit: one
    # plan per round, not per fix. 15 s: a unit at 40 km/h moves ~170 m, a few tens of
    # seconds of ETA, finer than the re-plan threshold above; 0 turns the rounds off.
    dispatch_position_replan_s: float = Field(default=15.0, ge=0.0)
    # Where a hub process that serves dispatch with other roles (the default `python -m hub
    # serve`: ingest, dispatch, web) runs it. True: in a supervised child process of its own
    # (`python -m hub dispatch`, hub/dispatch_child.py), because on the shared event loop
    # each of a decision's awaits queued behind ingest and the live feed (at 2,000 units
    # under `./hubctl bench console` every part of the p99 decision was slow at once:
    # p50 124 / p99 210 ms; docs/PERFORMANCE.md). False: on the hub's own loop, as before,
    # for a host that must run one process only, or to compare the two.
    dispatch_own_process: bool = True

    # Live feed: a client further behind than this many events resyncs from a snapshot.
    feed_replay_limit: int = 5000
    # Per-client queue bound before positions are coalesced and then the client dropped.
    feed_client_queue: int = 2000
    # One frame per client per tick carries every change since the last.
    feed_tick_s: float = 0.05

    # After-action replay (hub/replay_store.py): the dispatch leader saves the console's open
    # picture this often; a seek folds at most this much history (events and the latest fix
    # of each unit) onto the snapshot before it. Five minutes keeps a seek well under a
    # second (docs/PERFORMANCE.md, "After-action replay") for about 650 KB of JSON a time at
    # 2,000 units.
    replay_snapshot_s: float = 300.0
    # Pictures are kept as long as the positions they are replayed with (the map needs both).
    replay_keep_days: float = 90.0

    # Demo town data loaded by `hub load-town`.
    town_file: Path = (
        Path(__file__).resolve().parent.parent / "simulators" / "data" / "xuxiake.json")
    # A tile server URL for the console map, where one exists; empty draws our own data only.
    map_tile_url: str = ""

    # Authentication (docs/SECURITY.md). The session cookie is Secure by default: browsers
    # accept Secure cookies from http://127.0.0.1 and localhost, so only a plain-HTTP
    # deployment on another address needs this off (and should get TLS instead).
    cookie_secure: bool = True
    # A session lasts one long shift; after that the operator logs in again.
    session_ttl_s: float = 12 * 3600
    # last_seen_at is written at most this often per session, not on every request.
    session_touch_s: float = 60.0
    # Login throttling (hub/auth.py): failures are counted per (username, client address)
    # and per address, never per username alone, so guessing from elsewhere cannot lock
    # the duty officer out. After the free failures each further one doubles the wait
    # before the next attempt from there: base, 2 x base, ... up to the maximum.
    # Three typos are free: a person at the keyboard makes them; a guesser then gets about
    # a dozen tries in the first hour and ~12 an hour after (max 300 s), against passwords
    # of at least 12 characters.
    login_free_failures_per_pair: int = 3
    # Per address looser: a command room shares one NAT address among many operators.
    login_free_failures_per_ip: int = 20
    # One second first: a person retyping hardly notices it; a script does.
    login_delay_base_s: float = 1.0
    login_delay_max_s: float = 300.0
    # Failures older than this are forgotten (the purge job deletes them); a day keeps a
    # slow guesser at the maximum delay.
    login_failure_window_s: float = 24 * 3600.0

    # The largest HTTP request body accepted (413 above it). The biggest legitimate inputs
    # (an alarm rule, a case report, a backtest request) are a few kilobytes; towns are
    # imported with the CLI, not over HTTP.
    max_body_bytes: int = 256 * 1024
    # The largest websocket message accepted from a client (the feed's hello is ~30 bytes).
    ws_max_message_bytes: int = 64 * 1024

    # ---- the field app (hub/field_*.py, hub/photos*.py)
    # An enrolment code is shown on an admin's screen and scanned at once; ten minutes
    # covers handing the phone over, and a code photographed by someone else soon expires.
    field_enrol_ttl_s: float = 600.0
    # The live inbox sends a heartbeat this often when it has nothing else to send; a phone
    # that hears nothing for 2.5 heartbeats takes its socket for dead (a half-open TCP
    # connection after a change of network sends no close) and reconnects. 15 s is under
    # the idle timeouts of mobile carriers' NATs (30 s and up), so it also keeps the path
    # open, and costs a phone ~30 bytes every 15 s.
    field_ping_s: float = 15.0
    # Evidence photos: a phone camera's JPEG is 2-6 MB; 10 MB leaves room for a
    # high-resolution one and refuses videos or archives posted by mistake.
    photo_max_bytes: int = 10 * 1024 * 1024
    # Decoding bombs: a 10 MB PNG can claim a gigapixel canvas; 50 Mpx is above any
    # phone's camera (48 Mpx sensors bin to 12 Mpx by default).
    photo_max_pixels: int = 50_000_000
    # Where photos live (content-addressed); default <var_dir>/photos.
    photo_dir: Path | None = None
    # Photos are evidence of cases: kept as long as the case records are (three years,
    # the usual retention of administrative enforcement files); 0 keeps them for ever.
    photo_retention_days: int = 3 * 365
    # Idempotency keys are remembered this long: a phone offline for a whole shift and
    # a weekend still gets the first answer when it replays its queue.
    field_idempotency_keep_s: float = 7 * 24 * 3600.0
