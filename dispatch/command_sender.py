"""Sends the commands of committed events to patrol phones over MQTT (the I/O shell of
dispatch/commands.py). Runs on the dispatch leader only.

At least once, in event order: the events after the stored cursor are read from the events
table, each command is published at QoS 1 and its PUBACK awaited, then the cursor moves. A
leader that dies between the two resends from the cursor; phones drop a command id they
have seen. A fresh database starts at its newest event, so history is never replayed.
"""

from __future__ import annotations

import asyncio
import json
import logging

import asyncpg
import paho.mqtt.client as mqtt

from core import outbox, topics
from core.mqtt_client import BrokerAddress, make_client
from dispatch.commands import COMMAND_KINDS, command_for

log = logging.getLogger("dispatch.commands")

# Without a wake-up, look for new events this often (a missed wake costs at most this).
IDLE_S = 1.0
PUBACK_TIMEOUT_S = 10.0
BATCH = 500


class CommandSender:
    def __init__(self, pool: asyncpg.Pool, mqtt_url: str, client_id: str) -> None:
        self.pool = pool
        self.addr = BrokerAddress.parse(mqtt_url)
        self.client_id = client_id
        self.wake = asyncio.Event()
        self.sent = 0

    def observe(self, kind: str) -> None:
        """Called by the leader for each event it sees: a relevant one wakes the sender."""
        if kind in COMMAND_KINDS:
            self.wake.set()

    async def run(self) -> None:
        client = make_client(self.client_id, self.addr, persistent=False, v311=True)
        client.loop_start()
        try:
            cursor = await self._cursor()
            while True:
                cursor = await self._send_after(client, cursor)
                try:
                    await asyncio.wait_for(self.wake.wait(), IDLE_S)
                except TimeoutError:
                    pass
                self.wake.clear()
        finally:
            client.disconnect()
            client.loop_stop()

    async def _cursor(self) -> int:
        seq = await self.pool.fetchval("SELECT seq FROM command_cursor")
        if seq is None:
            seq = await self.pool.fetchval(
                """INSERT INTO command_cursor (seq) SELECT coalesce(max(seq), 0) FROM events
                   ON CONFLICT (id) DO UPDATE SET seq = command_cursor.seq RETURNING seq""")
        return int(seq)

    async def _send_after(self, client: mqtt.Client, cursor: int) -> int:
        while True:
            envs = await outbox.events_after(self.pool, cursor, BATCH)
            if not envs:
                return cursor
            for env in envs:
                cmd = command_for(env)
                if cmd is not None:
                    if not client.is_connected():
                        return cursor  # the broker is away: retry from here later
                    info = client.publish(topics.command_topic(cmd.unit_id),
                                          json.dumps(cmd.payload, ensure_ascii=False), qos=1)
                    await asyncio.to_thread(info.wait_for_publish, PUBACK_TIMEOUT_S)
                    if not info.is_published():
                        log.warning("no PUBACK for command %s to %s; retrying",
                                    cmd.payload["id"], cmd.unit_id)
                        return cursor
                    self.sent += 1
                cursor = env.seq
            await self.pool.execute(
                "UPDATE command_cursor SET seq = $1, updated_at = now() WHERE seq < $1",
                cursor)
