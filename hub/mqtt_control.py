"""Binding client ids on a running broker: the dynamic-security plugin's ``$CONTROL`` API.

The plugin reads its configuration file (``hub/mqtt_files.render_client_ids``) when the
broker starts, not on SIGHUP; while the broker runs, a new device's or unit's binding is
sent as ``createClient`` commands on ``$CONTROL/dynamic-security/v1`` by the hub's own
(``service``) account, which the ACL file allows to write that topic and read its answers.

Contract: ``send_commands(url, messages, timeout_s)`` connects with the credentials in
``url`` (a fresh client id, clean session), subscribes to the answers, publishes each
message at QoS 1 and waits for one answer per message; returns (all answered, detail).
It never raises for a broker that is down or refuses: the bindings are in the file too,
and apply at the broker's next start; the caller reports the detail.
"""

from __future__ import annotations

import json
import secrets
import threading

import paho.mqtt.client as mqtt

from core.mqtt_client import BrokerAddress, make_client
from hub.mqtt_files import CONTROL_RESPONSE_TOPIC, CONTROL_TOPIC

# A loopback broker answers in milliseconds; a wait this long means it is down or busy,
# and the account change must not hang on it.
CONTROL_TIMEOUT_S = 5.0
# Plugin answers that leave the binding as wanted.
HARMLESS_ERRORS = frozenset({"Client already exists"})


def send_commands(url: str, messages: list[str], timeout_s: float = CONTROL_TIMEOUT_S
                  ) -> tuple[bool, str]:
    """Publish ``messages`` to the plugin and wait for their answers (see the module doc)."""
    if not messages:
        return True, "no client ids to bind"
    try:
        addr = BrokerAddress.parse(url)
    except ValueError as e:
        return False, f"client ids not bound live: {e}"
    subscribed, done = threading.Event(), threading.Event()
    answers: list[dict[str, object]] = []
    failure: list[str] = []
    client = make_client(f"gridhub-control-{secrets.token_hex(6)}", addr, persistent=False,
                         v311=True)

    def on_connect(c: mqtt.Client, _u: object, _f: object, rc: object, _p: object = None
                   ) -> None:
        if getattr(rc, "is_failure", False):
            failure.append(f"broker refused the hub's account: {rc}")
            done.set()
            return
        c.subscribe(CONTROL_RESPONSE_TOPIC, qos=1)

    def on_subscribe(*_: object) -> None:
        subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            answers.extend(json.loads(msg.payload).get("responses", []))
        except (ValueError, AttributeError):
            failure.append("unreadable answer from the dynamic-security plugin")
        if len(answers) >= sum(len(json.loads(m)["commands"]) for m in messages):
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.loop_start()
    try:
        if not subscribed.wait(timeout_s) and not failure:
            return False, "client ids not bound live: broker not reachable (bound at its start)"
        if failure:
            return False, f"client ids not bound live: {failure[0]}"
        for m in messages:
            client.publish(CONTROL_TOPIC, m, qos=1)
        if not done.wait(timeout_s):
            return False, "client ids not bound live: the dynamic-security plugin did not " \
                          "answer (is it loaded? see docs/MQTT.md)"
    finally:
        client.disconnect()
        client.loop_stop()
    errors = sorted({str(a["error"]) for a in answers
                     if a.get("error") and a["error"] not in HARMLESS_ERRORS})
    if failure or errors:
        return False, f"client ids not all bound: {(failure + errors)[:3]}"
    return True, f"{len(answers)} client id binding(s) in force"
