"""How simulators, load generators and benchmarks log in to the broker.

The broker refuses anonymous clients (docs/MQTT.md, "Credentials and ACL"). Simulators and
load generators publish for many devices and units at once, as a real SenML gateway does,
so they log in with a *gateway* account, not with each device's own: ``hubctl`` exports
``HUB_SIM_MQTT_URL`` (the demo's simulators, account ``gw-sim``) and
``HUB_BENCH_MQTT_URL`` (benchmarks' load generators, ``gw-bench``) beside the hub's own
``HUB_MQTT_URL``.

- ``gateway_url(role)``: the URL to publish with: ``HUB_<ROLE>_MQTT_URL``, else
  ``HUB_MQTT_URL`` (an external broker set up by hand), else the local default.
- ``mosquitto_client_env(addr)``: an environment for ``mosquitto_pub``/``mosquitto_sub``
  children that logs them in as ``addr``'s user without the password on their command line
  (every local user can read command lines in ``ps``): the clients read default options
  from ``$XDG_CONFIG_HOME/mosquitto_pub`` (``_sub``), a private directory removed on exit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from core.mqtt_client import BrokerAddress

DEFAULT_URL = "mqtt://127.0.0.1:1883"


def gateway_url(role: str = "SIM") -> str:
    """Broker URL with the gateway account of ``role`` (SIM or BENCH); see the module doc."""
    return (os.environ.get(f"HUB_{role}_MQTT_URL") or os.environ.get("HUB_MQTT_URL")
            or DEFAULT_URL)


def login_at(port: int, role: str = "BENCH", host: str = "127.0.0.1") -> BrokerAddress:
    """The broker at ``host:port`` with ``role``'s account (``role`` "HUB": the hub's own)."""
    a = BrokerAddress.parse(hub_url() if role == "HUB" else gateway_url(role))
    return BrokerAddress(host, port, a.username, a.password)


def hub_url() -> str:
    """The hub's own account (``HUB_MQTT_URL``): for acting on the hub's session."""
    return os.environ.get("HUB_MQTT_URL") or DEFAULT_URL


def without_password(url: str) -> str:
    """``url`` fit for a log line."""
    u = urlsplit(url)
    if u.password is None:
        return url
    return urlunsplit(u._replace(netloc=f"{u.username}:***@{u.netloc.rpartition('@')[2]}"))


@contextmanager
def mosquitto_client_env(addr: BrokerAddress,
                         base: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Environment (``base`` or os.environ, plus XDG_CONFIG_HOME) whose mosquitto_pub and
    mosquitto_sub log in as ``addr.username``; unchanged when ``addr`` has no username."""
    env = dict(os.environ if base is None else base)
    if not addr.username:
        yield env
        return
    d = tempfile.mkdtemp(prefix="gridhub-mqtt-")  # mode 0700
    try:
        opts = f"-u {addr.username}\n" + (f"-P {addr.password}\n" if addr.password else "")
        for name in ("mosquitto_pub", "mosquitto_sub"):
            fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(opts)
        env["XDG_CONFIG_HOME"] = d
        yield env
    finally:
        shutil.rmtree(d, ignore_errors=True)
