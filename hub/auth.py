"""Credentials: users (Argon2 password hashes), server-side sessions, API tokens, and the
failed-login counter.

Contracts:
- Secrets are never stored. Passwords are kept as argon2id PHC strings; session ids and API
  tokens are 256-bit random values kept as their SHA-256 (a random secret needs no slow
  hash, and the digest is the primary-key lookup).
- ``Principal`` is who a request acts as; ``hub/access.py`` builds one per request from a
  bearer token or the session cookie and decides by role.
- Roles: viewer < operator < supervisor < admin (each includes the ones below). ``unit`` is
  apart: a patrol phone's token, bound to one unit id, allowed only on the routes the
  policy marks for units and, in the handlers, only on its own incidents.
- The CLI (``python -m hub create-user`` / ``create-token``), the demo set-up and the tests
  all create credentials through ``create_user`` and ``create_token``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core import clock
from core.db import Querier, fetch_one
from core.errors import InvalidInput, NotFound
from hub import audit

STAFF_ROLES: tuple[str, ...] = ("viewer", "operator", "supervisor", "admin")
UNIT_ROLE = "unit"
# A grid worker's phone (the field app, hub/field_enrol.py): bound to its unit like a
# unit's phone, and allowed only to report, patrol and verify in its own grids.
GRID_WORKER_ROLE = "grid_worker"
FIELD_ROLES: tuple[str, ...] = (UNIT_ROLE, GRID_WORKER_ROLE)
ALL_ROLES: tuple[str, ...] = (*STAFF_ROLES, *FIELD_ROLES)

# A person types the password; shorter ones fall to offline guessing if a hash leaks.
MIN_PASSWORD_LEN = 12
# Bound the work an attacker can make Argon2 do per request.
MAX_PASSWORD_LEN = 1024
USERNAME_RE = r"^[A-Za-z0-9_.@-]{1,64}$"
TOKEN_PREFIX = "ghk_"
# A given token (--token-file) must carry at least ~140 bits if random alphanumerics; the
# demo's come from scripts/lib.sh `secret` (24 random bytes, base64 letters and digits).
MIN_TOKEN_LEN = 24
# last_used_at of a token is written at most this often, not on every request.
TOKEN_TOUCH_S = 60.0

# argon2-cffi's defaults (argon2id, RFC 9106 "low memory" profile: t=3, m=64 MiB, p=4):
# about 50 ms here, done in a worker thread so the event loop keeps serving.
_hasher = PasswordHasher()
# Verified against when the username is unknown, so that both cases cost the same.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as. ``kind`` is "session" (a person in a browser) or "token"."""

    kind: str
    name: str
    role: str
    unit_id: str | None = None
    csrf_token: str | None = None  # sessions only: state-changing requests must echo it
    session_hash: bytes | None = None

    @property
    def is_unit(self) -> bool:
        return self.role == UNIT_ROLE

    @property
    def is_grid_worker(self) -> bool:
        return self.role == GRID_WORKER_ROLE

    @property
    def is_field(self) -> bool:
        """A phone of the field app: a unit's or a grid worker's."""
        return self.role in FIELD_ROLES

    def at_least(self, role: str) -> bool:
        """True when this staff role includes ``role``; a unit includes no staff role."""
        if self.role not in STAFF_ROLES or role not in STAFF_ROLES:
            return False
        return STAFF_ROLES.index(self.role) >= STAFF_ROLES.index(role)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    """Argon2 check in a worker thread; ``stored`` None (no such user) costs the same."""
    if len(password) > MAX_PASSWORD_LEN:
        return False
    ok = await asyncio.to_thread(_verify, stored or _DUMMY_HASH, password)
    return ok and stored is not None


def check_role(role: str, *, allow_unit: bool) -> None:
    allowed = ALL_ROLES if allow_unit else STAFF_ROLES
    if role not in allowed:
        raise InvalidInput(f"role must be one of {', '.join(allowed)}", code="auth.bad_role")


