"""Mosquitto's password file and ACL file, as values: hashing, checking, rendering (pure).

Contract
--------
- ``check_principal(name)`` returns ``name`` if it may be an MQTT username, else raises
  ``ValueError``. The rule is the wire id rule (``ingest/wire.py``) without ``:``:
  ``^[A-Za-z0-9_.-]{1,64}$``. ``:`` separates user and hash in the password file; ``+``,
  ``#`` and ``/`` are refused so that a username can never widen a topic (CVE-2017-7650
  let ``+``/``#`` in usernames match other clients' ``%u`` patterns).
- ``hash_password(password, salt=None, iterations=ITERATIONS)`` returns Mosquitto 2's
  ``$7$`` format, exactly what ``mosquitto_passwd`` writes: ``$7$<iterations>$<base64
  salt>$<base64 PBKDF2-HMAC-SHA512(password, salt, iterations, 64 bytes)>``, standard base64
  with padding, a 12-byte random salt. ``verify_password`` checks a password against it.
- ``acl_lines(kind, principal)`` is the topic grant of one account; ``render_acl`` and
  ``render_passwords`` give the whole files for a list of ``Account`` values (active ones
  only: revoked accounts are left out and so are refused by the broker). Output is sorted by
  principal, so the same accounts always give the same bytes.

Grants (docs/MQTT.md, "Credentials and ACL"):

=========  ===================================================================
device     write its own ``gridhub/v1/devices/{id}/telemetry``
unit       write its own ``gridhub/v1/units/{id}/gps`` and ``owntracks/+/{id}``;
           read its own ``gridhub/v1/units/{id}/commands``
gateway    write every ingest topic (``wire.SUBSCRIPTIONS``): it speaks for many devices
service    (the hub) read every ingest topic, also through ``$share/...``; write commands
=========  ===================================================================

Explicit per-user ``topic`` lines are used, never ``pattern`` lines: a pattern applies to
every user (the hub and the gateways too), explicit lines grant exactly one account its own
topics.

Client ids (docs/MQTT.md, "Client ids"): the password file cannot bind a client id to an
account, so Mosquitto's dynamic-security plugin does that one thing, in front of the
files. ``render_client_ids`` gives its configuration: one entry per device and unit
account (revoked ones too: harmless, and a re-provisioned account is bound at once), each
bound to its own principal as client id, with no password and no roles, so the plugin
refuses a CONNECT with another client id and leaves the password and the topics to the
files (whose grants the plugin's deny-by-default defaults leave as they are).
``client_id_commands`` are the same bindings as the plugin's ``$CONTROL`` commands,
for a running broker (the plugin does not re-read its file on SIGHUP).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from ingest import wire

KINDS = ("device", "unit", "gateway", "fleet", "service")

# Mosquitto's own default (mosquitto_passwd -I). The broker runs PBKDF2 on every CONNECT,
# so iterations cost it CPU in a reconnect storm, and they buy nothing here: passwords are
# generated (secrets.token_urlsafe, ~190 bits), far beyond any brute force.
ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64
PASSWORD_BYTES = 24  # 32 URL-safe characters: safe in mqtt://user:pass@host URLs as is

# Every unit's command topic: the hub publishes to all of them.
COMMANDS_FILTER = "gridhub/v1/units/+/commands"
# The dynamic-security plugin's command topic and its answers: the hub (``service``) binds
# new accounts' client ids through it while the broker runs.
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
# Kinds whose client id is their principal. Gateways, fleets and the hub open several
# connections under one account (a publisher and a command listener; an ingest client per
# process), so their ids cannot be their username; they are trusted software.
BOUND_KINDS = ("device", "unit")
# Commands per $CONTROL message: ~70 bytes each, so a message stays far below the broker's
# max_packet_size (270,000) for any town.
CONTROL_BATCH = 500

_PRINCIPAL_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HASH_RE = re.compile(r"\$7\$(\d{1,7})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


@dataclass(frozen=True, slots=True)
class Account:
    """One row of ``mqtt_accounts`` as the renderer needs it."""

    principal: str
    kind: str
    password_hash: str
    revoked: bool = False


def check_principal(name: str) -> str:
    """``name`` if it is a valid MQTT username for an account, else ``ValueError``."""
    if not isinstance(name, str) or _PRINCIPAL_RE.fullmatch(name) is None:
        raise ValueError(f"invalid MQTT principal {name!r}: must match ^[A-Za-z0-9_.-]{{1,64}}$ "
                         "(a device or unit id without ':')")
    return name


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"invalid MQTT account kind {kind!r}: one of {', '.join(KINDS)}")
    return kind


def new_password() -> str:
    """A fresh random password (URL-safe, so it fits an mqtt:// URL unescaped)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(password: str, salt: bytes | None = None,
                  iterations: int = ITERATIONS) -> str:
    """Mosquitto 2 ``$7$`` hash (PBKDF2-HMAC-SHA512) of ``password``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    dk = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, HASH_BYTES)
    return (f"$7${iterations}${base64.b64encode(salt).decode('ascii')}"
            f"${base64.b64encode(dk).decode('ascii')}")


def verify_password(password: str, password_hash: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash (constant-time comparison)."""
    m = _HASH_RE.fullmatch(password_hash)
    if m is None:
        return False
    try:
        salt = base64.b64decode(m.group(2), validate=True)
        want = base64.b64decode(m.group(3), validate=True)
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(m.group(1)),
                              len(want))
    return hmac.compare_digest(got, want)


