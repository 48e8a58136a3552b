"""A batch of the ingest writer: the rows of one flush and the acknowledgements it releases.

The pipeline (ingest/pipeline.py) adds rows; the writer (ingest/writer.py) cuts batches and
flushes each with the statements of ingest/flush_sql.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from core import clock
from ingest.copy_binary import TelemetryValues

# Device time and receive time in UNIX seconds: encoded straight to binary COPY
# (ingest/copy_binary.py), never as datetimes.
TelemetryRow = TelemetryValues
PositionRow = tuple[datetime, str, float, float, float | None, float | None, float | None, datetime]
DeadLetterRow = tuple[datetime, str, bytes, int, str, str]

# seconds -> datetime for the rows asyncpg encodes (core.clock's one conversion)
ts_of = clock.to_datetime


def pg_text(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL escaped, lone surrogates backslash-escaped.

    A decode error's detail can quote attacker-chosen text (an unknown JSON field whose
    name is a NUL character); PostgreSQL refuses NUL in text, the whole batch would fail,
    and the writer would retry it forever with nothing acknowledged: one message would
    stop ingest."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


@dataclass
class Batch:
    telemetry: list[TelemetryRow] = field(default_factory=list)
    positions: list[PositionRow] = field(default_factory=list)
    dead: list[DeadLetterRow] = field(default_factory=list)
    acks: list[tuple[int, int]] = field(default_factory=list)
    # publish time of the oldest message, for the flush-by-age rule
    started: float = 0.0
    # Set by a committed plain flush with the latest values deferred: its readings, for
    # the coalesced latest-value update (which keeps each key's newest); its
    # acknowledgements wait for that update.
    newest: Sequence[TelemetryRow] = ()
    # ``newest`` as binary COPY rows, one per row: the telemetry COPY's own rows, reused
    # by the coalesced update instead of encoding again.
    newest_parts: Sequence[bytes] = ()
    # No reading of the batch is older than one of its device seen before it (the
    # pipeline's device clocks say so): the coalesced update folds it in C.
    in_order: bool = True
    # When (monotonic) it was cut, its flush began and it committed: the stage timings.
    cut: float = 0.0
    flush_start: float = 0.0
    committed: float = 0.0

    def size(self) -> int:
        return len(self.telemetry) + len(self.positions) + len(self.dead)

    def empty(self) -> bool:
        return not (self.telemetry or self.positions or self.dead or self.acks)
