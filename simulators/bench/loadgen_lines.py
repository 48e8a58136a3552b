"""The load generator's pure parts: bench device ids, the unique point id every reading
carries (so loss and duplication are counted exactly in the database), the token bucket
that paces it, and the JSON lines it feeds to ``mosquitto_pub`` (simulators/bench/loadgen.py
has the why of each)."""

from __future__ import annotations

DEVICE_PREFIX = "BENCH-"
GATEWAY_PREFIX = "BENCHGW-"
METRIC = "v"
# Point ids: value = (worker * ID_STRIDE + n) * POINT_STRIDE + i. A worker never sends 10^9
# messages in a run, and a message holds at most 1,000 readings (ingest/wire.py Limits), so
# the parts never overlap; with up to 64 workers the largest id (~6.4e13) is exact in a
# double and below the decoder's 1e15 bound on values.
ID_STRIDE = 10**9
POINT_STRIDE = 1000


def device_ids(count: int, prefix: str = DEVICE_PREFIX) -> list[str]:
    """``count`` device ids, ``BENCH-00001``... (zero-padded to at least 5 digits)."""
    width = max(5, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def partition(items: list[str], parts: int) -> list[list[str]]:
    """Deal ``items`` round-robin into ``parts`` disjoint lists."""
    return [items[w::parts] for w in range(parts)]


def point_id(worker: int, n: int, i: int = 0) -> int:
    """The unique value carried by reading ``i`` of message ``n`` of ``worker``."""
    return (worker * ID_STRIDE + n) * POINT_STRIDE + i


def split_point_id(value: int) -> tuple[int, int, int]:
    """Inverse of ``point_id``: (worker, n, i)."""
    msg, i = divmod(value, POINT_STRIDE)
    worker, n = divmod(msg, ID_STRIDE)
    return worker, n, i


def format_ts(us: int) -> str:
    """UNIX microseconds as the exact decimal seconds the payload carries."""
    s, f = divmod(us, 1_000_000)
    return f"{s}.{f:06d}"


class TokenBucket:
    """Pacing: tokens accrue at ``rate`` per second, at most ``capacity`` banked.

    Pure: the time is passed in. ``take`` returns whole tokens and keeps the fraction, so
    the long-run count is exactly ``rate * elapsed`` whatever the tick length.
    """

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1.0, capacity)
        self.tokens = 0.0
        self.last = now

    def take(self, now: float, limit: int | None = None) -> int:
        """Whole tokens available at ``now`` (at most ``limit``), removed from the bucket."""
        if now > self.last:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
        n = int(self.tokens)
        if limit is not None:
            n = max(0, min(n, limit))
        self.tokens -= n
        return n

    def wait_s(self, n: int = 1) -> float:
        """Seconds until ``n`` tokens are available (0 if they already are)."""
        return max(0.0, (n - self.tokens) / self.rate)


class LineMaker:
    """Formats one worker's messages, one JSON payload per line.

    Invariants: timestamps strictly increase by at least 1 µs per message of this worker;
    the readings of one message are for distinct devices; devices are this worker's own.
    Together these make every (device, ts) pair unique across the run.
    """

    def __init__(self, worker: int, devices: list[str], batch: int = 0) -> None:
        if not devices:
            raise ValueError("a worker needs at least one device")
        if batch > len(devices):
            raise ValueError(f"batch {batch} > {len(devices)} devices of worker {worker}")
        if batch > POINT_STRIDE:
            raise ValueError(f"batch {batch} > {POINT_STRIDE}")
        self.worker = worker
        self.batch = batch  # 0: single-reading messages
        self.heads = [f'{{"device":"{d}","ts":' for d in devices]
        self.n = 0  # messages made so far
        self.last_us = 0

    @property
    def points_per_msg(self) -> int:
        return self.batch or 1

    def make(self, count: int, now_s: float) -> bytes:
        """``count`` lines stamped from ``now_s`` (UNIX seconds) on."""
        if count <= 0:
            return b""
        base = max(int(now_s * 1_000_000), self.last_us + 1)
        self.last_us = base + count - 1
        heads = self.heads
        nd = len(heads)
        n0 = self.n
        self.n = n0 + count
        first = (self.worker * ID_STRIDE + n0) * POINT_STRIDE
        if not self.batch:
            lines = [
                f'{heads[(n0 + j) % nd]}{format_ts(base + j)},"values":{{"v":'
                f"{first + j * POINT_STRIDE}}}}}\n"
                for j in range(count)
            ]
        else:
            b = self.batch
            lines = []
            for j in range(count):
                d0 = ((n0 + j) * b) % nd
                hs = heads[d0 : d0 + b]
                if len(hs) < b:
                    hs += heads[: b - len(hs)]
                tsv = format_ts(base + j) + ',"values":{"v":'
                pid0 = first + j * POINT_STRIDE
                pids = range(pid0, pid0 + b)
                lines.append(
                    "[" + ",".join([h + tsv + str(p) + "}}" for h, p in zip(hs, pids, strict=True)])
                    + "]\n")
        return "".join(lines).encode()


def split_counts(total: int, parts: int, start: int = 0) -> list[int]:
    """``total`` dealt as evenly as possible over ``parts``, the remainder from ``start``."""
    q, r = divmod(total, parts)
    out = [q] * parts
    for k in range(r):
        out[(start + k) % parts] += 1
    return out
