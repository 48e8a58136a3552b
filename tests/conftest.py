"""Shared fixtures: real PostgreSQL+TimescaleDB, real Mosquitto, a real hub process.

``./hubctl test`` starts the private services and exports HUB_DATABASE_URL and
HUB_MQTT_URL. Each test session works in a scratch database of its own (the migrations
create the timescaledb extension in it) and its own MQTT client ids and shared-subscription
group, so it never disturbs the demo or another run.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import httpx
import paho.mqtt.client as mqtt
import pytest
import pytest_asyncio
import websockets

from core.db import connect
from hub import mosquitto_conf
from ingest.mqtt import BrokerAddress, make_client

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "var" / "test" / "artifacts"


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the tests with ./hubctl test", returncode=2)
    return value


def with_database(url: str, dbname: str) -> str:
    u = urlsplit(url)
    return urlunsplit((u.scheme, u.netloc, "/" + dbname, u.query, u.fragment))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def base_db_url() -> str:
    return _require_env("HUB_DATABASE_URL")


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    """The broker as the hub's own account (it may read every ingest topic, write none)."""
    return _require_env("HUB_MQTT_URL")


def gateway_url(url: str) -> str:
    """``url``'s broker with the tests' gateway account (HUB_TEST_MQTT_URL's credentials):
    test publishers speak for many devices and units, as a gateway does. Without
    HUB_TEST_MQTT_URL (an external broker), ``url`` itself."""
    gw = os.environ.get("HUB_TEST_MQTT_URL")
    if not gw:
        return url
    u = urlsplit(url)
    userinfo = urlsplit(gw).netloc.rpartition("@")[0]
    host = u.netloc.rpartition("@")[2]
    return urlunsplit((u.scheme, f"{userinfo}@{host}" if userinfo else host, u.path, u.query,
                       u.fragment))


