"""The broker's configuration: one template, rendered for every place a Mosquitto runs.

``scripts/mosquitto.conf.in`` holds every setting once. hubctl renders it for its brokers
(demo, test, bench, chaos), the tests render it for their throwaway brokers, and
``deploy/mosquitto.conf`` (what compose.yaml mounts) is its rendering with the ``COMPOSE``
values, written by ``python -m hub.mosquitto_conf --compose`` and checked to be current by
tests/test_compose.py, so the two can no longer drift apart by hand.

Placeholders are ``@NAME@``. A line whose only placeholder is given the value ``None`` is
left out (compose's broker needs no pid file and already runs as its own user).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "scripts" / "mosquitto.conf.in"
COMPOSE_OUTPUT = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto.conf"

# The eclipse-mosquitto image's paths; /mosquitto/auth is the volume the compose `setup`
# service renders the accounts into (python -m hub mqtt-accounts setup).
COMPOSE: dict[str, str | None] = {
    "PORT": "1883", "BIND": "0.0.0.0", "PID": None, "USER": None,
    "LOG_DEST": "stdout", "DATA": "/mosquitto/data/",
    "PASSWORDS": "/mosquitto/auth/passwords", "ACL": "/mosquitto/auth/acl",
    "CLIENT_IDS": "/mosquitto/auth/client-ids.json",
    "DYNSEC_PLUGIN": "/usr/lib/mosquitto_dynamic_security.so",
}
_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


def render(values: dict[str, str | None], template: str | None = None) -> str:
    """The template with every placeholder filled; a placeholder without a value is an
    error (a broker started on a half-filled file fails far from the cause)."""
    text = TEMPLATE.read_text(encoding="utf-8") if template is None else template
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        names = _PLACEHOLDER.findall(line)
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(f"mosquitto.conf.in placeholders not filled: {sorted(missing)}")
        if any(values[n] is None for n in names):
            continue
        out.append(_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), line))
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hub.mosquitto_conf", description=__doc__)
    ap.add_argument("--compose", action="store_true",
                    help=f"write the compose rendering to {COMPOSE_OUTPUT.name}")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a placeholder's value (repeat); the rendering goes to stdout")
    args = ap.parse_args(argv)
    if args.compose:
        COMPOSE_OUTPUT.write_text(render(COMPOSE), encoding="utf-8")
        return 0
    values: dict[str, str | None] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set wants NAME=VALUE, got {item!r}")
        values[name] = value
    sys.stdout.write(render(values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
