"""A lean MQTT load generator: Debian's C ``mosquitto_pub`` processes fed JSON lines by Python.

Why this shape (measured on the 2-core benchmark machine, issue 3): a Python paho publisher
spends about 49 µs of CPU per QoS1 message, more than the hub spends receiving it, so it
would starve the system under test; ``mosquitto_pub`` spends about 9 µs. Python here only
formats lines, in chunks, at about 1-2 µs per single-reading message, and writes them to the
stdin of K ``mosquitto_pub -l -q 1`` processes (one gateway topic each, so that many device
ids flow through a few connections).

Pitfall handled: ``mosquitto_pub -l`` at QoS1 drops the messages still in flight or queued
in it when its stdin closes (its "last message id" test compares 16-bit ids that wrap, and
the session is clean). So stdin stays open until everything sent is confirmed stored (a
``confirmed()`` callable, e.g. the hub's ``/api/ingest/stats``), or until confirmation
stalls; only then is it closed.

Every message carries:
- ``device``: ids ``BENCH-00001``... (``device_prefix``; the ingest benchmark makes it unique
  per run, so that another publisher on the same broker cannot pass for this run) partitioned
  between the workers (each device belongs to exactly one worker);
- ``ts``: the wall-clock time at which Python formatted the chunk, in whole microseconds,
  strictly increasing per worker (1 µs apart inside a chunk): so the hub's device-time-to-
  commit latency is publish-to-commit, and each (device, metric, ts) is unique by
  construction, which makes a stored duplicate impossible to hide behind the unique key;
- ``values.v``: a unique point id ``(worker * ID_STRIDE + n) * POINT_STRIDE + i`` (message
  ``n`` of the worker, reading ``i`` of the message), so that loss and duplication can be
  counted exactly in the database (see ``split_point_id``).

Modes: ``single`` sends one reading per message (a single JSON object on the gateway topic);
``batched`` sends a JSON array of ``batch`` readings for ``batch`` distinct devices.

Pacing: ``rate`` messages/s in total through a token bucket (``TokenBucket``), or flat out
(``rate`` 0). Flat out is closed-loop when ``confirmed`` is given: at most ``window``
messages may be sent and not yet confirmed, so the backlog (in mosquitto_pub, the broker and
the hub) stays bounded instead of growing until the broker's queue limit drops messages.
The same window guards the paced mode. Every process stops by itself: the send phase lasts
``duration_s``, confirmation waits at most ``drain_timeout_s`` (less if it stalls), and a
hard deadline kills whatever is left.

``python -m simulators.bench.loadgen --port 18833 --duration 10`` runs it alone; the last stdout
line is a JSON report. ``simulators/bench.py`` runs it this way (a separate process, so that
its ``getrusage`` CPU figures are exactly the generator's: Python plus its mosquitto_pub
children).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from core.mqtt_client import BrokerAddress
from simulators.bench.loadgen_lines import (
    DEVICE_PREFIX,
    GATEWAY_PREFIX,
    LineMaker,
    TokenBucket,
    device_ids,
    partition,
    split_counts,
)
from simulators.mqtt_login import gateway_url, mosquitto_client_env

_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # ingest/wire.py's id rule
MAX_PUBLISHERS = 64

# Seconds of tokens the paced mode may bank: enough to ride out a scheduling hiccup of the
# generator without a visible dip, small enough not to turn into a burst.
BURST_S = 0.02
# Paced-mode loop period. Each wake-up costs the Python loop ~50-80 µs here; waking every
# 1-2 ms cost 8 % of a core at 3,000 msg/s (measured), every 5 ms costs ~2 %. The stamps
# are taken when a chunk is formatted, so the pacing granularity does not enter latency.
TICK_S = 0.005
# Flat out: messages formatted per worker per write; a chunk of single readings is ~40 KiB,
# well inside a 64 KiB pipe buffer.
FLAT_CHUNK_MSGS = 512
# Bytes a worker may have waiting (pipe full) before it gets no more messages; the loop
# then waits for the pipe instead of buffering without bound.
PENDING_MAX_BYTES = 1 << 20
# Messages sent but not yet confirmed stored, at most (flat out and paced), by default: the
# larger of 50,000 readings' worth (a couple of seconds of work for the hub, so a flat-out
# run's latency stays seconds, not minutes) and 5,000 messages, the hub's MQTT Receive
# Maximum, so that the hub can always fill its whole in-flight window (batches of 50
# readings would otherwise allow only 1,000 messages, which starved the batched writer:
# measured 36,000 points/s with 1,000 against more with a larger window).
DEFAULT_WINDOW_POINTS = 50_000
DEFAULT_WINDOW_MIN_MSGS = 5_000
# How often confirmed() is called while sending: an HTTP request to each hub, about 1 ms of
# the hub's CPU (polling at 10 Hz showed as ~3 % of its profile); 4 Hz is ample against a
# window of several seconds of work.
CONFIRM_POLL_S = 0.25
# mosquitto_pub's QoS1 in-flight limit (-M): its default 20 caps one connection at about
# 20 messages per broker round trip (~23,000/s measured here); 1,000 lifts that cap.
MAX_INFLIGHT = 1000
# Warm-up after starting mosquitto_pub: it reads no line before its CONNACK (it polls every
# 100 ms), and lines stamped before that would count the connection time as latency.
CONNECT_WAIT_S = 0.5


# --------------------------------------------------------------------------- the shell


@dataclass
class LoadConfig:
    port: int
    host: str = "127.0.0.1"
    duration_s: float = 60.0
    rate: float = 0.0  # messages/s over all workers; 0 = flat out
    mode: str = "single"  # single | batched
    batch: int = 50  # readings per message in batched mode
    devices: int = 10_000
    publishers: int = 2
    window: int = 0  # messages sent and not yet confirmed, at most; 0 = default
    max_inflight: int = MAX_INFLIGHT
    drain_timeout_s: float = 120.0
    stall_s: float = 15.0  # confirmation without progress this long: give up waiting
    linger_s: float = 5.0  # without confirmed(): wait this long before closing stdin
    run_id: str = ""
    progress_every_s: float = 5.0
    device_prefix: str = DEVICE_PREFIX
    # The gateway account mosquitto_pub logs in with (simulators/mqtt_login.py); never on
    # the command line, never in a report.
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the load generator only targets a broker on loopback")
        if self.mode not in ("single", "batched"):
            raise ValueError(f"mode must be single or batched, not {self.mode!r}")
        if not 1 <= self.publishers <= MAX_PUBLISHERS:
            raise ValueError(f"publishers must be 1..{MAX_PUBLISHERS}")
        if self.devices < self.publishers:
            raise ValueError("need at least one device per publisher")
        if self.mode == "batched" and not 1 <= self.batch <= self.devices // self.publishers:
            raise ValueError(f"batch must be 1..{self.devices // self.publishers} "
                             f"(devices per publisher)")
        if not _ID_RE.fullmatch(device_ids(max(1, self.devices), self.device_prefix)[-1]):
            raise ValueError(f"device prefix {self.device_prefix!r} makes invalid device ids")
        if self.rate < 0 or self.duration_s <= 0:
            raise ValueError("rate must be >= 0 and duration > 0")
        if self.window <= 0:
            self.window = max(DEFAULT_WINDOW_MIN_MSGS, DEFAULT_WINDOW_POINTS // self.points_per_msg)
        if not self.run_id:
            self.run_id = f"{os.getpid()}-{int(time.time())}"

    @property
    def points_per_msg(self) -> int:
        return self.batch if self.mode == "batched" else 1

    @property
    def hard_timeout_s(self) -> float:
        return self.duration_s + self.drain_timeout_s + 60.0


@dataclass
class PublisherHealth:
    worker: int
    pid: int
    client_id: str
    topic: str
    msgs: int = 0
    bytes: int = 0
    cpu_s: float | None = None  # from /proc just before stdin was closed
    alive_after_send: bool = True
    broken_pipe: bool = False
    returncode: int | None = None
    killed: bool = False
    stderr: str = ""


@dataclass
class LoadReport:
    mode: str
    publishers: int
    devices: int
    batch: int
    target_rate: float
    duration_s: float
    window: int
    sent_msgs: int = 0
    sent_points: int = 0
    sent_by_worker: list[int] = field(default_factory=list)
    send_s: float = 0.0
    offered_msgs_per_s: float = 0.0
    offered_points_per_s: float = 0.0
    window_full_s: float = 0.0  # time the send loop waited for confirmations
    confirmed_msgs: int | None = None
    drain_s: float = 0.0
    drained: bool = False
    self_cpu_s: float = 0.0
    children_cpu_s: float = 0.0
    cpu_s: float = 0.0
    cpu_us_per_msg: float = 0.0
    ok: bool = False
    health: list[PublisherHealth] = field(default_factory=list)


def proc_cpu_s(pid: int | None) -> float | None:
    """utime + stime of a live process (all threads), seconds; None if it is gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class _Worker:
    """One mosquitto_pub process and the bytes waiting for its stdin."""

    def __init__(self, index: int, cfg: LoadConfig, maker: LineMaker,
                 env: dict[str, str] | None = None) -> None:
        self.index = index
        self.maker = maker
        self.topic = f"gridhub/v1/gateways/{GATEWAY_PREFIX}{index}/telemetry"
        client_id = f"loadgen-{cfg.run_id}-{index}"
        self.stderr_file = tempfile.TemporaryFile()
        exe = shutil.which("mosquitto_pub")
        if exe is None:
            raise RuntimeError("mosquitto_pub not found (Debian package mosquitto-clients)")
        self.proc = subprocess.Popen(
            [exe, "-h", cfg.host, "-p", str(cfg.port), "-q", "1", "-l", "--nodelay",
             "-M", str(cfg.max_inflight), "-k", "60", "-i", client_id, "-t", self.topic],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.stderr_file, env=env)
        assert self.proc.stdin is not None
        self.fd = self.proc.stdin.fileno()
        os.set_blocking(self.fd, False)
        self.pending = bytearray()
        self.health = PublisherHealth(index, self.proc.pid, client_id, self.topic)

    def usable(self) -> bool:
        return not self.health.broken_pipe and len(self.pending) < PENDING_MAX_BYTES

    def queue(self, count: int, now_s: float) -> None:
        self.pending += self.maker.make(count, now_s)
        self.health.msgs += count

    def flush(self) -> None:
        """Write what the pipe takes now (never blocks)."""
        while self.pending and not self.health.broken_pipe:
            try:
                n = os.write(self.fd, self.pending)
            except BlockingIOError:
                return
            except BrokenPipeError:
                self.health.broken_pipe = True
                return
            self.health.bytes += n
            del self.pending[:n]

    def close_stdin(self) -> None:
        self.health.cpu_s = proc_cpu_s(self.proc.pid)
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def finish(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.health.killed = True
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.health.returncode = self.proc.returncode
        self.stderr_file.seek(0)
        self.health.stderr = self.stderr_file.read()[-2000:].decode(errors="replace").strip()
        self.stderr_file.close()


def run(cfg: LoadConfig, confirmed: Callable[[], int] | None = None,
        log: TextIO | None = sys.stderr) -> LoadReport:
    """Publish for ``cfg.duration_s``, wait for confirmation, stop every process.

    ``confirmed()`` returns how many of this run's messages are stored (it is polled every
    ``CONFIRM_POLL_S`` while sending and while draining).
    """
    def say(msg: str) -> None:
        if log is not None:
            print(f"[loadgen] {msg}", file=log, flush=True)

    rep = LoadReport(cfg.mode, cfg.publishers, cfg.devices, cfg.points_per_msg, cfg.rate,
                     cfg.duration_s, cfg.window)
    parts = partition(device_ids(cfg.devices, cfg.device_prefix), cfg.publishers)
    batch = cfg.batch if cfg.mode == "batched" else 0
    hard_deadline = time.monotonic() + cfg.hard_timeout_s
    workers: list[_Worker] = []
    login = BrokerAddress(cfg.host, cfg.port, cfg.username, cfg.password)
    try:
        with mosquitto_client_env(login) as env:
            for index in range(cfg.publishers):
                workers.append(_Worker(index, cfg, LineMaker(index, parts[index], batch), env))
            time.sleep(CONNECT_WAIT_S)  # they have read their options by their CONNACK
        dead = [w.health.pid for w in workers if w.proc.poll() is not None]
        if dead:
            raise RuntimeError(f"mosquitto_pub exited at start (pids {dead}); "
                               f"is the broker on {cfg.host}:{cfg.port}?")
        if not cfg.rate and confirmed is None:
            say("flat out without confirmation: the backlog piles up inside mosquitto_pub "
                "and whatever is unsent after the linger is dropped; give --confirm-url")
        say(f"{cfg.publishers} x mosquitto_pub -q 1 -M {cfg.max_inflight}, {cfg.mode}"
            f"{f' x{batch}' if batch else ''}, "
            f"{'flat out' if not cfg.rate else f'{cfg.rate:g} msg/s'}, {cfg.duration_s:g} s")
        _send(cfg, workers, confirmed, rep, hard_deadline, say)
        _drain(cfg, workers, confirmed, rep, hard_deadline, say)
    finally:
        for w in workers:
            w.close_stdin()
        for w in workers:
            w.finish(timeout=max(1.0, min(10.0, hard_deadline - time.monotonic())))
        rep.health = [w.health for w in workers]
        rep.sent_by_worker = [w.maker.n for w in workers]
        me = resource.getrusage(resource.RUSAGE_SELF)
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        rep.self_cpu_s = round(me.ru_utime + me.ru_stime, 3)
        rep.children_cpu_s = round(ch.ru_utime + ch.ru_stime, 3)
        rep.cpu_s = round(rep.self_cpu_s + rep.children_cpu_s, 3)
        rep.cpu_us_per_msg = round(rep.cpu_s / rep.sent_msgs * 1e6, 2) if rep.sent_msgs else 0.0
        rep.ok = bool(workers) and all(
            h.returncode == 0 and not h.broken_pipe and h.alive_after_send and not h.killed
            for h in rep.health)
    return rep


def _send(cfg: LoadConfig, workers: list[_Worker], confirmed: Callable[[], int] | None,
          rep: LoadReport, hard_deadline: float, say: Callable[[str], None]) -> None:
    k = len(workers)
    ppm = cfg.points_per_msg
    t0 = time.monotonic()
    end = min(t0 + cfg.duration_s, hard_deadline)
    bucket = TokenBucket(cfg.rate, cfg.rate * max(BURST_S, 2 * TICK_S), t0) if cfg.rate else None
    sent = 0
    done = 0
    next_confirm = t0
    next_report = t0 + cfg.progress_every_s
    rr = 0
    waiting_since: float | None = None
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if confirmed is not None and now >= next_confirm:
            done = confirmed()
            next_confirm = now + CONFIRM_POLL_S
        room = cfg.window - (sent - done) if confirmed is not None else FLAT_CHUNK_MSGS * k
        if now >= next_report:
            el = now - t0
            say(f"t={el:5.1f}s sent {sent} ({sent / el:,.0f} msg/s), "
                f"unconfirmed {sent - done if confirmed else '?'}")
            next_report += cfg.progress_every_s
        usable = [w for w in workers if w.usable()]
        if room <= 0 or not usable:
            if room <= 0 and waiting_since is None:
                waiting_since = now
            _wait_writable(workers, 0.005)
            for w in workers:
                w.flush()
            continue
        if waiting_since is not None:
            rep.window_full_s += now - waiting_since
            waiting_since = None
        if bucket is not None:
            n = bucket.take(now, room)
        else:
            n = min(room, FLAT_CHUNK_MSGS * len(usable))
        if n:
            stamp = time.time()
            for w, c in zip(usable, split_counts(n, len(usable), rr), strict=True):
                if c:
                    w.queue(c, stamp)
                    w.flush()
            rr = (rr + n) % len(usable)
            sent += n
        if bucket is not None:
            pause = TICK_S
            if any(w.pending for w in workers):
                _wait_writable(workers, pause)
                for w in workers:
                    w.flush()
            else:
                time.sleep(pause)
        elif any(w.pending for w in workers):
            _wait_writable(workers, 0.01)
            for w in workers:
                w.flush()
    if waiting_since is not None:
        rep.window_full_s += time.monotonic() - waiting_since
    # Hand over what is still buffered (bounded by PENDING_MAX_BYTES per worker).
    flush_end = min(time.monotonic() + 30.0, hard_deadline)
    while any(w.pending and not w.health.broken_pipe for w in workers):
        if time.monotonic() >= flush_end:
            break
        _wait_writable(workers, 0.05)
        for w in workers:
            w.flush()
    rep.send_s = round(time.monotonic() - t0, 3)
    rep.sent_msgs = sum(w.maker.n for w in workers)
    rep.sent_points = rep.sent_msgs * ppm
    rep.window_full_s = round(rep.window_full_s, 3)
    rep.offered_msgs_per_s = round(rep.sent_msgs / rep.send_s, 1) if rep.send_s else 0.0
    rep.offered_points_per_s = round(rep.offered_msgs_per_s * ppm, 1)
    for w in workers:
        w.health.alive_after_send = w.proc.poll() is None
    say(f"sent {rep.sent_msgs} msgs ({rep.sent_points} points) in {rep.send_s:.1f} s: "
        f"{rep.offered_msgs_per_s:,.0f} msg/s offered")


def _wait_writable(workers: list[_Worker], timeout: float) -> None:
    fds = [w.fd for w in workers if w.pending and not w.health.broken_pipe]
    if fds:
        select.select([], fds, [], timeout)
    else:
        time.sleep(timeout)


def _drain(cfg: LoadConfig, workers: list[_Worker], confirmed: Callable[[], int] | None,
           rep: LoadReport, hard_deadline: float, say: Callable[[str], None]) -> None:
    """Keep stdin open until everything is confirmed stored (see the module docstring)."""
    t0 = time.monotonic()
    if confirmed is None:
        time.sleep(max(0.0, min(cfg.linger_s, hard_deadline - t0)))
        rep.drain_s = round(time.monotonic() - t0, 3)
        return
    end = min(t0 + cfg.drain_timeout_s, hard_deadline)
    last = -1
    last_change = t0
    done = 0
    while True:
        done = confirmed()
        now = time.monotonic()
        if done >= rep.sent_msgs:
            rep.drained = True
            break
        if done != last:
            last, last_change = done, now
        if now - last_change >= cfg.stall_s or now >= end:
            say(f"confirmation stopped at {done} of {rep.sent_msgs}; closing anyway")
            break
        time.sleep(0.25)
    rep.confirmed_msgs = done
    rep.drain_s = round(time.monotonic() - t0, 3)
    say(f"confirmed {done} of {rep.sent_msgs} msgs, {rep.drain_s:.1f} s after sending")


def stats_confirmer(urls: list[str], points_per_msg: int,
                    timeout: float = 2.0) -> Callable[[], int]:
    """``confirmed()`` from the hubs' counters: messages committed since now, summed.

    Each URL is a hub's ``/api/health`` (cheap counters under "ingest"; several hubs share
    the subscription); ``/api/ingest/stats`` works too but sorts up to a million latencies
    per call, too costly to poll several times a second. Committed telemetry rows / points
    per message; dead letters are not counted: another publisher's rejected messages would
    otherwise confirm ours before they are stored (a run whose messages are all rejected
    waits for ``stall_s`` instead).
    """
    def read(url: str) -> int:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            s = json.loads(r.read())
        if isinstance(s.get("ingest"), dict):  # /api/health nests the counters
            s = s["ingest"]
        return int(s.get("telemetry_rows", 0)) // points_per_msg

    base = [read(u) for u in urls]
    last = [0] * len(urls)

    def confirmed() -> int:
        for k, u in enumerate(urls):
            try:
                last[k] = read(u) - base[k]
            except (OSError, ValueError):
                pass  # hub busy or restarting: keep its last answer
        return sum(last)

    return confirmed


def add_mix_arguments(p: argparse.ArgumentParser, devices_help: str = "bench device ids") -> None:
    """The message mix: ``--mode``, ``--batch``, ``--devices``, ``--publishers``. Defined
    once for this command line and for the benchmarks that start it (``mix_argv``)."""
    p.add_argument("--mode", choices=("single", "batched"), default="single",
                   help="one reading per message, or gateway batches of --batch readings")
    p.add_argument("--batch", type=int, default=50, help="readings per batched message")
    p.add_argument("--devices", type=int, default=10_000, help=devices_help)
    p.add_argument("--publishers", type=int, default=2, help="mosquitto_pub processes")


def mix_argv(args: argparse.Namespace) -> list[str]:
    """The mix of ``args`` (parsed with ``add_mix_arguments``) as this command's flags."""
    return ["--mode", args.mode, "--batch", str(args.batch), "--devices", str(args.devices),
            "--publishers", str(args.publishers)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.bench.loadgen",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=1883, help="broker port on 127.0.0.1")
    p.add_argument("--duration", type=float, default=60.0, help="send phase, seconds")
    p.add_argument("--rate", type=float, default=0.0, help="messages/s in total; 0 = flat out")
    add_mix_arguments(p)
    p.add_argument("--device-prefix", default=DEVICE_PREFIX,
                   help="device ids are PREFIX00001...")
    p.add_argument("--window", type=int, default=0,
                   help="messages sent but not yet confirmed, at most (default: "
                        f"{DEFAULT_WINDOW_POINTS:,} readings' worth, at least "
                        f"{DEFAULT_WINDOW_MIN_MSGS:,})")
    p.add_argument("--max-inflight", type=int, default=MAX_INFLIGHT)
    p.add_argument("--confirm-url",
                   help="hub /api/health URL(s), comma-separated, whose ingest counters "
                        "confirm storage")
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--run-id", default="")
    args = p.parse_args(argv)

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through run()'s finally: children stop

    signal.signal(signal.SIGTERM, terminate)
    login = BrokerAddress.parse(gateway_url("BENCH"))
    cfg = LoadConfig(port=args.port, duration_s=args.duration, rate=args.rate, mode=args.mode,
                     batch=args.batch, devices=args.devices, publishers=args.publishers,
                     window=args.window, max_inflight=args.max_inflight,
                     drain_timeout_s=args.drain_timeout, run_id=args.run_id,
                     device_prefix=args.device_prefix, username=login.username,
                     password=login.password)
    confirmed = (stats_confirmer(args.confirm_url.split(","), cfg.points_per_msg)
                 if args.confirm_url else None)
    rep = run(cfg, confirmed)
    out: dict[str, Any] = asdict(rep)
    print(json.dumps(out), flush=True)
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