async def create_database(base_url: str, name: str, template: str = "template0") -> str:
    """An empty scratch database; the hub's migrations create the timescaledb extension."""
    await drop_database(base_url, name)
    conn = await asyncpg.connect(base_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {template}')
    finally:
        await conn.close()
    return with_database(base_url, name)


async def load_town(url: str) -> None:
    """``python -m hub load-town`` into the database at ``url`` (migrates it first)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "load-town", env={**os.environ, "HUB_DATABASE_URL": url},
        stdout=asyncio.subprocess.DEVNULL)
    assert await proc.wait() == 0, "hub load-town failed"


@asynccontextmanager
async def town_database(base_url: str, tag: str) -> AsyncIterator[str]:
    """A scratch database with the demo town, dropped afterwards: a town of the test's own,
    whose squads no other test has sent anywhere and whose messages no other hub stores."""
    name = f"gridhub_{tag}{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = await create_database(base_url, name)
    try:
        await load_town(url)
        yield url
    finally:
        await drop_database(base_url, name)


async def drop_database(base_url: str, name: str) -> None:
    """Drop a scratch database, as the superuser where the set-up gave us one.

    TimescaleDB's scheduler and job workers hold superuser sessions on every database with
    the extension; ``WITH (FORCE)`` may end them only as a superuser, and the app role can
    race a worker that has just started (seen on CI), so that path retries."""
    url = base_url
    admin = os.environ.get("HUB_ADMIN_DATABASE_URL")
    if admin:
        try:
            await (await asyncpg.connect(admin)).close()
            url = admin
        except (OSError, asyncpg.PostgresError):
            pass  # not ours to use (another OS user's socket directory): the app role it is
    for attempt in range(40):
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
            if attempt == 39:
                raise
        finally:
            await conn.close()
        await asyncio.sleep(0.25)


@pytest_asyncio.fixture(scope="session")
async def db_url(base_db_url: str) -> AsyncIterator[str]:
    """A scratch database with the schema and the demo town loaded."""
    name = f"gridhub_t{os.getpid()}"
    url = await create_database(base_db_url, name)
    env = {**os.environ, "HUB_DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "hub", "load-town"], env=env, check=True,
                   cwd=ROOT, capture_output=True)
    yield url
    await drop_database(base_db_url, name)


@pytest_asyncio.fixture(scope="session")
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(db_url)
    yield conn
    await conn.close()


def cli_token(db_url: str, role: str, *, name: str | None = None, unit: str | None = None
              ) -> str:
    """A new API token in the database at ``db_url``, made by ``python -m hub create-token``
    (the same code operators use)."""
    args = [sys.executable, "-m", "hub", "create-token", "--name",
            name or f"test-{role}-{uuid.uuid4().hex[:6]}", "--role", role]
    if unit is not None:
        args += ["--unit", unit]
    r = subprocess.run(args, env={**os.environ, "HUB_DATABASE_URL": db_url}, cwd=ROOT,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"create-token failed: {r.stderr}"
    return r.stdout.strip().splitlines()[-1]


def cli_user(db_url: str, name: str, role: str, password: str) -> None:
    """A user who logs in to the pages, made by ``python -m hub create-user`` (password on
    standard input)."""
    r = subprocess.run([sys.executable, "-m", "hub", "create-user", name, "--role", role],
                       input=password + "\n", env={**os.environ, "HUB_DATABASE_URL": db_url},
                       cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"create-user failed: {r.stderr}"


def end_process(proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """SIGTERM (or SIGKILL with ``kill``) and wait; SIGKILL if it lingers past 15 s."""
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class HubProcess:
    """``python -m hub serve`` as a child process on its own port and MQTT identity.

    Once started it holds an admin API token for the tests: ``hub.token``, ``hub.headers``
    (``Authorization: Bearer ...``) and ``hub.client`` (an ``httpx.Client`` sending it);
    ``hub.make_token(role, unit=...)`` makes more."""

    def __init__(self, db_url: str, mqtt_url: str, *, roles: str = "ingest,dispatch,web",
                 client_id: str | None = None, share_group: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        tag = uuid.uuid4().hex[:8]
        self.env = {
            **os.environ,
            "HUB_DATABASE_URL": db_url,
            "HUB_MQTT_URL": mqtt_url,
            "HUB_HTTP_PORT": str(self.port),
            "HUB_MQTT_CLIENT_ID": client_id or f"gridhub-test-{tag}",
            # One ingest process on a plain subscription unless a test scales out; the
            # processes of one scaled-out test share their group and their evaluator's
            # session (core/settings.py), and no other test's.
            "HUB_MQTT_SHARE_GROUP": share_group or "",
            "HUB_MQTT_RULES_CLIENT_ID": f"gridhub-test-rules-{share_group or tag}",
            # Long enough to survive the restarts the fault tests do, short enough that the
            # broker does not keep queueing for every hub a long test session started.
            "HUB_MQTT_SESSION_EXPIRY_S": "120",
            **(extra_env or {}),
        }
        self.roles = roles
        self.db_url = db_url
        self.token = ""
        self._client: httpx.Client | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / f"hub-{tag}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, headers=self.headers, timeout=10)
        return self._client

    def async_client(self, **kw: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` on this hub with the admin token (close it yourself)."""
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, **kw)

    def make_token(self, role: str, *, unit: str | None = None, name: str | None = None
                   ) -> str:
        return cli_token(self.db_url, role, unit=unit, name=name)

    def websocket(self, path: str = "/ws/live", **kw: Any) -> Any:
        """``async with hub.websocket() as ws``: a websocket to this hub (the live feed),
        authenticated with the admin token."""
        kw.setdefault("additional_headers", self.headers)
        return websockets.connect(f"ws://127.0.0.1:{self.port}{path}", **kw)

    def start(self, timeout: float = 60.0) -> HubProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "serve", "--roles", self.roles], env=self.env,
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"hub exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            try:
                r = httpx.get(self.url + "/api/health", timeout=1)
                if r.status_code == 200 and r.json()["status"] == "ok":
                    if not self.token:
                        self.token = cli_token(self.db_url, "admin", name="test-admin")
                    # Proves the token, and lets the hub remember it as good (it honours
                    # it through a database outage, which the fault tests cause).
                    me = httpx.get(self.url + "/api/me", headers=self.headers, timeout=5)
                    assert me.status_code == 200, me.text
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        end_process(self.proc, kill=True)
        self.proc = None
        self._log.close()
        raise RuntimeError(f"hub not ready: {self.log_path.read_text()[-2000:]}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        end_process(self.proc, kill=kill)
        self.proc = None
        self._log.close()
        if self._client is not None:
            self._client.close()
            self._client = None


@pytest.fixture(scope="session")
def hub(db_url: str, mqtt_url: str) -> Iterator[HubProcess]:
    proc = HubProcess(db_url, mqtt_url).start()
    yield proc
    proc.stop()


def mqtt_client(url: str, client_id: str | None = None, **kw: Any) -> mqtt.Client:
    """A paho client for a test (not started): every test's MQTT connection is made here,
    so that whatever the broker asks of a client is added once. ``kw`` goes to
    ``ingest.mqtt.make_client`` (``persistent``, ``session_expiry_s``, ...)."""
    kw.setdefault("persistent", False)
    return make_client(client_id or f"test-{uuid.uuid4().hex[:8]}", BrokerAddress.parse(url),
                       **kw)


class Publisher:
    """A QoS1 MQTT 5 publisher that waits for each PUBACK (tests publish little); it logs in
    to ``url``'s broker as the tests' gateway account."""

    def __init__(self, url: str, client_id: str | None = None, **kw: Any) -> None:
        self.client = mqtt_client(gateway_url(url),
                                  client_id or f"test-pub-{uuid.uuid4().hex[:8]}", **kw)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise RuntimeError("test publisher could not connect to Mosquitto")
            time.sleep(0.02)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="session")