def acl_lines(kind: str, principal: str) -> list[str]:
    """``topic`` lines granting one account its topics (without the ``user`` line)."""
    check_principal(principal)
    if kind == "device":
        return [f"topic write {wire.telemetry_topic(principal)}"]
    if kind == "unit":
        return [f"topic write {wire.gps_topic(principal)}",
                # OwnTracks: {user} is not used; {device} (the unit id) is the identity.
                f"topic write owntracks/+/{principal}",
                f"topic read {wire.command_topic(principal)}"]
    if kind == "gateway":
        return [f"topic write {t}" for t in wire.SUBSCRIPTIONS]
    if kind == "fleet":
        # A gateway that also carries the units' phones (a trunking gateway, the simulated
        # crews): it reads every unit's commands.
        return [f"topic write {t}" for t in wire.SUBSCRIPTIONS] + [f"topic read {COMMANDS_FILTER}"]
    if kind == "service":
        # Read rights are checked on each delivered message's topic, so they cover
        # $share/<group>/<filter> subscriptions too. COMMANDS_FILTER: wire.command_topic
        # refuses '+' as an id, rightly.
        return ([f"topic read {t}" for t in wire.SUBSCRIPTIONS]
                + [f"topic write {COMMANDS_FILTER}",
                   f"topic write {CONTROL_TOPIC}", f"topic read {CONTROL_RESPONSE_TOPIC}"])
    raise ValueError(f"invalid MQTT account kind {kind!r}")


def _active(accounts: Iterable[Account]) -> list[Account]:
    out = sorted((a for a in accounts if not a.revoked), key=lambda a: a.principal)
    for a in out:
        check_principal(a.principal)
        check_kind(a.kind)
        if _HASH_RE.fullmatch(a.password_hash) is None:
            raise ValueError(f"account {a.principal!r} has no $7$ password hash")
    return out


HEADER = ("# Generated by gridhub from the mqtt_accounts table "
          "(python -m hub mqtt-accounts sync);\n# edits here are overwritten.\n")


def render_passwords(accounts: Iterable[Account]) -> str:
    """Mosquitto ``password_file`` content: ``principal:$7$...`` per active account."""
    return HEADER + "".join(f"{a.principal}:{a.password_hash}\n" for a in _active(accounts))


def render_acl(accounts: Iterable[Account]) -> str:
    """Mosquitto ``acl_file`` content: a ``user`` block per active account.

    Lines before the first ``user`` line would apply to anonymous clients; there are none
    (and ``allow_anonymous false`` refuses them anyway). An account absent here may do
    nothing at all: Mosquitto denies whatever no line grants.
    """
    blocks = [HEADER]
    for a in _active(accounts):
        blocks.append(f"\nuser {a.principal}\n")
        blocks.extend(line + "\n" for line in acl_lines(a.kind, a.principal))
    return "".join(blocks)


def _bound(accounts: Iterable[Account]) -> list[str]:
    return sorted({check_principal(a.principal) for a in accounts if a.kind in BOUND_KINDS})


def render_client_ids(accounts: Iterable[Account]) -> str:
    """The dynamic-security plugin's configuration file: every device and unit account
    (active or revoked) may connect only with its principal as client id. No passwords and
    no roles: for everything else the plugin defers to the password and ACL files."""
    doc = {
        # Mosquitto asks the ACL file first; what it does not grant it passes on (defers)
        # to the plugin, which answers for its own clients with these defaults: so they
        # must deny, or a unit would read every unit's commands (tests/test_mqtt_acl.py).
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": [{"username": p, "clientid": p, "roles": []} for p in _bound(accounts)],
        "groups": [],
        "roles": [],
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def client_id_commands(accounts: Iterable[Account]) -> list[str]:
    """The same bindings as ``$CONTROL`` messages (JSON, ``CONTROL_BATCH`` commands each)
    for a running broker. ``createClient`` of a bound account that exists is refused by the
    plugin ("Client already exists"), which leaves it as it is: sending all is idempotent."""
    cmds = [{"command": "createClient", "username": p, "clientid": p}
            for p in _bound(accounts)]
    return [json.dumps({"commands": cmds[i:i + CONTROL_BATCH]})
            for i in range(0, len(cmds), CONTROL_BATCH)]
