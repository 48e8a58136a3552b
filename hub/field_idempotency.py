"""Idempotency keys for the field app's state-changing requests.

A phone queues what its user did while offline and sends it when the network returns; it
may send one request twice (the answer was lost, the app was killed mid-send). Each
request carries ``Idempotency-Key`` (a random id made on the phone when the user acted).
``run_once`` takes a transaction-level advisory lock on (principal, key), returns the
stored answer if the key was used, else runs the request's work and stores its answer,
all in one transaction with the work itself: applied once, or not at all (a refused
request stores nothing and may be retried). The same key with another request (path or
body) is refused: ``field.key_reused``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request

from core.db import Conn, Querier
from core.errors import Conflict, InvalidInput

HEADER = "idempotency-key"
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def key_of(request: Request) -> str:
    key = request.headers.get(HEADER, "")
    if not KEY_RE.match(key):
        raise InvalidInput("send an Idempotency-Key header: 8-64 letters, digits, _ or -",
                           code="field.idempotency_key_required")
    return key


def fingerprint(path: str, body: Any) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode())
    return f"{path} {digest.hexdigest()[:32]}"


async def run_once(conn: Conn, principal: str, key: str, request_fp: str,
                   work: Callable[[], Awaitable[dict[str, Any]]]) -> tuple[dict[str, Any], bool]:
    """``(answer, replayed)``; the caller holds a transaction on ``conn``."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 14))",
                       f"{principal}|{key}")
    row = await conn.fetchrow(
        "SELECT path, response FROM field_requests WHERE principal = $1 AND key = $2",
        principal, key)
    if row is not None:
        if row["path"] != request_fp:
            raise Conflict("this idempotency key was used for another request",
                           code="field.key_reused")
        return dict(row["response"]), True
    answer = await work()
    await conn.execute(
        """INSERT INTO field_requests (principal, key, path, status, response)
           VALUES ($1, $2, $3, 200, $4)""", principal, key, request_fp, answer)
    return answer, False


async def purge(pool: Querier, keep_s: float) -> None:
    """Forget keys older than ``keep_s`` (a scheduled job)."""
    await pool.execute(
        "DELETE FROM field_requests WHERE created_at < now() - make_interval(secs => $1)",
        float(keep_s))
