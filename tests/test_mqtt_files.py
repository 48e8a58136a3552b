"""Mosquitto password and ACL files as values (hub/mqtt_files.py), checked against
``mosquitto_passwd`` itself; the broker's behaviour is tests/test_mqtt_acl.py."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hub import mqtt_files as mf
from hub.mqtt_files import Account


def test_hash_is_mosquittos_format_with_a_fixed_salt() -> None:
    salt = bytes(range(12))
    h = mf.hash_password("secret", salt=salt)
    _, seven, iterations, salt_b64, dk_b64 = h.split("$")
    assert (seven, iterations) == ("7", "101")
    assert base64.b64decode(salt_b64) == salt
    assert len(base64.b64decode(dk_b64)) == 64
    assert h == mf.hash_password("secret", salt=salt)  # deterministic given the salt
    assert mf.hash_password("secret") != mf.hash_password("secret")  # random salt


@pytest.mark.parametrize(("password", "candidate", "ok"), [
    ("secret", "secret", True),
    ("secret", "Secret", False),
    ("secret", "", False),
    ("密码-ünïcode", "密码-ünïcode", True),
])
def test_verify(password: str, candidate: str, ok: bool) -> None:
    assert mf.verify_password(candidate, mf.hash_password(password)) is ok


@pytest.mark.parametrize("bad", ["", "plain", "$6$abc$def", "$7$101$!!!$abc", "$7$x$YQ==$YQ=="])
def test_verify_refuses_malformed_hashes(bad: str) -> None:
    assert mf.verify_password("secret", bad) is False


def test_verify_accepts_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    # mosquitto_passwd ships in the mosquitto package that ./hubctl test installs.
    assert shutil.which("mosquitto_passwd"), "mosquitto_passwd missing: run ./hubctl test"
    f = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(f), "ws-001", "s3cret-pw"], check=True)
    user, _, h = f.read_text().strip().partition(":")
    assert user == "ws-001" and h.startswith("$7$")
    assert mf.verify_password("s3cret-pw", h)
    assert not mf.verify_password("s3cret-px", h)
    # and our hash with mosquitto's salt is byte-identical to mosquitto's
    _, _, it, salt, _ = h.split("$")
    assert mf.hash_password("s3cret-pw", salt=base64.b64decode(salt), iterations=int(it)) == h


@pytest.mark.parametrize("name", ["ws-001", "patrol_07", "a.b", "X" * 64, "hub"])
def test_principal_ok(name: str) -> None:
    assert mf.check_principal(name) == name


@pytest.mark.parametrize("name", [
    "", "X" * 65, "urn:dev:mac:1",  # ':' would split the password file line
    "a+b", "#", "a/b", "+", "sp ace", "监测点", "a\nuser hub", "%u",
])
def test_principal_refused(name: str) -> None:
    with pytest.raises(ValueError):
        mf.check_principal(name)


def test_new_passwords_are_url_safe_and_distinct() -> None:
    pws = {mf.new_password() for _ in range(50)}
    assert len(pws) == 50
    assert all(len(p) == 32 and p.replace("-", "").replace("_", "").isalnum() for p in pws)


def test_acl_grants_per_kind() -> None:
    assert mf.acl_lines("device", "ws-001") == [
        "topic write gridhub/v1/devices/ws-001/telemetry"]
    assert mf.acl_lines("unit", "patrol-07") == [
        "topic write gridhub/v1/units/patrol-07/gps",
        "topic write owntracks/+/patrol-07",
        "topic read gridhub/v1/units/patrol-07/commands"]
    assert mf.acl_lines("gateway", "gw-sim") == [
        "topic write gridhub/v1/devices/+/telemetry",
        "topic write gridhub/v1/gateways/+/telemetry",
        "topic write gridhub/v1/units/+/gps",
        "topic write gridhub/v1/senml/+",
        "topic write owntracks/+/+"]
    gateway = mf.acl_lines("gateway", "gw-bench")
    assert not any(line.startswith("topic read") for line in gateway)  # no commands
    assert mf.acl_lines("fleet", "gw-sim") == [
        *gateway, "topic read gridhub/v1/units/+/commands"]
    hub = mf.acl_lines("service", "hub")
    assert "topic write gridhub/v1/units/+/commands" in hub
    assert "topic read owntracks/+/+" in hub
    assert not any(line.startswith("topic write gridhub/v1/devices") for line in hub)
    # the hub binds client ids through the dynamic-security plugin; nobody else may
    assert {"topic write $CONTROL/dynamic-security/v1",
            "topic read $CONTROL/dynamic-security/v1/response"} <= set(hub)
    for kind in ("device", "unit", "gateway", "fleet"):
        assert not any("$CONTROL" in line for line in mf.acl_lines(kind, "x1"))
    with pytest.raises(ValueError):
        mf.acl_lines("admin", "x")


def test_client_ids_bind_devices_and_units_to_their_own_id() -> None:
    h = mf.hash_password("x", salt=bytes(12))
    accounts = [Account("ws-002", "device", h), Account("hub", "service", h),
                Account("ws-001", "device", h, revoked=True), Account("p-1", "unit", h),
                Account("gw-sim", "fleet", h), Account("gw-b", "gateway", h)]
    doc = json.loads(mf.render_client_ids(accounts))
    # revoked ones too (a re-provisioned account is bound at once); no passwords, no roles:
    # the plugin defers to the password and ACL files for everything but the client id
    assert doc["clients"] == [{"username": p, "clientid": p, "roles": []}
                              for p in ("p-1", "ws-001", "ws-002")]
    assert doc["roles"] == [] and doc["groups"] == []
    assert mf.render_client_ids(list(reversed(accounts))) == mf.render_client_ids(accounts)
    (message,) = mf.client_id_commands(accounts)
    assert json.loads(message)["commands"] == [
        {"command": "createClient", "username": p, "clientid": p}
        for p in ("p-1", "ws-001", "ws-002")]
    many = [Account(f"d{i:04d}", "device", h) for i in range(mf.CONTROL_BATCH + 1)]
    assert [len(json.loads(m)["commands"]) for m in mf.client_id_commands(many)] == [
        mf.CONTROL_BATCH, 1]
    assert mf.client_id_commands([Account("hub", "service", h)]) == []


def test_rendered_files_leave_out_revoked_accounts_and_are_sorted() -> None:
    h = mf.hash_password("x", salt=bytes(12))
    accounts = [Account("ws-002", "device", h), Account("hub", "service", h),
                Account("ws-001", "device", h, revoked=True), Account("p-1", "unit", h)]
    pw = mf.render_passwords(accounts)
    lines = [ln for ln in pw.splitlines() if not ln.startswith("#")]
    assert lines == [f"hub:{h}", f"p-1:{h}", f"ws-002:{h}"]
    acl = mf.render_acl(accounts)
    assert "user ws-001" not in acl and "ws-001" not in acl
    # nothing before the first user line: such lines would apply to anonymous clients
    body = [ln for ln in acl.splitlines() if ln and not ln.startswith("#")]
    assert body[0] == "user hub"
    assert acl.index("user hub") < acl.index("user p-1") < acl.index("user ws-002")
    assert mf.render_acl(list(reversed(accounts))) == acl


def test_render_refuses_a_bad_row() -> None:
    with pytest.raises(ValueError):
        mf.render_passwords([Account("a:b", "device", mf.hash_password("x"))])
    with pytest.raises(ValueError):
        mf.render_passwords([Account("a", "device", "plaintext")])
