"""The dispatch role in a process of its own: ``python -m hub dispatch``. No HTTP port.

Two ways to run it:

- **Alone**, as a dispatch-only node (two of them for a standby): settings from ``HUB_*``,
  stopped by SIGTERM or SIGINT.
- **As a hub's child** (the default layout, hub/dispatch_child.py), with ``--control-fd``:
  a socket to the hub process. The hub sends one JSON line first, ``{"settings": {...}}``
  (its own ``Settings``, so a hub built with settings of its own, a test's or a
  benchmark's, gets the same dispatcher). This process sends JSON lines back:
  ``{"type": "started", "pid"}`` once its role runs; ``{"type": "leader", "leading",
  "caught_up"}`` when its leadership changes; ``{"type": "decided", "input", "ref",
  "marks", "dispatched", "timeline"}`` after each decision has committed (the input's class
  and fields, ``DecisionStats`` marks, the ``[incident, unit]`` pairs sent, the
  ``Dispatcher.timeline`` stamps and ``sent``: ``time.perf_counter()``, CLOCK_MONOTONIC on
  Linux, so comparable with the hub's own), from which the hub
  serves ``/api/health``'s ``dispatch_decisions``. The end of the socket (the hub is gone)
  stops this process; on Linux the kernel also kills it when the hub dies
  (``PR_SET_PDEATHSIG``), so a hub killed with SIGKILL leaves no leader holding the lock.
  SIGINT is ignored: a terminal's Ctrl-C reaches the hub's whole process group, and the
  hub stops its child itself.

What runs here is what the dispatch role ran in the hub process: the event feed
(committed events onto this process's bus), the leader (dispatch/leader.py: the leader
lock and take-over, SLA timer, unit commands over MQTT, position rounds), the SLA
configuration kept current (on ``sla.config_changed`` and the periodic ``sla.reload``),
and the scheduled jobs of the dispatch role (hub/jobs.py: upkeep done by the leader).
Events reach web nodes through the ``events`` table as in every layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from core import log as hub_log
from core.bus import Bus
from core.db import connect, create_pool, migrate
from core.errors import HubError
from core.events import Envelope
from core.heap import settle_gc
from core.outbox import EventFeed, last_seq
from core.settings import Settings
from dispatch import planner, sla_clocks, sla_settings
from dispatch.leader import Dispatcher
from hub import jobs

log = logging.getLogger("hub.dispatch_process")

ROLES = frozenset({"dispatch"})
# How often the leader's state (leading, caught up) is looked at for the hub. A change is
# reported within this long; a look is two attribute reads.
STATUS_CHECK_S = 0.25
# Stopping (leader, jobs, pool) is given this long before the process just exits: its
# decisions are transactions, so whatever is cut short is rolled back by the database.
STOP_TIMEOUT_S = 5.0
# prctl(2): the signal a process gets when the thread that started it exits.
PR_SET_PDEATHSIG = 1


@dataclass
class DispatchHost:
    """What the dispatch role's jobs use (``jobs.JobHost``); this process has no web part."""

    settings: Settings
    pool: asyncpg.Pool
    dispatcher: Dispatcher | None