# ---------------------------------------------------------------- users
async def create_user(conn: Querier, username: str, password: str, role: str, *,
                      display_name: str = "", update: bool = False, actor: str = ""
                      ) -> dict[str, Any]:
    """Create a user (or, with ``update``, reset an existing one's password, role and
    display name and enable it). Raises ``auth.user_exists`` without ``update``. The change
    goes to the audit trail as done by ``actor`` (default: the command line's OS user)."""
    if not re.match(USERNAME_RE, username):
        raise InvalidInput("username: 1-64 letters, digits or _ . @ -", code="auth.bad_username")
    check_role(role, allow_unit=False)
    if not MIN_PASSWORD_LEN <= len(password) <= MAX_PASSWORD_LEN:
        raise InvalidInput(f"password must be {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} characters",
                           code="auth.weak_password")
    pw_hash = await asyncio.to_thread(hash_password, password)
    before = await conn.fetchrow("SELECT role, disabled FROM users WHERE username = $1",
                                 username)
    if update:
        row = await conn.fetchrow(
            """INSERT INTO users (username, display_name, password_hash, role)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash,
                   role = excluded.role, display_name = excluded.display_name,
                   disabled = false
               RETURNING id, username, display_name, role, disabled, created_at""",
            username, display_name, pw_hash, role)
    else:
        row = await conn.fetchrow(
            """INSERT INTO users (username, display_name, password_hash, role)
               VALUES ($1, $2, $3, $4) ON CONFLICT (username) DO NOTHING
               RETURNING id, username, display_name, role, disabled, created_at""",
            username, display_name, pw_hash, role)
        if row is None:
            raise InvalidInput(f"user {username} exists (use --update to reset it)",
                               code="auth.user_exists")
    if before is None:
        await audit.record(conn, "user.created", actor or audit.cli_actor(), target=username,
                           detail={"role": role})
    else:
        await audit.record(conn, "user.changed", actor or audit.cli_actor(), target=username,
                           detail={"role": role, "role_before": before["role"],
                                   "re_enabled": bool(before["disabled"]),
                                   "password_reset": True})
    assert row is not None  # both INSERTs return their row (or raised above)
    return dict(row)


async def disable_user(conn: Querier, username: str, *, actor: str = "") -> None:
    """Disable a user and end their sessions at once."""
    uid = await conn.fetchval("UPDATE users SET disabled = true WHERE username = $1 "
                              "RETURNING id", username)
    if uid is None:
        raise NotFound(f"user {username} not found", code="auth.user_not_found")
    await conn.execute("DELETE FROM sessions WHERE user_id = $1", uid)
    await audit.record(conn, "user.disabled", actor or audit.cli_actor(), target=username)


# ---------------------------------------------------------------- API tokens
async def create_token(conn: Querier, name: str, role: str, *, unit_id: str | None = None,
                       created_by: str = "", token: str | None = None) -> str:
    """Register an API token and return it (the only time it is seen in clear).

    ``token`` registers a given secret instead of a new one (the demo keeps its simulator
    token under var/); registering the same secret twice is a no-op."""
    check_role(role, allow_unit=True)
    if (role in FIELD_ROLES) != (unit_id is not None):
        raise InvalidInput("a unit or grid-worker token needs --unit, and only those take one",
                           code="auth.bad_unit")
    if not name or len(name) > 64:
        raise InvalidInput("token name: 1-64 characters", code="auth.bad_token_name")
    if token is None:
        token = TOKEN_PREFIX + new_secret()
    elif len(token) < MIN_TOKEN_LEN:
        raise InvalidInput(f"a token needs at least {MIN_TOKEN_LEN} characters",
                           code="auth.weak_token")
    created_by = created_by or audit.cli_actor()
    added = await conn.fetchval(
        """INSERT INTO api_tokens (token_hash, name, role, unit_id, created_by)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token_hash) DO NOTHING RETURNING id""",
        digest(token), name, role, unit_id, created_by)
    if added is not None:
        await audit.record(conn, "token.created", created_by, target=name,
                           detail={"role": role, "unit_id": unit_id, "token_id": added})
    return token


async def revoke_tokens(conn: Querier, name: str, *, actor: str = "") -> int:
    """Revoke every live token with this name; returns how many."""
    result = await conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL",
        name)
    n = int(result.split()[-1])
    await audit.record(conn, "token.revoked", actor or audit.cli_actor(), target=name,
                       detail={"revoked": n})
    return n


async def token_principal(pool: Querier, token: str) -> Principal | None:
    row = await pool.fetchrow(
        """SELECT id, name, role, unit_id, extract(epoch FROM last_used_at)::float8 AS used
           FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL""", digest(token))
    if row is None:
        return None
    if row["used"] is None or clock.now() - row["used"] > TOKEN_TOUCH_S:
        await pool.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = $1", row["id"])
    return Principal("token", row["name"], row["role"], unit_id=row["unit_id"])


# ---------------------------------------------------------------- sessions
async def create_session(pool: Querier, user_id: int, ttl_s: float) -> tuple[str, str]:
    """A new session for a user: returns (cookie value, CSRF token)."""
    sid, csrf = new_secret(), new_secret()
    await pool.execute(
        """INSERT INTO sessions (id_hash, user_id, csrf_token, expires_at)
           VALUES ($1, $2, $3, now() + make_interval(secs => $4))""",
        digest(sid), user_id, csrf, float(ttl_s))
    return sid, csrf


