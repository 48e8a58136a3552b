"""The dispatch role in a supervised child process (the hub's default layout).

A hub process that serves dispatch together with other roles (``python -m hub serve``:
ingest, dispatch, web) runs it as ``python -m hub dispatch`` (hub/dispatch_process.py)
unless ``Settings.dispatch_own_process`` is off: the leader's decisions then have an
event loop of their own instead of queueing behind ingest and the live feed.
``DispatchChild`` starts it, restarts it with a backoff whenever it exits, and stops it
(SIGTERM, then SIGKILL) when the hub stops. The two talk over a socket pair: the hub sends
its settings, the child reports its start, its leadership and every decision (JSON lines,
see hub/dispatch_process.py); the decisions' times by part feed ``stats``, which
``/api/health`` shows as ``dispatch_decisions`` as it did for the in-process leader. A hub
killed outright takes its child with it (the child's end of the socket closes; on Linux
the kernel's parent-death signal), so no orphan keeps the leader lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.settings import Settings
from dispatch.decision_stats import DecisionStats

log = logging.getLogger("hub.dispatch_child")

ROOT = Path(__file__).resolve().parent.parent
# A child that exits is started again after this long, doubled after each exit that
# follows a short run, up to RESTART_MAX_S: a killed child is back within about its start
# time (1-3 s here), while one that cannot start (database away, a bad setting) does not
# spin, and its error is logged at each try.
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
# A child that ran this long before exiting was healthy: the next start waits the least.
STABLE_S = 60.0
# A child told to stop (SIGTERM) gets this long before SIGKILL. It stops in well under a
# second; a decision cut short is rolled back by the database either way.
STOP_TIMEOUT_S = 10.0
# The longest report line accepted (a decision's is ~300 bytes; a re-plan that moves many
# cases lists each pair).
LINE_LIMIT = 1 << 20


def wanted(settings: Settings, roles: frozenset[str]) -> bool:
    """Whether a hub process serving ``roles`` runs dispatch in a child process."""
    return "dispatch" in roles and len(roles) > 1 and settings.dispatch_own_process


class DispatchChild:
    """Runs and supervises the dispatch process; keeps what it reported."""

    def __init__(self, settings: Settings,
                 on_decided: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.settings = settings
        # Every decision the children of this hub made, by part (``/api/health``).
        self.stats = DecisionStats()
        # Called with each ``decided`` report (the dispatch benchmark times them).
        self.on_decided = on_decided
        self.pid: int | None = None
        self.starts = 0
        self.last_exit: int | None = None  # the previous child's exit status
        self.leading = False
        self.started = asyncio.Event()  # the current child runs its role
        self.caught_up = asyncio.Event()  # ... leads and has planned what waited
        self._proc: subprocess.Popen[bytes] | None = None
        self._early: tuple[subprocess.Popen[bytes], socket.socket] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def spawn_early(self) -> None:
        """Start the first child now, before this process has its event loop: ``python -m
        hub serve`` does so first thing, so that the child's start-up (interpreter, imports:
        seconds on a busy machine) overlaps the hub's own; ``start`` adopts it."""
        self._early = self._spawn()

    def abandon_early(self) -> None:
        """Kill the child ``spawn_early`` started, when the hub will not start after all (it
        has not been sent its settings, so it holds nothing: SIGKILL, quietly)."""
        if self._early is None:
            return
        proc, sock = self._early
        self._early = None
        sock.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    async def start(self) -> None:
        """Start the child and its supervision; returns at once (see ``wait_started``)."""
        self._task = asyncio.create_task(self._supervise(), name="hub.dispatch_child")

    async def wait_started(self, within_s: float) -> bool:
        """Whether a child runs its role within ``within_s`` seconds."""
        try:
            await asyncio.wait_for(self.started.wait(), within_s)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        """Stop the child (SIGTERM; SIGKILL after ``STOP_TIMEOUT_S``) and stop restarting."""
        self._stopping = True
        task, proc = self._task, self._proc
        if task is None:
            return
        if proc is not None and proc.poll() is None:
            proc.terminate()
            # The supervision reaps it (and kills it if it lingers), then returns.
            await asyncio.wait([task], timeout=STOP_TIMEOUT_S + 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        """For ``/api/health``: the child's pid, whether it runs and leads, its restarts."""
        return {"pid": self.pid, "running": self.started.is_set(), "leading": self.leading,
                "caught_up": self.caught_up.is_set(), "restarts": max(0, self.starts - 1),
                "last_exit": self.last_exit}

    async def _supervise(self) -> None:
        delay = RESTART_MIN_S
        while True:
            began = time.monotonic()
            try:
                rc = await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch process failed")
                rc = None
            self.last_exit = rc
            if self._stopping:
                return
            if time.monotonic() - began >= STABLE_S:
                delay = RESTART_MIN_S
            log.error("dispatch process exited (status %s); starting another in %.1f s",
                      rc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)

    def _spawn(self) -> tuple[subprocess.Popen[bytes], socket.socket]:
        ours, theirs = socket.socketpair()
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}
        try:
            # From the event loop's thread, which lives as long as the process: the child's
            # parent-death signal follows the thread that started it.
            proc = subprocess.Popen(
                [sys.executable, "-m", "hub", "dispatch", "--control-fd", str(theirs.fileno()),
                 "--parent-pid", str(os.getpid())],
                pass_fds=(theirs.fileno(),), env=env)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return proc, ours

    async def _run_once(self) -> int | None:
        """One child, from its start to its exit; returns its exit status."""
        proc, sock = self._early or self._spawn()
        self._early = None
        self._proc, self.pid = proc, proc.pid
        self.starts += 1
        ended = False
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=LINE_LIMIT)
            try:
                hello = {"settings": self.settings.model_dump(mode="json")}
                writer.write(json.dumps(hello).encode() + b"\n")
                while line := await reader.readline():
                    self._on_line(line)
                ended = True  # the child closed its end: it is exiting
            finally:
                writer.close()
        except (OSError, ValueError):
            log.exception("lost the dispatch process's reports")
        finally:
            sock.close()
            self.started.clear()
            self.caught_up.clear()
            self.leading = False
            rc = await asyncio.to_thread(_reap, proc, ended or self._stopping)
            self._proc = None
            self.pid = None
        return rc

    def _on_line(self, line: bytes) -> None:
        try:
            self._on_report(json.loads(line))
        except (ValueError, KeyError, TypeError):
            log.warning("dispatch process sent %r", line[:200], exc_info=True)

    def _on_report(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "decided":
            self.stats.add(msg["marks"])
            if self.on_decided is not None:
                self.on_decided(msg)
        elif kind == "leader":
            self.leading = bool(msg["leading"])
            if msg["caught_up"]:
                self.caught_up.set()
            else:
                self.caught_up.clear()
        elif kind == "started":
            self.started.set()
            log.info("dispatch process %s runs (start %d)", msg.get("pid"), self.starts)


def _reap(proc: subprocess.Popen[bytes], exiting: bool) -> int:
    """Wait for ``proc`` to end (killing it if it does not in time); its exit status. A
    child that is not ``exiting`` by itself is asked first (SIGTERM)."""
    if not exiting and proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