class Reports:
    """The JSON lines to the hub process (none when run alone)."""

    def __init__(self, writer: asyncio.StreamWriter | None = None) -> None:
        self.writer = writer

    def send(self, msg: dict[str, Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def decided(self, event: planner.Input, decision: planner.Decision,
                marks: list[float], timeline: dict[str, float]) -> None:
        self.send({"type": "decided", "input": type(event).__name__,
                   "ref": dataclasses.asdict(event), "marks": marks,
                   "dispatched": [[d.incident_id, d.unit_id] for d in decision.dispatches],
                   "timeline": {**timeline, "sent": time.perf_counter()}})


class SlaReload:
    """SLA edits served by a web node, in force here at once (the web processes have
    hub/config_reload.py for this; the leader's clocks and decisions need it too)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.wake = asyncio.Event()

    def on_event(self, env: Envelope) -> None:
        if env.kind == "sla.config_changed":
            self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                await sla_settings.load_settings(self.pool, self.settings)
            except Exception:
                log.exception("could not reload the SLA configuration (the periodic "
                              "reload will)")


async def _report_leadership(dispatcher: Dispatcher, reports: Reports) -> None:
    last: tuple[bool, bool] | None = None
    while True:
        now = (dispatcher.is_leader, dispatcher.caught_up.is_set())
        if now != last:
            reports.send({"type": "leader", "leading": now[0], "caught_up": now[1]})
            last = now
        await asyncio.sleep(STATUS_CHECK_S)


async def run(settings: Settings, stop: asyncio.Event, reports: Reports) -> None:
    """The dispatch role until ``stop`` is set."""
    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await create_pool(settings.database_url, settings.db_pool_min, settings.db_pool_max)
    tasks: list[asyncio.Task[None]] = []
    dispatcher: Dispatcher | None = None
    scheduler = None
    try:
        await sla_clocks.configure(pool, settings)
        bus = Bus()
        # From now on: what committed before, the leader catches up on from the tables.
        bus.last_seq = await last_seq(pool)
        sla = SlaReload(pool, settings)
        bus.listen(sla.on_event)
        tasks.append(asyncio.create_task(sla.run(), name="dispatch.sla_reload"))
        tasks.append(asyncio.create_task(EventFeed(settings.database_url, bus).run(),
                                         name="core.event_feed"))
        dispatcher = Dispatcher(settings, pool, bus)
        leader = dispatcher
        dispatcher.on_decided.append(
            lambda event, decision, marks: reports.decided(event, decision, marks,
                                                           leader.timeline))
        await dispatcher.start()
        scheduler = jobs.start(DispatchHost(settings, pool, dispatcher), ROLES)
        tasks.append(asyncio.create_task(_report_leadership(dispatcher, reports),
                                         name="dispatch.report"))
        settle_gc()
        reports.send({"type": "started", "pid": os.getpid()})
        log.info("dispatch process %s started", os.getpid())
        await stop.wait()
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if dispatcher is not None:
            await dispatcher.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(pool.close(), STOP_TIMEOUT_S)
        except TimeoutError:
            pool.terminate()
        log.info("dispatch process %s stopped", os.getpid())


def _die_with(parent_pid: int) -> None:
    """Be killed when the hub process dies (Linux), and leave if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %s): this process stops when "
                        "its control socket closes", ctypes.get_errno())
    if os.getppid() != parent_pid:
        # The hub stopped (or failed to start) before this process got going: nothing to
        # do and nothing to say (the hub has said why, in its one line).
        raise SystemExit(0)


async def _watch_hub(reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
    """Stop when the hub's end of the socket closes (it sends nothing after the settings)."""
    with contextlib.suppress(OSError):
        while await reader.read(4096):
            pass
    if not stop.is_set():
        log.warning("the hub process is gone; stopping")
        stop.set()


async def _main(control_fd: int | None, parent_pid: int | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reports = Reports()
    watch: asyncio.Task[None] | None = None
    if control_fd is None:
        loop.add_signal_handler(signal.SIGINT, stop.set)
        settings = Settings()  # type: ignore[call-arg]  # database_url comes from HUB_*
    else:
        if parent_pid is not None:
            _die_with(parent_pid)
        reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=control_fd))
        first = await reader.readline()
        if not first:
            return 1  # the hub went away before it said anything
        settings = Settings(**json.loads(first)["settings"])
        reports = Reports(writer)
        watch = asyncio.create_task(_watch_hub(reader, stop), name="dispatch.watch_hub")
    try:
        await run(settings, stop, reports)
    finally:
        if watch is not None:
            watch.cancel()
    return 0


def run_from(control_fd: int | None, parent_pid: int | None) -> int:
    """``python -m hub dispatch`` (hub/__main__.py); the arguments are set by a hub that
    starts this process as its child."""
    hub_log.setup()
    if control_fd is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # before asyncio.run installs its own
    try:
        return asyncio.run(_main(control_fd, parent_pid))
    except HubError as e:
        print(f"error [{e.code}]: {e.message}", file=sys.stderr)
        return 1
    except Exception as e:
        with contextlib.suppress(Exception):
            log.exception("dispatch process failed")
        print(f"error: {e}", file=sys.stderr)
        return 1

