"""MQTT accounts: provision, rotate and revoke them in the database, and bring the broker in
line (render Mosquitto's password and ACL files from the table, then SIGHUP the broker).

Contract
--------
- ``provision(conn, principal, kind)`` creates the account of a registered device or unit
  (or re-activates a revoked one) with a fresh random password, stores only its ``$7$``
  hash, and returns the password: the one time it is ever seen. ``rotate`` replaces the
  password of an active account; ``revoke`` marks it revoked. Each is one statement; none
  touches the files: call ``sync`` afterwards (the API and CLI do).
- ``sync(conn, files)`` renders both files from the active accounts and signals the broker.
  Renders are serialised by an advisory lock held while reading the table and writing the
  files, so the last render always includes every change committed before it started.
  Files are written atomically (temp file in the same directory, fsync, rename), mode
  0600, owned by the owner of their directory (the broker's account) when we run as root.
  It refuses (``mqtt.no_service_account``) to write files without an active ``service``
  account: a database without the hub's own account (a scratch database, the wrong URL)
  would otherwise lock the hub out of its broker.
- With ``client_ids_file`` set, ``sync`` first writes the dynamic-security plugin's file
  binding every device and unit account to its own client id, and sends the same
  bindings to the running broker over ``$CONTROL`` (``hub/mqtt_control.py``) before the
  password file can admit a new account, so no account is ever usable unbound.
- On SIGHUP Mosquitto 2 re-reads both files and disconnects every client whose username
  and password are no longer in the password file; valid clients stay connected.
  Without a configured pid file (or with the broker not running) the files are still
  written and the result says a reload is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from core.errors import ConfigError, Conflict, InvalidInput, NotFound
from core.settings import Settings
from hub import mqtt_control, mqtt_files
from hub.mqtt_files import Account

# Key of the advisory lock that serialises renders (any fixed number, unique in the hub).
RENDER_LOCK_KEY = 7_000_007

# Kinds an API caller may provision; gateways and services are set up by hubctl (CLI).
REGISTRY_KINDS = {"device": "devices", "unit": "units"}


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """Where the broker reads its accounts, and where its pid is (None: cannot signal)."""

    password_file: Path
    acl_file: Path
    pid_file: Path | None = None
    # The dynamic-security plugin's file (client id bindings), and the URL with the hub's
    # credentials that sends the bindings to the running broker.
    client_ids_file: Path | None = None
    control_url: str | None = None

    @staticmethod
    def from_settings(settings: Settings) -> BrokerFiles | None:
        if settings.mqtt_password_file is None or settings.mqtt_acl_file is None:
            return None
        return BrokerFiles(settings.mqtt_password_file, settings.mqtt_acl_file,
                           settings.mqtt_broker_pid_file, settings.mqtt_client_ids_file,
                           settings.mqtt_url)


@dataclass(frozen=True, slots=True)
class SyncResult:
    accounts: int
    files_written: bool
    reloaded: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"accounts": self.accounts, "files_written": self.files_written,
                "reloaded": self.reloaded, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Credentials:
    principal: str
    kind: str
    password: str


def _principal(name: str) -> str:
    try:
        return mqtt_files.check_principal(name)
    except ValueError as e:
        raise InvalidInput(str(e), code="mqtt.invalid_principal") from e


# --------------------------------------------------------------------------- database


async def provision(conn: Any, principal: str, kind: str) -> Credentials:
    """A new account (or a revoked one re-activated) with a fresh password, returned once."""
    _principal(principal)
    table = REGISTRY_KINDS.get(kind)
    if table is None:
        raise InvalidInput(f"kind must be one of {', '.join(REGISTRY_KINDS)}, not {kind!r}",
                           code="mqtt.invalid_kind")
    if not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1)",
                               principal):
        raise NotFound(f"no {kind} {principal!r} in the registry",
                       code="mqtt.unknown_principal")
    password = mqtt_files.new_password()
    row = await conn.fetchrow(
        """INSERT INTO mqtt_accounts (principal, kind, password_hash) VALUES ($1, $2, $3)
           ON CONFLICT (principal) DO UPDATE
             SET password_hash = EXCLUDED.password_hash, rotated_at = now(), revoked_at = NULL
             WHERE mqtt_accounts.revoked_at IS NOT NULL AND mqtt_accounts.kind = EXCLUDED.kind
           RETURNING principal""",
        principal, kind, mqtt_files.hash_password(password))
    if row is None:
        raise Conflict(f"MQTT account {principal!r} exists (rotate its password instead)",
                       code="mqtt.account_exists")
    return Credentials(principal, kind, password)


async def rotate(conn: Any, principal: str) -> Credentials:
    """A fresh password for an active account; the old one stops working at the next sync."""
    _principal(principal)
    password = mqtt_files.new_password()
    kind = await conn.fetchval(
        """UPDATE mqtt_accounts SET password_hash = $2, rotated_at = now()
           WHERE principal = $1 AND revoked_at IS NULL RETURNING kind""",
        principal, mqtt_files.hash_password(password))
    if kind is None:
        await _missing(conn, principal)
    return Credentials(principal, kind, password)


async def revoke(conn: Any, principal: str) -> None:
    """Mark an account revoked (idempotent for a revoked one; 404 for an unknown one)."""
    _principal(principal)
    found = await conn.fetchval(
        """UPDATE mqtt_accounts SET revoked_at = coalesce(revoked_at, now())
           WHERE principal = $1 RETURNING principal""", principal)
    if found is None:
        raise NotFound(f"no MQTT account {principal!r}", code="mqtt.account_not_found")


async def _missing(conn: Any, principal: str) -> None:
    if await conn.fetchval("SELECT revoked_at IS NOT NULL FROM mqtt_accounts "
                           "WHERE principal = $1", principal):
        raise Conflict(f"MQTT account {principal!r} is revoked (provision it again)",
                       code="mqtt.account_revoked")
    raise NotFound(f"no MQTT account {principal!r}", code="mqtt.account_not_found")


async def list_accounts(conn: Any) -> list[dict[str, Any]]:
    """Every account without its hash, principal order."""
    rows = await conn.fetch(
        """SELECT principal, kind, created_at, rotated_at, revoked_at FROM mqtt_accounts
           ORDER BY principal""")
    return [{"principal": r["principal"], "kind": r["kind"],
             "created_at": r["created_at"].timestamp(),
             "rotated_at": r["rotated_at"].timestamp() if r["rotated_at"] else None,
             "revoked_at": r["revoked_at"].timestamp() if r["revoked_at"] else None,
             "active": r["revoked_at"] is None} for r in rows]


async def set_password(conn: Any, principal: str, kind: str, password: str) -> bool:
    """Create or update a gateway/service account with a given password (hubctl's secrets);
    True if anything changed. A matching hash is kept, so re-running the set-up leaves the
    files byte-identical and nobody is disconnected."""
    _principal(principal)
    mqtt_files.check_kind(kind)
    row = await conn.fetchrow("SELECT kind, password_hash, revoked_at FROM mqtt_accounts "
                              "WHERE principal = $1", principal)
    if (row is not None and row["kind"] == kind and row["revoked_at"] is None
            and mqtt_files.verify_password(password, row["password_hash"])):
        return False
    if row is not None and row["kind"] != kind:
        raise Conflict(f"MQTT account {principal!r} exists as a {row['kind']}",
                       code="mqtt.account_exists")
    await conn.execute(
        """INSERT INTO mqtt_accounts (principal, kind, password_hash) VALUES ($1, $2, $3)
           ON CONFLICT (principal) DO UPDATE
             SET password_hash = EXCLUDED.password_hash, rotated_at = now(), revoked_at = NULL""",
        principal, kind, mqtt_files.hash_password(password))
    return True


async def provision_missing(conn: Any, kind: str) -> tuple[int, list[str]]:
    """Accounts (random passwords, never shown) for every registered device or unit that has
    none: the demo town's. Returns (created, ids skipped because they cannot be usernames)."""
    table = REGISTRY_KINDS[kind]
    ids = [r["id"] for r in await conn.fetch(
        f"""SELECT id FROM {table} t WHERE NOT EXISTS
              (SELECT 1 FROM mqtt_accounts a WHERE a.principal = t.id) ORDER BY id""")]
    good, skipped = [], []
    for i in ids:
        try:
            good.append(mqtt_files.check_principal(i))
        except ValueError:
            skipped.append(i)
    await conn.executemany(
        "INSERT INTO mqtt_accounts (principal, kind, password_hash) VALUES ($1, $2, $3) "
        "ON CONFLICT (principal) DO NOTHING",
        [(i, kind, mqtt_files.hash_password(mqtt_files.new_password())) for i in good])
    return len(good), skipped


# --------------------------------------------------------------------------- files + broker


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename: the broker never reads half a file.

    Mode 0600; when we run as root the file takes the owner and group of its directory (the
    broker's account, which re-reads it on SIGHUP after dropping privileges)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        if os.geteuid() == 0:
            st = os.stat(path.parent)
            os.fchown(fd, st.st_uid, st.st_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def reload_broker(pid_file: Path | None) -> tuple[bool, str]:
    """SIGHUP the broker whose pid is in ``pid_file``: (signalled, what happened)."""
    if pid_file is None:
        return False, "no broker pid file configured (HUB_MQTT_BROKER_PID_FILE): " \
                      "reload the broker (SIGHUP) for the change to take effect"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False, f"broker not running ({pid_file} unreadable): it reads the files at start"
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False, f"broker not running (pid {pid} gone): it reads the files at start"
    except PermissionError:
        return False, f"not allowed to signal broker pid {pid}: reload it (SIGHUP)"
    return True, f"broker pid {pid} reloaded"


async def load_accounts(conn: Any) -> list[Account]:
    rows = await conn.fetch("SELECT principal, kind, password_hash, revoked_at IS NOT NULL "
                            "AS revoked FROM mqtt_accounts")
    return [Account(r["principal"], r["kind"], r["password_hash"], r["revoked"]) for r in rows]


async def sync(conn: asyncpg.Connection, files: BrokerFiles | None) -> SyncResult:
    """Render the broker's files from the table and reload it (see the module contract)."""
    if files is None:
        n = await conn.fetchval("SELECT count(*) FROM mqtt_accounts WHERE revoked_at IS NULL")
        return SyncResult(n, False, False,
                          "broker files not configured (HUB_MQTT_PASSWORD_FILE, "
                          "HUB_MQTT_ACL_FILE): database updated; render the files with "
                          "`python -m hub mqtt-accounts sync` where the broker runs")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", RENDER_LOCK_KEY)
        accounts = await load_accounts(conn)
        active = [a for a in accounts if not a.revoked]
        if not any(a.kind == "service" for a in active):
            raise ConfigError("no active service account in this database: refusing to "
                              "write broker files that would lock the hub out",
                              code="mqtt.no_service_account")
        bound = ""
        if files.client_ids_file is not None:
            # Bindings before passwords: a new device's account works only once its client
            # id is bound (the file for the next start, $CONTROL for the running broker).
            write_atomic(files.client_ids_file, mqtt_files.render_client_ids(accounts))
            if files.control_url and _broker_running(files.pid_file):
                _ok, bound = await asyncio.to_thread(
                    mqtt_control.send_commands, files.control_url,
                    mqtt_files.client_id_commands(accounts))
                bound = "; " + bound
        # ACL first: a new account whose password already works but whose grants are not yet
        # there can do nothing (deny by default) for the moment between the two renames.
        write_atomic(files.acl_file, mqtt_files.render_acl(accounts))
        write_atomic(files.password_file, mqtt_files.render_passwords(accounts))
        reloaded, detail = reload_broker(files.pid_file)
    return SyncResult(len(active), True, reloaded, detail + bound)


def _broker_running(pid_file: Path | None) -> bool:
    """Is our broker running? Without a pid file the hub cannot reload it either (the
    result says so); a stopped broker reads the file when it starts."""
    if pid_file is None:
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except PermissionError:
        return True  # there, under another account
    except (OSError, ValueError, IndexError):
        return False
    return True