def publisher(mqtt_url: str) -> Iterator[Publisher]:
    pub = Publisher(mqtt_url)
    yield pub
    pub.close()


async def wait_for(fn: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Await ``fn()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class ThrowawayPostgres:
    """A private PostgreSQL cluster for one test, with or without TimescaleDB loaded, that the
    test may stop and start (a fault test) without touching the shared test cluster."""

    def __init__(self, *, timescaledb: bool) -> None:
        bindir = sorted(Path("/usr/lib/postgresql").iterdir(), key=lambda p: int(p.name))[-1]
        self.bin = bindir / "bin"
        # Under var/test rather than /tmp/pytest-of-root, which the services' account
        # cannot enter.
        (ROOT / "var" / "test").mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="pg-", dir=ROOT / "var" / "test"))
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL will not run as root: use the services' account
            shutil.chown(self.dir, "gridhub")
            self.prefix = ["runuser", "-u", "gridhub", "--"]
        subprocess.run([*self.prefix, str(self.bin / "initdb"), "-D", str(self.dir / "pg"),
                        "-U", "postgres", "-A", "trust"], check=True, capture_output=True)
        if timescaledb:
            with (self.dir / "pg" / "postgresql.conf").open("a") as f:
                f.write("shared_preload_libraries = 'timescaledb'\n"
                        "timescaledb.telemetry_level = off\n")
        self.url = f"postgresql://postgres@/postgres?host={self.dir}&port={self.port}"

    def start(self) -> ThrowawayPostgres:
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.dir / "pg"),
                        "-w", "-l", str(self.dir / "log"), "-o",
                        f"-p {self.port} -k {self.dir} -c listen_addresses=''", "start"],
                       check=True, capture_output=True)
        return self

    def stop(self) -> None:
        r = subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.dir / "pg"),
                            "-m", "fast", "-w", "stop"], capture_output=True, text=True)
        assert r.returncode == 0, f"pg_ctl stop failed: {r.stdout} {r.stderr}"

    def destroy(self) -> None:
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.dir / "pg"),
                        "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayMosquitto:
    """A private Mosquitto for one test, configured from scripts/mosquitto.conf.in (the real
    configuration: no anonymous access, password and ACL files), on a free port. Tests that
    provision or revoke accounts reload (SIGHUP) this one, never the shared test broker.

    Write its files (``mqtt_accounts.sync`` with ``files``) before ``start``: Mosquitto
    refuses to start without them."""

    def __init__(self) -> None:
        base = Path(os.environ.get("HUB_VAR_DIR") or ROOT / "var" / "test")
        base.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="mqtt-", dir=base))
        (self.dir / "data").mkdir()
        self.port = free_port()
        self.prefix: list[str] = []
        user = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:  # as hubctl does: the broker runs as the services' account
            user = "gridhub"
            for p in (self.dir, self.dir / "data"):
                shutil.chown(p, user)
            self.prefix = ["runuser", "-u", user, "--"]
        self.password_file = self.dir / "passwords"
        self.acl_file = self.dir / "acl"
        self.client_ids_file = self.dir / "client-ids.json"
        self.pid_file = self.dir / "mosquitto.pid"
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(mosquitto_conf.render(
            {"PORT": str(self.port), "BIND": "127.0.0.1", "DATA": f"{self.dir}/data/",
             "USER": user, "LOG_DEST": f"file {self.dir / 'mosquitto.log'}",
             "PID": str(self.pid_file),
             "PASSWORDS": str(self.password_file), "ACL": str(self.acl_file),
             "CLIENT_IDS": str(self.client_ids_file), "DYNSEC_PLUGIN": dynsec_plugin()}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.hub_url = ""
        self.gateway_url = ""

    def with_accounts(self) -> ThrowawayMosquitto:
        """Write the files for a hub account and a fleet account (the tests' gateway
        name, so that ``Publisher`` logs in here as it does on the shared broker):
        ``hub_url`` and ``gateway_url`` then carry their credentials."""
        from hub import mqtt_files  # the hub's own renderer

        gw = urlsplit(os.environ.get("HUB_TEST_MQTT_URL", ""))
        gw_user = unquote(gw.username) if gw.username else "gw-test"
        gw_password = unquote(gw.password) if gw.password else mqtt_files.new_password()
        hub_password = mqtt_files.new_password()
        accounts = [
            mqtt_files.Account("hub", "service", mqtt_files.hash_password(hub_password)),
            mqtt_files.Account(gw_user, "fleet", mqtt_files.hash_password(gw_password))]
        self.password_file.write_text(mqtt_files.render_passwords(accounts))
        self.acl_file.write_text(mqtt_files.render_acl(accounts))
        self.client_ids_file.write_text(mqtt_files.render_client_ids(accounts))
        if os.geteuid() == 0:  # the broker runs as the services' account
            for f in (self.password_file, self.acl_file, self.client_ids_file):
                shutil.chown(f, "gridhub")
                f.chmod(0o600)
        self.hub_url = self.url("hub", hub_password)
        self.gateway_url = self.url(gw_user, gw_password)
        return self

    def url(self, username: str, password: str) -> str:
        return f"mqtt://{username}:{password}@127.0.0.1:{self.port}"

    def file_env(self) -> dict[str, str]:
        """The hub settings that make a hub render this broker's files and reload it."""
        return {"HUB_MQTT_PASSWORD_FILE": str(self.password_file),
                "HUB_MQTT_ACL_FILE": str(self.acl_file),
                "HUB_MQTT_CLIENT_IDS_FILE": str(self.client_ids_file),
                "HUB_MQTT_BROKER_PID_FILE": str(self.pid_file)}

    def start(self, timeout: float = 10.0) -> ThrowawayMosquitto:
        if not self.client_ids_file.exists():  # the plugin needs its file: no bindings
            from hub import mqtt_files

            self.client_ids_file.write_text(mqtt_files.render_client_ids([]))
            if os.geteuid() == 0:
                shutil.chown(self.client_ids_file, "gridhub")
                self.client_ids_file.chmod(0o600)
        self.proc = subprocess.Popen([*self.prefix, "mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log()[-2000:]}")
            if self.pid_file.exists():
                with socket.socket() as s, contextlib.suppress(OSError):
                    s.connect(("127.0.0.1", self.port))
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start: {self.log()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM, as a service manager would: Mosquitto saves its persistence file."""
        if self.proc is None:
            return
        end_process(self.proc)
        self.proc = None
        self.pid_file.unlink(missing_ok=True)

    def log(self) -> str:
        try:
            return (self.dir / "mosquitto.log").read_text()
        except OSError:
            return ""

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def town_doc() -> dict[str, Any]:
    return json.loads((ROOT / "simulators" / "data" / "xuxiake.json").read_text("utf-8"))


def dynsec_plugin() -> str:
    """Mosquitto's dynamic-security plugin, where scripts/lib.sh's ``dynsec_plugin`` finds
    it (the set-up installs it with the broker)."""
    for pattern in ("/usr/lib/*/mosquitto_dynamic_security.so",
                    "/usr/lib/mosquitto_dynamic_security.so",
                    "/usr/lib64/mosquitto_dynamic_security.so",
                    "/usr/local/lib/mosquitto_dynamic_security.so"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise RuntimeError("mosquitto_dynamic_security.so not found (installed with Mosquitto)")


# ---------------------------------------------------------------- Chromium
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (tests/browser.py)."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def auth_state(browser: Any, hub: HubProcess) -> Any:
    """An admin's logged-in session, made once per module through the real login page."""
    from tests.browser import login_state

    return login_state(browser, hub)