async def session_principal(pool: Querier, sid: str, touch_s: float) -> Principal | None:
    """The live session's user, or None (unknown, expired, or the user is disabled)."""
    h = digest(sid)
    row = await pool.fetchrow(
        """SELECT u.username, u.role, s.csrf_token,
                  extract(epoch FROM now() - s.last_seen_at)::float8 AS idle
           FROM sessions s JOIN users u ON u.id = s.user_id
           WHERE s.id_hash = $1 AND s.expires_at > now() AND NOT u.disabled""", h)
    if row is None:
        return None
    if row["idle"] > touch_s:
        await pool.execute("UPDATE sessions SET last_seen_at = now() WHERE id_hash = $1", h)
    return Principal("session", row["username"], row["role"], csrf_token=row["csrf_token"],
                     session_hash=h)


async def end_session(pool: Querier, session_hash: bytes) -> None:
    await pool.execute("DELETE FROM sessions WHERE id_hash = $1", session_hash)


# ---------------------------------------------------------------- login
@dataclass(frozen=True, slots=True)
class LoginResult:
    """``user_id`` on success; else ``retry_after_s`` when throttled, or neither."""

    user_id: int | None = None
    retry_after_s: int | None = None
    failures: int = 0  # counted failures of this (username, address) before this attempt


@dataclass(frozen=True, slots=True)
class Throttle:
    """Growing delays after failed logins (see ``delay_s``); from the settings."""

    free_per_pair: int
    free_per_ip: int
    base_delay_s: float
    max_delay_s: float
    window_s: float


def delay_s(failures: int, free: int, base_s: float, max_s: float) -> float:
    """How long after the last failure the next attempt must wait: nothing for the first
    ``free`` failures, then ``base_s``, doubling with each further failure, at most
    ``max_s``. Pure; the caller counts failures."""
    if failures < free:
        return 0.0
    return float(min(max_s, base_s * 2.0 ** min(failures - free, 32)))


async def _wait_s(pool: Querier, where: str, args: tuple[str, ...], free: int,
                  t: Throttle) -> tuple[int, float]:
    """(failures in the window, seconds still to wait) for the failures matching ``where``."""
    row = await fetch_one(
        pool, f"""SELECT count(*) AS n, extract(epoch FROM now() - max(at))::float8 AS since_last
            FROM login_failures WHERE {where}
              AND at > now() - make_interval(secs => ${len(args) + 1})""",
        *args, float(t.window_s))
    n = int(row["n"])
    if n == 0:
        return 0, 0.0
    return n, max(0.0, delay_s(n, free, t.base_delay_s, t.max_delay_s) - row["since_last"])


async def login(pool: asyncpg.Pool, username: str, password: str, client_ip: str,
                throttle: Throttle) -> LoginResult:
    """Check a username and password. Failures are counted in the database (so the
    throttle holds across web nodes) per (username, client address) and per address, never
    per username alone: guessing from elsewhere slows down the guesser, not the operator
    logging in from the command room. A throttled attempt is refused before the password is
    looked at; a good login forgets that pair's failures."""
    username = username[:64]
    pair_n, pair_wait = await _wait_s(pool, "username = $1 AND client_ip = $2",
                                      (username, client_ip), throttle.free_per_pair, throttle)
    _, ip_wait = await _wait_s(pool, "client_ip = $1", (client_ip,), throttle.free_per_ip,
                               throttle)
    wait = max(pair_wait, ip_wait)
    if wait > 0:
        return LoginResult(retry_after_s=max(1, int(wait + 0.999)), failures=pair_n)
    row = await pool.fetchrow(
        "SELECT id, password_hash FROM users WHERE username = $1 AND NOT disabled", username)
    if await verify_password(row["password_hash"] if row else None, password):
        assert row is not None
        await pool.execute("DELETE FROM login_failures WHERE username = $1 AND client_ip = $2",
                           username, client_ip)
        return LoginResult(user_id=row["id"], failures=pair_n)
    await pool.execute("INSERT INTO login_failures (username, client_ip) VALUES ($1, $2)",
                       username, client_ip)
    return LoginResult(failures=pair_n + 1)


async def purge(pool: Querier, failure_window_s: float) -> None:
    """Housekeeping (a scheduled job): expired sessions, failures outside the window."""
    await pool.execute("DELETE FROM sessions WHERE expires_at < now()")
    await pool.execute("DELETE FROM login_failures WHERE at < now() - make_interval(secs => $1)",
                       float(failure_window_s))
